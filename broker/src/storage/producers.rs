//! Idempotent producers: the last batches each producer appended to each partition, so a
//! batch sent again (after a lost confirm or a reconnect) is answered with its original
//! offsets instead of being stored twice.
//!
//! A producer numbers its batches to each partition 1, 2, 3, … The writer, which
//! alone appends, accepts the next number, answers a number it still remembers with the
//! offsets it gave then, and refuses anything else with `OutOfOrderSequence`. It remembers
//! the last [`KEEP`] batches per producer and partition — more than a client keeps in
//! flight.
//!
//! Each numbered batch is stored with a tag naming its producer, its number and its first
//! offset (on its last chunk, see `storage::chunk`), so the batch alone records the producer's progress: one sled write per
//! batch. The states themselves live in memory and are stored in the partition's own
//! tree with the partition's bounds (every 100 ms while it is written, and at a clean
//! stop), which then record that the states account for every batch below the log's end.
//! After a crash, [`recover`] replays the tags of the batches from that watermark on.
//! sled recovers writes in order, so a state that survived names only batches that did
//! too. (Writing the state beside every batch was measured: it cost more than the batch
//! itself, 16 against 11 µs a batch on average, with most of the writer's slow writes.)
//!
//! Stores written before kept the state in a `producers` tree (still read, never
//! written), or wrote it just before each batch: [`recover`] also drops state entries
//! naming offsets beyond the log's end, which a crash between the two writes left.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::{PartitionLog, StorageError};

/// Batches remembered per producer and partition.
pub(super) const KEEP: usize = 16;

/// Producer states kept in memory; past this the cache starts over (states reload from
/// the store when next used, one sled read each), so short-lived producers cost no memory
/// for long. Measured: with 4096 the broker's memory kept growing under producer churn
/// (about 15 new producers a second, 4 partitions: +12 MB in 2 minutes); with 64 it was
/// flat.
const CACHE_ENTRIES: usize = 1024;

/// Who appends, and the batch's number for this partition (from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub producer_id: u64,
    pub sequence: u64,
}

/// What to do with a producer's batch.
pub(super) enum Check {
    /// The next one: append it.
    Append,
    /// Already appended at these offsets: answer with them.
    Duplicate { base_offset: u64, count: u32 },
}

/// Recent batches: (sequence, base offset, count), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Recent(VecDeque<(u64, u64, u32)>);

impl Recent {
    /// The encoded state of these (sequence, base offset, count) entries.
    #[cfg(test)]
    pub(super) fn from_entries(entries: &[(u64, u64, u32)]) -> Vec<u8> {
        Recent(entries.iter().copied().collect()).encode()
    }

    /// Adds batch `sequence` at `base_offset`, unless it is already known (a replay);
    /// keeps the last [`KEEP`]. Says whether anything changed.
    fn record(&mut self, sequence: u64, base_offset: u64, count: u32) -> bool {
        if self.0.iter().any(|&(s, _, _)| s >= sequence) {
            return false;
        }
        self.0.push_back((sequence, base_offset, count));
        while self.0.len() > KEEP {
            self.0.pop_front();
        }
        true
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 * self.0.len());
        for (sequence, base, count) in &self.0 {
            out.extend_from_slice(&sequence.to_be_bytes());
            out.extend_from_slice(&base.to_be_bytes());
            out.extend_from_slice(&count.to_be_bytes());
        }
        out
    }

    fn decode(value: &[u8]) -> Result<Recent, StorageError> {
        if !value.len().is_multiple_of(20) {
            return Err(StorageError::Corrupt("producer state".into()));
        }
        let u64_at =
            |at: usize| u64::from_be_bytes(value[at..at + 8].try_into().unwrap_or_default());
        Ok(Recent(
            value
                .chunks_exact(20)
                .enumerate()
                .map(|(i, chunk)| {
                    let at = i * 20;
                    let count = u32::from_be_bytes(chunk[16..20].try_into().unwrap_or_default());
                    (u64_at(at), u64_at(at + 8), count)
                })
                .collect(),
        ))
    }
}

/// A log's name and a producer id.
type StateKey = (String, u64);

/// The writer's view of every producer's recent batches.
pub(super) struct Producers {
    /// Where older stores kept the state.
    legacy: sled::Tree,
    cache: HashMap<StateKey, Recent>,
    /// States changed since they were last stored, and the logs they belong to; never
    /// dropped from the cache before they are stored.
    unsaved: HashMap<StateKey, Arc<PartitionLog>>,
}

impl Producers {
    pub(super) fn new(legacy: sled::Tree) -> Producers {
        Producers {
            legacy,
            cache: HashMap::new(),
            unsaved: HashMap::new(),
        }
    }

    /// Stores every state changed since the last call (the logs' bounds, saved next, then
    /// record that their states are complete).
    pub(super) fn save(&mut self) -> Result<(), StorageError> {
        for ((name, producer_id), log) in self.unsaved.drain() {
            if log.is_retired() {
                continue;
            }
            if let Some(recent) = self.cache.get(&(name, producer_id)) {
                log.set_producer_state(producer_id, Some(&recent.encode()))?;
            }
        }
        Ok(())
    }

    /// Decides what to do with `batch` from `producer` for `log`.
    pub(super) fn check(
        &mut self,
        log: &PartitionLog,
        producer: ProducerBatch,
    ) -> Result<Check, StorageError> {
        if producer.sequence == 0 {
            return Err(StorageError::Sequence(
                "sequence numbers start at 1".to_string(),
            ));
        }
        let recent = self.recent(log, producer.producer_id)?;
        let Some(&(last, _, _)) = recent.0.back() else {
            return Ok(Check::Append); // a producer new to this partition
        };
        if producer.sequence == last + 1 {
            return Ok(Check::Append);
        }
        if let Some(&(_, base_offset, count)) =
            recent.0.iter().find(|(s, _, _)| *s == producer.sequence)
        {
            return Ok(Check::Duplicate { base_offset, count });
        }
        Err(StorageError::Sequence(format!(
            "producer {} sent batch {} to {}; the next one is {}{}",
            producer.producer_id,
            producer.sequence,
            log.name(),
            last + 1,
            if producer.sequence < last {
                format!(
                    " (batches before {} are no longer remembered)",
                    recent.0[0].0
                )
            } else {
                String::new()
            }
        )))
    }

    /// Records that `producer`'s batch was stored at `base_offset` (once it is).
    pub(super) fn remember(
        &mut self,
        log: &Arc<PartitionLog>,
        producer: ProducerBatch,
        base_offset: u64,
        count: u32,
    ) -> Result<(), StorageError> {
        self.recent(log, producer.producer_id)?
            .record(producer.sequence, base_offset, count);
        self.unsaved
            .insert((log.name(), producer.producer_id), Arc::clone(log));
        Ok(())
    }

    /// Forgets the producers of `log` whose remembered batches retention has all deleted:
    /// a resend of those could not be answered with records anyway, and a producer still
    /// alive simply continues (a producer without state may start at any number). Keeps
    /// the states of producers that come and go from piling up.
    pub(super) fn forget_trimmed(&mut self, log: &PartitionLog) -> Result<(), StorageError> {
        self.save()?;
        let head = log.first_offset();
        let name = log.name();
        for (producer_id, value) in log.producer_states()? {
            let recent = Recent::decode(&value)?;
            let behind = recent
                .0
                .back()
                .is_none_or(|&(_, base, count)| base + u64::from(count) <= head);
            if behind {
                log.set_producer_state(producer_id, None)?;
                self.cache.remove(&(name.clone(), producer_id));
            }
        }
        Ok(())
    }

    /// Forgets every producer of a deleted log (the log's own tree is cleared with it).
    pub(super) fn forget(&mut self, log: &str) -> Result<(), StorageError> {
        self.cache.retain(|(name, _), _| name != log);
        self.unsaved.retain(|(name, _), _| name != log);
        for key in self.legacy.scan_prefix(prefix(log)).keys() {
            self.legacy.remove(key?)?;
        }
        Ok(())
    }

    fn recent(
        &mut self,
        log: &PartitionLog,
        producer_id: u64,
    ) -> Result<&mut Recent, StorageError> {
        let entry = (log.name(), producer_id);
        if !self.cache.contains_key(&entry) {
            if self.cache.len() >= CACHE_ENTRIES {
                // Stored first, so nothing is lost; then a new map, not `clear()`: its
                // memory goes back rather than staying held.
                self.save()?;
                self.cache = HashMap::new();
            }
            let stored = match log.producer_state(producer_id)? {
                Some(value) => Some(value),
                None => self.legacy.get(legacy_key(&entry.0, producer_id))?,
            };
            let recent = match stored {
                Some(value) => Recent::decode(&value)?,
                None => Recent::default(),
            };
            return Ok(self.cache.entry(entry).or_insert(recent));
        }
        Ok(self.cache.entry(entry).or_default())
    }
}

/// Brings the stored producer states of `log` up to its end when it is opened: drops
/// entries naming batches the log does not hold (a crash between the state and the batch,
/// in stores that wrote both), then replays the tags of the batches stored after the
/// states were last saved. Blocks.
pub(super) fn recover(log: &PartitionLog) -> Result<(), StorageError> {
    let end = log.write_next();
    let mut states: HashMap<u64, (Recent, bool)> = HashMap::new();
    for (producer_id, value) in log.producer_states()? {
        let mut recent = Recent::decode(&value)?;
        let before = recent.0.len();
        recent
            .0
            .retain(|&(_, base, count)| base + u64::from(count) <= end);
        let dropped = before - recent.0.len();
        if dropped > 0 {
            tracing::warn!(
                log = log.name(),
                producer_id,
                dropped,
                "producer state named batches lost in a crash; forgotten"
            );
        }
        states.insert(producer_id, (recent, dropped > 0));
    }
    let mut replayed = 0;
    for stored in log.chunks_from(log.states_saved_through()) {
        let chunk = stored?;
        let Some(tag) = chunk.tag else { continue };
        let producer = tag.producer;
        let count = u32::try_from(chunk.batch.next_offset().saturating_sub(tag.first_offset))
            .map_err(|_| StorageError::Corrupt(format!("{}: a tag's batch", log.name())))?;
        let (recent, changed) = states.entry(producer.producer_id).or_default();
        if recent.record(producer.sequence, tag.first_offset, count) {
            *changed = true;
            replayed += 1;
        }
    }
    if replayed > 0 {
        tracing::info!(
            log = log.name(),
            replayed,
            "producer states rebuilt from the log"
        );
    }
    for (producer_id, (recent, changed)) in states {
        if changed {
            let encoded = recent.encode();
            log.set_producer_state(producer_id, (!recent.0.is_empty()).then_some(&encoded[..]))?;
        }
    }
    Ok(())
}

fn prefix(log: &str) -> Vec<u8> {
    [log.as_bytes(), b"/"].concat()
}

fn legacy_key(log: &str, producer_id: u64) -> Vec<u8> {
    [prefix(log).as_slice(), &producer_id.to_be_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_batches_survive_encoding() {
        let recent = Recent([(1, 0, 10), (2, 10, 5)].into_iter().collect());
        assert_eq!(Recent::decode(&recent.encode()).unwrap(), recent);
        assert!(Recent::decode(&[1, 2, 3]).is_err());
    }
}
