//! Pull-group requests: join, commit, leave, list, describe.

use herald_protocol::{
    AssignedPartition, Assignment, Commit, CommitOk, DescribeGroup, Frame, GroupInfo, GroupList,
    GroupMode, GroupPartitionInfo, GroupSummary, JoinGroup, LeaveGroup, ListGroups, OkReply,
    StartPosition,
};

use super::Context;
use crate::domain::pull_group::{Start, MODE_PUSH};
use crate::error::BrokerError;

pub async fn handle_join(ctx: Context, req: JoinGroup) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let start = match req.start {
        StartPosition::Earliest => Start::Earliest,
        StartPosition::Latest => Start::Latest,
    };
    let positions = ctx
        .shared
        .pull_groups
        .join(topic, &req.group, start)
        .await?;
    let member_id = if req.member_id.is_empty() {
        format!("{}-{}", req.group, ctx.session_id)
    } else {
        req.member_id
    };
    let partitions = positions
        .iter()
        .map(|p| AssignedPartition {
            partition: p.partition,
            committed: p.offset,
        })
        .collect();
    Ok(Assignment {
        member_id,
        generation: 0,
        partitions,
    }
    .into())
}

pub async fn handle_commit(ctx: Context, req: Commit) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let offsets = req
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    ctx.shared
        .pull_groups
        .commit(topic, &req.group, offsets)
        .await?;
    Ok(CommitOk { generation: 0 }.into())
}

pub async fn handle_leave(ctx: Context, req: LeaveGroup) -> Result<Frame, BrokerError> {
    ctx.shared.topics.get(&req.topic)?;
    Ok(OkReply {}.into())
}

pub async fn handle_list(ctx: Context, req: ListGroups) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let groups = ctx.shared.pull_groups.list(topic).await?;
    let groups = groups
        .into_iter()
        .map(|(name, mode)| GroupSummary {
            name,
            mode: mode_of(mode),
            members: 0,
        })
        .collect();
    Ok(GroupList { groups }.into())
}

pub async fn handle_describe(ctx: Context, req: DescribeGroup) -> Result<Frame, BrokerError> {
    let topic = ctx.shared.topics.get(&req.topic)?;
    let Some((record, progress)) = ctx.shared.pull_groups.describe(topic, &req.group).await? else {
        return Err(BrokerError::UnknownGroup(req.group));
    };
    let partitions = progress
        .iter()
        .map(|p| GroupPartitionInfo {
            partition: p.partition,
            owner: String::new(),
            committed: p.committed,
            end: p.end,
            lag: p.end.saturating_sub(p.committed),
        })
        .collect();
    Ok(GroupInfo {
        topic: req.topic,
        group: req.group,
        mode: mode_of(record.mode),
        ack_timeout_ms: record.ack_timeout_ms,
        max_deliveries: record.max_deliveries,
        dead_letter: record.dead_letter,
        partitions,
        ..GroupInfo::default()
    }
    .into())
}

fn mode_of(mode: u8) -> GroupMode {
    if mode == MODE_PUSH {
        GroupMode::Push
    } else {
        GroupMode::Pull
    }
}
