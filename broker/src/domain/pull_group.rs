//! Pull groups: a group's committed position on each partition of its topic.
//!
//! This is the first slice of Kafka-style groups: a group is created on first use with the
//! start position its first consumer asks for, its committed offsets live in sled, and a
//! joining member is handed every partition with the offset to resume from. Balanced,
//! sticky assignment across several members and generations arrive with group membership.

use std::sync::Arc;

use crate::error::{valid_name, BrokerError};
use crate::storage::{GroupRecord, Store};

use super::blocking;

use super::Topic;

/// Group mode numbers as stored (the protocol's `GroupMode` values).
pub const MODE_PULL: u8 = 1;
/// See [`MODE_PULL`].
pub const MODE_PUSH: u8 = 2;

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    Earliest,
    Latest,
}

/// A partition and the offset a member resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: u32,
    pub offset: u64,
}

/// A group's progress on one partition, for describing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub partition: u32,
    pub committed: u64,
    pub end: u64,
}

/// Pull-group operations over the store.
pub struct PullGroups {
    store: Arc<Store>,
}

impl PullGroups {
    pub fn new(store: Arc<Store>) -> Self {
        PullGroups { store }
    }

    /// Creates the group if it is new (positions fixed at `start`) and returns the position
    /// of every partition.
    pub async fn join(
        &self,
        topic: Arc<Topic>,
        group: &str,
        start: Start,
    ) -> Result<Vec<Position>, BrokerError> {
        check_group_name(group)?;
        let store = Arc::clone(&self.store);
        let group = group.to_string();
        blocking(move || join_blocking(&store, &topic, &group, start)).await
    }

    /// Stores committed offsets; each must be within the partition's bounds.
    pub async fn commit(
        &self,
        topic: Arc<Topic>,
        group: &str,
        offsets: Vec<(u32, u64)>,
    ) -> Result<(), BrokerError> {
        check_group_name(group)?;
        for &(partition, offset) in &offsets {
            let log = topic.partition(partition)?;
            if offset > log.next_offset() {
                return Err(BrokerError::OffsetOutOfRange {
                    offset,
                    first: log.first_offset(),
                    next: log.next_offset(),
                });
            }
        }
        let store = Arc::clone(&self.store);
        let group = group.to_string();
        blocking(move || {
            ensure_mode(&store, &topic, &group, MODE_PULL)?;
            store.put_offsets(topic.record().id, &group, &offsets)?;
            Ok(())
        })
        .await
    }

    /// Every group of a topic with its mode, sorted by name.
    pub async fn list(&self, topic: Arc<Topic>) -> Result<Vec<(String, u8)>, BrokerError> {
        let store = Arc::clone(&self.store);
        let groups = blocking(move || Ok(store.groups(topic.record().id)?)).await?;
        Ok(groups
            .into_iter()
            .map(|(name, record)| (name, record.mode))
            .collect())
    }

    /// A group's stored record and its progress on every partition.
    pub async fn describe(
        &self,
        topic: Arc<Topic>,
        group: &str,
    ) -> Result<Option<(GroupRecord, Vec<Progress>)>, BrokerError> {
        let store = Arc::clone(&self.store);
        let group = group.to_string();
        let described = blocking(move || {
            let Some(record) = store.group(topic.record().id, &group)? else {
                return Ok(None);
            };
            let mut progress = Vec::new();
            for (p, log) in topic.partitions().iter().enumerate() {
                let committed = store
                    .offset(topic.record().id, p as u32, &group)?
                    .unwrap_or(log.first_offset());
                progress.push(Progress {
                    partition: p as u32,
                    committed,
                    end: log.next_offset(),
                });
            }
            Ok(Some((record, progress)))
        })
        .await?;
        Ok(described)
    }
}

fn check_group_name(group: &str) -> Result<(), BrokerError> {
    if valid_name(group) {
        Ok(())
    } else {
        Err(BrokerError::InvalidGroupName(group.to_string()))
    }
}

fn mode_name(mode: u8) -> &'static str {
    if mode == MODE_PUSH {
        "push"
    } else {
        "pull"
    }
}

/// Creates the group in `mode` if it is new; fails if it exists in the other mode.
/// Returns whether it was created.
fn ensure_mode(store: &Store, topic: &Topic, group: &str, mode: u8) -> Result<bool, BrokerError> {
    match store.group(topic.record().id, group)? {
        Some(record) if record.mode == mode => Ok(false),
        Some(record) => Err(BrokerError::GroupModeMismatch {
            group: group.to_string(),
            actual: mode_name(record.mode),
            requested: mode_name(mode),
        }),
        None => {
            let record = GroupRecord {
                mode,
                ack_timeout_ms: 0,
                max_deliveries: 0,
                dead_letter: String::new(),
            };
            store.put_group(topic.record().id, group, record)?;
            Ok(true)
        }
    }
}

fn join_blocking(
    store: &Store,
    topic: &Topic,
    group: &str,
    start: Start,
) -> Result<Vec<Position>, BrokerError> {
    let id = topic.record().id;
    if ensure_mode(store, topic, group, MODE_PULL)? {
        let initial: Vec<(u32, u64)> = topic
            .partitions()
            .iter()
            .enumerate()
            .map(|(p, log)| {
                let offset = match start {
                    Start::Earliest => log.first_offset(),
                    Start::Latest => log.next_offset(),
                };
                (p as u32, offset)
            })
            .collect();
        store.put_offsets(id, group, &initial)?;
    }
    topic
        .partitions()
        .iter()
        .enumerate()
        .map(|(p, log)| {
            let committed = store
                .offset(id, p as u32, group)?
                .unwrap_or(log.first_offset());
            Ok(Position {
                partition: p as u32,
                offset: committed.max(log.first_offset()),
            })
        })
        .collect()
}
