//! The broker's users, tokens and rules, kept in the store and read from memory.
//!
//! Every change is written to the store first (durable under the fsync policy) and then
//! made in memory, so what a check sees is always stored. Checks never touch the store:
//! a token or a permission is looked up in memory, and a password is checked against its
//! hash (slow by design: callers run [`Directory::check_password`] off the runtime).
//!
//! SCRAM for a name nobody has goes on with made-up credentials that are the same every
//! time for that name, so the exchange fails only at the proof: an unknown user and a
//! wrong password look alike.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use herald_protocol::record::now_ms;
use herald_protocol::scram::{self, Credentials};

use super::rules::{Operation, Pattern, Permissions, Rule};
use super::secrets::{self, PasswordRecord};
use crate::storage::{StorageError, Store, StoredRule, StoredToken, StoredUser};

/// Who a client turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub admin: bool,
}

/// Why a change to the directory was refused.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("user {0:?} exists")]
    UserExists(String),
    #[error("no user {0:?}")]
    UnknownUser(String),
    #[error("{0:?} is not a user name: 1 to 200 of A-Z a-z 0-9 . _ - @")]
    BadName(String),
    #[error("a password must not be empty")]
    EmptyPassword,
    #[error("{0}")]
    BadRule(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

#[derive(Default)]
struct State {
    users: HashMap<String, StoredUser>,
    tokens: HashMap<[u8; 32], StoredToken>,
    rules: Vec<StoredRule>,
}

pub struct Directory {
    store: Arc<Store>,
    state: RwLock<State>,
    /// Makes the stand-in credentials of unknown names; random per broker run.
    decoy_key: [u8; 32],
    /// Moves on whenever a user's password or existence changes, so what was learnt
    /// from a password check can be trusted only while it stays put.
    generation: std::sync::atomic::AtomicU64,
}

impl Directory {
    /// Reads every user, token and rule from `store`. Blocks.
    pub fn load(store: Arc<Store>) -> Result<Directory, StorageError> {
        let state = State {
            users: store
                .users()?
                .into_iter()
                .map(|u| (u.name.clone(), u))
                .collect(),
            tokens: store.tokens()?.into_iter().map(|t| (t.hash, t)).collect(),
            rules: store.rules()?,
        };
        let mut decoy_key = [0u8; 32];
        scram::fill_random(&mut decoy_key);
        Ok(Directory {
            store,
            state: RwLock::new(state),
            decoy_key,
            generation: Default::default(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The users' generation: see [`Directory`]'s `generation`.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn users_changed(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether anybody can log in yet.
    pub fn is_empty(&self) -> bool {
        self.read().users.is_empty()
    }

    /// Adds user `name` with `password`. Blocks (hashing, the store).
    pub fn add_user(&self, name: &str, password: &str, admin: bool) -> Result<(), DirectoryError> {
        check_name(name)?;
        if self.read().users.contains_key(name) {
            return Err(DirectoryError::UserExists(name.into()));
        }
        self.put_user(name, password, admin)
    }

    /// Gives user `name` a new password. Blocks.
    pub fn set_password(&self, name: &str, password: &str) -> Result<(), DirectoryError> {
        let admin = self
            .read()
            .users
            .get(name)
            .map(|u| u.admin)
            .ok_or_else(|| DirectoryError::UnknownUser(name.into()))?;
        self.put_user(name, password, admin)
    }

    fn put_user(&self, name: &str, password: &str, admin: bool) -> Result<(), DirectoryError> {
        if password.is_empty() {
            return Err(DirectoryError::EmptyPassword);
        }
        let record = secrets::hash_password(password);
        let user = StoredUser {
            name: name.to_string(),
            admin,
            argon2: record.argon2,
            scram: record.scram.encode(),
            created_ms: now_ms(),
        };
        self.store.put_user(user.clone())?;
        self.write().users.insert(name.to_string(), user);
        self.users_changed();
        Ok(())
    }

    /// Removes user `name` with its tokens and rules. Blocks.
    pub fn delete_user(&self, name: &str) -> Result<(), DirectoryError> {
        if !self.store.delete_user(name)? {
            return Err(DirectoryError::UnknownUser(name.into()));
        }
        let mut state = self.write();
        state.users.remove(name);
        state.tokens.retain(|_, t| t.user != name);
        state.rules.retain(|r| r.user != name);
        drop(state);
        self.users_changed();
        Ok(())
    }

    /// Every user's name and whether it is an administrator, by name.
    pub fn users(&self) -> Vec<(String, bool)> {
        let mut users: Vec<_> = self
            .read()
            .users
            .values()
            .map(|u| (u.name.clone(), u.admin))
            .collect();
        users.sort();
        users
    }

    /// Who `name` is if `password` is theirs (argon2id: slow, so it blocks).
    pub fn check_password(&self, name: &str, password: &str) -> Option<Identity> {
        let user = self.read().users.get(name).cloned();
        let Some(user) = user else {
            // As slow as a real check, so timing does not tell who exists.
            let _ = secrets::check_password(&decoy_record(), password);
            return None;
        };
        let record = PasswordRecord {
            argon2: user.argon2.clone(),
            scram: Credentials::decode(&user.scram).ok()?,
        };
        secrets::check_password(&record, password).then_some(Identity {
            user: user.name,
            admin: user.admin,
        })
    }

    /// The SCRAM credentials to answer `name` with: theirs, or stand-ins that are the same
    /// every time for a name nobody has.
    pub fn scram_credentials(&self, name: &str) -> Credentials {
        let stored = self.read().users.get(name).map(|u| u.scram.clone());
        if let Some(credentials) = stored.and_then(|s| Credentials::decode(&s).ok()) {
            return credentials;
        }
        let tag = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.decoy_key),
            name.as_bytes(),
        );
        let tag: [u8; 32] = tag.as_ref().try_into().expect("32 bytes");
        Credentials {
            salt: tag[..16].to_vec(),
            iterations: scram::DEFAULT_ITERATIONS,
            stored_key: tag,
            server_key: tag,
        }
    }

    /// The identity of a user SCRAM has just proven.
    pub fn identity(&self, name: &str) -> Option<Identity> {
        self.read().users.get(name).map(|u| Identity {
            user: u.name.clone(),
            admin: u.admin,
        })
    }

    /// A new token for `user`, valid for `ttl_ms` (or until revoked): the token, shown
    /// only now, and what is kept of it. Blocks.
    pub fn create_token(
        &self,
        user: &str,
        ttl_ms: Option<u64>,
    ) -> Result<(String, StoredToken), DirectoryError> {
        if !self.read().users.contains_key(user) {
            return Err(DirectoryError::UnknownUser(user.into()));
        }
        let (token, hash) = secrets::new_token();
        let now = now_ms();
        let mut id = [0u8; 6];
        scram::fill_random(&mut id);
        let stored = StoredToken {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            user: user.to_string(),
            hash,
            created_ms: now,
            expires_ms: ttl_ms.map(|ttl| now.saturating_add(ttl)),
        };
        self.store.put_token(stored.clone())?;
        self.write().tokens.insert(hash, stored.clone());
        Ok((token, stored))
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Vec<StoredToken> {
        let mut tokens: Vec<_> = self.read().tokens.values().cloned().collect();
        tokens.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        tokens
    }

    /// Revokes token `id`, returning it; `None` when there is none. Blocks.
    pub fn revoke_token(&self, id: &str) -> Result<Option<StoredToken>, DirectoryError> {
        let revoked = self.store.delete_token(id)?;
        if let Some(token) = &revoked {
            self.write().tokens.remove(&token.hash);
        }
        Ok(revoked)
    }

    /// Who `token` belongs to, and the token's id, if it is known and has not expired at
    /// `now_ms`.
    pub fn check_token(&self, token: &str, now_ms: u64) -> Option<(Identity, String)> {
        let hash = secrets::token_hash(token);
        let state = self.read();
        let kept = state.tokens.get(&hash)?;
        if !secrets::check_token(&kept.hash, token) || kept.expires_ms.is_some_and(|e| e <= now_ms)
        {
            return None;
        }
        let user = state.users.get(&kept.user)?;
        let identity = Identity {
            user: user.name.clone(),
            admin: user.admin,
        };
        Some((identity, kept.id.clone()))
    }

    /// Grants `user` `operations` on topics matching `pattern`. Blocks.
    pub fn add_rule(
        &self,
        user: &str,
        pattern: &str,
        operations: &[Operation],
    ) -> Result<StoredRule, DirectoryError> {
        Pattern::parse(pattern).map_err(DirectoryError::BadRule)?;
        if operations.is_empty() {
            return Err(DirectoryError::BadRule(
                "a rule grants at least one operation".into(),
            ));
        }
        if !self.read().users.contains_key(user) {
            return Err(DirectoryError::UnknownUser(user.into()));
        }
        let names = operations.iter().map(|op| op.name().to_string()).collect();
        let rule = self.store.add_rule(user, pattern, names)?;
        self.write().rules.push(rule.clone());
        Ok(rule)
    }

    /// Every rule, oldest first.
    pub fn rules(&self) -> Vec<StoredRule> {
        self.read().rules.clone()
    }

    /// Removes rule `id`, returning it; `None` when there is none. Blocks.
    pub fn remove_rule(&self, id: u64) -> Result<Option<StoredRule>, DirectoryError> {
        let rule = self.read().rules.iter().find(|r| r.id == id).cloned();
        if !self.store.delete_rule(id)? {
            return Ok(None);
        }
        self.write().rules.retain(|r| r.id != id);
        Ok(rule)
    }

    /// Whether `identity` may do `operation` on `topic` now (see [`Permissions::allows`]);
    /// what it is comes from memory, without copying its rules.
    pub fn allows(&self, identity: &Identity, operation: Operation, topic: Option<&str>) -> bool {
        let state = self.read();
        let Some(user) = state.users.get(&identity.user) else {
            return false; // deleted since it logged in
        };
        user.admin
            || state.rules.iter().any(|rule| {
                rule.user == user.name
                    && rule.operations.iter().any(|granted| {
                        granted
                            .parse::<Operation>()
                            .is_ok_and(|granted| granted.grants(operation))
                    })
                    && super::rules::covers(&rule.pattern, topic)
            })
    }

    /// What `identity` may do now.
    pub fn permissions(&self, identity: &Identity) -> Permissions {
        let state = self.read();
        let Some(user) = state.users.get(&identity.user) else {
            return Permissions::default(); // deleted since it logged in
        };
        let rules = state
            .rules
            .iter()
            .filter(|r| r.user == user.name)
            .filter_map(|r| {
                Some(Rule {
                    pattern: Pattern::parse(&r.pattern).ok()?,
                    operations: r.operations.iter().filter_map(|o| o.parse().ok()).collect(),
                })
            })
            .collect();
        Permissions {
            admin: user.admin,
            rules,
        }
    }
}

/// A user name: what a topic name allows, and `@` (names from certificates and mail).
fn check_name(name: &str) -> Result<(), DirectoryError> {
    let valid = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if valid {
        Ok(())
    } else {
        Err(DirectoryError::BadName(name.into()))
    }
}

/// A password record nobody's password matches, hashed once, to spend a real check's time.
fn decoy_record() -> PasswordRecord {
    static DECOY: std::sync::OnceLock<PasswordRecord> = std::sync::OnceLock::new();
    DECOY
        .get_or_init(|| {
            let mut random = [0u8; 24];
            scram::fill_random(&mut random);
            let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
            secrets::hash_password(&password)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StoreConfig;

    fn directory(dir: &std::path::Path) -> Directory {
        let store = Store::open(dir, StoreConfig::default()).unwrap();
        Directory::load(store).unwrap()
    }

    #[test]
    fn users_log_in_with_their_password_only_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let users = directory(dir.path());
            assert!(users.is_empty());
            users.add_user("admin", "root pw", true).unwrap();
            users.add_user("alice", "alice pw", false).unwrap();
            assert!(matches!(
                users.add_user("alice", "x", false),
                Err(DirectoryError::UserExists(_))
            ));
            assert!(matches!(
                users.add_user("a b", "x", false),
                Err(DirectoryError::BadName(_))
            ));
            assert!(matches!(
                users.add_user("bob", "", false),
                Err(DirectoryError::EmptyPassword)
            ));
            users.store.close().unwrap();
        }
        let users = directory(dir.path());
        assert_eq!(
            users.users(),
            [("admin".into(), true), ("alice".into(), false)]
        );
        let alice = Identity {
            user: "alice".into(),
            admin: false,
        };
        assert_eq!(
            users.check_password("alice", "alice pw"),
            Some(alice.clone())
        );
        assert_eq!(users.check_password("alice", "root pw"), None);
        assert_eq!(users.check_password("nobody", "alice pw"), None);
        users.set_password("alice", "new pw").unwrap();
        assert_eq!(users.check_password("alice", "alice pw"), None);
        assert_eq!(users.check_password("alice", "new pw"), Some(alice));

        // SCRAM with the stored credentials proves the password.
        let client = scram::ClientFirst::new("alice");
        let (first, expects) = scram::ServerFirst::parse(&client.message())
            .unwrap()
            .answer(users.scram_credentials("alice"));
        let (last, _) = client.answer(&first, "new pw").unwrap();
        assert!(expects.verify(&last).is_ok());
        // A name nobody has gets the same stand-in every time, and no proof passes.
        assert!(users.scram_credentials("ghost") == users.scram_credentials("ghost"));
        assert!(users.scram_credentials("ghost") != users.scram_credentials("ghost2"));
    }

    #[test]
    fn tokens_expire_and_are_revoked_and_go_with_their_user() {
        let dir = tempfile::tempdir().unwrap();
        let users = directory(dir.path());
        users.add_user("alice", "pw", false).unwrap();
        let (forever, kept) = users.create_token("alice", None).unwrap();
        let (brief, brief_kept) = users.create_token("alice", Some(1_000)).unwrap();
        assert!(users.create_token("nobody", None).is_err());
        let now = now_ms();
        assert_eq!(users.check_token(&forever, now).unwrap().0.user, "alice");
        assert!(users.check_token(&brief, now).is_some());
        assert!(users
            .check_token(&brief, brief_kept.expires_ms.unwrap())
            .is_none());
        assert!(users.check_token("hrld_made-up", now).is_none());
        assert_eq!(users.tokens().len(), 2);
        assert_eq!(users.revoke_token(&kept.id).unwrap().unwrap().id, kept.id);
        assert!(users.check_token(&forever, now).is_none());
        assert!(users.revoke_token(&kept.id).unwrap().is_none());
        users.delete_user("alice").unwrap();
        assert!(users.check_token(&brief, now).is_none());
        assert!(users.tokens().is_empty());
    }

    #[test]
    fn rules_grant_what_they_name_and_go_with_their_user() {
        let dir = tempfile::tempdir().unwrap();
        let users = directory(dir.path());
        users.add_user("alice", "pw", false).unwrap();
        users.add_user("root", "pw", true).unwrap();
        let rule = users
            .add_rule("alice", "orders.*", &[Operation::Publish])
            .unwrap();
        assert!(users
            .add_rule("alice", "a*b", &[Operation::Publish])
            .is_err());
        assert!(users.add_rule("alice", "x", &[]).is_err());
        assert!(users
            .add_rule("nobody", "x", &[Operation::Publish])
            .is_err());
        let alice = users.identity("alice").unwrap();
        let allowed = users.permissions(&alice);
        assert!(allowed.allows(Operation::Publish, Some("orders.eu")));
        assert!(!allowed.allows(Operation::Consume, Some("orders.eu")));
        let root = users.identity("root").unwrap();
        assert!(users
            .permissions(&root)
            .allows(Operation::Delete, Some("anything")));
        assert_eq!(
            users.remove_rule(rule.id).unwrap().map(|r| r.user),
            Some("alice".into())
        );
        assert!(users.remove_rule(rule.id).unwrap().is_none());
        assert!(!users
            .permissions(&alice)
            .allows(Operation::Publish, Some("orders.eu")));
        users
            .add_rule("alice", "*", &[Operation::Describe])
            .unwrap();
        users.delete_user("alice").unwrap();
        assert!(users.rules().is_empty());
        assert_eq!(users.permissions(&alice), Permissions::default());
    }
}
