//! A session's outbound queue, bounded in bytes as well as in frames.
//!
//! Replies and deliveries wait here for the session's writer. A client that stops reading
//! its socket stalls the writer; the queue then fills, and whoever adds to it waits — the
//! session's own requests and its subscriptions' forwarders, nobody else. Counting frames
//! alone would let a few large fetch replies or deliveries pile up gigabytes, so every
//! frame also takes its weight (the record bytes it carries, or a small constant) from
//! the session's byte budget (`--max-outbound-bytes`) until it is written out. A frame
//! heavier than the whole budget takes the whole budget: it waits for an empty queue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use herald_protocol::{Frame, Message};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

/// What a frame without record bytes weighs.
const SMALL_FRAME: usize = 64;

/// The sending side; clones share the queue and its budget.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    max_bytes: usize,
    /// Bytes queued in every session of the broker, for monitoring and tests.
    gauge: Arc<AtomicU64>,
}

/// A frame in the queue, with its share of the byte budget.
pub struct Queued {
    pub message: Message,
    /// Keep until the frame is written out: dropping it returns the share.
    pub ticket: Ticket,
}

/// A queued frame's share of the byte budget.
pub struct Ticket {
    weight: u64,
    gauge: Arc<AtomicU64>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.weight, Ordering::Relaxed);
    }
}

/// The session's queue has no writer any more.
#[derive(Debug)]
pub struct Closed;

impl Outbound {
    /// A queue of at most `frames` frames and `max_bytes` bytes of weight.
    pub fn new(
        frames: usize,
        max_bytes: usize,
        gauge: Arc<AtomicU64>,
    ) -> (Outbound, mpsc::Receiver<Queued>) {
        let max_bytes = max_bytes.clamp(SMALL_FRAME, u32::MAX as usize);
        let (tx, rx) = mpsc::channel(frames.max(1));
        let outbound = Outbound {
            tx,
            budget: Arc::new(Semaphore::new(max_bytes)),
            max_bytes,
            gauge,
        };
        (outbound, rx)
    }

    /// Queues `message`, waiting while the queue is full by count or by bytes.
    pub async fn send(&self, message: Message) -> Result<(), Closed> {
        let weight = weight(&message.frame).min(self.max_bytes);
        let permits = u32::try_from(weight).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.budget)
            .acquire_many_owned(permits)
            .await
            .map_err(|_| Closed)?;
        self.gauge.fetch_add(weight as u64, Ordering::Relaxed);
        let queued = Queued {
            message,
            ticket: Ticket {
                weight: weight as u64,
                gauge: Arc::clone(&self.gauge),
                _permit: permit,
            },
        };
        self.tx.send(queued).await.map_err(|_| Closed)
    }
}

/// How much of the budget a frame takes: the record bytes it carries, or a small constant.
fn weight(frame: &Frame) -> usize {
    SMALL_FRAME
        + match frame {
            Frame::Deliver(deliver) => deliver.batch.len() + 4 * deliver.delivery_counts.len(),
            Frame::FetchOk(fetched) => fetched.batches.len(),
            _ => 0,
        }
}
