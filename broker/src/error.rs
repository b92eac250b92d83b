//! The broker's error type and its mapping to the protocol's stable error codes.

use herald_protocol::{DecodeError, ErrorCode, ErrorFrame};

use crate::storage::StorageError;

/// Why a request failed. Each variant maps to one [`ErrorCode`] sent in the error frame.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid topic name {0:?}: names are 1 to 200 of A-Z a-z 0-9 . _ -")]
    InvalidTopicName(String),
    #[error("invalid group name {0:?}: names are 1 to 200 of A-Z a-z 0-9 . _ -")]
    InvalidGroupName(String),
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("a publish must carry at least one record")]
    EmptyBatch,
    #[error("a record of {size} bytes exceeds the maximum message size of {max} bytes")]
    MessageTooLarge { size: usize, max: u32 },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("offset {offset} is out of range: the partition holds {first}..{next}")]
    OffsetOutOfRange { offset: u64, first: u64, next: u64 },
    #[error("malformed record batch: {0}")]
    BadBatch(DecodeError),
    #[error("group {group:?} is a {actual} group, not {requested}")]
    GroupModeMismatch {
        group: String,
        actual: &'static str,
        requested: &'static str,
    },
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    #[error(
        "group {group:?} is at generation {current}, not {sent}: sync to learn the new assignment"
    )]
    StaleGeneration {
        group: String,
        sent: u32,
        current: u32,
    },
    #[error("member {member:?} does not own partition {partition} of group {group:?}")]
    NotPartitionOwner {
        group: String,
        member: String,
        partition: u32,
    },
    #[error(
        "{member:?} is not a member of group {group:?}: it left or its session ended; join again"
    )]
    UnknownMember { group: String, member: String },
    #[error("group {group:?} has {members} member(s); {action} needs a group without members")]
    GroupNotEmpty {
        group: String,
        members: usize,
        action: &'static str,
    },
    #[error("group {0:?} already exists")]
    GroupExists(String),
    #[error("subscription {0} is not active on this connection")]
    UnknownSubscription(u64),
    #[error("the broker holds its maximum of {0} topics")]
    TooManyTopics(usize),
    #[error("the store takes {used} bytes on disk; {more} more would pass the quota of {max} (--max-disk-bytes)")]
    StorageFull { used: u64, more: u64, max: u64 },
    #[error("free disk space for the store is {free} bytes, at or below the reserve of {reserve} bytes (--min-free-disk-bytes); publishing resumes once retention, a deleted topic or the operator frees space")]
    DiskFull { free: u64, reserve: u64 },
    #[error("a topic has at most {max} partitions on this broker, not {asked}")]
    TooManyPartitions { asked: u32, max: u32 },
    #[error("a batch of {records} records exceeds the broker's maximum of {max} per publish")]
    BatchTooLarge { records: u32, max: u32 },
    #[error("group {group:?} already has the broker's maximum of {max} consumers")]
    TooManyConsumers { group: String, max: usize },
    #[error("{0}")]
    NotSupported(&'static str),
    #[error("the broker is shutting down")]
    ShuttingDown,
    #[error("authentication required: this broker runs with --auth; log in first (SASL after Hello, or an Authorization header, a herald_token cookie or ?access_token= over HTTP)")]
    AuthenticationRequired,
    #[error("authentication failed: {0}")]
    AuthenticationFailed(String),
    #[error("not authorized: user {user:?} may not {operation} {resource}")]
    NotAuthorized {
        user: String,
        operation: crate::auth::rules::Operation,
        /// `topic "orders"`, or `users, tokens and rules`.
        resource: String,
    },
    #[error("the session's credentials were revoked (its user deleted, its token revoked, or its rules changed)")]
    CredentialsRevoked,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl BrokerError {
    /// The stable code sent for this error.
    pub fn code(&self) -> ErrorCode {
        use BrokerError::*;
        match self {
            InvalidTopicName(_) => ErrorCode::InvalidTopicName,
            InvalidGroupName(_) | InvalidArgument(_) => ErrorCode::InvalidArgument,
            UnknownTopic(_) => ErrorCode::UnknownTopic,
            TopicExists(_) => ErrorCode::TopicExists,
            UnknownPartition { .. } => ErrorCode::UnknownPartition,
            EmptyBatch => ErrorCode::EmptyBatch,
            MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            BadBatch(_) => ErrorCode::MalformedFrame,
            GroupModeMismatch { .. } => ErrorCode::GroupModeMismatch,
            UnknownGroup(_) => ErrorCode::UnknownGroup,
            StaleGeneration { .. } => ErrorCode::StaleGeneration,
            NotPartitionOwner { .. } => ErrorCode::NotPartitionOwner,
            UnknownMember { .. } => ErrorCode::UnknownMember,
            GroupNotEmpty { .. } => ErrorCode::GroupNotEmpty,
            GroupExists(_) => ErrorCode::GroupExists,
            UnknownSubscription(_) => ErrorCode::UnknownSubscription,
            TooManyTopics(_) => ErrorCode::TooManyTopics,
            TooManyPartitions { .. } => ErrorCode::TooManyTopics,
            StorageFull { .. } | DiskFull { .. } => ErrorCode::StorageFull,
            BatchTooLarge { .. } => ErrorCode::BatchTooLarge,
            TooManyConsumers { .. } => ErrorCode::TooManyConsumers,
            NotSupported(_) => ErrorCode::NotSupported,
            ShuttingDown => ErrorCode::ShuttingDown,
            AuthenticationRequired => ErrorCode::AuthenticationRequired,
            AuthenticationFailed(_) => ErrorCode::AuthenticationFailed,
            NotAuthorized { .. } => ErrorCode::NotAuthorized,
            CredentialsRevoked => ErrorCode::CredentialsRevoked,
            Storage(StorageError::Deleted) => ErrorCode::UnknownTopic,
            Storage(StorageError::Sequence(_)) => ErrorCode::OutOfOrderSequence,
            Storage(StorageError::NoSpace(_)) => ErrorCode::StorageFull,
            Storage(_) => ErrorCode::StorageError,
        }
    }

    /// The error frame that reports this error.
    pub fn to_frame(&self) -> ErrorFrame {
        match self {
            BrokerError::OffsetOutOfRange { first, next, .. } => {
                ErrorFrame::offset_out_of_range(*first, *next, self.to_string())
            }
            other => ErrorFrame::new(other.code(), other.to_string()),
        }
    }
}

/// Checks a topic or group name against `[A-Za-z0-9._-]{1,200}`.
pub fn valid_name(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
