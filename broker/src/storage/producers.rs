//! Idempotent producers: the last batches each producer appended to each partition, so a
//! batch sent again (after a lost confirm or a reconnect) is answered with its original
//! offsets instead of being stored twice.
//!
//! A producer numbers its batches to each partition 1, 2, 3, … The writer thread, which
//! alone appends, accepts the next number, answers a number it still remembers with the
//! offsets it gave then, and refuses anything else with `OutOfOrderSequence`. It remembers
//! the last [`KEEP`] batches per producer and partition — more than a client keeps in
//! flight — in the `producers` tree, written in one sled transaction with the batch, so
//! after any crash the store holds both or neither.

use std::collections::{HashMap, VecDeque};

use super::StorageError;

/// Batches remembered per producer and partition.
pub(super) const KEEP: usize = 16;

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
    tree: sled::Tree,
    cache: HashMap<(String, u64), Recent>,
}

impl Producers {
    pub(super) fn new(tree: sled::Tree) -> Producers {
        Producers {
            tree,
            cache: HashMap::new(),
        }
    }

    pub(super) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Decides what to do with `batch` from `producer` for `log`.
    pub(super) fn check(
        &mut self,
        log: &str,
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
            "producer {} sent batch {} to {log}; the next one is {}{}",
            producer.producer_id,
            producer.sequence,
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

    /// The key and value that record `producer`'s batch at `base_offset` — to be written
    /// in the same transaction as the batch — and the state to keep once it is.
    pub(super) fn after(
        &mut self,
        log: &str,
        producer: ProducerBatch,
        base_offset: u64,
        count: u32,
    ) -> Result<(Vec<u8>, Vec<u8>, Recent), StorageError> {
        let mut recent = self.recent(log, producer.producer_id)?.clone();
        recent.0.push_back((producer.sequence, base_offset, count));
        while recent.0.len() > KEEP {
            recent.0.pop_front();
        }
        let value = recent.encode();
        Ok((key(log, producer.producer_id), value, recent))
    }

    /// Keeps `recent` as `producer`'s state once its batch is stored.
    pub(super) fn remember(&mut self, log: &str, producer_id: u64, recent: Recent) {
        self.cache.insert((log.to_string(), producer_id), recent);
    }

    /// Forgets every producer of a deleted log.
    pub(super) fn forget(&mut self, log: &str) -> Result<(), StorageError> {
        self.cache.retain(|(name, _), _| name != log);
        for key in self.tree.scan_prefix(prefix(log)).keys() {
            self.tree.remove(key?)?;
        }
        Ok(())
    }

    fn recent(&mut self, log: &str, producer_id: u64) -> Result<&Recent, StorageError> {
        let entry = (log.to_string(), producer_id);
        if !self.cache.contains_key(&entry) {
            let stored = match self.tree.get(key(log, producer_id))? {
                Some(value) => Recent::decode(&value)?,
                None => Recent::default(),
            };
            self.cache.insert(entry.clone(), stored);
        }
        Ok(&self.cache[&entry])
    }
}

fn prefix(log: &str) -> Vec<u8> {
    [log.as_bytes(), b"/"].concat()
}

fn key(log: &str, producer_id: u64) -> Vec<u8> {
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
