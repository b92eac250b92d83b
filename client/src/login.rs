//! Logging in after `Hello`, on brokers started with `--auth` (see PROTOCOL.md,
//! Authentication). The connection does it on every connect, so a client that reconnects
//! logs in again by itself.

use futures::{SinkExt, StreamExt};
use herald_protocol::scram::{ClientFirst, KeyCache};
use herald_protocol::{sasl, Frame, FrameCodec, Message, SaslContinue, SaslOk, SaslStart};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::{BrokerError, Error, Result};

/// Who the client logs in as.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A user and its password, with SCRAM-SHA-256: the password never crosses the wire,
    /// and the broker proves it holds the user's credentials.
    Password { user: String, password: String },
    /// An API token (`hrld_...`); the broker takes it inside TLS or on loopback.
    Token(String),
}

impl Credentials {
    pub fn password(user: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials::Password {
            user: user.into(),
            password: password.into(),
        }
    }

    pub fn token(token: impl Into<String>) -> Credentials {
        Credentials::Token(token.into())
    }
}

/// Never shows a secret.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Password { user, .. } => write!(f, "Password {{ user: {user:?}, .. }}"),
            Credentials::Token(_) => f.write_str("Token(..)"),
        }
    }
}

/// The keys of this process's last SCRAM login: logging in again with the same password
/// (a reconnect, another connection) skips PBKDF2's deliberate tens of milliseconds.
static KEYS: KeyCache = KeyCache::new();

/// Runs one SASL exchange on a connection that has said `Hello`, using correlation ids
/// from `first_id` on; returns the next free id.
pub(crate) async fn login<R, W>(
    reader: &mut FramedRead<R, FrameCodec>,
    writer: &mut FramedWrite<W, FrameCodec>,
    credentials: &Credentials,
    first_id: u32,
) -> Result<u32>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match credentials {
        Credentials::Token(token) => {
            let start = SaslStart {
                mechanism: sasl::TOKEN.into(),
                payload: token.clone().into_bytes().into(),
            };
            send(writer, first_id, start.into()).await?;
            expect_ok(next(reader).await?)?;
            Ok(first_id + 1)
        }
        Credentials::Password { user, password } => {
            let first = ClientFirst::new(user);
            let start = SaslStart {
                mechanism: sasl::SCRAM_SHA_256.into(),
                payload: first.message().into_bytes().into(),
            };
            send(writer, first_id, start.into()).await?;
            let challenge = match next(reader).await? {
                Frame::SaslChallenge(challenge) => challenge,
                other => return Err(unexpected(other)),
            };
            let server_first = String::from_utf8_lossy(&challenge.payload);
            let (answer, expects) = first
                .answer_with(&server_first, password, &KEYS)
                .map_err(|err| Error::Protocol(format!("the broker's SCRAM challenge: {err}")))?;
            let answer = SaslContinue {
                payload: answer.into_bytes().into(),
            };
            send(writer, first_id + 1, answer.into()).await?;
            let ok = expect_ok(next(reader).await?)?;
            expects
                .verify(&String::from_utf8_lossy(&ok.payload))
                .map_err(|err| {
                    Error::Protocol(format!(
                        "the broker did not prove it holds {user:?}'s credentials: {err}"
                    ))
                })?;
            Ok(first_id + 2)
        }
    }
}

async fn send<W: AsyncWrite + Unpin>(
    writer: &mut FramedWrite<W, FrameCodec>,
    id: u32,
    frame: Frame,
) -> Result<()> {
    writer
        .send(Message {
            correlation_id: id,
            frame,
        })
        .await
        .map_err(super::connection::codec_error)
}

/// The next frame that is not a heartbeat.
async fn next<R: AsyncRead + Unpin>(reader: &mut FramedRead<R, FrameCodec>) -> Result<Frame> {
    loop {
        let raw = reader
            .next()
            .await
            .ok_or_else(|| {
                Error::Closed("the broker closed the connection while logging in".into())
            })?
            .map_err(super::connection::codec_error)?;
        match raw.decode().map_err(|e| Error::Protocol(e.to_string()))? {
            Frame::Heartbeat(_) => continue,
            frame => return Ok(frame),
        }
    }
}

fn expect_ok(frame: Frame) -> Result<SaslOk> {
    match frame {
        Frame::SaslOk(ok) => Ok(ok),
        other => Err(unexpected(other)),
    }
}

fn unexpected(frame: Frame) -> Error {
    match frame {
        Frame::Error(err) => BrokerError::from(err).into(),
        other => Error::Protocol(format!("expected a SASL answer, got {:?}", other.opcode())),
    }
}
