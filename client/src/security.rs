//! Users, API tokens and permission rules: calls that need the `admin` operation on a
//! broker started with `--auth` (a user may change its own password).

use std::time::Duration;

use herald_protocol::{
    AclRule, AddAcl, CreateToken, CreateUser, DeleteUser, ListAcls, ListTokens, ListUsers,
    RemoveAcl, RevokeToken, SetPassword, TokenCreated, TokenSummary, UserSummary,
};

use crate::client::{expect_reply, Client};
use crate::error::Result;

impl Client {
    /// Adds a user. The password travels to the broker, which takes it only over TLS or a
    /// loopback connection.
    pub async fn create_user(&self, name: &str, password: &str, admin: bool) -> Result<()> {
        let request = CreateUser {
            name: name.into(),
            password: password.into(),
            admin,
        };
        expect_reply!(self.call(request).await?, Ok).map(drop)
    }

    /// Gives user `name` a new password (as [`Client::create_user`], over TLS or loopback).
    pub async fn set_password(&self, name: &str, password: &str) -> Result<()> {
        let request = SetPassword {
            name: name.into(),
            password: password.into(),
        };
        expect_reply!(self.call(request).await?, Ok).map(drop)
    }

    /// Deletes a user with its tokens and rules; its open sessions end.
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let request = DeleteUser { name: name.into() };
        expect_reply!(self.call(request).await?, Ok).map(drop)
    }

    /// Every user, by name.
    pub async fn list_users(&self) -> Result<Vec<UserSummary>> {
        Ok(expect_reply!(self.call(ListUsers {}).await?, UserList)?.users)
    }

    /// A new API token for `user`, valid for `ttl` (`None`: until revoked). The token is
    /// in the answer only: the broker keeps a hash of it.
    pub async fn create_token(&self, user: &str, ttl: Option<Duration>) -> Result<TokenCreated> {
        let request = CreateToken {
            user: user.into(),
            ttl_ms: ttl.map_or(0, |t| t.as_millis().clamp(1, u128::from(u64::MAX)) as u64),
        };
        expect_reply!(self.call(request).await?, TokenCreated)
    }

    /// Every token's id, user and times, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenSummary>> {
        Ok(expect_reply!(self.call(ListTokens {}).await?, TokenList)?.tokens)
    }

    /// Revokes token `id`; sessions that logged in with it end.
    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let request = RevokeToken { id: id.into() };
        expect_reply!(self.call(request).await?, Ok).map(drop)
    }

    /// Grants `user` `operations` (`publish`, `consume`, `describe`, `create`, `delete`,
    /// `admin`) on topics matching `pattern` (`orders`, `orders.*`, `*`); the rule as
    /// stored, with its id.
    pub async fn add_acl(&self, user: &str, pattern: &str, operations: &[&str]) -> Result<AclRule> {
        let rule = AclRule {
            id: 0,
            user: user.into(),
            pattern: pattern.into(),
            operations: operations.iter().map(|op| op.to_string()).collect(),
        };
        expect_reply!(self.call(AddAcl { rule }).await?, AclRule)
    }

    /// Every rule, oldest first.
    pub async fn list_acls(&self) -> Result<Vec<AclRule>> {
        Ok(expect_reply!(self.call(ListAcls {}).await?, AclList)?.rules)
    }

    /// Removes rule `id`; its user's open sessions end.
    pub async fn remove_acl(&self, id: u64) -> Result<()> {
        expect_reply!(self.call(RemoveAcl { id }).await?, Ok).map(drop)
    }
}

impl Client {
    /// The broker's headline figures, as the JSON document `GET /v1/stats` answers (see
    /// the README): topics, groups with their lag, connections, disk. With `--auth` it
    /// needs `describe` on every topic.
    pub async fn stats(&self) -> Result<String> {
        Ok(expect_reply!(self.call(herald_protocol::GetStats {}).await?, Stats)?.json)
    }
}
