//! [`Producer`]: batches records sent close together and keeps several batches in flight.
//!
//! Records go into a per-topic batch. A batch is sent as soon as one of the producer's
//! in-flight slots is free — so at low load every record leaves at once, and under load
//! records queue while the slots are busy and leave together in larger batches (natural
//! batching). `linger` can hold a partial batch a little longer to make batches bigger still.
//! Batches leave in the order their records were queued, and one connection keeps that
//! order into the log.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use herald_protocol::{encode_batch, Durability, Publish, PublishOk, Record, ANY_PARTITION};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::client::{await_reply, expect_reply, Client};
use crate::error::{Error, Result};

/// Producer settings.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a partial batch may wait for more records once a slot is free (0 = none).
    pub linger: Duration,
    /// Most records in one batch.
    pub batch_records: usize,
    /// Most payload bytes in one batch (a larger single record goes alone).
    pub batch_bytes: usize,
    /// Batches awaiting their confirm at once.
    pub max_in_flight: usize,
    /// Records queued for the producer task before `send` waits.
    pub queue: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::ZERO,
            batch_records: 1000,
            batch_bytes: 1024 * 1024,
            max_in_flight: 8,
            queue: 16 * 1024,
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
}

impl Client {
    /// A producer with default settings. Call it inside a Tokio runtime: the producer
    /// runs its batching on a task of its own.
    pub fn producer(&self) -> Producer {
        self.producer_with(ProducerConfig::default())
    }

    /// A producer with the given settings; see [`Client::producer`].
    pub fn producer_with(&self, config: ProducerConfig) -> Producer {
        let (commands, rx) = mpsc::channel(config.queue.max(1));
        let max_message_bytes = self.session().max_message_bytes as usize;
        let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        let task = Batcher {
            client: self.clone(),
            config,
            slots,
            open: HashMap::new(),
            order: Vec::new(),
        };
        tokio::spawn(task.run(rx));
        Producer {
            commands,
            max_message_bytes,
        }
    }
}

impl Producer {
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

/// Records waiting to be sent to one topic.
struct OpenBatch {
    records: Vec<Record>,
    confirms: Vec<oneshot::Sender<Result<Confirm>>>,
    bytes: usize,
    since: Instant,
}

struct Batcher {
    client: Client,
    config: ProducerConfig,
    slots: Arc<Semaphore>,
    open: HashMap<String, OpenBatch>,
    /// Topics with an open batch, in the order their first record arrived.
    order: Vec<String>,
}

impl Batcher {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        loop {
            let command = if self.order.is_empty() {
                commands.recv().await
            } else if let Ok(command) = commands.try_recv() {
                Some(command)
            } else {
                // Nothing more queued right now: send what has lingered long enough.
                let deadline = self.open[&self.order[0]].since + self.config.linger;
                if deadline <= Instant::now() {
                    self.send_all().await;
                    continue;
                }
                tokio::select! {
                    command = commands.recv() => command,
                    _ = tokio::time::sleep_until(deadline) => {
                        self.send_all().await;
                        continue;
                    }
                }
            };
            match command {
                None => break,
                Some(Command::Send {
                    topic,
                    record,
                    confirm,
                }) => self.add(topic, record, confirm).await,
                Some(Command::Flush(done)) => {
                    self.send_all().await;
                    self.wait_idle().await;
                    let _ = done.send(());
                }
            }
        }
        self.send_all().await;
    }

    async fn add(
        &mut self,
        topic: String,
        record: Record,
        confirm: oneshot::Sender<Result<Confirm>>,
    ) {
        let size = record.size();
        let full = match self.open.get(&topic) {
            Some(open) => {
                open.records.len() >= self.config.batch_records
                    || open.bytes + size > self.config.batch_bytes
            }
            None => false,
        };
        if full {
            self.send(&topic).await;
        }
        if !self.open.contains_key(&topic) {
            self.order.push(topic.clone());
        }
        let open = self.open.entry(topic).or_insert_with(|| OpenBatch {
            records: Vec::new(),
            confirms: Vec::new(),
            bytes: 0,
            since: Instant::now(),
        });
        open.records.push(record);
        open.confirms.push(confirm);
        open.bytes += size;
    }

    async fn send_all(&mut self) {
        while let Some(topic) = self.order.first().cloned() {
            self.send(&topic).await;
        }
    }

    /// Sends one topic's open batch once an in-flight slot is free.
    async fn send(&mut self, topic: &str) {
        let Some(open) = self.open.remove(topic) else {
            return;
        };
        self.order.retain(|t| t != topic);
        let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
            return;
        };
        let publish = Publish {
            topic: topic.to_string(),
            partition: ANY_PARTITION,
            producer_id: 0,
            sequence: 0,
            batch: encode_batch(&open.records),
        };
        let started = self.client.start(publish).await;
        tokio::spawn(async move {
            let reply = match started {
                Ok(rx) => await_reply(rx)
                    .await
                    .and_then(|frame| expect_reply!(frame, PublishOk)),
                Err(err) => Err(err),
            };
            deliver_confirms(reply, open.confirms);
            drop(slot);
        });
    }

    /// Waits until no batch is in flight.
    async fn wait_idle(&self) {
        let all = self.config.max_in_flight.max(1) as u32;
        drop(self.slots.acquire_many(all).await);
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
