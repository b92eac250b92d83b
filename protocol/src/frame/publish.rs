//! Publishing frames.

use bytes::Bytes;

use crate::wire::{wire_enum, wire_struct};

/// The `partition` value of a `Publish` that lets the broker choose: keyed records go to
/// `partition_for_key`, an unkeyed batch goes to the next partition round-robin.
pub const ANY_PARTITION: u32 = u32::MAX;

wire_struct! {
    /// Client → broker: append a batch of records. Answered by `PublishOk`.
    ///
    /// ```text
    /// +--------+-----------+-------------+----------+-------+
    /// | topic  | partition | producer_id | sequence | batch |
    /// | string |    u32    |     u64     |   u64    | bytes |
    /// +--------+-----------+-------------+----------+-------+
    /// ```
    /// `partition` is a partition number or `ANY_PARTITION` (0xffffffff). `producer_id` 0
    /// means an anonymous producer; otherwise `sequence` numbers this producer's batches to
    /// the partition from 1, so a resent batch is recognised and answered with its original
    /// offsets; such a batch names its partition. `batch` is one record batch.
    pub struct Publish {
        pub topic: String,
        pub partition: u32,
        pub producer_id: u64,
        pub sequence: u64,
        pub batch: Bytes,
    }
}

wire_enum! {
    /// How safe a confirmed record is.
    pub enum Durability {
        /// Handed to the store; lost if the machine fails before the next flush.
        Buffered = 0,
        /// Written out of the broker's process; survives a broker crash.
        Written = 1,
        /// fdatasync'ed: survives a power loss.
        Synced = 2,
    }
}

wire_struct! {
    /// A run of consecutive records of a publish that went to one partition.
    ///
    /// ```text
    /// +-----------+-------------+-------+
    /// | partition | base_offset | count |
    /// |    u32    |     u64     |  u32  |
    /// +-----------+-------------+-------+
    /// ```
    pub struct OffsetRun {
        pub partition: u32,
        pub base_offset: u64,
        pub count: u32,
    }
}

wire_struct! {
    /// Broker → client: the batch is stored.
    ///
    /// ```text
    /// +------------+----------------+
    /// | durability | runs           |
    /// |     u8     | list<OffsetRun>|
    /// +------------+----------------+
    /// ```
    /// The runs cover the batch's records in order: record `i` of the batch is record
    /// `i - (records in earlier runs)` of the run that contains it.
    pub struct PublishOk {
        pub durability: Durability,
        pub runs: Vec<OffsetRun>,
    }
}
