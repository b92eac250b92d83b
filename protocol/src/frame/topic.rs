//! Topic administration frames.

use crate::wire::wire_struct;

wire_struct! {
    /// Per-partition retention limits; 0 means unlimited.
    ///
    /// ```text
    /// +------------+-----------+--------------+
    /// | max_age_ms | max_bytes | max_messages |
    /// |    u64     |    u64    |     u64      |
    /// +------------+-----------+--------------+
    /// ```
    pub struct Retention {
        pub max_age_ms: u64,
        pub max_bytes: u64,
        pub max_messages: u64,
    }
}

wire_struct! {
    /// Client → broker: create a topic. Answered by `TopicInfo`.
    ///
    /// ```text
    /// +--------+------------+-----------+
    /// |  name  | partitions | retention |
    /// | string |    u32     | Retention |
    /// +--------+------------+-----------+
    /// ```
    pub struct CreateTopic {
        pub name: String,
        pub partitions: u32,
        pub retention: Retention,
    }
}

wire_struct! {
    /// Client → broker: delete a topic and its records. Answered by `Ok`.
    pub struct DeleteTopic {
        pub name: String,
    }
}

wire_struct! {
    /// Client → broker: list every topic. Empty body; answered by `TopicList`.
    pub struct ListTopics {}
}

wire_struct! {
    /// One topic in a `TopicList`: `name string, partitions u32`.
    pub struct TopicSummary {
        pub name: String,
        pub partitions: u32,
    }
}

wire_struct! {
    /// Broker → client: `topics list<TopicSummary>`, sorted by name.
    pub struct TopicList {
        pub topics: Vec<TopicSummary>,
    }
}

wire_struct! {
    /// Client → broker: describe one topic. Answered by `TopicInfo`.
    pub struct DescribeTopic {
        pub name: String,
    }
}

wire_struct! {
    /// One partition in a `TopicInfo`.
    ///
    /// ```text
    /// +-----------+--------------+-------------+-------+
    /// | partition | first_offset | next_offset | bytes |
    /// |    u32    |     u64      |     u64     |  u64  |
    /// +-----------+--------------+-------------+-------+
    /// ```
    pub struct PartitionInfo {
        pub partition: u32,
        pub first_offset: u64,
        pub next_offset: u64,
        pub bytes: u64,
    }
}

wire_struct! {
    /// Broker → client: a topic's settings and partitions.
    ///
    /// ```text
    /// +--------+-----------+---------------------+
    /// |  name  | retention | partitions          |
    /// | string | Retention | list<PartitionInfo> |
    /// +--------+-----------+---------------------+
    /// ```
    pub struct TopicInfo {
        pub name: String,
        pub retention: Retention,
        pub partitions: Vec<PartitionInfo>,
    }
}
