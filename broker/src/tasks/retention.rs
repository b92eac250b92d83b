//! Retention: deletes records from the head of each partition once a topic's limits
//! (age, bytes, count) no longer need them, lets go of cached tails that consumers
//! have had time to read (see `storage::tail`), and drops the emptied trees of deleted
//! topics once nothing holds them (see `Store::drop_retired`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::domain::Topics;

/// Every `every`, trims each partition of each topic that has a retention limit and drops
/// cached tail batches old enough. Deletions go through the storage writer, in order with
/// appends; a failure is logged and retried at the next tick.
pub async fn run(topics: Arc<Topics>, every: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let limit = topics.store().timeout();
        if let Some(dropped) = topics.store().drop_retired() {
            if let Err(err) = crate::storage::bounded(dropped, limit).await {
                tracing::warn!(%err, "cannot drop the trees of deleted topics yet");
            }
        }
        for topic in topics.list() {
            let now = std::time::Instant::now();
            for log in topic.partitions() {
                log.forget_old_tail(now);
            }
            let policy = topic.record().retention;
            if policy == Default::default() {
                continue;
            }
            for (partition, log) in topic.partitions().iter().enumerate() {
                match crate::storage::bounded(topics.store().trim(log, policy), limit).await {
                    Ok(true) => {
                        tracing::debug!(
                            topic = topic.name(),
                            partition,
                            first = log.first_offset(),
                            "retention trimmed"
                        )
                    }
                    Ok(false) => {}
                    Err(crate::storage::StorageError::Closed) => return,
                    Err(err) => {
                        tracing::warn!(topic = topic.name(), partition, %err, "retention failed")
                    }
                }
            }
        }
    }
}
