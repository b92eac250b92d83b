//! One partition's log: record batches keyed by base offset in a sled tree.
//!
//! A published batch is stored as chunks of at most `chunk::CHUNK_BYTES`, each the batch
//! encoding as it travels on the wire (offsets filled in) behind a CRC-32C; a producer's
//! numbered batch tags its last chunk. See `storage::chunk`.
//!
//! The same tree keeps the partition's idempotent-producer state (see
//! `storage::producers`) under 16-byte keys `FF×8 ‖ producer id`, which sort after every
//! 8-byte offset key (offsets never reach `u64::MAX`). Every walk over batches stays below
//! [`STATE_KEYS`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use herald_protocol::Batch;

use super::chunk::{self, Chunk, Cut};
use super::tail::{Tail, TailBudget};
use super::{RetentionPolicy, StorageError};

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
    /// The latest committed batches, served without sled (see `storage::tail`).
    tail: Tail,
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
    /// Opens a log over `tree`, recovering its bounds. The saved bounds keep offsets from
    /// restarting when retention emptied the log; the stored batches are the truth for
    /// anything the saved bounds do not cover yet. Blocks.
    pub(super) fn open(
        tree: sled::Tree,
        bounds: sled::Tree,
        total: Arc<AtomicU64>,
        tail_budget: Arc<TailBudget>,
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
        let next = match last_chunk(&name, &tree)? {
            Some(last) => last.batch.next_offset().max(saved.next),
            None => saved.next,
        };
        let first = match tree.range(..STATE_KEYS).next().transpose()? {
            Some((head, _)) => chunk::offset_of(&head),
            None => next,
        };
        // Stores that wrote each producer state with its batch record no watermark.
        let states_through = saved.states_through.unwrap_or(next);
        total.fetch_add(saved.bytes, Ordering::Relaxed);
        Ok(PartitionLog {
            name,
            tree,
            bounds,
            total,
            next: AtomicU64::new(next),
            write_next: AtomicU64::new(next),
            first: AtomicU64::new(first),
            bytes: AtomicU64::new(saved.bytes),
            appended_bytes: AtomicU64::new(0),
            appended: tokio::sync::Notify::new(),
            retired: AtomicBool::new(false),
            states_through: AtomicU64::new(states_through),
            tail: Tail::new(tail_budget),
        })
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
    /// consumers keep up with) are served inline, from the cached tail or from sled, which
    /// still holds those pages in memory; older ones may need the disk and are read on a
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

    /// [`read`](Self::read) from sled, of records below `next`. Blocks.
    fn read_stored(
        &self,
        offset: u64,
        next: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<ReadBatches, StorageError> {
        // The chunk holding `offset` starts at the last chunk key at or before it (a chunk
        // stored in pieces holds one record, so no piece lies between the two).
        let start = match self.tree.range(..=key(offset)).next_back() {
            Some(entry) => chunk::offset_of(&entry?.0),
            None => offset,
        };
        let stored = chunk::walk(&self.name, &self.tree, start).map(|chunk| chunk.map(|c| c.batch));
        collect(stored, offset, next, max_records, max_bytes)
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

    /// Called by the writer: stores the chunks of one published batch, whose offsets
    /// start at [`write_next`](Self::write_next), in one atomic write. Returns the chunks as
    /// batches (sharing sled's copy of their bytes) for [`cache`](Self::cache) once they are
    /// committed.
    pub(super) fn insert(&self, cuts: Vec<Cut>) -> Result<Vec<Batch>, StorageError> {
        if self.is_retired() {
            return Err(StorageError::Deleted);
        }
        let (Some(first), Some(last)) = (cuts.first(), cuts.last()) else {
            return Ok(Vec::new());
        };
        let next = last.batch.next_offset();
        debug_assert_eq!(first.batch.base_offset, self.write_next());
        let mut bytes = 0;
        let mut values = cuts.iter().flat_map(|cut| &cut.values);
        if cuts.len() == 1 && cuts[0].values.len() == 1 {
            let (key, value) = values.next().expect("one value");
            bytes += value.len() as u64;
            self.tree.insert(&key[..], value.clone())?;
        } else {
            let mut batch = sled::Batch::default();
            for (key, value) in values {
                bytes += value.len() as u64;
                batch.insert(&key[..], value.clone());
            }
            self.tree.apply_batch(batch)?;
        }
        self.write_next.store(next, Ordering::Relaxed);
        self.grow(bytes);
        Ok(cuts.into_iter().map(|cut| cut.batch).collect())
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
        chunk::walk(&self.name, &self.tree, offset)
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
        let (mut head, mut freed, mut chunks) = (self.first_offset(), 0, 0);
        let mut removals = sled::Batch::default();
        for chunk in self.chunks_from(head).take(TRIM_ROUND) {
            let chunk = chunk?;
            let left = self.write_next().saturating_sub(chunk.batch.next_offset());
            let bytes_left = self.size_bytes().saturating_sub(freed + chunk.stored_bytes);
            let expired = policy.max_age_ms > 0
                && chunk.batch.append_time_ms.saturating_add(policy.max_age_ms) <= now_ms;
            let too_many = policy.max_messages > 0 && left >= policy.max_messages;
            let too_big = policy.max_bytes > 0 && bytes_left >= policy.max_bytes;
            if !(expired || too_many || too_big) {
                break;
            }
            for key in chunk.keys {
                removals.remove(key);
            }
            freed += chunk.stored_bytes;
            head = chunk.batch.next_offset();
            chunks += 1;
        }
        if chunks == 0 {
            return Ok(false);
        }
        self.tree.apply_batch(removals)?;
        self.shrink(freed);
        self.first.store(head, Ordering::Release);
        self.tail.forget_before(head);
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

/// The last chunk stored in `tree`, read whole. Blocks.
fn last_chunk(name: &str, tree: &sled::Tree) -> Result<Option<Chunk>, StorageError> {
    let Some((last, _)) = tree.range(..STATE_KEYS).next_back().transpose()? else {
        return Ok(None);
    };
    chunk::get(name, tree, chunk::offset_of(&last))
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
