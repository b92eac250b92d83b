//! Logging in on the TCP protocol: SASL after `Hello` (see PROTOCOL.md, Authentication).
//!
//! A session runs one exchange at a time: `SaslStart` begins one (a new one replaces a
//! login the session already has, so a session authenticated by its client certificate
//! can still log in as someone else), `SaslContinue` answers SCRAM's challenge. Every
//! failure ends the exchange, is logged and slows the address down (`auth::access`).

use std::sync::Arc;

use bytes::Bytes;
use herald_protocol::scram::{ScramError, ServerExpects, ServerFirst};
use herald_protocol::{sasl, SaslContinue, SaslStart};

use crate::auth::access::{Access, Channel, Login};
use crate::error::BrokerError;

/// Where an exchange stands after a client's message.
pub enum Step {
    /// Send this challenge and wait for `SaslContinue`.
    Challenge(Bytes),
    /// Logged in; send `SaslOk` with this final message.
    Done(Arc<Login>, Bytes),
}

/// One session's exchange in progress.
#[derive(Default)]
pub struct Exchange {
    /// SCRAM, between the challenge and the client's proof.
    scram: Option<ServerExpects>,
}

impl Exchange {
    /// Begins an exchange with `start`'s mechanism.
    pub async fn start(
        &mut self,
        access: &Arc<Access>,
        channel: &Channel,
        start: SaslStart,
    ) -> Result<Step, BrokerError> {
        self.scram = None;
        let peer = &channel.peer;
        let mechanism = start.mechanism.as_str();
        match mechanism {
            sasl::SCRAM_SHA_256 => {
                access.attempt(peer).await;
                let text = std::str::from_utf8(&start.payload).unwrap_or_default();
                let first = ServerFirst::parse(text).map_err(|err| {
                    access.failed(peer, "-", mechanism, &format!("client-first: {err}"))
                })?;
                let credentials = access.directory.scram_credentials(&first.user);
                let (challenge, expects) = first.answer(credentials);
                self.scram = Some(expects);
                Ok(Step::Challenge(Bytes::from(challenge)))
            }
            sasl::PLAIN => {
                if !channel.tls {
                    tracing::warn!(%peer, "PLAIN outside TLS was refused");
                    return Err(BrokerError::AuthenticationFailed(
                        "PLAIN is accepted only inside TLS; log in with SCRAM-SHA-256".into(),
                    ));
                }
                let (user, password) = sasl::parse_plain(&start.payload)
                    .ok_or_else(|| access.failed(peer, "-", mechanism, "not a PLAIN message"))?;
                let login = access
                    .login_password(&user, &password, channel, mechanism)
                    .await?;
                Ok(Step::Done(login, Bytes::new()))
            }
            sasl::TOKEN => {
                let token = std::str::from_utf8(&start.payload).unwrap_or_default();
                let login = access.login_token(token, channel, mechanism).await?;
                Ok(Step::Done(login, Bytes::new()))
            }
            other => Err(BrokerError::AuthenticationFailed(format!(
                "unknown mechanism {other:?}: this broker offers {}, {} (inside TLS) and {}",
                sasl::SCRAM_SHA_256,
                sasl::PLAIN,
                sasl::TOKEN
            ))),
        }
    }

    /// Takes the client's answer to the challenge.
    pub fn proceed(
        &mut self,
        access: &Access,
        channel: &Channel,
        answer: SaslContinue,
    ) -> Result<Step, BrokerError> {
        let Some(expects) = self.scram.take() else {
            return Err(BrokerError::AuthenticationFailed(
                "SaslContinue without an exchange in progress: send SaslStart first".into(),
            ));
        };
        let (peer, mechanism) = (&channel.peer, sasl::SCRAM_SHA_256);
        let user = expects.user.clone();
        let text = std::str::from_utf8(&answer.payload).unwrap_or_default();
        let verified = expects.verify(text).map_err(|err| {
            let why = match err {
                ScramError::BadProof => "wrong user name or password".to_string(),
                other => other.to_string(),
            };
            access.failed(peer, &user, mechanism, &why)
        })?;
        let identity = access
            .directory
            .identity(&user)
            .ok_or_else(|| access.failed(peer, &user, mechanism, "the user was deleted"))?;
        let login = Login {
            identity,
            token: None,
        };
        let login = access.succeeded(peer, &login, mechanism);
        Ok(Step::Done(login, Bytes::from(verified.message)))
    }
}
