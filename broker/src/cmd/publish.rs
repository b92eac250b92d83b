//! `Publish` → `PublishOk`.

use herald_protocol::{Durability, Frame, OffsetRun, Publish, PublishOk, ANY_PARTITION};

use super::{Context, Reply};
use crate::error::BrokerError;
use crate::storage::{self, ProducerBatch};

/// Validates and queues the batch now (so publishes keep their order); the reply follows
/// once the store has committed it.
pub async fn handle_publish(ctx: Context, req: Publish) -> Reply {
    let partition = (req.partition != ANY_PARTITION).then_some(req.partition);
    let producer = (req.producer_id != 0).then_some(ProducerBatch {
        producer_id: req.producer_id,
        sequence: req.sequence,
    });
    match ctx
        .core
        .publish(&req.topic, req.batch, partition, producer)
        .await
    {
        Ok(committed) => Reply::later(async move {
            let published = committed.await?;
            let runs = published
                .runs
                .iter()
                .map(|run| OffsetRun {
                    partition: run.partition,
                    base_offset: run.base_offset,
                    count: run.count,
                })
                .collect();
            Ok::<Frame, BrokerError>(
                PublishOk {
                    durability: durability(published.durability),
                    runs,
                }
                .into(),
            )
        }),
        Err(err) => Reply::later(async move { Err(err) }),
    }
}

fn durability(durability: storage::Durability) -> Durability {
    match durability {
        storage::Durability::Buffered => Durability::Buffered,
        storage::Durability::Synced => Durability::Synced,
    }
}
