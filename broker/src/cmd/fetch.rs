//! `Fetch` → `FetchOk`: read what is there now.

use herald_protocol::{Fetch, FetchOk, Frame};

use super::Context;
use crate::error::BrokerError;
use crate::storage::blocking;

/// Reads up to `max_messages` / `max_bytes` from `offset`. An offset below the first
/// retained one or beyond the next one is `OffsetOutOfRange`; the next offset itself is
/// valid and returns no records.
pub async fn handle_fetch(ctx: Context, req: Fetch) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let log = topic.partition(req.partition)?.clone();
    let (first, next) = (log.first_offset(), log.next_offset());
    if req.offset < first || req.offset > next {
        return Err(BrokerError::OffsetOutOfRange {
            offset: req.offset,
            first,
            next,
        });
    }
    let max_bytes = req.max_bytes.min(ctx.shared.config.max_frame_bytes / 2) as usize;
    let read_log = log.clone();
    let read = blocking(move || read_log.read(req.offset, req.max_messages, max_bytes)).await?;
    Ok(FetchOk {
        partition: req.partition,
        first_offset: log.first_offset(),
        next_offset: log.next_offset(),
        batches: read.concat(),
    }
    .into())
}
