//! The connection task: it owns the socket, numbers requests, matches replies to them, and
//! keeps the session alive with heartbeats.
//!
//! [`Client`](crate::Client) handles send [`Request`]s over a bounded channel; the task
//! writes them (gathering whatever is queued into one write), and routes each reply to the
//! caller waiting on its correlation id, in whatever order replies arrive. Deliveries of
//! push subscriptions (correlation id 0) go to their subscription's queue; a subscription
//! is registered when its `Subscribed` reply is read, before any frame after it, so none
//! of its deliveries can arrive unrouted.

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_protocol::{
    Deliver, ErrorCode, Frame, FrameCodec, Heartbeat, Hello, HelloOk, Message,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::{BrokerError, Error, Result};

/// A request for the connection task, and where its reply goes.
pub(crate) struct Request {
    pub frame: Frame,
    pub reply: oneshot::Sender<Result<Frame>>,
    /// For a `Subscribe`: where the subscription's deliveries go. Unbounded here because
    /// the broker never has more than the subscriber's window unanswered.
    pub deliveries: Option<mpsc::UnboundedSender<Deliver>>,
}

/// A request sent and waiting for its reply.
struct Pending {
    reply: oneshot::Sender<Result<Frame>>,
    deliveries: Option<mpsc::UnboundedSender<Deliver>>,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Sent in `Hello`, shown in broker logs.
    pub client_id: String,
    /// Session timeout to ask for; `None` takes the broker's default.
    pub session_timeout: Option<Duration>,
    /// Largest frame this client accepts.
    pub max_frame_bytes: u32,
    /// Requests queued for the connection before callers wait.
    pub queue: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            client_id: format!("herald-client/{}", env!("CARGO_PKG_VERSION")),
            session_timeout: None,
            max_frame_bytes: herald_protocol::DEFAULT_MAX_FRAME_BYTES,
            queue: 1024,
        }
    }
}

type Reader = FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>;
type Writer = FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameCodec>;

/// Connects, says `Hello`, and starts the connection task.
pub(crate) async fn open(
    addr: impl ToSocketAddrs,
    options: &ConnectOptions,
) -> Result<(mpsc::Sender<Request>, HelloOk)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    let codec = FrameCodec::new(options.max_frame_bytes);
    let (mut reader, mut writer) = (FramedRead::new(read, codec), FramedWrite::new(write, codec));
    let hello = Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        client_id: options.client_id.clone(),
        heartbeat_interval_ms: 0,
        session_timeout_ms: options
            .session_timeout
            .map_or(0, |t| t.as_millis().min(u32::MAX as u128) as u32),
    };
    writer
        .send(Message::new(1, hello))
        .await
        .map_err(codec_error)?;
    let granted = loop {
        let raw = reader
            .next()
            .await
            .ok_or_else(|| Error::Closed("the broker closed the connection during Hello".into()))?
            .map_err(codec_error)?;
        match raw.decode().map_err(|e| Error::Protocol(e.to_string()))? {
            Frame::HelloOk(ok) => break ok,
            Frame::Error(err) => return Err(BrokerError::from(err).into()),
            Frame::Heartbeat(_) => continue,
            other => {
                return Err(Error::Protocol(format!(
                    "expected HelloOk, got {:?}",
                    other.opcode()
                )))
            }
        }
    };
    let (tx, rx) = mpsc::channel(options.queue.max(1));
    let task = Connection {
        reader,
        writer,
        pending: HashMap::new(),
        subscriptions: HashMap::new(),
        next_id: 2,
        heartbeat: Duration::from_millis(u64::from(granted.heartbeat_interval_ms.max(1))),
        timeout: Duration::from_millis(u64::from(granted.session_timeout_ms.max(1))),
    };
    tokio::spawn(task.run(rx));
    Ok((tx, granted))
}

fn codec_error(err: herald_protocol::CodecError) -> Error {
    match err {
        herald_protocol::CodecError::Io(io) => Error::Io(io),
        other => Error::Protocol(other.to_string()),
    }
}

struct Connection {
    reader: Reader,
    writer: Writer,
    pending: HashMap<u32, Pending>,
    subscriptions: HashMap<u64, mpsc::UnboundedSender<Deliver>>,
    next_id: u32,
    heartbeat: Duration,
    timeout: Duration,
}

impl Connection {
    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let reason = self.serve(&mut requests).await;
        tracing::debug!(%reason, "connection closed");
        for (_, waiter) in self.pending.drain() {
            let _ = waiter.reply.send(Err(Error::Closed(reason.clone())));
        }
        self.subscriptions.clear();
        requests.close();
        while let Some(request) = requests.recv().await {
            let _ = request.reply.send(Err(Error::Closed(reason.clone())));
        }
    }

    /// Serves until the connection ends; returns why.
    async fn serve(&mut self, requests: &mut mpsc::Receiver<Request>) -> String {
        let mut last_sent = Instant::now();
        let mut last_received = Instant::now();
        loop {
            let heartbeat_due = last_sent + self.heartbeat;
            let dead_at = last_received + self.timeout;
            tokio::select! {
                request = requests.recv() => {
                    let Some(request) = request else { return "client dropped".into() };
                    if let Err(err) = self.write(request, requests).await {
                        return err.to_string();
                    }
                    last_sent = Instant::now();
                }
                frame = self.reader.next() => {
                    last_received = Instant::now();
                    match frame {
                        None => return "the broker closed the connection".into(),
                        Some(Err(err)) => return codec_error(err).to_string(),
                        Some(Ok(raw)) => {
                            let id = raw.correlation_id;
                            match raw.decode() {
                                Ok(frame) => if let Some(reason) = self.on_frame(id, frame) { return reason },
                                Err(err) => self.fail(id, Error::Protocol(err.to_string())),
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(heartbeat_due) => {
                    if self.writer.send(Message::new(0, Heartbeat {})).await.is_err() {
                        return "cannot send a heartbeat".into();
                    }
                    last_sent = Instant::now();
                }
                _ = tokio::time::sleep_until(dead_at) => {
                    return format!("nothing heard from the broker for {:?}", self.timeout);
                }
            }
        }
    }

    /// Writes `first` and whatever else is already queued, then flushes once.
    async fn write(
        &mut self,
        first: Request,
        requests: &mut mpsc::Receiver<Request>,
    ) -> Result<()> {
        self.feed(first).await?;
        while let Ok(request) = requests.try_recv() {
            self.feed(request).await?;
        }
        self.writer.flush().await.map_err(codec_error)
    }

    async fn feed(&mut self, request: Request) -> Result<()> {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let pending = Pending {
            reply: request.reply,
            deliveries: request.deliveries,
        };
        self.pending.insert(id, pending);
        self.writer
            .feed(Message::new(id, request.frame))
            .await
            .map_err(codec_error)
    }

    /// Routes one frame; returns a reason when the connection must end.
    fn on_frame(&mut self, id: u32, frame: Frame) -> Option<String> {
        if id != 0 {
            match frame {
                Frame::Error(err) => self.fail(id, BrokerError::from(err).into()),
                reply => {
                    if let Some(waiter) = self.pending.remove(&id) {
                        if let (Frame::Subscribed(ok), Some(deliveries)) =
                            (&reply, waiter.deliveries)
                        {
                            self.subscriptions.insert(ok.subscription_id, deliveries);
                        }
                        let _ = waiter.reply.send(Ok(reply));
                    }
                }
            }
            return None;
        }
        match frame {
            Frame::Heartbeat(_) => None,
            Frame::Deliver(deliver) => {
                let id = deliver.subscription_id;
                let delivered = self.subscriptions.get(&id).map(|s| s.send(deliver));
                match delivered {
                    Some(Ok(())) => {}
                    // The consumer is gone; the broker redelivers what it does not answer.
                    Some(Err(_)) => {
                        self.subscriptions.remove(&id);
                    }
                    None => tracing::debug!(id, "a delivery for a subscription that has ended"),
                }
                None
            }
            Frame::GoingAway(away) => Some(format!("the broker is going away: {}", away.reason)),
            Frame::Error(err) => {
                let err = BrokerError::from(err);
                let fatal = matches!(
                    err.code,
                    Some(
                        ErrorCode::TooManyConnections
                            | ErrorCode::FrameTooLarge
                            | ErrorCode::MalformedFrame
                    )
                );
                tracing::warn!(%err, "broker error outside a request");
                fatal.then(|| err.to_string())
            }
            other => {
                tracing::debug!(opcode = ?other.opcode(), "ignoring an unsolicited frame");
                None
            }
        }
    }

    fn fail(&mut self, id: u32, err: Error) {
        if let Some(waiter) = self.pending.remove(&id) {
            let _ = waiter.reply.send(Err(err));
        }
    }
}
