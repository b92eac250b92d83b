//! The writer thread's side: it takes operations in groups, applies them to sled, flushes
//! and syncs as the policy asks, and answers each operation once its group is committed.

use super::*;

/// The writer thread: takes everything queued, carries it out and commits it as one group.
/// Once stopped, it flushes and syncs the store a last time and returns how that went.
pub(super) fn run(shared: &Shared, rx: Receiver<Op>) -> Result<(), StorageError> {
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
        let began = Instant::now();
        let mut done = Vec::new();
        let mut taken = 0;
        // Under `always` a group takes half of what waits when that is at least
        // `SPLIT_FROM` operations: the other half is then still queued when this group is
        // written, so it goes to the committer and the next group is written during its
        // sync (see `committer`). A shorter queue is committed whole, in line.
        let queued = shared.queued.load(SeqCst);
        let limit = if writer.committer.is_some() && queued >= SPLIT_FROM {
            (queued / 2).clamp(1, MAX_GROUP)
        } else {
            MAX_GROUP
        };
        for op in std::iter::once(first).chain(rx.try_iter().take(limit - 1)) {
            writer.apply(op, &mut done);
            taken += 1;
        }
        shared.stats.append_seconds.record_duration(began.elapsed());
        shared.stats.group_size.record(taken as f64);
        let (stopping, trimmed) = (writer.stopped, std::mem::take(&mut writer.trimmed));
        let saved = writer.save_bounds(trimmed || stopping);
        let more = shared.queued.load(SeqCst) > taken;
        if writer.committer.is_some() && more && !stopping {
            // Under `always`: the committer syncs and answers; the writer goes on.
            let synced = writer.take_unsynced();
            if let Some(committer) = &writer.committer {
                committer.hand_off(Handoff::Group {
                    done,
                    synced,
                    failed: saved.err(),
                });
            }
            shared.watchdog.finish();
        } else {
            if let Some(committer) = &writer.committer {
                committer.drain();
            }
            let commit = saved.and_then(|()| writer.commit(stopping));
            shared.watchdog.finish();
            match &writer.flusher {
                Some(flusher) if !stopping => {
                    answer_group(done, commit, flusher.sender().as_ref());
                }
                _ => writer.answer(done, commit),
            }
        }
        shared.queued.fetch_sub(taken, SeqCst);
        if stopping {
            break;
        }
    }
    let mut guard = shared.writer();
    let writer = &mut *guard;
    writer.stopped = true;
    // Everything handed over is answered before the last flush.
    drop(writer.committer.take());
    drop(writer.flusher.take());
    let flushed = writer.flush_and_sync();
    let mut durable = lock(&writer.durable);
    let durable = &mut *durable;
    if let Err(err) = durable.recorder.finish(&durable.marks) {
        tracing::error!(%err, "cannot record synced offsets");
    }
    flushed
}

/// What a sync of the segment files makes true and records: kept where the writer and the
/// committer both reach it, taken by whoever syncs.
pub(super) struct Durable {
    /// Each log's next offset as of its last sync.
    pub(super) marks: checkpoint::Marks,
    pub(super) recorder: checkpoint::Recorder,
    pub(super) marks_offered: Instant,
}

impl Durable {
    /// Syncs the segment files of `synced` (each a log with its next offset as of before
    /// the sync began); then each has that offset as its mark.
    ///
    /// The records are durable once their segment files are: sled's index of them may lag
    /// (see `storage::log`'s recovery). What lives in sled alone waits for sled's flush
    /// (see `flusher`).
    pub(super) fn sync_segments(
        &mut self,
        synced: Vec<(Arc<PartitionLog>, u64)>,
        stats: &StoreStats,
    ) -> Result<(), StorageError> {
        if !synced.is_empty() {
            // Timed only when there was something to sync: a group of offsets or acks
            // alone writes no segment file.
            let began = Instant::now();
            sync_logs(&synced)?;
            stats.flush_seconds.record_duration(began.elapsed());
        }
        for (log, next) in synced {
            if !log.is_retired() {
                self.marks.insert(log.name(), next);
            }
        }
        if self.marks_offered.elapsed() >= checkpoint::EVERY {
            self.recorder.offer(self.marks.clone());
            self.marks_offered = Instant::now();
        }
        Ok(())
    }
}

/// Syncs the segment files of several logs at once (see `storage::sync::at_once`): each
/// `fdatasync` waits on the disk, which takes them together in about the time of one.
fn sync_logs(synced: &[(Arc<PartitionLog>, u64)]) -> Result<(), StorageError> {
    crate::storage::sync::at_once(
        synced,
        |(log, _)| log.sync(),
        || StorageError::Sled("a segment sync thread panicked".into()),
    )
}

pub(super) struct Writer {
    pub(super) db: sled::Db,
    pub(super) policy: FsyncPolicy,
    pub(super) durable: Arc<Mutex<Durable>>,
    /// Makes what sled flushed durable (see `storage::sync`).
    pub(super) syncer: Arc<Mutex<Syncer>>,
    /// Under `always`: the thread that syncs and answers written groups.
    pub(super) committer: Option<Committer>,
    /// Under `always`: the thread that flushes sled for what waits on it.
    pub(super) flusher: Option<Flusher>,
    pub(super) last_flush: Instant,
    /// Logs written since their bounds were last saved, and when that was.
    pub(super) unsaved: Vec<Arc<PartitionLog>>,
    pub(super) bounds_saved: Instant,
    /// Logs written since the last sync, whose marks move at the next one.
    pub(super) unsynced: Vec<Arc<PartitionLog>>,
    /// What the writer measures of itself (shared with [`Shared`]).
    pub(super) stats: Arc<StoreStats>,
    /// Idempotent producers' recent batches.
    pub(super) producers: Producers,
    /// Scratch space for encoding stored values, reused across writes.
    pub(super) encode_buf: BytesMut,
    /// Whether a retention pass of the current group deleted anything.
    pub(super) trimmed: bool,
    /// Set by [`Op::Stop`]: nothing is written in place any more.
    pub(super) stopped: bool,
}

/// The shortest queue a group under `always` takes only half of.
pub(super) const SPLIT_FROM: usize = 4;

/// How often the writer records partition bounds when no retention pass asks for it.
/// Only a log that retention emptied needs its saved next offset (and one is saved at
/// once); the size they record may lag a crash by this much.
pub(super) const BOUNDS_EVERY: Duration = Duration::from_millis(100);

/// Where an append went, and the chunks it stored (none for a resent batch that was
/// stored before).
type Written = (u64, u32, Vec<Batch>);

pub(super) enum Done {
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
    pub(super) fn apply(&mut self, op: Op, done: &mut Vec<Done>) {
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
                // No group handed over may move a forgotten log's mark after this.
                if let Some(committer) = &self.committer {
                    committer.drain();
                }
                let mut durable = lock(&self.durable);
                for log in &logs {
                    durable.marks.remove(log);
                }
                let forgotten: Result<(), StorageError> =
                    logs.iter().try_for_each(|log| self.producers.forget(log));
                // Nothing more is saved for them, and the writer holds them no longer (so
                // their trees can be dropped: see `Store::drop_retired`).
                self.unsynced.retain(|log| !logs.contains(&log.name()));
                self.unsaved.retain(|log| !logs.contains(&log.name()));
                let written = durable
                    .recorder
                    .write_now(durable.marks.clone())
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
    pub(super) fn write_numbered(
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
    pub(super) fn save_bounds(&mut self, now: bool) -> Result<(), StorageError> {
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

    /// Syncs every segment file written and flushes and syncs sled.
    pub(super) fn flush_and_sync(&mut self) -> Result<(), StorageError> {
        self.sync(true)
    }

    /// Syncs every segment file written, and with `sled` flushes and syncs sled.
    fn sync(&mut self, sled: bool) -> Result<(), StorageError> {
        let synced = self.take_unsynced();
        lock(&self.durable).sync_segments(synced, &self.stats)?;
        if sled {
            flush_sled(&self.db, &self.syncer, &self.stats)?;
        }
        self.last_flush = Instant::now();
        Ok(())
    }

    /// The logs written since the last hand-over or sync, each with its next offset now.
    pub(super) fn take_unsynced(&mut self) -> Vec<(Arc<PartitionLog>, u64)> {
        self.unsynced
            .drain(..)
            .map(|log| {
                let next = log.write_next();
                (log, next)
            })
            .collect()
    }

    /// Makes this group's writes as durable as the policy asks. Under `always` that is its
    /// segment files (what waits for sled too goes to the flusher: see
    /// [`answer_group`]), and with `force` sled as well.
    pub(super) fn commit(&mut self, force: bool) -> Result<Durability, StorageError> {
        match self.policy {
            FsyncPolicy::Always => {
                self.sync(force)?;
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
    pub(super) fn flush_wait(&self) -> Option<Duration> {
        match self.policy {
            FsyncPolicy::Interval(every) => Some(every.saturating_sub(self.last_flush.elapsed())),
            _ => None,
        }
    }

    pub(super) fn flush_if_due(&mut self) {
        if let FsyncPolicy::Interval(every) = self.policy {
            if self.last_flush.elapsed() >= every {
                if let Err(err) = self.flush_and_sync() {
                    tracing::error!(%err, "interval flush failed");
                }
                self.last_flush = Instant::now();
            }
        }
    }

    pub(super) fn answer(&self, done: Vec<Done>, commit: Result<Durability, StorageError>) {
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
pub(super) fn answer(item: Done, commit: &Result<Durability, StorageError>) {
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
            // Let go of the log before answering: a caller told its append is done may
            // count on the writer holding the log no more (see `Store::drop_retired`).
            drop(log);
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
            drop(log);
            let _ = reply.send(result);
        }
    }
}

/// Stores `batch` at the log's next offset, re-stamped with its offsets and append time,
/// as chunks sized for sled's cache (see `storage::chunk`).
pub(super) fn write_batch(
    log: &PartitionLog,
    batch: &Batch,
    buf: &mut BytesMut,
) -> Result<Written, StorageError> {
    let base = log.write_next();
    let stored = log.insert(chunk::cut(batch, base, now_ms(), None, buf)?)?;
    Ok((base, batch.record_count, stored))
}

/// The error for operations refused while the writer is stuck.
pub(super) fn stuck(busy: Duration) -> StorageError {
    StorageError::Stalled(format!(
        "the storage writer has been stuck on one write for {} s: the disk may be full or \
         failing",
        busy.as_secs()
    ))
}

/// The error for operations refused while sled's flush is stuck.
pub(super) fn flush_stuck(busy: Duration) -> StorageError {
    StorageError::Stalled(format!(
        "the store's index flush has been stuck for {} s: the disk may be full or failing \
         (publishing goes on; offsets, acks and group changes wait for the flush)",
        busy.as_secs()
    ))
}

pub(super) fn touch(touched: &mut Vec<Arc<PartitionLog>>, log: &Arc<PartitionLog>) {
    if !touched.iter().any(|t| Arc::ptr_eq(t, log)) {
        touched.push(Arc::clone(log));
    }
}
