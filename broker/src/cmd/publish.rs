//! `Publish` → `PublishOk`.

use herald_protocol::{Batch, Durability, Frame, OffsetRun, Publish, PublishOk, ANY_PARTITION};

use super::{Context, Reply};
use crate::error::BrokerError;
use crate::storage::{self, ProducerBatch};

/// Validates and queues the batch now (so publishes keep their order); the reply follows
/// once the store has committed it.
pub async fn handle_publish(ctx: Context, req: Publish) -> Reply {
    match queue(&ctx, req).await {
        Ok(committed) => Reply::later(committed),
        Err(err) => Reply::later(async move { Err(err) }),
    }
}

async fn queue(
    ctx: &Context,
    req: Publish,
) -> Result<
    impl std::future::Future<Output = Result<Frame, BrokerError>> + Send + 'static,
    BrokerError,
> {
    let batch = Batch::parse(req.batch).map_err(BrokerError::BadBatch)?;
    check_room(ctx, batch.encoded_len() as u64)?;
    let max = ctx.shared.config.max_batch_records;
    if batch.record_count > max {
        return Err(BrokerError::BatchTooLarge {
            records: batch.record_count,
            max,
        });
    }
    let topic = ctx.shared.topics.get_or_create(&req.topic).await?;
    let partition = (req.partition != ANY_PARTITION).then_some(req.partition);
    let producer = (req.producer_id != 0).then_some(ProducerBatch {
        producer_id: req.producer_id,
        sequence: req.sequence,
    });
    let committed = topic.publish(
        &ctx.shared.store,
        batch,
        partition,
        ctx.shared.config.max_message_bytes,
        producer,
    )?;
    Ok(async move {
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
        Ok(PublishOk {
            durability: durability(published.durability),
            runs,
        }
        .into())
    })
}

/// Refuses a publish when the disk is at its reserve or the store at its quota (see
/// `storage::disk`).
fn check_room(ctx: &Context, more: u64) -> Result<(), BrokerError> {
    let room = ctx.shared.store.room();
    if room.below_reserve() {
        return Err(BrokerError::DiskFull {
            free: room.free(),
            reserve: room.reserve,
        });
    }
    let quota = ctx.shared.config.max_disk_bytes;
    if quota > 0 && room.used() + more > quota {
        return Err(BrokerError::StorageFull {
            used: room.used(),
            more,
            max: quota,
        });
    }
    Ok(())
}

fn durability(durability: storage::Durability) -> Durability {
    match durability {
        storage::Durability::Buffered => Durability::Buffered,
        storage::Durability::Synced => Durability::Synced,
    }
}
