//! The sled flusher, under `--fsync always`: it flushes sled and answers what waits for
//! that, while the writer and the committer go on syncing segment files.
//!
//! A published record is durable once its segment file is synced; sled's index of it may
//! lag (see `storage::log`). Offsets, acks, group changes, topics and retention live in
//! sled alone, so those wait for sled's flush. That flush took 1–2 ms and now and then
//! 10–25 ms (W4 at 5,000 msg/s with push consumers acking every record: p99 about 12 ms
//! while a segment file's `fdatasync` takes 0.15–0.45 ms). Done in line, every commit
//! group behind one waited for it; here, appends are answered as soon as their segment
//! files are synced, and everything else of the group is handed to this thread, which
//! flushes sled once for everything handed over meanwhile and answers it.
//!
//! A flush that hangs (sled's did after `ENOSPC`) is watched as the writer is: once one
//! has taken longer than the storage timeout, what would wait for it is refused at once
//! instead of queueing here, and the store reports itself stalled. Appends go on: they
//! wait for their segment files only.

use super::*;

/// What waits for sled's flush: each operation with what its group's commit came to.
pub(super) type Waiting = Vec<(Done, Result<Durability, StorageError>)>;

pub(super) struct Flusher {
    tx: Option<Sender<Waiting>>,
    handle: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts the thread; `watchdog` tells when one flush has taken longer than the
    /// storage timeout.
    pub(super) fn start(
        db: sled::Db,
        syncer: Arc<Mutex<Syncer>>,
        stats: Arc<StoreStats>,
        watchdog: Arc<Watchdog>,
    ) -> Result<Flusher, StorageError> {
        let (tx, rx) = channel::unbounded::<Waiting>();
        let handle = std::thread::Builder::new()
            .name("herald-flusher".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = first;
                    for more in rx.try_iter() {
                        waiting.extend(more);
                    }
                    watchdog.start();
                    let flushed = flush_sled(&db, &syncer, &stats);
                    watchdog.finish();
                    for (item, commit) in waiting {
                        let commit = commit.and_then(|d| flushed.clone().map(|()| d));
                        answer(item, &commit);
                    }
                }
            })
            .map_err(|e| StorageError::Sled(format!("cannot start the flusher thread: {e}")))?;
        Ok(Flusher {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// A handle to hand work over with, for the committer.
    pub(super) fn sender(&self) -> Option<Sender<Waiting>> {
        self.tx.clone()
    }
}

impl Drop for Flusher {
    /// Answers what was handed over (once every other sender is gone), then ends the
    /// thread.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Flushes sled and syncs what it wrote (see `storage::sync`).
pub(super) fn flush_sled(
    db: &sled::Db,
    syncer: &Mutex<Syncer>,
    stats: &StoreStats,
) -> Result<(), StorageError> {
    let began = Instant::now();
    db.flush()?;
    syncer
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .sync()
        .map_err(|e| StorageError::Sled(format!("fdatasync failed: {e}")))?;
    stats.index_flush_seconds.record_duration(began.elapsed());
    Ok(())
}

/// Answers a group under `always` whose segment files `commit` made durable (or failed
/// to): its appends at once, the rest through `flusher` once sled is flushed too.
pub(super) fn answer_group(
    done: Vec<Done>,
    commit: Result<Durability, StorageError>,
    flusher: Option<&Sender<Waiting>>,
) {
    let mut waiting = Vec::new();
    for item in done {
        match (item, flusher) {
            (item @ Done::Append { .. }, _) | (item, None) => answer(item, &commit),
            (item, Some(_)) => waiting.push((item, commit.clone())),
        }
    }
    if let (false, Some(flusher)) = (waiting.is_empty(), flusher) {
        if let Err(channel::SendError(waiting)) = flusher.send(waiting) {
            let gone = Err(StorageError::Closed);
            waiting
                .into_iter()
                .for_each(|(item, _)| answer(item, &gone));
        }
    }
}
