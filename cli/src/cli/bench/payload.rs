//! Bench payloads: who sent a message, its number, and when.
//!
//! ```text
//! +----------+----------+-------------+-----------------------------+
//! | producer | sequence | sent_ns     | zero padding up to --size   |
//! |   u32    |   u64    |    u64      |                             |
//! +----------+----------+-------------+-----------------------------+
//! ```
//! `sent_ns` counts from the bench process's start, so publish→delivery latency is exact
//! when producers and consumers run in the same bench process.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

/// The smallest payload a bench message can have.
pub const HEADER_LEN: usize = 20;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the bench started.
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A payload of exactly `size` bytes (at least [`HEADER_LEN`]).
pub fn encode(producer: u32, sequence: u64, sent_ns: u64, size: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(size.max(HEADER_LEN));
    buf.put_u32(producer);
    buf.put_u64(sequence);
    buf.put_u64(sent_ns);
    buf.resize(size.max(HEADER_LEN), 0);
    buf.freeze()
}

/// `(producer, sequence, sent_ns)`, or `None` for a payload no bench wrote.
pub fn decode(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let header: &[u8; HEADER_LEN] = payload.get(..HEADER_LEN)?.try_into().ok()?;
    let producer = u32::from_be_bytes(header[0..4].try_into().ok()?);
    let sequence = u64::from_be_bytes(header[4..12].try_into().ok()?);
    let sent_ns = u64::from_be_bytes(header[12..20].try_into().ok()?);
    Some((producer, sequence, sent_ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_at_the_requested_size() {
        let payload = encode(3, 77, 123_456, 100);
        assert_eq!(payload.len(), 100);
        assert_eq!(decode(&payload), Some((3, 77, 123_456)));
        assert_eq!(decode(&payload[..19]), None);
    }
}
