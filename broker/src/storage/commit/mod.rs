//! The writer: every write to the store goes through it, one at a time, and it commits them
//! in groups.
//!
//! Publishers queue appends on a `crossbeam` channel. The writer thread takes everything
//! queued, writes it all to sled, flushes once (under `--fsync always`), and only then makes
//! the records readable and answers each publisher. Publishes that arrive during a flush wait
//! for the next one and share it: that is group commit, and it is why `always` stays fast.
//! When more is queued behind a group, the writer hands the group to the committer thread
//! to flush and answer, and goes on writing the next one meanwhile (see [`committer`]).
//!
//! Under `interval` and `never` nothing waits for a flush, and a small write that finds the
//! writer idle (nothing queued, nobody writing) is carried out by its caller instead, under
//! the same lock: see [`Shared::write_in_place`].

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};
use herald_protocol::{record::now_ms, Batch};
use tokio::sync::oneshot;

use super::checkpoint;
use super::chunk::{self, Tag};
use super::producers::{Check, ProducerBatch, Producers};
use super::stats::StoreStats;
use super::sync::Syncer;
use super::{PartitionLog, RetentionPolicy, StorageError};

mod committer;
mod flusher;
mod writer;
use committer::*;
use flusher::*;
use writer::*;

/// The most operations one commit gathers, so one flush never waits on an unbounded backlog.
pub(super) const MAX_GROUP: usize = 4096;

/// The largest batch (encoded) a caller writes in place; see [`Shared::write_in_place`].
/// About thirty records of 100 B. A producer's batches grow when it sends faster than
/// they are confirmed, so a larger batch means throughput is what counts, and the writer
/// thread then works beside the connection that is reading the next one (measured: W5's
/// batches of 4–8 KiB were 7% slower written in place, W4's single records much faster).
const IN_PLACE_MAX_BYTES: usize = 4 * 1024;

/// When confirmed data must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Flush before every confirm (shared by all publishes in a commit group).
    Always,
    /// Flush at most this often; confirms do not wait.
    Interval(Duration),
    /// Never flush explicitly; sled writes back in the background.
    Never,
}

impl FsyncPolicy {
    /// The name used on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::Interval(_) => "interval",
            FsyncPolicy::Never => "never",
        }
    }
}

/// How safe a confirmed write is, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Durability {
    /// In the store's memory; a crash may lose it.
    Buffered,
    /// fdatasync'ed: survives a power loss.
    Synced,
}

/// A committed append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    pub count: u32,
    pub durability: Durability,
}

type Job = Box<dyn FnOnce() -> Result<(), StorageError> + Send>;

pub(super) enum Op {
    Append {
        log: Arc<PartitionLog>,
        batch: Batch,
        producer: Option<ProducerBatch>,
        reply: oneshot::Sender<Result<Appended, StorageError>>,
    },
    Run {
        job: Job,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    Trim {
        log: Arc<PartitionLog>,
        policy: RetentionPolicy,
        reply: oneshot::Sender<Result<bool, StorageError>>,
    },
    /// Drop these logs' synced offsets from the record, durably, then run `job` (which
    /// deletes them) — one step, so no append to them lands in between.
    Forget {
        logs: Vec<String>,
        job: Job,
        reply: oneshot::Sender<Result<(), StorageError>>,
    },
    Stop,
}

impl Op {
    /// Answers the operation with `err` without carrying it out.
    fn fail(self, err: StorageError) {
        match self {
            Op::Append { reply, .. } => drop(reply.send(Err(err))),
            Op::Run { reply, .. } | Op::Forget { reply, .. } => drop(reply.send(Err(err))),
            Op::Trim { reply, .. } => drop(reply.send(Err(err))),
            Op::Stop => {}
        }
    }
}

/// The handle to the writer thread.
pub(super) struct CommitWriter {
    tx: Sender<Op>,
    shared: Arc<Shared>,
    thread: Mutex<Option<Running>>,
}

/// The writer thread, and the channel on which it says how its last flush went as it ends.
struct Running {
    handle: JoinHandle<()>,
    exited: Receiver<Result<(), StorageError>>,
}

/// The writer's state, taken by the thread for each commit group and by a caller that
/// writes in place (see [`Shared::write_in_place`]).
struct Shared {
    writer: Mutex<Writer>,
    /// Whether the policy lets a caller write in place (not under `always`).
    in_place: bool,
    /// Operations sent to the thread and not yet carried out. A caller writes in place only
    /// when there are none, so nothing overtakes what was queued before it.
    queued: AtomicUsize,
    /// Whether the writer is stuck (see [`Watchdog`]).
    watchdog: Watchdog,
    /// Whether the committer (under `always`) is stuck in a flush.
    committing: Arc<Watchdog>,
    /// Whether the flusher (under `always`) is stuck in sled's flush: what waits for it
    /// (everything but appends) is then refused at once.
    flushing: Arc<Watchdog>,
    /// What the writer measures of itself (the same as the [`Writer`]'s).
    stats: Arc<StoreStats>,
}

/// Tells a writer that works from one that is stuck.
///
/// sled may block for good inside a write or a flush when the disk fails under it (seen:
/// its flush parked forever after `ENOSPC`). Every caller's wait is bounded (see
/// `storage::bounded`); on top of that, once the writer has been busy with one commit
/// group for longer than the storage timeout, new operations are answered with an error at
/// once instead of queueing behind it.
struct Watchdog {
    epoch: Instant,
    /// When the current commit group (or write in place) started, in microseconds since
    /// `epoch` plus one; 0 while idle.
    busy_since: AtomicU64,
    limit: Duration,
}

impl Watchdog {
    fn new(limit: Duration) -> Watchdog {
        Watchdog {
            epoch: Instant::now(),
            busy_since: AtomicU64::new(0),
            limit,
        }
    }

    fn start(&self) {
        let now = self.epoch.elapsed().as_micros() as u64 + 1;
        self.busy_since.store(now, SeqCst);
    }

    fn finish(&self) {
        self.busy_since.store(0, SeqCst);
    }

    /// How long the writer has been stuck on one group, if longer than the limit.
    fn stuck_for(&self) -> Option<Duration> {
        let since = self.busy_since.load(SeqCst);
        if since == 0 {
            return None;
        }
        let busy = self
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_micros(since - 1));
        (busy > self.limit).then_some(busy)
    }
}

impl Shared {
    /// How long the writer, or the committer in a flush, has been stuck, if longer than
    /// the limit.
    fn stuck_for(&self) -> Option<Duration> {
        self.watchdog.stuck_for().max(self.committing.stuck_for())
    }

    /// Why `op` is refused at once, if something it would wait behind is stuck: the
    /// writer or the committer, or for all but appends (answered once their segment files
    /// are synced, see `flusher`) sled's flush.
    fn refusal(&self, op: &Op) -> Option<StorageError> {
        if let Some(busy) = self.stuck_for() {
            return Some(stuck(busy));
        }
        if matches!(op, Op::Append { .. }) {
            return None;
        }
        self.flushing.stuck_for().map(flush_stuck)
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Carries out an append or a job on the caller's thread when the writer is idle:
    /// nothing queued and nobody writing. Returns the operation when it must be queued.
    ///
    /// Under `--fsync interval` and `never` a commit adds nothing to a write, so an idle
    /// writer has no group to gather, and sending it the write would only cost two
    /// hand-offs between threads (the wake of the writer, then the wake of the caller):
    /// on two busy cores the writer thread is often not running when the write arrives,
    /// and the slowest deliveries at a steady rate were those waiting for it to be
    /// scheduled. Under `always` every write waits for a flush, which stays on the thread
    /// and shared by a group. Batches larger than [`IN_PLACE_MAX_BYTES`], retention passes
    /// and deletions always go to the thread: their cost is in the writing, not in the
    /// hand-off, and the caller is an async worker that other tasks wait for.
    fn write_in_place(&self, op: Op) -> Option<Op> {
        let small = match &op {
            Op::Append { batch, .. } => batch.encoded_len() <= IN_PLACE_MAX_BYTES,
            Op::Run { .. } => true,
            _ => false,
        };
        if !self.in_place || !small || self.queued.load(SeqCst) != 0 {
            return Some(op);
        }
        let Ok(mut writer) = self.writer.try_lock() else {
            return Some(op);
        };
        if writer.stopped || self.queued.load(SeqCst) != 0 {
            return Some(op);
        }
        let mut done = Vec::new();
        self.watchdog.start();
        let began = Instant::now();
        writer.apply(op, &mut done);
        self.stats.append_seconds.record_duration(began.elapsed());
        let saved = writer.save_bounds(false).map(|()| Durability::Buffered);
        self.watchdog.finish();
        writer.answer(done, saved);
        None
    }
}

impl CommitWriter {
    /// Starts the writer; `marks` are the synced offsets recorded so far (see
    /// [`checkpoint`](super::checkpoint)), kept up to date from here on.
    pub(super) fn start(
        db: sled::Db,
        policy: FsyncPolicy,
        dir: &Path,
        marks: checkpoint::Marks,
        producers: sled::Tree,
        timeout: Duration,
    ) -> Result<CommitWriter, StorageError> {
        let syncer = Syncer::open(dir)
            .map_err(|e| StorageError::Sled(format!("cannot sync the store: {e}")))?;
        let recorder = checkpoint::Recorder::start(dir)
            .map_err(|e| StorageError::Sled(format!("cannot start the offsets recorder: {e}")))?;
        let (tx, rx) = channel::unbounded();
        let stats = Arc::new(StoreStats::default());
        let syncer = Arc::new(Mutex::new(syncer));
        let durable = Arc::new(Mutex::new(Durable {
            marks,
            recorder,
            marks_offered: Instant::now(),
        }));
        let committing = Arc::new(Watchdog::new(timeout));
        let flushing = Arc::new(Watchdog::new(timeout));
        let flusher = match policy {
            FsyncPolicy::Always => Some(Flusher::start(
                db.clone(),
                Arc::clone(&syncer),
                Arc::clone(&stats),
                Arc::clone(&flushing),
            )?),
            _ => None,
        };
        let committer = match &flusher {
            Some(flusher) => Some(Committer::start(
                Arc::clone(&durable),
                flusher.sender(),
                Arc::clone(&stats),
                Arc::clone(&committing),
            )?),
            None => None,
        };
        let shared = Arc::new(Shared {
            writer: Mutex::new(Writer {
                db,
                policy,
                durable,
                syncer,
                committer,
                flusher,
                last_flush: Instant::now(),
                unsaved: Vec::new(),
                bounds_saved: Instant::now(),
                unsynced: Vec::new(),
                stats: Arc::clone(&stats),
                producers: Producers::new(producers),
                encode_buf: BytesMut::new(),
                trimmed: false,
                stopped: false,
            }),
            in_place: policy != FsyncPolicy::Always,
            queued: AtomicUsize::new(0),
            watchdog: Watchdog::new(timeout),
            committing,
            flushing,
            stats,
        });
        let (exited_tx, exited) = channel::bounded(1);
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("herald-writer".into())
                .spawn(move || {
                    let _ = exited_tx.send(run(&shared, rx));
                })
                .map_err(|e| StorageError::Sled(format!("cannot start the writer thread: {e}")))?
        };
        Ok(CommitWriter {
            tx,
            shared,
            thread: Mutex::new(Some(Running {
                handle: thread,
                exited,
            })),
        })
    }

    /// What the writer measured of itself.
    pub(super) fn stats(&self) -> &Arc<StoreStats> {
        &self.shared.stats
    }

    /// Whether the writer is stuck in one commit group, or sled's flush in one flush, past
    /// the storage timeout.
    pub(super) fn stalled(&self) -> bool {
        self.shared.stuck_for().is_some() || self.shared.flushing.stuck_for().is_some()
    }

    /// What syncs sled's files after its flushes: a test holds it to make a flush hang.
    #[cfg(test)]
    pub(super) fn syncer(&self) -> Arc<Mutex<Syncer>> {
        Arc::clone(&self.shared.writer().syncer)
    }

    /// Operations queued for the writer thread and not carried out yet.
    pub(super) fn queue_depth(&self) -> usize {
        self.shared.queued.load(SeqCst)
    }

    /// Carries out `op` in place if the writer is idle, or queues it for the thread. If
    /// the thread has stopped, the operation and its reply are dropped, and the receiver
    /// reports that.
    fn send(&self, op: Op) {
        if let Some(err) = self.shared.refusal(&op) {
            return op.fail(err);
        }
        let Some(op) = self.shared.write_in_place(op) else {
            return;
        };
        self.shared.queued.fetch_add(1, SeqCst);
        if self.tx.send(op).is_err() {
            self.shared.queued.fetch_sub(1, SeqCst);
        }
    }

    /// Queues an append (or writes it in place); the receiver resolves once it is committed
    /// under the policy. If the writer has stopped, the reply is dropped and the receiver
    /// reports that.
    pub(super) fn append(
        &self,
        log: &Arc<PartitionLog>,
        batch: Batch,
        producer: Option<ProducerBatch>,
    ) -> oneshot::Receiver<Result<Appended, StorageError>> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Append {
            log: Arc::clone(log),
            batch,
            producer,
            reply,
        });
        rx
    }

    /// Queues a retention pass over `log`; the receiver says whether anything was deleted.
    pub(super) fn trim(
        &self,
        log: &Arc<PartitionLog>,
        policy: RetentionPolicy,
    ) -> oneshot::Receiver<Result<bool, StorageError>> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Trim {
            log: Arc::clone(log),
            policy,
            reply,
        });
        rx
    }

    /// Queues `job` for the writer (or runs it in place), in order with appends; the
    /// receiver resolves once its writes are committed under the policy.
    pub(super) fn submit(
        &self,
        job: impl FnOnce() -> Result<(), StorageError> + Send + 'static,
    ) -> oneshot::Receiver<Result<(), StorageError>> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Run {
            job: Box::new(job),
            reply,
        });
        rx
    }

    /// Removes `logs` from the recorded synced offsets (durably), then runs `job`, which
    /// deletes them, and waits for its commit. Recording first means a log missing at start
    /// is never mistaken for a lost one. Blocks.
    pub(super) fn forget(
        &self,
        logs: Vec<String>,
        job: impl FnOnce() -> Result<(), StorageError> + Send + 'static,
    ) -> Result<(), StorageError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Forget {
            logs,
            job: Box::new(job),
            reply,
        });
        super::bounded_blocking(rx, self.shared.watchdog.limit)
    }

    /// Runs `job` as [`submit`](Self::submit) does and waits for its commit, at most the
    /// storage timeout. Blocks.
    pub(super) fn run(
        &self,
        job: impl FnOnce() -> Result<(), StorageError> + Send + 'static,
    ) -> Result<(), StorageError> {
        super::bounded_blocking(self.submit(job), self.shared.watchdog.limit)
    }

    /// Commits everything queued, then stops the thread, waiting for it (and its last flush
    /// and sync of the store) at most `limit`. Idempotent. A writer stuck in sled (a failing
    /// disk) is left behind with an error: what it had confirmed was made durable before it
    /// was confirmed.
    pub(super) fn stop(&self, limit: Duration) -> Result<(), StorageError> {
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        let Some(Running { handle, exited }) = thread else {
            return Ok(());
        };
        self.shared.queued.fetch_add(1, SeqCst);
        if self.tx.send(Op::Stop).is_err() {
            self.shared.queued.fetch_sub(1, SeqCst);
        }
        match exited.recv_timeout(limit) {
            Ok(flushed) => {
                let _ = handle.join();
                flushed
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = handle.join();
                Err(StorageError::Closed)
            }
            Err(RecvTimeoutError::Timeout) => Err(StorageError::Stalled(format!(
                "the storage writer did not stop within {limit:?}: the disk may be full or \
                 failing (records confirmed before were already durable)"
            ))),
        }
    }
}
