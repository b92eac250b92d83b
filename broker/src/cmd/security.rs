//! Users, tokens and rules over the TCP protocol.

use std::time::Duration;

use herald_protocol::{
    AclList, AddAcl, CreateToken, CreateUser, DeleteUser, Frame, OkReply, RemoveAcl, RevokeToken,
    SetPassword, TokenList, UserList,
};

use super::Context;
use crate::error::BrokerError;

pub async fn create_user(ctx: Context, req: CreateUser) -> Result<Frame, BrokerError> {
    ctx.core
        .create_user(&req.name, &req.password, req.admin, ctx.secure)
        .await?;
    Ok(OkReply {}.into())
}

pub async fn set_password(ctx: Context, req: SetPassword) -> Result<Frame, BrokerError> {
    ctx.core
        .set_password(&req.name, &req.password, ctx.secure)
        .await?;
    Ok(OkReply {}.into())
}

pub async fn delete_user(ctx: Context, req: DeleteUser) -> Result<Frame, BrokerError> {
    ctx.core.delete_user(&req.name).await?;
    Ok(OkReply {}.into())
}

pub fn list_users(ctx: &Context) -> Result<Frame, BrokerError> {
    let users = ctx.core.list_users()?;
    Ok(UserList { users }.into())
}

pub async fn create_token(ctx: Context, req: CreateToken) -> Result<Frame, BrokerError> {
    let ttl = (req.ttl_ms > 0).then(|| Duration::from_millis(req.ttl_ms));
    Ok(ctx.core.create_token(&req.user, ttl).await?.into())
}

pub fn list_tokens(ctx: &Context) -> Result<Frame, BrokerError> {
    let tokens = ctx.core.list_tokens()?;
    Ok(TokenList { tokens }.into())
}

pub async fn revoke_token(ctx: Context, req: RevokeToken) -> Result<Frame, BrokerError> {
    ctx.core.revoke_token(&req.id).await?;
    Ok(OkReply {}.into())
}

pub async fn add_acl(ctx: Context, req: AddAcl) -> Result<Frame, BrokerError> {
    let rule = req.rule;
    let added = ctx
        .core
        .add_rule(&rule.user, &rule.pattern, &rule.operations)
        .await?;
    Ok(added.into())
}

pub fn list_acls(ctx: &Context) -> Result<Frame, BrokerError> {
    let rules = ctx.core.list_rules()?;
    Ok(AclList { rules }.into())
}

pub async fn remove_acl(ctx: Context, req: RemoveAcl) -> Result<Frame, BrokerError> {
    ctx.core.remove_rule(req.id).await?;
    Ok(OkReply {}.into())
}
