//! The client's typed errors.

use herald_protocol::{ErrorCode, ErrorFrame};

/// An error reported by the broker in an error frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({name} {raw_code})", name = self.code.map_or("unknown code", ErrorCode::name))]
pub struct BrokerError {
    /// The error code, when this client version knows it.
    pub code: Option<ErrorCode>,
    /// The code as sent.
    pub raw_code: u16,
    /// The broker's explanation.
    pub message: String,
    /// `(first_offset, next_offset)` for `OffsetOutOfRange`.
    pub offsets: Option<(u64, u64)>,
}

impl From<ErrorFrame> for BrokerError {
    fn from(frame: ErrorFrame) -> Self {
        BrokerError {
            code: frame.error_code(),
            raw_code: frame.code,
            offsets: frame.offset_bounds(),
            message: frame.message,
        }
    }
}

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker answered with an error frame.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The connection could not be made or broke.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The client has stopped: reconnection is off or gave up, or the handle was dropped.
    #[error("connection closed: {0}")]
    Closed(String),
    /// The connection broke after the request was sent and before its answer came: it
    /// may or may not have taken effect. The client is connecting again (unless
    /// reconnection is off); a request that is safe to repeat can be sent again.
    #[error("disconnected before the answer came: {0}")]
    Disconnected(String),
    /// The broker sent something this client cannot make sense of.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A call argument was invalid before anything was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A record is larger than the broker's maximum message size; it was not sent.
    #[error("a record of {size} bytes exceeds the broker's maximum message size of {max} bytes")]
    MessageTooLarge { size: usize, max: usize },
}

impl Error {
    /// The same error, for a second recipient (one failed batch fails each of its records).
    pub fn duplicate(&self) -> Error {
        match self {
            Error::Broker(err) => Error::Broker(err.clone()),
            Error::Io(err) => Error::Io(std::io::Error::new(err.kind(), err.to_string())),
            Error::Closed(why) => Error::Closed(why.clone()),
            Error::Disconnected(why) => Error::Disconnected(why.clone()),
            Error::Protocol(why) => Error::Protocol(why.clone()),
            Error::InvalidArgument(why) => Error::InvalidArgument(why.clone()),
            Error::MessageTooLarge { size, max } => Error::MessageTooLarge {
                size: *size,
                max: *max,
            },
        }
    }

    /// The broker's error code, if this is a broker error with a known code.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Broker(err) => err.code,
            _ => None,
        }
    }
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
