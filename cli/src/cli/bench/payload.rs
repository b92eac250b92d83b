//! Bench payloads: who sent a message, its number, and when, as text.
//!
//! ```text
//! +----------+------------------+------------------+-----------------------------+
//! | producer | sequence         | sent_ns          | '.' padding up to --size    |
//! |  8 hex   |     16 hex       |     16 hex       |                             |
//! +----------+------------------+------------------+-----------------------------+
//! ```
//! `sent_ns` counts from the bench process's start, so publish→delivery latency is exact
//! when producers and consumers run in the same bench process.
//!
//! Text, because that is what services in other languages and browsers send: the web
//! front door carries it as a JSON string as it is (bytes that are not UTF-8 would go as
//! base64, and a zero byte as an escape), and to the TCP protocol bytes are bytes.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

/// The smallest payload a bench message can have.
pub const HEADER_LEN: usize = 40;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the bench started.
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A payload of exactly `size` bytes (at least [`HEADER_LEN`]).
pub fn encode(producer: u32, sequence: u64, sent_ns: u64, size: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(size.max(HEADER_LEN));
    buf.put_slice(format!("{producer:08x}{sequence:016x}{sent_ns:016x}").as_bytes());
    buf.resize(size.max(HEADER_LEN), b'.');
    buf.freeze()
}

/// `(producer, sequence, sent_ns)`, or `None` for a payload no bench wrote.
pub fn decode(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let header = std::str::from_utf8(payload.get(..HEADER_LEN)?).ok()?;
    let field = |range: std::ops::Range<usize>| u64::from_str_radix(&header[range], 16).ok();
    let producer = u32::try_from(field(0..8)?).ok()?;
    Some((producer, field(8..24)?, field(24..40)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_at_the_requested_size() {
        let payload = encode(3, 77, 123_456, 100);
        assert_eq!(payload.len(), 100);
        assert_eq!(decode(&payload), Some((3, 77, 123_456)));
        assert_eq!(decode(&payload[..39]), None);
        assert!(
            payload.iter().all(u8::is_ascii_graphic),
            "text: {payload:?}"
        );
    }
}
