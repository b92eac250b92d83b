//! Consumer groups in the store: their records, committed offsets (pull) and ack states
//! (push).

use super::*;

impl Store {
    /// The stored group record. Blocks.
    pub fn group(&self, topic_id: u64, group: &str) -> Result<Option<GroupRecord>, StorageError> {
        self.groups
            .get(group_key(topic_id, group))?
            .map(|v| GroupRecord::decode(&v))
            .transpose()
    }

    /// Every group of a topic, by name. Blocks.
    pub fn groups(&self, topic_id: u64) -> Result<Vec<(String, GroupRecord)>, StorageError> {
        self.groups
            .scan_prefix(topic_id.to_be_bytes())
            .map(|entry| {
                let (key, value) = entry?;
                let name = String::from_utf8_lossy(&key[8..]).into_owned();
                Ok((name, GroupRecord::decode(&value)?))
            })
            .collect()
    }

    /// Stores a group record durably (through the writer, so it shares its commits). Blocks.
    pub fn put_group(
        &self,
        topic_id: u64,
        group: &str,
        record: GroupRecord,
    ) -> Result<(), StorageError> {
        let (groups, key) = (self.groups.clone(), group_key(topic_id, group));
        self.writer.run(move || {
            groups
                .insert(key, record.encode())
                .map(drop)
                .map_err(Into::into)
        })
    }

    /// The committed offset of a group on a partition. Blocks.
    pub fn offset(
        &self,
        topic_id: u64,
        partition: u32,
        group: &str,
    ) -> Result<Option<u64>, StorageError> {
        let value = self.offsets.get(offset_key(topic_id, partition, group))?;
        value.map(|v| records::decode_u64(&v)).transpose()
    }

    /// Stores committed offsets durably (through the writer, so they share its commits).
    /// Blocks.
    pub fn put_offsets(
        &self,
        topic_id: u64,
        group: &str,
        offsets: &[(u32, u64)],
    ) -> Result<(), StorageError> {
        bounded_blocking(self.queue_offsets(topic_id, group, offsets), self.timeout)
    }

    /// Queues committed offsets for the writer without waiting; the receiver resolves once
    /// they are committed under the fsync policy. Writes queued earlier land first.
    pub fn queue_offsets(
        &self,
        topic_id: u64,
        group: &str,
        offsets: &[(u32, u64)],
    ) -> tokio::sync::oneshot::Receiver<Result<(), StorageError>> {
        let tree = self.offsets.clone();
        let entries: Vec<_> = offsets
            .iter()
            .map(|&(partition, offset)| {
                (offset_key(topic_id, partition, group), offset.to_be_bytes())
            })
            .collect();
        self.writer.submit(move || {
            for (key, value) in entries {
                tree.insert(key, &value)?;
            }
            Ok(())
        })
    }

    /// A push group's stored ack state on a partition. Blocks.
    pub fn ack_state(
        &self,
        topic_id: u64,
        partition: u32,
        group: &str,
    ) -> Result<Option<sled::IVec>, StorageError> {
        Ok(self.acks.get(offset_key(topic_id, partition, group))?)
    }

    /// Queues push-group ack states (encoded) for the writer; the receiver resolves once
    /// they are committed under the fsync policy.
    pub fn queue_ack_states(
        &self,
        topic_id: u64,
        group: &str,
        states: Vec<(u32, Vec<u8>)>,
    ) -> tokio::sync::oneshot::Receiver<Result<(), StorageError>> {
        let tree = self.acks.clone();
        let entries: Vec<_> = states
            .into_iter()
            .map(|(partition, state)| (offset_key(topic_id, partition, group), state))
            .collect();
        self.writer.submit(move || {
            for (key, value) in entries {
                tree.insert(key, value)?;
            }
            Ok(())
        })
    }

    /// Deletes a group's record, committed offsets and ack state on `partitions`. Blocks.
    pub fn delete_group(
        &self,
        topic_id: u64,
        group: &str,
        partitions: u32,
    ) -> Result<(), StorageError> {
        let (groups, offsets, acks) =
            (self.groups.clone(), self.offsets.clone(), self.acks.clone());
        let group = group.to_string();
        self.writer.run(move || {
            for partition in 0..partitions {
                offsets.remove(offset_key(topic_id, partition, &group))?;
                acks.remove(offset_key(topic_id, partition, &group))?;
            }
            groups.remove(group_key(topic_id, &group))?;
            Ok(())
        })
    }
}

pub(super) fn group_key(topic_id: u64, group: &str) -> Vec<u8> {
    [&topic_id.to_be_bytes()[..], group.as_bytes()].concat()
}

pub(super) fn offset_key(topic_id: u64, partition: u32, group: &str) -> Vec<u8> {
    [
        &topic_id.to_be_bytes()[..],
        &partition.to_be_bytes()[..],
        group.as_bytes(),
    ]
    .concat()
}
