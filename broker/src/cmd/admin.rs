//! Topic administration: create, delete, list, describe.

use herald_protocol::{CreateTopic, DeleteTopic, DescribeTopic, Frame, OkReply, TopicList};

use super::Context;
use crate::error::BrokerError;
use crate::storage::RetentionPolicy;

pub async fn handle_create_topic(ctx: Context, req: CreateTopic) -> Result<Frame, BrokerError> {
    let r = req.retention;
    let retention = RetentionPolicy {
        max_age_ms: r.max_age_ms,
        max_bytes: r.max_bytes,
        max_messages: r.max_messages,
    };
    let info = ctx
        .core
        .create_topic(&req.name, req.partitions, retention)
        .await?;
    Ok(info.into())
}

pub async fn handle_delete_topic(ctx: Context, req: DeleteTopic) -> Result<Frame, BrokerError> {
    ctx.core.delete_topic(&req.name).await?;
    Ok(OkReply {}.into())
}

pub fn handle_list_topics(ctx: &Context) -> Result<Frame, BrokerError> {
    Ok(TopicList {
        topics: ctx.core.list_topics()?,
    }
    .into())
}

pub fn handle_describe_topic(ctx: &Context, req: DescribeTopic) -> Result<Frame, BrokerError> {
    Ok(ctx.core.describe_topic(&req.name)?.into())
}
