//! Who a client is: the secrets behind users and API tokens.
//!
//! - [`secrets`]: how passwords and tokens are kept and checked;
//! - [`rules`]: what a rule grants;
//! - [`directory`]: the users, tokens and rules (in the store, read from memory);
//! - [`presented`]: credentials as HTTP clients present them;
//! - [`access`]: the `--auth` switch at run time: logins, the check every core verb makes,
//!   failed logins slowed per address, and open sessions cut when their credentials go.
//!
//! The TCP protocol logs in with SASL after `Hello` (`net::login`); the gateway reads
//! credentials from every request (`http::authed`).
//!
//! - A password is kept only as an argon2id hash (for HTTP Basic and SASL PLAIN inside TLS)
//!   and as SCRAM-SHA-256 credentials (for the TCP protocol, where the password never
//!   crosses the wire; see [`herald_protocol::scram`]). Both are salted and slow to compute.
//! - A token is 32 random bytes, shown once as `hrld_` and 43 base64url characters; the
//!   broker keeps only its SHA-256. (A slow hash adds nothing to 256 random bits, and
//!   every request with a token checks it.)
//! - Every comparison of secrets takes the same time whatever matches.

pub mod access;
pub mod directory;
pub mod presented;
pub mod rules;
pub mod secrets;
