//! Who a client is: the secrets behind users and API tokens.
//!
//! This is the first part of authentication (issue 18): how passwords and tokens are kept
//! and checked. The store of users, tokens and rules, the TCP protocol's SASL frames and
//! the gateway's `Authorization` handling build on it.
//!
//! - A password is kept only as an argon2id hash (for HTTP Basic and SASL PLAIN inside TLS)
//!   and as SCRAM-SHA-256 credentials (for the TCP protocol, where the password never
//!   crosses the wire; see [`herald_protocol::scram`]). Both are salted and slow to compute.
//! - A token is 32 random bytes, shown once as `hrld_` and 43 base64url characters; the
//!   broker keeps only its SHA-256. (A slow hash adds nothing to 256 random bits, and
//!   every request with a token checks it.)
//! - Every comparison of secrets takes the same time whatever matches.

pub mod secrets;
