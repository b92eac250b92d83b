//! Push consuming: subscribe, unsubscribe, and the answers to deliveries.

use std::time::Duration;

use herald_protocol::{
    Ack, Frame, Nack, OffsetRange, OkReply, Reject, Subscribe, Subscribed, Touch, Unsubscribe,
};

use super::Context;
use crate::domain::push_group::{Answer, Span};
use crate::error::BrokerError;

/// Adds the session as a subscriber. Returns the `Subscribed` reply and the stream of its
/// deliveries, which the caller forwards after the reply, so the client always learns the
/// subscription id before its records.
pub async fn handle_subscribe(
    ctx: Context,
    req: Subscribe,
) -> Result<super::Subscribed, BrokerError> {
    let subscription = ctx
        .core
        .subscribe(
            &ctx.caller(),
            &req.topic,
            &req.group,
            req.prefetch_count,
            req.prefetch_bytes,
            super::group::start(req.start),
        )
        .await?;
    let reply = Subscribed {
        subscription_id: subscription.id,
        ack_timeout_ms: subscription.settings.ack_timeout_ms,
        max_deliveries: subscription.settings.max_deliveries,
    }
    .into();
    Ok(super::Subscribed {
        reply,
        deliveries: subscription.deliveries,
    })
}

pub async fn handle_unsubscribe(ctx: Context, req: Unsubscribe) -> Result<Frame, BrokerError> {
    ctx.core
        .unsubscribe(&ctx.caller(), req.subscription_id)
        .await?;
    Ok(OkReply {}.into())
}

pub async fn handle_ack(ctx: Context, req: Ack) -> Result<Frame, BrokerError> {
    answer(&ctx, req.subscription_id, &req.ranges, Answer::Ack).await
}

pub async fn handle_nack(ctx: Context, req: Nack) -> Result<Frame, BrokerError> {
    let delay = Duration::from_millis(u64::from(req.delay_ms));
    answer(
        &ctx,
        req.subscription_id,
        &req.ranges,
        Answer::Nack { delay },
    )
    .await
}

pub async fn handle_reject(ctx: Context, req: Reject) -> Result<Frame, BrokerError> {
    let answer_ = Answer::Reject { reason: req.reason };
    answer(&ctx, req.subscription_id, &req.ranges, answer_).await
}

pub async fn handle_touch(ctx: Context, req: Touch) -> Result<Frame, BrokerError> {
    let extend = (req.extend_ms > 0).then(|| Duration::from_millis(u64::from(req.extend_ms)));
    answer(
        &ctx,
        req.subscription_id,
        &req.ranges,
        Answer::Touch { extend },
    )
    .await
}

async fn answer(
    ctx: &Context,
    subscription_id: u64,
    ranges: &[OffsetRange],
    answer: Answer,
) -> Result<Frame, BrokerError> {
    let spans = ranges
        .iter()
        .map(|r| Span {
            partition: r.partition,
            start: r.start,
            end: r.end,
        })
        .collect();
    ctx.core
        .answer(&ctx.caller(), subscription_id, spans, answer)
        .await?;
    Ok(OkReply {}.into())
}
