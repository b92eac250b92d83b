//! Stored values: how a published batch is cut into chunks, the checksum every chunk
//! carries, and how chunks are read back, from segment files or (in older stores) sled.
//!
//! # Chunks
//!
//! A published batch is stored as consecutive chunks of at most [`CHUNK_BYTES`] of batch
//! encoding each, cut at record boundaries; each is a batch of its own, offsets and append
//! time filled in, so a fetch returns stored bytes as they are. A record larger than that
//! is a chunk of its own; a compressed batch cannot be cut at a record without
//! decompressing it, so it is one chunk whatever its size, and its compressed bytes are
//! what is stored.
//!
//! Chunks are appended to the partition's segment files (see `storage::segment`), and the
//! partition's sled tree keeps its index: under the chunk's base offset, a 20-byte
//! [`Pointer`] to its frame.
//!
//! ```text
//! frame in a segment file
//! +--------+--------+-------+--------------------------------------+-------------------+
//! | len    | crc32c | flags | batch (protocol encoding, 32 B header | tag (flag TAGGED) |
//! | u32    |  u32   |  u8   |  then the records)                    | 24 B              |
//! +--------+--------+-------+--------------------------------------+-------------------+
//! tag: producer id u64, sequence u64, first offset of the published batch u64
//! ```
//!
//! The checksum (CRC-32C, as Kafka's record batches use) covers everything after it. It is
//! verified whenever a chunk is read; a mismatch is an error that names the partition and
//! offset, never bytes handed out. The tag of a producer's numbered batch rides on the
//! batch's last chunk.
//!
//! # Stores written before segment files
//!
//! Those kept every chunk in sled itself, under the same key: the value `crc32c ‖ flags ‖
//! batch ‖ tag`, at most [`CHUNK_BYTES`] of batch each (so sled's cache could bound
//! them), a larger record in pieces under `offset ‖ piece` (u16 BE from 1), each
//! `crc32c ‖ the next bytes`, with flag PIECES on the head. They are still read: such a
//! value is always longer than a pointer (its checksum, flags and a 32-byte header), so the
//! value's length tells the two apart. New chunks always go to segment files.

use bytes::{Bytes, BytesMut};
use herald_protocol::{record::BATCH_HEADER_LEN, Batch, Codec};

use super::producers::ProducerBatch;
use super::segment::{io_error, Pointer, Segments, FRAME_HEAD};
use super::StorageError;

/// The most bytes of batch encoding one chunk holds, cut at record boundaries (a single
/// larger record is a chunk of its own, as is a compressed batch of any size). Retention
/// deletes whole chunks, and a read from an offset inside a chunk reads the chunk whole,
/// so this is the grain of both; stores that kept chunks in sled cut them at this size
/// too.
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
    /// Its index entry and (in stores written before segment files) pieces in sled: the
    /// keys to delete it by.
    pub keys: Vec<Key>,
    /// The bytes it takes: its frame in a segment file, or its values in sled.
    pub stored_bytes: u64,
    /// Where its frame is, when it is in a segment file.
    pub pointer: Option<Pointer>,
}

/// The chunks of one published batch, ready to store: their frames end to end, to be
/// appended in one write, and each chunk as a batch to cache, sharing the frames' bytes.
pub struct Cuts {
    pub frames: Bytes,
    /// Each chunk, with where its frame starts in `frames` and its value's length.
    pub chunks: Vec<(Batch, usize, u32)>,
}

impl Cuts {
    /// Each chunk's base offset and where its frame is, once `frames` are appended at
    /// `position` of segment file `segment`.
    pub fn pointers(
        &self,
        segment: u64,
        position: u64,
    ) -> impl Iterator<Item = (u64, Pointer)> + '_ {
        self.chunks.iter().map(move |(batch, start, len)| {
            let pointer = Pointer {
                segment,
                position: position + *start as u64,
                len: *len,
            };
            (batch.base_offset, pointer)
        })
    }
}

/// The chunks that store `batch` from `base_offset` on, appended at `append_time_ms`, with
/// `tag` on the last one; `buf` is where they are encoded (split off it, so its room is
/// reused once the chunks are dropped).
pub fn cut(
    batch: &Batch,
    base_offset: u64,
    append_time_ms: u64,
    tag: Option<Tag>,
    buf: &mut BytesMut,
) -> Result<Cuts, StorageError> {
    let invalid = |e: &dyn std::fmt::Display| StorageError::Corrupt(format!("batch to store: {e}"));
    let mut rest = Batch {
        base_offset,
        append_time_ms,
        ..batch.clone()
    };
    buf.clear();
    // Room for every frame at once (the batch's bytes, and each chunk's frame, checksum,
    // flags, batch header and tag): growing the buffer chunk by chunk copied it over and
    // over (5% of the broker's samples at 1 KiB in a profile; W1 within noise).
    let per_chunk = FRAME_HEAD + HEAD_LEN + BATCH_HEADER_LEN + TAG_LEN;
    let records = rest.records.len();
    buf.reserve(records + (records / (CHUNK_BYTES / 2) + 2) * per_chunk);
    let mut placed = Vec::new();
    if rest.codec != Codec::None {
        // Compressed bytes cannot be cut at a record: the batch is one chunk.
        placed.push(encode(&rest, tag, buf)?);
    }
    while rest.codec == Codec::None && rest.record_count > 0 {
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
        placed.push(encode(&chunk, tag.filter(|_| last), buf)?);
    }
    let frames = buf.split().freeze();
    let chunks = placed
        .into_iter()
        .map(|(start, len, batch_len)| {
            let at = start + FRAME_HEAD + HEAD_LEN;
            let batch = Batch::parse(frames.slice(at..at + batch_len))
                .map_err(|e| StorageError::Corrupt(format!("chunk: {e}")))?;
            Ok((batch, start, len))
        })
        .collect::<Result<_, StorageError>>()?;
    Ok(Cuts { frames, chunks })
}

/// Appends one chunk's frame to `buf`: its length, then its value (checksum, flags, batch,
/// tag). Returns where the frame starts, the value's length and the batch's.
fn encode(
    chunk: &Batch,
    tag: Option<Tag>,
    buf: &mut BytesMut,
) -> Result<(usize, u32, usize), StorageError> {
    let start = buf.len();
    let batch_len = chunk.encoded_len();
    let len = HEAD_LEN + batch_len + if tag.is_some() { TAG_LEN } else { 0 };
    let len = u32::try_from(len)
        .map_err(|_| StorageError::Corrupt("a chunk too large to store".into()))?;
    buf.reserve(FRAME_HEAD + len as usize);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&[0; CRC_LEN]);
    buf.extend_from_slice(&[if tag.is_some() { TAGGED } else { 0 }]);
    chunk.encode(buf);
    if let Some(tag) = tag {
        buf.extend_from_slice(&tag.producer.producer_id.to_be_bytes());
        buf.extend_from_slice(&tag.producer.sequence.to_be_bytes());
        buf.extend_from_slice(&tag.first_offset.to_be_bytes());
    }
    let value = start + FRAME_HEAD;
    let crc = crc32c::crc32c(&buf[value + CRC_LEN..]);
    buf[value..value + CRC_LEN].copy_from_slice(&crc.to_be_bytes());
    Ok((start, len, batch_len))
}

/// The values a store written before segment files kept in sled for `chunk`: one, or a
/// head and its pieces when the chunk was larger than [`CHUNK_BYTES`]. Tests write
/// them to check that such stores are still read.
#[cfg(test)]
pub fn sled_values(chunk: &Batch, tag: Option<Tag>) -> Vec<(Key, sled::IVec)> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; HEAD_LEN]);
    chunk.encode(&mut buf);
    if let Some(tag) = tag {
        buf.extend_from_slice(&tag.producer.producer_id.to_be_bytes());
        buf.extend_from_slice(&tag.producer.sequence.to_be_bytes());
        buf.extend_from_slice(&tag.first_offset.to_be_bytes());
    }
    let in_pieces = buf.len() - HEAD_LEN > CHUNK_BYTES;
    buf[CRC_LEN] = if tag.is_some() { TAGGED } else { 0 } | if in_pieces { PIECES } else { 0 };
    let base = chunk.base_offset;
    let end = if in_pieces {
        HEAD_LEN + CHUNK_BYTES
    } else {
        buf.len()
    };
    let mut values = vec![(key(base).to_vec(), checked_value(&buf[CRC_LEN..end]))];
    for (i, part) in buf[end..].chunks(CHUNK_BYTES).enumerate() {
        let piece = u16::try_from(i + 1).expect("a test chunk in few pieces");
        values.push((piece_key(base, piece), checked_value(part)));
    }
    values
}

/// A value holding `bytes` behind their checksum.
#[cfg(test)]
fn checked_value(bytes: &[u8]) -> sled::IVec {
    let mut value = Vec::with_capacity(CRC_LEN + bytes.len());
    value.extend_from_slice(&crc32c::crc32c(bytes).to_be_bytes());
    value.extend_from_slice(bytes);
    sled::IVec::from(value)
}

/// Checks a value's checksum and returns what follows it.
fn verified(log: &str, key: &[u8], value: Bytes) -> Result<Bytes, StorageError> {
    let damaged = |what: &str| corrupt(log, key, what);
    if value.len() < CRC_LEN {
        return Err(damaged("is cut short"));
    }
    let stored = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
    if crc32c::crc32c(&value[CRC_LEN..]) != stored {
        return Err(damaged("fails its checksum"));
    }
    Ok(value.slice(CRC_LEN..))
}

/// The offset a stored key belongs to: a chunk's base offset (a piece's key starts with its
/// chunk's).
pub fn offset_of(key: &[u8]) -> u64 {
    key.get(..8)
        .and_then(|k| k.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Where a partition's chunks are: its index (and older chunks) in sled, and its segment
/// files. `log` names the partition in errors.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub log: &'a str,
    pub tree: &'a sled::Tree,
    pub segments: &'a Segments,
}

/// Where a walk reads its next chunk.
#[derive(Debug, Clone, Copy)]
pub enum Cursor {
    /// The chunk indexed under this offset.
    Key(u64),
    /// The frame at `position` of segment file `segment` (or, past that file's last
    /// frame, the next file's first), which holds offset `offset` (any, when `None`).
    File {
        offset: Option<u64>,
        segment: u64,
        position: u64,
    },
}

impl<'a> Source<'a> {
    /// The chunks holding offsets from `offset` on, in offset order, each read and checked,
    /// until one would start at or past `end` (the log's end as the caller knows it: the
    /// writer may be writing past it). Blocks.
    ///
    /// The index is sparse: it names the first chunk of a published batch every
    /// `INDEX_INTERVAL_BYTES` or so (and of each file's first batch), and the
    /// chunks after it follow one another in the segment files, so the walk starts at the
    /// entry at or before `offset` and reads on frame by frame. Chunks kept in sled itself
    /// (older stores) are each indexed, and looked up one by one.
    pub fn walk(
        self,
        offset: u64,
        end: u64,
    ) -> impl Iterator<Item = Result<Chunk, StorageError>> + 'a {
        let start = match self.tree.range(..=key(offset)).next_back() {
            Some(Ok((found, _))) => Ok(offset_of(&found)),
            Some(Err(err)) => Err(StorageError::from(err)),
            None => Ok(offset),
        };
        let (cursor, failed) = match start {
            Ok(start) => (Some(Cursor::Key(start)), None),
            Err(err) => (None, Some(err)),
        };
        let chunks = self.walk_from(cursor, end);
        failed
            .map(Err)
            .into_iter()
            .chain(chunks.filter(move |chunk| {
                chunk
                    .as_ref()
                    .map_or(true, |c| c.batch.next_offset() > offset)
            }))
    }

    /// The chunks from `cursor` on (see [`walk`](Self::walk)).
    pub fn walk_from(
        self,
        cursor: Option<Cursor>,
        end: u64,
    ) -> impl Iterator<Item = Result<Chunk, StorageError>> + 'a {
        let mut cursor = cursor;
        std::iter::from_fn(move || {
            let at = cursor.take()?;
            let chunk = match at {
                Cursor::Key(offset) if offset >= end => return None,
                Cursor::File {
                    offset: Some(offset),
                    ..
                } if offset >= end => return None,
                Cursor::Key(offset) => self.get(offset),
                Cursor::File {
                    offset,
                    segment,
                    position,
                } => self.frame_at(offset, segment, position),
            };
            let chunk = chunk.transpose()?;
            if let Ok(chunk) = &chunk {
                let next = chunk.batch.next_offset();
                cursor = Some(match chunk.pointer {
                    Some(pointer) => Cursor::File {
                        offset: Some(next),
                        segment: pointer.segment,
                        position: pointer.end(),
                    },
                    None => Cursor::Key(next),
                });
            }
            Some(chunk)
        })
    }

    /// The chunk in the frame at `segment`/`position`, or past that file's end the next
    /// file's first, checked to start at `offset` when that is given.
    fn frame_at(
        self,
        offset: Option<u64>,
        segment: u64,
        position: u64,
    ) -> Result<Option<Chunk>, StorageError> {
        let io = |e: std::io::Error| io_error(self.log, &e);
        let Some((pointer, value)) = self.segments.frame_at(segment, position).map_err(io)? else {
            return Ok(None);
        };
        let at = key(offset.unwrap_or(0));
        let chunk = parse(self.log, &at, value, Some(pointer))?;
        match offset {
            Some(offset) if chunk.batch.base_offset != offset => Err(corrupt(
                self.log,
                &at,
                &format!(
                    "is missing: segment file {:020}.seg holds offset {} at byte {}",
                    pointer.segment, chunk.batch.base_offset, pointer.position
                ),
            )),
            _ => Ok(Some(chunk)),
        }
    }

    /// The chunk whose key is `offset`, read from its segment file (or from sled, with its
    /// pieces, in stores written before segment files), checked. Blocks.
    pub fn get(self, offset: u64) -> Result<Option<Chunk>, StorageError> {
        let head_key = key(offset);
        let Some(value) = self.tree.get(head_key)? else {
            return Ok(None);
        };
        if let Some(pointer) = Pointer::decode(&value) {
            let value = self
                .segments
                .read(pointer)
                .map_err(|e| io_error(self.log, &e))?
                .ok_or_else(|| {
                    corrupt(
                        self.log,
                        &head_key,
                        &format!(
                            "is missing from its segment file {:020}.seg (at byte {})",
                            pointer.segment, pointer.position
                        ),
                    )
                })?;
            let chunk = parse(self.log, &head_key, value, Some(pointer))?;
            if chunk.batch.base_offset != offset {
                return Err(corrupt(self.log, &head_key, "holds another offset"));
            }
            return Ok(Some(chunk));
        }
        self.get_from_sled(offset, value)
    }

    /// A chunk kept in sled itself, whose head value is `value`.
    fn get_from_sled(self, offset: u64, value: sled::IVec) -> Result<Option<Chunk>, StorageError> {
        let (log, head_key) = (self.log, key(offset));
        let mut stored_bytes = value.len() as u64;
        let head = verified(log, &head_key, Bytes::from_owner(value))?;
        let flags = *head
            .first()
            .ok_or_else(|| corrupt(log, &head_key, "has no flags"))?;
        let tagged = flags & TAGGED != 0;
        let mut keys = vec![head_key.to_vec()];
        let body = if flags & PIECES == 0 {
            head
        } else {
            let body = head.slice(1..);
            let records_len = body
                .get(BATCH_HEADER_LEN - 4..BATCH_HEADER_LEN)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| corrupt(log, &head_key, "is cut short"))?;
            let whole_len = BATCH_HEADER_LEN + records_len + if tagged { TAG_LEN } else { 0 };
            // The length comes from the stored header: beyond a first guess, room grows
            // with the pieces actually found.
            let mut whole = BytesMut::with_capacity(1 + whole_len.min(PREALLOCATE_MAX));
            whole.extend_from_slice(&[flags]);
            whole.extend_from_slice(&body);
            for piece in 1..=u16::MAX {
                if whole.len() > whole_len {
                    break;
                }
                let piece_key = piece_key(offset, piece);
                let value = self
                    .tree
                    .get(&piece_key)?
                    .ok_or_else(|| corrupt(log, &head_key, &format!("lacks its piece {piece}")))?;
                stored_bytes += value.len() as u64;
                whole.extend_from_slice(&verified(log, &piece_key, Bytes::from_owner(value))?);
                keys.push(piece_key);
            }
            whole.freeze()
        };
        let mut chunk = parse_body(log, &head_key, body, None)?;
        if chunk.batch.base_offset != offset {
            return Err(corrupt(log, &head_key, "holds another offset"));
        }
        chunk.keys = keys;
        chunk.stored_bytes = stored_bytes;
        Ok(Some(chunk))
    }
}

/// The chunk a segment file's frame holds: `value` (checksum, flags, batch, tag) checked,
/// `key` naming it in errors.
pub fn parse(
    log: &str,
    key: &[u8],
    value: Bytes,
    pointer: Option<Pointer>,
) -> Result<Chunk, StorageError> {
    let body = verified(log, key, value)?;
    if body.first().is_some_and(|flags| flags & PIECES != 0) {
        return Err(corrupt(log, key, "claims pieces in a segment file"));
    }
    parse_body(log, key, body, pointer)
}

/// A chunk from its flags, batch and tag (the checksum verified).
fn parse_body(
    log: &str,
    key: &[u8],
    body: Bytes,
    pointer: Option<Pointer>,
) -> Result<Chunk, StorageError> {
    let flags = *body
        .first()
        .ok_or_else(|| corrupt(log, key, "has no flags"))?;
    let tagged = flags & TAGGED != 0;
    let body = body.slice(1..);
    let batch_len = body.len().saturating_sub(if tagged { TAG_LEN } else { 0 });
    if batch_len < BATCH_HEADER_LEN {
        return Err(corrupt(log, key, "is cut short"));
    }
    let batch = Batch::parse(body.slice(..batch_len))
        .map_err(|e| corrupt(log, key, &format!("holds no batch: {e}")))?;
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
    Ok(Chunk {
        batch,
        tag,
        keys: vec![key.to_vec()],
        stored_bytes: pointer.map_or(0, |p| p.frame_bytes()),
        pointer,
    })
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
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    fn batch_of(sizes: &[usize]) -> Batch {
        let records: Vec<Record> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| Record::new(vec![i as u8; n]).with_key(format!("k{i}")))
            .collect();
        Batch::parse(encode_batch(&records)).unwrap()
    }

    struct Stored {
        _dir: tempfile::TempDir,
        tree: sled::Tree,
        segments: Segments,
    }

    impl Stored {
        fn new() -> Stored {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::open(dir.path().join("sled")).unwrap();
            let tree = db.open_tree("log.1.0").unwrap();
            let segments =
                Segments::open(dir.path(), "log.1.0", Arc::new(AtomicU64::new(0))).unwrap();
            Stored {
                _dir: dir,
                tree,
                segments,
            }
        }

        fn append(&self, cuts: &Cuts) {
            let base = cuts.chunks[0].0.base_offset;
            let (segment, position) = self.segments.append(base, &cuts.frames).unwrap();
            // As the log indexes a batch: its first chunk only.
            let (offset, pointer) = cuts.pointers(segment, position).next().unwrap();
            self.tree
                .insert(key(offset), &pointer.encode()[..])
                .unwrap();
        }

        fn source(&self) -> Source<'_> {
            Source {
                log: "log.1.0",
                tree: &self.tree,
                segments: &self.segments,
            }
        }

        fn read_all(&self, from: u64) -> Result<Vec<Chunk>, StorageError> {
            self.source().walk(from, u64::MAX).collect()
        }
    }

    fn payload_sizes(chunks: &[Chunk]) -> Vec<usize> {
        chunks
            .iter()
            .flat_map(|c| c.batch.iter().map(|r| r.unwrap().record.payload.len()))
            .collect()
    }

    #[test]
    fn a_batch_is_cut_at_record_boundaries_and_read_back_whole() {
        let sizes = vec![1_000; 60];
        let tag = Tag {
            producer: ProducerBatch {
                producer_id: 7,
                sequence: 3,
            },
            first_offset: 100,
        };
        let cuts = cut(&batch_of(&sizes), 100, 42, Some(tag), &mut BytesMut::new()).unwrap();
        assert!(cuts.chunks.len() > 1, "60 KB goes in several chunks");
        for (batch, _, _) in &cuts.chunks {
            assert!(batch.encoded_len() <= CHUNK_BYTES);
            assert_eq!(batch.append_time_ms, 42);
        }
        let stored = Stored::new();
        stored.append(&cuts);
        let chunks = stored.read_all(100).unwrap();
        assert_eq!(payload_sizes(&chunks), sizes);
        assert_eq!(chunks.last().unwrap().batch.next_offset(), 160);
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
        // A walk from inside the batch starts at the chunk holding that offset, found
        // through the batch's index entry and the frames after it.
        let from_inside = stored.read_all(130).unwrap();
        let holding = &from_inside[0].batch;
        assert!(holding.base_offset <= 130 && 130 < holding.next_offset());
        assert_eq!(from_inside.last().unwrap().batch.next_offset(), 160);
        let framed = cuts.frames.len() as u64;
        let stored_bytes: u64 = chunks.iter().map(|c| c.stored_bytes).sum();
        assert_eq!(stored_bytes, framed);
    }

    #[test]
    fn a_record_larger_than_a_chunk_is_a_chunk_of_its_own() {
        let sizes = [10, 1_000_000, 10];
        let cuts = cut(&batch_of(&sizes), 0, 1, None, &mut BytesMut::new()).unwrap();
        assert_eq!(cuts.chunks.len(), 3);
        let stored = Stored::new();
        stored.append(&cuts);
        assert_eq!(payload_sizes(&stored.read_all(0).unwrap()), sizes);
    }

    #[test]
    fn chunks_kept_in_sled_by_older_stores_are_read_with_their_pieces() {
        let stored = Stored::new();
        let old = batch_of(&[10, 20_000, 10]);
        let mut sled_bytes = 0;
        for (i, record) in old.iter().enumerate() {
            let single = batch_of(&[record.unwrap().record.payload.len()]);
            let single = Batch {
                base_offset: i as u64,
                ..single
            };
            for (key, value) in sled_values(&single, None) {
                if i == 1 {
                    sled_bytes += value.len() as u64;
                }
                stored.tree.insert(&key[..], value).unwrap();
            }
        }
        // New chunks follow in a segment file.
        stored.append(&cut(&batch_of(&[5, 5]), 3, 1, None, &mut BytesMut::new()).unwrap());
        let chunks = stored.read_all(0).unwrap();
        assert_eq!(payload_sizes(&chunks), [10, 20_000, 10, 5, 5]);
        assert_eq!(chunks[1].keys.len(), 20_000usize.div_ceil(CHUNK_BYTES));
        assert_eq!(chunks[1].stored_bytes, sled_bytes);
        assert!(chunks[1].pointer.is_none() && chunks[3].pointer.is_some());
    }

    #[test]
    fn a_flipped_bit_is_an_error_naming_the_partition_and_offset() {
        let cuts = cut(&batch_of(&[10, 400_000]), 5, 1, None, &mut BytesMut::new()).unwrap();
        assert_eq!(cuts.chunks.len(), 2);
        let stored = Stored::new();
        stored.append(&cuts);
        // The second chunk's frame, in the first file (named 5), behind the first chunk's.
        let (_, pointer) = cuts.pointers(5, 0).nth(1).unwrap();
        let path = stored
            ._dir
            .path()
            .join("segments/log.1.0")
            .join(format!("{:020}.seg", 5));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[pointer.position as usize + 1000] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let err = stored.read_all(5).expect_err("the damage is found");
        let text = err.to_string();
        assert!(matches!(err, StorageError::Corrupt(_)), "{text}");
        assert!(
            text.contains("log.1.0") && text.contains("offset 6"),
            "{text}"
        );
        assert!(text.contains("checksum"), "{text}");

        // A chunk kept in sled by an older store, damaged in one of its pieces.
        let stored = Stored::new();
        for (key, value) in sled_values(
            &Batch {
                base_offset: 9,
                ..batch_of(&[20_000])
            },
            None,
        ) {
            stored.tree.insert(&key[..], value).unwrap();
        }
        let damaged = piece_key(9, 2);
        let mut value = stored.tree.get(&damaged).unwrap().unwrap().to_vec();
        value[100] ^= 0x10;
        stored.tree.insert(&damaged, value).unwrap();
        let text = stored
            .read_all(9)
            .expect_err("the damage is found")
            .to_string();
        assert!(
            text.contains("offset 9") && text.contains("checksum"),
            "{text}"
        );
    }
}
