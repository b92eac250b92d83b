//! Stored values: how a published batch is cut into chunks that sled's cache can bound, and
//! the checksum every stored value carries.
//!
//! # Why chunks
//!
//! sled 0.34 bounds its page cache by the size each page takes in its log. A page whose
//! serialized form is larger than a quarter of a segment (128 KiB) is written to a blob
//! file instead, and is then counted as the few bytes of its pointer while the whole page
//! stays in memory; and each of the cache's 256 shards keeps at least one page however
//! large. A leaf holds up to 17 values, so leaves of large values escaped the bound: a
//! heap profile of a broker that had taken 500 MB of 1 KiB records in batches of 1,000
//! showed the memory held by sled's nodes growing with every batch (RSS 546 MB, all of it
//! the stored values). So a published batch is stored as consecutive chunks of at most
//! [`CHUNK_BYTES`] each (cut at record boundaries; each is a batch of its own, offsets and
//! append time filled in), which keeps every leaf below the blob threshold; one record
//! larger than that is stored in pieces of that size under keys of its own. A compressed
//! batch cannot be cut at a record without decompressing it, so it is one chunk, in pieces
//! when it is larger than [`CHUNK_BYTES`]: its compressed bytes are what is stored.
//!
//! # Layout
//!
//! ```text
//! key "offset"  (u64 BE, the chunk's base offset)
//! +--------+-------+--------------------------------------+-------------------+
//! | crc32c | flags | batch (protocol encoding, 32 B header | tag (flag TAGGED) |
//! |  u32   |  u8   |  then the records)                    | 24 B              |
//! +--------+-------+--------------------------------------+-------------------+
//! key "offset ‖ piece" (u64 BE, u16 BE from 1), only with flag PIECES
//! +--------+-----------------------------------------------------------------+
//! | crc32c | the next bytes of `batch ‖ tag`                                 |
//! +--------+-----------------------------------------------------------------+
//! tag: producer id u64, sequence u64, first offset of the published batch u64
//! ```
//!
//! The checksum (CRC-32C, as Kafka's record batches use) covers everything after it in the
//! value. It is verified whenever a value is read from sled; a mismatch is an error that
//! names the partition and offset, never bytes handed out. The tag of a producer's
//! numbered batch rides on the batch's last chunk; the chunks of one batch are written in
//! one atomic sled batch, so a crash never leaves part of a batch stored.

use bytes::{Bytes, BytesMut};
use herald_protocol::{record::BATCH_HEADER_LEN, Batch, Codec};

use super::producers::ProducerBatch;
use super::StorageError;

/// The most bytes of batch encoding one stored chunk holds (a single larger record is
/// stored in pieces of this size). Seventeen of these, sled's largest leaf, stay below the
/// 128 KiB at which sled moves a page to a blob file.
pub const CHUNK_BYTES: usize = 6 * 1024;

/// The most bytes reserved up front for a chunk read back from its pieces.
const PREALLOCATE_MAX: usize = 2 * 1024 * 1024;

const CRC_LEN: usize = 4;
const HEAD_LEN: usize = CRC_LEN + 1;
const TAG_LEN: usize = 24;
const TAGGED: u8 = 1;
const PIECES: u8 = 2;

/// Where a value is kept: a chunk's key, or one of its further pieces.
pub type Key = Vec<u8>;

/// A chunk's key: its base offset.
pub fn key(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

fn piece_key(offset: u64, piece: u16) -> Key {
    [&offset.to_be_bytes()[..], &piece.to_be_bytes()[..]].concat()
}

/// The tag of a producer's numbered batch: who sent it, its number, and where it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub producer: ProducerBatch,
    /// The first offset of the published batch (the tagged chunk is its last).
    pub first_offset: u64,
}

/// A stored chunk, read back and checked.
#[derive(Debug, Clone)]
pub struct Chunk {
    pub batch: Batch,
    pub tag: Option<Tag>,
    /// Its value and pieces in sled: the keys to delete it by, and the bytes they take.
    pub keys: Vec<Key>,
    pub stored_bytes: u64,
}

/// A chunk ready to store: its values (one, or a head and its pieces) and the chunk as a
/// batch to cache, sharing the head value's bytes when it has no pieces.
pub struct Cut {
    pub values: Vec<(Key, sled::IVec)>,
    pub batch: Batch,
}

/// The chunks that store `batch` from `base_offset` on, appended at `append_time_ms`, with
/// `tag` on the last one; `buf` is scratch space for encoding.
pub fn cut(
    batch: &Batch,
    base_offset: u64,
    append_time_ms: u64,
    tag: Option<Tag>,
    buf: &mut BytesMut,
) -> Result<Vec<Cut>, StorageError> {
    let invalid = |e: &dyn std::fmt::Display| StorageError::Corrupt(format!("batch to store: {e}"));
    let mut out = Vec::new();
    let mut rest = Batch {
        base_offset,
        append_time_ms,
        ..batch.clone()
    };
    if rest.codec != Codec::None {
        // Compressed bytes cannot be cut at a record: the batch is one chunk, stored in
        // pieces when it is larger than one.
        return Ok(vec![encode(rest, tag, buf)?]);
    }
    while rest.record_count > 0 {
        let chunk = rest
            .slice(rest.base_offset, u32::MAX, CHUNK_BYTES)
            .map_err(|e| invalid(&e))?
            .ok_or_else(|| invalid(&"records missing"))?;
        rest = Batch {
            base_offset: chunk.next_offset(),
            record_count: rest.record_count - chunk.record_count,
            records: rest.records.slice(chunk.records.len()..),
            ..rest
        };
        let last = rest.record_count == 0;
        out.push(encode(chunk, tag.filter(|_| last), buf)?);
    }
    Ok(out)
}

/// One chunk's value, or its head and pieces when it is larger than [`CHUNK_BYTES`].
/// `buf` is scratch space, reused: a value is encoded there and copied once, into the
/// value sled keeps.
fn encode(chunk: Batch, tag: Option<Tag>, buf: &mut BytesMut) -> Result<Cut, StorageError> {
    buf.clear();
    buf.extend_from_slice(&[0; HEAD_LEN]);
    chunk.encode(buf);
    if let Some(tag) = tag {
        buf.extend_from_slice(&tag.producer.producer_id.to_be_bytes());
        buf.extend_from_slice(&tag.producer.sequence.to_be_bytes());
        buf.extend_from_slice(&tag.first_offset.to_be_bytes());
    }
    let body_len = buf.len() - HEAD_LEN;
    let in_pieces = body_len > CHUNK_BYTES;
    buf[CRC_LEN] = if tag.is_some() { TAGGED } else { 0 } | if in_pieces { PIECES } else { 0 };
    let base = chunk.base_offset;
    if !in_pieces {
        let crc = crc32c::crc32c(&buf[CRC_LEN..]);
        buf[..CRC_LEN].copy_from_slice(&crc.to_be_bytes());
        let value = sled::IVec::from(&buf[..]);
        let shared =
            Bytes::from_owner(value.clone()).slice(HEAD_LEN..HEAD_LEN + chunk.encoded_len());
        let batch =
            Batch::parse(shared).map_err(|e| StorageError::Corrupt(format!("chunk: {e}")))?;
        return Ok(Cut {
            values: vec![(key(base).to_vec(), value)],
            batch,
        });
    }
    let head = &buf[CRC_LEN..HEAD_LEN + CHUNK_BYTES];
    let rest = &buf[HEAD_LEN + CHUNK_BYTES..];
    let mut values = vec![(key(base).to_vec(), checked_value(head))];
    for (i, part) in rest.chunks(CHUNK_BYTES).enumerate() {
        let piece = u16::try_from(i + 1)
            .map_err(|_| StorageError::Corrupt("a record too large to store".into()))?;
        values.push((piece_key(base, piece), checked_value(part)));
    }
    Ok(Cut {
        values,
        batch: chunk,
    })
}

/// A value holding `bytes` behind their checksum.
fn checked_value(bytes: &[u8]) -> sled::IVec {
    let mut value = Vec::with_capacity(CRC_LEN + bytes.len());
    value.extend_from_slice(&crc32c::crc32c(bytes).to_be_bytes());
    value.extend_from_slice(bytes);
    sled::IVec::from(value)
}

/// Checks a value's checksum and returns what follows it.
fn verified(log: &str, key: &[u8], value: sled::IVec) -> Result<Bytes, StorageError> {
    let damaged = |what: &str| corrupt(log, key, what);
    if value.len() < CRC_LEN {
        return Err(damaged("is cut short"));
    }
    let stored = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
    if crc32c::crc32c(&value[CRC_LEN..]) != stored {
        return Err(damaged("fails its checksum"));
    }
    Ok(Bytes::from_owner(value).slice(CRC_LEN..))
}

/// The offset a stored key belongs to: a chunk's base offset (a piece's key starts with its
/// chunk's).
pub fn offset_of(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|k| k.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The chunks of `tree` from the one starting at `offset` on, in offset order, each read
/// with its pieces and checked. `log` names the partition log in errors. Blocks.
///
/// Each chunk is looked up by its key (the previous chunk's next offset) rather than
/// walked with one sled iterator: sled counts a page's use in its cache only when the page
/// is looked up, and applies those counts 64 at a time per cache shard, so a long scan
/// that looked up each leaf once left up to 63 leaves per shard in memory uncounted
/// (measured: 410 MB of pages held after replaying 1 GB with a 128 MiB cache). Looked up
/// once per chunk, a leaf fills its shard's count within a few leaves.
pub fn walk<'a>(
    log: &'a str,
    tree: &'a sled::Tree,
    offset: u64,
) -> impl Iterator<Item = Result<Chunk, StorageError>> + 'a {
    let mut cursor = Some(offset);
    std::iter::from_fn(move || {
        let at = cursor.take()?;
        let chunk = get(log, tree, at).transpose()?;
        if let Ok(chunk) = &chunk {
            cursor = Some(chunk.batch.next_offset());
        }
        Some(chunk)
    })
}

/// The chunk whose key is `offset`, with its pieces, checked. Blocks.
pub fn get(log: &str, tree: &sled::Tree, offset: u64) -> Result<Option<Chunk>, StorageError> {
    let head_key = key(offset);
    let Some(value) = tree.get(head_key)? else {
        return Ok(None);
    };
    let mut stored_bytes = value.len() as u64;
    let head = verified(log, &head_key, value)?;
    let flags = *head
        .first()
        .ok_or_else(|| corrupt(log, &head_key, "has no flags"))?;
    let tagged = flags & TAGGED != 0;
    let mut body = head.slice(1..);
    let mut keys = vec![head_key.to_vec()];
    if flags & PIECES != 0 {
        let records_len = body
            .get(BATCH_HEADER_LEN - 4..BATCH_HEADER_LEN)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| corrupt(log, &head_key, "is cut short"))?;
        let whole_len = BATCH_HEADER_LEN + records_len + if tagged { TAG_LEN } else { 0 };
        // The length comes from the stored header: beyond a first guess, room grows with
        // the pieces actually found.
        let mut whole = BytesMut::with_capacity(whole_len.min(PREALLOCATE_MAX));
        whole.extend_from_slice(&body);
        for piece in 1..=u16::MAX {
            if whole.len() >= whole_len {
                break;
            }
            let piece_key = piece_key(offset, piece);
            let value = tree
                .get(&piece_key)?
                .ok_or_else(|| corrupt(log, &head_key, &format!("lacks its piece {piece}")))?;
            stored_bytes += value.len() as u64;
            whole.extend_from_slice(&verified(log, &piece_key, value)?);
            keys.push(piece_key);
        }
        body = whole.freeze();
    }
    let batch_len = body.len().saturating_sub(if tagged { TAG_LEN } else { 0 });
    if batch_len < BATCH_HEADER_LEN {
        return Err(corrupt(log, &head_key, "is cut short"));
    }
    let batch = Batch::parse(body.slice(..batch_len))
        .map_err(|e| corrupt(log, &head_key, &format!("holds no batch: {e}")))?;
    if batch.base_offset != offset {
        return Err(corrupt(log, &head_key, "holds another offset"));
    }
    let tag = tagged.then(|| {
        let u64_at = |at: usize| {
            let bytes = &body[batch_len + at..batch_len + at + 8];
            u64::from_be_bytes(bytes.try_into().unwrap_or_default())
        };
        Tag {
            producer: ProducerBatch {
                producer_id: u64_at(0),
                sequence: u64_at(8),
            },
            first_offset: u64_at(16),
        }
    });
    Ok(Some(Chunk {
        batch,
        tag,
        keys,
        stored_bytes,
    }))
}

fn corrupt(log: &str, key: &[u8], what: &str) -> StorageError {
    StorageError::Corrupt(format!(
        "partition log {log}: the chunk at offset {} {what}",
        offset_of(key)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::{encode_batch, Record};

    fn batch_of(sizes: &[usize]) -> Batch {
        let records: Vec<Record> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Record::new(vec![i as u8; n]).with_key(format!("k{i}")))
            .collect();
        Batch::parse(encode_batch(&records)).unwrap()
    }

    fn store(cuts: &[Cut]) -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("log.1.0").unwrap();
        for (key, value) in cuts.iter().flat_map(|c| &c.values) {
            tree.insert(&key[..], value.clone()).unwrap();
        }
        (dir, tree)
    }

    fn payload_sizes(chunks: &[Chunk]) -> Vec<usize> {
        chunks
            .iter()
            .flat_map(|c| c.batch.iter().map(|r| r.unwrap().record.payload.len()))
            .collect()
    }

    #[test]
    fn a_batch_is_cut_at_record_boundaries_and_read_back_whole() {
        let sizes = vec![1000; 50];
        let tag = Tag {
            producer: ProducerBatch {
                producer_id: 7,
                sequence: 3,
            },
            first_offset: 100,
        };
        let cuts = cut(&batch_of(&sizes), 100, 42, Some(tag), &mut BytesMut::new()).unwrap();
        assert!(cuts.len() > 1, "50 KB goes in several chunks");
        for cut in &cuts {
            assert_eq!(cut.values.len(), 1, "no record needs pieces");
            assert!(cut.batch.encoded_len() <= CHUNK_BYTES);
            assert_eq!(cut.batch.append_time_ms, 42);
        }
        let (_dir, tree) = store(&cuts);
        let chunks: Vec<Chunk> = walk("log.1.0", &tree, 100)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(payload_sizes(&chunks), sizes);
        assert_eq!(chunks.last().unwrap().batch.next_offset(), 150);
        let tags: Vec<_> = chunks.iter().map(|c| c.tag).collect();
        assert_eq!(
            tags.last().unwrap(),
            &Some(tag),
            "the last chunk carries the tag"
        );
        assert!(tags[..tags.len() - 1].iter().all(Option::is_none));
        let offsets: Vec<u64> = chunks.iter().map(|c| c.batch.base_offset).collect();
        let ends: Vec<u64> = chunks.iter().map(|c| c.batch.next_offset()).collect();
        assert_eq!(
            offsets[1..],
            ends[..ends.len() - 1],
            "chunks tile the offsets"
        );
    }

    #[test]
    fn a_record_larger_than_a_chunk_is_stored_in_pieces() {
        let sizes = [10, 100_000, 10];
        let cuts = cut(&batch_of(&sizes), 0, 1, None, &mut BytesMut::new()).unwrap();
        assert_eq!(cuts.len(), 3);
        let pieces = cuts[1].values.len();
        assert_eq!(pieces, 100_000usize.div_ceil(CHUNK_BYTES).max(2));
        assert!(cuts[1]
            .values
            .iter()
            .all(|(_, v)| v.len() <= CHUNK_BYTES + HEAD_LEN));
        let (_dir, tree) = store(&cuts);
        let chunks: Vec<Chunk> = walk("log.1.0", &tree, 0).collect::<Result<_, _>>().unwrap();
        assert_eq!(payload_sizes(&chunks), sizes);
        assert_eq!(chunks[1].keys.len(), pieces);
        let stored: u64 = cuts[1].values.iter().map(|(_, v)| v.len() as u64).sum();
        assert_eq!(chunks[1].stored_bytes, stored);
    }

    #[test]
    fn a_flipped_bit_is_an_error_naming_the_partition_and_offset() {
        let cuts = cut(&batch_of(&[10, 20_000]), 5, 1, None, &mut BytesMut::new()).unwrap();
        for (damaged_key, at) in [(key(5).to_vec(), 40), (piece_key(6, 2), 100)] {
            let (_dir, tree) = store(&cuts);
            let mut value = tree.get(&damaged_key).unwrap().unwrap().to_vec();
            value[at] ^= 0x10;
            tree.insert(&damaged_key, value).unwrap();
            let offset = offset_of(&damaged_key);
            let err = walk("log.1.0", &tree, 5)
                .find_map(Result::err)
                .expect("the damage is found");
            let text = err.to_string();
            assert!(matches!(err, StorageError::Corrupt(_)), "{text}");
            assert!(
                text.contains("log.1.0") && text.contains(&format!("offset {offset}")),
                "{text}"
            );
            assert!(text.contains("checksum"), "{text}");
        }
    }
}
