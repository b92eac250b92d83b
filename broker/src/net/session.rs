//! One client's session: the handshake, reading requests, running them concurrently,
//! and writing replies in whatever order they finish.
//!
//! Requests are read in order and each is *prepared* in order (a publish is validated and
//! queued for storage before the next frame is read, so one connection's publishes keep
//! their order); what is left — waiting for a commit, a long-poll, a store read — runs as
//! its own task, so a slow request never holds up the ones behind it. At most
//! `--max-in-flight` requests run at once; replies go through a bounded queue to one writer
//! task, so a client that stops reading stalls only itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_protocol::{
    CodecError, DecodeError, ErrorCode, ErrorFrame, Frame, FrameCodec, GoingAway, Heartbeat, Hello,
    HelloOk, Message, RawFrame, SaslChallenge, SaslOk, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::access::{Channel, Hold, Principal};
use crate::cmd::{self, Reply};
use crate::core::{Core, Secure};
use crate::metrics::counters::{Counters, Way};
use crate::net::login::{Exchange, Step};
use crate::net::outbound::{Outbound, Queued, Ticket};
use crate::shared::Shared;

/// What the connection under a session is.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// Inside TLS.
    pub tls: bool,
    /// The common name of the client's verified certificate (`--tls-client-ca`).
    pub certificate: Option<String>,
}

/// Serves one connection, given as its reading and writing halves (a TCP stream's own, or
/// a TLS session's), until the client leaves, the stream breaks, or shutdown.
pub async fn serve<R, W>(
    (read, write): (R, W),
    peer: SocketAddr,
    link: Link,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("session", id, %peer);
    serve_session(id, read, write, peer, link, shared, shutdown)
        .instrument(span)
        .await
}

async fn serve_session<R, W>(
    id: u64,
    read: R,
    write: W,
    peer: SocketAddr,
    link: Link,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    tracing::debug!("connected");
    let _open = shared.counters.open(Way::Tcp);
    let (out, outbound) = Outbound::new(
        shared.config.outbound_queue,
        shared.config.max_outbound_bytes,
        Arc::clone(&shared.outbound_bytes),
    );
    let (timeout_ms, heartbeat_ms) = shared.config.grant_session(0, 0);
    let heartbeat = Arc::new(AtomicU64::new(u64::from(heartbeat_ms)));
    let writer = tokio::spawn(write_loop(
        write,
        outbound,
        shared.config.max_frame_bytes,
        Arc::clone(&heartbeat),
    ));
    let mut session = Session {
        id,
        peer,
        in_flight: Arc::new(Semaphore::new(shared.config.max_in_flight.max(1))),
        requests: TaskTracker::new(),
        client_gone: CancellationToken::new(),
        over: CancellationToken::new(),
        greeted: false,
        timeout: Duration::from_millis(u64::from(timeout_ms)),
        heartbeat,
        out,
        core: Core::new(Arc::clone(&shared)),
        channel: Channel {
            peer,
            tls: link.tls,
        },
        certificate: link.certificate,
        exchange: Exchange::default(),
        hold: None,
        shared,
    };
    let reason = session.read_loop(read, &shutdown).await;
    session.over.cancel();
    if !shutdown.is_cancelled() {
        // Nobody will read the replies: stop waiting for them. Appends already queued are
        // committed by the storage writer all the same.
        session.client_gone.cancel();
    }
    session.requests.close();
    session.requests.wait().await;
    session.hold = None;
    // Only now, with none of its requests still running, can its memberships go.
    session.core.session_closed(id).await;
    if shutdown.is_cancelled() {
        let going = GoingAway {
            reconnect_after_ms: 1000,
            reason: "broker shutting down".into(),
        };
        let _ = session.out.send(Message::new(0, going)).await;
    }
    drop(session);
    let _ = writer.await;
    tracing::debug!(reason, "disconnected");
}

struct Session {
    id: u64,
    peer: SocketAddr,
    shared: Arc<Shared>,
    /// The verbs, acting for whoever the session logged in as.
    core: Core,
    channel: Channel,
    /// Who the client's certificate names, for logging in at `Hello`.
    certificate: Option<String>,
    exchange: Exchange,
    /// The session's login, registered to end the session when it is revoked.
    hold: Option<Hold>,
    out: Outbound,
    in_flight: Arc<Semaphore>,
    requests: TaskTracker,
    /// Cancelled when the client has gone, so its long-polls end with it.
    client_gone: CancellationToken,
    /// Cancelled when the session stops reading requests (the client went, or the broker
    /// is stopping): its subscriptions stop forwarding; unsent deliveries are redelivered.
    over: CancellationToken,
    greeted: bool,
    /// The peer is dead once nothing arrived for this long (granted in `Hello`).
    timeout: Duration,
    /// Milliseconds of silence after which the writer sends a heartbeat (granted in `Hello`).
    heartbeat: Arc<AtomicU64>,
}

impl Session {
    async fn read_loop(
        &mut self,
        read: impl AsyncRead + Unpin,
        shutdown: &CancellationToken,
    ) -> &'static str {
        let mut frames = FramedRead::new(read, FrameCodec::new(self.shared.config.max_frame_bytes));
        let hello_limit = Duration::from_millis(self.shared.config.hello_timeout_ms.max(1));
        let hello_by = tokio::time::Instant::now() + hello_limit;
        loop {
            let timeout = self.timeout;
            let revoked = self
                .hold
                .as_ref()
                .map(|hold| hold.cut.clone())
                .unwrap_or_default();
            let next = tokio::select! {
                _ = shutdown.cancelled() => return "shutdown",
                _ = revoked.cancelled() => {
                    let message = crate::error::BrokerError::CredentialsRevoked.to_string();
                    self.reply(0, ErrorFrame::new(ErrorCode::CredentialsRevoked, message).into()).await;
                    return "credentials revoked";
                }
                _ = tokio::time::sleep_until(hello_by), if !self.greeted => {
                    let message = format!("no Hello within {hello_limit:?}");
                    self.reply(0, ErrorFrame::new(ErrorCode::HelloRequired, message).into()).await;
                    return "no hello";
                }
                next = tokio::time::timeout(timeout, frames.next()) => match next {
                    Ok(next) => next,
                    Err(_) => {
                        self.shared.counters.expired(Way::Tcp);
                        let message = format!("nothing received for the session timeout of {timeout:?}");
                        self.reply(0, ErrorFrame::new(ErrorCode::SessionExpired, message).into()).await;
                        return "session expired";
                    }
                },
            };
            match next {
                None => return "closed by client",
                Some(Ok(raw)) => self.on_frame(raw).await,
                Some(Err(err)) => {
                    self.on_stream_error(err).await;
                    return "unreadable stream";
                }
            }
        }
    }

    /// The stream cannot continue: say why (when the socket still works), then close.
    async fn on_stream_error(&self, err: CodecError) {
        tracing::info!(%err, "closing connection");
        let code = match err {
            CodecError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            CodecError::FrameTooShort(_) => ErrorCode::MalformedFrame,
            CodecError::Io(_) => return,
        };
        let _ = self
            .out
            .send(Message::new(0, ErrorFrame::new(code, err.to_string())))
            .await;
    }

    async fn on_frame(&mut self, raw: RawFrame) {
        let correlation_id = raw.correlation_id;
        let frame = match raw.decode() {
            Ok(frame) => frame,
            Err(err) => {
                let code = match err {
                    DecodeError::UnknownOpcode(_) => ErrorCode::UnknownOpcode,
                    _ => ErrorCode::MalformedFrame,
                };
                return self
                    .reply(
                        correlation_id,
                        ErrorFrame::new(code, err.to_string()).into(),
                    )
                    .await;
            }
        };
        match (frame, self.greeted) {
            (Frame::Heartbeat(_), _) => {}
            (Frame::Hello(hello), false) => {
                let reply = self.hello(hello);
                self.reply(correlation_id, reply).await
            }
            (Frame::SaslStart(start), true) => {
                let access = Arc::clone(self.core.access());
                let step = self.exchange.start(&access, &self.channel, start).await;
                self.sasl_step(correlation_id, step).await
            }
            (Frame::SaslContinue(answer), true) => {
                let access = Arc::clone(self.core.access());
                let step = self.exchange.proceed(&access, &self.channel, answer);
                self.sasl_step(correlation_id, step).await
            }
            (_, false) => {
                let error = ErrorFrame::new(
                    ErrorCode::HelloRequired,
                    "the first frame of a session must be Hello",
                );
                self.reply(correlation_id, error.into()).await
            }
            (Frame::Hello(_), true) => {
                let error = ErrorFrame::new(
                    ErrorCode::UnexpectedFrame,
                    "this session already said Hello",
                );
                self.reply(correlation_id, error.into()).await
            }
            (frame, true) => self.request(correlation_id, frame).await,
        }
    }

    fn hello(&mut self, hello: Hello) -> Frame {
        if hello.min_version > PROTOCOL_VERSION || hello.max_version < MIN_PROTOCOL_VERSION {
            return ErrorFrame::unsupported_version(MIN_PROTOCOL_VERSION, PROTOCOL_VERSION).into();
        }
        self.greeted = true;
        self.certificate_login();
        let config = &self.shared.config;
        let (timeout_ms, heartbeat_ms) =
            config.grant_session(hello.session_timeout_ms, hello.heartbeat_interval_ms);
        self.timeout = Duration::from_millis(u64::from(timeout_ms));
        self.heartbeat
            .store(u64::from(heartbeat_ms), Ordering::Relaxed);
        tracing::debug!(
            client = hello.client_id,
            session_timeout_ms = timeout_ms,
            heartbeat_interval_ms = heartbeat_ms,
            "hello"
        );
        HelloOk {
            version: PROTOCOL_VERSION.min(hello.max_version),
            broker_version: env!("CARGO_PKG_VERSION").to_string(),
            session_id: self.id,
            heartbeat_interval_ms: heartbeat_ms,
            session_timeout_ms: timeout_ms,
            max_frame_bytes: config.max_frame_bytes,
            max_message_bytes: config.max_message_bytes,
        }
        .into()
    }

    async fn request(&mut self, correlation_id: u32, frame: Frame) {
        let Ok(permit) = Arc::clone(&self.in_flight).try_acquire_owned() else {
            let message = format!(
                "more than {} requests in flight",
                self.shared.config.max_in_flight
            );
            return self
                .reply(
                    correlation_id,
                    ErrorFrame::new(ErrorCode::TooManyRequests, message).into(),
                )
                .await;
        };
        // Counted where the reply is made; the counters' `Arc` is cloned only for a reply
        // that a task finishes later, so a request answered at once touches one atomic.
        let opcode = frame.opcode();
        let count =
            move |counters: &Counters, reply: &Frame| counters.tcp_request(opcode, outcome(reply));
        let context = cmd::Context {
            core: self.core.clone(),
            peer: self.peer,
            session_id: self.id,
            secure: Secure(self.channel.private()),
        };
        match cmd::dispatch(&context, frame).await {
            Reply::Now(reply) => {
                count(&self.shared.counters, &reply);
                self.reply(correlation_id, reply).await
            }
            Reply::Later(mut pending) => {
                // A publish the storage wrote in place is ready now: answer it without a task.
                if let Poll::Ready(reply) = futures::poll!(&mut pending) {
                    count(&self.shared.counters, &reply);
                    drop(permit);
                    return self.reply(correlation_id, reply).await;
                }
                let (out, gone) = (self.out.clone(), self.client_gone.clone());
                let counters = Arc::clone(&self.shared.counters);
                self.requests.spawn(async move {
                    tokio::select! {
                        reply = pending => {
                            count(&counters, &reply);
                            let _ = out.send(Message::new(correlation_id, reply)).await;
                        }
                        _ = gone.cancelled() => {}
                    }
                    drop(permit);
                });
            }
            Reply::Subscribe(pending) => {
                let (out, gone, over) = (
                    self.out.clone(),
                    self.client_gone.clone(),
                    self.over.clone(),
                );
                let counters = Arc::clone(&self.shared.counters);
                self.requests.spawn(async move {
                    let subscribed = tokio::select! {
                        subscribed = pending => subscribed,
                        _ = gone.cancelled() => return,
                    };
                    drop(permit);
                    let mut deliveries = match subscribed {
                        Ok(cmd::Subscribed { reply, deliveries }) => {
                            count(&counters, &reply);
                            if out.send(Message::new(correlation_id, reply)).await.is_err() {
                                return;
                            }
                            deliveries
                        }
                        Err(err) => {
                            let error = cmd::into_frame(Err(err));
                            count(&counters, &error);
                            let _ = out.send(Message::new(correlation_id, error)).await;
                            return;
                        }
                    };
                    // Forwards this subscriber's deliveries until the subscription or the
                    // session ends; waiting on a full connection stalls only it.
                    loop {
                        let deliver = tokio::select! {
                            deliver = deliveries.recv() => deliver,
                            _ = over.cancelled() => return,
                        };
                        let Some(deliver) = deliver else { return };
                        if out.send(Message::new(0, deliver)).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    }

    /// A client certificate naming a user logs the session in as that user.
    fn certificate_login(&mut self) {
        let Some(name) = self.certificate.clone() else {
            return;
        };
        let access = Arc::clone(self.core.access());
        let Some(identity) = access.directory.identity(&name) else {
            tracing::debug!(certificate = name, "the client certificate names no user");
            return;
        };
        let login = crate::auth::access::Login {
            identity,
            token: None,
        };
        let login = access.succeeded(&self.peer, &login, "certificate");
        self.logged_in(login);
    }

    fn logged_in(&mut self, login: Arc<crate::auth::access::Login>) {
        let principal = Principal::User(login);
        self.hold = None; // a new login replaces the old one
        let cut = CancellationToken::new();
        self.hold = Some(self.core.access().hold(self.id, &principal, cut));
        self.core = self.core.acting_for(principal);
    }

    /// Answers one step of a SASL exchange.
    async fn sasl_step(
        &mut self,
        correlation_id: u32,
        step: Result<Step, crate::error::BrokerError>,
    ) {
        let reply = match step {
            Ok(Step::Challenge(payload)) => SaslChallenge { payload }.into(),
            Ok(Step::Done(login, payload)) => {
                let ok = SaslOk {
                    user: login.identity.user.clone(),
                    admin: login.identity.admin,
                    payload,
                };
                self.logged_in(login);
                ok.into()
            }
            Err(err) => err.to_frame().into(),
        };
        self.reply(correlation_id, reply).await
    }

    async fn reply(&self, correlation_id: u32, frame: Frame) {
        let _ = self.out.send(Message::new(correlation_id, frame)).await;
    }
}

/// A reply's outcome as the metrics count it: `None` for success, or its error code.
fn outcome(reply: &Frame) -> Option<ErrorCode> {
    match reply {
        Frame::Error(err) => err.error_code(),
        _ => None,
    }
}

/// Writes queued frames, gathering whatever is ready into one write, and sends a heartbeat
/// whenever nothing else was sent for one interval.
async fn write_loop(
    write: impl AsyncWrite + Unpin,
    mut outbound: mpsc::Receiver<Queued>,
    max_frame_bytes: u32,
    heartbeat: Arc<AtomicU64>,
) {
    let mut sink = FramedWrite::new(write, FrameCodec::new(max_frame_bytes));
    // Frames fed but not yet flushed keep their share of the byte budget until they are.
    let mut unflushed: Vec<Ticket> = Vec::new();
    loop {
        let every = Duration::from_millis(heartbeat.load(Ordering::Relaxed).max(1));
        let message = match tokio::time::timeout(every, outbound.recv()).await {
            Ok(Some(Queued { message, ticket })) => {
                unflushed.push(ticket);
                message
            }
            Ok(None) => break,
            Err(_) => Message::new(0, Heartbeat {}),
        };
        if sink.feed(message).await.is_err() {
            return;
        }
        while let Ok(Queued { message, ticket }) = outbound.try_recv() {
            unflushed.push(ticket);
            if sink.feed(message).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
        unflushed.clear();
    }
    let _ = sink.close().await;
}
