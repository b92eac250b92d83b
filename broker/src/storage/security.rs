//! Users, API tokens and permission rules in the store (see `crate::auth`).
//!
//! Three trees: `users` by name, `tokens` by the SHA-256 of the token (what a request is
//! looked up by; the id shown to operators is inside), `rules` by a number sled hands out.
//! Values are JSON: small, rare, and readable in a dump. Writes go through the writer, so
//! they are durable under the fsync policy before they are answered, like every other
//! write of the store.

use serde::{Deserialize, Serialize};

use super::*;

/// A user as stored: its password as argon2id (PHC form) and SCRAM-SHA-256 credentials
/// (their stored form), never the password itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUser {
    pub name: String,
    pub admin: bool,
    pub argon2: String,
    pub scram: String,
    pub created_ms: u64,
}

impl std::fmt::Debug for StoredUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredUser")
            .field("name", &self.name)
            .field("admin", &self.admin)
            .finish_non_exhaustive()
    }
}

/// An API token as stored: the hash of the token, never the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub id: String,
    pub user: String,
    pub hash: [u8; 32],
    pub created_ms: u64,
    /// When it stops working; `None`: until revoked.
    pub expires_ms: Option<u64>,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("id", &self.id)
            .field("user", &self.user)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

/// A rule: `user` may do `operations` on topics matching `pattern`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRule {
    pub id: u64,
    pub user: String,
    pub pattern: String,
    pub operations: Vec<String>,
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("security records serialize")
}

fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, StorageError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StorageError::Corrupt(format!("a stored {what} does not parse: {e}")))
}

impl Store {
    /// Stores `user` (a new one, or a new password for an existing one). Blocks.
    pub fn put_user(&self, user: StoredUser) -> Result<(), StorageError> {
        let users = self.users.clone();
        self.writer.run(move || {
            users
                .insert(user.name.as_bytes(), json(&user))
                .map(drop)
                .map_err(Into::into)
        })
    }

    /// The user called `name`. Blocks.
    pub fn user(&self, name: &str) -> Result<Option<StoredUser>, StorageError> {
        self.users
            .get(name.as_bytes())?
            .map(|v| parse(&v, "user"))
            .transpose()
    }

    /// Every user, by name. Blocks.
    pub fn users(&self) -> Result<Vec<StoredUser>, StorageError> {
        self.users
            .iter()
            .map(|entry| parse(&entry?.1, "user"))
            .collect()
    }

    /// Removes user `name` with its tokens and rules; false when there was no such user.
    /// Blocks.
    pub fn delete_user(&self, name: &str) -> Result<bool, StorageError> {
        let existed = self.users.contains_key(name.as_bytes())?;
        let tokens: Vec<_> = self
            .tokens()?
            .into_iter()
            .filter(|t| t.user == name)
            .map(|t| t.hash)
            .collect();
        let rules: Vec<_> = self
            .rules()?
            .into_iter()
            .filter(|r| r.user == name)
            .map(|r| r.id)
            .collect();
        let (users, token_tree, rule_tree) =
            (self.users.clone(), self.tokens.clone(), self.rules.clone());
        let name = name.to_string();
        self.writer.run(move || {
            for hash in tokens {
                token_tree.remove(hash)?;
            }
            for id in rules {
                rule_tree.remove(id.to_be_bytes())?;
            }
            users.remove(name.as_bytes())?;
            Ok(())
        })?;
        Ok(existed)
    }

    /// Stores `token`. Blocks.
    pub fn put_token(&self, token: StoredToken) -> Result<(), StorageError> {
        let tokens = self.tokens.clone();
        self.writer.run(move || {
            tokens
                .insert(token.hash, json(&token))
                .map(drop)
                .map_err(Into::into)
        })
    }

    /// The token whose hash is `hash`. Blocks.
    pub fn token(&self, hash: &[u8; 32]) -> Result<Option<StoredToken>, StorageError> {
        self.tokens
            .get(hash)?
            .map(|v| parse(&v, "token"))
            .transpose()
    }

    /// Every token. Blocks.
    pub fn tokens(&self) -> Result<Vec<StoredToken>, StorageError> {
        self.tokens
            .iter()
            .map(|entry| parse(&entry?.1, "token"))
            .collect()
    }

    /// Removes the token with id `id`, returning it; `None` when there is none. Blocks.
    pub fn delete_token(&self, id: &str) -> Result<Option<StoredToken>, StorageError> {
        let Some(token) = self.tokens()?.into_iter().find(|t| t.id == id) else {
            return Ok(None);
        };
        let (tokens, hash) = (self.tokens.clone(), token.hash);
        self.writer
            .run(move || tokens.remove(hash).map(drop).map_err(Into::into))?;
        Ok(Some(token))
    }

    /// Stores a new rule (its id is assigned here and returned). Blocks.
    pub fn add_rule(
        &self,
        user: &str,
        pattern: &str,
        operations: Vec<String>,
    ) -> Result<StoredRule, StorageError> {
        let rule = StoredRule {
            id: self.db.generate_id()?,
            user: user.to_string(),
            pattern: pattern.to_string(),
            operations,
        };
        let (rules, stored) = (self.rules.clone(), rule.clone());
        self.writer.run(move || {
            rules
                .insert(stored.id.to_be_bytes(), json(&stored))
                .map(drop)
                .map_err(Into::into)
        })?;
        Ok(rule)
    }

    /// Every rule, oldest first. Blocks.
    pub fn rules(&self) -> Result<Vec<StoredRule>, StorageError> {
        self.rules
            .iter()
            .map(|entry| parse(&entry?.1, "rule"))
            .collect()
    }

    /// Removes rule `id`; false when there was none. Blocks.
    pub fn delete_rule(&self, id: u64) -> Result<bool, StorageError> {
        let existed = self.rules.contains_key(id.to_be_bytes())?;
        let rules = self.rules.clone();
        self.writer
            .run(move || rules.remove(id.to_be_bytes()).map(drop).map_err(Into::into))?;
        Ok(existed)
    }
}
