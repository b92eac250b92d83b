//! `Fetch` → `FetchOk`, with long-polling.

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::{Fetch, FetchOk, Frame};
use tokio::time::Instant;

use super::Context;
use crate::error::BrokerError;
use crate::storage::log::ReadBatches;
use crate::storage::PartitionLog;

/// Reads up to `max_messages` / `max_bytes` from `offset`, answering as soon as `min_bytes`
/// are there or `max_wait_ms` has passed (or the broker is shutting down).
///
/// Waiting costs nothing: the fetch sleeps on the partition's append notification and reads
/// again only when a commit made new records readable. An offset below the first retained
/// one or beyond the next one is `OffsetOutOfRange`; the next offset itself is valid.
pub async fn handle_fetch(ctx: Context, req: Fetch) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let log = Arc::clone(topic.partition(req.partition)?);
    let (first, next) = (log.first_offset(), log.next_offset());
    if req.offset < first || req.offset > next {
        return Err(BrokerError::OffsetOutOfRange {
            offset: req.offset,
            first,
            next,
        });
    }
    let max_bytes = req.max_bytes.min(ctx.shared.config.max_frame_bytes / 2) as usize;
    let min_bytes = req.min_bytes.max(1) as usize;
    let deadline = Instant::now() + Duration::from_millis(u64::from(req.max_wait_ms));
    let read = loop {
        // Register for the next append before reading, so none slips between the two.
        let appended = log.appended();
        let read = read(&log, req.offset, req.max_messages, max_bytes).await?;
        if read.bytes >= min_bytes || Instant::now() >= deadline {
            break read;
        }
        tokio::select! {
            _ = appended => {}
            _ = tokio::time::sleep_until(deadline) => {
                break self::read(&log, req.offset, req.max_messages, max_bytes).await?;
            }
            _ = ctx.shared.shutdown.cancelled() => break read,
        }
    };
    Ok(FetchOk {
        partition: req.partition,
        first_offset: log.first_offset(),
        next_offset: log.next_offset(),
        batches: read.concat(),
    }
    .into())
}

async fn read(
    log: &Arc<PartitionLog>,
    offset: u64,
    max_messages: u32,
    max_bytes: usize,
) -> Result<ReadBatches, BrokerError> {
    Ok(log.read_async(offset, max_messages, max_bytes).await?)
}
