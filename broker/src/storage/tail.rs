//! The hot tail: each partition's most recently committed batches, kept in memory so that
//! consumers keeping up with the log — push dispatchers, and pull fetches at the end —
//! and those a little behind it — a group reading what was just published, a consumer
//! back after a restart — are served without the index or the segment files.
//!
//! A read from the files costs, per chunk of up to 6 KiB, a `pread` into a zeroed buffer
//! and a checksum; served from here it costs neither. With each partition held to 1 MiB,
//! a group reading back what was just published (W2, W3: 200,000 records of 100 B, then
//! read by a new group, through a separate broker) read almost all of it from the files;
//! given the whole budget, W2 went from 768k to 942k deliveries/s and W3 from 1.44M to
//! 1.62M records/s under `always` (1.37M to 1.94M under `never`), medians of 4–6
//! alternated runs. The writer adds each batch here as it makes it readable; the batch
//! shares its bytes with the write's.
//!
//! Bounded by the store's budget (`--tail-cache-mb`), shared fairly: each partition keeps
//! at most the budget divided among the partitions that cached a batch within
//! [`MAX_AGE`], so one partition alone may use all of it and a thousand busy ones a
//! thousandth each. A partition over its share (another became active) drops its oldest
//! batches at its next append; one that finds the budget full caches nothing until the
//! others have made room. Every batch is counted with what its entry costs besides its
//! bytes ([`ENTRY_BYTES`]), and a partition keeps at most [`PER_PARTITION_BATCHES`].
//! Entries older than [`MAX_AGE`] are dropped by the retention task's sweep, so an idle
//! partition gives its share back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_protocol::Batch;

/// Most batches one partition keeps.
pub const PER_PARTITION_BATCHES: usize = 16 * 1024;
/// How long a batch stays cached: consumers that keep up read it within milliseconds,
/// and a group reading a fresh backlog within a second or two.
pub const MAX_AGE: Duration = Duration::from_secs(2);
/// What a cached batch costs besides its bytes: its entry and its handle on them.
pub const ENTRY_BYTES: usize = std::mem::size_of::<(Instant, Batch)>() + 32;

/// The bytes every partition's tail may hold together, and the partitions sharing them.
#[derive(Debug)]
pub struct TailBudget {
    used: AtomicUsize,
    limit: usize,
    /// Partitions that cached a batch within [`MAX_AGE`]: each may hold an equal share.
    active: AtomicUsize,
}

impl TailBudget {
    pub fn new(limit: usize) -> Arc<TailBudget> {
        Arc::new(TailBudget {
            used: AtomicUsize::new(0),
            limit,
            active: AtomicUsize::new(0),
        })
    }

    /// Bytes cached now, over every partition.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// What one active partition may hold.
    fn share(&self) -> usize {
        self.limit / self.active.load(Ordering::Relaxed).max(1)
    }

    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= self.limit).then_some(used + bytes)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// One partition's cached tail: consecutive batches, oldest first.
#[derive(Debug)]
pub struct Tail {
    entries: Mutex<Entries>,
    budget: Arc<TailBudget>,
}

#[derive(Debug, Default)]
struct Entries {
    batches: VecDeque<(Instant, Batch)>,
    /// What the batches count against the budget.
    bytes: usize,
    /// When the last batch was offered; `None` while the partition has no share.
    offered: Option<Instant>,
}

impl Tail {
    pub fn new(budget: Arc<TailBudget>) -> Tail {
        Tail {
            entries: Mutex::new(Entries::default()),
            budget,
        }
    }

    /// Adds a newly committed batch (the writer calls this, in offset order).
    /// A batch that does not follow the last one starts the tail afresh; one that does not
    /// fit the partition's share or the budget is left out, and so is everything before it.
    pub fn push(&self, batch: Batch) {
        let size = cost(&batch);
        let mut entries = self.lock();
        let now = Instant::now();
        if entries.offered.replace(now).is_none() {
            self.budget.active.fetch_add(1, Ordering::Relaxed);
        }
        let share = self.budget.share();
        let follows = entries
            .batches
            .back()
            .is_none_or(|(_, last)| last.next_offset() == batch.base_offset);
        if !follows || size > share {
            self.drop_all(&mut entries);
        }
        if size > share {
            return;
        }
        while entries.batches.len() >= PER_PARTITION_BATCHES || entries.bytes + size > share {
            self.drop_oldest(&mut entries);
        }
        if !self.add(&mut entries, batch, size, now) {
            // Over the budget: what is cached no longer reaches the end, so it is useless.
            self.drop_all(&mut entries);
        }
    }

    /// The cached batches from `offset` on — enough of them to hold `max_records` from
    /// there, or all — in the order [`PartitionLog::read`] returns them, if the tail holds
    /// `offset`; `None` if `offset` is older or not cached yet.
    ///
    /// [`PartitionLog::read`]: super::PartitionLog::read
    pub fn batches_from(&self, offset: u64, max_records: u32) -> Option<Vec<Batch>> {
        let entries = self.lock();
        let (first, last) = (entries.batches.front()?, entries.batches.back()?);
        if offset < first.1.base_offset || offset >= last.1.next_offset() {
            return None;
        }
        // Consecutive batches: the one holding `offset` is found by its position.
        let at = entries
            .batches
            .partition_point(|(_, b)| b.next_offset() <= offset);
        let mut records = 0u64;
        let mut out = Vec::new();
        for (_, batch) in entries.batches.range(at..) {
            if records >= u64::from(max_records) {
                break;
            }
            records += batch.next_offset() - offset.max(batch.base_offset);
            out.push(batch.clone());
        }
        Some(out)
    }

    /// Drops batches that end at or before `first` (retention deleted them).
    pub fn forget_before(&self, first: u64) {
        let mut entries = self.lock();
        while entries
            .batches
            .front()
            .is_some_and(|(_, b)| b.next_offset() <= first)
        {
            self.drop_oldest(&mut entries);
        }
    }

    /// Drops batches cached longer than [`MAX_AGE`]; a partition offered none for that
    /// long gives up its share.
    pub fn forget_old(&self, now: Instant) {
        let mut entries = self.lock();
        while entries
            .batches
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > MAX_AGE)
        {
            self.drop_oldest(&mut entries);
        }
        if entries
            .offered
            .is_some_and(|at| now.saturating_duration_since(at) > MAX_AGE)
        {
            self.retire(&mut entries);
        }
    }

    /// Drops everything and gives up the partition's share.
    pub fn clear(&self) {
        let mut entries = self.lock();
        self.drop_all(&mut entries);
        self.retire(&mut entries);
    }

    fn add(&self, entries: &mut Entries, batch: Batch, size: usize, now: Instant) -> bool {
        if !self.budget.take(size) {
            return false;
        }
        entries.batches.push_back((now, batch));
        entries.bytes += size;
        true
    }

    fn drop_oldest(&self, entries: &mut Entries) {
        if let Some((_, batch)) = entries.batches.pop_front() {
            let size = cost(&batch);
            entries.bytes -= size;
            self.budget.give_back(size);
        }
    }

    fn retire(&self, entries: &mut Entries) {
        if entries.offered.take().is_some() {
            self.budget.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn drop_all(&self, entries: &mut Entries) {
        self.budget.give_back(entries.bytes);
        entries.batches.clear();
        entries.bytes = 0;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a cached batch counts against the budget.
fn cost(batch: &Batch) -> usize {
    batch.encoded_len() + ENTRY_BYTES
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn batch(base: u64, count: u32, len: usize) -> Batch {
        Batch {
            base_offset: base,
            append_time_ms: 0,
            base_timestamp: 0,
            codec: herald_protocol::Codec::None,
            record_count: count,
            records: Bytes::from(vec![0u8; len]),
        }
    }

    #[test]
    fn serves_offsets_it_reaches_and_refuses_older_ones() {
        let tail = Tail::new(TailBudget::new(1 << 20));
        tail.push(batch(10, 5, 100));
        tail.push(batch(15, 5, 100));
        let from_12: Vec<u64> = tail
            .batches_from(12, u32::MAX)
            .unwrap()
            .iter()
            .map(|b| b.base_offset)
            .collect();
        assert_eq!(from_12, vec![10, 15]);
        assert_eq!(tail.batches_from(15, u32::MAX).unwrap().len(), 1);
        assert_eq!(
            tail.batches_from(12, 3).unwrap().len(),
            1,
            "3 records from 12 are in one"
        );
        assert_eq!(tail.batches_from(12, 4).unwrap().len(), 2);
        assert!(
            tail.batches_from(20, u32::MAX).is_none(),
            "not cached yet: sled has it, or nobody"
        );
        assert!(tail.batches_from(9, u32::MAX).is_none());
    }

    #[test]
    fn a_gap_starts_afresh_and_retention_drops_the_head() {
        let tail = Tail::new(TailBudget::new(1 << 20));
        tail.push(batch(0, 5, 10));
        tail.push(batch(9, 1, 10)); // not at 5: what came before is no longer adjacent
        assert!(tail.batches_from(4, u32::MAX).is_none());
        assert_eq!(tail.batches_from(9, u32::MAX).unwrap().len(), 1);
        tail.push(batch(10, 1, 10));
        tail.forget_before(10);
        assert!(tail.batches_from(9, u32::MAX).is_none());
        assert_eq!(tail.batches_from(10, u32::MAX).unwrap().len(), 1);
    }

    #[test]
    fn the_budget_bounds_every_partition_together_and_is_given_back() {
        let big = batch(0, 1, 600);
        let budget = TailBudget::new(cost(&big) + 100);
        let (a, b) = (
            Tail::new(Arc::clone(&budget)),
            Tail::new(Arc::clone(&budget)),
        );
        a.push(big.clone());
        assert_eq!(budget.used(), cost(&big));
        b.push(big.clone());
        assert_eq!(
            budget.used(),
            cost(&big),
            "b's batch did not fit and is read from the files"
        );
        assert!(b.batches_from(0, u32::MAX).is_none());
        a.clear();
        assert_eq!(budget.used(), 0);
        b.push(batch(1, 1, 100));
        assert!(b.batches_from(1, u32::MAX).is_some());
        drop(b);
        assert_eq!(budget.used(), 0, "a dropped tail gives its bytes back");
    }

    #[test]
    fn one_partition_alone_may_hold_the_whole_budget() {
        // A fresh backlog of 8 MiB in 6 KiB chunks: a group reading it back from the
        // start is served from memory.
        let budget = TailBudget::new(8 << 20);
        let tail = Tail::new(Arc::clone(&budget));
        let chunks = (8 << 20) / cost(&batch(0, 1, 6 * 1024)) as u64;
        for i in 0..chunks {
            tail.push(batch(i, 1, 6 * 1024));
        }
        assert!(budget.used() > 7 << 20, "{}", budget.used());
        assert_eq!(
            tail.batches_from(0, u32::MAX).map(|b| b.len() as u64),
            Some(chunks)
        );
    }

    #[test]
    fn partitions_that_cache_share_the_budget_and_an_idle_one_gives_its_share_back() {
        let one = cost(&batch(0, 1, 1000));
        let budget = TailBudget::new(10 * one);
        let (a, b) = (
            Tail::new(Arc::clone(&budget)),
            Tail::new(Arc::clone(&budget)),
        );
        // Alone, a partition may use the whole budget.
        for i in 0..10 {
            a.push(batch(i, 1, 1000));
        }
        assert_eq!(budget.used(), 10 * one);
        assert!(a.batches_from(0, u32::MAX).is_some());
        // b becomes active; the budget is full, so its first batch is not cached...
        b.push(batch(0, 1, 1000));
        assert!(b.batches_from(0, u32::MAX).is_none());
        // ...until a's next batch brings a down to its half.
        a.push(batch(10, 1, 1000));
        assert!(budget.used() <= 5 * one, "{} > {}", budget.used(), 5 * one);
        assert!(a.batches_from(6, u32::MAX).is_some());
        assert!(a.batches_from(5, u32::MAX).is_none());
        for i in 1..=5 {
            b.push(batch(i, 1, 1000));
        }
        assert!(b.batches_from(1, u32::MAX).is_some());
        assert!(budget.used() <= 10 * one);
        // Idle past MAX_AGE: both give everything back, and a alone has it all again.
        let later = Instant::now() + MAX_AGE + Duration::from_millis(1);
        a.forget_old(later);
        b.forget_old(later);
        assert_eq!(budget.used(), 0);
        for i in 11..21 {
            a.push(batch(i, 1, 1000));
        }
        assert_eq!(budget.used(), 10 * one);
        assert!(a.batches_from(11, u32::MAX).is_some());
    }

    #[test]
    fn old_batches_expire_and_a_partition_keeps_at_most_its_share() {
        let tail = Tail::new(TailBudget::new(usize::MAX));
        for i in 0..(PER_PARTITION_BATCHES as u64 + 10) {
            tail.push(batch(i, 1, 1));
        }
        assert!(tail.batches_from(9, u32::MAX).is_none());
        assert!(tail.batches_from(10, u32::MAX).is_some());
        tail.forget_old(Instant::now() + MAX_AGE + Duration::from_millis(1));
        assert!(tail.batches_from(10, u32::MAX).is_none());
    }
}
