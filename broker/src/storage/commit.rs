//! The writer: every write to the store goes through it, one at a time, and it commits them
//! in groups.
//!
//! Publishers queue appends on a `crossbeam` channel. The writer thread takes everything
//! queued, writes it all to sled, flushes once (under `--fsync always`), and only then makes
//! the records readable and answers each publisher. Publishes that arrive during a flush wait
//! for the next one and share it: that is group commit, and it is why `always` stays fast.
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
use super::sync::Syncer;
use super::{PartitionLog, RetentionPolicy, StorageError};

/// The most operations one commit gathers, so one flush never waits on an unbounded backlog.
const MAX_GROUP: usize = 4096;

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
        writer.apply(op, &mut done);
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
        let shared = Arc::new(Shared {
            writer: Mutex::new(Writer {
                db,
                policy,
                syncer,
                last_flush: Instant::now(),
                unsaved: Vec::new(),
                bounds_saved: Instant::now(),
                unsynced: Vec::new(),
                marks,
                recorder,
                marks_offered: Instant::now(),
                producers: Producers::new(producers),
                encode_buf: BytesMut::new(),
                trimmed: false,
                stopped: false,
            }),
            in_place: policy != FsyncPolicy::Always,
            queued: AtomicUsize::new(0),
            watchdog: Watchdog {
                epoch: Instant::now(),
                busy_since: AtomicU64::new(0),
                limit: timeout,
            },
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

    /// Carries out `op` in place if the writer is idle, or queues it for the thread. If
    /// the thread has stopped, the operation and its reply are dropped, and the receiver
    /// reports that.
    fn send(&self, op: Op) {
        if let Some(busy) = self.shared.watchdog.stuck_for() {
            return op.fail(stuck(busy));
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

/// The writer thread: takes everything queued, carries it out and commits it as one group.
/// Once stopped, it flushes and syncs the store a last time and returns how that went.
fn run(shared: &Shared, rx: Receiver<Op>) -> Result<(), StorageError> {
    loop {
        let wait = shared.writer().flush_wait();
        let received = match wait {
            Some(wait) => rx.recv_timeout(wait),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let first = match received {
            Ok(op) => op,
            Err(RecvTimeoutError::Timeout) => {
                shared.writer().flush_if_due();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut writer = shared.writer();
        shared.watchdog.start();
        let mut done = Vec::new();
        let mut taken = 0;
        for op in std::iter::once(first).chain(rx.try_iter().take(MAX_GROUP - 1)) {
            writer.apply(op, &mut done);
            taken += 1;
        }
        let (stopping, trimmed) = (writer.stopped, std::mem::take(&mut writer.trimmed));
        let saved = writer.save_bounds(trimmed || stopping);
        let commit = saved.and_then(|()| writer.commit(stopping));
        shared.watchdog.finish();
        writer.answer(done, commit);
        shared.queued.fetch_sub(taken, SeqCst);
        if stopping {
            break;
        }
    }
    let mut guard = shared.writer();
    let writer = &mut *guard;
    writer.stopped = true;
    let flushed = writer.flush_and_sync();
    if let Err(err) = writer.recorder.finish(&writer.marks) {
        tracing::error!(%err, "cannot record synced offsets");
    }
    flushed
}

struct Writer {
    db: sled::Db,
    policy: FsyncPolicy,
    syncer: Syncer,
    last_flush: Instant,
    /// Logs written since their bounds were last saved, and when that was.
    unsaved: Vec<Arc<PartitionLog>>,
    bounds_saved: Instant,
    /// Logs written since the last sync, whose marks move at the next one.
    unsynced: Vec<Arc<PartitionLog>>,
    /// Each log's next offset as of its last sync.
    marks: checkpoint::Marks,
    recorder: checkpoint::Recorder,
    marks_offered: Instant,
    /// Idempotent producers' recent batches.
    producers: Producers,
    /// Scratch space for encoding stored values, reused across writes.
    encode_buf: BytesMut,
    /// Whether a retention pass of the current group deleted anything.
    trimmed: bool,
    /// Set by [`Op::Stop`]: nothing is written in place any more.
    stopped: bool,
}

/// How often the writer records partition bounds when no retention pass asks for it.
/// Only a log that retention emptied needs its saved next offset (and one is saved at
/// once); the size they record may lag a crash by this much.
const BOUNDS_EVERY: Duration = Duration::from_millis(100);

/// Where an append went, and the chunks it stored (none for a resent batch that was
/// stored before).
type Written = (u64, u32, Vec<Batch>);

enum Done {
    Append {
        log: Arc<PartitionLog>,
        reply: oneshot::Sender<Result<Appended, StorageError>>,
        result: Result<Written, StorageError>,
    },
    Run {
        reply: oneshot::Sender<Result<(), StorageError>>,
        result: Result<(), StorageError>,
    },
    Trim {
        log: Arc<PartitionLog>,
        reply: oneshot::Sender<Result<bool, StorageError>>,
        result: Result<bool, StorageError>,
    },
}

impl Writer {
    /// Carries out one operation. What waits for the group's commit goes to `done`; under
    /// `interval` and `never` an append is answered at once.
    fn apply(&mut self, op: Op, done: &mut Vec<Done>) {
        match op {
            Op::Append {
                log,
                batch,
                producer,
                reply,
            } => {
                let result = match producer {
                    None => write_batch(&log, &batch, &mut self.encode_buf),
                    Some(producer) => self.write_numbered(&log, &batch, producer),
                };
                if !log.is_retired() {
                    touch(&mut self.unsaved, &log);
                }
                if result.is_ok() {
                    touch(&mut self.unsynced, &log);
                }
                let append = Done::Append { log, reply, result };
                if self.policy == FsyncPolicy::Always {
                    done.push(append);
                } else {
                    // Nothing the commit does adds to what this append has now.
                    answer(append, &Ok(Durability::Buffered));
                }
            }
            Op::Trim { log, policy, reply } => {
                let result = log.trim(&policy, now_ms()).and_then(|trimmed| {
                    if trimmed {
                        self.producers.forget_trimmed(&log)?;
                    }
                    Ok(trimmed)
                });
                self.trimmed |= matches!(result, Ok(true));
                if !log.is_retired() {
                    touch(&mut self.unsaved, &log);
                }
                done.push(Done::Trim { log, reply, result });
            }
            Op::Run { job, reply } => done.push(Done::Run {
                reply,
                result: job(),
            }),
            Op::Forget { logs, job, reply } => {
                for log in &logs {
                    self.marks.remove(log);
                }
                let forgotten: Result<(), StorageError> =
                    logs.iter().try_for_each(|log| self.producers.forget(log));
                // Nothing more is saved for them, and the writer holds them no longer (so
                // their trees can be dropped: see `Store::drop_retired`).
                self.unsynced.retain(|log| !logs.contains(&log.name()));
                self.unsaved.retain(|log| !logs.contains(&log.name()));
                let written = self
                    .recorder
                    .write_now(self.marks.clone())
                    .map_err(|e| StorageError::Sled(format!("cannot record synced offsets: {e}")));
                done.push(Done::Run {
                    reply,
                    result: written.and(forgotten).and_then(|()| job()),
                });
            }
            Op::Stop => self.stopped = true,
        }
    }

    /// Appends a producer's numbered batch, tagged with its producer and number, unless
    /// it was appended before (then answers with its original offsets); the producer's
    /// state is stored later, with the log's bounds (see `storage::producers`).
    fn write_numbered(
        &mut self,
        log: &Arc<PartitionLog>,
        batch: &Batch,
        producer: ProducerBatch,
    ) -> Result<Written, StorageError> {
        match self.producers.check(log, producer)? {
            Check::Duplicate { base_offset, count } => Ok((base_offset, count, Vec::new())),
            Check::Append => {
                let base = log.write_next();
                let tag = Tag {
                    producer,
                    first_offset: base,
                };
                let cuts = chunk::cut(batch, base, now_ms(), Some(tag), &mut self.encode_buf)?;
                let stored = log.insert(cuts)?;
                self.producers
                    .remember(log, producer, base, batch.record_count)?;
                Ok((base, batch.record_count, stored))
            }
        }
    }

    /// Records the producer states changed and the bounds of the logs written since the
    /// last save, in this commit, when `now` or when [`BOUNDS_EVERY`] has passed.
    fn save_bounds(&mut self, now: bool) -> Result<(), StorageError> {
        if self.unsaved.is_empty() || !(now || self.bounds_saved.elapsed() >= BOUNDS_EVERY) {
            return Ok(());
        }
        // States before bounds: a log's bounds say its states account for every batch.
        self.producers.save()?;
        for log in self.unsaved.drain(..) {
            log.save_bounds()?;
        }
        self.bounds_saved = Instant::now();
        Ok(())
    }

    fn flush_and_sync(&mut self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.syncer
            .sync()
            .map_err(|e| StorageError::Sled(format!("fdatasync failed: {e}")))?;
        self.last_flush = Instant::now();
        for log in self.unsynced.drain(..) {
            if !log.is_retired() {
                self.marks.insert(log.name(), log.write_next());
            }
        }
        if self.marks_offered.elapsed() >= checkpoint::EVERY {
            self.recorder.offer(self.marks.clone());
            self.marks_offered = Instant::now();
        }
        Ok(())
    }

    /// Makes this group's writes as durable as the policy asks.
    fn commit(&mut self, force: bool) -> Result<Durability, StorageError> {
        match self.policy {
            FsyncPolicy::Always => {
                self.flush_and_sync()?;
                Ok(Durability::Synced)
            }
            _ if force => {
                self.flush_and_sync()?;
                Ok(Durability::Synced)
            }
            FsyncPolicy::Interval(_) => {
                self.flush_if_due();
                Ok(Durability::Buffered)
            }
            FsyncPolicy::Never => Ok(Durability::Buffered),
        }
    }

    /// How long the thread may wait for work before a flush is due; `None` when no flush
    /// ever is.
    fn flush_wait(&self) -> Option<Duration> {
        match self.policy {
            FsyncPolicy::Interval(every) => Some(every.saturating_sub(self.last_flush.elapsed())),
            _ => None,
        }
    }

    fn flush_if_due(&mut self) {
        if let FsyncPolicy::Interval(every) = self.policy {
            if self.last_flush.elapsed() >= every {
                if let Err(err) = self.flush_and_sync() {
                    tracing::error!(%err, "interval flush failed");
                }
                self.last_flush = Instant::now();
            }
        }
    }

    fn answer(&self, done: Vec<Done>, commit: Result<Durability, StorageError>) {
        for item in done {
            answer(item, &commit);
        }
    }
}

/// Answers one operation of a commit group, once `commit` made it as durable as it gets;
/// an append's records become readable first.
///
/// Under `--fsync always` that is after the group's flush. Under `interval` and `never`
/// the commit adds nothing an append waits for, so each is answered as soon as it is
/// written: a slow sled write (a node split can take hundreds of microseconds) then delays
/// only the appends behind it, not those of the group before it.
fn answer(item: Done, commit: &Result<Durability, StorageError>) {
    match item {
        Done::Append { log, reply, result } => {
            let result = match (commit, result) {
                (_, Err(err)) => Err(err),
                (Err(err), _) => Err(err.clone()),
                (Ok(durability), Ok((base_offset, count, stored))) => {
                    for chunk in stored {
                        log.cache(chunk);
                    }
                    log.publish(base_offset + u64::from(count));
                    Ok(Appended {
                        base_offset,
                        count,
                        durability: *durability,
                    })
                }
            };
            let _ = reply.send(result);
        }
        Done::Run { reply, result } => {
            let _ = reply.send(result.and(commit.clone().map(drop)));
        }
        Done::Trim { log, reply, result } => {
            let result = commit.clone().and(result);
            if matches!(result, Ok(true)) {
                log.wake_readers();
            }
            let _ = reply.send(result);
        }
    }
}

/// Stores `batch` at the log's next offset, re-stamped with its offsets and append time,
/// as chunks sized for sled's cache (see `storage::chunk`).
fn write_batch(
    log: &PartitionLog,
    batch: &Batch,
    buf: &mut BytesMut,
) -> Result<Written, StorageError> {
    let base = log.write_next();
    let stored = log.insert(chunk::cut(batch, base, now_ms(), None, buf)?)?;
    Ok((base, batch.record_count, stored))
}

/// The error for operations refused while the writer is stuck.
fn stuck(busy: Duration) -> StorageError {
    StorageError::Stalled(format!(
        "the storage writer has been stuck on one write for {} s: the disk may be full or \
         failing",
        busy.as_secs()
    ))
}

fn touch(touched: &mut Vec<Arc<PartitionLog>>, log: &Arc<PartitionLog>) {
    if !touched.iter().any(|t| Arc::ptr_eq(t, log)) {
        touched.push(Arc::clone(log));
    }
}
