//! Accepts connections, enforces the connection limit, and backs off on accept errors.

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
                    session::serve(stream, peer, shared, shutdown).await;
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

/// Tells a client over the connection limit why it is being closed.
async fn refuse(stream: TcpStream, limit: usize) {
    let mut out = FramedWrite::new(stream, FrameCodec::default());
    let error = ErrorFrame::new(
        ErrorCode::TooManyConnections,
        format!("the broker's limit of {limit} connections is reached"),
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), out.send(Message::new(0, error))).await;
}
