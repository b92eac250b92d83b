//! [`Producer`]: batches records sent close together, keeps several batches in flight, and
//! gets every record stored exactly once even when the connection breaks.
//!
//! Records go into a batch per partition: a record with a key goes to
//! [`partition_for_key`] of it, as the broker would place it; records without a key go
//! to one partition until its batch leaves, then to the next (sticky round-robin). A batch
//! is sent as soon as one of the producer's in-flight slots is free — so at low load every
//! record leaves at once, and under load records queue while the slots are busy and leave
//! together in larger batches (natural batching). `linger` can hold a partial batch a
//! little longer to make batches bigger still.
//!
//! ## Exactly once, in order
//!
//! Each producer draws a random 64-bit producer id and numbers its batches to each
//! partition 1, 2, 3, … The broker stores the next number, answers a number it has already
//! stored with the offsets it gave then, and refuses a gap (`OutOfOrderSequence`). So when
//! the connection breaks, the producer sends every unconfirmed batch of a partition again,
//! in order, with the same numbers, once that partition's answers are all in: what the
//! broker had stored is confirmed, not stored twice, and the rest is stored in order. A
//! batch the broker refuses for good (say `UnknownTopic`) fails its records; the batches
//! behind it, refused for the gap, are numbered again and resent. The broker remembers a
//! producer's last 16 numbers per partition, so at most 16 batches are unconfirmed at once.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use herald_protocol::record::MAX_BATCH_RECORDS;
use herald_protocol::{
    encode_batch_with, partition_for_key, Codec, Durability, ErrorCode, Publish, PublishOk, Record,
};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::client::{await_reply, expect_reply, Client};
use crate::error::{Error, Result};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a partial batch may wait for more records once a slot is free (0 = none).
    pub linger: Duration,
    /// Most records in one batch (at most 16,777,215, what a batch's count holds).
    pub batch_records: usize,
    /// Most payload bytes in one batch (a larger single record goes alone).
    pub batch_bytes: usize,
    /// Batches awaiting their confirm at once (1 to 16, and 16 by default: the broker
    /// remembers a producer's last 16 batches per partition, which is what makes
    /// resending safe).
    pub max_in_flight: usize,
    /// Records waiting in open batches (not yet sent) before `enqueue` and `send` wait.
    pub queue: usize,
    /// How each batch's records are compressed: they travel and are stored so, and
    /// consumers decompress them (`Codec::None` by default).
    pub compression: Codec,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::ZERO,
            batch_records: 1000,
            batch_bytes: 1024 * 1024,
            max_in_flight: 16,
            queue: 16 * 1024,
            compression: Codec::None,
        }
    }
}

/// Where a record was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirm {
    pub partition: u32,
    pub offset: u64,
    /// How safe the record is now (it depends on the broker's `--fsync` policy).
    pub durability: Durability,
}

/// A queued record's confirm, to await later. It shares its batch's answer with the
/// batch's other records: one answer per batch, however many records wait on it.
pub struct PendingConfirm {
    outcome: Answer,
    /// The record's place in its batch.
    index: usize,
}

/// Where a queued record's answer comes from.
enum Answer {
    Batch(Shared<oneshot::Receiver<Arc<Outcome>>>),
    Failed(Option<Error>),
}

/// A batch's answer: the broker's, or why there is none.
type Outcome = Result<PublishOk>;

impl Future for PendingConfirm {
    type Output = Result<Confirm>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let index = self.index;
        match &mut self.outcome {
            Answer::Failed(err) => Poll::Ready(Err(err
                .take()
                .unwrap_or_else(|| Error::Closed("the confirm was already taken".into())))),
            Answer::Batch(shared) => Pin::new(shared).poll(cx).map(|outcome| match outcome {
                Ok(outcome) => confirm_of(&outcome, index),
                Err(_) => Err(Error::Closed("the producer has stopped".into())),
            }),
        }
    }
}

/// Record `index`'s confirm from its batch's answer: the runs cover the batch's records
/// in order (how many there are was checked when the answer came).
fn confirm_of(outcome: &Outcome, index: usize) -> Result<Confirm> {
    let ok = outcome.as_ref().map_err(Error::duplicate)?;
    let mut skip = index as u64;
    for run in &ok.runs {
        if skip < u64::from(run.count) {
            return Ok(Confirm {
                partition: run.partition,
                offset: run.base_offset + skip,
                durability: ok.durability,
            });
        }
        skip -= u64::from(run.count);
    }
    Err(Error::Protocol(format!(
        "no confirm for record {index} of its batch"
    )))
}

/// Publishes records; clones share one producer task, which ends once every clone is
/// dropped and what they queued has its answer.
#[derive(Clone)]
pub struct Producer {
    handle: Arc<Handle>,
    max_message_bytes: usize,
    sent_bytes: Arc<AtomicU64>,
}

/// What the clones of one producer hold; dropping the last closes the intake.
struct Handle(Arc<Intake>);

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.0.queue).closed = true;
        self.0.wake.notify_one();
    }
}

impl Client {
    /// A producer with default settings. Call it inside a Tokio runtime: the producer
    /// runs its batching on a task of its own.
    pub fn producer(&self) -> Producer {
        self.producer_with(ProducerConfig::default())
    }

    /// A producer with the given settings; see [`Client::producer`].
    pub fn producer_with(&self, mut config: ProducerConfig) -> Producer {
        // A batch's record count is 24 bits: a larger setting could not be encoded.
        config.batch_records = config.batch_records.min(MAX_BATCH_RECORDS as usize);
        let sent_bytes = Arc::new(AtomicU64::new(0));
        let max_message_bytes = self.session().max_message_bytes as usize;
        let max_in_flight = config.max_in_flight.clamp(1, MAX_UNCONFIRMED);
        let intake = Arc::new(Intake {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            room: Notify::new(),
            client: self.clone(),
            config,
        });
        let task = Batcher {
            intake: Arc::clone(&intake),
            max_in_flight,
            producer_id: fastrand::u64(1..),
            lanes: HashMap::new(),
            replies: FuturesUnordered::new(),
            unconfirmed: 0,
            next_batch: 0,
            sent_bytes: Arc::clone(&sent_bytes),
        };
        tokio::spawn(task.run());
        Producer {
            handle: Arc::new(Handle(intake)),
            max_message_bytes,
            sent_bytes,
        }
    }
}

impl Producer {
    /// Bytes of record batches (as encoded, compressed or not) this producer has handed to
    /// its connection, resends included: what its records cost on the wire.
    pub fn batch_bytes_sent(&self) -> u64 {
        self.sent_bytes.load(Ordering::Relaxed)
    }

    /// Publishes one record and waits for its confirm.
    pub async fn send(&self, topic: &str, record: Record) -> Result<Confirm> {
        self.enqueue(topic, record).await?.await
    }

    /// Queues one record and returns once it is queued; await the result for its confirm.
    /// Records queued one after another are stored in that order (per partition). It
    /// waits while `queue` records are queued, or a full batch waits for a free slot.
    pub async fn enqueue(&self, topic: &str, record: Record) -> Result<PendingConfirm> {
        if record.size() > self.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size: record.size(),
                max: self.max_message_bytes,
            });
        }
        let intake = &self.handle.0;
        let mut record = record;
        loop {
            let full = {
                let mut queue = lock(&intake.queue);
                if queue.closed {
                    // With a clone still here, only the task's end closes the queue.
                    return Err(Error::Closed("the producer has stopped".into()));
                }
                if queue.has_room(&intake.config) {
                    match queue.add(intake, topic, record) {
                        Ok(pending) => return Ok(pending),
                        Err(back) => record = back,
                    }
                    false
                } else {
                    true
                }
            };
            if full {
                // Wait for the producer task to take records out; registered before the
                // second look, so a wakeup in between is not missed.
                let room = intake.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                let wait = {
                    let queue = lock(&intake.queue);
                    !queue.closed && !queue.has_room(&intake.config)
                };
                if wait {
                    room.await;
                }
            } else if let Err(err) = intake.learn_partitions(topic).await {
                return Ok(PendingConfirm {
                    outcome: Answer::Failed(Some(err)),
                    index: 0,
                });
            }
        }
    }

    /// Publishes records and waits for all their confirms, returned in record order.
    pub async fn send_batch(&self, topic: &str, records: Vec<Record>) -> Result<Vec<Confirm>> {
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            pending.push(self.enqueue(topic, record).await?);
        }
        let mut confirms = Vec::with_capacity(pending.len());
        for p in pending {
            confirms.push(p.await?);
        }
        Ok(confirms)
    }

    /// Waits until every record queued before this call has its answer.
    pub async fn flush(&self) -> Result<()> {
        let (done, rx) = oneshot::channel();
        lock(&self.handle.0.queue).flushes.push(done);
        self.handle.0.wake.notify_one();
        rx.await
            .map_err(|_| Error::Closed("the producer has stopped".into()))
    }
}

/// The broker keeps this many recent batch numbers per producer and partition.
const MAX_UNCONFIRMED: usize = 16;

/// One partition of one topic.
type PartitionKey = (String, u32);

/// Where records are queued, shared by the producer's clones (which add) and its task
/// (which takes batches to send). As in Kafka's record accumulator, a record joins its
/// partition's open batch under one short lock, and every record of a batch waits on the
/// batch's one answer: nothing per record crosses a channel.
struct Intake {
    queue: Mutex<Queue>,
    /// Tells the task that there is something to send, a flush, or no producer left.
    wake: Notify,
    /// Tells waiting callers that the task took records out of the queue.
    room: Notify,
    client: Client,
    config: ProducerConfig,
}

#[derive(Default)]
struct Queue {
    topics: HashMap<String, TopicState>,
    /// Partitions with an open batch, in the order their first record arrived.
    order: VecDeque<PartitionKey>,
    /// Records in open batches.
    records: usize,
    /// Open batches that are full (new records wait while there is one).
    full: usize,
    flushes: Vec<oneshot::Sender<()>>,
    /// Every clone of the producer is gone, or its task has ended: nothing more joins.
    closed: bool,
}

/// What the producer knows of a topic, and its open batches.
struct TopicState {
    /// Its partition count; `None` once the broker said it does not exist, until asked
    /// again.
    partitions: Option<u32>,
    /// Where records without a key go now.
    sticky: u32,
    /// Open batches by partition.
    open: Vec<Option<OpenBatch>>,
}

/// Records waiting to be sent to one partition.
struct OpenBatch {
    records: Vec<Record>,
    /// The batch's answer goes here; each record's [`PendingConfirm`] shares `outcome`.
    answer: oneshot::Sender<Arc<Outcome>>,
    outcome: Shared<oneshot::Receiver<Arc<Outcome>>>,
    bytes: usize,
    since: Instant,
}

/// Whether `batch` takes no more records.
fn full(config: &ProducerConfig, batch: &OpenBatch) -> bool {
    batch.records.len() >= config.batch_records || batch.bytes >= config.batch_bytes
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Intake {
    /// Asks the broker for the topic's partition count. A topic that does not exist yet
    /// counts as one partition: publishing creates it so (or fails with `UnknownTopic`
    /// when the broker does not create topics).
    async fn learn_partitions(&self, topic: &str) -> Result<()> {
        let mut tries = 0;
        let partitions = loop {
            match self.client.describe_topic(topic).await {
                Ok(info) => break (info.partitions.len() as u32).max(1),
                Err(err) if err.code() == Some(ErrorCode::UnknownTopic) => break 1,
                Err(Error::Disconnected(_)) if tries < 3 => tries += 1,
                Err(err) => return Err(err),
            }
        };
        let mut queue = lock(&self.queue);
        let state = queue
            .topics
            .entry(topic.to_string())
            .or_insert_with(|| TopicState {
                partitions: None,
                sticky: fastrand::u32(..partitions),
                open: Vec::new(),
            });
        if state.partitions.is_none() {
            state.partitions = Some(partitions);
            state.sticky %= partitions;
        }
        Ok(())
    }
}

impl Queue {
    /// Whether a record may join now.
    fn has_room(&self, config: &ProducerConfig) -> bool {
        !self.closed && self.full == 0 && self.records < config.queue.max(1)
    }

    /// Adds a record to its partition's open batch, or hands it back when the topic's
    /// partition count is not known. Per record this is the hot path: one lookup, and the
    /// key cloned only for a new batch, whose vector is sized for a whole batch up front.
    fn add(
        &mut self,
        intake: &Intake,
        topic: &str,
        record: Record,
    ) -> std::result::Result<PendingConfirm, Record> {
        let config = &intake.config;
        let Some(state) = self.topics.get_mut(topic) else {
            return Err(record);
        };
        let Some(partitions) = state.partitions else {
            return Err(record);
        };
        let partition = match &record.key {
            Some(key) => partition_for_key(key, partitions),
            None => state.sticky,
        } as usize;
        if state.open.len() <= partition {
            state.open.resize_with(partition + 1, || None);
        }
        let open = state.open[partition].get_or_insert_with(|| {
            let (answer, outcome) = oneshot::channel();
            self.order.push_back((topic.to_string(), partition as u32));
            intake.wake.notify_one();
            OpenBatch {
                records: Vec::with_capacity(config.batch_records.clamp(1, 1024)),
                answer,
                outcome: outcome.shared(),
                bytes: 0,
                since: Instant::now(),
            }
        });
        let was_full = full(config, open);
        let index = open.records.len();
        open.bytes += record.size();
        open.records.push(record);
        self.records += 1;
        if !was_full && full(config, open) {
            self.full += 1;
            intake.wake.notify_one();
        }
        Ok(PendingConfirm {
            outcome: Answer::Batch(open.outcome.clone()),
            index,
        })
    }

    /// Takes the open batch of `key` out of the queue, moving the topic's sticky
    /// partition on when it was that one.
    fn take(&mut self, config: &ProducerConfig, key: &PartitionKey) -> Option<OpenBatch> {
        self.order.retain(|k| k != key);
        let state = self.topics.get_mut(&key.0)?;
        let open = state.open.get_mut(key.1 as usize)?.take()?;
        if let Some(partitions) = state.partitions {
            if state.sticky == key.1 {
                state.sticky = (state.sticky + 1) % partitions;
            }
        }
        self.records -= open.records.len();
        if full(config, &open) {
            self.full -= 1;
        }
        Some(open)
    }

    fn is_full(&self, config: &ProducerConfig, key: &PartitionKey) -> bool {
        self.topics
            .get(&key.0)
            .and_then(|state| state.open.get(key.1 as usize))
            .and_then(Option::as_ref)
            .is_some_and(|open| full(config, open))
    }

    fn since(&self, key: &PartitionKey) -> Option<Instant> {
        let state = self.topics.get(&key.0)?;
        Some(state.open.get(key.1 as usize)?.as_ref()?.since)
    }
}

/// A batch sent and not yet confirmed or failed.
struct Unconfirmed {
    id: u64,
    sequence: u64,
    batch: Bytes,
    records: usize,
    answer: oneshot::Sender<Arc<Outcome>>,
    /// Sent and its answer not yet in.
    awaiting: bool,
}

/// One partition's numbering and the batches it has out.
#[derive(Default)]
struct Lane {
    /// The number the next new batch gets.
    next_sequence: u64,
    /// Unconfirmed batches in number order.
    batches: VecDeque<Unconfirmed>,
    /// Some batches must go again once every answer is in (a break, or a gap).
    resend: bool,
}

type Reply = (PartitionKey, u64, Result<PublishOk>);

/// The producer's task: takes batches from the [`Intake`] as slots free up, numbers,
/// encodes and sends them, and settles their answers.
struct Batcher {
    intake: Arc<Intake>,
    max_in_flight: usize,
    producer_id: u64,
    lanes: HashMap<PartitionKey, Lane>,
    replies: FuturesUnordered<BoxFuture<'static, Reply>>,
    /// Batches in every lane.
    unconfirmed: usize,
    next_batch: u64,
    sent_bytes: Arc<AtomicU64>,
}

impl Drop for Batcher {
    /// However the task ends (it returns once every clone is gone and everything is
    /// answered; a panic ends it too), nothing waits on it for ever: open batches are
    /// dropped, so their records' confirms fail with "the producer has stopped", as do
    /// flushes, and callers waiting for room are woken to find the queue closed.
    fn drop(&mut self) {
        let (open, flushes) = {
            let mut queue = lock(&self.intake.queue);
            queue.closed = true;
            queue.order.clear();
            let open: Vec<_> = queue
                .topics
                .values_mut()
                .flat_map(|state| state.open.drain(..))
                .collect();
            (open, std::mem::take(&mut queue.flushes))
        };
        drop((open, flushes));
        self.intake.room.notify_waiters();
    }
}

impl Batcher {
    async fn run(mut self) {
        loop {
            let flushing = self.send_ready().await;
            let linger = {
                let mut queue = lock(&self.intake.queue);
                if queue.order.is_empty() && self.unconfirmed == 0 {
                    for done in queue.flushes.drain(..) {
                        let _ = done.send(());
                    }
                    if queue.closed {
                        return;
                    }
                }
                queue
                    .order
                    .front()
                    .filter(|_| self.unconfirmed < self.max_in_flight && !flushing)
                    .and_then(|key| queue.since(key))
                    .map(|since| since + self.intake.config.linger)
            };
            tokio::select! {
                Some((key, id, reply)) = self.replies.next(), if !self.replies.is_empty() => {
                    self.on_reply(key, id, reply).await;
                }
                _ = self.intake.wake.notified() => {}
                _ = tokio::time::sleep_until(linger.unwrap_or_else(Instant::now)), if linger.is_some() => {}
            }
        }
    }

    /// Sends open batches while slots are free: in arrival order, those full and (without
    /// linger, or on a flush, or once closed) the rest, and those that lingered long
    /// enough. Returns whether a flush (or closing) is under way.
    async fn send_ready(&mut self) -> bool {
        let mut taken = Vec::new();
        let flushing = {
            let mut queue = lock(&self.intake.queue);
            let flushing = !queue.flushes.is_empty() || queue.closed;
            let now = Instant::now();
            let config = &self.intake.config;
            let every = config.linger.is_zero() || flushing;
            while self.unconfirmed + taken.len() < self.max_in_flight {
                let key = queue
                    .order
                    .iter()
                    .find(|key| {
                        every
                            || queue.is_full(config, key)
                            || queue.since(key).is_some_and(|s| s + config.linger <= now)
                    })
                    .cloned();
                let Some(key) = key else { break };
                if let Some(open) = queue.take(config, &key) {
                    taken.push((key, open));
                }
            }
            flushing
        };
        if !taken.is_empty() {
            self.intake.room.notify_waiters();
        }
        for (key, open) in taken {
            self.send(key, open).await;
        }
        flushing
    }

    /// Numbers one batch and sends it.
    async fn send(&mut self, key: PartitionKey, open: OpenBatch) {
        let lane = self.lanes.entry(key.clone()).or_default();
        lane.next_sequence += 1;
        let batch = Unconfirmed {
            id: self.next_batch,
            sequence: lane.next_sequence,
            batch: encode_batch_with(&open.records, self.intake.config.compression),
            records: open.records.len(),
            answer: open.answer,
            awaiting: false,
        };
        self.next_batch += 1;
        lane.batches.push_back(batch);
        self.unconfirmed += 1;
        if !lane.resend {
            let index = lane.batches.len() - 1;
            self.transmit(&key, index).await;
        }
    }

    /// Sends (or sends again) the lane's batch at `index`.
    async fn transmit(&mut self, key: &PartitionKey, index: usize) {
        let lane = self.lanes.get_mut(key).expect("lane exists");
        let batch = &mut lane.batches[index];
        batch.awaiting = true;
        let publish = Publish {
            topic: key.0.clone(),
            partition: key.1,
            producer_id: self.producer_id,
            sequence: batch.sequence,
            batch: batch.batch.clone(),
        };
        let (key, id, len) = (key.clone(), batch.id, batch.batch.len() as u64);
        let started = self.intake.client.start(publish).await;
        if started.is_ok() {
            self.sent_bytes.fetch_add(len, Ordering::Relaxed);
        }
        self.replies.push(Box::pin(async move {
            let reply = match started {
                Ok(rx) => await_reply(rx)
                    .await
                    .and_then(|frame| expect_reply!(frame, PublishOk)),
                Err(err) => Err(err),
            };
            (key, id, reply)
        }));
    }

    /// Settles one answer; once a lane that must resend has every answer in, resends.
    async fn on_reply(&mut self, key: PartitionKey, id: u64, reply: Result<PublishOk>) {
        let lane = self.lanes.get_mut(&key).expect("lane of a sent batch");
        let Some(index) = lane.batches.iter().position(|b| b.id == id) else {
            return;
        };
        lane.batches[index].awaiting = false;
        match reply {
            Ok(ok) => {
                let batch = lane.batches.remove(index).expect("found above");
                settle(batch, Ok(ok));
                self.unconfirmed -= 1;
            }
            Err(err) if Self::worth_resending(lane, index, &err) => {
                tracing::debug!(%err, topic = key.0, partition = key.1, "batch to be sent again");
                lane.resend = true;
            }
            Err(err) => {
                // Refused for good, so not stored: the batches behind it (refused for the
                // gap, or about to be) take the numbers down by one.
                let batch = lane.batches.remove(index).expect("found above");
                for later in lane.batches.iter_mut().skip(index) {
                    later.sequence -= 1;
                }
                lane.next_sequence -= 1;
                lane.resend |= lane.batches.len() > index;
                if err.code() == Some(ErrorCode::UnknownTopic) {
                    // Asked again before the next record goes.
                    if let Some(state) = lock(&self.intake.queue).topics.get_mut(&key.0) {
                        state.partitions = None;
                    }
                }
                settle(batch, Err(err));
                self.unconfirmed -= 1;
            }
        }
        // A lane is kept when empty: its numbering must go on where it stopped.
        let lane = self.lanes.get_mut(&key).expect("lane of a sent batch");
        if lane.resend && lane.batches.iter().all(|b| !b.awaiting) {
            lane.resend = false;
            for index in 0..lane.batches.len() {
                self.transmit(&key, index).await;
            }
        }
    }

    /// Whether an error leaves the batch to be sent again: the connection broke before
    /// its answer, or the broker refused it for a gap left by an earlier batch of the lane
    /// that is itself going again.
    fn worth_resending(lane: &Lane, index: usize, err: &Error) -> bool {
        match err {
            Error::Disconnected(_) => true,
            _ => err.code() == Some(ErrorCode::OutOfOrderSequence) && (index > 0 || lane.resend),
        }
    }
}

/// Gives a batch's records their answer, checking first that a confirm covers them all.
fn settle(batch: Unconfirmed, reply: Result<PublishOk>) {
    let outcome = reply.and_then(|ok| {
        let total: u64 = ok.runs.iter().map(|r| u64::from(r.count)).sum();
        if total == batch.records as u64 {
            Ok(ok)
        } else {
            Err(Error::Protocol(format!(
                "confirm covers {total} records, the batch had {}",
                batch.records
            )))
        }
    });
    let _ = batch.answer.send(Arc::new(outcome));
}
