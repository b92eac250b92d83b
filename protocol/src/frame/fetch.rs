//! Pull consuming: fetch and consumer-group membership frames.

use bytes::Bytes;

use crate::wire::{wire_enum, wire_struct};

wire_enum! {
    /// Where a new group starts.
    pub enum StartPosition {
        /// The first retained record.
        Earliest = 0,
        /// The next record published.
        Latest = 1,
    }
}

wire_struct! {
    /// Client → broker: read records from one partition. Answered by `FetchOk`.
    ///
    /// ```text
    /// +--------+-----------+--------+--------------+-----------+-------------+-----------+
    /// | topic  | partition | offset | max_messages | max_bytes | max_wait_ms | min_bytes |
    /// | string |    u32    |  u64   |     u32      |    u32    |     u32     |    u32    |
    /// +--------+-----------+--------+--------------+-----------+-------------+-----------+
    /// ```
    /// The answer comes as soon as `min_bytes` of records are available or `max_wait_ms`
    /// passed. `max_bytes` bounds the answer, except that a first record larger than it is
    /// still returned alone so a consumer can always progress.
    pub struct Fetch {
        pub topic: String,
        pub partition: u32,
        pub offset: u64,
        pub max_messages: u32,
        pub max_bytes: u32,
        pub max_wait_ms: u32,
        pub min_bytes: u32,
    }
}

wire_struct! {
    /// Broker → client: records from one partition.
    ///
    /// ```text
    /// +-----------+--------------+-------------+---------+
    /// | partition | first_offset | next_offset | batches |
    /// |    u32    |     u64      |     u64     |  bytes  |
    /// +-----------+--------------+-------------+---------+
    /// ```
    /// `batches` holds zero or more record batches end to end, starting exactly at the
    /// requested offset. `first_offset` and `next_offset` are the partition's bounds now.
    pub struct FetchOk {
        pub partition: u32,
        pub first_offset: u64,
        pub next_offset: u64,
        pub batches: Bytes,
    }
}

wire_struct! {
    /// Client → broker: join a pull group. Answered by `Assignment`.
    ///
    /// ```text
    /// +--------+--------+-----------+-------+
    /// | topic  | group  | member_id | start |
    /// | string | string |  string   |  u8   |
    /// +--------+--------+-----------+-------+
    /// ```
    /// An empty `member_id` asks for a new one; `start` applies when the group is new.
    pub struct JoinGroup {
        pub topic: String,
        pub group: String,
        pub member_id: String,
        pub start: StartPosition,
    }
}

wire_struct! {
    /// One partition a member owns, and the offset to consume from.
    ///
    /// ```text
    /// +-----------+-----------+
    /// | partition | committed |
    /// |    u32    |    u64    |
    /// +-----------+-----------+
    /// ```
    pub struct AssignedPartition {
        pub partition: u32,
        pub committed: u64,
    }
}

wire_struct! {
    /// Broker → client: a member's identity and partitions in the current generation.
    ///
    /// ```text
    /// +-----------+------------+-------------------------+
    /// | member_id | generation | partitions              |
    /// |  string   |    u32     | list<AssignedPartition> |
    /// +-----------+------------+-------------------------+
    /// ```
    pub struct Assignment {
        pub member_id: String,
        pub generation: u32,
        pub partitions: Vec<AssignedPartition>,
    }
}

wire_struct! {
    /// Client → broker: report partitions released (after committing them) and ask for the
    /// current assignment. Answered by `Assignment`.
    ///
    /// ```text
    /// +--------+--------+-----------+------------+-----------+
    /// | topic  | group  | member_id | generation | released  |
    /// | string | string |  string   |    u32     | list<u32> |
    /// +--------+--------+-----------+------------+-----------+
    /// ```
    pub struct SyncGroup {
        pub topic: String,
        pub group: String,
        pub member_id: String,
        pub generation: u32,
        pub released: Vec<u32>,
    }
}

wire_struct! {
    /// Client → broker: leave a pull group; its partitions are reassigned. Answered by `Ok`.
    pub struct LeaveGroup {
        pub topic: String,
        pub group: String,
        pub member_id: String,
    }
}

wire_struct! {
    /// A partition and an offset.
    pub struct PartitionOffset {
        pub partition: u32,
        pub offset: u64,
    }
}

wire_struct! {
    /// Client → broker: commit offsets (the next offset to consume) for owned partitions.
    /// Answered by `CommitOk`.
    ///
    /// ```text
    /// +--------+--------+-----------+------------+-----------------------+
    /// | topic  | group  | member_id | generation | offsets               |
    /// | string | string |  string   |    u32     | list<PartitionOffset> |
    /// +--------+--------+-----------+------------+-----------------------+
    /// ```
    /// For a group with no members (a standalone reader), `member_id` is empty and
    /// `generation` 0.
    pub struct Commit {
        pub topic: String,
        pub group: String,
        pub member_id: String,
        pub generation: u32,
        pub offsets: Vec<PartitionOffset>,
    }
}

wire_struct! {
    /// Broker → client: the commit is stored. `generation u32` is the group's current
    /// generation; a member whose generation differs sends `SyncGroup`.
    pub struct CommitOk {
        pub generation: u32,
    }
}
