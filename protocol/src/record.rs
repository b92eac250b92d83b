//! Records and record batches: the unit a producer publishes, the broker stores and a
//! consumer fetches, all in the same encoding.
//!
//! ```text
//! batch header (32 bytes, big-endian)
//! +-------------+----------------+----------------+------------+--------------+-------------+
//! | base_offset | append_time_ms | base_timestamp | attributes | record_count | records_len |
//! |     u64     |      u64       |   u64 (ms)     |     u8     |     u24      |     u32     |
//! +-------------+----------------+----------------+------------+--------------+-------------+
//! attributes  the codec: 0 none, 1 lz4, 2 zstd; every other value is refused
//! followed by records_len bytes holding record_count records, or with a codec those
//! records compressed (see [`crate::compression`]):
//!
//! record
//! +--------+-----------------+---------+-----+--------------+---------+-------------+---------+
//! | length | timestamp_delta | key_len | key | header_count | headers | payload_len | payload |
//! | varint | zigzag varint   | varint  |     |    varint    |         |   varint    |         |
//! +--------+-----------------+---------+-----+--------------+---------+-------------+---------+
//! length    bytes of the record after this field
//! key_len   0 = no key, n + 1 = a key of n bytes
//! header    name_len varint, name (UTF-8), value_len varint, value
//! ```
//!
//! Record `i` of a batch has offset `base_offset + i` and timestamp
//! `base_timestamp + timestamp_delta`. A producer sends `base_offset` and `append_time_ms` as
//! 0; the broker writes both when it appends, and never re-encodes the records. The
//! attributes byte was the top byte of a 32-bit record count before batches had codecs, so
//! every batch stored before then reads as uncompressed.

use bytes::{BufMut, Bytes, BytesMut};

use crate::compression::{self, Codec};
use crate::error::DecodeError;
use crate::wire::{put_varint, unzigzag, varint_size, zigzag, Reader};

/// Size of the batch header in bytes.
pub const BATCH_HEADER_LEN: usize = 32;

/// The most records one batch holds (its count is 24 bits).
pub const MAX_BATCH_RECORDS: u32 = (1 << 24) - 1;

/// One record as an application builds it or a consumer receives it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Milliseconds since the Unix epoch, set by the producer.
    pub timestamp: u64,
    /// Routes the record to `partition_for_key(key)` when present.
    pub key: Option<Bytes>,
    /// Application headers, in order; names need not be unique.
    pub headers: Vec<(String, Bytes)>,
    /// The message body.
    pub payload: Bytes,
}

impl Record {
    /// A record with just a payload, timestamped now.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Record {
            timestamp: now_ms(),
            payload: payload.into(),
            ..Record::default()
        }
    }

    /// The same record with a key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// The same record with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The size this record counts against the maximum message size: key, headers and payload.
    pub fn size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        self.key.as_ref().map_or(0, Bytes::len) + headers + self.payload.len()
    }

    fn body_len(&self, base_timestamp: u64) -> usize {
        let delta = zigzag(self.timestamp.wrapping_sub(base_timestamp) as i64);
        let key = match &self.key {
            None => 1,
            Some(k) => varint_size(k.len() as u64 + 1) + k.len(),
        };
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| {
                varint_size(n.len() as u64) + n.len() + varint_size(v.len() as u64) + v.len()
            })
            .sum();
        varint_size(delta)
            + key
            + varint_size(self.headers.len() as u64)
            + headers
            + varint_size(self.payload.len() as u64)
            + self.payload.len()
    }

    fn encode(&self, base_timestamp: u64, dst: &mut BytesMut) {
        put_varint(dst, self.body_len(base_timestamp) as u64);
        put_varint(
            dst,
            zigzag(self.timestamp.wrapping_sub(base_timestamp) as i64),
        );
        match &self.key {
            None => put_varint(dst, 0),
            Some(key) => {
                put_varint(dst, key.len() as u64 + 1);
                dst.put_slice(key);
            }
        }
        put_varint(dst, self.headers.len() as u64);
        for (name, value) in &self.headers {
            put_varint(dst, name.len() as u64);
            dst.put_slice(name.as_bytes());
            put_varint(dst, value.len() as u64);
            dst.put_slice(value);
        }
        put_varint(dst, self.payload.len() as u64);
        dst.put_slice(&self.payload);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Encodes records into one uncompressed batch.
pub fn encode_batch(records: &[Record]) -> Bytes {
    encode_batch_with(records, Codec::None)
}

/// Encodes records into one batch compressed with `codec`. At most [`MAX_BATCH_RECORDS`]
/// records, and at most 4 GiB of them before compression.
pub fn encode_batch_with(records: &[Record], codec: Codec) -> Bytes {
    assert!(
        records.len() <= MAX_BATCH_RECORDS as usize,
        "a batch holds at most {MAX_BATCH_RECORDS} records"
    );
    let base_timestamp = records.iter().map(|r| r.timestamp).min().unwrap_or(0);
    let len: usize = records
        .iter()
        .map(|r| {
            let body = r.body_len(base_timestamp);
            varint_size(body as u64) + body
        })
        .sum();
    let count = records.len() as u32;
    if codec == Codec::None {
        let mut dst = BytesMut::with_capacity(BATCH_HEADER_LEN + len);
        put_header(&mut dst, 0, 0, base_timestamp, codec, count, len as u32);
        for record in records {
            record.encode(base_timestamp, &mut dst);
        }
        return dst.freeze();
    }
    let mut plain = BytesMut::with_capacity(len);
    for record in records {
        record.encode(base_timestamp, &mut plain);
    }
    let packed = compression::compress(codec, &plain);
    let mut dst = BytesMut::with_capacity(BATCH_HEADER_LEN + packed.len());
    let packed_len = u32::try_from(packed.len()).expect("compressed records fit u32");
    put_header(&mut dst, 0, 0, base_timestamp, codec, count, packed_len);
    dst.put_slice(&packed);
    dst.freeze()
}

fn put_header(
    dst: &mut BytesMut,
    base: u64,
    append: u64,
    ts: u64,
    codec: Codec,
    count: u32,
    len: u32,
) {
    dst.put_u64(base);
    dst.put_u64(append);
    dst.put_u64(ts);
    dst.put_u32(u32::from(codec.bits()) << 24 | count);
    dst.put_u32(len);
}

/// A decoded batch header with its records still encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub base_offset: u64,
    pub append_time_ms: u64,
    pub base_timestamp: u64,
    /// How `records` are compressed.
    pub codec: Codec,
    /// At most [`MAX_BATCH_RECORDS`].
    pub record_count: u32,
    /// The encoded records (`records_len` bytes), compressed with `codec`.
    pub records: Bytes,
}

impl Batch {
    /// Reads one batch from the front of `src`, checking only the header.
    pub fn read(src: &mut Reader) -> Result<Batch, DecodeError> {
        use crate::wire::Wire;
        let base_offset = u64::get(src)?;
        let append_time_ms = u64::get(src)?;
        let base_timestamp = u64::get(src)?;
        let word = u32::get(src)?;
        let codec = Codec::from_bits((word >> 24) as u8)?;
        let record_count = word & MAX_BATCH_RECORDS;
        let len = u32::get(src)? as usize;
        let records = src
            .take(len)
            .map_err(|_| DecodeError::BadBatch("records cut short"))?;
        Ok(Batch {
            base_offset,
            append_time_ms,
            base_timestamp,
            codec,
            record_count,
            records,
        })
    }

    /// Parses a buffer holding exactly one batch.
    pub fn parse(bytes: Bytes) -> Result<Batch, DecodeError> {
        let mut reader = Reader::new(bytes);
        let batch = Batch::read(&mut reader)?;
        reader.finish()?;
        Ok(batch)
    }

    /// Offset one past the batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }

    /// Size of the batch's encoding.
    pub fn encoded_len(&self) -> usize {
        BATCH_HEADER_LEN + self.records.len()
    }

    /// Appends this batch's encoding with the given offset and append time.
    pub fn encode_as(&self, base_offset: u64, append_time_ms: u64, dst: &mut BytesMut) {
        let len = self.records.len() as u32;
        put_header(
            dst,
            base_offset,
            append_time_ms,
            self.base_timestamp,
            self.codec,
            self.record_count,
            len,
        );
        dst.put_slice(&self.records);
    }

    /// Appends this batch's encoding unchanged.
    pub fn encode(&self, dst: &mut BytesMut) {
        self.encode_as(self.base_offset, self.append_time_ms, dst);
    }

    /// Iterates the records, decoding each on demand; a compressed batch is decompressed
    /// first (a failure to is the iterator's one error).
    pub fn iter(&self) -> RecordIter {
        let (records, failed) = match self.plain_records() {
            Ok(records) => (records, None),
            Err(err) => (Bytes::new(), Some(err)),
        };
        RecordIter {
            reader: Reader::new(records),
            offset: self.base_offset,
            left: self.record_count,
            base_timestamp: self.base_timestamp,
            failed,
        }
    }

    /// The records' encoding, decompressed if need be.
    fn plain_records(&self) -> Result<Bytes, DecodeError> {
        match self.codec {
            Codec::None => Ok(self.records.clone()),
            codec => compression::decompress(codec, &self.records),
        }
    }

    /// The bytes the records take uncompressed, as a compressed batch declares them;
    /// refused above `limit` (which decompressing never exceeds).
    pub fn uncompressed_len(&self, limit: usize) -> Result<usize, DecodeError> {
        match self.codec {
            Codec::None => Ok(self.records.len()),
            _ => compression::declared_len(&self.records, limit),
        }
    }

    /// The same batch uncompressed (itself when it is).
    pub fn decompressed(&self) -> Result<Batch, DecodeError> {
        Ok(Batch {
            codec: Codec::None,
            records: self.plain_records()?,
            ..self.clone()
        })
    }

    /// Checks every record and returns the batch's statistics; see [`BatchStats`].
    pub fn validate(&self) -> Result<BatchStats, DecodeError> {
        let mut stats = BatchStats {
            any_key: false,
            largest_record: 0,
        };
        let mut records = self.iter();
        for record in records.by_ref() {
            let record = record?.record;
            stats.any_key |= record.key.is_some();
            stats.largest_record = stats.largest_record.max(record.size());
        }
        if records.reader.remaining() != 0 {
            return Err(DecodeError::BadBatch("bytes after the last record"));
        }
        Ok(stats)
    }

    /// The records from offset `from` on, at most `max_records` of them and at most
    /// `max_bytes` of encoding (header included), as a new batch sharing this one's bytes.
    /// The first record is always included, however large, so a reader can progress.
    /// Returns `None` when no record of this batch is at or after `from`.
    pub fn slice(
        &self,
        from: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<Option<Batch>, DecodeError> {
        let start = from.max(self.base_offset);
        let end = self
            .next_offset()
            .min(start.saturating_add(u64::from(max_records)));
        if start >= end {
            return Ok(None);
        }
        let whole = start == self.base_offset && end == self.next_offset();
        if whole && self.encoded_len() <= max_bytes {
            return Ok(Some(self.clone()));
        }
        if self.codec != Codec::None {
            // Compressed bytes cannot be cut at a record: hand out the part asked for
            // uncompressed, so a slice holds exactly its records whatever the codec.
            return self.decompressed()?.slice(from, max_records, max_bytes);
        }
        let mut reader = Reader::new(self.records.clone());
        let next_len = |reader: &mut Reader| -> Result<usize, DecodeError> {
            let before = reader.remaining();
            let len = reader.varint_len()?;
            reader.take(len)?;
            Ok(before - reader.remaining())
        };
        let mut head = 0;
        for _ in self.base_offset..start {
            head += next_len(&mut reader)?;
        }
        let (mut body, mut count) = (0, 0u64);
        while start + count < end {
            let len = next_len(&mut reader)?;
            if count > 0 && BATCH_HEADER_LEN + body + len > max_bytes {
                break;
            }
            body += len;
            count += 1;
        }
        Ok(Some(Batch {
            base_offset: start,
            append_time_ms: self.append_time_ms,
            base_timestamp: self.base_timestamp,
            codec: Codec::None,
            record_count: count as u32,
            records: self.records.slice(head..head + body),
        }))
    }
}

/// What the broker learns from validating a published batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Whether any record carries a key (keyed records are routed by key).
    pub any_key: bool,
    /// The largest [`Record::size`] in the batch.
    pub largest_record: usize,
}

/// A record with the offset it has in its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    pub record: Record,
}

/// Iterator over a batch's records; see [`Batch::iter`].
#[derive(Debug, Clone)]
pub struct RecordIter {
    reader: Reader,
    offset: u64,
    left: u32,
    base_timestamp: u64,
    /// Why a compressed batch's records could not be read: the iterator's only item.
    failed: Option<DecodeError>,
}

impl RecordIter {
    fn next_record(&mut self) -> Result<StoredRecord, DecodeError> {
        let len = self.reader.varint_len()?;
        let mut r = Reader::new(self.reader.take(len)?);
        let timestamp = self
            .base_timestamp
            .wrapping_add(unzigzag(r.varint()?) as u64);
        let key = match r.varint()? {
            0 => None,
            n => Some(r.take(usize::try_from(n - 1).map_err(|_| DecodeError::Truncated)?)?),
        };
        let header_count = r.varint()?;
        let mut headers = Vec::with_capacity((header_count as usize).min(r.remaining()));
        for _ in 0..header_count {
            let name_len = r.varint_len()?;
            let name =
                String::from_utf8(r.take(name_len)?.to_vec()).map_err(|_| DecodeError::BadUtf8)?;
            let value_len = r.varint_len()?;
            headers.push((name, r.take(value_len)?));
        }
        let payload_len = r.varint_len()?;
        let payload = r.take(payload_len)?;
        r.finish()
            .map_err(|_| DecodeError::BadBatch("record length disagrees with its fields"))?;
        let offset = self.offset;
        self.offset += 1;
        Ok(StoredRecord {
            offset,
            record: Record {
                timestamp,
                key,
                headers,
                payload,
            },
        })
    }
}

impl Iterator for RecordIter {
    type Item = Result<StoredRecord, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(err) = self.failed.take() {
            self.left = 0;
            return Some(Err(err));
        }
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let item = self.next_record().map_err(|err| match err {
            DecodeError::Truncated => DecodeError::BadBatch("record cut short"),
            other => other,
        });
        if item.is_err() {
            self.left = 0;
        }
        Some(item)
    }
}

/// Decodes a sequence of batches laid end to end (a fetch or deliver body).
pub fn read_batches(bytes: Bytes) -> Result<Vec<Batch>, DecodeError> {
    let mut reader = Reader::new(bytes);
    let mut batches = Vec::new();
    while reader.remaining() > 0 {
        batches.push(Batch::read(&mut reader)?);
    }
    Ok(batches)
}

/// The partition for a keyed record: 32-bit FNV-1a of the key bytes, modulo the partition
/// count. This function is part of the protocol and never changes.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &byte in key {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record> {
        vec![
            Record {
                timestamp: 1_000,
                payload: Bytes::from_static(b"one"),
                ..Default::default()
            },
            Record {
                timestamp: 990,
                key: Some(Bytes::from_static(b"k")),
                headers: vec![("h".into(), Bytes::from_static(b"v"))],
                payload: Bytes::from_static(b"two"),
            },
            Record {
                timestamp: 5_000,
                key: Some(Bytes::new()),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn batch_round_trips_with_offsets() {
        let encoded = encode_batch(&sample());
        let batch = Batch::parse(encoded).unwrap();
        assert_eq!(
            batch.validate().unwrap(),
            BatchStats {
                any_key: true,
                largest_record: 6
            }
        );
        let mut stored = BytesMut::new();
        batch.encode_as(40, 77, &mut stored);
        let batch = Batch::parse(stored.freeze()).unwrap();
        let records: Vec<_> = batch.iter().collect::<Result<_, _>>().unwrap();
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![40, 41, 42]);
        let originals: Vec<Record> = records.into_iter().map(|r| r.record).collect();
        assert_eq!(originals, sample());
    }

    #[test]
    fn compressed_batches_round_trip_and_slice_exactly() {
        for codec in [Codec::Lz4, Codec::Zstd] {
            let batch = Batch::parse(encode_batch_with(&sample(), codec)).unwrap();
            assert_eq!(batch.codec, codec);
            assert_eq!(batch.validate().unwrap().largest_record, 6);
            let mut stored = BytesMut::new();
            batch.encode_as(10, 77, &mut stored);
            let stored = Batch::parse(stored.freeze()).unwrap();
            assert_eq!((stored.codec, stored.base_offset), (codec, 10));
            let records: Vec<Record> = stored.iter().map(|r| r.unwrap().record).collect();
            assert_eq!(records, sample());
            // The whole batch travels compressed; a part of it, uncompressed and exact.
            assert_eq!(stored.slice(10, 3, usize::MAX).unwrap().unwrap(), stored);
            let middle = stored.slice(11, 1, usize::MAX).unwrap().unwrap();
            assert_eq!(
                (middle.codec, middle.base_offset, middle.record_count),
                (Codec::None, 11, 1)
            );
            let only: Vec<_> = middle.iter().map(|r| r.unwrap().record.payload).collect();
            assert_eq!(only, vec![Bytes::from_static(b"two")]);
            let plain = Batch::parse(encode_batch(&sample())).unwrap();
            assert_eq!(batch.decompressed().unwrap().records, plain.records);
            assert_eq!(
                batch.uncompressed_len(1 << 20).unwrap(),
                plain.records.len()
            );
            assert!(batch.uncompressed_len(4).is_err());
        }
    }

    #[test]
    fn a_compressed_batch_that_lies_about_its_records_is_refused() {
        for codec in [Codec::Lz4, Codec::Zstd] {
            let good = encode_batch_with(&sample(), codec).to_vec();
            // Claims one record more, and one fewer, than it holds.
            for count in [4u32, 2] {
                let mut lying = good.clone();
                lying[24..28]
                    .copy_from_slice(&(u32::from(codec.bits()) << 24 | count).to_be_bytes());
                let batch = Batch::parse(lying.into()).unwrap();
                assert!(
                    batch.validate().is_err(),
                    "{codec}: {count} records claimed"
                );
            }
            // Claims another codec, or one that does not exist.
            let mut other = good.clone();
            other[24] = if codec == Codec::Lz4 { 2 } else { 1 };
            assert!(Batch::parse(other.into()).unwrap().validate().is_err());
            let mut plain = good.clone();
            plain[24] = 0;
            assert!(Batch::parse(plain.into()).unwrap().validate().is_err());
            let mut unknown = good.clone();
            unknown[24] = 7;
            assert!(Batch::parse(unknown.into()).is_err());
        }
    }

    #[test]
    fn slice_selects_a_record_range() {
        let mut stored = BytesMut::new();
        Batch::parse(encode_batch(&sample()))
            .unwrap()
            .encode_as(10, 0, &mut stored);
        let batch = Batch::parse(stored.freeze()).unwrap();
        let middle = batch.slice(11, 1, usize::MAX).unwrap().unwrap();
        assert_eq!(middle.base_offset, 11);
        let only: Vec<_> = middle.iter().map(|r| r.unwrap().record.payload).collect();
        assert_eq!(only, vec![Bytes::from_static(b"two")]);
        assert_eq!(batch.slice(13, 5, usize::MAX).unwrap(), None);
        assert_eq!(batch.slice(0, 100, usize::MAX).unwrap().unwrap(), batch);
    }

    #[test]
    fn slice_respects_max_bytes_but_keeps_one_record() {
        let batch = Batch::parse(encode_batch(&sample())).unwrap();
        let one = batch.slice(0, 100, 1).unwrap().unwrap();
        assert_eq!(one.record_count, 1);
        let all = batch.slice(0, 100, batch.encoded_len()).unwrap().unwrap();
        assert_eq!(all, batch);
        let two = batch
            .slice(0, 100, batch.encoded_len() - 1)
            .unwrap()
            .unwrap();
        assert_eq!(two.record_count, 2);
    }

    #[test]
    fn count_larger_than_records_is_rejected() {
        let mut bytes = BytesMut::from(&encode_batch(&sample())[..]);
        bytes[27] = 4; // record_count 3 -> 4
        let batch = Batch::parse(bytes.freeze()).unwrap();
        assert!(matches!(batch.validate(), Err(DecodeError::BadBatch(_))));
    }

    #[test]
    fn key_hash_is_stable() {
        // Fixed values: changing the hash would move every keyed record.
        assert_eq!(partition_for_key(b"", 1_000_000), 2_166_136_261 % 1_000_000);
        assert_eq!(partition_for_key(b"a", u32::MAX), 0xe40c_292c);
        assert_eq!(partition_for_key(b"order-17", 0), 0);
    }
}
