//! Who a client is: the secrets behind users and API tokens.
//!
//! These are the parts of authentication and authorization (issue 18) that stand on their
//! own: how passwords and tokens are kept and checked ([`secrets`]), what a rule grants
//! ([`rules`]), and the [`directory`] of users, tokens and rules (in the store, read from
//! memory). The `--auth`
//! switch, the TCP protocol's SASL frames, the gateway's `Authorization` handling and the
//! checks in the core come on top of them; until then nothing asks for credentials.
//!
//! - A password is kept only as an argon2id hash (for HTTP Basic and SASL PLAIN inside TLS)
//!   and as SCRAM-SHA-256 credentials (for the TCP protocol, where the password never
//!   crosses the wire; see [`herald_protocol::scram`]). Both are salted and slow to compute.
//! - A token is 32 random bytes, shown once as `hrld_` and 43 base64url characters; the
//!   broker keeps only its SHA-256. (A slow hash adds nothing to 256 random bits, and
//!   every request with a token checks it.)
//! - Every comparison of secrets takes the same time whatever matches.

pub mod directory;
pub mod presented;
pub mod rules;
pub mod secrets;
