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

use crate::error::BrokerError;
use crate::storage::{GroupRecord, StorageError, Store};

mod answers;
mod dead_letter;
mod delivery;
mod dispatcher;

pub use dead_letter::headers;
use dispatcher::{Dispatcher, Part};

use super::ack_state::AckState;
use super::flights::{Flights, Run};
use super::group::{check_group, Start, MODE_PUSH};
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
    /// Deliver only what [`PushGroups::grant`] allows (credit-based, for leases), rather
    /// than whenever the window has room.
    pub credit: bool,
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
    pub consumers: Vec<ConsumerState>,
    pub partitions: Vec<PartitionProgress>,
    pub redelivered: u64,
    pub dead_lettered: u64,
}

/// One subscriber of a push group, as `describe` shows it.
#[derive(Debug, Clone)]
pub struct ConsumerState {
    pub subscription: u64,
    pub address: String,
    /// Records delivered and not yet answered.
    pub in_flight: u32,
    /// Age of the oldest of them.
    pub oldest: Duration,
}

/// One partition of a push group, as `describe` shows it.
#[derive(Debug, Clone, Copy)]
pub struct PartitionProgress {
    pub partition: u32,
    /// Every offset below it is done.
    pub floor: u64,
    /// The partition's next offset.
    pub end: u64,
    /// Records between the floor and the end not yet done.
    pub left: u64,
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
        self.ask(session, id, |reply| Command::Answer {
            session,
            id,
            spans,
            answer,
            reply,
        })
        .await
    }

    /// Lets credit-based subscription `id` receive `records` more records (see
    /// [`SubscribeRequest::credit`]).
    pub async fn grant(&self, session: u64, id: u64, records: u32) -> Result<(), BrokerError> {
        self.ask(session, id, |reply| Command::Grant {
            session,
            id,
            records,
            reply,
        })
        .await
    }

    /// Takes back the credit subscription `id` did not use; returns how much that was.
    /// Deliveries made before are in its queue by the time this returns.
    pub async fn revoke(&self, session: u64, id: u64) -> Result<u32, BrokerError> {
        self.ask(session, id, |reply| Command::Revoke { session, id, reply })
            .await
    }

    /// Ends subscription `id`; its unanswered deliveries go back to the group at once.
    pub async fn unsubscribe(&self, session: u64, id: u64) -> Result<(), BrokerError> {
        self.ask(session, id, |reply| Command::Unsubscribe {
            session,
            id,
            reply,
        })
        .await
    }

    /// Sends subscription `id`'s dispatcher the command `command` makes around a reply
    /// channel, and waits for the reply (a dispatcher that ended is `gone`).
    async fn ask<T>(
        &self,
        session: u64,
        id: u64,
        command: impl FnOnce(oneshot::Sender<Result<T, BrokerError>>) -> Command,
    ) -> Result<T, BrokerError> {
        let dispatcher = self.dispatcher_of_subscription(session, id)?;
        let (reply, rx) = oneshot::channel();
        send(&dispatcher, command(reply)).await?;
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
        let dispatcher = Dispatcher::new(self, topic, group, settings, parts, tx.downgrade());
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
            .filter(|owned| owned.session == session)
            .map(|owned| owned.dispatcher.clone())
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

/// A subscription's owning session and its group's dispatcher.
struct Owned {
    session: u64,
    dispatcher: mpsc::Sender<Command>,
}

/// Subscription id → who owns it and where its answers go.
type SubscriptionMap = HashMap<u64, Owned>;

/// Which dispatcher serves each live subscription, and the session that owns it.
#[derive(Clone, Default)]
struct Subscriptions(Arc<Mutex<SubscriptionMap>>);

impl Subscriptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SubscriptionMap> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
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
    Grant {
        session: u64,
        id: u64,
        records: u32,
        reply: oneshot::Sender<Result<(), BrokerError>>,
    },
    Revoke {
        session: u64,
        id: u64,
        reply: oneshot::Sender<Result<u32, BrokerError>>,
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

#[cfg(test)]
mod tests;
