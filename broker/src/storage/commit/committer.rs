//! The committer thread, under `--fsync always`: it flushes and syncs what the writer has
//! written, and answers each group once its writes are durable, while the writer goes on
//! writing the next group.
//!
//! Without it a commit group's fdatasync waited behind its writes and the next group's
//! writes behind that sync (measured at 100 B: 5.0 ms of writes, then 4.1 ms of flush, per
//! group, in a line). sled takes writes while it flushes, so the writer hands each written
//! group over and takes the next; the committer flushes everything written so far and
//! answers every group handed over before the flush began, in order. Groups that arrive
//! while a flush runs share the next one. At most [`WAITING`] groups wait for the
//! committer; past that the writer waits too (and the watchdog sees it).
//!
//! A producer keeps its batches in flight until they are confirmed, so a writer that took
//! everything queued into one group would find nothing behind it and sync in line, and the
//! batches sent on its confirms would wait for that sync. So under `always` the writer
//! takes half of what is queued into a group once `SPLIT_FROM` (4) or more operations
//! wait: the other half is written while the committer syncs the first (W1 100 B, 3
//! alternated runs each: 531k → 619k msg/s). A shorter queue is committed whole: halving
//! that too sent the one or two publishes a steady 5,000 msg/s queues through the
//! committer's two wake-ups, and W4's p50 rose from about 800 to 944 µs; with the
//! threshold W4 is unchanged (p50 / p99 / p99.9 739 / 13,579 / 16,567 → 739 / 13,551 /
//! 16,627 µs, medians of 4).
//!
//! Only a writer with more work queued hands a group over: one that has nothing else to do
//! would only wait, and the hand-over costs two wake-ups between threads, which on two
//! busy cores showed in the latency at a steady rate (W4 at 5,000 msg/s: p99.9 42–52 ms
//! with every group handed over, against 18–20 ms committing in line). So a quiet writer
//! commits in line, after the committer has answered whatever it holds.
//!
//! A group's marks (each written log's next offset, see `checkpoint`) are taken when it is
//! handed over, before the flush that covers it starts, never after: a log's next offset
//! then may already count writes of a later group that this flush does not cover.

use super::*;

/// Written groups that may wait for the committer at once.
const WAITING: usize = 2;

/// A written group on its way to the disk, or a caller waiting until every group before
/// it is answered.
pub(super) enum Handoff {
    Group {
        done: Vec<Done>,
        /// The logs it wrote, each with its next offset as of the hand-over.
        synced: Vec<(Arc<PartitionLog>, u64)>,
        /// Why it cannot be committed (saving bounds failed): answered with this.
        failed: Option<StorageError>,
    },
    Barrier(Sender<()>),
}

pub(super) struct Committer {
    tx: Option<Sender<Handoff>>,
    handle: Option<JoinHandle<()>>,
    /// Groups handed over and not answered yet.
    pending: Arc<AtomicUsize>,
}

impl Committer {
    pub(super) fn start(
        durable: Arc<Mutex<Durable>>,
        flusher: Option<Sender<Waiting>>,
        stats: Arc<StoreStats>,
        watchdog: Arc<Watchdog>,
    ) -> Result<Committer, StorageError> {
        let (tx, rx) = channel::bounded(WAITING);
        let pending = Arc::new(AtomicUsize::new(0));
        let answered = Arc::clone(&pending);
        let handle = std::thread::Builder::new()
            .name("herald-committer".into())
            .spawn(move || {
                run(
                    &rx,
                    &durable,
                    flusher.as_ref(),
                    &stats,
                    &watchdog,
                    &answered,
                )
            })
            .map_err(|e| StorageError::Sled(format!("cannot start the committer thread: {e}")))?;
        Ok(Committer {
            tx: Some(tx),
            handle: Some(handle),
            pending,
        })
    }

    /// Hands a written group over; waits while [`WAITING`] groups wait already.
    pub(super) fn hand_off(&self, group: Handoff) {
        if let Handoff::Group { .. } = group {
            self.pending.fetch_add(1, SeqCst);
        }
        if let Some(tx) = &self.tx {
            // The thread only ends once this sender is dropped.
            let _ = tx.send(group);
        }
    }

    /// Returns once every group handed over before is answered (at once when none waits).
    pub(super) fn drain(&self) {
        if self.pending.load(SeqCst) == 0 {
            return;
        }
        let (done, wait) = channel::bounded(1);
        self.hand_off(Handoff::Barrier(done));
        let _ = wait.recv();
    }
}

impl Drop for Committer {
    /// Answers what was handed over, then ends the thread.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

fn run(
    rx: &Receiver<Handoff>,
    durable: &Mutex<Durable>,
    flusher: Option<&Sender<Waiting>>,
    stats: &StoreStats,
    watchdog: &Watchdog,
    pending: &AtomicUsize,
) {
    while let Ok(first) = rx.recv() {
        let mut groups = Vec::new();
        let mut barrier = None;
        for handoff in std::iter::once(first).chain(rx.try_iter()) {
            match handoff {
                Handoff::Group {
                    done,
                    synced,
                    failed,
                } => groups.push((done, synced, failed)),
                Handoff::Barrier(tx) => {
                    // What comes after it waits for the next round.
                    barrier = Some(tx);
                    break;
                }
            }
        }
        let synced: Vec<_> = groups
            .iter_mut()
            .filter(|(_, _, failed)| failed.is_none())
            .flat_map(|(_, synced, _)| synced.drain(..))
            .collect();
        let flushed = if groups.iter().any(|(_, _, failed)| failed.is_none()) {
            watchdog.start();
            let flushed = lock(durable).sync_segments(synced, stats);
            watchdog.finish();
            flushed
        } else {
            Ok(())
        };
        for (done, _, failed) in groups {
            let commit = match failed {
                Some(err) => Err(err),
                None => flushed.clone().map(|()| Durability::Synced),
            };
            answer_group(done, commit, flusher);
            pending.fetch_sub(1, SeqCst);
        }
        if let Some(tx) = barrier {
            let _ = tx.send(());
        }
    }
}

/// The durable state, taken by whoever flushes.
pub(super) fn lock(durable: &Mutex<Durable>) -> MutexGuard<'_, Durable> {
    durable.lock().unwrap_or_else(PoisonError::into_inner)
}
