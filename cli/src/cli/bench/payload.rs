//! Bench payloads: who sent a message, its number, and when, as text, then filler.
//!
//! ```text
//! +----------+------------------+------------------+-----------------------------+
//! | producer | sequence         | sent_ns          | filler up to --size         |
//! |  8 hex   |     16 hex       |     16 hex       |                             |
//! +----------+------------------+------------------+-----------------------------+
//! ```
//! `sent_ns` counts from the bench process's start, so publish→delivery latency is exact
//! when producers and consumers run in the same bench process.
//!
//! The filler (`--payload`): `fill`, '.' repeated (the default, what every figure before
//! compression was measured with); `random`, letters and digits drawn at random (about 6
//! bits in every 8, so no codec shrinks it much: the worst case for compression); `json`,
//! a JSON object of the kind services publish (an event with a user, a product, a price,
//! a region and tags, each drawn from a realistic range) with the header as its first
//! field, `{"trace":"<header>",...}`, and a note of words up to --size.
//!
//! Text, because that is what services in other languages and browsers send: the web
//! front door carries it as a JSON string as it is (bytes that are not UTF-8 would go as
//! base64, and a zero byte as an escape), and to the TCP protocol bytes are bytes.

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

/// The smallest payload a bench message can have.
pub const HEADER_LEN: usize = 40;

/// When the bench started: on the monotonic clock, and as milliseconds since the Unix
/// epoch.
static START: OnceLock<(Instant, u64)> = OnceLock::new();

fn start() -> &'static (Instant, u64) {
    START.get_or_init(|| (Instant::now(), herald_protocol::record::now_ms()))
}

/// Nanoseconds since the bench started.
pub fn now_ns() -> u64 {
    start().0.elapsed().as_nanos() as u64
}

/// The wall-clock time (milliseconds since the Unix epoch) of a [`now_ns`] reading: a
/// record's timestamp without reading the clock a second time for it.
pub fn unix_ms_at(ns: u64) -> u64 {
    start().1 + ns / 1_000_000
}

/// The smallest `--size` a `json` payload can have: `{"trace":"<header>"}`.
pub const JSON_MIN_LEN: usize = JSON_PREFIX.len() + HEADER_LEN + 2;

const JSON_PREFIX: &str = r#"{"trace":""#;

/// What follows the header; see the module's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Filler {
    Fill,
    Random,
    Json,
}

impl Filler {
    pub fn name(self) -> &'static str {
        match self {
            Filler::Fill => "fill",
            Filler::Random => "random",
            Filler::Json => "json",
        }
    }
}

/// Makes a run's payloads: each exactly `size` bytes (at least [`HEADER_LEN`];
/// [`JSON_MIN_LEN`] for json). What a payload holds beyond its header is made before the
/// run, so that making a message costs a copy whatever the filler, and the producer's
/// speed is the broker's, not the generator's.
pub struct Payloads {
    filler: Filler,
    size: usize,
    /// json: [`JSON_BODIES`] finished bodies of `size` bytes, end to end.
    bodies: Vec<u8>,
}

/// Distinct json bodies a run cycles through: more than a batch holds by default, so no
/// codec finds a whole record repeated within one batch.
const JSON_BODIES: usize = 1021;

impl Payloads {
    pub fn new(filler: Filler, size: usize) -> Payloads {
        let size = size.max(HEADER_LEN);
        let bodies = match filler {
            Filler::Json => (0..JSON_BODIES as u64)
                .flat_map(|n| json(&"0".repeat(HEADER_LEN), n, size))
                .collect(),
            Filler::Fill | Filler::Random => Vec::new(),
        };
        Payloads {
            filler,
            size,
            bodies,
        }
    }

    /// Message `sequence` of `producer`, sent at `sent_ns`.
    pub fn encode(&self, producer: u32, sequence: u64, sent_ns: u64) -> Bytes {
        let header = header(producer, sequence, sent_ns);
        let header = &header[..];
        let size = self.size;
        let mut buf = BytesMut::with_capacity(size);
        match self.filler {
            Filler::Fill => {
                buf.put_slice(header);
                buf.resize(size, b'.');
            }
            Filler::Random => {
                buf.put_slice(header);
                let pool = random_pool();
                // Consecutive messages take consecutive stretches of the pool, so a batch
                // (at most 1 MiB) never holds the same stretch twice for a codec to find.
                let want = size - HEADER_LEN;
                let start =
                    (sequence as usize * want + producer as usize * 7919) % (pool.len() - want);
                buf.put_slice(&pool[start..start + want]);
            }
            Filler::Json => {
                let n = (sequence as usize + producer as usize) % JSON_BODIES;
                buf.put_slice(&self.bodies[n * size..(n + 1) * size]);
                let at = JSON_PREFIX.len();
                buf[at..at + HEADER_LEN].copy_from_slice(header);
            }
        }
        buf.freeze()
    }
}

/// The header's 40 hex digits, written without formatting machinery (the bench makes
/// a million of these a second, on the cores the broker needs).
fn header(producer: u32, sequence: u64, sent_ns: u64) -> [u8; HEADER_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; HEADER_LEN];
    let mut put = |at: usize, digits: usize, value: u64| {
        for i in 0..digits {
            out[at + i] = HEX[(value >> (4 * (digits - 1 - i)) & 0xf) as usize];
        }
    };
    put(0, 8, u64::from(producer));
    put(8, 16, sequence);
    put(24, 16, sent_ns);
    out
}

/// 8 MiB of random letters and digits, made once.
fn random_pool() -> &'static [u8] {
    static POOL: OnceLock<Vec<u8>> = OnceLock::new();
    POOL.get_or_init(|| {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = fastrand::Rng::with_seed(0x4e7a1d);
        (0..8 << 20)
            .map(|_| ALPHABET[rng.usize(..ALPHABET.len())])
            .collect()
    })
}

/// An event as a service would publish it, fields drawn from realistic ranges and added
/// while they fit, then a note of words filling the rest (spaces pad the last few bytes).
fn json(header: &str, sequence: u64, size: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(size);
    const EVENTS: [&str; 6] = [
        "page_view",
        "add_to_cart",
        "checkout",
        "search",
        "login",
        "refund",
    ];
    const REGIONS: [&str; 4] = ["eu-west-1", "us-east-1", "ap-south-1", "sa-east-1"];
    const TAGS: [&str; 8] = [
        "mobile",
        "web",
        "beta",
        "returning",
        "promo",
        "gift",
        "vip",
        "new",
    ];
    const WORDS: [&str; 12] = [
        "delivered",
        "to",
        "the",
        "customer",
        "order",
        "item",
        "was",
        "in",
        "stock",
        "and",
        "shipped",
        "today",
    ];
    let mut rng = fastrand::Rng::with_seed(sequence);
    let tags: Vec<String> = (0..rng.usize(1..4))
        .map(|_| format!("\"{}\"", TAGS[rng.usize(..TAGS.len())]))
        .collect();
    let fields = [
        format!(r#","user":"user-{:05}""#, rng.u32(..50_000)),
        format!(r#","event":"{}""#, EVENTS[rng.usize(..EVENTS.len())]),
        format!(r#","sku":"SKU-{:06}""#, rng.u32(..1_000_000)),
        format!(r#","price":{}.{:02}"#, rng.u32(1..500), rng.u32(..100)),
        format!(r#","qty":{}"#, rng.u32(1..10)),
        format!(r#","region":"{}""#, REGIONS[rng.usize(..REGIONS.len())]),
        format!(r#","tags":[{}]"#, tags.join(",")),
        format!(r#","ok":{}"#, rng.bool()),
    ];
    buf.put_slice(JSON_PREFIX.as_bytes());
    buf.put_slice(header.as_bytes());
    buf.put_slice(b"\"");
    for field in &fields {
        if buf.len() + field.len() < size {
            buf.put_slice(field.as_bytes());
        }
    }
    // A note of words fills what is left, so padding is at most a word's worth.
    const NOTE: &str = r#","note":""#;
    if buf.len() + NOTE.len() + 2 < size {
        buf.put_slice(NOTE.as_bytes());
        loop {
            let word = WORDS[rng.usize(..WORDS.len())];
            if buf.len() + word.len() + 3 > size {
                break;
            }
            buf.put_slice(word.as_bytes());
            buf.put_u8(b' ');
        }
        buf.put_u8(b'"');
    }
    buf.resize(size - 1, b' ');
    buf.put_u8(b'}');
    buf
}

/// `(producer, sequence, sent_ns)`, or `None` for a payload no bench wrote.
pub fn decode(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let payload = payload
        .strip_prefix(JSON_PREFIX.as_bytes())
        .unwrap_or(payload);
    let header = std::str::from_utf8(payload.get(..HEADER_LEN)?).ok()?;
    let field = |range: std::ops::Range<usize>| u64::from_str_radix(&header[range], 16).ok();
    let producer = u32::try_from(field(0..8)?).ok()?;
    Some((producer, field(8..24)?, field(24..40)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_the_three_numbers_in_hex() {
        let header = header(0xab, 0x1234_5678_9abc_def0, 42);
        let expected = format!("{:08x}{:016x}{:016x}", 0xab, 0x1234_5678_9abc_def0u64, 42);
        assert_eq!(&header[..], expected.as_bytes());
    }

    #[test]
    fn payloads_round_trip_at_the_requested_size() {
        for filler in [Filler::Fill, Filler::Random, Filler::Json] {
            for size in [JSON_MIN_LEN, 100, 1024] {
                let payload = Payloads::new(filler, size).encode(3, 77, 123_456);
                assert_eq!(payload.len(), size, "{filler:?}");
                assert_eq!(decode(&payload), Some((3, 77, 123_456)), "{filler:?}");
                assert!(
                    payload.iter().all(|b| b.is_ascii_graphic() || *b == b' '),
                    "text: {payload:?}"
                );
            }
        }
        let fill = Payloads::new(Filler::Fill, 100).encode(3, 77, 1);
        assert_eq!(decode(&fill[..39]), None);
    }

    #[test]
    fn json_payloads_are_json_and_random_ones_differ() {
        for size in [JSON_MIN_LEN, 100, 300, 1024] {
            let payload = Payloads::new(Filler::Json, size).encode(1, 9, 5);
            let value: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            assert_eq!(value["trace"].as_str().unwrap().len(), HEADER_LEN);
        }
        let json = Payloads::new(Filler::Json, 1024);
        let full: serde_json::Value = serde_json::from_slice(&json.encode(1, 9, 5)).unwrap();
        assert!(full["user"].is_string() && full["price"].is_number() && full["note"].is_string());
        assert_ne!(json.encode(1, 9, 5)[50..], json.encode(1, 10, 5)[50..]);
        let random = Payloads::new(Filler::Random, 200);
        let (a, b) = (random.encode(1, 1, 0), random.encode(1, 2, 0));
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
    }
}
