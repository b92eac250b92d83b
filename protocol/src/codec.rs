//! Splits a byte stream into frames and writes frames into it.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::CodecError;
use crate::frame::{Message, RawFrame, HEADER_LEN};

/// The default maximum frame size: 8 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 8 * 1024 * 1024;

/// A `tokio_util` codec for Herald frames.
///
/// Decoding returns `Ok(None)` while a frame is incomplete and `Err` only when the stream
/// cannot continue: a declared length over `max_frame_bytes` (checked on the header, before
/// anything is buffered) or shorter than a header.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_bytes: u32,
}

impl FrameCodec {
    /// A codec that refuses frames whose length field exceeds `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> Self {
        FrameCodec { max_frame_bytes }
    }

    /// The largest length field accepted.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl Decoder for FrameCodec {
    type Item = RawFrame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RawFrame>, CodecError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        if length > self.max_frame_bytes {
            return Err(CodecError::FrameTooLarge {
                len: u64::from(length),
                max: self.max_frame_bytes,
            });
        }
        if (length as usize) < HEADER_LEN - 4 {
            return Err(CodecError::FrameTooShort(length));
        }
        let total = 4 + length as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let mut frame = src.split_to(total);
        frame.advance(4);
        let opcode = frame.get_u16();
        let flags = frame.get_u16();
        let correlation_id = frame.get_u32();
        Ok(Some(RawFrame {
            opcode,
            flags,
            correlation_id,
            body: frame.freeze(),
        }))
    }
}

impl Encoder<Message> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, item: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        item.encode(dst);
        Ok(())
    }
}
