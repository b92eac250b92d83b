//! Reading by offset: fetch, and a group's committed positions.

use herald_protocol::{
    read_batches, Assignment, Commit, Fetch, JoinGroup, LeaveGroup, PartitionOffset, StartPosition,
    StoredRecord, SyncGroup,
};

use crate::client::{expect_reply, Client};
use crate::error::{Error, Result};

/// What to fetch. Build with [`FetchRequest::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub max_messages: u32,
    pub max_bytes: u32,
    /// How long the broker may wait for `min_bytes` to arrive; 0 answers at once.
    pub max_wait_ms: u32,
    pub min_bytes: u32,
}

impl FetchRequest {
    /// Up to 1,000 records / 1 MiB from `offset`, answered at once.
    pub fn new(topic: &str, partition: u32, offset: u64) -> Self {
        FetchRequest {
            topic: topic.to_string(),
            partition,
            offset,
            max_messages: 1000,
            max_bytes: 1024 * 1024,
            max_wait_ms: 0,
            min_bytes: 1,
        }
    }
}

/// Records read from one partition.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub partition: u32,
    /// The partition's first retained offset when the broker answered.
    pub first_offset: u64,
    /// The partition's next offset when the broker answered.
    pub next_offset: u64,
    /// The records, in offset order, starting at the requested offset.
    pub records: Vec<StoredRecord>,
}

impl Client {
    /// Reads records from one partition; no group is needed.
    pub async fn fetch(&self, request: FetchRequest) -> Result<Fetched> {
        let from = request.offset;
        let frame = Fetch {
            topic: request.topic,
            partition: request.partition,
            offset: request.offset,
            max_messages: request.max_messages,
            max_bytes: request.max_bytes,
            max_wait_ms: request.max_wait_ms,
            min_bytes: request.min_bytes,
        };
        let reply = expect_reply!(self.call(frame).await?, FetchOk)?;
        let batches = read_batches(reply.batches).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut records = Vec::new();
        for batch in &batches {
            for record in batch.iter() {
                let record = record.map_err(|e| Error::Protocol(e.to_string()))?;
                if record.offset >= from {
                    records.push(record);
                }
            }
        }
        Ok(Fetched {
            partition: reply.partition,
            first_offset: reply.first_offset,
            next_offset: reply.next_offset,
            records,
        })
    }

    /// Joins a pull group (created at `start` if new) as a new member and returns its
    /// member id, the group's generation and the partitions it may read, each with its
    /// committed offset. Most applications use [`Client::pull_consumer`] instead, which
    /// follows reassignments itself.
    pub async fn join_group(
        &self,
        topic: &str,
        group: &str,
        start: StartPosition,
    ) -> Result<Assignment> {
        self.rejoin_group(topic, group, "", start).await
    }

    /// Joins again under a known member id (keeping its partitions if it is still a
    /// member); an empty id joins as a new member.
    pub async fn rejoin_group(
        &self,
        topic: &str,
        group: &str,
        member_id: &str,
        start: StartPosition,
    ) -> Result<Assignment> {
        let request = JoinGroup {
            topic: topic.to_string(),
            group: group.to_string(),
            member_id: member_id.to_string(),
            start,
        };
        expect_reply!(self.call(request).await?, Assignment)
    }

    /// Hands back `released` partitions (commit them first) and returns the member's
    /// current assignment. A partition the member owns but that is missing from the answer
    /// is one it must commit and release.
    pub async fn sync_group(
        &self,
        topic: &str,
        group: &str,
        assignment: &Assignment,
        released: &[u32],
    ) -> Result<Assignment> {
        let request = SyncGroup {
            topic: topic.to_string(),
            group: group.to_string(),
            member_id: assignment.member_id.clone(),
            generation: assignment.generation,
            released: released.to_vec(),
        };
        expect_reply!(self.call(request).await?, Assignment)
    }

    /// Commits, for each partition, the next offset the group should read, and returns the
    /// group's generation (a member whose generation differs should sync). A member must
    /// own the partitions and carry the current generation; a standalone reader passes
    /// `Assignment::default()`, which the broker accepts while the group has no members.
    pub async fn commit(
        &self,
        topic: &str,
        group: &str,
        assignment: &Assignment,
        offsets: &[(u32, u64)],
    ) -> Result<u32> {
        let request = Commit {
            topic: topic.to_string(),
            group: group.to_string(),
            member_id: assignment.member_id.clone(),
            generation: assignment.generation,
            offsets: offsets
                .iter()
                .map(|&(partition, offset)| PartitionOffset { partition, offset })
                .collect(),
        };
        expect_reply!(self.call(request).await?, CommitOk).map(|ok| ok.generation)
    }

    /// Leaves a pull group; its partitions go to the other members.
    pub async fn leave_group(
        &self,
        topic: &str,
        group: &str,
        assignment: &Assignment,
    ) -> Result<()> {
        let request = LeaveGroup {
            topic: topic.to_string(),
            group: group.to_string(),
            member_id: assignment.member_id.clone(),
        };
        expect_reply!(self.call(request).await?, Ok).map(drop)
    }
}
