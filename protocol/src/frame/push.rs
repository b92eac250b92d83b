//! Push consuming: subscriptions, deliveries and the answers to them.

use bytes::Bytes;

use crate::frame::fetch::StartPosition;
use crate::wire::wire_struct;

wire_struct! {
    /// Client → broker: receive a push group's records. Answered by `Subscribed`.
    ///
    /// ```text
    /// +--------+--------+----------------+----------------+-------+
    /// | topic  | group  | prefetch_count | prefetch_bytes | start |
    /// | string | string |      u32       |      u32       |  u8   |
    /// +--------+--------+----------------+----------------+-------+
    /// ```
    /// The broker keeps at most `prefetch_count` unanswered deliveries (and, when
    /// `prefetch_bytes` is not 0, at most that many payload bytes) with this subscriber.
    pub struct Subscribe {
        pub topic: String,
        pub group: String,
        pub prefetch_count: u32,
        pub prefetch_bytes: u32,
        pub start: StartPosition,
    }
}

wire_struct! {
    /// Broker → client: the subscription is active.
    ///
    /// ```text
    /// +-----------------+----------------+----------------+
    /// | subscription_id | ack_timeout_ms | max_deliveries |
    /// |       u64       |      u32       |      u32       |
    /// +-----------------+----------------+----------------+
    /// ```
    pub struct Subscribed {
        pub subscription_id: u64,
        pub ack_timeout_ms: u32,
        pub max_deliveries: u32,
    }
}

wire_struct! {
    /// Client → broker: end a subscription; its unanswered deliveries return to the group.
    /// Answered by `Ok`.
    pub struct Unsubscribe {
        pub subscription_id: u64,
    }
}

wire_struct! {
    /// Broker → client (correlation id 0): records for a subscription.
    ///
    /// ```text
    /// +-----------------+-----------+-----------------+-------+
    /// | subscription_id | partition | delivery_counts | batch |
    /// |       u64       |    u32    |    list<u32>    | bytes |
    /// +-----------------+-----------+-----------------+-------+
    /// ```
    /// `batch` is one record batch of consecutive offsets; `delivery_counts[i]` is how many
    /// times record `i` has been delivered, this time included (1 = first delivery).
    pub struct Deliver {
        pub subscription_id: u64,
        pub partition: u32,
        pub delivery_counts: Vec<u32>,
        pub batch: Bytes,
    }
}

wire_struct! {
    /// The offsets `[start, end)` of one partition.
    ///
    /// ```text
    /// +-----------+-------+-----+
    /// | partition | start | end |
    /// |    u32    |  u64  | u64 |
    /// +-----------+-------+-----+
    /// ```
    pub struct OffsetRange {
        pub partition: u32,
        pub start: u64,
        pub end: u64,
    }
}

wire_struct! {
    /// Client → broker: these deliveries are done. Answered by `Ok`.
    /// `subscription_id u64, ranges list<OffsetRange>`.
    pub struct Ack {
        pub subscription_id: u64,
        pub ranges: Vec<OffsetRange>,
    }
}

wire_struct! {
    /// Client → broker: give these deliveries back to the group, now (`delay_ms` 0) or after
    /// `delay_ms`. Answered by `Ok`. `subscription_id u64, ranges list<OffsetRange>, delay_ms u32`.
    pub struct Nack {
        pub subscription_id: u64,
        pub ranges: Vec<OffsetRange>,
        pub delay_ms: u32,
    }
}

wire_struct! {
    /// Client → broker: send these deliveries to the dead-letter topic. Answered by `Ok`.
    /// `subscription_id u64, ranges list<OffsetRange>, reason string`.
    pub struct Reject {
        pub subscription_id: u64,
        pub ranges: Vec<OffsetRange>,
        pub reason: String,
    }
}

wire_struct! {
    /// Client → broker: still working on these deliveries; restart their ack deadline
    /// (`extend_ms` 0 = the group's ack timeout). Answered by `Ok`.
    /// `subscription_id u64, ranges list<OffsetRange>, extend_ms u32`.
    pub struct Touch {
        pub subscription_id: u64,
        pub ranges: Vec<OffsetRange>,
        pub extend_ms: u32,
    }
}
