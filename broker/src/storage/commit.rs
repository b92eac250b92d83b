//! The writer thread: every write to the store goes through it, and it commits them in groups.
//!
//! Publishers queue appends on a `crossbeam` channel. The thread takes everything queued,
//! writes it all to sled, flushes once (under `--fsync always`), and only then makes the
//! records readable and answers each publisher. Publishes that arrive during a flush wait for
//! the next one and share it: that is group commit, and it is why `always` stays fast.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};
use herald_protocol::{record::now_ms, Batch};
use tokio::sync::oneshot;

use super::sync::Syncer;
use super::{PartitionLog, RetentionPolicy, StorageError};

/// The most operations one commit gathers, so one flush never waits on an unbounded backlog.
const MAX_GROUP: usize = 4096;

/// The largest stored value (a chunk of a batch). A sled leaf holds up to 16 entries and
/// moves a node over 128 KiB to a blob file; 16 chunks of 7 KiB stay well under that. A
/// single record larger than this is stored alone, and the syncer covers its blob.
pub const MAX_VALUE_BYTES: usize = 7 * 1024;

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
        reply: oneshot::Sender<Result<Appended, StorageError>>,
    },
    Run {
        job: Job,
        reply: channel::Sender<Result<(), StorageError>>,
    },
    Trim {
        log: Arc<PartitionLog>,
        policy: RetentionPolicy,
        reply: oneshot::Sender<Result<bool, StorageError>>,
    },
    Stop,
}

/// The handle to the writer thread.
pub(super) struct CommitWriter {
    tx: Sender<Op>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl CommitWriter {
    pub(super) fn start(
        db: sled::Db,
        policy: FsyncPolicy,
        dir: &Path,
    ) -> Result<CommitWriter, StorageError> {
        let syncer = Syncer::open(dir)
            .map_err(|e| StorageError::Sled(format!("cannot sync the store: {e}")))?;
        let (tx, rx) = channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("herald-writer".into())
            .spawn(move || {
                Writer {
                    db,
                    policy,
                    syncer,
                    last_flush: Instant::now(),
                }
                .run(rx)
            })
            .map_err(|e| StorageError::Sled(format!("cannot start the writer thread: {e}")))?;
        Ok(CommitWriter {
            tx,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues an append; the receiver resolves once it is committed under the policy.
    pub(super) fn append(
        &self,
        log: &Arc<PartitionLog>,
        batch: Batch,
    ) -> oneshot::Receiver<Result<Appended, StorageError>> {
        let (reply, rx) = oneshot::channel();
        let op = Op::Append {
            log: Arc::clone(log),
            batch,
            reply,
        };
        if let Err(channel::SendError(Op::Append { reply, .. })) = self.tx.send(op) {
            let _ = reply.send(Err(StorageError::Closed));
        }
        rx
    }

    /// Queues a retention pass over `log`; the receiver says whether anything was deleted.
    pub(super) fn trim(
        &self,
        log: &Arc<PartitionLog>,
        policy: RetentionPolicy,
    ) -> oneshot::Receiver<Result<bool, StorageError>> {
        let (reply, rx) = oneshot::channel();
        let op = Op::Trim {
            log: Arc::clone(log),
            policy,
            reply,
        };
        if let Err(channel::SendError(Op::Trim { reply, .. })) = self.tx.send(op) {
            let _ = reply.send(Err(StorageError::Closed));
        }
        rx
    }

    /// Runs `job` on the writer thread, in order with appends, and waits for its commit.
    pub(super) fn run(
        &self,
        job: impl FnOnce() -> Result<(), StorageError> + Send + 'static,
    ) -> Result<(), StorageError> {
        let (reply, rx) = channel::bounded(1);
        self.tx
            .send(Op::Run {
                job: Box::new(job),
                reply,
            })
            .map_err(|_| StorageError::Closed)?;
        rx.recv().map_err(|_| StorageError::Closed)?
    }

    /// Commits everything queued, then stops the thread. Idempotent.
    pub(super) fn stop(&self) {
        let handle = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(handle) = handle {
            let _ = self.tx.send(Op::Stop);
            let _ = handle.join();
        }
    }
}

struct Writer {
    db: sled::Db,
    policy: FsyncPolicy,
    syncer: Syncer,
    last_flush: Instant,
}

enum Done {
    Append {
        log: Arc<PartitionLog>,
        reply: oneshot::Sender<Result<Appended, StorageError>>,
        result: Result<(u64, u32), StorageError>,
    },
    Run {
        reply: channel::Sender<Result<(), StorageError>>,
        result: Result<(), StorageError>,
    },
    Trim {
        log: Arc<PartitionLog>,
        reply: oneshot::Sender<Result<bool, StorageError>>,
        result: Result<bool, StorageError>,
    },
}

impl Writer {
    fn run(mut self, rx: Receiver<Op>) {
        let mut stopping = false;
        while !stopping {
            let first = match self.policy {
                FsyncPolicy::Interval(every) => {
                    match rx.recv_timeout(every.saturating_sub(self.last_flush.elapsed())) {
                        Ok(op) => op,
                        Err(RecvTimeoutError::Timeout) => {
                            self.flush_if_due();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
            };
            let mut done = Vec::new();
            let mut encode_buf = BytesMut::new();
            let mut touched: Vec<Arc<PartitionLog>> = Vec::new();
            for op in std::iter::once(first).chain(rx.try_iter().take(MAX_GROUP - 1)) {
                match op {
                    Op::Append { log, batch, reply } => {
                        let result = write_batch(&log, &batch, &mut encode_buf);
                        touch(&mut touched, &log);
                        done.push(Done::Append { log, reply, result });
                    }
                    Op::Trim { log, policy, reply } => {
                        let result = log.trim(&policy, now_ms());
                        touch(&mut touched, &log);
                        done.push(Done::Trim { log, reply, result });
                    }
                    Op::Run { job, reply } => done.push(Done::Run {
                        reply,
                        result: job(),
                    }),
                    Op::Stop => stopping = true,
                }
            }
            // Bounds go into the same commit as the writes they describe.
            let saved = touched.iter().try_for_each(|log| log.save_bounds());
            let commit = saved.and_then(|()| self.commit(stopping));
            self.answer(done, commit);
        }
        if let Err(err) = self.flush_and_sync() {
            tracing::error!(%err, "final flush failed");
        }
    }

    fn flush_and_sync(&mut self) -> Result<(), StorageError> {
        self.db.flush()?;
        self.syncer
            .sync()
            .map_err(|e| StorageError::Sled(format!("fdatasync failed: {e}")))?;
        self.last_flush = Instant::now();
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
            match item {
                Done::Append { log, reply, result } => {
                    let result = match (&commit, result) {
                        (_, Err(err)) => Err(err),
                        (Err(err), _) => Err(err.clone()),
                        (Ok(durability), Ok((base_offset, count))) => {
                            log.publish();
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
                        log.publish();
                    }
                    let _ = reply.send(result);
                }
            }
        }
    }
}

/// Stores `batch` at the log's next offset, as chunks of at most [`MAX_VALUE_BYTES`].
fn write_batch(
    log: &PartitionLog,
    batch: &Batch,
    buf: &mut BytesMut,
) -> Result<(u64, u32), StorageError> {
    let base = log.write_next();
    let appended_at = now_ms();
    let chunks = batch
        .chunks(MAX_VALUE_BYTES)
        .map_err(|e| StorageError::Corrupt(format!("batch: {e}")))?;
    for chunk in chunks {
        let offset = base + (chunk.base_offset - batch.base_offset);
        chunk.encode_as(offset, appended_at, buf);
        log.insert(offset, buf.split().freeze(), chunk.record_count)?;
    }
    Ok((base, batch.record_count))
}

fn touch(touched: &mut Vec<Arc<PartitionLog>>, log: &Arc<PartitionLog>) {
    if !touched.iter().any(|t| Arc::ptr_eq(t, log)) {
        touched.push(Arc::clone(log));
    }
}
