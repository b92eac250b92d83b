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
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use herald_protocol::record::MAX_BATCH_RECORDS;
use herald_protocol::{
    encode_batch_with, partition_for_key, Codec, Durability, ErrorCode, Publish, PublishOk, Record,
};
use tokio::sync::{mpsc, oneshot};
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
    /// Batches awaiting their confirm at once (1 to 16: the broker remembers a producer's
    /// last 16 batches per partition, which is what makes resending safe).
    pub max_in_flight: usize,
    /// Records queued for the producer task before `send` waits.
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
            max_in_flight: 8,
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

/// A queued record's confirm, to await later.
pub struct PendingConfirm(oneshot::Receiver<Result<Confirm>>);

impl Future for PendingConfirm {
    type Output = Result<Confirm>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(Error::Closed("the producer has stopped".into()))))
    }
}

enum Command {
    Send {
        topic: String,
        record: Record,
        confirm: oneshot::Sender<Result<Confirm>>,
    },
    Flush(oneshot::Sender<()>),
}

/// Publishes records; clones share one producer task.
#[derive(Clone)]
pub struct Producer {
    commands: mpsc::Sender<Command>,
    max_message_bytes: usize,
    sent_bytes: Arc<AtomicU64>,
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
        let (commands, rx) = mpsc::channel(config.queue.max(1));
        let sent_bytes = Arc::new(AtomicU64::new(0));
        let max_message_bytes = self.session().max_message_bytes as usize;
        let task = Batcher {
            client: self.clone(),
            max_in_flight: config.max_in_flight.clamp(1, MAX_UNCONFIRMED),
            config,
            producer_id: fastrand::u64(1..),
            topics: HashMap::new(),
            open: HashMap::new(),
            order: Vec::new(),
            lanes: HashMap::new(),
            replies: FuturesUnordered::new(),
            unconfirmed: 0,
            next_batch: 0,
            flushes: Vec::new(),
            sent_bytes: Arc::clone(&sent_bytes),
            full: 0,
        };
        tokio::spawn(task.run(rx));
        Producer {
            commands,
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
    /// Records queued one after another are stored in that order (per partition).
    pub async fn enqueue(&self, topic: &str, record: Record) -> Result<PendingConfirm> {
        if record.size() > self.max_message_bytes {
            return Err(Error::MessageTooLarge {
                size: record.size(),
                max: self.max_message_bytes,
            });
        }
        let (confirm, rx) = oneshot::channel();
        self.commands
            .send(Command::Send {
                topic: topic.to_string(),
                record,
                confirm,
            })
            .await
            .map_err(|_| Error::Closed("the producer has stopped".into()))?;
        Ok(PendingConfirm(rx))
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
        self.commands
            .send(Command::Flush(done))
            .await
            .map_err(|_| Error::Closed("the producer has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Closed("the producer has stopped".into()))
    }
}

/// The broker keeps this many recent batch numbers per producer and partition.
const MAX_UNCONFIRMED: usize = 16;

/// One partition of one topic.
type PartitionKey = (String, u32);

/// Records waiting to be sent to one partition.
struct OpenBatch {
    records: Vec<Record>,
    confirms: Vec<oneshot::Sender<Result<Confirm>>>,
    bytes: usize,
    since: Instant,
}

/// Whether `batch` takes no more records.
fn full(config: &ProducerConfig, batch: &OpenBatch) -> bool {
    batch.records.len() >= config.batch_records || batch.bytes >= config.batch_bytes
}

/// What the producer knows of a topic.
struct TopicState {
    partitions: u32,
    /// Where records without a key go now.
    sticky: u32,
}

/// A batch sent and not yet confirmed or failed.
struct Unconfirmed {
    id: u64,
    sequence: u64,
    batch: Bytes,
    confirms: Vec<oneshot::Sender<Result<Confirm>>>,
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

struct Batcher {
    client: Client,
    config: ProducerConfig,
    max_in_flight: usize,
    producer_id: u64,
    topics: HashMap<String, TopicState>,
    open: HashMap<PartitionKey, OpenBatch>,
    /// Partitions with an open batch, in the order their first record arrived.
    order: Vec<PartitionKey>,
    lanes: HashMap<PartitionKey, Lane>,
    replies: FuturesUnordered<BoxFuture<'static, Reply>>,
    /// Batches in every lane.
    unconfirmed: usize,
    next_batch: u64,
    flushes: Vec<oneshot::Sender<()>>,
    sent_bytes: Arc<AtomicU64>,
    /// Open batches that are full (new records wait while there is one).
    full: usize,
}

impl Batcher {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut open = true;
        loop {
            self.send_ready().await;
            if self.open.is_empty() && self.unconfirmed == 0 {
                for done in self.flushes.drain(..) {
                    let _ = done.send(());
                }
                if !open {
                    return;
                }
            }
            // A full batch waiting for a slot holds up new records (backpressure).
            let accepting = open && self.full == 0;
            let linger = self
                .order
                .first()
                .filter(|_| self.unconfirmed < self.max_in_flight)
                .map(|key| self.open[key].since + self.config.linger);
            tokio::select! {
                Some((key, id, reply)) = self.replies.next(), if !self.replies.is_empty() => {
                    self.on_reply(key, id, reply).await;
                }
                command = commands.recv(), if accepting => match command {
                    None => open = false,
                    Some(command) => {
                        self.take(command).await;
                        // Take what else is queued, so records queued together leave together.
                        while self.full == 0 {
                            match commands.try_recv() {
                                Ok(command) => self.take(command).await,
                                Err(_) => break,
                            }
                        }
                    }
                },
                _ = tokio::time::sleep_until(linger.unwrap_or_else(Instant::now)), if linger.is_some() => {
                    self.send_lingered(true).await;
                }
            }
        }
    }

    async fn take(&mut self, command: Command) {
        match command {
            Command::Send {
                topic,
                record,
                confirm,
            } => self.add(topic, record, confirm).await,
            Command::Flush(done) => {
                self.flushes.push(done);
                // Everything open leaves now, linger or not.
                self.send_lingered(false).await;
            }
        }
    }

    fn is_full(&self, batch: &OpenBatch) -> bool {
        full(&self.config, batch)
    }

    /// Sends open batches while slots are free: full ones, and (without linger) the rest.
    async fn send_ready(&mut self) {
        if self.config.linger.is_zero() || !self.flushes.is_empty() {
            self.send_lingered(false).await;
            return;
        }
        while self.unconfirmed < self.max_in_flight {
            let Some(key) = self
                .order
                .iter()
                .find(|k| self.is_full(&self.open[*k]))
                .cloned()
            else {
                return;
            };
            self.send(key).await;
        }
    }

    /// Sends open batches in arrival order while slots are free; with `due_only`, only
    /// those that have lingered long enough.
    async fn send_lingered(&mut self, due_only: bool) {
        while self.unconfirmed < self.max_in_flight {
            let Some(key) = self.order.first().cloned() else {
                return;
            };
            if due_only && self.open[&key].since + self.config.linger > Instant::now() {
                return;
            }
            self.send(key).await;
        }
    }

    async fn add(
        &mut self,
        topic: String,
        record: Record,
        confirm: oneshot::Sender<Result<Confirm>>,
    ) {
        let partitions = match self.partitions(&topic).await {
            Ok(partitions) => partitions,
            Err(err) => {
                let _ = confirm.send(Err(err));
                return;
            }
        };
        let partition = match &record.key {
            Some(key) => partition_for_key(key, partitions),
            None => self.topics[&topic].sticky,
        };
        let key = (topic, partition);
        let size = record.size();
        // Per record this is the hot path: one lookup, and the key cloned only for a new
        // batch, whose vectors are sized for a whole batch up front.
        let open = match self.open.get_mut(&key) {
            Some(open) => open,
            None => {
                let room = self.config.batch_records.clamp(1, 1024);
                self.order.push(key.clone());
                self.open.entry(key).or_insert_with(|| OpenBatch {
                    records: Vec::with_capacity(room),
                    confirms: Vec::with_capacity(room),
                    bytes: 0,
                    since: Instant::now(),
                })
            }
        };
        let was_full = full(&self.config, open);
        open.records.push(record);
        open.confirms.push(confirm);
        open.bytes += size;
        if !was_full && full(&self.config, open) {
            self.full += 1;
        }
    }

    /// The topic's partition count, asked of the broker the first time. A topic that
    /// does not exist yet counts as one partition: publishing creates it so (or fails
    /// with `UnknownTopic` when the broker does not create topics).
    async fn partitions(&mut self, topic: &str) -> Result<u32> {
        if let Some(state) = self.topics.get(topic) {
            return Ok(state.partitions);
        }
        let mut tries = 0;
        let partitions = loop {
            match self.client.describe_topic(topic).await {
                Ok(info) => break (info.partitions.len() as u32).max(1),
                Err(err) if err.code() == Some(ErrorCode::UnknownTopic) => break 1,
                Err(Error::Disconnected(_)) if tries < 3 => tries += 1,
                Err(err) => return Err(err),
            }
        };
        let state = TopicState {
            partitions,
            sticky: fastrand::u32(..partitions),
        };
        self.topics.insert(topic.to_string(), state);
        Ok(partitions)
    }

    /// Numbers one open batch and sends it.
    async fn send(&mut self, key: PartitionKey) {
        let Some(open) = self.open.remove(&key) else {
            return;
        };
        if full(&self.config, &open) {
            self.full -= 1;
        }
        self.order.retain(|k| *k != key);
        if let Some(state) = self.topics.get_mut(&key.0) {
            if state.sticky == key.1 {
                state.sticky = (state.sticky + 1) % state.partitions;
            }
        }
        let lane = self.lanes.entry(key.clone()).or_default();
        lane.next_sequence += 1;
        let batch = Unconfirmed {
            id: self.next_batch,
            sequence: lane.next_sequence,
            batch: encode_batch_with(&open.records, self.config.compression),
            confirms: open.confirms,
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
        let started = self.client.start(publish).await;
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
                deliver_confirms(Ok(ok), batch.confirms);
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
                    self.topics.remove(&key.0);
                }
                deliver_confirms(Err(err), batch.confirms);
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

/// Hands each record its confirm: the runs cover the batch's records in order.
fn deliver_confirms(reply: Result<PublishOk>, confirms: Vec<oneshot::Sender<Result<Confirm>>>) {
    let reply = reply.and_then(|ok| {
        let total: u64 = ok.runs.iter().map(|r| u64::from(r.count)).sum();
        if total == confirms.len() as u64 {
            Ok(ok)
        } else {
            Err(Error::Protocol(format!(
                "confirm covers {total} records, the batch had {}",
                confirms.len()
            )))
        }
    });
    match reply {
        Ok(ok) => {
            let offsets = ok.runs.iter().flat_map(|run| {
                (0..u64::from(run.count)).map(move |i| (run.partition, run.base_offset + i))
            });
            for ((partition, offset), confirm) in offsets.zip(confirms) {
                let _ = confirm.send(Ok(Confirm {
                    partition,
                    offset,
                    durability: ok.durability,
                }));
            }
        }
        Err(err) => {
            for confirm in confirms {
                let _ = confirm.send(Err(err.duplicate()));
            }
        }
    }
}
