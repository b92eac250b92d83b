//! One partition's log: record batches appended to segment files, indexed by base offset
//! in a sled tree.
//!
//! A published batch is stored as chunks of at most `chunk::CHUNK_BYTES`, each the batch
//! encoding as it travels on the wire (offsets filled in) behind a CRC-32C; a producer's
//! numbered batch tags its last chunk. See `storage::chunk` and `storage::segment`.
//!
//! # Recovery
//!
//! The index may lag the segment files, or (after a crash of the machine) name frames the
//! files never got: a commit under `--fsync always` syncs the files alone, and sled writes
//! its own file when it likes. So opening a log verifies every chunk from the offset last
//! recorded as synced (see `storage::checkpoint`; from the start when none is) to the end
//! of the index, then reads on through the files past the last chunk verified. Every
//! intact frame that follows in offset order is kept (the sparse index reaches it by
//! reading on); at the first that is torn, fails its checksum, or does not follow, the
//! index and the files are cut, as Kafka recovers the segments it had not flushed. Below
//! the recorded offset a damaged chunk is an error when read, and `--repair-store` deals
//! with it.
//!
//! The same tree keeps the partition's idempotent-producer state (see
//! `storage::producers`) under 16-byte keys `FF×8 ‖ producer id`, which sort after every
//! 8-byte offset key (offsets never reach `u64::MAX`). Every walk over batches stays below
//! [`STATE_KEYS`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use herald_protocol::Batch;

use super::chunk::{self, Chunk, Cursor, Cuts, Source};
use super::segment::{io_error, Pointer, Segments};
use super::tail::{Tail, TailBudget};
use super::{RetentionPolicy, StorageError};

/// How far apart the index's entries are, at least, in bytes appended (Kafka's
/// `index.interval.bytes` has the same default): a batch is named when this many bytes
/// were appended since the start of the last batch named (so in a run of batches this
/// large, each is), or when it starts a file.
///
/// Naming every batch cost a sled insert per publish, which at a steady 5,000 single
/// records a second was the largest share of the broker's own work after the socket (sled
/// copies a leaf on each insert). A read from an offset between entries reads on through
/// at most this many bytes of frames, which in-order readers skip (see `ReadHints`).
pub const INDEX_INTERVAL_BYTES: u64 = 4 * 1024;

/// A partition's log and its bounds.
///
/// Offsets are dense from 0 and never reused. Only the writer (`storage::commit`) appends; readers see
/// offsets below [`next_offset`](Self::next_offset), which moves only after a commit, so a
/// consumer never reads a record whose publisher has not been (or could not be) confirmed.
#[derive(Debug)]
pub struct PartitionLog {
    /// The log's name in the store (its sled tree's), as errors name it.
    name: String,
    tree: sled::Tree,
    /// Where this log's bounds are kept (see [`PartitionLog::save_bounds`]).
    bounds: sled::Tree,
    next: AtomicU64,
    write_next: AtomicU64,
    first: AtomicU64,
    bytes: AtomicU64,
    /// Bytes appended since the last batch the index names (`u64::MAX` until one is named
    /// after opening): see [`INDEX_INTERVAL_BYTES`].
    unindexed: AtomicU64,
    /// Bytes of batches appended since the broker started (for the metrics).
    appended_bytes: AtomicU64,
    /// The store's total of stored batch bytes, which this log's size is part of.
    total: Arc<AtomicU64>,
    appended: tokio::sync::Notify,
    /// Set when its topic is deleted: later appends fail, nothing more is saved.
    retired: AtomicBool,
    /// The producer states stored for this log account for every batch below this offset
    /// (see `storage::producers`); later batches are replayed from their tags on open.
    states_through: AtomicU64,
    /// The latest committed batches, served without the index or the files (see
    /// `storage::tail`).
    tail: Tail,
    /// Where its chunks are kept.
    segments: Segments,
    /// Where recent reads ended (see [`ReadHints`]).
    hints: ReadHints,
}

/// Where producer-state keys start; batch keys all sort below it.
pub(super) const STATE_KEYS: [u8; 8] = [0xFF; 8];

/// The most chunks one retention round deletes at once (see [`PartitionLog::trim`]).
const TRIM_ROUND: usize = 1024;

/// How far behind the end a read may start and still be served without a blocking thread.
const HOT_TAIL_RECORDS: u64 = 4096;

/// What a read returns: batches starting exactly at the requested offset.
#[derive(Debug, Clone, Default)]
pub struct ReadBatches {
    pub batches: Vec<Batch>,
    pub bytes: usize,
    pub records: u64,
}

impl ReadBatches {
    /// The batches end to end, as a fetch carries them.
    pub fn concat(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.bytes);
        for batch in &self.batches {
            batch.encode(&mut out);
        }
        out.freeze()
    }
}

impl PartitionLog {
    /// Opens a log over `tree` and `segments`, recovering what the index lacks from the
    /// files (verifying from offset `synced` on: see the module's docs), then its bounds.
    /// The saved bounds keep offsets from restarting when retention emptied the log; the
    /// stored batches are the truth for anything the saved bounds do not cover yet. Blocks.
    pub(super) fn open(
        tree: sled::Tree,
        segments: Segments,
        bounds: sled::Tree,
        total: Arc<AtomicU64>,
        tail_budget: Arc<TailBudget>,
        synced: u64,
    ) -> Result<PartitionLog, StorageError> {
        let saved = match bounds.get(tree.name())? {
            Some(value) => Bounds::decode(&value)?,
            // Never saved (the broker stopped within the log's first 100 ms): the
            // producer states may account for nothing yet.
            None => Bounds {
                states_through: Some(0),
                ..Bounds::default()
            },
        };
        let name = String::from_utf8_lossy(&tree.name()).into_owned();
        let recovered = recover(&name, &tree, &segments, synced, saved.next)?;
        let next = match recovered.next {
            // Bounds saved ahead of what survived a crash name records that are gone.
            Some(next) if recovered.cut => next,
            Some(next) => next.max(saved.next),
            None => saved.next,
        };
        let first = match tree.range(..STATE_KEYS).next().transpose()? {
            Some((head, _)) => chunk::offset_of(&head),
            None => next,
        };
        // Stores that wrote each producer state with its batch record no watermark.
        let states_through = saved.states_through.unwrap_or(next);
        let bytes = saved.bytes + recovered.bytes;
        total.fetch_add(bytes, Ordering::Relaxed);
        // Files left wholly below the first chunk (retention deleted their chunks, and a
        // crash came before the files went).
        segments
            .remove_below(first, next)
            .map_err(|e| io_error(&name, &e))?;
        Ok(PartitionLog {
            name,
            tree,
            bounds,
            total,
            next: AtomicU64::new(next),
            write_next: AtomicU64::new(next),
            unindexed: AtomicU64::new(u64::MAX),
            first: AtomicU64::new(first),
            bytes: AtomicU64::new(bytes),
            appended_bytes: AtomicU64::new(0),
            appended: tokio::sync::Notify::new(),
            retired: AtomicBool::new(false),
            states_through: AtomicU64::new(states_through),
            tail: Tail::new(tail_budget),
            segments,
            hints: ReadHints::default(),
        })
    }

    /// Where its chunks are read from.
    fn source(&self) -> Source<'_> {
        Source {
            log: &self.name,
            tree: &self.tree,
            segments: &self.segments,
        }
    }

    /// `fdatasync`s the segment files written since the last call. Blocks.
    pub(super) fn sync(&self) -> Result<(), StorageError> {
        self.segments.sync().map_err(|e| io_error(&self.name, &e))
    }

    /// Bytes in its segment files.
    pub fn segment_bytes(&self) -> u64 {
        self.segments.bytes()
    }

    /// One past the last committed offset: where the next record will go.
    pub fn next_offset(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// The first retained offset.
    /// Bytes of record batches appended since the broker started.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes.load(Ordering::Relaxed)
    }

    pub fn first_offset(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }

    /// Bytes stored for this partition (encoded batches).
    pub fn size_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Resolves after the next commit that made new records readable.
    pub fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
    }

    /// [`read`](Self::read) from async code: reads of the most recent records (the tail
    /// consumers keep up with) are served inline, from the cached tail or from the files,
    /// whose newest pages the system still holds in memory; older ones may need the disk
    /// and are read on a
    /// blocking thread. Skipping the thread hop takes a scheduling round trip off every
    /// live delivery.
    pub async fn read_async(
        self: &Arc<Self>,
        offset: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<ReadBatches, StorageError> {
        let next = self.next_offset();
        if offset >= next {
            return Ok(ReadBatches::default());
        }
        if let Some(cached) = self.read_cached(offset, next, max_records, max_bytes) {
            return cached;
        }
        if next - offset <= HOT_TAIL_RECORDS {
            return self.read_stored(offset, next, max_records, max_bytes);
        }
        let log = Arc::clone(self);
        super::blocking(move || log.read_stored(offset, next, max_records, max_bytes)).await
    }

    /// Reads committed records from `offset`: at most `max_records`, and at most `max_bytes`
    /// of encoded batches except that the first record is always returned. Blocks.
    pub fn read(
        &self,
        offset: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<ReadBatches, StorageError> {
        let next = self.next_offset();
        if offset >= next || max_records == 0 {
            return Ok(ReadBatches::default());
        }
        if let Some(cached) = self.read_cached(offset, next, max_records, max_bytes) {
            return cached;
        }
        self.read_stored(offset, next, max_records, max_bytes)
    }

    /// [`read`](Self::read) through the index and the segment files, of records below
    /// `next`. Blocks.
    fn read_stored(
        &self,
        offset: u64,
        next: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<ReadBatches, StorageError> {
        let source = self.source();
        let chunks: Box<dyn Iterator<Item = Result<Chunk, StorageError>>> =
            match self.hints.find(offset) {
                Some(cursor) => {
                    Box::new(source.walk_from(Some(cursor), next).filter(move |c| {
                        c.as_ref().map_or(true, |c| c.batch.next_offset() > offset)
                    }))
                }
                None => Box::new(source.walk(offset, next)),
            };
        let mut last = None;
        let stored = chunks.map(|chunk| {
            let chunk = chunk?;
            if let Some(pointer) = chunk.pointer {
                last = Some((chunk.batch.base_offset, chunk.batch.next_offset(), pointer));
            }
            Ok(chunk.batch)
        });
        let read = collect(stored, offset, next, max_records, max_bytes);
        if let Some(last) = last {
            self.hints.remember(last);
        }
        read
    }

    /// [`read`](Self::read) from the cached tail, if it holds `offset`.
    fn read_cached(
        &self,
        offset: u64,
        next: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Option<Result<ReadBatches, StorageError>> {
        let cached = self.tail.batches_from(offset, max_records)?;
        let batches = cached.into_iter().map(Ok);
        Some(collect(batches, offset, next, max_records, max_bytes))
    }

    /// Called by the writer when the topic is deleted: refuses further appends,
    /// empties the log and forgets its bounds. The tree itself stays registered until no
    /// handle to it is left (sled frees a dropped tree's pages under any handle still in
    /// use): see `Store::drop_retired`.
    pub(super) fn retire(&self) -> Result<(), StorageError> {
        self.retired.store(true, Ordering::Release);
        // Long-polls waiting on it wake, see it deleted, and end.
        self.appended.notify_waiters();
        self.tail.clear();
        self.tree.clear()?;
        self.segments
            .remove_all()
            .map_err(|e| io_error(&self.name, &e))?;
        self.shrink(self.size_bytes());
        self.bounds.remove(self.tree.name())?;
        Ok(())
    }

    /// Whether its topic was deleted.
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// The log's name in the store (its sled tree's).
    pub(super) fn name(&self) -> String {
        self.name.clone()
    }

    /// Called by the writer: the offset the next batch gets.
    pub(super) fn write_next(&self) -> u64 {
        self.write_next.load(Ordering::Relaxed)
    }

    /// Called by the writer: appends the chunks of one published batch, whose offsets
    /// start at [`write_next`](Self::write_next), to the segment files in one write, and
    /// indexes the first. Returns the chunks as batches (sharing their frames'
    /// bytes) for [`cache`](Self::cache) once they are committed.
    pub(super) fn insert(&self, cuts: Cuts) -> Result<Vec<Batch>, StorageError> {
        if self.is_retired() {
            return Err(StorageError::Deleted);
        }
        let (Some(first), Some(last)) = (cuts.chunks.first(), cuts.chunks.last()) else {
            return Ok(Vec::new());
        };
        let next = last.0.next_offset();
        debug_assert_eq!(first.0.base_offset, self.write_next());
        let (segment, position) = self
            .segments
            .append(first.0.base_offset, &cuts.frames)
            .map_err(|e| io_error(&self.name, &e))?;
        let bytes = cuts.frames.len() as u64;
        // The index is sparse: a batch's first chunk, when the batch starts a file or at
        // least `INDEX_INTERVAL_BYTES` were appended since the last one named; every other
        // chunk is found by reading on from the entry before it.
        let since = self.unindexed.load(Ordering::Relaxed);
        if position == 0 || since >= INDEX_INTERVAL_BYTES {
            if let Some((offset, pointer)) = cuts.pointers(segment, position).next() {
                self.tree.insert(key(offset), &pointer.encode()[..])?;
            }
            self.unindexed.store(bytes, Ordering::Relaxed);
        } else {
            self.unindexed.store(since + bytes, Ordering::Relaxed);
        }
        self.write_next.store(next, Ordering::Relaxed);
        self.grow(bytes);
        Ok(cuts.chunks.into_iter().map(|(batch, _, _)| batch).collect())
    }

    /// Producer `producer_id`'s stored state in this partition, if any.
    pub(super) fn producer_state(
        &self,
        producer_id: u64,
    ) -> Result<Option<sled::IVec>, StorageError> {
        Ok(self.tree.get(state_key(producer_id))?)
    }

    /// Every producer state stored for this partition, by producer id.
    pub(super) fn producer_states(&self) -> Result<Vec<(u64, sled::IVec)>, StorageError> {
        let mut states = Vec::new();
        for entry in self.tree.range(STATE_KEYS..) {
            let (key, value) = entry?;
            let id = key
                .get(8..16)
                .and_then(|id| id.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StorageError::Corrupt("producer state key".into()))?;
            states.push((id, value));
        }
        Ok(states)
    }

    /// Replaces (or with `None` removes) producer `producer_id`'s stored state.
    pub(super) fn set_producer_state(
        &self,
        producer_id: u64,
        state: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        match state {
            Some(state) => self.tree.insert(state_key(producer_id), state)?,
            None => self.tree.remove(state_key(producer_id))?,
        };
        Ok(())
    }

    /// The first offset whose batch the stored producer states may not account for.
    pub(super) fn states_saved_through(&self) -> u64 {
        self.states_through.load(Ordering::Relaxed)
    }

    /// The stored chunks from `offset` on, with the tags they carry (for rebuilding
    /// producer states). Blocks.
    pub(super) fn chunks_from(
        &self,
        offset: u64,
    ) -> impl Iterator<Item = Result<Chunk, StorageError>> + '_ {
        self.source().walk(offset, self.write_next())
    }

    fn grow(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.appended_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    fn shrink(&self, bytes: u64) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.total.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Called by the writer: deletes whole stored batches from the head while the
    /// log stays at or beyond every limit of `policy` without them (and, for age, while the
    /// head batch is older than the limit). So a partition keeps at least what the policy
    /// asks for and at most one stored batch more. Returns whether it deleted.
    pub(super) fn trim(&self, policy: &RetentionPolicy, now_ms: u64) -> Result<bool, StorageError> {
        let mut trimmed = false;
        while !self.is_retired() && self.trim_round(policy, now_ms)? {
            trimmed = true;
        }
        Ok(trimmed)
    }

    /// One round of [`trim`](Self::trim): up to [`TRIM_ROUND`] chunks from the head, deleted
    /// in one atomic sled batch before the first offset moves past them, so a reader sees
    /// the log before the round or after it. Returns whether it deleted anything.
    fn trim_round(&self, policy: &RetentionPolicy, now_ms: u64) -> Result<bool, StorageError> {
        let first = self.first_offset();
        let (mut head, mut freed, mut chunks) = (first, 0, 0);
        let mut removals = sled::Batch::default();
        // The first chunk kept, when it is in a segment file: the index must name it.
        let mut kept = None;
        for chunk in self.chunks_from(first).take(TRIM_ROUND + 1) {
            let chunk = chunk?;
            let left = self.write_next().saturating_sub(chunk.batch.next_offset());
            let bytes_left = self.size_bytes().saturating_sub(freed + chunk.stored_bytes);
            let expired = policy.max_age_ms > 0
                && chunk.batch.append_time_ms.saturating_add(policy.max_age_ms) <= now_ms;
            let too_many = policy.max_messages > 0 && left >= policy.max_messages;
            let too_big = policy.max_bytes > 0 && bytes_left >= policy.max_bytes;
            if chunks == TRIM_ROUND || !(expired || too_many || too_big) {
                kept = chunk.pointer.map(|p| (chunk.batch.base_offset, p));
                break;
            }
            if chunk.pointer.is_none() {
                // Kept in sled itself (an older store): its value and pieces go.
                chunk.keys.into_iter().for_each(|key| removals.remove(key));
            }
            freed += chunk.stored_bytes;
            head = chunk.batch.next_offset();
            chunks += 1;
        }
        if chunks == 0 {
            return Ok(false);
        }
        for entry in self.tree.range(key(first)..key(head)).keys() {
            removals.remove(entry?);
        }
        if let Some((offset, pointer)) = kept {
            removals.insert(&key(offset)[..], &pointer.encode()[..]);
        }
        self.tree.apply_batch(removals)?;
        self.shrink(freed);
        self.first.store(head, Ordering::Release);
        self.tail.forget_before(head);
        if self.segments.in_last(head.saturating_sub(1)) {
            self.segments.roll();
        }
        self.segments
            .remove_below(head, self.write_next())
            .map_err(|e| io_error(&self.name, &e))?;
        Ok(true)
    }

    /// Called by the writer, once every producer state of this log is stored:
    /// records the log's bounds and size beside it, in the same commit as the writes they
    /// describe, and that the producer states account for every batch.
    pub(super) fn save_bounds(&self) -> Result<(), StorageError> {
        if self.is_retired() {
            return Ok(());
        }
        let next = self.write_next();
        let bounds = Bounds {
            bytes: self.size_bytes(),
            next,
            states_through: Some(next),
        };
        self.bounds.insert(self.tree.name(), bounds.encode())?;
        self.states_through.store(next, Ordering::Relaxed);
        Ok(())
    }

    /// Records bounds whose producer-state watermark is `through`, as a crash before the
    /// states were next saved would leave them.
    #[cfg(test)]
    pub(super) fn save_bounds_with_states_through(&self, through: u64) -> Result<(), StorageError> {
        let bounds = Bounds {
            bytes: self.size_bytes(),
            next: self.write_next(),
            states_through: Some(through),
        };
        self.bounds.insert(self.tree.name(), bounds.encode())?;
        Ok(())
    }

    /// Drops the saved bounds, as a crash before they were first saved leaves the log.
    #[cfg(test)]
    pub(super) fn forget_bounds(&self) -> Result<(), StorageError> {
        self.bounds.remove(self.tree.name())?;
        Ok(())
    }

    /// Called by the writer once `batch` is committed, before it is made readable.
    pub(super) fn cache(&self, batch: Batch) {
        if !self.is_retired() {
            self.tail.push(batch);
        }
    }

    /// Drops cached batches that consumers had time enough to read (see `storage::tail`).
    pub fn forget_old_tail(&self, now: std::time::Instant) {
        self.tail.forget_old(now);
    }

    /// Called once records up to `up_to` are committed: makes them readable and wakes
    /// whoever waits for them.
    pub(super) fn publish(&self, up_to: u64) {
        if self.next.fetch_max(up_to, Ordering::AcqRel) < up_to {
            self.appended.notify_waiters();
        }
    }

    /// Wakes whoever waits on this log, so they look again (retention moved its start).
    pub(super) fn wake_readers(&self) {
        self.appended.notify_waiters();
    }
}

/// The last chunks recent reads from the segment files returned, so the next read of a
/// consumer reading in order starts at its chunk directly. The index names one batch's
/// first chunk every [`INDEX_INTERVAL_BYTES`] or so, and without a hint a read from inside
/// a batch of many chunks reads the chunks before it too (measured: W3 13% slower).
///
/// A hint never goes stale: a chunk's place in its file never changes while the log is
/// open (files are appended to, and cut only when opened). If retention deleted its file
/// meanwhile, the read finds nothing, as it would from the index.
#[derive(Debug, Default)]
struct ReadHints(std::sync::Mutex<std::collections::VecDeque<(u64, u64, Pointer)>>);

/// Hints kept per log: a few consumer groups reading in order each find theirs.
const READ_HINTS: usize = 8;

impl ReadHints {
    /// Where a read from `offset` starts, if a recent read ended near it.
    fn find(&self, offset: u64) -> Option<Cursor> {
        let hints = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        hints.iter().rev().find_map(|&(base, next, pointer)| {
            if (base..next).contains(&offset) {
                Some(Cursor::File {
                    offset: Some(base),
                    segment: pointer.segment,
                    position: pointer.position,
                })
            } else if offset == next {
                Some(Cursor::File {
                    offset: Some(next),
                    segment: pointer.segment,
                    position: pointer.end(),
                })
            } else {
                None
            }
        })
    }

    /// Records the last chunk a read returned: its base and next offsets and its frame.
    fn remember(&self, last: (u64, u64, Pointer)) {
        let mut hints = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        hints.retain(|&(base, _, _)| base != last.0);
        if hints.len() == READ_HINTS {
            hints.pop_front();
        }
        hints.push_back(last);
    }
}

/// A log's saved size, next offset and producer-state watermark: `bytes u64, next u64,
/// states_through u64`. Records of 16 bytes, from stores that wrote each producer state with
/// its batch, have no watermark.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Bounds {
    pub(super) bytes: u64,
    pub(super) next: u64,
    pub(super) states_through: Option<u64>,
}

impl Bounds {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.bytes.to_be_bytes());
        out.extend_from_slice(&self.next.to_be_bytes());
        if let Some(through) = self.states_through {
            out.extend_from_slice(&through.to_be_bytes());
        }
        out
    }

    pub(super) fn decode(value: &[u8]) -> Result<Bounds, StorageError> {
        let u64_at = |at: usize| super::records::decode_u64(&value[at..at + 8]);
        match value.len() {
            16 | 24 => Ok(Bounds {
                bytes: u64_at(0)?,
                next: u64_at(8)?,
                states_through: (value.len() == 24).then(|| u64_at(16)).transpose()?,
            }),
            _ => Err(StorageError::Corrupt("partition bounds".into())),
        }
    }
}

fn key(offset: u64) -> [u8; 8] {
    chunk::key(offset)
}

fn state_key(producer_id: u64) -> [u8; 16] {
    let mut key = [0xFF; 16];
    key[8..].copy_from_slice(&producer_id.to_be_bytes());
    key
}

/// What [`recover`] did.
#[derive(Debug, Default)]
struct Recovered {
    /// One past the last intact chunk, if there is one.
    next: Option<u64>,
    /// Bytes of chunks found past the saved bounds.
    bytes: u64,
    /// Whether index entries or frames were cut.
    cut: bool,
}

/// Brings the index of log `name` and its segment files in line (see the module's docs):
/// verifies the chunks from the last indexed one below offset `synced` to the end of the
/// files, and cuts both at the first that is torn, damaged or out of order. With nothing
/// indexed, the files are read from their start, past the chunks below `saved_next`
/// (retention deleted those), and their first chunk is indexed. Blocks.
fn recover(
    name: &str,
    tree: &sled::Tree,
    segments: &Segments,
    synced: u64,
    saved_next: u64,
) -> Result<Recovered, StorageError> {
    let source = Source {
        log: name,
        tree,
        segments,
    };
    let mut recovered = Recovered::default();
    // Index entries into files retention deleted before a crash (their removal from the
    // index had not reached the disk): the files are gone, so are the chunks.
    if let Some(first_file) = segments.first_segment() {
        let mut stale = sled::Batch::default();
        for entry in tree.range(..STATE_KEYS) {
            let (key, value) = entry?;
            match Pointer::decode(&value) {
                Some(pointer) if pointer.segment < first_file => stale.remove(key),
                _ => break,
            }
        }
        tree.apply_batch(stale)?;
    }
    // The chunk to start from is below the synced offset, so known good (or damage).
    let below = tree
        .range(..key(synced))
        .next_back()
        .or_else(|| tree.range(..STATE_KEYS).next())
        .transpose()?;
    let indexed = below.is_some();
    let (cursor, mut cut_at) = match &below {
        Some((start, value)) => {
            let at = Pointer::decode(value).map(|p| (p.segment, p.position));
            (Cursor::Key(chunk::offset_of(start)), at)
        }
        None => match segments.first_segment() {
            Some(first) => (
                Cursor::File {
                    offset: None,
                    segment: first,
                    position: 0,
                },
                Some((first, 0)),
            ),
            None => return Ok(recovered),
        },
    };
    let mut first_indexed = None;
    let mut failed = None;
    for stored in source.walk_from(Some(cursor), u64::MAX) {
        let chunk = match stored {
            Ok(chunk) => chunk,
            Err(err) => {
                failed = Some(err);
                break;
            }
        };
        let end = chunk.pointer.map(|p| (p.segment, p.end()));
        if !indexed && chunk.batch.next_offset() <= saved_next {
            cut_at = end;
            continue;
        }
        if !indexed && first_indexed.is_none() {
            first_indexed = chunk.pointer.map(|p| (chunk.batch.base_offset, p));
        }
        if chunk.batch.base_offset >= saved_next {
            recovered.bytes += chunk.stored_bytes;
        }
        recovered.next = Some(chunk.batch.next_offset());
        if end.is_some() {
            cut_at = end;
        }
    }
    let at = recovered
        .next
        .or_else(|| below.as_ref().map(|(k, _)| chunk::offset_of(k)))
        .unwrap_or(saved_next);
    if let Some(err) = failed {
        // A chunk below the synced offset was synced whole (a commit never splits one):
        // losing it is damage, not a crash's torn tail.
        if at < synced {
            return Err(err);
        }
        tracing::warn!(log = name, offset = at, %err, "the log is cut at its first damaged chunk past the synced offset");
    }
    let mut index = sled::Batch::default();
    let mut dropped = 0;
    for entry in tree.range(key(at)..STATE_KEYS).keys() {
        index.remove(entry?);
        dropped += 1;
    }
    if let Some((offset, pointer)) = first_indexed {
        index.insert(&key(offset)[..], &pointer.encode()[..]);
    }
    tree.apply_batch(index)?;
    let before = segments.bytes();
    if let Some((segment, position)) = cut_at {
        segments
            .truncate(segment, position)
            .map_err(|e| io_error(name, &e))?;
    }
    let cut_bytes = before - segments.bytes();
    recovered.cut = dropped > 0 || cut_bytes > 0;
    if recovered.cut || first_indexed.is_some() {
        tracing::info!(
            log = name,
            next = recovered.next,
            dropped_entries = dropped,
            dropped_bytes = cut_bytes,
            "recovered the segment files past the index"
        );
    }
    Ok(recovered)
}

/// The batches from `offset` on in `stored` (batches in offset order, the first holding
/// `offset` or after it), below `next`, as a read returns them: at most `max_records`
/// and at most `max_bytes` of encoding, except that the first record always comes.
fn collect(
    stored: impl Iterator<Item = Result<Batch, StorageError>>,
    offset: u64,
    next: u64,
    max_records: u32,
    max_bytes: usize,
) -> Result<ReadBatches, StorageError> {
    let mut out = ReadBatches::default();
    let mut cursor = offset;
    let mut stored = stored;
    // The limits are checked before the next batch is read, so a read never touches (nor
    // fails on) a stored chunk it would not return.
    while cursor < next && out.records < u64::from(max_records) {
        let left_records = (u64::from(max_records) - out.records) as u32;
        let left_bytes = max_bytes.saturating_sub(out.bytes);
        if out.records > 0 && left_bytes < herald_protocol::record::BATCH_HEADER_LEN {
            break;
        }
        let Some(batch) = stored.next().transpose()? else {
            break;
        };
        if batch.base_offset >= next {
            break;
        }
        let slice = batch
            .slice(cursor, left_records, left_bytes)
            .map_err(|e| StorageError::Corrupt(format!("stored batch: {e}")))?;
        let Some(slice) = slice else { continue };
        if out.records > 0 && slice.encoded_len() > left_bytes {
            break;
        }
        cursor = slice.next_offset();
        out.records += u64::from(slice.record_count);
        out.bytes += slice.encoded_len();
        let partial = slice.next_offset() < batch.next_offset();
        out.batches.push(slice);
        if partial {
            break;
        }
    }
    Ok(out)
}
