//! Consumer-group administration frames, shared by push and pull groups.

use crate::frame::fetch::StartPosition;
use crate::wire::{wire_enum, wire_struct, Reader, Wire};
use crate::DecodeError;
use bytes::{BufMut, BytesMut};

wire_enum! {
    /// How a group consumes; fixed when the group is first used.
    pub enum GroupMode {
        /// Kafka-style: members fetch by offset and commit.
        Pull = 1,
        /// RabbitMQ-style: the broker delivers and each record is acked.
        Push = 2,
    }
}

wire_struct! {
    /// Client → broker: create a group with explicit settings. Answered by `Ok`.
    ///
    /// ```text
    /// +--------+--------+------+-------+----------------+----------------+-------------+
    /// | topic  | group  | mode | start | ack_timeout_ms | max_deliveries | dead_letter |
    /// | string | string |  u8  |  u8   |      u32       |      u32       |   string    |
    /// +--------+--------+------+-------+----------------+----------------+-------------+
    /// ```
    /// For push groups: `ack_timeout_ms` 0 = 30000, `max_deliveries` 0 = unlimited,
    /// an empty `dead_letter` = `<topic>.dlq`. Pull groups ignore the three.
    pub struct CreateGroup {
        pub topic: String,
        pub group: String,
        pub mode: GroupMode,
        pub start: StartPosition,
        pub ack_timeout_ms: u32,
        pub max_deliveries: u32,
        pub dead_letter: String,
    }
}

wire_struct! {
    /// Client → broker: list a topic's groups. Answered by `GroupList`.
    pub struct ListGroups {
        pub topic: String,
    }
}

wire_struct! {
    /// One group in a `GroupList`: `name string, mode u8, members u32`.
    pub struct GroupSummary {
        pub name: String,
        pub mode: GroupMode,
        pub members: u32,
    }
}

wire_struct! {
    /// Broker → client: `groups list<GroupSummary>`, sorted by name.
    pub struct GroupList {
        pub groups: Vec<GroupSummary>,
    }
}

wire_struct! {
    /// Client → broker: describe a group. Answered by `GroupInfo`.
    pub struct DescribeGroup {
        pub topic: String,
        pub group: String,
    }
}

wire_struct! {
    /// One member (pull) or consumer (push) of a group.
    ///
    /// ```text
    /// +-----------+---------+------------+-----------+-------------------+
    /// | member_id | address | partitions | in_flight | oldest_unacked_ms |
    /// |  string   | string  | list<u32>  |    u32    |        u64        |
    /// +-----------+---------+------------+-----------+-------------------+
    /// ```
    pub struct MemberInfo {
        pub member_id: String,
        pub address: String,
        pub partitions: Vec<u32>,
        pub in_flight: u32,
        pub oldest_unacked_ms: u64,
    }
}

wire_struct! {
    /// A group's progress on one partition. For push groups `committed` is the ack floor.
    ///
    /// ```text
    /// +-----------+--------+-----------+-----+-----+
    /// | partition | owner  | committed | end | lag |
    /// |    u32    | string |    u64    | u64 | u64 |
    /// +-----------+--------+-----------+-----+-----+
    /// ```
    pub struct GroupPartitionInfo {
        pub partition: u32,
        pub owner: String,
        pub committed: u64,
        pub end: u64,
        pub lag: u64,
    }
}

wire_struct! {
    /// Broker → client: a group's settings, members and progress.
    ///
    /// ```text
    /// +--------+--------+------+------------+----------------+----------------+-------------+
    /// | topic  | group  | mode | generation | ack_timeout_ms | max_deliveries | dead_letter |
    /// | string | string |  u8  |    u32     |      u32       |      u32       |   string    |
    /// +--------+--------+------+------------+----------------+----------------+-------------+
    /// +------------------+--------------------------+-------------+---------------+
    /// | members          | partitions               | redelivered | dead_lettered |
    /// | list<MemberInfo> | list<GroupPartitionInfo> |     u64     |      u64      |
    /// +------------------+--------------------------+-------------+---------------+
    /// ```
    pub struct GroupInfo {
        pub topic: String,
        pub group: String,
        pub mode: GroupMode,
        pub generation: u32,
        pub ack_timeout_ms: u32,
        pub max_deliveries: u32,
        pub dead_letter: String,
        pub members: Vec<MemberInfo>,
        pub partitions: Vec<GroupPartitionInfo>,
        pub redelivered: u64,
        pub dead_lettered: u64,
    }
}

/// Where `ResetGroup` moves a group: `kind u8` (0 earliest, 1 latest, 2 offset) then, for
/// kind 2, `offset u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResetTarget {
    #[default]
    Earliest,
    Latest,
    Offset(u64),
}

impl Wire for ResetTarget {
    fn put(&self, dst: &mut BytesMut) {
        match self {
            ResetTarget::Earliest => dst.put_u8(0),
            ResetTarget::Latest => dst.put_u8(1),
            ResetTarget::Offset(offset) => {
                dst.put_u8(2);
                dst.put_u64(*offset);
            }
        }
    }
    fn get(src: &mut Reader) -> Result<Self, DecodeError> {
        match u8::get(src)? {
            0 => Ok(ResetTarget::Earliest),
            1 => Ok(ResetTarget::Latest),
            2 => Ok(ResetTarget::Offset(u64::get(src)?)),
            other => Err(DecodeError::BadEnum {
                what: "ResetTarget",
                value: other.into(),
            }),
        }
    }
}

wire_struct! {
    /// Client → broker: move a group without members on every partition. Answered by `Ok`.
    /// `topic string, group string, to ResetTarget`.
    pub struct ResetGroup {
        pub topic: String,
        pub group: String,
        pub to: ResetTarget,
    }
}

wire_struct! {
    /// Client → broker: delete a group without members and its state. Answered by `Ok`.
    pub struct DeleteGroup {
        pub topic: String,
        pub group: String,
    }
}
