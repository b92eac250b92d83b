//! The HTTP listener under the broker's connection limit: each accepted connection holds a
//! slot of `--max-connections` (shared with the TCP listener) for as long as it is open; one
//! over the limit is answered `429` with `TooManyConnections` and closed.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use herald_protocol::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A TCP listener whose connections count against the broker's limit.
pub struct Counted {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limit: usize,
}

impl Counted {
    pub fn new(listener: TcpListener, slots: Arc<Semaphore>, limit: usize) -> Counted {
        Counted {
            listener,
            slots,
            limit,
        }
    }
}

/// An accepted connection and the slot it holds.
pub struct Slotted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

/// The peer of a connection, as handlers ask for it (`ConnectInfo<Peer>`).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl Connected<IncomingStream<'_, Counted>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Counted>) -> Peer {
        Peer(*stream.remote_addr())
    }
}

impl Listener for Counted {
    type Io = Slotted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Slotted, SocketAddr) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    tracing::warn!(%err, "http accept failed; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => {
                    return (
                        Slotted {
                            stream,
                            _slot: slot,
                        },
                        peer,
                    )
                }
                Err(_) => {
                    tracing::warn!(%peer, "http connection refused: limit of {} reached", self.limit);
                    tokio::spawn(refuse(stream, self.limit));
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Answers a connection over the limit with `429` and the error body, then closes it.
async fn refuse(mut stream: TcpStream, limit: usize) {
    let code = ErrorCode::TooManyConnections;
    let body = serde_json::json!({"error": {
        "code": code.name(),
        "number": code as u16,
        "message": format!("the broker's limit of {limit} connections is reached"),
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
}

impl AsyncRead for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Slotted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
