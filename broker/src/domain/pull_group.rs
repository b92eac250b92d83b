//! Pull groups: members, their partitions, and the group's committed offsets.
//!
//! A group is created on first use (a join or a commit) with the start position its first
//! consumer asks for, and its record and committed offsets live in sled. Membership lives
//! in memory: after a restart every member joins again, and the committed offsets are
//! where they resume. Who owns which partition is decided by [`Membership`].
//!
//! Every operation on a group's membership and offsets happens under one lock, so a
//! commit's ownership check and the new committed offset are one step: a partition cannot
//! move between them, and the member it moves to starts exactly where the commit left it.
//! The lock is never held across a wait: commits are queued for the storage writer under
//! it and awaited outside it (writes reach sled in the order they were queued).
//!
//! Decisions where the design is silent:
//! - A commit without a member id (a standalone reader's) is accepted only while the group
//!   has no members, so it can never overwrite a member's progress.
//! - `reset --to OFFSET` clamps the offset to each partition's retained range, as
//!   partitions differ in length.
//! - Releasing a partition the member does not own is ignored: a client that retries a
//!   release after a lost reply must not fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::BrokerError;
use crate::storage::{GroupRecord, Store};

use super::assignment::{Member, Membership};
use super::blocking;
use super::group::{check_group, check_name, mode_name};
use super::group::{Start, MODE_PULL};
use super::Topic;

/// Where `reset` moves a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    Offset(u64),
}

/// What a member should consume: its partitions, each with the offset to resume from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub member_id: String,
    pub generation: u32,
    pub partitions: Vec<(u32, u64)>,
}

/// A group as `describe` shows it.
#[derive(Debug, Clone)]
pub struct Described {
    pub record: GroupRecord,
    pub generation: u32,
    /// Member id, address and owned partitions.
    pub members: Vec<(String, String, Vec<u32>)>,
    pub partitions: Vec<Progress>,
}

/// A group's progress on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub partition: u32,
    pub owner: Option<String>,
    pub committed: u64,
    pub end: u64,
}

/// Who is joining: the session it arrives on and the client's address.
#[derive(Debug, Clone)]
pub struct Joiner {
    pub session: u64,
    pub address: String,
}

/// A topic id and a group name.
type GroupKey = (u64, String);

/// One group's live state.
struct GroupState {
    membership: Membership,
    /// The committed offset of every partition, as last written to sled.
    committed: Vec<u64>,
}

/// The broker's pull groups.
pub struct PullGroups {
    store: Arc<Store>,
    groups: Mutex<HashMap<GroupKey, GroupState>>,
    /// Serialises creating groups in sled, so two first joins agree on the start.
    creating: Arc<Mutex<()>>,
    /// Makes generated member ids unique across broker restarts.
    incarnation: u64,
    next_member: AtomicU64,
    /// Most members of one group (`--max-consumers-per-group`).
    max_members: usize,
}

impl PullGroups {
    pub fn new(store: Arc<Store>, max_members: usize) -> Self {
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        PullGroups {
            store,
            groups: Mutex::new(HashMap::new()),
            creating: Arc::new(Mutex::new(())),
            incarnation,
            next_member: AtomicU64::new(1),
            max_members,
        }
    }

    /// Adds a member (a new one when `member_id` is empty) and returns what it may consume
    /// now. Creates the group at `start` if it is new.
    pub async fn join(
        &self,
        topic: &Arc<Topic>,
        group: &str,
        member_id: &str,
        start: Start,
        joiner: Joiner,
    ) -> Result<Granted, BrokerError> {
        check_group(group)?;
        let member_id = if member_id.is_empty() {
            let n = self.next_member.fetch_add(1, Ordering::Relaxed);
            format!("{group}-{:x}-{n}", self.incarnation)
        } else {
            check_name(member_id, || {
                BrokerError::InvalidArgument(format!(
                    "invalid member id {member_id:?}: ids are 1 to 200 of A-Z a-z 0-9 . _ -"
                ))
            })?;
            member_id.to_string()
        };
        self.load(topic, group, Some(start)).await?;
        let mut groups = self.lock();
        let state = state_of(&mut groups, topic, group)?;
        let members = state.membership.members().count();
        if state.membership.member(&member_id).is_none() && members >= self.max_members {
            return Err(BrokerError::TooManyConsumers {
                group: group.to_string(),
                max: self.max_members,
            });
        }
        state.membership.join(
            &member_id,
            Member {
                session: joiner.session,
                address: joiner.address,
            },
        );
        tracing::info!(
            topic = topic.name(),
            group,
            member = member_id,
            generation = state.membership.generation(),
            "member joined"
        );
        Ok(granted(state, topic, &member_id))
    }

    /// Takes back the partitions a member released and returns what it may consume now.
    pub fn sync(
        &self,
        topic: &Topic,
        group: &str,
        member_id: &str,
        released: &[u32],
    ) -> Result<Granted, BrokerError> {
        let mut groups = self.lock();
        let state = member_state(&mut groups, topic, group, member_id)?;
        if !released.is_empty() {
            state.membership.release(member_id, released);
            tracing::debug!(group, member = member_id, ?released, "partitions released");
        }
        Ok(granted(state, topic, member_id))
    }

    /// Removes a member; its partitions go to the others.
    pub fn leave(&self, topic: &Topic, group: &str, member_id: &str) -> Result<(), BrokerError> {
        let mut groups = self.lock();
        let state = member_state(&mut groups, topic, group, member_id)?;
        state.membership.leave(member_id);
        tracing::info!(group, member = member_id, "member left");
        Ok(())
    }

    /// Removes every member that joined on `session`, which has ended.
    pub fn session_closed(&self, session: u64) {
        let mut groups = self.lock();
        for ((_, group), state) in groups.iter_mut() {
            for member in state.membership.members_of_session(session) {
                state.membership.leave(&member);
                tracing::info!(group, member, "member removed: its session ended");
            }
        }
    }

    /// Forgets the live state of a deleted topic's groups.
    pub fn topic_deleted(&self, topic_id: u64) {
        self.lock().retain(|(id, _), _| *id != topic_id);
    }

    /// Stores committed offsets (the next offset to consume) and returns the group's
    /// generation. A member's commit must carry the current generation and name only
    /// partitions it owns; a commit without a member needs a group without members.
    pub async fn commit(
        &self,
        topic: &Arc<Topic>,
        group: &str,
        member_id: &str,
        generation: u32,
        offsets: &[(u32, u64)],
    ) -> Result<u32, BrokerError> {
        check_group(group)?;
        for &(partition, offset) in offsets {
            let log = topic.partition(partition)?;
            if offset > log.next_offset() {
                return Err(BrokerError::OffsetOutOfRange {
                    offset,
                    first: log.first_offset(),
                    next: log.next_offset(),
                });
            }
        }
        self.load(topic, group, Some(Start::Earliest)).await?;
        let (written, current) = {
            let mut groups = self.lock();
            let state = state_of(&mut groups, topic, group)?;
            let membership = &state.membership;
            let current = membership.generation();
            if member_id.is_empty() {
                if !membership.is_empty() {
                    return Err(not_empty(group, membership, "a commit without a member id"));
                }
            } else {
                if membership.member(member_id).is_none() {
                    return Err(unknown_member(group, member_id));
                }
                if generation != current {
                    return Err(BrokerError::StaleGeneration {
                        group: group.to_string(),
                        sent: generation,
                        current,
                    });
                }
                if let Some(&(partition, _)) = offsets
                    .iter()
                    .find(|(p, _)| !membership.owns(member_id, *p))
                {
                    return Err(BrokerError::NotPartitionOwner {
                        group: group.to_string(),
                        member: member_id.to_string(),
                        partition,
                    });
                }
            }
            for &(partition, offset) in offsets {
                state.committed[partition as usize] = offset;
            }
            let written = self.store.queue_offsets(topic.record().id, group, offsets);
            (written, current)
        };
        crate::storage::bounded(written, self.store.timeout()).await?;
        Ok(current)
    }

    /// Moves a group without members on every partition.
    pub async fn reset(
        &self,
        topic: &Arc<Topic>,
        group: &str,
        to: ResetTo,
    ) -> Result<(), BrokerError> {
        self.load(topic, group, None).await?;
        let written = {
            let mut groups = self.lock();
            let state = state_of(&mut groups, topic, group)?;
            if !state.membership.is_empty() {
                return Err(not_empty(group, &state.membership, "a reset"));
            }
            let offsets: Vec<(u32, u64)> = topic
                .partitions()
                .iter()
                .enumerate()
                .map(|(p, log)| {
                    let (first, next) = (log.first_offset(), log.next_offset());
                    let offset = match to {
                        ResetTo::Earliest => first,
                        ResetTo::Latest => next,
                        ResetTo::Offset(offset) => offset.clamp(first, next),
                    };
                    (p as u32, offset)
                })
                .collect();
            for &(p, offset) in &offsets {
                state.committed[p as usize] = offset;
            }
            self.store.queue_offsets(topic.record().id, group, &offsets)
        };
        crate::storage::bounded(written, self.store.timeout()).await?;
        tracing::info!(topic = topic.name(), group, ?to, "group reset");
        Ok(())
    }

    /// Creates a pull group at `start`; fails if it exists.
    pub async fn create(
        &self,
        topic: &Arc<Topic>,
        group: &str,
        start: Start,
    ) -> Result<(), BrokerError> {
        check_group(group)?;
        let (store, creating) = (Arc::clone(&self.store), Arc::clone(&self.creating));
        let (topic, name) = (Arc::clone(topic), group.to_string());
        blocking(move || {
            let _creating = creating.lock().unwrap_or_else(|e| e.into_inner());
            if store.group(topic.record().id, &name)?.is_some() {
                return Err(BrokerError::GroupExists(name));
            }
            create_blocking(&store, &topic, &name, MODE_PULL, start)
        })
        .await
    }

    /// Deletes a group without members and everything stored for it.
    pub async fn delete(&self, topic: &Arc<Topic>, group: &str) -> Result<(), BrokerError> {
        self.load(topic, group, None).await?;
        {
            let mut groups = self.lock();
            let state = state_of(&mut groups, topic, group)?;
            if !state.membership.is_empty() {
                return Err(not_empty(group, &state.membership, "deleting it"));
            }
            groups.remove(&(topic.record().id, group.to_string()));
        }
        let (store, topic, group) = (
            Arc::clone(&self.store),
            Arc::clone(topic),
            group.to_string(),
        );
        blocking(move || {
            let partitions = topic.partitions().len() as u32;
            Ok(store.delete_group(topic.record().id, &group, partitions)?)
        })
        .await
    }

    /// Every group of a topic with its mode and member count, sorted by name.
    pub async fn list(&self, topic: &Arc<Topic>) -> Result<Vec<(String, u8, u32)>, BrokerError> {
        let (store, id) = (Arc::clone(&self.store), topic.record().id);
        let stored = blocking(move || Ok(store.groups(id)?)).await?;
        let groups = self.lock();
        Ok(stored
            .into_iter()
            .map(|(name, record)| {
                let members = groups
                    .get(&(id, name.clone()))
                    .map_or(0, |s| s.membership.members().count() as u32);
                (name, record.mode, members)
            })
            .collect())
    }

    /// A pull group's settings, members and progress (a push group's stored record only);
    /// `None` if it does not exist.
    pub async fn describe(
        &self,
        topic: &Arc<Topic>,
        group: &str,
    ) -> Result<Option<Described>, BrokerError> {
        let (store, id, name) = (
            Arc::clone(&self.store),
            topic.record().id,
            group.to_string(),
        );
        let Some(record) = blocking(move || Ok(store.group(id, &name)?)).await? else {
            return Ok(None);
        };
        if record.mode != MODE_PULL {
            // A push group: its dispatcher describes its progress.
            return Ok(Some(Described {
                record,
                generation: 0,
                members: Vec::new(),
                partitions: Vec::new(),
            }));
        }
        self.load(topic, group, None).await?;
        let mut groups = self.lock();
        let state = state_of(&mut groups, topic, group)?;
        let membership = &state.membership;
        let members = membership
            .members()
            .map(|(id, m)| (id.to_string(), m.address.clone(), membership.owned_by(id)))
            .collect();
        let partitions = progress(topic, &state.committed, |p| {
            membership.owner(p).map(str::to_string)
        });
        Ok(Some(Described {
            record,
            generation: membership.generation(),
            members,
            partitions,
        }))
    }

    /// Makes sure the group's live state is loaded: creates the group at `start` if it is
    /// new (or fails with `UnknownGroup` when `start` is `None`), checks it is a pull group
    /// and reads its committed offsets.
    async fn load(
        &self,
        topic: &Arc<Topic>,
        group: &str,
        start: Option<Start>,
    ) -> Result<(), BrokerError> {
        if self
            .lock()
            .contains_key(&(topic.record().id, group.to_string()))
        {
            return Ok(());
        }
        let (store, creating) = (Arc::clone(&self.store), Arc::clone(&self.creating));
        let (t, name) = (Arc::clone(topic), group.to_string());
        let committed = blocking(move || {
            {
                let _creating = creating.lock().unwrap_or_else(|e| e.into_inner());
                match (store.group(t.record().id, &name)?, start) {
                    (Some(record), _) if record.mode != MODE_PULL => {
                        return Err(BrokerError::GroupModeMismatch {
                            group: name,
                            actual: mode_name(record.mode),
                            requested: mode_name(MODE_PULL),
                        })
                    }
                    (Some(_), _) => {}
                    (None, Some(start)) => create_blocking(&store, &t, &name, MODE_PULL, start)?,
                    (None, None) => return Err(BrokerError::UnknownGroup(name)),
                }
            }
            read_offsets(&store, &t, &name)
        })
        .await?;
        let partitions = topic.partitions().len() as u32;
        self.lock()
            .entry((topic.record().id, group.to_string()))
            .or_insert_with(|| GroupState {
                membership: Membership::new(partitions),
                committed,
            });
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<GroupKey, GroupState>> {
        // The state is only changed by whole-step methods that cannot panic half-way.
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn state_of<'a>(
    groups: &'a mut HashMap<GroupKey, GroupState>,
    topic: &Topic,
    group: &str,
) -> Result<&'a mut GroupState, BrokerError> {
    groups
        .get_mut(&(topic.record().id, group.to_string()))
        .ok_or_else(|| BrokerError::UnknownGroup(group.to_string()))
}

fn member_state<'a>(
    groups: &'a mut HashMap<GroupKey, GroupState>,
    topic: &Topic,
    group: &str,
    member_id: &str,
) -> Result<&'a mut GroupState, BrokerError> {
    let state = state_of(groups, topic, group).map_err(|_| unknown_member(group, member_id))?;
    if state.membership.member(member_id).is_none() {
        return Err(unknown_member(group, member_id));
    }
    Ok(state)
}

fn granted(state: &GroupState, topic: &Topic, member_id: &str) -> Granted {
    let partitions = state
        .membership
        .granted(member_id)
        .into_iter()
        .map(|p| {
            let first = topic.partitions()[p as usize].first_offset();
            (p, state.committed[p as usize].max(first))
        })
        .collect();
    Granted {
        member_id: member_id.to_string(),
        generation: state.membership.generation(),
        partitions,
    }
}

fn progress(
    topic: &Topic,
    committed: &[u64],
    owner: impl Fn(u32) -> Option<String>,
) -> Vec<Progress> {
    topic
        .partitions()
        .iter()
        .enumerate()
        .map(|(p, log)| Progress {
            partition: p as u32,
            owner: owner(p as u32),
            committed: committed[p].max(log.first_offset()),
            end: log.next_offset(),
        })
        .collect()
}

fn unknown_member(group: &str, member_id: &str) -> BrokerError {
    BrokerError::UnknownMember {
        group: group.to_string(),
        member: member_id.to_string(),
    }
}

fn not_empty(group: &str, membership: &Membership, action: &'static str) -> BrokerError {
    BrokerError::GroupNotEmpty {
        group: group.to_string(),
        members: membership.members().count(),
        action,
    }
}

/// Writes a new group's record and its start offsets. Blocks.
fn create_blocking(
    store: &Store,
    topic: &Topic,
    group: &str,
    mode: u8,
    start: Start,
) -> Result<(), BrokerError> {
    let offsets: Vec<(u32, u64)> = topic
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
    store.put_offsets(topic.record().id, group, &offsets)?;
    let record = GroupRecord {
        mode,
        ack_timeout_ms: 0,
        max_deliveries: 0,
        dead_letter: String::new(),
    };
    store.put_group(topic.record().id, group, record)?;
    Ok(())
}

/// A group's committed offset on every partition (the first offset where none is stored).
fn read_offsets(store: &Store, topic: &Topic, group: &str) -> Result<Vec<u64>, BrokerError> {
    topic
        .partitions()
        .iter()
        .enumerate()
        .map(|(p, log)| {
            let stored = store.offset(topic.record().id, p as u32, group)?;
            Ok(stored.unwrap_or(log.first_offset()))
        })
        .collect()
}
