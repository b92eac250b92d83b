//! The verbs on users, API tokens and rules: all need the `admin` operation (a user may
//! also change its own password). Changes are stored before they answer and count at
//! once: deleting a user, revoking a token or removing a rule ends the sessions that
//! relied on it (see `auth::access`).

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::{AclRule, TokenCreated, TokenSummary, UserSummary};

use super::Core;
use crate::auth::access::Access;
use crate::auth::directory::DirectoryError;
use crate::auth::rules::Operation;
use crate::error::BrokerError;
use crate::storage::{StoredRule, StoredToken};

/// Whether the connection a request came on keeps a password from others on the way:
/// TLS, or a loopback connection. Requests that carry a password need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secure(pub bool);

impl Core {
    fn check_admin(&self) -> Result<(), BrokerError> {
        self.shared
            .access
            .check(&self.principal, Operation::Admin, None)
    }

    /// Runs a blocking change to the directory (hashing, the store) off the runtime.
    async fn change<T, F>(&self, change: F) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&Access) -> Result<T, DirectoryError> + Send + 'static,
    {
        let access = Arc::clone(&self.shared.access);
        tokio::task::spawn_blocking(move || change(&access))
            .await
            .map_err(|_| BrokerError::ShuttingDown)?
            .map_err(directory_error)
    }

    /// Adds a user; the password must come over a [`Secure`] connection.
    pub async fn create_user(
        &self,
        name: &str,
        password: &str,
        admin: bool,
        channel: Secure,
    ) -> Result<(), BrokerError> {
        self.check_admin()?;
        password_channel(channel)?;
        let (name, password) = (name.to_string(), password.to_string());
        self.change(move |access| access.directory.add_user(&name, &password, admin))
            .await?;
        Ok(())
    }

    /// Gives a user a new password (an administrator's, or a user's own).
    pub async fn set_password(
        &self,
        name: &str,
        password: &str,
        channel: Secure,
    ) -> Result<(), BrokerError> {
        if self.principal.user() != Some(name) {
            self.check_admin()?;
        }
        password_channel(channel)?;
        let (name, password) = (name.to_string(), password.to_string());
        self.change(move |access| access.directory.set_password(&name, &password))
            .await
    }

    /// Deletes a user with its tokens and rules; its open sessions end.
    pub async fn delete_user(&self, name: &str) -> Result<(), BrokerError> {
        self.check_admin()?;
        let user = name.to_string();
        self.change(move |access| access.directory.delete_user(&user))
            .await?;
        let cut = self.shared.access.cut_user(name);
        tracing::info!(user = name, sessions_ended = cut, "user deleted");
        Ok(())
    }

    /// Every user, by name.
    pub fn list_users(&self) -> Result<Vec<UserSummary>, BrokerError> {
        self.check_admin()?;
        let users = self.shared.access.directory.users();
        Ok(users
            .into_iter()
            .map(|(name, admin)| UserSummary { name, admin })
            .collect())
    }

    /// A new token for `user`, valid for `ttl` (`None`: until revoked).
    pub async fn create_token(
        &self,
        user: &str,
        ttl: Option<Duration>,
    ) -> Result<TokenCreated, BrokerError> {
        self.check_admin()?;
        let user = user.to_string();
        let ttl_ms = ttl.map(|ttl| ttl.as_millis().min(u128::from(u64::MAX)) as u64);
        let (token, stored) = self
            .change(move |access| access.directory.create_token(&user, ttl_ms))
            .await?;
        Ok(TokenCreated {
            token,
            summary: token_summary(stored),
        })
    }

    /// Every token (never the token itself), oldest first.
    pub fn list_tokens(&self) -> Result<Vec<TokenSummary>, BrokerError> {
        self.check_admin()?;
        let tokens = self.shared.access.directory.tokens();
        Ok(tokens.into_iter().map(token_summary).collect())
    }

    /// Revokes token `id`; the sessions that logged in with it end.
    pub async fn revoke_token(&self, id: &str) -> Result<(), BrokerError> {
        self.check_admin()?;
        let token = id.to_string();
        let revoked = self
            .change(move |access| access.directory.revoke_token(&token))
            .await?;
        if revoked.is_none() {
            return Err(BrokerError::InvalidArgument(format!("no token {id:?}")));
        }
        let cut = self.shared.access.cut_token(id);
        tracing::info!(token = id, sessions_ended = cut, "token revoked");
        Ok(())
    }

    /// Grants `user` `operations` (by name) on topics matching `pattern`.
    pub async fn add_rule(
        &self,
        user: &str,
        pattern: &str,
        operations: &[String],
    ) -> Result<AclRule, BrokerError> {
        self.check_admin()?;
        let operations = operations
            .iter()
            .map(|op| op.trim().parse::<Operation>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(BrokerError::InvalidArgument)?;
        let (user, pattern) = (user.to_string(), pattern.to_string());
        let rule = self
            .change(move |access| access.directory.add_rule(&user, &pattern, &operations))
            .await?;
        Ok(acl_rule(rule))
    }

    /// Every rule, oldest first.
    pub fn list_rules(&self) -> Result<Vec<AclRule>, BrokerError> {
        self.check_admin()?;
        let rules = self.shared.access.directory.rules();
        Ok(rules.into_iter().map(acl_rule).collect())
    }

    /// Removes rule `id`; its user's open sessions end, so nothing it granted goes on.
    pub async fn remove_rule(&self, id: u64) -> Result<(), BrokerError> {
        self.check_admin()?;
        let removed = self
            .change(move |access| access.directory.remove_rule(id))
            .await?;
        let Some(rule) = removed else {
            return Err(BrokerError::InvalidArgument(format!("no rule {id}")));
        };
        let cut = self.shared.access.cut_user(&rule.user);
        tracing::info!(
            rule = id,
            user = rule.user,
            sessions_ended = cut,
            "rule removed"
        );
        Ok(())
    }
}

fn password_channel(channel: Secure) -> Result<(), BrokerError> {
    if channel.0 {
        return Ok(());
    }
    Err(BrokerError::AuthenticationFailed(
        "a password is sent only over TLS or a loopback connection; connect with TLS".into(),
    ))
}

fn directory_error(err: DirectoryError) -> BrokerError {
    match err {
        DirectoryError::Storage(err) => BrokerError::Storage(err),
        other => BrokerError::InvalidArgument(other.to_string()),
    }
}

fn token_summary(token: StoredToken) -> TokenSummary {
    TokenSummary {
        id: token.id,
        user: token.user,
        created_ms: token.created_ms,
        expires_ms: token.expires_ms.unwrap_or(0),
    }
}

fn acl_rule(rule: StoredRule) -> AclRule {
    AclRule {
        id: rule.id,
        user: rule.user,
        pattern: rule.pattern,
        operations: rule.operations,
    }
}
