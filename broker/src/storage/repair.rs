//! `--repair-store`: verifies every stored chunk, keeps each partition log up to its first
//! damage, and records the synced offsets anew.
//!
//! The broker refuses a store whose `herald.offsets` is missing or unreadable (see
//! `storage::checkpoint`): sled recovers its log only up to the first damage, so without the
//! recorded offsets a shortened partition would look whole. A repair reads every chunk of
//! every partition (checksums included). A partition keeps its chunks up to the first one
//! that is damaged or missing; that chunk and everything after it are deleted, and the
//! partition continues from there, as Kafka truncates a log at its first invalid batch on
//! an unclean recovery. Each partition's findings are logged. Then `herald.offsets` is
//! written from what was kept.

use std::path::Path;

use super::checkpoint::{self, Marks};
use super::chunk::{self, Source};
use super::log::{Bounds, STATE_KEYS};
use super::records::TopicRecord;
use super::segment::{self, Segments};
use super::StorageError;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Stored values deleted at once past a log's first damage.
const DELETE_ROUND: usize = 4096;

/// What a repair found in one partition log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRepair {
    pub log: String,
    /// Intact chunks kept, and the records in them.
    pub chunks: u64,
    pub records: u64,
    /// Where the log continues: one past the last record kept.
    pub next: u64,
    /// Stored values deleted from the first damage on, and that damage.
    pub dropped_values: u64,
    pub damage: Option<String>,
}

/// Repairs every partition log of every topic in `db`, then writes `herald.offsets`.
/// Blocks.
pub(super) fn run(db: &sled::Db, dir: &Path) -> Result<(Marks, Vec<LogRepair>), StorageError> {
    let topics = db.open_tree("topics")?;
    let bounds = db.open_tree("partitions")?;
    let mut marks = Marks::new();
    let mut repairs = Vec::new();
    for entry in topics.iter() {
        let (name, value) = entry?;
        let topic = TopicRecord::decode(&name, &value)?;
        for partition in 0..topic.partitions {
            let log = super::log_tree_name(topic.id, partition);
            let segments = Segments::open(dir, &log, Arc::new(AtomicU64::new(0)))
                .map_err(|e| segment::io_error(&log, &e))?;
            let tree = db.open_tree(&log)?;
            let source = Source {
                log: &log,
                tree: &tree,
                segments: &segments,
            };
            let repair = repair_log(source, &bounds)?;
            match &repair.damage {
                None => tracing::info!(
                    log,
                    chunks = repair.chunks,
                    records = repair.records,
                    next = repair.next,
                    "repair: every stored chunk is intact"
                ),
                Some(damage) => tracing::warn!(
                    log,
                    chunks = repair.chunks,
                    records = repair.records,
                    next = repair.next,
                    dropped_values = repair.dropped_values,
                    damage,
                    "repair: kept the log up to its first damage, dropped the rest"
                ),
            }
            marks.insert(log, repair.next);
            repairs.push(repair);
        }
    }
    db.flush()?;
    checkpoint::write(dir, &marks)
        .map_err(|e| StorageError::Sled(format!("cannot write {}: {e}", checkpoint::FILE)))?;
    Ok((marks, repairs))
}

/// Verifies one log's chunks in order and deletes everything from the first damaged or
/// missing one on; updates the log's saved bounds to what was kept.
fn repair_log(source: Source<'_>, bounds: &sled::Tree) -> Result<LogRepair, StorageError> {
    let (name, tree) = (source.log, source.tree);
    let saved = match bounds.get(tree.name()) {
        Ok(Some(value)) => Bounds::decode(&value).ok(),
        _ => None,
    };
    let first = match tree.range(..STATE_KEYS).next() {
        Some(Ok((key, _))) => Some(chunk::offset_of(&key)),
        Some(Err(err)) => return Err(err.into()),
        None => None,
    };
    let mut repair = LogRepair {
        log: name.to_string(),
        chunks: 0,
        records: 0,
        next: first.unwrap_or_else(|| saved.map_or(0, |b| b.next)),
        dropped_values: 0,
        damage: None,
    };
    let mut bytes = 0;
    if let Some(first) = first {
        for stored in source.walk(first, u64::MAX) {
            match stored {
                Ok(chunk) => {
                    repair.chunks += 1;
                    repair.records += u64::from(chunk.batch.record_count);
                    repair.next = chunk.batch.next_offset();
                    bytes += chunk.stored_bytes;
                }
                Err(err) => {
                    repair.damage = Some(err.to_string());
                    break;
                }
            }
        }
        // Whatever lies beyond the last intact chunk is damaged or follows a hole; it is
        // deleted a round of keys at a time, so a store damaged near its start is not
        // listed in memory whole.
        loop {
            let round: Vec<sled::IVec> = tree
                .range(chunk::key(repair.next)..STATE_KEYS)
                .keys()
                .take(DELETE_ROUND)
                .collect::<Result<_, _>>()?;
            if round.is_empty() {
                break;
            }
            repair.dropped_values += round.len() as u64;
            let mut removals = sled::Batch::default();
            round.into_iter().for_each(|key| removals.remove(key));
            tree.apply_batch(removals)?;
        }
        if repair.dropped_values > 0 && repair.damage.is_none() {
            repair.damage = Some(format!(
                "no chunk starts at offset {}, though later ones are stored",
                repair.next
            ));
        }
    }
    // Without saved bounds the producer states may account for nothing: replay every tag.
    let states_through = match saved {
        None => 0,
        Some(b) => b.states_through.unwrap_or(b.next).min(repair.next),
    };
    let kept = Bounds {
        bytes,
        next: repair.next,
        states_through: Some(states_through),
    };
    bounds.insert(tree.name(), kept.encode())?;
    Ok(repair)
}
