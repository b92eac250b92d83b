//! The connection task: it owns the socket, numbers requests, matches replies to them,
//! keeps the session alive with heartbeats, and connects again when the connection breaks.
//!
//! [`Client`](crate::Client) handles send [`Request`]s over a bounded channel; the task
//! numbers them and hands them to the connection's writer task (which gathers whatever is
//! queued into one write), so it goes on reading replies while a write waits on a full
//! socket; it takes new requests only while the writer has room. It routes each reply to
//! the caller waiting on its correlation id, in whatever order replies arrive. Deliveries
//! of push subscriptions (correlation id 0) go to their subscription's queue, bounded by
//! the subscriber's window (the broker never has more unanswered); a subscription is
//! registered when its `Subscribed` reply is read, before any frame after it, so none of
//! its deliveries can arrive unrouted.
//!
//! ## When the connection breaks
//!
//! The broker is declared dead when nothing arrived from it for the granted session
//! timeout (heartbeats flow both ways while either side is idle), when the socket fails,
//! or when it says `GoingAway`. Requests written but unanswered then fail with
//! [`Error::Disconnected`]: they may or may not have taken effect. Requests not yet written
//! stay queued. With [`ConnectOptions::reconnect`] set (the default), the task connects
//! again after a backoff with full jitter — attempt `n` waits a uniformly random time in
//! `[0, min(cap, base · 2ⁿ)]`, no less than a `GoingAway`'s `reconnect_after_ms` — says
//! `Hello` again, and carries on with the queued requests. The broker ends the old
//! session's subscriptions and memberships; the producer and consumers in this crate
//! notice the new connection (see [`Client::connection_state`](crate::Client)) and set up
//! theirs again. Every change is logged and sent to [`Client::events`](crate::Client).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_protocol::{
    Deliver, ErrorCode, Frame, FrameCodec, Heartbeat, Hello, HelloOk, Message,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::error::{BrokerError, Error, Result};

/// A request for the connection task, and where its reply goes.
pub(crate) struct Request {
    pub frame: Frame,
    pub reply: oneshot::Sender<Result<Frame>>,
    /// For a `Subscribe`: where the subscription's deliveries go.
    pub route: Option<Route>,
}

/// Where a subscription's deliveries go, and where to say which connection took it.
pub(crate) struct Route {
    /// Room for one window of frames: the broker never has more than the subscriber's
    /// window unanswered, and each frame carries at least one record. It sends more only
    /// when the application left a whole window unread past the ack deadline; a frame
    /// that finds the queue full is left unanswered, and the broker sends it again after
    /// its deadline.
    pub deliveries: mpsc::Sender<Deliver>,
    /// Told the epoch of the connection the subscription was made on, before its reply.
    pub epoch: oneshot::Sender<u64>,
}

/// A request sent and waiting for its reply.
struct Pending {
    reply: oneshot::Sender<Result<Frame>>,
    route: Option<Route>,
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
    /// Most time for one connection attempt: TCP connect, TLS, `Hello`, its answer and the
    /// login.
    pub connect_timeout: Duration,
    /// How to connect again after the connection breaks; `None` ends the client instead
    /// (every later call fails with [`Error::Closed`]).
    pub reconnect: Option<Reconnect>,
    /// TLS towards the broker (started with `--tls-cert`); `None` speaks plaintext.
    pub tls: Option<crate::TlsOptions>,
    /// Who to log in as after `Hello` (brokers started with `--auth` need it), on every
    /// connect; `None` stays anonymous.
    pub credentials: Option<crate::Credentials>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            client_id: format!("herald-client/{}", env!("CARGO_PKG_VERSION")),
            session_timeout: None,
            max_frame_bytes: herald_protocol::DEFAULT_MAX_FRAME_BYTES,
            queue: 1024,
            connect_timeout: Duration::from_secs(10),
            reconnect: Some(Reconnect::default()),
            tls: None,
            credentials: None,
        }
    }
}

/// Reconnection backoff: exponential, capped, with full jitter so that many clients cut
/// off together do not all come back at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// The window of the first attempt: it waits a random time in `[0, base]`.
    pub base: Duration,
    /// The largest window; the window doubles per failed attempt up to this.
    pub cap: Duration,
    /// Attempts in a row before the client gives up for good; `None` tries forever.
    pub max_attempts: Option<u32>,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl Reconnect {
    /// The wait before attempt `attempt` (0 = the first after a break).
    pub fn delay(&self, attempt: u32, at_least: Duration) -> Duration {
        let window = self
            .base
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
            .min(self.cap);
        let jitter = Duration::from_nanos(fastrand::u64(..=window.as_nanos() as u64));
        at_least + jitter
    }
}

/// A change of the connection, as [`Client::events`](crate::Client) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEvent {
    /// A connection is up and greeted; `epoch` counts connections, from 1.
    Connected { epoch: u64, session: HelloOk },
    /// The connection `epoch` broke; unanswered requests failed with `Disconnected`.
    Disconnected { epoch: u64, reason: String },
    /// Waiting `delay` before connection attempt `attempt` (from 1).
    Reconnecting { attempt: u32, delay: Duration },
    /// The client has stopped for good: reconnection is off, gave up, or was refused.
    Closed { reason: String },
}

/// Where the connection stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionState {
    /// Connections made so far; a new value means a new broker session.
    pub epoch: u64,
    /// Whether a greeted connection is up now.
    pub connected: bool,
    /// Whether the client has stopped for good.
    pub closed: bool,
}

/// What the application holds of the connection task.
pub(crate) struct Handle {
    pub requests: mpsc::Sender<Request>,
    pub session: HelloOk,
    pub state: watch::Receiver<ConnectionState>,
    pub events: broadcast::Sender<ConnectionEvent>,
}

type Reader = FramedRead<Box<dyn AsyncRead + Send + Unpin>, FrameCodec>;
type Writer = FramedWrite<Box<dyn AsyncWrite + Send + Unpin>, FrameCodec>;

/// Connects, says `Hello`, and starts the connection task. The first connection must
/// succeed; later ones are the task's business.
pub(crate) async fn open(addr: impl ToSocketAddrs, options: ConnectOptions) -> Result<Handle> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    let (connection, session) = connect(&addrs, &options, 1).await?;
    let (requests, rx) = mpsc::channel(options.queue.max(1));
    let (state_tx, state) = watch::channel(ConnectionState {
        epoch: 1,
        connected: true,
        closed: false,
    });
    let (events, _) = broadcast::channel(64);
    let _ = events.send(ConnectionEvent::Connected {
        epoch: 1,
        session: session.clone(),
    });
    let supervisor = Supervisor {
        addrs,
        options,
        state: state_tx,
        events: events.clone(),
        epoch: 1,
    };
    tokio::spawn(supervisor.run(connection, rx));
    Ok(Handle {
        requests,
        session,
        state,
        events,
    })
}

/// Makes one connection: TCP (and TLS), then `Hello` and its `HelloOk`, then the login,
/// within the connect timeout.
async fn connect(
    addrs: &[SocketAddr],
    options: &ConnectOptions,
    epoch: u64,
) -> Result<(Connection, HelloOk)> {
    let limit = options.connect_timeout;
    tokio::time::timeout(limit, handshake(addrs, options, epoch))
        .await
        .map_err(|_| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer to Hello within {limit:?}"),
            ))
        })?
}

async fn handshake(
    addrs: &[SocketAddr],
    options: &ConnectOptions,
    epoch: u64,
) -> Result<(Connection, HelloOk)> {
    let stream = TcpStream::connect(addrs).await?;
    stream.set_nodelay(true)?;
    let (read, write): (
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    ) = match &options.tls {
        None => {
            let (read, write) = stream.into_split();
            (Box::new(read), Box::new(write))
        }
        Some(tls) => {
            let addr = stream.peer_addr()?;
            let (read, write) = tokio::io::split(tls.connect(stream, addr).await?);
            (Box::new(read), Box::new(write))
        }
    };
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
    let next_id = match &options.credentials {
        Some(credentials) => crate::login::login(&mut reader, &mut writer, credentials, 2).await?,
        None => 2,
    };
    let (outgoing, queued) = mpsc::channel(WRITER_QUEUE);
    let connection = Connection {
        reader,
        outgoing,
        writer: tokio::spawn(write_loop(writer, queued)),
        pending: HashMap::new(),
        subscriptions: HashMap::new(),
        next_id,
        heartbeat: Duration::from_millis(u64::from(granted.heartbeat_interval_ms.max(1))),
        timeout: Duration::from_millis(u64::from(granted.session_timeout_ms.max(1))),
        epoch,
    };
    Ok((connection, granted))
}

pub(crate) fn codec_error(err: herald_protocol::CodecError) -> Error {
    match err {
        herald_protocol::CodecError::Io(io) => Error::Io(io),
        other => Error::Protocol(other.to_string()),
    }
}

/// Why a connection ended.
struct End {
    reason: String,
    /// Connecting again makes no sense: the application dropped every handle, or the
    /// broker refused this client outright.
    last: bool,
    /// The broker asked to wait this long first (`GoingAway`).
    wait: Duration,
}

impl End {
    fn broken(reason: impl Into<String>) -> End {
        End {
            reason: reason.into(),
            last: false,
            wait: Duration::ZERO,
        }
    }
}

/// Runs connections one after another for as long as the client lives.
struct Supervisor {
    addrs: Vec<SocketAddr>,
    options: ConnectOptions,
    state: watch::Sender<ConnectionState>,
    events: broadcast::Sender<ConnectionEvent>,
    epoch: u64,
}

impl Supervisor {
    async fn run(mut self, first: Connection, mut requests: mpsc::Receiver<Request>) {
        let mut connection = first;
        // A request taken off the queue while no connection was up, sent first on the next.
        let mut held: Option<Request> = None;
        let reason = loop {
            let end = connection.serve(&mut requests, held.take()).await;
            connection.fail_pending(&end.reason);
            self.state.send_modify(|s| s.connected = false);
            let _ = self.events.send(ConnectionEvent::Disconnected {
                epoch: self.epoch,
                reason: end.reason.clone(),
            });
            let Some(policy) = self.options.reconnect.filter(|_| !end.last) else {
                break end.reason;
            };
            tracing::warn!(reason = end.reason, "connection to the broker lost");
            match self
                .reconnect(policy, end.wait, &mut requests, &mut held)
                .await
            {
                Ok(next) => connection = next,
                Err(reason) => break reason,
            }
        };
        tracing::debug!(%reason, "client closed");
        self.state.send_modify(|s| s.closed = true);
        let _ = self.events.send(ConnectionEvent::Closed {
            reason: reason.clone(),
        });
        requests.close();
        let failed = held
            .into_iter()
            .chain(std::iter::from_fn(|| requests.try_recv().ok()));
        for request in failed {
            let _ = request.reply.send(Err(Error::Closed(reason.clone())));
        }
    }

    /// Backs off and connects until it works; returns why not when it gives up.
    async fn reconnect(
        &mut self,
        policy: Reconnect,
        wait: Duration,
        requests: &mut mpsc::Receiver<Request>,
        held: &mut Option<Request>,
    ) -> std::result::Result<Connection, String> {
        let mut attempt = 0u32;
        loop {
            if policy.max_attempts.is_some_and(|max| attempt >= max) {
                return Err(format!("gave up after {attempt} reconnection attempts"));
            }
            let delay = policy.delay(attempt, wait);
            attempt += 1;
            let _ = self
                .events
                .send(ConnectionEvent::Reconnecting { attempt, delay });
            tracing::info!(attempt, ?delay, "reconnecting");
            let wake = Instant::now() + delay;
            // Wait out the delay, noticing meanwhile if every handle is dropped.
            while held.is_none() {
                tokio::select! {
                    request = requests.recv() => match request {
                        Some(request) => *held = Some(request),
                        None => return Err("client dropped".into()),
                    },
                    _ = tokio::time::sleep_until(wake) => break,
                }
            }
            tokio::time::sleep_until(wake).await;
            match connect(&self.addrs, &self.options, self.epoch + 1).await {
                Ok((connection, session)) => {
                    self.epoch += 1;
                    let epoch = self.epoch;
                    tracing::info!(epoch, attempt, "reconnected");
                    self.state.send_replace(ConnectionState {
                        epoch,
                        connected: true,
                        closed: false,
                    });
                    let _ = self
                        .events
                        .send(ConnectionEvent::Connected { epoch, session });
                    return Ok(connection);
                }
                Err(err) if refused_for_good(&err) => return Err(err.to_string()),
                Err(err) => tracing::debug!(%err, attempt, "reconnection attempt failed"),
            }
        }
    }
}

/// Errors in `Hello` that another attempt cannot cure.
fn refused_for_good(err: &Error) -> bool {
    matches!(
        err.code(),
        Some(ErrorCode::UnsupportedVersion | ErrorCode::MalformedFrame)
    )
}

/// Frames handed to a connection's writer task and not yet written.
const WRITER_QUEUE: usize = 64;

/// Writes queued frames, gathering whatever is ready into one write; ends when the
/// connection drops its queue, or with the error that stopped it.
async fn write_loop(mut writer: Writer, mut queued: mpsc::Receiver<Message>) -> Result<()> {
    while let Some(message) = queued.recv().await {
        writer.feed(message).await.map_err(codec_error)?;
        while let Ok(message) = queued.try_recv() {
            writer.feed(message).await.map_err(codec_error)?;
        }
        writer.flush().await.map_err(codec_error)?;
    }
    Ok(())
}

impl Drop for Connection {
    fn drop(&mut self) {
        // A write stuck on a dead peer's full socket must not outlive its connection.
        self.writer.abort();
    }
}

/// One connection's socket and the requests waiting on it.
struct Connection {
    reader: Reader,
    /// Frames for the writer task.
    outgoing: mpsc::Sender<Message>,
    writer: JoinHandle<Result<()>>,
    pending: HashMap<u32, Pending>,
    subscriptions: HashMap<u64, mpsc::Sender<Deliver>>,
    next_id: u32,
    heartbeat: Duration,
    timeout: Duration,
    /// Which connection of the client this is, from 1.
    epoch: u64,
}

impl Connection {
    /// Serves until the connection ends (sending `first` before anything else); says why.
    async fn serve(
        &mut self,
        requests: &mut mpsc::Receiver<Request>,
        first: Option<Request>,
    ) -> End {
        if let Some(request) = first {
            if let Err(end) = self.send(request).await {
                return end;
            }
        }
        let mut last_sent = Instant::now();
        let mut last_received = Instant::now();
        loop {
            let heartbeat_due = last_sent + self.heartbeat;
            let dead_at = last_received + self.timeout;
            tokio::select! {
                request = requests.recv(), if self.outgoing.capacity() > 0 => {
                    let Some(request) = request else {
                        return End { reason: "client dropped".into(), last: true, wait: Duration::ZERO };
                    };
                    if let Err(end) = self.send(request).await {
                        return end;
                    }
                    last_sent = Instant::now();
                }
                frame = self.reader.next() => {
                    last_received = Instant::now();
                    match frame {
                        None => return End::broken("the broker closed the connection"),
                        Some(Err(err)) => return End::broken(codec_error(err).to_string()),
                        Some(Ok(raw)) => {
                            let id = raw.correlation_id;
                            match raw.decode() {
                                Ok(frame) => if let Some(end) = self.on_frame(id, frame) { return end },
                                Err(err) => self.fail(id, Error::Protocol(err.to_string())),
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(heartbeat_due) => {
                    // A full queue means frames are on their way: no heartbeat needed.
                    if let Err(TrySendError::Closed(_)) = self.outgoing.try_send(Message::new(0, Heartbeat {})) {
                        return self.write_failed().await;
                    }
                    last_sent = Instant::now();
                }
                _ = tokio::time::sleep_until(dead_at) => {
                    return End::broken(format!("nothing heard from the broker for {:?}", self.timeout));
                }
            }
        }
    }

    /// Fails every request written and not answered: nobody can say whether it took effect.
    fn fail_pending(&mut self, reason: &str) {
        for (_, waiter) in self.pending.drain() {
            let _ = waiter
                .reply
                .send(Err(Error::Disconnected(reason.to_string())));
        }
        self.subscriptions.clear();
    }

    /// Numbers `request` and hands it to the writer task, waiting only if the writer's
    /// queue is full (the loop in `serve` takes requests only while it has room).
    async fn send(&mut self, request: Request) -> std::result::Result<(), End> {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let pending = Pending {
            reply: request.reply,
            route: request.route,
        };
        self.pending.insert(id, pending);
        if self
            .outgoing
            .send(Message::new(id, request.frame))
            .await
            .is_err()
        {
            return Err(self.write_failed().await);
        }
        Ok(())
    }

    /// The writer task stopped: says why.
    async fn write_failed(&mut self) -> End {
        match (&mut self.writer).await {
            Ok(Err(err)) => End::broken(err.to_string()),
            _ => End::broken("cannot write to the broker"),
        }
    }

    /// Routes one frame; says when the connection must end.
    fn on_frame(&mut self, id: u32, frame: Frame) -> Option<End> {
        if id != 0 {
            match frame {
                Frame::Error(err) => self.fail(id, BrokerError::from(err).into()),
                reply => {
                    if let Some(waiter) = self.pending.remove(&id) {
                        if let (Frame::Subscribed(ok), Some(route)) = (&reply, waiter.route) {
                            self.subscriptions
                                .insert(ok.subscription_id, route.deliveries);
                            let _ = route.epoch.send(self.epoch);
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
                let delivered = self.subscriptions.get(&id).map(|s| s.try_send(deliver));
                match delivered {
                    Some(Ok(())) => {}
                    // The consumer is gone; the broker redelivers what it does not answer.
                    Some(Err(TrySendError::Closed(_))) => {
                        self.subscriptions.remove(&id);
                    }
                    // The application has not read a whole window for longer than the ack
                    // deadline, so the broker took those back and sent more. Not lost: this
                    // one is unanswered too and comes back after its deadline.
                    Some(Err(TrySendError::Full(deliver))) => tracing::warn!(
                        subscription = id,
                        partition = deliver.partition,
                        "the consumer holds a whole window unread; a delivery waits for its ack deadline"
                    ),
                    None => tracing::debug!(id, "a delivery for a subscription that has ended"),
                }
                None
            }
            Frame::GoingAway(away) => Some(End {
                reason: format!("the broker is going away: {}", away.reason),
                last: false,
                wait: Duration::from_millis(u64::from(away.reconnect_after_ms)),
            }),
            Frame::Error(err) => {
                let err = BrokerError::from(err);
                tracing::warn!(%err, "broker error outside a request");
                match err.code {
                    Some(ErrorCode::TooManyConnections) => Some(End::broken(err.to_string())),
                    Some(ErrorCode::FrameTooLarge | ErrorCode::MalformedFrame) => Some(End {
                        reason: err.to_string(),
                        last: true,
                        wait: Duration::ZERO,
                    }),
                    _ => None,
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_windows_double_up_to_the_cap_and_jitter_fills_them() {
        let policy = Reconnect {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
            max_attempts: None,
        };
        let floor = Duration::from_millis(250);
        for (attempt, window_ms) in [
            (0, 100),
            (1, 200),
            (2, 400),
            (3, 800),
            (4, 1000),
            (40, 1000),
        ] {
            let window = Duration::from_millis(window_ms);
            let delays: Vec<Duration> = (0..2000).map(|_| policy.delay(attempt, floor)).collect();
            assert!(delays.iter().all(|d| *d >= floor && *d <= floor + window));
            // Full jitter: the whole window is used, not just its end.
            let low = delays.iter().filter(|d| **d < floor + window / 4).count();
            let high = delays
                .iter()
                .filter(|d| **d > floor + window * 3 / 4)
                .count();
            assert!(
                low > 300 && high > 300,
                "attempt {attempt}: {low} low, {high} high"
            );
        }
    }
}
