//! Hashing and checking passwords and tokens.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use herald_protocol::scram::{self, Credentials};
use subtle::ConstantTimeEq;

/// What the broker keeps of a user's password.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordRecord {
    /// The argon2id hash in PHC form (`$argon2id$v=19$m=...`).
    pub argon2: String,
    /// SCRAM-SHA-256's stored form (see [`Credentials::encode`]).
    pub scram: Credentials,
}

impl std::fmt::Debug for PasswordRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordRecord { .. }")
    }
}

/// The settings of new hashes: argon2id with its recommended defaults (19 MiB, 2 passes),
/// and [`scram::DEFAULT_ITERATIONS`] of PBKDF2 for SCRAM.
pub fn hash_password(password: &str) -> PasswordRecord {
    let mut salt = [0u8; 16];
    scram::fill_random(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    let argon2 = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default settings hashes any password")
        .to_string();
    PasswordRecord {
        argon2,
        scram: Credentials::new(password, scram::DEFAULT_ITERATIONS),
    }
}

/// Whether `password` is the one `record` was made from (argon2id; constant-time).
pub fn check_password(record: &PasswordRecord, password: &str) -> bool {
    PasswordHash::new(&record.argon2)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A secret held in memory (the bootstrap administrator's password): it shows as
/// `Secret(..)` in any `Debug` output, so it never reaches a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a token looks like: this prefix, then 43 base64url characters.
pub const TOKEN_PREFIX: &str = "hrld_";

/// A new token: the text to show once, and the hash to keep.
pub fn new_token() -> (String, [u8; 32]) {
    let mut bytes = [0u8; 32];
    scram::fill_random(&mut bytes);
    let token = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = token_hash(&token);
    (token, hash)
}

/// The hash a token is kept and looked up by.
pub fn token_hash(token: &str) -> [u8; 32] {
    ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// Whether `token` hashes to `kept` (constant-time).
pub fn check_token(kept: &[u8; 32], token: &str) -> bool {
    token_hash(token).ct_eq(kept).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_checks_against_its_own_hash_only() {
        let record = hash_password("correct horse");
        assert!(record.argon2.starts_with("$argon2id$"), "{}", record.argon2);
        assert!(!record.argon2.contains("correct horse"));
        assert!(check_password(&record, "correct horse"));
        assert!(!check_password(&record, "correct hors"));
        assert!(!check_password(&record, ""));
        // The same password hashes differently each time (salted).
        assert_ne!(hash_password("correct horse").argon2, record.argon2);
        // A damaged record refuses rather than panics.
        let broken = PasswordRecord {
            argon2: "not a hash".into(),
            ..record.clone()
        };
        assert!(!check_password(&broken, "correct horse"));
        assert_eq!(format!("{record:?}"), "PasswordRecord { .. }");
    }

    #[test]
    fn the_scram_credentials_log_the_same_password_in() {
        let record = hash_password("pw");
        let client = scram::ClientFirst::new("alice");
        let (server_first, expects) = scram::ServerFirst::parse(&client.message())
            .unwrap()
            .answer(record.scram);
        let (client_final, pending) = client.answer(&server_first, "pw").unwrap();
        let done = expects.verify(&client_final).unwrap();
        pending.verify(&done.message).unwrap();
    }

    #[test]
    fn tokens_are_random_and_checked_by_their_hash() {
        let (token, kept) = new_token();
        let (other, _) = new_token();
        assert_ne!(token, other);
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() == TOKEN_PREFIX.len() + 43);
        assert!(check_token(&kept, &token));
        assert!(!check_token(&kept, &other));
        assert!(!check_token(&kept, ""));
    }
}
