//! Compressed batches: the producer picks a codec per batch, as Kafka's producers do.
//!
//! A batch's codec lives in the top byte of its header's `record_count` word (the
//! *attributes*; see [`crate::record`]). A compressed batch's `records` are
//!
//! ```text
//! +------------------+----------+-------------------------------------------+
//! | uncompressed_len |  crc32c  | the records' encoding, compressed          |
//! |     u32 (BE)     | u32 (BE) | lz4: one LZ4 block; zstd: one zstd frame   |
//! +------------------+----------+-------------------------------------------+
//! ```
//!
//! and `records_len` counts these bytes, so everything that sizes and stores a batch (fetch
//! limits, disk accounting) sees the compressed bytes. The CRC-32C covers the compressed
//! bytes: the producer computes it, and whoever decompresses checks it first, so damage is
//! found before a decompressor runs over it, and the same way for both codecs (neither an
//! LZ4 block nor a zstd frame without its optional checksum notices every flipped bit). The
//! declared length bounds the buffer decompression may fill: a batch claiming more than
//! [`MAX_UNCOMPRESSED`] (or, on the broker, more than its maximum frame size) is refused
//! before anything is allocated, and one that decompresses to any other length than it
//! declared is corrupt.

use bytes::Bytes;

use crate::error::DecodeError;

/// The most bytes a compressed batch may declare its records to take, whoever reads it.
/// The broker holds published batches to its maximum frame size, uncompressed.
pub const MAX_UNCOMPRESSED: usize = 256 * 1024 * 1024;

/// The zstd level producers compress at: zstd's own default, a good ratio at several
/// hundred MB/s on one core.
pub const ZSTD_LEVEL: i32 = 3;

const PREFIX_LEN: usize = 8;

/// How a batch's records are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Codec {
    #[default]
    None,
    /// An LZ4 block: fast both ways, a modest ratio.
    Lz4,
    /// A zstd frame at [`ZSTD_LEVEL`]: a better ratio for more CPU on the producer.
    Zstd,
}

impl Codec {
    /// Every codec, in the order of their numbers.
    pub const ALL: [Codec; 3] = [Codec::None, Codec::Lz4, Codec::Zstd];

    /// The codec's number in a batch's attributes.
    pub fn bits(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 1,
            Codec::Zstd => 2,
        }
    }

    /// The codec numbered `bits` (the attributes byte; every other bit is reserved and 0).
    pub fn from_bits(bits: u8) -> Result<Codec, DecodeError> {
        Codec::ALL
            .into_iter()
            .find(|codec| codec.bits() == bits)
            .ok_or(DecodeError::BadBatch("unknown codec or batch attributes"))
    }

    /// The codec's name, as the CLI and the HTTP gateway spell it.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Codec {
    type Err = String;

    fn from_str(name: &str) -> Result<Codec, String> {
        Codec::ALL
            .into_iter()
            .find(|codec| codec.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| format!("unknown codec {name:?}: none, lz4 or zstd"))
    }
}

/// `records` compressed with `codec` behind their length (not for [`Codec::None`]).
pub(crate) fn compress(codec: Codec, records: &[u8]) -> Vec<u8> {
    let len = u32::try_from(records.len()).expect("a batch's records fit their u32 length");
    let mut out = Vec::with_capacity(PREFIX_LEN + records.len() / 2);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    match codec {
        Codec::None => out.extend_from_slice(records),
        Codec::Lz4 => {
            out.resize(
                PREFIX_LEN + lz4_flex::block::get_maximum_output_size(records.len()),
                0,
            );
            let written = lz4_flex::block::compress_into(records, &mut out[PREFIX_LEN..])
                .expect("the output holds LZ4's worst case");
            out.truncate(PREFIX_LEN + written);
        }
        Codec::Zstd => {
            let compressed = zstd::bulk::compress(records, ZSTD_LEVEL)
                .expect("zstd compresses any input in memory");
            out.extend_from_slice(&compressed);
        }
    }
    let crc = crc32c::crc32c(&out[PREFIX_LEN..]);
    out[4..PREFIX_LEN].copy_from_slice(&crc.to_be_bytes());
    out
}

/// The length a compressed batch's records declare, checked against `limit`.
pub(crate) fn declared_len(compressed: &[u8], limit: usize) -> Result<usize, DecodeError> {
    let prefix = compressed
        .get(..PREFIX_LEN)
        .ok_or(DecodeError::BadBatch("compressed records cut short"))?;
    let len = u32::from_be_bytes(prefix[..4].try_into().expect("four bytes")) as usize;
    if len > limit.min(MAX_UNCOMPRESSED) {
        return Err(DecodeError::BadBatch(
            "compressed records declare more bytes than allowed",
        ));
    }
    Ok(len)
}

/// The records of a batch compressed with `codec`, decompressed to exactly the length they
/// declare.
pub(crate) fn decompress(codec: Codec, compressed: &[u8]) -> Result<Bytes, DecodeError> {
    let len = declared_len(compressed, MAX_UNCOMPRESSED)?;
    let body = &compressed[PREFIX_LEN..];
    let crc = u32::from_be_bytes(compressed[4..PREFIX_LEN].try_into().expect("four bytes"));
    if crc32c::crc32c(body) != crc {
        return Err(DecodeError::BadBatch(
            "compressed records fail their checksum",
        ));
    }
    let corrupt = DecodeError::BadBatch("compressed records are corrupt");
    let records = match codec {
        Codec::None => return Ok(Bytes::copy_from_slice(body)),
        Codec::Lz4 => {
            let mut out = vec![0; len];
            let written =
                lz4_flex::block::decompress_into(body, &mut out).map_err(|_| corrupt.clone())?;
            out.truncate(written);
            out
        }
        Codec::Zstd => zstd::bulk::decompress(body, len).map_err(|_| corrupt.clone())?,
    };
    if records.len() != len {
        return Err(DecodeError::BadBatch(
            "compressed records decompress to another length than they declare",
        ));
    }
    Ok(Bytes::from(records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_and_names_itself() {
        let records: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 97).to_be_bytes())
            .collect();
        for codec in [Codec::Lz4, Codec::Zstd] {
            let packed = compress(codec, &records);
            assert!(
                packed.len() < records.len() / 4,
                "{codec}: {}",
                packed.len()
            );
            assert_eq!(decompress(codec, &packed).unwrap(), records);
            assert_eq!(Codec::from_bits(codec.bits()).unwrap(), codec);
            assert_eq!(codec.name().parse::<Codec>().unwrap(), codec);
        }
        assert!(Codec::from_bits(3).is_err());
        assert!(Codec::from_bits(0x81).is_err());
        assert!("gzip".parse::<Codec>().unwrap_err().contains("lz4"));
    }

    #[test]
    fn lies_and_damage_are_refused() {
        let records = vec![7u8; 4096];
        for codec in [Codec::Lz4, Codec::Zstd] {
            let good = compress(codec, &records);
            let mut longer = good.clone();
            longer[..4].copy_from_slice(&5000u32.to_be_bytes());
            assert!(
                decompress(codec, &longer).is_err(),
                "{codec}: a longer claim"
            );
            let mut shorter = good.clone();
            shorter[..4].copy_from_slice(&100u32.to_be_bytes());
            assert!(
                decompress(codec, &shorter).is_err(),
                "{codec}: a shorter claim"
            );
            let mut huge = good.clone();
            huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
            assert!(decompress(codec, &huge).is_err(), "{codec}: a huge claim");
            for at in 4..good.len() {
                let mut flipped = good.clone();
                flipped[at] ^= 0x10;
                assert!(
                    decompress(codec, &flipped).is_err(),
                    "{codec}: byte {at} flipped"
                );
            }
            assert!(
                decompress(codec, &good[..good.len() - 1]).is_err(),
                "{codec}: cut"
            );
            assert!(decompress(codec, &good[..7]).is_err(), "{codec}: no prefix");
        }
    }
}
