//! Herald's wire protocol: frames, their encoding, and the stream codec. No sockets, no
//! runtime — encoding and decoding are pure functions over buffers.
//!
//! - [`frame`]: the frame header, the opcode table and every frame's body.
//! - [`record`]: records and record batches, the unit published, stored and fetched.
//! - [`compression`]: the codecs a batch's records may be compressed with.
//! - [`codec`]: [`FrameCodec`] splits a byte stream into frames, checking the declared length
//!   against the maximum frame size before buffering anything.
//! - [`error`]: decoding errors and the stable [`ErrorCode`]s sent in error frames.
//! - [`wire`]: the primitive encodings every body is built from.
//!
//! `PROTOCOL.md` beside this crate is the byte-level specification.
//!
//! ```
//! use bytes::BytesMut;
//! use herald_protocol::{FrameCodec, Hello, Message, Frame};
//! use tokio_util::codec::Decoder;
//!
//! let hello = Message::new(1, Hello { min_version: 1, max_version: 1, ..Hello::default() });
//! let mut buf = BytesMut::from(&hello.to_bytes()[..]);
//! let raw = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
//! assert_eq!(raw.correlation_id, 1);
//! assert!(matches!(raw.decode().unwrap(), Frame::Hello(_)));
//! ```

pub mod codec;
pub mod compression;
pub mod error;
pub mod frame;
pub mod record;
pub mod scram;
pub mod wire;

pub use codec::{FrameCodec, DEFAULT_MAX_FRAME_BYTES};
pub use compression::Codec;
pub use error::{CodecError, DecodeError, ErrorCode};
pub use frame::*;
pub use record::{
    encode_batch, encode_batch_with, partition_for_key, read_batches, Batch, Record, StoredRecord,
};

/// The protocol versions this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this crate speaks.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
