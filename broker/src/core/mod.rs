//! The broker's verbs, for every way in.
//!
//! [`Core`] is one cheap handle on the broker's shared state whose async methods are what
//! a client can ask: topics (create, describe, list, delete), publish, fetch with
//! long-polling, pull groups (join, sync, commit, leave), group administration (create,
//! reset, delete, list, describe) and push subscriptions (subscribe, answer, unsubscribe).
//! Each takes plain arguments and returns a typed result or a [`BrokerError`], whose
//! [`code`](BrokerError::code) is the wire's error code. Nothing here knows a socket: a
//! subscription comes back as a stream of deliveries that the caller forwards as it likes,
//! and a caller is named by a [`Caller`] (a session id and an address for `describe`).
//!
//! Results that are plain data reuse the protocol crate's structs (`TopicInfo`,
//! `GroupInfo`, ...): they are the broker's vocabulary, and the TCP adapter sends them
//! as they are.
//!
//! Every verb checks its caller first (see `auth::access`): a `Core` carries the
//! [`Principal`] it acts for ([`Core::acting_for`]), so no way in can skip a check. The
//! operation each verb needs: `create`, `delete` and `describe` for the topic verbs of
//! those names (listing shows only what the caller may describe; groups are listed and
//! described under `describe` too, which `publish`, `consume` and `delete` imply); `publish` to publish (and `create` as well when the
//! publish would create the topic); `consume` to fetch, and for everything on a topic's
//! groups, pull or push (creating a push group that dead-letters also needs `publish` on
//! the dead-letter topic). Answers and grants on a subscription need only a login: the
//! subscription was checked when it was made. Users, tokens and rules need `admin` (see
//! [`security`]).

mod groups;
mod security;

pub use security::Secure;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_protocol::{Batch, GroupMode, PartitionInfo, Retention, TopicInfo, TopicSummary};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::auth::access::{Access, Principal};
use crate::auth::rules::Operation;
use crate::config::Config;
use crate::domain::group::Start;
use crate::domain::pull_group::{Granted, Joiner};
use crate::domain::push_group::{Answer, Span, SubscribeRequest, Subscription};
use crate::domain::topic::Published;
use crate::domain::Topic;
use crate::error::BrokerError;
use crate::shared::Shared;
use crate::storage::log::ReadBatches;
use crate::storage::{PartitionLog, ProducerBatch, RetentionPolicy};

/// Who asks: the id of its session (memberships and subscriptions end with it, see
/// [`Core::session_closed`]) and an address that `describe` shows.
#[derive(Debug, Clone)]
pub struct Caller {
    pub session: u64,
    pub address: String,
}

/// A fetch: up to `max_messages` records and `max_bytes` from `offset`, answered as soon
/// as `min_bytes` are there or after `max_wait`.
#[derive(Debug, Clone)]
pub struct FetchArgs {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub max_messages: u32,
    pub max_bytes: u32,
    pub min_bytes: u32,
    pub max_wait: Duration,
}

/// What a fetch read: record batches (their encodings, one after another) and the
/// partition's offsets at the time.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub first_offset: u64,
    pub next_offset: u64,
    pub batches: Bytes,
    /// Records in `batches`.
    pub records: usize,
}

/// A new group's mode and settings (0 / empty = the defaults).
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub mode: GroupMode,
    pub start: Start,
    pub ack_timeout_ms: u32,
    pub max_deliveries: u32,
    pub dead_letter: String,
}

/// The broker's verbs, for one principal; cloning is cheap.
#[derive(Clone)]
pub struct Core {
    shared: Arc<Shared>,
    principal: Principal,
}

impl Core {
    /// The verbs for a caller that has not logged in: everything with `--auth` off,
    /// nothing but logging in with it on.
    pub fn new(shared: Arc<Shared>) -> Core {
        Core {
            shared,
            principal: Principal::Anonymous,
        }
    }

    /// The same verbs, acting for `principal`.
    pub fn acting_for(&self, principal: Principal) -> Core {
        Core {
            shared: Arc::clone(&self.shared),
            principal,
        }
    }

    /// The broker's state, for the adapters that report on it (`metrics`).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// Logins, rules and open sessions.
    pub fn access(&self) -> &Arc<Access> {
        &self.shared.access
    }

    /// Whether the caller may do `operation` on `topic`, for a way in that keeps state
    /// of its own across callers (the gateway's shared lease subscriptions) and checks
    /// each request before using it.
    pub fn check(&self, operation: Operation, topic: &str) -> Result<(), BrokerError> {
        self.shared
            .access
            .check(&self.principal, operation, Some(topic))
    }

    /// Whether the caller may do `operation` on every topic (a rule on `*`): what a view
    /// of the whole broker needs (`GET /metrics`).
    pub fn check_everything(&self, operation: Operation) -> Result<(), BrokerError> {
        self.shared.access.check(&self.principal, operation, None)
    }

    /// The caller has logged in (or `--auth` is off): what opening a session that checks
    /// each of its requests needs (a WebSocket, at its upgrade).
    pub fn logged_in(&self) -> Result<(), BrokerError> {
        self.shared.access.logged_in(&self.principal)
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// A new session id, for a way in whose connections are sessions (WebSockets): its
    /// memberships and subscriptions end with [`Core::session_closed`].
    pub fn open_session(&self) -> u64 {
        self.shared
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Cancelled when the broker starts stopping: streams that never end by themselves
    /// (SSE, WebSockets) end with it.
    pub fn stopping(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    // Topics.

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        retention: RetentionPolicy,
    ) -> Result<TopicInfo, BrokerError> {
        self.check(Operation::Create, name)?;
        let topic = self
            .shared
            .topics
            .create(name, partitions, retention)
            .await?;
        Ok(describe_topic(&topic))
    }

    pub fn describe_topic(&self, name: &str) -> Result<TopicInfo, BrokerError> {
        self.check(Operation::Describe, name)?;
        Ok(describe_topic(&*self.shared.topics.get(name)?))
    }

    /// A topic's partitions and offsets for a caller about to read it (a stream, a
    /// tail): needs `consume`, not `describe`.
    pub fn topic_to_read(&self, name: &str) -> Result<TopicInfo, BrokerError> {
        self.check(Operation::Consume, name)?;
        Ok(describe_topic(&*self.shared.topics.get(name)?))
    }

    /// The topics the caller may describe.
    pub fn list_topics(&self) -> Result<Vec<TopicSummary>, BrokerError> {
        self.logged_in()?;
        let access = &self.shared.access;
        Ok(self
            .shared
            .topics
            .list()
            .iter()
            .filter(|t| access.may(&self.principal, Operation::Describe, t.name()))
            .map(|t| TopicSummary {
                name: t.name().to_string(),
                partitions: t.partitions().len() as u32,
            })
            .collect())
    }

    /// Deletes a topic, its records and its groups; every task that served it ends.
    pub async fn delete_topic(&self, name: &str) -> Result<(), BrokerError> {
        self.check(Operation::Delete, name)?;
        let id = self.shared.topics.get(name)?.record().id;
        self.shared.topics.delete(name).await?;
        self.shared.pull_groups.topic_deleted(id);
        self.shared.push_groups.topic_deleted(id);
        Ok(())
    }

    // Publishing.

    /// Validates `batch` and queues it for the store now, so publishes queued one after
    /// another keep their order; the returned future resolves once it is committed under
    /// the fsync policy. `partition` `None` routes by key (or round-robin); a numbered
    /// batch from an idempotent `producer` is stored once however often it is sent.
    pub async fn publish(
        &self,
        topic: &str,
        batch: Bytes,
        partition: Option<u32>,
        producer: Option<ProducerBatch>,
    ) -> Result<impl Future<Output = Result<Published, BrokerError>> + Send + 'static, BrokerError>
    {
        self.check(Operation::Publish, topic)?;
        if self.shared.access.required && self.shared.topics.get(topic).is_err() {
            self.check(Operation::Create, topic)?;
        }
        let batch = Batch::parse(batch).map_err(BrokerError::BadBatch)?;
        // A compressed batch may not unpack to more than an uncompressed one could be; this
        // bounds what validating it decompresses before anything is allocated.
        batch
            .uncompressed_len(self.shared.config.max_frame_bytes as usize)
            .map_err(BrokerError::BadBatch)?;
        self.check_room(batch.encoded_len() as u64)?;
        let max = self.shared.config.max_batch_records;
        if batch.record_count > max {
            return Err(BrokerError::BatchTooLarge {
                records: batch.record_count,
                max,
            });
        }
        let topic = self.shared.topics.get_or_create(topic).await?;
        topic.publish(
            &self.shared.store,
            batch,
            partition,
            self.shared.config.max_message_bytes,
            producer,
        )
    }

    /// Refuses a publish when the disk is at its reserve or the store at its quota (see
    /// `storage::disk`).
    fn check_room(&self, more: u64) -> Result<(), BrokerError> {
        let room = self.shared.store.room();
        if room.below_reserve() {
            return Err(BrokerError::DiskFull {
                free: room.free(),
                reserve: room.reserve,
            });
        }
        let quota = self.shared.config.max_disk_bytes;
        if quota > 0 && room.used() + more > quota {
            return Err(BrokerError::StorageFull {
                used: room.used(),
                more,
                max: quota,
            });
        }
        Ok(())
    }

    // Reading.

    /// Reads from `args.offset`, answering as soon as `min_bytes` are there, after
    /// `max_wait`, when `gone` is cancelled (the caller went away) or when the broker stops;
    /// a long-poll on a topic deleted meanwhile ends at once with `UnknownTopic`.
    ///
    /// Waiting costs nothing: the fetch sleeps on the partition's append notification and
    /// reads again only when a commit made new records readable. An offset below the first
    /// retained one or beyond the next one is `OffsetOutOfRange`; the next offset itself is
    /// valid. Replies are kept under half the largest frame.
    pub async fn fetch(
        &self,
        args: FetchArgs,
        gone: &CancellationToken,
    ) -> Result<Fetched, BrokerError> {
        self.check(Operation::Consume, &args.topic)?;
        let topic = self.shared.topics.get(&args.topic)?;
        let log = Arc::clone(topic.partition(args.partition)?);
        let (first, next) = (log.first_offset(), log.next_offset());
        if args.offset < first || args.offset > next {
            return Err(BrokerError::OffsetOutOfRange {
                offset: args.offset,
                first,
                next,
            });
        }
        let max_bytes = args.max_bytes.min(self.shared.config.max_frame_bytes / 2) as usize;
        let min_bytes = args.min_bytes.max(1) as usize;
        let deadline = Instant::now() + args.max_wait;
        let read = |log: Arc<PartitionLog>| async move {
            let read: ReadBatches = log
                .read_async(args.offset, args.max_messages, max_bytes)
                .await?;
            Ok::<_, BrokerError>(read)
        };
        let read = loop {
            // Register for the next append before reading, so none slips between the two.
            let appended = log.appended();
            if log.is_retired() {
                return Err(BrokerError::UnknownTopic(args.topic));
            }
            let got = read(Arc::clone(&log)).await?;
            if got.bytes >= min_bytes || Instant::now() >= deadline {
                break got;
            }
            tokio::select! {
                _ = appended => {}
                _ = tokio::time::sleep_until(deadline) => break read(Arc::clone(&log)).await?,
                _ = self.shared.shutdown.cancelled() => break got,
                _ = gone.cancelled() => break got,
            }
        };
        Ok(Fetched {
            first_offset: log.first_offset(),
            next_offset: log.next_offset(),
            records: read.records as usize,
            batches: read.concat(),
        })
    }

    // Pull groups.

    pub async fn join(
        &self,
        caller: &Caller,
        topic: &str,
        group: &str,
        member_id: &str,
        start: Start,
    ) -> Result<Granted, BrokerError> {
        self.check(Operation::Consume, topic)?;
        let topic = self.shared.topics.get(topic)?;
        let joiner = Joiner {
            session: caller.session,
            address: caller.address.clone(),
        };
        self.shared
            .pull_groups
            .join(&topic, group, member_id, start, joiner)
            .await
    }

    pub fn sync(
        &self,
        topic: &str,
        group: &str,
        member_id: &str,
        released: &[u32],
    ) -> Result<Granted, BrokerError> {
        self.check(Operation::Consume, topic)?;
        let topic = self.shared.topics.get(topic)?;
        self.shared
            .pull_groups
            .sync(&topic, group, member_id, released)
    }

    /// Stores committed offsets (the next offset to consume per partition); returns the
    /// group's generation.
    pub async fn commit(
        &self,
        topic: &str,
        group: &str,
        member_id: &str,
        generation: u32,
        offsets: &[(u32, u64)],
    ) -> Result<u32, BrokerError> {
        self.check(Operation::Consume, topic)?;
        let topic = self.shared.topics.get(topic)?;
        self.shared
            .pull_groups
            .commit(&topic, group, member_id, generation, offsets)
            .await
    }

    pub fn leave(&self, topic: &str, group: &str, member_id: &str) -> Result<(), BrokerError> {
        self.check(Operation::Consume, topic)?;
        let topic = self.shared.topics.get(topic)?;
        self.shared.pull_groups.leave(&topic, group, member_id)
    }

    // Push subscriptions.

    /// Adds `caller` as a subscriber of push group `group` (created at `start` if new).
    /// Its deliveries come on [`Subscription::deliveries`], never more than the window of
    /// `prefetch_count` records (and `prefetch_bytes`, 0 = no limit) unanswered.
    pub async fn subscribe(
        &self,
        caller: &Caller,
        topic: &str,
        group: &str,
        prefetch_count: u32,
        prefetch_bytes: u32,
        start: Start,
    ) -> Result<Subscription, BrokerError> {
        self.check(Operation::Consume, topic)?;
        let topic = self.shared.topics.get(topic)?;
        let request = SubscribeRequest {
            session: caller.session,
            address: caller.address.clone(),
            prefetch_count,
            prefetch_bytes,
            start,
            credit: false,
        };
        self.shared
            .push_groups
            .subscribe(&topic, group, request)
            .await
    }

    /// A credit-based subscription to push group `group` (created at the earliest offset if
    /// new), for leases: it receives only what [`Core::grant`] allows, at most `window`
    /// records unanswered.
    pub async fn lease_subscription(
        &self,
        caller: &Caller,
        topic: &str,
        group: &str,
        window: u32,
    ) -> Result<Subscription, BrokerError> {
        self.check(Operation::Consume, topic)?;
        let topic = self.shared.topics.get(topic)?;
        let request = SubscribeRequest {
            session: caller.session,
            address: caller.address.clone(),
            prefetch_count: window,
            prefetch_bytes: 0,
            start: Start::Earliest,
            credit: true,
        };
        self.shared
            .push_groups
            .subscribe(&topic, group, request)
            .await
    }

    /// Lets credit-based subscription `id` receive `records` more records.
    pub async fn grant(&self, caller: &Caller, id: u64, records: u32) -> Result<(), BrokerError> {
        self.logged_in()?;
        self.shared
            .push_groups
            .grant(caller.session, id, records)
            .await
    }

    /// Takes back the credit subscription `id` did not use (returned); its deliveries made
    /// before are in its queue by then.
    pub async fn revoke(&self, caller: &Caller, id: u64) -> Result<u32, BrokerError> {
        self.logged_in()?;
        self.shared.push_groups.revoke(caller.session, id).await
    }

    /// Answers deliveries of subscription `id`; resolves once the resulting ack state is
    /// stored under the fsync policy.
    pub async fn answer(
        &self,
        caller: &Caller,
        id: u64,
        spans: Vec<Span>,
        answer: Answer,
    ) -> Result<(), BrokerError> {
        self.logged_in()?;
        self.shared
            .push_groups
            .answer(caller.session, id, spans, answer)
            .await
    }

    /// Ends subscription `id`; its unanswered deliveries go back to the group at once.
    pub async fn unsubscribe(&self, caller: &Caller, id: u64) -> Result<(), BrokerError> {
        self.logged_in()?;
        self.shared
            .push_groups
            .unsubscribe(caller.session, id)
            .await
    }

    /// A caller's session ended: its pull memberships and push subscriptions end, and
    /// what it held goes back to its groups.
    pub async fn session_closed(&self, session: u64) {
        self.shared.pull_groups.session_closed(session);
        self.shared.push_groups.session_closed(session).await;
    }
}

fn describe_topic(topic: &Topic) -> TopicInfo {
    let r = topic.record().retention;
    let partitions = topic
        .partitions()
        .iter()
        .enumerate()
        .map(|(p, log)| PartitionInfo {
            partition: p as u32,
            first_offset: log.first_offset(),
            next_offset: log.next_offset(),
            bytes: log.size_bytes(),
        })
        .collect();
    TopicInfo {
        name: topic.name().to_string(),
        retention: Retention {
            max_age_ms: r.max_age_ms,
            max_bytes: r.max_bytes,
            max_messages: r.max_messages,
        },
        partitions,
    }
}
