//! Group requests: join, sync, commit, leave (pull members) and create, reset, delete,
//! list, describe (administration).

use herald_protocol::{
    AssignedPartition, Assignment, Commit, CommitOk, CreateGroup, DeleteGroup, DescribeGroup,
    Frame, GroupInfo, GroupList, GroupMode, GroupPartitionInfo, GroupSummary, JoinGroup,
    LeaveGroup, ListGroups, MemberInfo, OkReply, ResetGroup, ResetTarget, StartPosition, SyncGroup,
};

use super::Context;
use crate::domain::group::{Start, MODE_PUSH};
use crate::domain::pull_group::{Granted, Joiner, ResetTo};
use crate::error::{valid_name, BrokerError};
use crate::storage::GroupRecord;

pub async fn handle_join(ctx: Context, req: JoinGroup) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let joiner = Joiner {
        session: ctx.session_id,
        address: ctx.peer.to_string(),
    };
    let granted = ctx
        .shared
        .pull_groups
        .join(&topic, &req.group, &req.member_id, start(req.start), joiner)
        .await?;
    Ok(assignment(granted))
}

pub fn handle_sync(ctx: &Context, req: SyncGroup) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let granted = ctx
        .shared
        .pull_groups
        .sync(&topic, &req.group, &req.member_id, &req.released)?;
    Ok(assignment(granted))
}

pub async fn handle_commit(ctx: Context, req: Commit) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let offsets: Vec<(u32, u64)> = req
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    let generation = ctx
        .shared
        .pull_groups
        .commit(&topic, &req.group, &req.member_id, req.generation, &offsets)
        .await?;
    Ok(CommitOk { generation }.into())
}

pub fn handle_leave(ctx: &Context, req: LeaveGroup) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    ctx.shared
        .pull_groups
        .leave(&topic, &req.group, &req.member_id)?;
    Ok(OkReply {}.into())
}

pub async fn handle_create(ctx: Context, req: CreateGroup) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    if req.mode == GroupMode::Push {
        if !req.dead_letter.is_empty() && !valid_name(&req.dead_letter) {
            return Err(BrokerError::InvalidTopicName(req.dead_letter));
        }
        let record = GroupRecord {
            mode: MODE_PUSH,
            ack_timeout_ms: req.ack_timeout_ms,
            max_deliveries: req.max_deliveries,
            dead_letter: req.dead_letter,
        };
        ctx.shared
            .push_groups
            .create(&topic, &req.group, start(req.start), record)
            .await?;
        return Ok(OkReply {}.into());
    }
    ctx.shared
        .pull_groups
        .create(&topic, &req.group, start(req.start))
        .await?;
    Ok(OkReply {}.into())
}

pub async fn handle_reset(ctx: Context, req: ResetGroup) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let to = match req.to {
        ResetTarget::Earliest => ResetTo::Earliest,
        ResetTarget::Latest => ResetTo::Latest,
        ResetTarget::Offset(offset) => ResetTo::Offset(offset),
    };
    ctx.shared.pull_groups.reset(&topic, &req.group, to).await?;
    Ok(OkReply {}.into())
}

pub async fn handle_delete(ctx: Context, req: DeleteGroup) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    ctx.shared.pull_groups.delete(&topic, &req.group).await?;
    Ok(OkReply {}.into())
}

pub async fn handle_list(ctx: Context, req: ListGroups) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let mut groups = Vec::new();
    for (name, mode, members) in ctx.shared.pull_groups.list(&topic).await? {
        let members = if mode == MODE_PUSH {
            let push = &ctx.shared.push_groups;
            push.consumer_count(topic.record().id, &name).await
        } else {
            members
        };
        groups.push(GroupSummary {
            name,
            mode: mode_of(mode),
            members,
        });
    }
    Ok(GroupList { groups }.into())
}

pub async fn handle_describe(ctx: Context, req: DescribeGroup) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let Some(described) = ctx.shared.pull_groups.describe(&topic, &req.group).await? else {
        return Err(BrokerError::UnknownGroup(req.group));
    };
    if described.record.mode == MODE_PUSH {
        return describe_push(&ctx, &topic, req).await;
    }
    let members = described
        .members
        .into_iter()
        .map(|(member_id, address, partitions)| MemberInfo {
            member_id,
            address,
            partitions,
            in_flight: 0,
            oldest_unacked_ms: 0,
        })
        .collect();
    let partitions = described
        .partitions
        .into_iter()
        .map(|p| GroupPartitionInfo {
            partition: p.partition,
            owner: p.owner.unwrap_or_default(),
            committed: p.committed,
            end: p.end,
            lag: p.end.saturating_sub(p.committed),
        })
        .collect();
    let record = described.record;
    Ok(GroupInfo {
        topic: req.topic,
        group: req.group,
        mode: mode_of(record.mode),
        generation: described.generation,
        ack_timeout_ms: record.ack_timeout_ms,
        max_deliveries: record.max_deliveries,
        dead_letter: record.dead_letter,
        members,
        partitions,
        redelivered: 0,
        dead_lettered: 0,
    }
    .into())
}

async fn describe_push(
    ctx: &Context,
    topic: &std::sync::Arc<crate::domain::Topic>,
    req: DescribeGroup,
) -> Result<Frame, BrokerError> {
    let described = ctx.shared.push_groups.describe(topic, &req.group).await?;
    let members = described
        .consumers
        .into_iter()
        .map(|consumer| MemberInfo {
            member_id: format!("subscription-{}", consumer.subscription),
            address: consumer.address,
            partitions: Vec::new(),
            in_flight: consumer.in_flight,
            oldest_unacked_ms: consumer.oldest.as_millis() as u64,
        })
        .collect();
    let partitions = described
        .partitions
        .into_iter()
        .map(|progress| GroupPartitionInfo {
            partition: progress.partition,
            owner: String::new(),
            committed: progress.floor,
            end: progress.end,
            lag: progress.left,
        })
        .collect();
    let settings = described.settings;
    Ok(GroupInfo {
        topic: req.topic,
        group: req.group,
        mode: GroupMode::Push,
        generation: 0,
        ack_timeout_ms: settings.ack_timeout_ms,
        max_deliveries: settings.max_deliveries,
        dead_letter: settings.dead_letter,
        members,
        partitions,
        redelivered: described.redelivered,
        dead_lettered: described.dead_lettered,
    }
    .into())
}

fn assignment(granted: Granted) -> Frame {
    let partitions = granted
        .partitions
        .into_iter()
        .map(|(partition, committed)| AssignedPartition {
            partition,
            committed,
        })
        .collect();
    Assignment {
        member_id: granted.member_id,
        generation: granted.generation,
        partitions,
    }
    .into()
}

fn start(start: StartPosition) -> Start {
    match start {
        StartPosition::Earliest => Start::Earliest,
        StartPosition::Latest => Start::Latest,
    }
}

fn mode_of(mode: u8) -> GroupMode {
    if mode == MODE_PUSH {
        GroupMode::Push
    } else {
        GroupMode::Pull
    }
}
