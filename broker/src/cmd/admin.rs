//! Topic administration: create, delete, list, describe.

use herald_protocol::{
    CreateTopic, DeleteTopic, DescribeTopic, Frame, OkReply, PartitionInfo, Retention, TopicInfo,
    TopicList, TopicSummary,
};

use super::Context;
use crate::domain::Topic;
use crate::error::BrokerError;
use crate::storage::RetentionPolicy;

pub async fn handle_create_topic(ctx: Context, req: CreateTopic) -> Result<Frame, BrokerError> {
    let r = req.retention;
    let retention = RetentionPolicy {
        max_age_ms: r.max_age_ms,
        max_bytes: r.max_bytes,
        max_messages: r.max_messages,
    };
    let topic = ctx
        .shared
        .topics
        .create(&req.name, req.partitions, retention)
        .await?;
    Ok(describe(&topic).into())
}

pub async fn handle_delete_topic(ctx: Context, req: DeleteTopic) -> Result<Frame, BrokerError> {
    let id = ctx.shared.topics.get(&req.name)?.record().id;
    ctx.shared.topics.delete(&req.name).await?;
    ctx.shared.pull_groups.topic_deleted(id);
    ctx.shared.push_groups.topic_deleted(id);
    Ok(OkReply {}.into())
}

pub fn handle_list_topics(ctx: &Context) -> Frame {
    let topics = ctx
        .shared
        .topics
        .list()
        .iter()
        .map(|t| TopicSummary {
            name: t.name().to_string(),
            partitions: t.partitions().len() as u32,
        })
        .collect();
    TopicList { topics }.into()
}

pub fn handle_describe_topic(ctx: &Context, req: DescribeTopic) -> Result<Frame, BrokerError> {
    Ok(describe(&*ctx.shared.topics.get(&req.name)?).into())
}

fn describe(topic: &Topic) -> TopicInfo {
    let r = topic.record().retention;
    let partitions = topic
        .partitions()
        .iter()
        .enumerate()
        .map(|(p, log)| PartitionInfo {
            partition: p as u32,
            first_offset: log.first_offset(),
            next_offset: log.next_offset(),
            bytes: log.size_bytes(),
        })
        .collect();
    TopicInfo {
        name: topic.name().to_string(),
        retention: Retention {
            max_age_ms: r.max_age_ms,
            max_bytes: r.max_bytes,
            max_messages: r.max_messages,
        },
        partitions,
    }
}
