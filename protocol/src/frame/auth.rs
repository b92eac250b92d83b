//! Authentication frames: SASL after `Hello`, on brokers started with `--auth`.
//!
//! The client names a mechanism in `SaslStart`; the broker answers each step with a
//! `SaslChallenge` until it is done, then `SaslOk` (or an `Error` with
//! `AuthenticationFailed`, which ends the attempt; the client may start another).
//!
//! - `SCRAM-SHA-256` (RFC 5802 / 7677, without channel binding): `SaslStart` carries the
//!   client-first message, `SaslChallenge` the server-first, `SaslContinue` the
//!   client-final, and `SaslOk` the server-final, which the client must check: it proves
//!   the broker knew the user's credentials. The password never crosses the wire.
//! - `PLAIN` (RFC 4616: `authzid NUL user NUL password`): one `SaslStart`; accepted only
//!   inside TLS.
//! - `TOKEN`: one `SaslStart` whose payload is an API token; accepted inside TLS or on a
//!   loopback connection.

use bytes::Bytes;

use crate::wire::wire_struct;

/// The mechanism names `SaslStart` accepts.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// SASL PLAIN: user and password in one message (inside TLS only).
pub const PLAIN: &str = "PLAIN";
/// An API token as the whole message.
pub const TOKEN: &str = "TOKEN";

wire_struct! {
    /// Client → broker: begin authenticating with `mechanism`.
    ///
    /// ```text
    /// +-----------+---------+
    /// | mechanism | payload |
    /// |  string   |  bytes  |
    /// +-----------+---------+
    /// ```
    pub struct SaslStart {
        pub mechanism: String,
        pub payload: Bytes,
    }
}

wire_struct! {
    /// Broker → client: the mechanism's next challenge (`payload bytes`).
    pub struct SaslChallenge {
        pub payload: Bytes,
    }
}

wire_struct! {
    /// Client → broker: the answer to a `SaslChallenge` (`payload bytes`).
    pub struct SaslContinue {
        pub payload: Bytes,
    }
}

wire_struct! {
    /// Broker → client: authenticated as `user`; `payload` is the mechanism's final
    /// message (SCRAM's server-final, empty for the others).
    ///
    /// ```text
    /// +--------+-------+---------+
    /// |  user  | admin | payload |
    /// | string | bool  |  bytes  |
    /// +--------+-------+---------+
    /// ```
    pub struct SaslOk {
        pub user: String,
        pub admin: bool,
        pub payload: Bytes,
    }
}

/// A SASL PLAIN message for `user` and `password` (empty authzid).
pub fn plain_message(user: &str, password: &str) -> Bytes {
    Bytes::from(format!("\0{user}\0{password}"))
}

/// The user and password of a SASL PLAIN message; `None` when it is not one, or names an
/// authzid other than the user (acting for someone else is not supported).
pub fn parse_plain(message: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(message).ok()?;
    let mut parts = text.splitn(3, '\0');
    let (authzid, user, password) = (parts.next()?, parts.next()?, parts.next()?);
    if user.is_empty() || (!authzid.is_empty() && authzid != user) {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_round_trips_and_refuses_what_is_not_plain() {
        let message = plain_message("alice", "pass\u{e9}");
        assert_eq!(
            parse_plain(&message),
            Some(("alice".into(), "pass\u{e9}".into()))
        );
        assert_eq!(
            parse_plain(b"alice\0alice\0pw"),
            Some(("alice".into(), "pw".into()))
        );
        assert_eq!(parse_plain(b"bob\0alice\0pw"), None);
        assert_eq!(parse_plain(b"\0alice"), None);
        assert_eq!(parse_plain(b"\0\0pw"), None);
        assert_eq!(parse_plain(b"\0a\0\xff"), None);
    }
}
