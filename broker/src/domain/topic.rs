//! One topic: its partitions, and how a published batch is routed and appended.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use herald_protocol::{encode_batch_with, partition_for_key, Batch, Codec, Record};

use crate::error::BrokerError;
use crate::storage::{Appended, Durability, PartitionLog, ProducerBatch, Store, TopicRecord};

/// A topic and its partition logs.
pub struct Topic {
    record: TopicRecord,
    partitions: Vec<Arc<PartitionLog>>,
    round_robin: AtomicU32,
}

/// A run of consecutive records of one publish that went to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub partition: u32,
    pub base_offset: u64,
    pub count: u32,
}

/// A committed publish: where its records went, in record order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub runs: Vec<Run>,
    pub durability: Durability,
}

impl Topic {
    pub(super) fn new(record: TopicRecord, partitions: Vec<Arc<PartitionLog>>) -> Topic {
        Topic {
            record,
            partitions,
            round_robin: AtomicU32::new(0),
        }
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.record.name
    }

    /// The topic's stored settings.
    pub fn record(&self) -> &TopicRecord {
        &self.record
    }

    /// The partition logs, by partition number.
    pub fn partitions(&self) -> &[Arc<PartitionLog>] {
        &self.partitions
    }

    /// The log of one partition.
    pub fn partition(&self, partition: u32) -> Result<&Arc<PartitionLog>, BrokerError> {
        self.partitions
            .get(partition as usize)
            .ok_or_else(|| BrokerError::UnknownPartition {
                topic: self.record.name.clone(),
                partition,
            })
    }

    /// Validates and routes `batch`, and queues its appends before returning, so publishes
    /// queued one after another keep their order. The future resolves once every part is
    /// committed.
    ///
    /// With `partition` `None`, an unkeyed batch goes whole to the next partition
    /// round-robin; keyed records go to `partition_for_key` (unkeyed records among them go
    /// to the round-robin partition). A batch split over several partitions is appended per
    /// partition: each part is atomic, the whole is not.
    ///
    /// A numbered batch from an idempotent `producer` must go whole to one partition it
    /// names (or to a topic's only partition): its number counts batches to that partition.
    pub fn publish(
        &self,
        store: &Store,
        batch: Batch,
        partition: Option<u32>,
        max_message_bytes: u32,
        producer: Option<ProducerBatch>,
    ) -> Result<impl Future<Output = Result<Published, BrokerError>> + Send + 'static, BrokerError>
    {
        // A compressed batch that may be split by key is decompressed once, here: its
        // records are checked and routed from the same copy (checking the compressed batch
        // and then iterating it to route decompressed it twice).
        let routed = partition.is_none() && producer.is_none() && self.partitions.len() > 1;
        let plain = (routed && batch.codec != Codec::None)
            .then(|| batch.decompressed())
            .transpose()
            .map_err(BrokerError::BadBatch)?;
        let stats = plain
            .as_ref()
            .unwrap_or(&batch)
            .validate()
            .map_err(BrokerError::BadBatch)?;
        if batch.record_count == 0 {
            return Err(BrokerError::EmptyBatch);
        }
        if stats.largest_record > max_message_bytes as usize {
            return Err(BrokerError::MessageTooLarge {
                size: stats.largest_record,
                max: max_message_bytes,
            });
        }
        let partition = match (partition, producer) {
            (None, Some(_)) if self.partitions.len() == 1 => Some(0),
            (None, Some(_)) => {
                return Err(BrokerError::InvalidArgument(format!(
                    "a numbered batch (producer id set) must name its partition: topic {:?} has {}",
                    self.record.name,
                    self.partitions.len()
                )))
            }
            (partition, _) => partition,
        };
        let parts = match partition {
            Some(p) => vec![(self.partition(p)?, p, batch, None)],
            None => self.route(batch, plain.as_ref(), stats.any_key)?,
        };
        let pending: Vec<_> = parts
            .into_iter()
            .map(|(log, p, part, order)| {
                let appended = match producer {
                    Some(producer) => store.append_as(log, part, producer),
                    None => store.append(log, part),
                };
                (p, appended, order)
            })
            .collect();
        let limit = store.timeout();
        Ok(async move {
            let mut appended = Vec::with_capacity(pending.len());
            for (partition, rx, order) in pending {
                let result = crate::storage::bounded(rx, limit).await?;
                appended.push((partition, result, order));
            }
            Ok(runs_in_record_order(appended))
        })
    }

    /// Splits `batch` by key; `plain` is the batch decompressed, when it is compressed
    /// and was decompressed already.
    #[allow(clippy::type_complexity)]
    fn route(
        &self,
        batch: Batch,
        plain: Option<&Batch>,
        keyed: bool,
    ) -> Result<Vec<(&Arc<PartitionLog>, u32, Batch, Option<Vec<usize>>)>, BrokerError> {
        let count = self.partitions.len() as u32;
        let fallback = self.round_robin.fetch_add(1, Ordering::Relaxed) % count;
        if !keyed || count == 1 {
            return Ok(vec![(
                &self.partitions[fallback as usize],
                fallback,
                batch,
                None,
            )]);
        }
        let mut by_partition: BTreeMap<u32, (Vec<Record>, Vec<usize>)> = BTreeMap::new();
        for (index, stored) in plain.unwrap_or(&batch).iter().enumerate() {
            let record = stored.map_err(BrokerError::BadBatch)?.record;
            let p = record
                .key
                .as_ref()
                .map_or(fallback, |k| partition_for_key(k, count));
            let entry = by_partition.entry(p).or_default();
            entry.0.push(record);
            entry.1.push(index);
        }
        // Every record to one partition: store the batch as it came, without re-encoding.
        let mut partitions = by_partition.keys();
        if let (Some(&p), None) = (partitions.next(), partitions.next()) {
            return Ok(vec![(&self.partitions[p as usize], p, batch, None)]);
        }
        by_partition
            .into_iter()
            .map(|(p, (records, indices))| {
                // Each partition's part keeps the codec the producer chose.
                let part = Batch::parse(encode_batch_with(&records, batch.codec))
                    .map_err(BrokerError::BadBatch)?;
                Ok((&self.partitions[p as usize], p, part, Some(indices)))
            })
            .collect()
    }
}

/// Orders the committed parts of a publish by the original record positions, merging
/// neighbours that continue each other into one run. An unsplit batch is one run.
fn runs_in_record_order(parts: Vec<(u32, Appended, Option<Vec<usize>>)>) -> Published {
    let durability = parts
        .iter()
        .map(|(_, a, _)| a.durability)
        .min()
        .unwrap_or(Durability::Buffered);
    if let [(partition, appended, None)] = parts.as_slice() {
        let run = Run {
            partition: *partition,
            base_offset: appended.base_offset,
            count: appended.count,
        };
        return Published {
            runs: vec![run],
            durability,
        };
    }
    let mut placed: Vec<(usize, u32, u64)> = parts
        .into_iter()
        .flat_map(|(partition, appended, order)| {
            order
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(move |(i, index)| (index, partition, appended.base_offset + i as u64))
        })
        .collect();
    placed.sort_unstable_by_key(|&(index, _, _)| index);
    let mut runs: Vec<Run> = Vec::new();
    for (_, partition, offset) in placed {
        match runs.last_mut() {
            Some(run)
                if run.partition == partition
                    && run.base_offset + u64::from(run.count) == offset =>
            {
                run.count += 1
            }
            _ => runs.push(Run {
                partition,
                base_offset: offset,
                count: 1,
            }),
        }
    }
    Published { runs, durability }
}
