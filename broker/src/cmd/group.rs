//! Group requests: join, sync, commit, leave (pull members) and create, reset, delete,
//! list, describe (administration).

use herald_protocol::{
    AssignedPartition, Assignment, Commit, CommitOk, CreateGroup, DeleteGroup, DescribeGroup,
    Frame, GroupList, JoinGroup, LeaveGroup, ListGroups, OkReply, ResetGroup, ResetTarget,
    StartPosition, SyncGroup,
};

use super::Context;
use crate::core::GroupSpec;
use crate::domain::group::Start;
use crate::domain::pull_group::{Granted, ResetTo};
use crate::error::BrokerError;

pub async fn handle_join(ctx: Context, req: JoinGroup) -> Result<Frame, BrokerError> {
    let granted = ctx
        .core
        .join(
            &ctx.caller(),
            &req.topic,
            &req.group,
            &req.member_id,
            start(req.start),
        )
        .await?;
    Ok(assignment(granted))
}

pub fn handle_sync(ctx: &Context, req: SyncGroup) -> Result<Frame, BrokerError> {
    let granted = ctx
        .core
        .sync(&req.topic, &req.group, &req.member_id, &req.released)?;
    Ok(assignment(granted))
}

pub async fn handle_commit(ctx: Context, req: Commit) -> Result<Frame, BrokerError> {
    let offsets: Vec<(u32, u64)> = req
        .offsets
        .iter()
        .map(|o| (o.partition, o.offset))
        .collect();
    let generation = ctx
        .core
        .commit(
            &req.topic,
            &req.group,
            &req.member_id,
            req.generation,
            &offsets,
        )
        .await?;
    Ok(CommitOk { generation }.into())
}

pub fn handle_leave(ctx: &Context, req: LeaveGroup) -> Result<Frame, BrokerError> {
    ctx.core.leave(&req.topic, &req.group, &req.member_id)?;
    Ok(OkReply {}.into())
}

pub async fn handle_create(ctx: Context, req: CreateGroup) -> Result<Frame, BrokerError> {
    let spec = GroupSpec {
        mode: req.mode,
        start: start(req.start),
        ack_timeout_ms: req.ack_timeout_ms,
        max_deliveries: req.max_deliveries,
        dead_letter: req.dead_letter,
    };
    ctx.core.create_group(&req.topic, &req.group, spec).await?;
    Ok(OkReply {}.into())
}

pub async fn handle_reset(ctx: Context, req: ResetGroup) -> Result<Frame, BrokerError> {
    let to = match req.to {
        ResetTarget::Earliest => ResetTo::Earliest,
        ResetTarget::Latest => ResetTo::Latest,
        ResetTarget::Offset(offset) => ResetTo::Offset(offset),
    };
    ctx.core.reset_group(&req.topic, &req.group, to).await?;
    Ok(OkReply {}.into())
}

pub async fn handle_delete(ctx: Context, req: DeleteGroup) -> Result<Frame, BrokerError> {
    ctx.core.delete_group(&req.topic, &req.group).await?;
    Ok(OkReply {}.into())
}

pub async fn handle_list(ctx: Context, req: ListGroups) -> Result<Frame, BrokerError> {
    let groups = ctx.core.list_groups(&req.topic).await?;
    Ok(GroupList { groups }.into())
}

pub async fn handle_describe(ctx: Context, req: DescribeGroup) -> Result<Frame, BrokerError> {
    Ok(ctx
        .core
        .describe_group(&req.topic, &req.group)
        .await?
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

/// The domain's start position for the wire's.
pub fn start(start: StartPosition) -> Start {
    match start {
        StartPosition::Earliest => Start::Earliest,
        StartPosition::Latest => Start::Latest,
    }
}
