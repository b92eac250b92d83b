//! The fixed binary encodings of the metadata records kept in sled.

use super::StorageError;

/// Per-partition retention limits; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetentionPolicy {
    pub max_age_ms: u64,
    pub max_bytes: u64,
    pub max_messages: u64,
}

/// A topic as stored: `id u64, partitions u32, max_age_ms u64, max_bytes u64,
/// max_messages u64`, keyed by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    pub name: String,
    pub id: u64,
    pub partitions: u32,
    pub retention: RetentionPolicy,
}

impl TopicRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let r = &self.retention;
        [
            &self.id.to_be_bytes()[..],
            &self.partitions.to_be_bytes(),
            &r.max_age_ms.to_be_bytes(),
            &r.max_bytes.to_be_bytes(),
            &r.max_messages.to_be_bytes(),
        ]
        .concat()
    }

    pub(super) fn decode(name: &[u8], value: &[u8]) -> Result<TopicRecord, StorageError> {
        let corrupt = || StorageError::Corrupt("topic record".into());
        if value.len() != 36 {
            return Err(corrupt());
        }
        let name = String::from_utf8(name.to_vec()).map_err(|_| corrupt())?;
        let u64_at = |at: usize| decode_u64(&value[at..at + 8]);
        Ok(TopicRecord {
            name,
            id: u64_at(0)?,
            partitions: u32::from_be_bytes([value[8], value[9], value[10], value[11]]),
            retention: RetentionPolicy {
                max_age_ms: u64_at(12)?,
                max_bytes: u64_at(20)?,
                max_messages: u64_at(28)?,
            },
        })
    }
}

/// A consumer group as stored: its mode (1 pull, 2 push) and push settings:
/// `mode u8, ack_timeout_ms u32, max_deliveries u32, dead_letter (rest, UTF-8)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRecord {
    pub mode: u8,
    pub ack_timeout_ms: u32,
    pub max_deliveries: u32,
    pub dead_letter: String,
}

impl GroupRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        [
            &[self.mode][..],
            &self.ack_timeout_ms.to_be_bytes(),
            &self.max_deliveries.to_be_bytes(),
            self.dead_letter.as_bytes(),
        ]
        .concat()
    }

    pub(super) fn decode(value: &[u8]) -> Result<GroupRecord, StorageError> {
        let corrupt = || StorageError::Corrupt("group record".into());
        if value.len() < 9 {
            return Err(corrupt());
        }
        Ok(GroupRecord {
            mode: value[0],
            ack_timeout_ms: u32::from_be_bytes([value[1], value[2], value[3], value[4]]),
            max_deliveries: u32::from_be_bytes([value[5], value[6], value[7], value[8]]),
            dead_letter: String::from_utf8(value[9..].to_vec()).map_err(|_| corrupt())?,
        })
    }
}

pub(super) fn decode_u64(bytes: &[u8]) -> Result<u64, StorageError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt("u64 field".into()))?;
    Ok(u64::from_be_bytes(array))
}
