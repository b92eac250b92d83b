//! Errors: what can go wrong reading bytes, and the stable error codes sent in error frames.

use std::fmt;

/// A frame body (or a record batch) that could not be decoded.
///
/// These are answered with an error frame; the stream itself is still in sync, because the
/// frame's length was known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame body ends early")]
    Truncated,
    #[error("{0} unexpected bytes after the frame body")]
    TrailingBytes(usize),
    #[error("invalid UTF-8 in a string")]
    BadUtf8,
    #[error("invalid varint")]
    BadVarint,
    #[error("invalid {what} value {value}")]
    BadEnum { what: &'static str, value: u64 },
    #[error("unknown opcode 0x{0:04x}")]
    UnknownOpcode(u16),
    #[error("invalid record batch: {0}")]
    BadBatch(&'static str),
}

/// A byte stream that cannot be continued: the connection must close.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u32 },
    #[error("frame length {0} is shorter than the frame header")]
    FrameTooShort(u32),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

macro_rules! error_codes {
    ($($(#[$meta:meta])* $name:ident = $code:literal,)*) => {
        /// The stable numeric codes carried by error frames.
        ///
        /// Numbers never change meaning; new codes are only ever added. The hundreds group
        /// them: 1xx session and framing, 2xx topics and publishing, 3xx consuming and groups,
        /// 4xx limits, 5xx the broker itself.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ErrorCode { $($(#[$meta])* $name = $code,)* }

        impl ErrorCode {
            /// Every code, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name,)*];

            /// The code for a number, if this version knows it.
            pub fn from_u16(code: u16) -> Option<ErrorCode> {
                match code {
                    $($code => Some(ErrorCode::$name),)*
                    _ => None,
                }
            }

            /// The code's name, as written in PROTOCOL.md.
            pub fn name(self) -> &'static str {
                match self { $(ErrorCode::$name => stringify!($name),)* }
            }
        }
    };
}

error_codes! {
    /// The client's protocol versions do not overlap the broker's.
    UnsupportedVersion = 100,
    /// A frame body could not be decoded.
    MalformedFrame = 101,
    /// The opcode is not one this broker knows.
    UnknownOpcode = 102,
    /// A request arrived before `Hello`.
    HelloRequired = 103,
    /// A frame that only the broker sends, or a second `Hello`.
    UnexpectedFrame = 104,
    /// The session ended because the peer was silent for the session timeout.
    SessionExpired = 105,
    /// The broker requires authentication (`--auth`) and this session has not.
    AuthenticationRequired = 106,
    /// Wrong credentials, an unknown, expired or revoked token, or a mechanism this
    /// connection may not use.
    AuthenticationFailed = 107,
    /// The authenticated user may not do this; the message names the operation and the
    /// resource. The session lives on.
    NotAuthorized = 108,
    /// The session's user was deleted or its token revoked: the session ends.
    CredentialsRevoked = 109,

    /// A topic name outside `[A-Za-z0-9._-]{1,200}`.
    InvalidTopicName = 200,
    /// The topic does not exist (and auto-creation is off or does not apply).
    UnknownTopic = 201,
    /// The topic already exists.
    TopicExists = 202,
    /// The partition does not exist in the topic.
    UnknownPartition = 203,
    /// A publish with no records.
    EmptyBatch = 204,
    /// One record is larger than the maximum message size.
    MessageTooLarge = 205,
    /// A request field is out of its allowed range.
    InvalidArgument = 206,
    /// A fetch below the first retained offset or beyond the next offset.
    /// Detail: `first_offset u64, next_offset u64`.
    OffsetOutOfRange = 207,
    /// A producer sequence number that is neither the next one nor a known duplicate.
    OutOfOrderSequence = 208,

    /// The group does not exist.
    UnknownGroup = 300,
    /// The group exists in the other mode (push vs pull).
    GroupModeMismatch = 301,
    /// A request carried an older group generation.
    StaleGeneration = 302,
    /// The member does not own the partition it commits or fetches for.
    NotPartitionOwner = 303,
    /// The member id is not part of the group (it left or its session expired).
    UnknownMember = 304,
    /// The operation needs a group without members.
    GroupNotEmpty = 305,
    /// The subscription id is not active on this connection.
    UnknownSubscription = 306,
    /// The group already exists.
    GroupExists = 307,

    /// The broker's connection limit is reached.
    TooManyConnections = 400,
    /// The connection has too many requests in flight.
    TooManyRequests = 401,
    /// The broker's topic limit is reached, or a topic asks for too many partitions.
    TooManyTopics = 402,
    /// The batch has more records than the broker accepts in one publish.
    BatchTooLarge = 403,
    /// The group has as many consumers as the broker allows.
    TooManyConsumers = 404,
    /// The frame is larger than the maximum frame size.
    FrameTooLarge = 405,

    /// The store refused the write (for example a disk quota).
    StorageFull = 500,
    /// The store failed.
    StorageError = 501,
    /// The broker is shutting down and takes no new work.
    ShuttingDown = 502,
    /// The request is valid but this broker does not implement it yet.
    NotSupported = 503,
    /// An unexpected broker failure.
    Internal = 504,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code as u16), "duplicate code {code}");
            assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
    }
}
