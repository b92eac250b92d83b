//! Storage: partition logs in segment files, indexed in sled beside the topic metadata and
//! group positions, and the one writer thread that commits them.
//!
//! # Layout
//!
//! ```text
//! tree "meta"        "format" -> u32 layout version (marks the directory as Herald's)
//! tree "topics"      topic name -> TopicRecord (id, partitions, retention)
//! tree "log.ID.P"    base offset (u64 BE) -> where one stored chunk of a record batch is
//!                    in the log's segment files (see `chunk`, `segment`); in stores
//!                    written before those, the chunk itself
//! dir  "segments/log.ID.P/"  the log's segment files, `<base offset, 20 digits>.seg`: its
//!                    chunks (protocol encoding, base_offset and append time filled in,
//!                    behind a CRC-32C), appended in offset order
//! tree "groups"      topic id (u64 BE) ++ group name -> GroupRecord (mode)
//! tree "offsets"     topic id (u64 BE) ++ partition (u32 BE) ++ group name -> offset (u64 BE)
//! tree "partitions"  "log.ID.P" -> size in bytes (u64 BE) ++ next offset (u64 BE)
//! file "herald.lock" held locked while a broker uses the directory
//! file "herald.offsets" each partition's next offset as of a sync (see `checkpoint`)
//! ```
//!
//! Beside the layout: [`chunk`] cuts published batches into checksummed chunks and reads
//! them back; [`disk`] watches the filesystem's free space and the reserve kept on it;
//! [`repair`] is `--repair-store`; [`bounded`] keeps every wait on the writer finite.
//! `open` checks, locks and opens a data directory; `groups` holds the group records,
//! committed offsets and ack states; [`commit`] is the writer (its thread's side in
//! `commit/writer.rs`).
//!
//! A chunk is stored exactly as a batch travels, so a fetch returns stored bytes without
//! re-encoding, and the ordered keys of a partition's tree are its offset index: the chunk
//! holding offset `o` is the last key `<= o`. The records are durable once their segment
//! files are synced; the index may lag them, and opening a log rebuilds what it lacks (see
//! `log`).
//!
//! sled calls block, so everything here runs on the writer ([`commit`]: its thread, or a
//! small write in place) or inside `spawn_blocking`; nothing in this module knows about
//! sockets or frames.

mod checkpoint;
pub mod chunk;
pub mod commit;
pub mod disk;
mod groups;
pub mod log;
mod open;
mod producers;
use open::*;
mod records;
pub mod repair;
mod security;
pub mod segment;
pub mod stats;
mod sync;
mod tail;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use commit::{Appended, Durability, FsyncPolicy};
pub use log::PartitionLog;
pub use producers::ProducerBatch;
pub use records::{GroupRecord, RetentionPolicy, TopicRecord};
pub use security::{StoredRule, StoredToken, StoredUser};

use commit::CommitWriter;

/// The layout version: 3 appends chunks to segment files, indexed in sled; 2 kept chunks
/// with checksums in sled itself (still read, and upgraded in place); 1 stored whole
/// batches (refused).
const FORMAT_VERSION: u32 = 3;

/// The layout that kept chunks in sled itself.
const SLED_CHUNKS_FORMAT: u32 = 2;

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("store error: {0}")]
    Sled(String),
    #[error("damaged store: {0}")]
    Corrupt(String),
    #[error("the store is closed")]
    Closed,
    #[error("{0} is not a Herald data directory (it holds other files)")]
    NotHerald(String),
    #[error("{0} is in use by another running broker")]
    InUse(String),
    #[error("the topic was deleted")]
    Deleted,
    #[error("out of order: {0}")]
    Sequence(String),
    #[error("{0}")]
    Stalled(String),
    #[error(
        "the disk under the store is full ({0}): the store takes no more writes until the \
         broker is restarted with free space; reading goes on"
    )]
    NoSpace(String),
}

impl From<sled::Error> for StorageError {
    fn from(err: sled::Error) -> Self {
        match err {
            sled::Error::Corruption { .. } => StorageError::Corrupt(err.to_string()),
            // sled keeps the first write error and returns it from then on.
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => {
                StorageError::NoSpace(io.to_string())
            }
            other => StorageError::Sled(other.to_string()),
        }
    }
}

/// Waits for the writer's answer `reply`, at most `limit` (the storage timeout).
pub async fn bounded<T>(
    reply: tokio::sync::oneshot::Receiver<Result<T, StorageError>>,
    limit: std::time::Duration,
) -> Result<T, StorageError> {
    match tokio::time::timeout(limit, reply).await {
        Ok(answer) => answer.map_err(|_| StorageError::Closed)?,
        Err(_) => Err(no_answer(limit)),
    }
}

/// [`bounded`] for a blocking caller.
pub fn bounded_blocking<T>(
    mut reply: tokio::sync::oneshot::Receiver<Result<T, StorageError>>,
    limit: std::time::Duration,
) -> Result<T, StorageError> {
    use tokio::sync::oneshot::error::TryRecvError;
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_micros(50);
    loop {
        match reply.try_recv() {
            Ok(answer) => return answer,
            Err(TryRecvError::Closed) => return Err(StorageError::Closed),
            Err(TryRecvError::Empty) if started.elapsed() >= limit => return Err(no_answer(limit)),
            Err(TryRecvError::Empty) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(5));
            }
        }
    }
}

fn no_answer(limit: std::time::Duration) -> StorageError {
    StorageError::Stalled(format!(
        "the store did not answer within {} ms (--storage-timeout-ms): the disk may be full \
         or failing",
        limit.as_millis()
    ))
}

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// When confirmed data must reach the disk.
    pub fsync: FsyncPolicy,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    /// Memory for the partitions' cached tails together (see `storage::tail`), in bytes.
    pub tail_cache_bytes: u64,
    /// Verify every stored chunk at open, keep each log up to its first damage and write
    /// `herald.offsets` anew (see [`repair`]).
    pub repair: bool,
    /// Free space to keep on the store's filesystem (`None`: see [`disk::default_reserve`]).
    pub min_free_disk_bytes: Option<u64>,
    /// How the filesystem's free space is read (`statvfs` unless a test stands in).
    pub disk_probe: disk::Probe,
    /// The longest a caller waits for the writer; see [`bounded`].
    pub timeout: std::time::Duration,
    /// The size at which a partition's segment file is closed (`--segment-mb`).
    pub segment_file_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            fsync: FsyncPolicy::Always,
            cache_bytes: 128 * 1024 * 1024,
            tail_cache_bytes: 32 * 1024 * 1024,
            repair: false,
            min_free_disk_bytes: None,
            disk_probe: disk::Probe::statvfs(),
            timeout: std::time::Duration::from_secs(30),
            segment_file_bytes: segment::SEGMENT_BYTES,
        }
    }
}

/// The broker's store: one sled database and its writer thread.
pub struct Store {
    db: sled::Db,
    /// Held (locked) for as long as the store is open.
    _lock: std::fs::File,
    bounds: sled::Tree,
    topics: sled::Tree,
    groups: sled::Tree,
    offsets: sled::Tree,
    /// The synced offsets recorded when the store was opened; see [`checkpoint`].
    marks: checkpoint::Marks,
    /// Push groups' ack state per partition (see `domain::ack_state`).
    acks: sled::Tree,
    /// Users, API tokens and permission rules (see `security`).
    users: sled::Tree,
    tokens: sled::Tree,
    rules: sled::Tree,
    writer: CommitWriter,
    /// Bytes of stored record batches over every open log (what `--max-disk-bytes` caps).
    stored_bytes: Arc<AtomicU64>,
    /// Bytes in every open log's segment files.
    segment_bytes: Arc<AtomicU64>,
    /// The size at which a segment file is closed.
    segment_file_bytes: u64,
    /// The data directory.
    dir: std::path::PathBuf,
    /// What every log's cached tail may hold together.
    tail_budget: Arc<tail::TailBudget>,
    /// The free space of the store's filesystem, and the reserve kept on it.
    disk: disk::Disk,
    /// The longest a caller waits for the writer.
    timeout: std::time::Duration,
    /// Logs of deleted topics whose sled trees wait to be dropped (see
    /// [`Store::drop_retired`]).
    retired: std::sync::Mutex<Vec<Arc<PartitionLog>>>,
}

impl Store {
    /// Opens (or creates) the store in `dir`. Blocks.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Arc<Store>, StorageError> {
        check_directory(dir)?;
        let lock = lock_directory(dir)?;
        let initialised = dir.join(MARKER_FILE).exists();
        let db = open_sled(dir, &config)?;
        check_format(dir, &db, initialised)?;
        let marks = if config.repair {
            drop_retired_logs(&db, dir, &checkpoint::Marks::new())?;
            repair::run(&db, dir)?.0
        } else {
            let marks = recorded_marks(dir, initialised)?;
            drop_retired_logs(&db, dir, &marks)?;
            marks
        };
        let disk = disk::Disk::new(dir, config.disk_probe.clone(), config.min_free_disk_bytes)
            .map_err(|e| {
                StorageError::Sled(format!(
                    "cannot read the free space of {}: {e}",
                    dir.display()
                ))
            })?;
        let producers = db.open_tree("producers")?;
        let writer = CommitWriter::start(
            db.clone(),
            config.fsync,
            dir,
            marks.clone(),
            producers,
            config.timeout,
        )?;
        Ok(Arc::new(Store {
            _lock: lock,
            bounds: db.open_tree("partitions")?,
            topics: db.open_tree("topics")?,
            groups: db.open_tree("groups")?,
            offsets: db.open_tree("offsets")?,
            acks: db.open_tree("acks")?,
            users: db.open_tree("users")?,
            tokens: db.open_tree("tokens")?,
            rules: db.open_tree("rules")?,
            marks,
            db,
            writer,
            stored_bytes: Arc::new(AtomicU64::new(0)),
            segment_bytes: Arc::new(AtomicU64::new(0)),
            segment_file_bytes: config.segment_file_bytes,
            dir: dir.to_path_buf(),
            tail_budget: tail::TailBudget::new(
                usize::try_from(config.tail_cache_bytes).unwrap_or(usize::MAX),
            ),
            disk,
            timeout: config.timeout,
            retired: std::sync::Mutex::new(Vec::new()),
        }))
    }

    /// Bytes held by every partition's cached tail (see `storage::tail`).
    pub fn tail_cache_bytes(&self) -> usize {
        self.tail_budget.used()
    }

    /// Bytes of stored record batches in every open partition log: what retention frees.
    /// The files take a little more: frame headers, and sled's index and state.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Relaxed)
    }

    /// The longest a caller waits for the writer (`--storage-timeout-ms`); see [`bounded`].
    pub fn timeout(&self) -> std::time::Duration {
        self.timeout
    }

    /// The room left on disk for the store (see [`disk`]); sampled at most every
    /// [`disk::REFRESH`], so cheap to ask on every publish.
    ///
    /// Segment files give their space back to the filesystem when retention or a topic
    /// deletion removes them, so only sled's file has space inside to reuse: the records
    /// kept in sled (by stores written before segment files) are what its ratio applies to.
    pub fn room(&self) -> disk::Room {
        let segments = self.segment_bytes.load(Ordering::Relaxed);
        let in_sled = self.stored_bytes().saturating_sub(segments);
        let mut room = self
            .disk
            .room(in_sled, || self.db.size_on_disk().unwrap_or(0));
        room.store_bytes += segments;
        room
    }

    /// What the writer measured of itself: its histograms.
    pub fn stats(&self) -> &Arc<stats::StoreStats> {
        self.writer.stats()
    }

    /// Operations waiting for the writer thread.
    pub fn writer_queue_depth(&self) -> usize {
        self.writer.queue_depth()
    }

    /// Whether the writer has been stuck on one commit group, or (under `always`) sled's
    /// flush on one flush, past the storage timeout.
    pub fn writer_stalled(&self) -> bool {
        self.writer.stalled()
    }

    /// Every stored topic. Blocks.
    pub fn load_topics(&self) -> Result<Vec<TopicRecord>, StorageError> {
        self.topics
            .iter()
            .map(|entry| {
                let (name, value) = entry?;
                TopicRecord::decode(&name, &value)
            })
            .collect()
    }

    /// Stores a new topic and opens its partition logs. Blocks until the record is committed
    /// under the fsync policy, as every other write is (at most the storage timeout).
    pub fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        retention: RetentionPolicy,
    ) -> Result<(TopicRecord, Vec<Arc<PartitionLog>>), StorageError> {
        let record = TopicRecord {
            name: name.to_string(),
            id: self.db.generate_id()?,
            partitions,
            retention,
        };
        let logs = self.open_logs(&record)?;
        let (topics, key, value) = (self.topics.clone(), name.to_string(), record.encode());
        self.writer.run(move || {
            topics
                .insert(key.as_bytes(), value)
                .map(drop)
                .map_err(Into::into)
        })?;
        Ok((record, logs))
    }

    /// Opens the partition logs of a stored topic, refusing one that ends before the
    /// offset recorded as synced (see [`checkpoint`]). Blocks.
    ///
    /// A damaged log's error names `--repair-store`, which keeps each partition up to its
    /// first damage.
    pub fn open_logs(&self, topic: &TopicRecord) -> Result<Vec<Arc<PartitionLog>>, StorageError> {
        (0..topic.partitions)
            .map(|p| {
                let name = log_tree_name(topic.id, p);
                let tree = self.db.open_tree(&name)?;
                let segments =
                    segment::Segments::open(&self.dir, &name, Arc::clone(&self.segment_bytes))
                        .map_err(|e| segment::io_error(&name, &e))?
                        .with_file_bytes(self.segment_file_bytes);
                let log = PartitionLog::open(
                    tree,
                    segments,
                    self.bounds.clone(),
                    Arc::clone(&self.stored_bytes),
                    Arc::clone(&self.tail_budget),
                    self.marks.get(&name).copied().unwrap_or(0),
                )
                .map_err(with_repair_hint)?;
                producers::recover(&log).map_err(with_repair_hint)?;
                match self.marks.get(&name) {
                    Some(&synced) if log.next_offset() < synced => {
                        Err(with_repair_hint(StorageError::Corrupt(format!(
                            "partition {p} of topic {:?} ends at offset {}, but offsets up to \
                             {synced} were synced: records were lost",
                            topic.name,
                            log.next_offset()
                        ))))
                    }
                    _ => Ok(Arc::new(log)),
                }
            })
            .collect()
    }

    /// Deletes a topic, its logs and its groups' state. Runs on the writer thread so it
    /// is ordered after every append already queued. Blocks until done.
    pub fn delete_topic(
        &self,
        topic: &TopicRecord,
        logs: &[Arc<PartitionLog>],
    ) -> Result<(), StorageError> {
        let (topics, groups, offsets, acks) = (
            self.topics.clone(),
            self.groups.clone(),
            self.offsets.clone(),
            self.acks.clone(),
        );
        let names = (0..topic.partitions)
            .map(|p| log_tree_name(topic.id, p))
            .collect();
        let (topic, retiring) = (topic.clone(), logs.to_vec());
        self.writer.forget(names, move || {
            topics.remove(topic.name.as_bytes())?;
            for log in &retiring {
                log.retire()?;
            }
            for tree in [&groups, &offsets, &acks] {
                for key in tree.scan_prefix(topic.id.to_be_bytes()).keys() {
                    tree.remove(key?)?;
                }
            }
            Ok(())
        })?;
        self.retired_logs().extend(logs.iter().cloned());
        Ok(())
    }

    /// Drops the sled trees of deleted topics' logs that nothing holds any more, through
    /// the writer; the receiver resolves once they are dropped. Called by the retention
    /// task every tick.
    ///
    /// A deleted log's tree is emptied at once, but dropping it while a handle to it is in
    /// use would free pages under that handle, so it waits until the last holder (a session
    /// reading it, a group serving it) lets go. Until dropped, an emptied tree keeps some of
    /// the space its records took: about half a megabyte for a 10 MB topic, measured over
    /// 100 deletions. Trees left at a stop are dropped at the next start.
    pub fn drop_retired(&self) -> Option<tokio::sync::oneshot::Receiver<Result<(), StorageError>>> {
        let names: Vec<String> = {
            let mut retired = self.retired_logs();
            let (unheld, held): (Vec<_>, Vec<_>) = std::mem::take(&mut *retired)
                .into_iter()
                .partition(|log| Arc::strong_count(log) == 1);
            *retired = held;
            unheld.iter().map(|log| log.name()).collect()
        };
        if names.is_empty() {
            return None;
        }
        let db = self.db.clone();
        Some(self.writer.submit(move || {
            for name in names {
                db.drop_tree(name.as_bytes())?;
            }
            Ok(())
        }))
    }

    fn retired_logs(&self) -> std::sync::MutexGuard<'_, Vec<Arc<PartitionLog>>> {
        self.retired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `batch` for appending to `log`; see [`CommitWriter::append`].
    pub fn append(
        &self,
        log: &Arc<PartitionLog>,
        batch: herald_protocol::Batch,
    ) -> tokio::sync::oneshot::Receiver<Result<Appended, StorageError>> {
        self.writer.append(log, batch, None)
    }

    /// Queues a producer's numbered batch: appended if it is the producer's next one for
    /// this log, answered with its original offsets if it was appended before (see
    /// [`producers`]).
    pub fn append_as(
        &self,
        log: &Arc<PartitionLog>,
        batch: herald_protocol::Batch,
        producer: ProducerBatch,
    ) -> tokio::sync::oneshot::Receiver<Result<Appended, StorageError>> {
        self.writer.append(log, batch, Some(producer))
    }

    /// Queues a retention pass over `log`; resolves with whether anything was deleted.
    pub fn trim(
        &self,
        log: &Arc<PartitionLog>,
        policy: RetentionPolicy,
    ) -> tokio::sync::oneshot::Receiver<Result<bool, StorageError>> {
        self.writer.trim(log, policy)
    }

    /// Stops the writer after everything queued; its last act flushes and syncs the store.
    /// Waits at most the storage timeout. Blocks.
    pub fn close(&self) -> Result<(), StorageError> {
        self.close_within(self.timeout)
    }

    /// [`close`](Self::close), waiting at most `limit`. Blocks.
    pub fn close_within(&self, limit: std::time::Duration) -> Result<(), StorageError> {
        self.writer.stop(limit)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(err) = self.writer.stop(self.timeout) {
            tracing::error!(%err, "the store was dropped without its writer stopping");
        }
    }
}

/// Runs a blocking store call off the async worker threads.
pub async fn blocking<T, F>(f: F) -> Result<T, StorageError>
where
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| StorageError::Closed)?
}

#[cfg(test)]
mod tests;
