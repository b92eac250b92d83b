//! Session frames: the handshake, heartbeats, errors and generic replies.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ErrorCode;
use crate::wire::wire_struct;

wire_struct! {
    /// Client → broker, first frame of every connection.
    ///
    /// ```text
    /// +-------------+-------------+-----------+-----------------------+--------------------+
    /// | min_version | max_version | client_id | heartbeat_interval_ms | session_timeout_ms |
    /// |     u16     |     u16     |  string   |          u32          |        u32         |
    /// +-------------+-------------+-----------+-----------------------+--------------------+
    /// ```
    /// Intervals of 0 ask for the broker's defaults.
    pub struct Hello {
        pub min_version: u16,
        pub max_version: u16,
        pub client_id: String,
        pub heartbeat_interval_ms: u32,
        pub session_timeout_ms: u32,
    }
}

wire_struct! {
    /// Broker → client, the answer to `Hello`: the chosen version and what the broker grants.
    ///
    /// ```text
    /// +---------+----------------+------------+-----------------------+--------------------+
    /// | version | broker_version | session_id | heartbeat_interval_ms | session_timeout_ms |
    /// |   u16   |     string     |    u64     |          u32          |        u32         |
    /// +---------+----------------+------------+-----------------------+--------------------+
    /// +-----------------+-------------------+
    /// | max_frame_bytes | max_message_bytes |
    /// |       u32       |        u32        |
    /// +-----------------+-------------------+
    /// ```
    pub struct HelloOk {
        pub version: u16,
        pub broker_version: String,
        pub session_id: u64,
        pub heartbeat_interval_ms: u32,
        pub session_timeout_ms: u32,
        pub max_frame_bytes: u32,
        pub max_message_bytes: u32,
    }
}

wire_struct! {
    /// Either direction, correlation id 0: "I am alive". Empty body.
    pub struct Heartbeat {}
}

wire_struct! {
    /// Broker → client (correlation id 0): the broker is shutting down; reconnect after the
    /// given delay rather than waiting for a timeout.
    ///
    /// ```text
    /// +--------------------+--------+
    /// | reconnect_after_ms | reason |
    /// |        u32         | string |
    /// +--------------------+--------+
    /// ```
    pub struct GoingAway {
        pub reconnect_after_ms: u32,
        pub reason: String,
    }
}

wire_struct! {
    /// Broker → client: the request with this correlation id failed.
    ///
    /// ```text
    /// +------+---------+--------+
    /// | code | message | detail |
    /// | u16  | string  | bytes  |
    /// +------+---------+--------+
    /// ```
    /// `detail` is empty except for codes that define one (see PROTOCOL.md):
    /// `OffsetOutOfRange` carries `first_offset u64, next_offset u64`;
    /// `UnsupportedVersion` carries `min_version u16, max_version u16`.
    pub struct ErrorFrame {
        pub code: u16,
        pub message: String,
        pub detail: Bytes,
    }
}

impl ErrorFrame {
    /// An error with no detail.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorFrame {
            code: code as u16,
            message: message.into(),
            detail: Bytes::new(),
        }
    }

    /// `OffsetOutOfRange`, carrying the partition's first and next offsets.
    pub fn offset_out_of_range(first: u64, next: u64, message: impl Into<String>) -> Self {
        let mut detail = BytesMut::with_capacity(16);
        detail.put_u64(first);
        detail.put_u64(next);
        ErrorFrame {
            detail: detail.freeze(),
            ..Self::new(ErrorCode::OffsetOutOfRange, message)
        }
    }

    /// `UnsupportedVersion`, carrying the versions the broker speaks.
    pub fn unsupported_version(min: u16, max: u16) -> Self {
        let mut detail = BytesMut::with_capacity(4);
        detail.put_u16(min);
        detail.put_u16(max);
        let message = format!("unsupported protocol version; this broker speaks {min}..={max}");
        ErrorFrame {
            detail: detail.freeze(),
            ..Self::new(ErrorCode::UnsupportedVersion, message)
        }
    }

    /// The code, if this version knows it.
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }

    /// The `(first_offset, next_offset)` detail of an `OffsetOutOfRange` error.
    pub fn offset_bounds(&self) -> Option<(u64, u64)> {
        let mut detail = self.detail.clone();
        (self.error_code() == Some(ErrorCode::OffsetOutOfRange) && detail.len() == 16)
            .then(|| (detail.get_u64(), detail.get_u64()))
    }
}

wire_struct! {
    /// Broker → client: the request succeeded and has nothing to return. Empty body.
    pub struct OkReply {}
}
