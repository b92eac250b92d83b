//! Dead-lettering: records that failed too often, or were rejected, are published to the
//! group's dead-letter topic with headers naming where they came from; only once stored
//! there are they done for the group.

use super::dispatcher::Dispatcher;
use super::*;

/// A record on its way to the dead-letter topic.
pub(super) struct Failed {
    pub(super) partition: u32,
    pub(super) offset: u64,
    /// Its deliveries so far.
    pub(super) deliveries: u32,
    pub(super) reason: String,
}

impl Dispatcher {
    /// Writes records to the dead-letter topic with headers naming their origin; once
    /// stored they are done for this group.
    pub(super) async fn dead_letter(&mut self, records: Vec<Failed>) {
        if records.is_empty() {
            return;
        }
        let mut by_partition: BTreeMap<u32, Vec<Failed>> = BTreeMap::new();
        for failed in records {
            self.parts[failed.partition as usize]
                .dead_lettering
                .insert(failed.offset, failed.deliveries);
            by_partition
                .entry(failed.partition)
                .or_default()
                .push(failed);
        }
        for (p, records) in by_partition {
            let log = Arc::clone(&self.topic.partitions()[p as usize]);
            let origin = Origin {
                topic: self.topic.name().to_string(),
                group: self.group.clone(),
                partition: p,
            };
            let (topics, store, dlq) = (
                Arc::clone(&self.topics),
                Arc::clone(&self.store),
                self.settings.dead_letter.clone(),
            );
            let offsets: Vec<u64> = records.iter().map(|failed| failed.offset).collect();
            let inbox = self.inbox.clone();
            self.tasks.spawn(async move {
                let stored =
                    write_dead_letters(&topics, &store, &dlq, &log, &origin, records).await;
                if let Err(err) = &stored {
                    tracing::error!(%err, dead_letter = dlq, "dead-lettering failed; records stay queued");
                }
                if let Some(inbox) = inbox.upgrade() {
                    let _ = inbox
                        .send(Command::DeadLettered {
                            partition: p,
                            offsets,
                            stored: stored.is_ok(),
                        })
                        .await;
                }
            });
        }
    }
}

/// Where dead-lettered records came from.
pub(super) struct Origin {
    topic: String,
    group: String,
    partition: u32,
}
/// Header names on dead-lettered records.
pub mod headers {
    pub const TOPIC: &str = "x-herald-original-topic";
    pub const PARTITION: &str = "x-herald-original-partition";
    pub const OFFSET: &str = "x-herald-original-offset";
    pub const GROUP: &str = "x-herald-group";
    pub const REASON: &str = "x-herald-reason";
    pub const DELIVERY_COUNT: &str = "x-herald-delivery-count";
}

pub(super) async fn write_dead_letters(
    topics: &Topics,
    store: &Store,
    dlq: &str,
    log: &Arc<crate::storage::PartitionLog>,
    origin: &Origin,
    records: Vec<Failed>,
) -> Result<(), BrokerError> {
    let mut out = Vec::with_capacity(records.len());
    for Failed {
        offset,
        deliveries: count,
        reason,
        ..
    } in records
    {
        let reader = Arc::clone(log);
        let read = blocking(move || Ok(reader.read(offset, 1, usize::MAX)?)).await?;
        let Some(stored) = read
            .batches
            .iter()
            .flat_map(|b| b.iter())
            .filter_map(Result::ok)
            .find(|r| r.offset == offset)
        else {
            // Retention deleted it meanwhile: nothing left to dead-letter.
            continue;
        };
        let mut record: Record = stored.record;
        record.headers.extend([
            (
                headers::TOPIC.to_string(),
                Bytes::from(origin.topic.clone()),
            ),
            (
                headers::PARTITION.to_string(),
                Bytes::from(origin.partition.to_string()),
            ),
            (headers::OFFSET.to_string(), Bytes::from(offset.to_string())),
            (
                headers::GROUP.to_string(),
                Bytes::from(origin.group.clone()),
            ),
            (headers::REASON.to_string(), Bytes::from(reason)),
            (
                headers::DELIVERY_COUNT.to_string(),
                Bytes::from(count.to_string()),
            ),
        ]);
        out.push(record);
    }
    if out.is_empty() {
        return Ok(());
    }
    let topic = topics.ensure(dlq).await?;
    let batch = Batch::parse(encode_batch(&out)).map_err(BrokerError::BadBatch)?;
    topic.publish(store, batch, None, u32::MAX, None)?.await?;
    Ok(())
}
