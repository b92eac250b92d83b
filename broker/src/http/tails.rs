//! Following a partition's tail once for every stream: read once, render once, send to
//! many.
//!
//! A thousand dashboards following one topic would each read every new record from the
//! store and serialize it to JSON: a thousand times the same work. Instead, the streams
//! that have caught up with a partition's tail share one reader per partition (a *hub*):
//! it long-polls the partition, renders each record's JSON once, and broadcasts the
//! rendered records to every stream that follows it.
//!
//! A stream reads by itself whenever it is behind — starting from an old cursor, or after
//! falling more than the hub's buffer behind (a browser that stops reading): its own
//! reads are flow-controlled by its own queue, so a slow stream holds nothing of the
//! others'. It subscribes to the hub *before* its last read by itself, so nothing
//! appended in between is missed; what it reads twice it skips by offset.
//!
//! A hub ends when nobody follows it any more (it notices on its next read or after
//! [`HUB_WAIT`]), when its topic is deleted or when the broker stops; its followers then
//! go back to reading by themselves, which reports a deleted topic as usual.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::events::{read_records, Item, READ_RECORDS};
use super::json::OutRecord;
use crate::core::{Core, FetchArgs};
use crate::error::BrokerError;

/// Rendered reads a hub keeps for followers that have not taken them yet; a follower
/// further behind reads by itself.
const HUB_BUFFER: usize = 256;
/// How long a hub's long-poll waits before it looks whether anybody still follows.
const HUB_WAIT: Duration = Duration::from_secs(30);
/// The least time between two sends of a hub. A record after a quiet spell goes out at
/// once; under a steady stream of small appends, each follower gets what arrived in the
/// meantime in one write instead of one write per append — with a thousand streams, a
/// million system calls a second fewer at a thousand appends a second, for at most this
/// much more latency.
const HUB_INTERVAL: Duration = Duration::from_millis(5);
/// How long a stream's own long-poll waits before looking again (its end, and the
/// broker's stop, are noticed sooner).
const OWN_WAIT: Duration = Duration::from_secs(300);

/// Records of one partition read and rendered once: offsets `from..next`.
pub(super) struct Rendered {
    pub from: u64,
    pub next: u64,
    /// Each record's offset and its JSON (as [`OutRecord`] writes it).
    pub records: Vec<(u64, Bytes)>,
}

impl Rendered {
    /// The records from offset `offset` on.
    pub fn since(&self, offset: u64) -> impl Iterator<Item = &(u64, Bytes)> {
        self.records.iter().filter(move |(o, _)| *o >= offset)
    }
}

/// Where a hub sends what it rendered.
type Hub = broadcast::Sender<Arc<Rendered>>;

/// The hubs of the gateway, by topic and partition.
#[derive(Default)]
pub(super) struct Tails {
    hubs: Mutex<HashMap<(String, u32), Hub>>,
}

impl Tails {
    /// A subscription to `partition`'s hub, starting one (at `offset`) if there is none.
    fn join(
        self: &Arc<Self>,
        core: &Core,
        tasks: &TaskTracker,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> broadcast::Receiver<Arc<Rendered>> {
        let mut hubs = self.hubs.lock().unwrap_or_else(|e| e.into_inner());
        let key = (topic.to_string(), partition);
        if let Some(hub) = hubs.get(&key) {
            return hub.subscribe();
        }
        let (hub, rx) = broadcast::channel(HUB_BUFFER);
        hubs.insert(key.clone(), hub.clone());
        let (core, tails) = (core.clone(), Arc::clone(self));
        tasks.spawn(async move {
            read_for_all(&core, &key.0, partition, offset, &hub).await;
            let mut hubs = tails.hubs.lock().unwrap_or_else(|e| e.into_inner());
            if hubs.get(&key).is_some_and(|h| h.same_channel(&hub)) {
                hubs.remove(&key);
            }
        });
        rx
    }
}

/// A hub: reads `partition` from `offset` and broadcasts what it renders, until nobody
/// follows, the partition cannot be read (its topic was deleted) or the broker stops.
async fn read_for_all(core: &Core, topic: &str, partition: u32, mut offset: u64, hub: &Hub) {
    let stopping = core.stopping();
    let mut sent: Option<tokio::time::Instant> = None;
    while hub.receiver_count() > 0 && !stopping.is_cancelled() {
        if let Some(sent) = sent {
            tokio::time::sleep_until(sent + HUB_INTERVAL).await;
        }
        let args = read_args(core, topic, partition, offset, HUB_WAIT);
        let Ok(fetched) = core.fetch(args, &CancellationToken::new()).await else {
            return;
        };
        let Ok(records) = read_records(fetched.batches, offset) else {
            return;
        };
        let Some(last) = records.last() else { continue };
        let next = last.offset + 1;
        let rendered = Rendered {
            from: offset,
            next,
            records: records
                .iter()
                .map(|stored| {
                    let json = serde_json::to_vec(&OutRecord::new(topic, partition, stored))
                        .expect("a record serializes");
                    (stored.offset, Bytes::from(json))
                })
                .collect(),
        };
        offset = next;
        sent = Some(tokio::time::Instant::now());
        if hub.send(Arc::new(rendered)).is_err() {
            return; // nobody follows any more
        }
    }
}

fn read_args(core: &Core, topic: &str, partition: u32, offset: u64, wait: Duration) -> FetchArgs {
    FetchArgs {
        topic: topic.to_string(),
        partition,
        offset,
        max_messages: READ_RECORDS,
        max_bytes: core.config().max_frame_bytes,
        min_bytes: 1,
        max_wait: wait,
    }
}

/// What one stream's follower of a partition shares.
pub(super) struct Follow {
    pub core: Core,
    pub tails: Arc<Tails>,
    pub tasks: TaskTracker,
    pub topic: String,
    pub partition: u32,
}

impl Follow {
    /// Hands `partition`'s records from `offset` on to the stream (`tx`) until it goes
    /// (`stop`) or the broker stops: read by itself while behind, from the partition's
    /// hub once caught up.
    pub async fn run(self, mut offset: u64, tx: mpsc::Sender<Item>, stop: CancellationToken) {
        let stopping = self.core.stopping();
        loop {
            // Subscribe first, then catch up: whatever the hub sends from now on either
            // comes after the last read by itself or is skipped by offset.
            let mut hub =
                self.tails
                    .join(&self.core, &self.tasks, &self.topic, self.partition, offset);
            loop {
                let args = read_args(
                    &self.core,
                    &self.topic,
                    self.partition,
                    offset,
                    Duration::ZERO,
                );
                let item = match self.core.fetch(args, &stop).await {
                    Ok(fetched) => match read_records(fetched.batches, offset) {
                        Ok(records) if records.is_empty() => break,
                        Ok(records) => {
                            offset = records.last().map_or(offset, |r| r.offset + 1);
                            Item::Records(self.partition, records)
                        }
                        Err(err) => Item::Failed(err),
                    },
                    Err(BrokerError::OffsetOutOfRange { first, next, .. }) => {
                        offset = if offset < first { first } else { next };
                        Item::Reset(self.partition, offset)
                    }
                    Err(err) => Item::Failed(err),
                };
                if !self.hand_over(item, &tx, &stop).await {
                    return;
                }
            }
            // Caught up: follow the hub until it ends or this stream falls behind it.
            loop {
                let rendered = tokio::select! {
                    rendered = hub.recv() => rendered,
                    _ = stop.cancelled() => return,
                    _ = stopping.cancelled() => return,
                };
                match rendered {
                    Ok(rendered) if rendered.next <= offset => {}
                    Ok(rendered) if rendered.from <= offset => {
                        let from = offset;
                        offset = rendered.next;
                        let item = Item::Rendered(self.partition, rendered, from);
                        if !self.hand_over(item, &tx, &stop).await {
                            return;
                        }
                    }
                    // A gap (it cannot happen after subscribing first, but reading by
                    // itself is always right), a hub that ended, or a stream that fell
                    // behind: read by itself again.
                    Ok(_) | Err(_) => break,
                }
            }
            if stop.is_cancelled() || stopping.is_cancelled() {
                return;
            }
            // Before following a hub again, wait for something new (without holding one).
            drop(hub);
            let args = read_args(&self.core, &self.topic, self.partition, offset, OWN_WAIT);
            let _ = self.core.fetch(args, &stop).await;
            if stop.is_cancelled() || stopping.is_cancelled() {
                return;
            }
        }
    }

    /// Sends `item` to the stream; false when the stream or this follower is done.
    async fn hand_over(
        &self,
        item: Item,
        tx: &mpsc::Sender<Item>,
        stop: &CancellationToken,
    ) -> bool {
        let failed = matches!(item, Item::Failed(_));
        let sent = tokio::select! {
            sent = tx.send(item) => sent.is_ok(),
            _ = stop.cancelled() => false,
        };
        sent && !failed
    }
}
