//! Idempotent producers: the last batches each producer appended to each partition, so a
//! batch sent again (after a lost confirm or a reconnect) is answered with its original
//! offsets instead of being stored twice.
//!
//! A producer numbers its batches to each partition 1, 2, 3, … The writer thread, which
//! alone appends, accepts the next number, answers a number it still remembers with the
//! offsets it gave then, and refuses anything else with `OutOfOrderSequence`. It remembers
//! the last [`KEEP`] batches per producer and partition — more than a client keeps in
//! flight — in the partition's own tree, written just before the batch. sled recovers
//! writes in order, so after a crash the store holds both, neither, or the state alone;
//! [`repair`] drops state entries naming offsets beyond the log's end when the log is
//! opened, before anything else can be appended there. (Stores written before kept the
//! state in a `producers` tree; it is still read, never written.)

use std::collections::{HashMap, VecDeque};

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

/// The writer thread's view of every producer's recent batches.
pub(super) struct Producers {
    /// Where older stores kept the state.
    legacy: sled::Tree,
    cache: HashMap<(String, u64), Recent>,
}

impl Producers {
    pub(super) fn new(legacy: sled::Tree) -> Producers {
        Producers {
            legacy,
            cache: HashMap::new(),
        }
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

    /// The state that records `producer`'s batch at `base_offset` — to be written with
    /// the batch — encoded, and as kept once it is.
    pub(super) fn after(
        &mut self,
        log: &PartitionLog,
        producer: ProducerBatch,
        base_offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, Recent), StorageError> {
        let mut recent = self.recent(log, producer.producer_id)?.clone();
        recent.0.push_back((producer.sequence, base_offset, count));
        while recent.0.len() > KEEP {
            recent.0.pop_front();
        }
        Ok((recent.encode(), recent))
    }

    /// Keeps `recent` as `producer`'s state once its batch is stored.
    pub(super) fn remember(&mut self, log: &PartitionLog, producer_id: u64, recent: Recent) {
        self.cache.insert((log.name(), producer_id), recent);
    }

    /// Forgets the producers of `log` whose remembered batches retention has all deleted:
    /// a resend of those could not be answered with records anyway, and a producer still
    /// alive simply continues (a producer without state may start at any number). Keeps
    /// the states of producers that come and go from piling up.
    pub(super) fn forget_trimmed(&mut self, log: &PartitionLog) -> Result<(), StorageError> {
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
        for key in self.legacy.scan_prefix(prefix(log)).keys() {
            self.legacy.remove(key?)?;
        }
        Ok(())
    }

    fn recent(&mut self, log: &PartitionLog, producer_id: u64) -> Result<&Recent, StorageError> {
        let entry = (log.name(), producer_id);
        if !self.cache.contains_key(&entry) {
            if self.cache.len() >= CACHE_ENTRIES {
                // A new map, not `clear()`: its memory goes back rather than staying held.
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
            self.cache.insert(entry.clone(), recent);
        }
        Ok(&self.cache[&entry])
    }
}

/// Drops from every producer state of `log` the batches the log does not hold: their
/// state was written, and the crash came before the batch. Run when the log is opened.
pub(super) fn repair(log: &PartitionLog) -> Result<(), StorageError> {
    let end = log.write_next();
    for (producer_id, value) in log.producer_states()? {
        let mut recent = Recent::decode(&value)?;
        let before = recent.0.len();
        recent
            .0
            .retain(|&(_, base, count)| base + u64::from(count) <= end);
        if recent.0.len() != before {
            tracing::warn!(
                log = log.name(),
                producer_id,
                dropped = before - recent.0.len(),
                "producer state named batches lost in a crash; forgotten"
            );
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
