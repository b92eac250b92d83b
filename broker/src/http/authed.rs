//! Who an HTTP request comes from: every route takes [`Authed`], the gateway acting for
//! the credentials the request presents (see `auth::presented` for where they are read:
//! `Authorization: Bearer` or `Basic`, the `herald_token` cookie, `?access_token=`), or
//! for the user its client certificate names when it presents none.
//!
//! Credentials that are presented are always checked, with `--auth` off as well: a client
//! that sends a wrong token hears so. A request without any is anonymous, which with
//! `--auth` on the core refuses (`401`, with `WWW-Authenticate`). A WebSocket is checked
//! at its upgrade, so a refused one never opens.

use std::collections::HashMap;

use axum::extract::{ConnectInfo, FromRequestParts, Query};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;

use super::counted::Peer;
use super::json::HttpError;
use super::Gateway;
use crate::auth::access::{Channel, Login, Principal};
use crate::auth::presented;
use crate::error::BrokerError;

/// The gateway, acting for the request's principal.
pub struct Authed(pub Gateway);

impl FromRequestParts<Gateway> for Authed {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, gateway: &Gateway) -> Result<Self, HttpError> {
        let failed = |message: String| HttpError::from(BrokerError::AuthenticationFailed(message));
        let header = |name: axum::http::HeaderName| {
            parts
                .headers
                .get(&name)
                .map(|value: &axum::http::HeaderValue| {
                    value
                        .to_str()
                        .map_err(|_| failed(format!("the {name} header is not visible ASCII")))
                })
                .transpose()
        };
        let (authorization, cookie) = (header(AUTHORIZATION)?, header(COOKIE)?);
        let query = match parts.uri.query() {
            Some(query) if query.contains("access_token") => {
                Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
                    .map(|Query(query)| query)
                    .unwrap_or_default()
            }
            _ => HashMap::new(),
        };
        let access_token = query.get("access_token").map(String::as_str);
        let presented =
            presented::from_http(authorization, cookie, access_token).map_err(failed)?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<Peer>>()
            .map(|ConnectInfo(peer)| peer.clone())
            .ok_or_else(|| HttpError::from(BrokerError::NotSupported("no peer address")))?;
        let channel = Channel {
            peer: peer.addr,
            tls: peer.tls,
        };
        let access = gateway.core.access();
        let login = match presented {
            Some(presented) => access.login_presented(&presented, &channel).await?,
            None => match peer
                .certificate
                .as_deref()
                .and_then(|name| access.directory.identity(name))
            {
                Some(identity) => {
                    let login = Login {
                        identity,
                        token: None,
                    };
                    access.succeeded(&peer.addr, &login, "certificate")
                }
                None => return Ok(Authed(gateway.clone())),
            },
        };
        Ok(Authed(gateway.acting_for(Principal::User(login))))
    }
}
