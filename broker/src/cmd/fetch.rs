//! `Fetch` → `FetchOk`, with long-polling (see [`Core::fetch`](crate::core::Core::fetch)).

use std::time::Duration;

use herald_protocol::{Fetch, FetchOk, Frame};
use tokio_util::sync::CancellationToken;

use super::Context;
use crate::core::FetchArgs;
use crate::error::BrokerError;

pub async fn handle_fetch(ctx: Context, req: Fetch) -> Result<Frame, BrokerError> {
    let args = FetchArgs {
        topic: req.topic,
        partition: req.partition,
        offset: req.offset,
        max_messages: req.max_messages,
        max_bytes: req.max_bytes,
        min_bytes: req.min_bytes,
        max_wait: Duration::from_millis(u64::from(req.max_wait_ms)),
    };
    // The session drops this request when its client goes; nothing else ends it early.
    let fetched = ctx.core.fetch(args, &CancellationToken::new()).await?;
    Ok(FetchOk {
        partition: req.partition,
        first_offset: fetched.first_offset,
        next_offset: fetched.next_offset,
        batches: fetched.batches,
    }
    .into())
}
