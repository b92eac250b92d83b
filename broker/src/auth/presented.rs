//! What a client presents to prove who it is, read from wherever each way in carries it.
//!
//! - HTTP: `Authorization: Bearer TOKEN` or `Authorization: Basic base64(user:password)`;
//! - `EventSource`, which cannot set headers: the `herald_token` cookie, or
//!   `?access_token=TOKEN` in the URL (the same token; a URL lands in proxy logs, so the
//!   cookie is the better of the two);
//! - a WebSocket: the same, at the upgrade request.
//!
//! A header that is there but malformed is an error, not "no credentials": a client that
//! meant to authenticate is told why it failed rather than treated as anonymous.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

/// Credentials as presented.
#[derive(Clone, PartialEq, Eq)]
pub enum Presented {
    Token(String),
    Password { user: String, password: String },
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presented::Token(_) => f.write_str("Token(..)"),
            Presented::Password { user, .. } => write!(f, "Password {{ user: {user:?}, .. }}"),
        }
    }
}

/// The name of the cookie that carries a token.
pub const TOKEN_COOKIE: &str = "herald_token";

/// Reads the credentials of an HTTP request from its `Authorization` header, its `Cookie`
/// header and its `access_token` query parameter, in that order of preference.
pub fn from_http(
    authorization: Option<&str>,
    cookie: Option<&str>,
    access_token: Option<&str>,
) -> Result<Option<Presented>, String> {
    if let Some(value) = authorization {
        return from_authorization(value).map(Some);
    }
    if let Some(token) = cookie.and_then(token_cookie) {
        return Ok(Some(Presented::Token(token.to_string())));
    }
    Ok(access_token
        .filter(|t| !t.is_empty())
        .map(|t| Presented::Token(t.to_string())))
}

fn from_authorization(value: &str) -> Result<Presented, String> {
    let (scheme, rest) = value
        .trim()
        .split_once(' ')
        .ok_or("the Authorization header needs a scheme: Bearer or Basic")?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return Err("a Bearer Authorization header without a token".into());
        }
        return Ok(Presented::Token(rest.to_string()));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = BASE64
            .decode(rest)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or("a Basic Authorization header that is not base64 of user:password")?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or("a Basic Authorization header without user:password")?;
        return Ok(Presented::Password {
            user: user.to_string(),
            password: password.to_string(),
        });
    }
    Err(format!(
        "the Authorization scheme {scheme:?} is not supported: use Bearer or Basic"
    ))
}

/// The token in a `Cookie` header's `herald_token`, if there is one.
fn token_cookie(header: &str) -> Option<&str> {
    header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == TOKEN_COOKIE && !value.is_empty()).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> Option<Presented> {
        Some(Presented::Token(t.into()))
    }

    #[test]
    fn bearer_basic_cookie_and_query_are_read_in_that_order() {
        assert_eq!(
            from_http(Some("Bearer hrld_abc"), None, None),
            Ok(token("hrld_abc"))
        );
        assert_eq!(
            from_http(Some("bearer  hrld_abc "), None, None),
            Ok(token("hrld_abc"))
        );
        let basic = format!("Basic {}", BASE64.encode("alice:pa:ss"));
        assert_eq!(
            from_http(Some(&basic), Some("herald_token=t1"), None),
            Ok(Some(Presented::Password {
                user: "alice".into(),
                password: "pa:ss".into()
            }))
        );
        assert_eq!(
            from_http(None, Some("theme=dark; herald_token=t1"), Some("t2")),
            Ok(token("t1"))
        );
        assert_eq!(
            from_http(None, Some("theme=dark"), Some("t2")),
            Ok(token("t2"))
        );
        assert_eq!(from_http(None, None, None), Ok(None));
        assert_eq!(from_http(None, None, Some("")), Ok(None));
    }

    #[test]
    fn a_malformed_authorization_header_is_an_error_not_anonymous() {
        for bad in [
            "Bearer",
            "Bearer ",
            "Basic !!!",
            "Basic",
            "Digest abc",
            "token",
        ] {
            assert!(from_http(Some(bad), None, None).is_err(), "{bad:?}");
        }
        let no_colon = format!("Basic {}", BASE64.encode("alice"));
        assert!(from_http(Some(&no_colon), None, None).is_err());
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let shown = format!(
            "{:?} {:?}",
            Presented::Token("hrld_secret".into()),
            Presented::Password {
                user: "alice".into(),
                password: "hunter2".into()
            }
        );
        assert!(
            !shown.contains("secret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("alice"));
    }
}
