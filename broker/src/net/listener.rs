//! Accepts connections, enforces the connection limit, and backs off on accept errors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::SinkExt;
use herald_protocol::{ErrorCode, ErrorFrame, FrameCodec, Message};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::FramedWrite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::session;
use crate::shared::Shared;
use crate::tls::{Accepted, Tls};

/// Accepts until `shutdown` is cancelled; each connection becomes a session task.
pub async fn run(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::clone(&shared.connections);
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Usually out of file descriptors: wait instead of spinning.
                tracing::warn!(%err, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        let _ = stream.set_nodelay(true);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                let (shared, shutdown) = (Arc::clone(&shared), shutdown.clone());
                tracker.spawn(async move {
                    match shared.tls.clone() {
                        None => {
                            let link = session::Link::default();
                            session::serve(stream.into_split(), peer, link, shared, shutdown).await
                        }
                        Some(tls) => serve_tls(&tls, stream, peer, shared, shutdown).await,
                    }
                    drop(slot);
                });
            }
            Err(_) => {
                tracing::warn!(%peer, "connection refused: limit of {} reached", shared.config.max_connections);
                tracker.spawn(refuse(stream, shared.config.max_connections));
            }
        }
    }
}

/// The TLS handshake, then the session; a plaintext client is told that this port speaks
/// TLS.
async fn serve_tls(
    tls: &Tls,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let within = Duration::from_millis(shared.config.hello_timeout_ms.max(1));
    match tls.accept(stream, within).await {
        Ok(Accepted::Tls(stream, name)) => {
            tracing::debug!(%peer, client = name.as_deref().unwrap_or("-"), "tls session");
            let link = session::Link {
                tls: true,
                certificate: name,
            };
            session::serve(tokio::io::split(*stream), peer, link, shared, shutdown).await
        }
        Ok(Accepted::Plaintext(stream)) => {
            tracing::warn!(%peer, "plaintext client at the TLS port; closing");
            let message = "this port speaks TLS: connect with TLS (herald --tls-ca FILE, or \
                           ConnectOptions' TLS settings)";
            say_and_close(stream, ErrorCode::NotSupported, message.into()).await;
        }
        Err(err) => tracing::warn!(%peer, %err, "TLS handshake failed"),
    }
}

/// Tells a client over the connection limit why it is being closed.
async fn refuse(stream: TcpStream, limit: usize) {
    let message = format!("the broker's limit of {limit} connections is reached");
    say_and_close(stream, ErrorCode::TooManyConnections, message).await;
}

/// Sends one error frame (giving up after a second) and closes the connection.
async fn say_and_close(stream: TcpStream, code: ErrorCode, message: String) {
    let mut out = FramedWrite::new(stream, FrameCodec::default());
    let error = ErrorFrame::new(code, message);
    let _ = tokio::time::timeout(Duration::from_secs(1), out.send(Message::new(0, error))).await;
}
