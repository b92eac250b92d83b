//! Push groups (queue semantics): the broker delivers each record to one of the group's
//! consumers, each consumer answers every delivery, and what fails comes back or goes to the
//! dead-letter topic.
//!
//! Each group is run by one task, its *dispatcher*, which owns all of the group's state and
//! takes requests in order over a channel — no locks, and one place that decides. Per
//! partition it keeps:
//!
//! - the ack state ([`AckState`]: a floor plus ranges), persisted in sled after every answer
//!   that changes it, before that answer is confirmed;
//! - `next`, the first offset never delivered: every offset between the floor and `next` is
//!   done, in flight with one consumer, waiting for redelivery (now or after a delay), or on
//!   its way to the dead-letter topic;
//! - each record in flight: its consumer, its delivery count, its ack deadline.
//!
//! Deliveries go out while a consumer holds fewer unanswered records (and bytes) than its
//! window, round-robin over the consumers with room. Redeliveries go before new records; a
//! partition's new records go out in offset order. Each consumer has its own queue of
//! outgoing deliveries, bounded by its window, drained into its connection by its own task:
//! a consumer that stops reading its socket holds at most its window, and nothing waits
//! for it.
//!
//! Decisions where the design is silent:
//! - A record's delivery count lives in memory; after a restart, redelivered records count
//!   from 1 again (the ack state itself is durable).
//! - An answer for a record that has meanwhile moved to another consumer (its deadline
//!   passed) is taken for an ack (the work was done) or ignored (nack, reject, touch).
//! - Records that retention deletes before the group is done with them are skipped, with a
//!   warning: retention wins, as in Kafka.
//! - A consumer that goes away (unsubscribe, disconnect, session expiry) has its in-flight
//!   records redelivered at once; that counts towards `max_deliveries` like a nack.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use herald_protocol::{encode_batch, Batch, Deliver, Record};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{valid_name, BrokerError};
use crate::storage::{GroupRecord, StorageError, Store};

use super::ack_state::AckState;
use super::flights::{Flights, Run};
use super::pull_group::{Start, MODE_PUSH};
use super::{blocking, Topic, Topics};

/// The ack deadline when a group does not set one.
pub const DEFAULT_ACK_TIMEOUT_MS: u32 = 30_000;
/// Deliveries of one record before it is dead-lettered, when a group does not set it.
pub const DEFAULT_MAX_DELIVERIES: u32 = 20;
/// The largest prefetch window a consumer may ask for.
pub const MAX_PREFETCH: u32 = 100_000;
/// Most records in one delivery frame.
const MAX_DELIVER_RECORDS: u32 = 1000;
/// Most payload bytes read for one delivery frame.
const MAX_DELIVER_BYTES: usize = 1024 * 1024;

/// A push group's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub ack_timeout_ms: u32,
    /// 0 = unlimited.
    pub max_deliveries: u32,
    pub dead_letter: String,
}

impl Settings {
    /// The settings a group record stands for, defaults filled in.
    fn of(topic: &str, record: &GroupRecord) -> Settings {
        Settings {
            ack_timeout_ms: if record.ack_timeout_ms == 0 {
                DEFAULT_ACK_TIMEOUT_MS
            } else {
                record.ack_timeout_ms
            },
            max_deliveries: record.max_deliveries,
            dead_letter: if record.dead_letter.is_empty() {
                format!("{topic}.dlq")
            } else {
                record.dead_letter.clone()
            },
        }
    }
}

/// What a new subscriber asks for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub session: u64,
    pub address: String,
    pub prefetch_count: u32,
    /// 0 = no byte limit.
    pub prefetch_bytes: u32,
    pub start: Start,
}

/// An active subscription, as returned to its session.
pub struct Subscription {
    pub id: u64,
    pub settings: Settings,
    /// Deliveries for this subscriber; never more than its window at once.
    pub deliveries: mpsc::Receiver<Deliver>,
}

/// Offsets `[start, end)` of a partition, as answers name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub partition: u32,
    pub start: u64,
    pub end: u64,
}

/// How a consumer answered deliveries.
#[derive(Debug, Clone)]
pub enum Answer {
    Ack,
    Nack { delay: Duration },
    Reject { reason: String },
    Touch { extend: Option<Duration> },
}

/// A push group as `describe` shows it.
#[derive(Debug, Clone)]
pub struct PushDescription {
    pub settings: Settings,
    /// Subscription id, address, records in flight, age of the oldest in flight.
    pub consumers: Vec<(u64, String, u32, Duration)>,
    /// Partition, ack floor, end offset, records not yet done.
    pub partitions: Vec<(u32, u64, u64, u64)>,
    pub redelivered: u64,
    pub dead_lettered: u64,
}

/// A topic id and a group name.
type GroupKey = (u64, String);

/// A running group's dispatcher, as the registry holds it.
struct Running {
    inbox: mpsc::Sender<Command>,
    /// Cancelled to end this dispatcher alone, at once (its topic was deleted).
    deleted: CancellationToken,
}

/// The broker's push groups: one dispatcher task each, started on first use.
///
/// Every task of a push group — the dispatcher, the writes of ack state it waits on, its
/// dead-letter publishes — belongs to [`PushGroups::tasks`], so a stop
/// ([`PushGroups::stop`]) waits for what is in flight and a deleted topic's tasks end
/// ([`PushGroups::topic_deleted`]).
pub struct PushGroups {
    store: Arc<Store>,
    topics: Arc<Topics>,
    groups: Mutex<HashMap<GroupKey, Running>>,
    /// Serialises starting dispatchers, so one group never gets two.
    starting: tokio::sync::Mutex<()>,
    subscriptions: Subscriptions,
    next_subscription: AtomicU64,
    /// Cancelled by [`PushGroups::stop`].
    stopping: CancellationToken,
    tasks: TaskTracker,
    /// Most subscriptions of one group (`--max-consumers-per-group`).
    max_subscribers: usize,
}

impl PushGroups {
    pub fn new(store: Arc<Store>, topics: Arc<Topics>, max_subscribers: usize) -> Self {
        PushGroups {
            store,
            topics,
            groups: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            subscriptions: Subscriptions::default(),
            next_subscription: AtomicU64::new(1),
            stopping: CancellationToken::new(),
            tasks: TaskTracker::new(),
            max_subscribers,
        }
    }

    /// Stops every dispatcher and waits, until `deadline`, for their tasks: each
    /// dispatcher confirms the answers it took once their ack state is stored, and
    /// dead-letter publishes in flight finish. Call it once no session sends answers any
    /// more, before the store closes. Returns false if tasks were still running at the
    /// deadline.
    pub async fn stop(&self, deadline: Instant) -> bool {
        self.stopping.cancel();
        self.tasks.close();
        tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_ok()
    }

    /// Tasks of push groups now running (dispatchers and the work they wait on).
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Creates a push group with explicit settings (0 / empty = defaults); fails if it
    /// exists.
    pub async fn create(
        &self,
        topic: &Arc<Topic>,
        group: &str,
        start: Start,
        record: GroupRecord,
    ) -> Result<(), BrokerError> {
        check_group(group)?;
        let _starting = self.starting.lock().await;
        let (store, t, name) = (
            Arc::clone(&self.store),
            Arc::clone(topic),
            group.to_string(),
        );
        if blocking(move || Ok(store.group(t.record().id, &name)?))
            .await?
            .is_some()
        {
            return Err(BrokerError::GroupExists(group.to_string()));
        }
        self.create_blocking(topic, group, start, record).await
    }

    /// Adds a subscriber to `group`, creating the group (with default settings, starting
    /// at `request.start`) if it is new.
    pub async fn subscribe(
        &self,
        topic: &Arc<Topic>,
        group: &str,
        request: SubscribeRequest,
    ) -> Result<Subscription, BrokerError> {
        check_group(group)?;
        if request.prefetch_count == 0 || request.prefetch_count > MAX_PREFETCH {
            return Err(BrokerError::InvalidArgument(format!(
                "prefetch_count must be 1 to {MAX_PREFETCH}, not {}",
                request.prefetch_count
            )));
        }
        let dispatcher = self.dispatcher(topic, group, Some(request.start)).await?;
        let id = self.next_subscription.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        send(&dispatcher, Command::Subscribe { id, request, reply }).await?;
        rx.await.map_err(|_| gone())?
    }

    /// Applies a consumer's answer to deliveries of subscription `id`. Resolves once the
    /// resulting ack state is stored under the fsync policy.
    pub async fn answer(
        &self,
        session: u64,
        id: u64,
        spans: Vec<Span>,
        answer: Answer,
    ) -> Result<(), BrokerError> {
        let dispatcher = self.dispatcher_of_subscription(session, id)?;
        let (reply, rx) = oneshot::channel();
        let command = Command::Answer {
            session,
            id,
            spans,
            answer,
            reply,
        };
        send(&dispatcher, command).await?;
        rx.await.map_err(|_| gone())?
    }

    /// Ends subscription `id`; its unanswered deliveries go back to the group at once.
    pub async fn unsubscribe(&self, session: u64, id: u64) -> Result<(), BrokerError> {
        let dispatcher = self.dispatcher_of_subscription(session, id)?;
        let (reply, rx) = oneshot::channel();
        send(&dispatcher, Command::Unsubscribe { session, id, reply }).await?;
        rx.await.map_err(|_| gone())?
    }

    /// A session ended: its subscriptions end and their deliveries go back at once.
    pub async fn session_closed(&self, session: u64) {
        // Waits for room in a busy dispatcher's inbox: dropping this would leave the
        // session's subscriptions, and their deliveries, in place until ack deadlines.
        for dispatcher in self.all() {
            let _ = dispatcher.send(Command::SessionClosed { session }).await;
        }
    }

    /// Stops the dispatchers of a deleted topic's groups. Their subscribers' delivery
    /// streams end; answers still in flight get `UnknownSubscription` or `UnknownTopic`.
    pub fn topic_deleted(&self, topic_id: u64) {
        self.lock().retain(|(id, _), running| {
            let keep = *id != topic_id;
            if !keep {
                running.deleted.cancel();
            }
            keep
        });
    }

    /// A push group's settings, consumers and progress; `None` if it is not running (no
    /// subscriber since the broker started), in which case the caller describes it from
    /// the store.
    pub async fn describe(
        &self,
        topic: &Arc<Topic>,
        group: &str,
    ) -> Result<PushDescription, BrokerError> {
        let dispatcher = self.dispatcher(topic, group, None).await?;
        let (reply, rx) = oneshot::channel();
        send(&dispatcher, Command::Describe { reply }).await?;
        rx.await.map_err(|_| gone())
    }

    /// The number of subscribers of a running group (0 when it is not running).
    pub async fn consumer_count(&self, topic_id: u64, group: &str) -> u32 {
        let dispatcher = self
            .lock()
            .get(&(topic_id, group.to_string()))
            .map(|running| running.inbox.clone());
        let Some(dispatcher) = dispatcher else {
            return 0;
        };
        let (reply, rx) = oneshot::channel();
        if send(&dispatcher, Command::Describe { reply })
            .await
            .is_err()
        {
            return 0;
        }
        rx.await.map_or(0, |d| d.consumers.len() as u32)
    }

    /// The dispatcher of `group`, started (and the group created at `start`, if given and
    /// the group is new) on first use.
    async fn dispatcher(
        &self,
        topic: &Arc<Topic>,
        group: &str,
        start: Option<Start>,
    ) -> Result<mpsc::Sender<Command>, BrokerError> {
        let key = (topic.record().id, group.to_string());
        if let Some(running) = self.live(&key) {
            return Ok(running);
        }
        let _starting = self.starting.lock().await;
        if let Some(running) = self.live(&key) {
            return Ok(running);
        }
        if self.stopping.is_cancelled() {
            return Err(BrokerError::ShuttingDown);
        }
        let (store, t, name) = (
            Arc::clone(&self.store),
            Arc::clone(topic),
            group.to_string(),
        );
        let record = blocking(move || Ok(store.group(t.record().id, &name)?)).await?;
        let record = match (record, start) {
            (Some(record), _) if record.mode != MODE_PUSH => {
                return Err(BrokerError::GroupModeMismatch {
                    group: group.to_string(),
                    actual: "pull",
                    requested: "push",
                })
            }
            (Some(record), _) => record,
            (None, Some(start)) => {
                let record = GroupRecord {
                    mode: MODE_PUSH,
                    ack_timeout_ms: 0,
                    max_deliveries: DEFAULT_MAX_DELIVERIES,
                    dead_letter: String::new(),
                };
                self.create_blocking(topic, group, start, record.clone())
                    .await?;
                record
            }
            (None, None) => return Err(BrokerError::UnknownGroup(group.to_string())),
        };
        let settings = Settings::of(topic.name(), &record);
        let parts = self.load_parts(topic, group).await?;
        let (tx, rx) = mpsc::channel(1024);
        let dispatcher = Dispatcher {
            topic: Arc::clone(topic),
            group: group.to_string(),
            settings,
            store: Arc::clone(&self.store),
            topics: Arc::clone(&self.topics),
            parts,
            subs: BTreeMap::new(),
            max_subs: self.max_subscribers,
            served: 0,
            next_part: 0,
            timers: BTreeSet::new(),
            redelivered: 0,
            dead_lettered: 0,
            inbox: tx.downgrade(),
            subscriptions: self.subscriptions.clone(),
            answered: Vec::new(),
            tasks: self.tasks.clone(),
        };
        let deleted = CancellationToken::new();
        let ends = Ends {
            stopping: self.stopping.clone(),
            deleted: deleted.clone(),
        };
        self.tasks.spawn(dispatcher.run(rx, ends));
        self.lock().insert(
            key,
            Running {
                inbox: tx.clone(),
                deleted,
            },
        );
        tracing::debug!(topic = topic.name(), group, "push group dispatcher started");
        Ok(tx)
    }

    async fn create_blocking(
        &self,
        topic: &Arc<Topic>,
        group: &str,
        start: Start,
        record: GroupRecord,
    ) -> Result<(), BrokerError> {
        let (store, t, name) = (
            Arc::clone(&self.store),
            Arc::clone(topic),
            group.to_string(),
        );
        blocking(move || {
            let states: Vec<(u32, Vec<u8>)> = t
                .partitions()
                .iter()
                .enumerate()
                .map(|(p, log)| {
                    let floor = match start {
                        Start::Earliest => log.first_offset(),
                        Start::Latest => log.next_offset(),
                    };
                    (p as u32, AckState::at(floor).encode())
                })
                .collect();
            let written = store.queue_ack_states(t.record().id, &name, states);
            crate::storage::bounded_blocking(written, store.timeout())?;
            store.put_group(t.record().id, &name, record)?;
            Ok(())
        })
        .await
    }

    async fn load_parts(&self, topic: &Arc<Topic>, group: &str) -> Result<Vec<Part>, BrokerError> {
        let (store, t, name) = (
            Arc::clone(&self.store),
            Arc::clone(topic),
            group.to_string(),
        );
        blocking(move || {
            t.partitions()
                .iter()
                .enumerate()
                .map(|(p, log)| {
                    let acks = match store.ack_state(t.record().id, p as u32, &name)? {
                        Some(value) => AckState::decode(&value)?,
                        None => AckState::at(log.first_offset()),
                    };
                    Ok(Part::new(acks))
                })
                .collect()
        })
        .await
    }

    fn dispatcher_of_subscription(
        &self,
        session: u64,
        id: u64,
    ) -> Result<mpsc::Sender<Command>, BrokerError> {
        self.subscriptions
            .lock()
            .get(&id)
            .filter(|(owner, _)| *owner == session)
            .map(|(_, dispatcher)| dispatcher.clone())
            .ok_or(BrokerError::UnknownSubscription(id))
    }

    /// The inbox of `key`'s dispatcher, if it runs.
    fn live(&self, key: &GroupKey) -> Option<mpsc::Sender<Command>> {
        self.lock()
            .get(key)
            .filter(|running| !running.inbox.is_closed())
            .map(|running| running.inbox.clone())
    }

    fn all(&self) -> Vec<mpsc::Sender<Command>> {
        self.lock().values().map(|r| r.inbox.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GroupKey, Running>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What ends a dispatcher.
struct Ends {
    /// The broker stops: take what is queued, store it, end.
    stopping: CancellationToken,
    /// The topic was deleted: end at once.
    deleted: CancellationToken,
}

/// Subscription id → (owning session, its group's dispatcher).
type SubscriptionMap = HashMap<u64, (u64, mpsc::Sender<Command>)>;

/// Which dispatcher serves each live subscription, and the session that owns it.
#[derive(Clone, Default)]
struct Subscriptions(Arc<Mutex<SubscriptionMap>>);

impl Subscriptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SubscriptionMap> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_group(group: &str) -> Result<(), BrokerError> {
    if valid_name(group) {
        Ok(())
    } else {
        Err(BrokerError::InvalidGroupName(group.to_string()))
    }
}

fn gone() -> BrokerError {
    BrokerError::Storage(StorageError::Closed)
}

async fn send(dispatcher: &mpsc::Sender<Command>, command: Command) -> Result<(), BrokerError> {
    dispatcher.send(command).await.map_err(|_| gone())
}

enum Command {
    Subscribe {
        id: u64,
        request: SubscribeRequest,
        reply: oneshot::Sender<Result<Subscription, BrokerError>>,
    },
    Unsubscribe {
        session: u64,
        id: u64,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    Answer {
        session: u64,
        id: u64,
        spans: Vec<Span>,
        answer: Answer,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    SessionClosed {
        session: u64,
    },
    Describe {
        reply: oneshot::Sender<PushDescription>,
    },
    /// A dead-letter write finished (internal).
    DeadLettered {
        partition: u32,
        offsets: Vec<u64>,
        stored: bool,
    },
}

/// Resolves once an ack-state write is committed.
type Written = oneshot::Receiver<Result<(), StorageError>>;

/// One partition's delivery state.
struct Part {
    acks: AckState,
    next: u64,
    /// Waiting for redelivery now: offset → deliveries so far.
    ready: BTreeMap<u64, u32>,
    /// Waiting for redelivery after a delay: offset → (due, deliveries so far).
    delayed: BTreeMap<u64, (Instant, u32)>,
    flights: Flights,
    /// Deliveries so far of records on their way to the dead-letter topic.
    dead_lettering: HashMap<u64, u32>,
    dirty: bool,
}

impl Part {
    fn new(acks: AckState) -> Part {
        Part {
            next: acks.floor(),
            acks,
            ready: BTreeMap::new(),
            delayed: BTreeMap::new(),
            flights: Flights::default(),
            dead_lettering: HashMap::new(),
            dirty: false,
        }
    }
}

struct Sub {
    session: u64,
    address: String,
    tx: mpsc::Sender<Deliver>,
    prefetch_count: u32,
    prefetch_bytes: u32,
    in_flight: u32,
    in_flight_bytes: u64,
}

impl Sub {
    fn room(&self) -> u32 {
        self.prefetch_count.saturating_sub(self.in_flight)
    }

    fn byte_room(&self) -> usize {
        if self.prefetch_bytes == 0 {
            MAX_DELIVER_BYTES
        } else {
            (u64::from(self.prefetch_bytes).saturating_sub(self.in_flight_bytes) as usize)
                .min(MAX_DELIVER_BYTES)
        }
    }

    /// Whether to deliver to this subscriber now: when it holds nothing, or when at least
    /// half its window is free. Topping up a nearly full window record by record would
    /// answer every small ack with a small delivery; waiting for half keeps deliveries
    /// large while the subscriber still has half a window in hand.
    fn has_room(&self) -> bool {
        if self.in_flight == 0 {
            return self.prefetch_count > 0;
        }
        self.room() >= self.prefetch_count.div_ceil(2) && self.byte_room() > 0
    }
}

/// What to deliver next.
enum Work {
    /// Records waiting for redelivery, from this offset.
    Redeliver(u32, u64),
    /// New records from the partition's `next`.
    Fresh(u32),
}

struct Dispatcher {
    topic: Arc<Topic>,
    group: String,
    settings: Settings,
    store: Arc<Store>,
    topics: Arc<Topics>,
    parts: Vec<Part>,
    subs: BTreeMap<u64, Sub>,
    /// Most subscriptions at once (`--max-consumers-per-group`).
    max_subs: usize,
    /// The subscription served last, for round-robin.
    served: u64,
    /// The partition to look at first next time, for round-robin.
    next_part: usize,
    /// (when, partition, start, end): ack deadlines of delivered spans and due times of
    /// delayed redeliveries. Entries are hints: each is checked against the record's state.
    timers: BTreeSet<(Instant, u32, u64, u64)>,
    redelivered: u64,
    dead_lettered: u64,
    inbox: mpsc::WeakSender<Command>,
    subscriptions: Subscriptions,
    /// Answers taken but not yet confirmed: confirmed once their ack state is stored.
    answered: Vec<oneshot::Sender<Result<(), BrokerError>>>,
    /// Where the dispatcher's own tasks (storage waits, dead-letter publishes) run.
    tasks: TaskTracker,
}

impl Dispatcher {
    /// Serves the group until one of `ends` or until every inbox sender is gone. When the
    /// broker stops, requests already in the inbox are still taken, and every answer taken
    /// is confirmed once its ack state is stored; when the topic is deleted, nothing more
    /// is stored.
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, ends: Ends) {
        let topic = Arc::clone(&self.topic);
        loop {
            // Register for appends before looking, so none slips in between.
            let mut appended: Vec<_> = topic
                .partitions()
                .iter()
                .map(|log| Box::pin(log.appended()))
                .collect();
            for notified in &mut appended {
                notified.as_mut().enable();
            }
            if let Err(err) = self.pump().await {
                tracing::error!(%err, group = self.group, "push group stops");
                break;
            }
            let waiting_for_records = self.subs.values().any(Sub::has_room);
            let next_timer = self.timers.first().map(|t| t.0);
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => {
                        self.handle(command).await;
                        while let Ok(command) = rx.try_recv() {
                            self.handle(command).await;
                        }
                    }
                    None => break,
                },
                _ = futures::future::select_all(appended), if waiting_for_records => {}
                _ = sleep_until(next_timer), if next_timer.is_some() => self.fire_timers().await,
                _ = ends.stopping.cancelled() => {
                    self.finish(&mut rx).await;
                    break;
                }
                _ = ends.deleted.cancelled() => break,
            }
            self.flush();
        }
        let mut subscriptions = self.subscriptions.lock();
        for id in self.subs.keys() {
            subscriptions.remove(id);
        }
    }

    /// The broker stops: takes the requests already queued and waits for dead-letter
    /// publishes in flight (whose records are done only once stored there), then stores
    /// the ack state. Sessions have ended by now, so nothing new arrives.
    async fn finish(&mut self, rx: &mut mpsc::Receiver<Command>) {
        loop {
            while let Ok(command) = rx.try_recv() {
                self.handle(command).await;
            }
            if self.parts.iter().all(|part| part.dead_lettering.is_empty()) {
                break;
            }
            match rx.recv().await {
                Some(command) => self.handle(command).await,
                None => break,
            }
        }
        self.flush();
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Subscribe { id, request, reply } => {
                if self.subs.len() >= self.max_subs {
                    let _ = reply.send(Err(BrokerError::TooManyConsumers {
                        group: self.group.clone(),
                        max: self.max_subs,
                    }));
                    return;
                }
                let capacity = request.prefetch_count as usize;
                let (tx, deliveries) = mpsc::channel(capacity);
                let inbox = self.inbox.upgrade();
                if let Some(inbox) = inbox {
                    self.subscriptions
                        .lock()
                        .insert(id, (request.session, inbox));
                }
                self.subs.insert(
                    id,
                    Sub {
                        session: request.session,
                        address: request.address,
                        tx,
                        prefetch_count: request.prefetch_count,
                        prefetch_bytes: request.prefetch_bytes,
                        in_flight: 0,
                        in_flight_bytes: 0,
                    },
                );
                tracing::debug!(group = self.group, id, "subscribed");
                let _ = reply.send(Ok(Subscription {
                    id,
                    settings: self.settings.clone(),
                    deliveries,
                }));
            }
            Command::Unsubscribe { session, id, reply } => {
                let result = match self.subs.get(&id) {
                    Some(sub) if sub.session == session => {
                        self.remove_sub(id).await;
                        Ok(())
                    }
                    _ => Err(BrokerError::UnknownSubscription(id)),
                };
                let _ = reply.send(result);
            }
            Command::Answer {
                session,
                id,
                spans,
                answer,
                reply,
            } => {
                let result = match self.subs.get(&id) {
                    Some(sub) if sub.session == session => self.answer(id, &spans, answer).await,
                    _ => Err(BrokerError::UnknownSubscription(id)),
                };
                match result {
                    Ok(()) => self.answered.push(reply),
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                }
            }
            Command::SessionClosed { session } => {
                let ids: Vec<u64> = self
                    .subs
                    .iter()
                    .filter(|(_, s)| s.session == session)
                    .map(|(&id, _)| id)
                    .collect();
                for id in ids {
                    self.remove_sub(id).await;
                }
            }
            Command::Describe { reply } => {
                let _ = reply.send(self.describe());
            }
            Command::DeadLettered {
                partition,
                offsets,
                stored,
            } => {
                let part = &mut self.parts[partition as usize];
                for offset in offsets {
                    let Some(count) = part.dead_lettering.remove(&offset) else {
                        continue;
                    };
                    if stored {
                        part.acks.mark(offset, offset + 1);
                        part.dirty = true;
                        self.dead_lettered += 1;
                    } else {
                        part.ready.insert(offset, count);
                    }
                }
            }
        }
    }

    /// Delivers while some consumer has room and there is something to deliver. A read
    /// that finds nothing ends the round (the next append or answer starts another), so a
    /// store that lags what it announced can never make the dispatcher spin.
    async fn pump(&mut self) -> Result<(), BrokerError> {
        loop {
            let Some(id) = self.next_sub_with_room() else {
                return Ok(());
            };
            let Some(work) = self.find_work() else {
                return Ok(());
            };
            self.served = id;
            let sub = &self.subs[&id];
            let max_records = sub.room().min(MAX_DELIVER_RECORDS);
            let max_bytes = sub.byte_room();
            let progressed = match work {
                Work::Fresh(p) => self.deliver_fresh(id, p, max_records, max_bytes).await?,
                Work::Redeliver(p, from) => {
                    self.redeliver(id, p, from, max_records, max_bytes).await?
                }
            };
            if !progressed {
                tracing::debug!(group = self.group, "a read found nothing; waiting");
                return Ok(());
            }
        }
    }

    /// The next subscriber with room after the one served last.
    fn next_sub_with_room(&self) -> Option<u64> {
        let after = self
            .subs
            .range(self.served + 1..)
            .chain(self.subs.range(..=self.served));
        after
            .filter(|(_, s)| s.has_room())
            .map(|(&id, _)| id)
            .next()
    }

    /// A partition with records to deliver: redeliveries first, then new records,
    /// round-robin over partitions.
    fn find_work(&mut self) -> Option<Work> {
        let count = self.parts.len();
        for i in 0..count {
            let p = (self.next_part + i) % count;
            if let Some((&offset, _)) = self.parts[p].ready.first_key_value() {
                self.next_part = (p + 1) % count;
                return Some(Work::Redeliver(p as u32, offset));
            }
        }
        for i in 0..count {
            let p = (self.next_part + i) % count;
            if self.parts[p].next < self.topic.partitions()[p].next_offset() {
                self.next_part = (p + 1) % count;
                return Some(Work::Fresh(p as u32));
            }
        }
        None
    }

    /// Delivers new records of partition `p`; says whether the partition moved on.
    async fn deliver_fresh(
        &mut self,
        id: u64,
        p: u32,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<bool, BrokerError> {
        let log = Arc::clone(&self.topic.partitions()[p as usize]);
        let first = log.first_offset();
        let part = &mut self.parts[p as usize];
        let before = part.next;
        if part.next < first {
            tracing::warn!(
                group = self.group,
                partition = p,
                lost = first - part.next,
                "retention deleted records before the group was done with them"
            );
            part.acks.raise_floor(first);
            part.dirty = true;
            part.next = first;
        }
        let from = part.next;
        let read = log.read_async(from, max_records, max_bytes).await?;
        let part = &mut self.parts[p as usize];
        let mut batches = Vec::new();
        for batch in read.batches {
            part.next = part.next.max(batch.next_offset());
            // After a restart, records acked out of order above the floor are skipped.
            batches.extend(not_done(&batch, &part.acks)?);
        }
        let progressed = self.parts[p as usize].next > before;
        for batch in batches {
            let counts = vec![1; batch.record_count as usize];
            self.send(id, p, batch, counts);
        }
        Ok(progressed)
    }

    /// Delivers records of partition `p` waiting for redelivery from `from`; says whether
    /// any left the queue.
    async fn redeliver(
        &mut self,
        id: u64,
        p: u32,
        from: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<bool, BrokerError> {
        let part = &mut self.parts[p as usize];
        // The run of consecutive offsets waiting from `from`.
        let mut run = 0u32;
        while run < max_records && part.ready.contains_key(&(from + u64::from(run))) {
            run += 1;
        }
        let log = Arc::clone(&self.topic.partitions()[p as usize]);
        let first = log.first_offset();
        if from < first {
            let gone: Vec<u64> = part.ready.range(..first).map(|(&o, _)| o).collect();
            for offset in gone {
                part.ready.remove(&offset);
                part.acks.mark(offset, offset + 1);
            }
            part.dirty = true;
            return Ok(true);
        }
        let read = log.read_async(from, run, max_bytes).await?;
        let part = &mut self.parts[p as usize];
        let mut deliveries = Vec::new();
        for batch in read.batches {
            let counts: Vec<u32> = (batch.base_offset..batch.next_offset())
                .map(|offset| part.ready.remove(&offset).unwrap_or(0) + 1)
                .collect();
            deliveries.push((batch, counts));
        }
        let progressed = !deliveries.is_empty();
        for (batch, counts) in deliveries {
            self.redelivered += counts.len() as u64;
            self.send(id, p, batch, counts);
        }
        Ok(progressed)
    }

    /// Hands a batch to subscriber `id` and records its flights.
    fn send(&mut self, id: u64, p: u32, batch: Batch, delivery_counts: Vec<u32>) {
        let now = Instant::now();
        let deadline = now + Duration::from_millis(u64::from(self.settings.ack_timeout_ms));
        let (start, end) = (batch.base_offset, batch.next_offset());
        let per_record = (batch.encoded_len() as u64 / u64::from(batch.record_count.max(1))) as u32;
        let mut encoded = BytesMut::with_capacity(batch.encoded_len());
        batch.encode(&mut encoded);
        let deliver = Deliver {
            subscription_id: id,
            partition: p,
            delivery_counts: delivery_counts.clone(),
            batch: encoded.freeze(),
        };
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        let part = &mut self.parts[p as usize];
        if sub.tx.try_send(deliver).is_err() {
            // Its connection is gone (the window keeps the queue from filling): the records
            // wait for the next consumer, and the session's end removes this one.
            for (offset, count) in (start..end).zip(delivery_counts) {
                part.ready.insert(offset, count.saturating_sub(1));
            }
            sub.prefetch_count = 0;
            return;
        }
        part.flights.insert(
            start,
            Run {
                end,
                sub: id,
                deadline,
                since: now,
                bytes: per_record,
                counts: delivery_counts,
            },
        );
        sub.in_flight += (end - start) as u32;
        sub.in_flight_bytes += u64::from(per_record) * (end - start);
        self.timers.insert((deadline, p, start, end));
    }

    async fn answer(&mut self, id: u64, spans: &[Span], answer: Answer) -> Result<(), BrokerError> {
        for span in spans {
            self.topic.partition(span.partition)?;
            let next = self.parts[span.partition as usize].next;
            if span.end > next || span.start > span.end {
                return Err(BrokerError::InvalidArgument(format!(
                    "partition {} offsets {}..{} were never delivered to this group (next {next})",
                    span.partition, span.start, span.end
                )));
            }
        }
        let now = Instant::now();
        let mut to_dead_letter: Vec<(u32, u64, u32, String)> = Vec::new();
        if let Answer::Ack = answer {
            for span in spans {
                self.ack(span);
            }
            return Ok(());
        }
        for span in spans {
            let p = span.partition;
            // Only this subscriber's records in flight can be nacked, rejected or touched.
            let held = |run: &Run| run.sub == id;
            match &answer {
                Answer::Ack => unreachable!("acks are handled above"),
                Answer::Nack { delay } => {
                    for (start, run) in self.take_flights(p, span.start, span.end, held) {
                        for (offset, count) in run.records(start) {
                            if let Some(reason) =
                                self.requeue(p, offset, count, now + *delay, "nacked")
                            {
                                to_dead_letter.push((p, offset, count, reason));
                            }
                        }
                    }
                }
                Answer::Reject { reason } => {
                    let reason = if reason.is_empty() {
                        "rejected".to_string()
                    } else {
                        format!("rejected: {reason}")
                    };
                    for (start, run) in self.take_flights(p, span.start, span.end, held) {
                        for (offset, count) in run.records(start) {
                            to_dead_letter.push((p, offset, count, reason.clone()));
                        }
                    }
                }
                Answer::Touch { extend } => {
                    let extend = extend.unwrap_or(Duration::from_millis(u64::from(
                        self.settings.ack_timeout_ms,
                    )));
                    let flights = &mut self.parts[p as usize].flights;
                    for (start, end) in flights.touch(span.start, span.end, id, now + extend) {
                        self.timers.insert((now + extend, p, start, end));
                    }
                }
            }
        }
        self.dead_letter(to_dead_letter).await;
        Ok(())
    }

    /// Marks records done, wherever they are (except on their way to the dead-letter
    /// topic, which marks them done itself).
    fn ack(&mut self, span: &Span) {
        let p = span.partition;
        self.take_flights(p, span.start, span.end, |_| true);
        let part = &mut self.parts[p as usize];
        for offset in keys_in(&part.ready, span) {
            part.ready.remove(&offset);
        }
        for offset in keys_in(&part.delayed, span) {
            part.delayed.remove(&offset);
        }
        // Everything in the span is done, except what is on its way to the dead-letter
        // topic (marked done once stored there).
        let mut skipped: Vec<u64> = part
            .dead_lettering
            .keys()
            .copied()
            .filter(|offset| (span.start..span.end).contains(offset))
            .collect();
        skipped.sort_unstable();
        let mut from = span.start;
        for offset in skipped {
            part.acks.mark(from, offset);
            from = offset + 1;
        }
        part.acks.mark(from, span.end);
        part.dirty = true;
    }

    /// Takes the records of `start..end` whose run satisfies `which` out of flight,
    /// updating their consumers' counts.
    fn take_flights(
        &mut self,
        p: u32,
        start: u64,
        end: u64,
        which: impl Fn(&Run) -> bool,
    ) -> Vec<(u64, Run)> {
        let taken = self.parts[p as usize].flights.take(start, end, which);
        for (_, run) in &taken {
            if let Some(sub) = self.subs.get_mut(&run.sub) {
                let records = u32::try_from(run.record_count()).unwrap_or(u32::MAX);
                sub.in_flight = sub.in_flight.saturating_sub(records);
                let bytes = u64::from(run.bytes) * run.record_count();
                sub.in_flight_bytes = sub.in_flight_bytes.saturating_sub(bytes);
            }
        }
        taken
    }

    /// Queues a record for redelivery at `due`, or returns the reason to dead-letter it
    /// when it has been delivered `max_deliveries` times.
    fn requeue(
        &mut self,
        p: u32,
        offset: u64,
        count: u32,
        due: Instant,
        why: &str,
    ) -> Option<String> {
        let max = self.settings.max_deliveries;
        if max > 0 && count >= max {
            return Some(format!(
                "{why} after {count} deliveries (max_deliveries {max})"
            ));
        }
        let part = &mut self.parts[p as usize];
        if due <= Instant::now() {
            part.ready.insert(offset, count);
        } else {
            part.delayed.insert(offset, (due, count));
            self.timers.insert((due, p, offset, offset + 1));
        }
        None
    }

    /// Ack deadlines that passed go to another consumer; delays that ended become ready.
    async fn fire_timers(&mut self) {
        let now = Instant::now();
        let mut to_dead_letter = Vec::new();
        while let Some(&(when, p, start, end)) = self.timers.first() {
            if when > now {
                break;
            }
            self.timers.pop_first();
            let part = &mut self.parts[p as usize];
            let due: Vec<(u64, u32)> = part
                .delayed
                .range(start..end)
                .filter(|(_, &(due, _))| due <= now)
                .map(|(&offset, &(_, count))| (offset, count))
                .collect();
            for (offset, count) in due {
                part.delayed.remove(&offset);
                part.ready.insert(offset, count);
            }
            for (first, run) in self.take_flights(p, start, end, |run| run.deadline <= now) {
                for (offset, count) in run.records(first) {
                    if let Some(reason) = self.requeue(p, offset, count, now, "ack timeout") {
                        to_dead_letter.push((p, offset, count, reason));
                    }
                }
            }
        }
        self.dead_letter(to_dead_letter).await;
    }

    /// Ends a subscription; its in-flight records are redelivered at once.
    async fn remove_sub(&mut self, id: u64) {
        self.subs.remove(&id);
        self.subscriptions.lock().remove(&id);
        let now = Instant::now();
        let mut to_dead_letter = Vec::new();
        for p in 0..self.parts.len() as u32 {
            for (start, run) in self.take_flights(p, 0, u64::MAX, |run| run.sub == id) {
                for (offset, count) in run.records(start) {
                    if let Some(reason) = self.requeue(p, offset, count, now, "consumer gone") {
                        to_dead_letter.push((p, offset, count, reason));
                    }
                }
            }
        }
        tracing::debug!(group = self.group, id, "subscription ended");
        self.dead_letter(to_dead_letter).await;
    }

    /// Writes records to the dead-letter topic with headers naming their origin; once
    /// stored they are done for this group.
    async fn dead_letter(&mut self, records: Vec<(u32, u64, u32, String)>) {
        if records.is_empty() {
            return;
        }
        let mut by_partition: BTreeMap<u32, Vec<(u64, u32, String)>> = BTreeMap::new();
        for (p, offset, count, reason) in records {
            self.parts[p as usize].dead_lettering.insert(offset, count);
            by_partition
                .entry(p)
                .or_default()
                .push((offset, count, reason));
        }
        for (p, records) in by_partition {
            let log = Arc::clone(&self.topic.partitions()[p as usize]);
            let origin = Origin {
                topic: self.topic.name().to_string(),
                group: self.group.clone(),
                partition: p,
            };
            let (topics, store, dlq) = (
                Arc::clone(&self.topics),
                Arc::clone(&self.store),
                self.settings.dead_letter.clone(),
            );
            let offsets: Vec<u64> = records.iter().map(|r| r.0).collect();
            let inbox = self.inbox.clone();
            self.tasks.spawn(async move {
                let stored =
                    write_dead_letters(&topics, &store, &dlq, &log, &origin, records).await;
                if let Err(err) = &stored {
                    tracing::error!(%err, dead_letter = dlq, "dead-lettering failed; records stay queued");
                }
                if let Some(inbox) = inbox.upgrade() {
                    let _ = inbox
                        .send(Command::DeadLettered {
                            partition: p,
                            offsets,
                            stored: stored.is_ok(),
                        })
                        .await;
                }
            });
        }
    }

    /// Stores the ack state of changed partitions — once for every answer taken since the
    /// last time, like the storage writer's group commit — and confirms those answers
    /// when it is stored.
    fn flush(&mut self) {
        let answered = std::mem::take(&mut self.answered);
        let Some(written) = self.persist() else {
            for reply in answered {
                let _ = reply.send(Ok(()));
            }
            return;
        };
        let limit = self.store.timeout();
        self.tasks.spawn(async move {
            let stored = crate::storage::bounded(written, limit).await;
            for reply in answered {
                let _ = reply.send(stored.clone().map_err(BrokerError::from));
            }
        });
    }

    /// Queues the ack state of changed partitions for storage.
    fn persist(&mut self) -> Option<Written> {
        let states: Vec<(u32, Vec<u8>)> = self
            .parts
            .iter_mut()
            .enumerate()
            .filter(|(_, part)| part.dirty)
            .map(|(p, part)| {
                part.dirty = false;
                (p as u32, part.acks.encode())
            })
            .collect();
        if states.is_empty() {
            return None;
        }
        Some(
            self.store
                .queue_ack_states(self.topic.record().id, &self.group, states),
        )
    }

    fn describe(&self) -> PushDescription {
        let now = Instant::now();
        let consumers = self
            .subs
            .iter()
            .map(|(&id, sub)| {
                let oldest = self
                    .parts
                    .iter()
                    .flat_map(|part| part.flights.iter())
                    .filter(|(_, run)| run.sub == id)
                    .map(|(_, run)| now.saturating_duration_since(run.since))
                    .max()
                    .unwrap_or_default();
                (id, sub.address.clone(), sub.in_flight, oldest)
            })
            .collect();
        let partitions = self
            .parts
            .iter()
            .zip(self.topic.partitions())
            .enumerate()
            .map(|(p, (part, log))| {
                let end = log.next_offset();
                let floor = part.acks.floor().max(log.first_offset()).min(end);
                let left = (end - floor).saturating_sub(part.acks.done_above_floor());
                (p as u32, floor, end, left)
            })
            .collect();
        PushDescription {
            settings: self.settings.clone(),
            consumers,
            partitions,
            redelivered: self.redelivered,
            dead_lettered: self.dead_lettered,
        }
    }
}

/// The offsets of `map` within `span`.
fn keys_in<V>(map: &BTreeMap<u64, V>, span: &Span) -> Vec<u64> {
    map.range(span.start..span.end)
        .map(|(&offset, _)| offset)
        .collect()
}

async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}

/// The parts of `batch` not yet done, as batches of consecutive offsets.
fn not_done(batch: &Batch, acks: &AckState) -> Result<Vec<Batch>, BrokerError> {
    let mut out = Vec::new();
    let mut offset = batch.base_offset;
    while offset < batch.next_offset() {
        if acks.is_done(offset) {
            offset += 1;
            continue;
        }
        let mut end = offset + 1;
        while end < batch.next_offset() && !acks.is_done(end) {
            end += 1;
        }
        let slice = batch
            .slice(offset, (end - offset) as u32, usize::MAX)
            .map_err(|e| StorageError::Corrupt(format!("stored batch: {e}")))?;
        out.extend(slice);
        offset = end;
    }
    Ok(out)
}

/// Where dead-lettered records came from.
struct Origin {
    topic: String,
    group: String,
    partition: u32,
}

/// Header names on dead-lettered records.
pub mod headers {
    pub const TOPIC: &str = "x-herald-original-topic";
    pub const PARTITION: &str = "x-herald-original-partition";
    pub const OFFSET: &str = "x-herald-original-offset";
    pub const GROUP: &str = "x-herald-group";
    pub const REASON: &str = "x-herald-reason";
    pub const DELIVERY_COUNT: &str = "x-herald-delivery-count";
}

async fn write_dead_letters(
    topics: &Topics,
    store: &Store,
    dlq: &str,
    log: &Arc<crate::storage::PartitionLog>,
    origin: &Origin,
    records: Vec<(u64, u32, String)>,
) -> Result<(), BrokerError> {
    let mut out = Vec::with_capacity(records.len());
    for (offset, count, reason) in records {
        let reader = Arc::clone(log);
        let read = blocking(move || Ok(reader.read(offset, 1, usize::MAX)?)).await?;
        let Some(stored) = read
            .batches
            .iter()
            .flat_map(|b| b.iter())
            .filter_map(Result::ok)
            .find(|r| r.offset == offset)
        else {
            // Retention deleted it meanwhile: nothing left to dead-letter.
            continue;
        };
        let mut record: Record = stored.record;
        record.headers.extend([
            (
                headers::TOPIC.to_string(),
                Bytes::from(origin.topic.clone()),
            ),
            (
                headers::PARTITION.to_string(),
                Bytes::from(origin.partition.to_string()),
            ),
            (headers::OFFSET.to_string(), Bytes::from(offset.to_string())),
            (
                headers::GROUP.to_string(),
                Bytes::from(origin.group.clone()),
            ),
            (headers::REASON.to_string(), Bytes::from(reason)),
            (
                headers::DELIVERY_COUNT.to_string(),
                Bytes::from(count.to_string()),
            ),
        ]);
        out.push(record);
    }
    if out.is_empty() {
        return Ok(());
    }
    let topic = topics.ensure(dlq).await?;
    let batch = Batch::parse(encode_batch(&out)).map_err(BrokerError::BadBatch)?;
    topic.publish(store, batch, None, u32::MAX, None)?.await?;
    Ok(())
}

#[cfg(test)]
#[path = "push_group_tests.rs"]
mod tests;
