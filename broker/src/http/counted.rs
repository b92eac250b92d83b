//! The HTTP listener under the broker's connection limit: each accepted connection holds a
//! slot of `--max-connections` (shared with the TCP listener) for as long as it is open; one
//! over the limit is answered `429` with `TooManyConnections` and closed.
//!
//! A connection whose peer reads nothing while the broker has something to write to it (a
//! browser that stopped reading its event stream, a client that sent requests and never
//! reads the answers) is closed once that has lasted the session timeout: the slot it
//! holds comes back, and the streams feeding it end.
//!
//! With TLS, each connection's handshake runs in a task of its own (a client that connects
//! and says nothing holds up no one), and the connection is handed to the server once it
//! is done; a client speaking plaintext HTTP to the TLS port is answered `400`, saying so.

use std::future::Future;
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
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tokio_util::task::TaskTracker;

use crate::metrics::counters::{Counters, Open, Way};
use crate::tls::{Accepted, Tls};

/// A TCP listener whose connections count against the broker's limit.
pub struct Counted {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    limit: usize,
    tls: Option<Handshakes>,
    /// How long a write may wait for the peer to read.
    stall_limit: Duration,
    counters: Arc<Counters>,
}

/// Connections in their TLS handshake, and those done with it.
struct Handshakes {
    tls: Tls,
    within: Duration,
    done_tx: mpsc::Sender<(Slotted, SocketAddr)>,
    done: mpsc::Receiver<(Slotted, SocketAddr)>,
    tasks: TaskTracker,
}

impl Counted {
    /// `tls` with the time a client has to finish its handshake; the handshakes run in
    /// `tasks`.
    pub fn new(
        listener: TcpListener,
        slots: Arc<Semaphore>,
        limit: usize,
        tls: Option<(Tls, Duration)>,
        tasks: TaskTracker,
        stall_limit: Duration,
        counters: Arc<Counters>,
    ) -> Counted {
        let tls = tls.map(|(tls, within)| {
            let (done_tx, done) = mpsc::channel(64);
            Handshakes {
                tls,
                within,
                done_tx,
                done,
                tasks,
            }
        });
        Counted {
            listener,
            slots,
            limit,
            tls,
            stall_limit,
            counters,
        }
    }
}

/// An accepted connection and the slot it holds.
pub struct Slotted {
    stream: Either<TcpStream, Box<TlsStream<TcpStream>>>,
    /// The common name of the client's verified certificate, over TLS with
    /// `--tls-client-ca`.
    certificate: Option<Arc<str>>,
    _slot: OwnedSemaphorePermit,
    /// Counts the connection as open (the metrics) until it closes.
    _open: Open,
    stall_limit: Duration,
    /// Runs while a write waits for the peer; fires after `stall_limit`.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Slotted {
    fn new(
        stream: Either<TcpStream, Box<TlsStream<TcpStream>>>,
        certificate: Option<String>,
        (slot, open): (OwnedSemaphorePermit, Open),
        stall_limit: Duration,
    ) -> Slotted {
        Slotted {
            stream,
            _open: open,
            certificate: certificate.map(Arc::from),
            _slot: slot,
            stall_limit,
            stalled: None,
        }
    }

    /// `written` as it is, unless the peer has not taken anything for the stall limit:
    /// then an error, and the connection closes.
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if written.is_ready() {
            self.stalled = None;
            return written;
        }
        let limit = self.stall_limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer read nothing for the session timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The peer of a connection, as handlers ask for it (`ConnectInfo<Peer>`).
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Over TLS.
    pub tls: bool,
    /// The common name of the client's verified certificate.
    pub certificate: Option<Arc<str>>,
}

impl Connected<IncomingStream<'_, Counted>> for Peer {
    fn connect_info(stream: IncomingStream<'_, Counted>) -> Peer {
        let io = stream.io();
        Peer {
            addr: *stream.remote_addr(),
            tls: matches!(io.stream, Either::Right(_)),
            certificate: io.certificate.clone(),
        }
    }
}

impl Listener for Counted {
    type Io = Slotted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Slotted, SocketAddr) {
        let mut backoff = Duration::from_millis(5);
        loop {
            let accepted = match &mut self.tls {
                None => self.listener.accept().await,
                Some(handshakes) => tokio::select! {
                    accepted = self.listener.accept() => accepted,
                    Some(done) = handshakes.done.recv() => return done,
                },
            };
            let (stream, peer) = match accepted {
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
            let slot = match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    tracing::warn!(%peer, "http connection refused: limit of {} reached", self.limit);
                    tokio::spawn(refuse(stream, self.limit));
                    continue;
                }
            };
            let open = self.counters.open(Way::Http);
            let Some(handshakes) = &self.tls else {
                return (
                    Slotted::new(Either::Left(stream), None, (slot, open), self.stall_limit),
                    peer,
                );
            };
            let (tls, within, done, stall_limit) = (
                handshakes.tls.clone(),
                handshakes.within,
                handshakes.done_tx.clone(),
                self.stall_limit,
            );
            handshakes.tasks.spawn(async move {
                match tls.accept(stream, within).await {
                    Ok(Accepted::Tls(stream, certificate)) => {
                        let slotted = Slotted::new(
                            Either::Right(stream),
                            certificate,
                            (slot, open),
                            stall_limit,
                        );
                        let _ = done.send((slotted, peer)).await;
                    }
                    Ok(Accepted::Plaintext(stream)) => {
                        tracing::warn!(%peer, "plaintext HTTP at the TLS port; answered 400");
                        plaintext_refused(stream).await;
                    }
                    Err(err) => tracing::warn!(%peer, %err, "TLS handshake failed"),
                }
            });
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Answers a connection over the limit with `429` and the error body, then closes it.
async fn refuse(stream: TcpStream, limit: usize) {
    let message = format!("the broker's limit of {limit} connections is reached");
    answer_and_close(
        stream,
        "429 Too Many Requests",
        ErrorCode::TooManyConnections,
        message,
    )
    .await;
}

/// Answers plaintext HTTP at the TLS port with `400`, saying to use HTTPS.
async fn plaintext_refused(stream: TcpStream) {
    let message = "this port speaks HTTPS (TLS): use https:// and wss://".to_string();
    answer_and_close(stream, "400 Bad Request", ErrorCode::NotSupported, message).await;
}

/// Writes one HTTP answer with the error body (giving up after a second), then closes.
async fn answer_and_close(mut stream: TcpStream, status: &str, code: ErrorCode, message: String) {
    let body = serde_json::json!({"error": {
        "code": code.name(),
        "number": code as u16,
        "message": message,
    }})
    .to_string();
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
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
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.bounded(cx, written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.stream).poll_flush(cx);
        self.bounded(cx, flushed)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shut = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.bounded(cx, shut)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.bounded(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
