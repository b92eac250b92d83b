//! The TCP protocol's adapter onto [`Core`]: each handler takes a decoded request, calls
//! the core's verb and returns the reply frame (or, for a subscription, the reply and a
//! stream of deliveries). Handlers never touch a socket; the session writes what they
//! return.

mod admin;
mod fetch;
mod group;
mod publish;
mod push;
mod security;

use std::net::SocketAddr;

use futures::future::BoxFuture;
use futures::FutureExt;
use herald_protocol::{Deliver, ErrorCode, ErrorFrame, Frame};

use crate::core::{Caller, Core};
use crate::error::BrokerError;

/// What a handler needs to know about the broker and the session asking.
#[derive(Clone)]
pub struct Context {
    /// The core, acting for the session's principal.
    pub core: Core,
    pub peer: SocketAddr,
    pub session_id: u64,
    /// Whether a password may come over this connection (TLS, or loopback).
    pub secure: crate::core::Secure,
}

impl Context {
    /// The session, as the core names who asks.
    pub fn caller(&self) -> Caller {
        Caller {
            session: self.session_id,
            address: self.peer.to_string(),
        }
    }
}

/// A new push subscription: its reply, then the deliveries the caller forwards after it.
pub struct Subscribed {
    pub reply: Frame,
    /// Never more than the subscriber's window at once; ends when the subscription does.
    pub deliveries: tokio::sync::mpsc::Receiver<Deliver>,
}

/// A handler's answer: ready now, or a future the session runs beside other requests.
pub enum Reply {
    Now(Frame),
    Later(BoxFuture<'static, Frame>),
    /// A subscription: its reply (or error) first, then a stream of deliveries that the
    /// caller forwards as it likes.
    Subscribe(BoxFuture<'static, Result<Subscribed, BrokerError>>),
}

impl Reply {
    fn later<F>(future: F) -> Reply
    where
        F: std::future::Future<Output = Result<Frame, BrokerError>> + Send + 'static,
    {
        Reply::Later(future.map(into_frame).boxed())
    }
}

/// A handler's result as the frame that answers it: the reply, or an error frame.
pub fn into_frame(result: Result<Frame, BrokerError>) -> Frame {
    match result {
        Ok(frame) => frame,
        Err(err) => {
            tracing::debug!(%err, "request failed");
            err.to_frame().into()
        }
    }
}

/// The headline figures (`herald stats`), as the JSON of `GET /v1/stats`.
async fn stats(ctx: Context) -> Result<Frame, BrokerError> {
    ctx.core
        .check_everything(crate::auth::rules::Operation::Describe)?;
    let json = crate::metrics::stats(&ctx.core).await.to_string();
    Ok(herald_protocol::Stats { json }.into())
}

/// Routes a request to its handler. The returned future does the part of the request that
/// must happen in arrival order (for a publish: validating and queueing the append).
pub async fn dispatch(ctx: &Context, frame: Frame) -> Reply {
    let ctx = ctx.clone();
    match frame {
        Frame::Publish(req) => publish::handle_publish(ctx, req).await,
        Frame::Fetch(req) => Reply::later(fetch::handle_fetch(ctx, req)),
        Frame::CreateTopic(req) => Reply::later(admin::handle_create_topic(ctx, req)),
        Frame::DeleteTopic(req) => Reply::later(admin::handle_delete_topic(ctx, req)),
        Frame::ListTopics(_) => Reply::Now(into_frame(admin::handle_list_topics(&ctx))),
        Frame::DescribeTopic(req) => {
            Reply::Now(into_frame(admin::handle_describe_topic(&ctx, req)))
        }
        Frame::JoinGroup(req) => Reply::later(group::handle_join(ctx, req)),
        Frame::Commit(req) => Reply::later(group::handle_commit(ctx, req)),
        Frame::SyncGroup(req) => Reply::Now(into_frame(group::handle_sync(&ctx, req))),
        Frame::LeaveGroup(req) => Reply::Now(into_frame(group::handle_leave(&ctx, req))),
        Frame::ListGroups(req) => Reply::later(group::handle_list(ctx, req)),
        Frame::DescribeGroup(req) => Reply::later(group::handle_describe(ctx, req)),
        Frame::CreateGroup(req) => Reply::later(group::handle_create(ctx, req)),
        Frame::ResetGroup(req) => Reply::later(group::handle_reset(ctx, req)),
        Frame::DeleteGroup(req) => Reply::later(group::handle_delete(ctx, req)),
        Frame::Subscribe(req) => Reply::Subscribe(push::handle_subscribe(ctx, req).boxed()),
        Frame::Unsubscribe(req) => Reply::later(push::handle_unsubscribe(ctx, req)),
        Frame::Ack(req) => Reply::later(push::handle_ack(ctx, req)),
        Frame::Nack(req) => Reply::later(push::handle_nack(ctx, req)),
        Frame::Reject(req) => Reply::later(push::handle_reject(ctx, req)),
        Frame::Touch(req) => Reply::later(push::handle_touch(ctx, req)),
        Frame::CreateUser(req) => Reply::later(security::create_user(ctx, req)),
        Frame::SetPassword(req) => Reply::later(security::set_password(ctx, req)),
        Frame::DeleteUser(req) => Reply::later(security::delete_user(ctx, req)),
        Frame::ListUsers(_) => Reply::Now(into_frame(security::list_users(&ctx))),
        Frame::CreateToken(req) => Reply::later(security::create_token(ctx, req)),
        Frame::ListTokens(_) => Reply::Now(into_frame(security::list_tokens(&ctx))),
        Frame::RevokeToken(req) => Reply::later(security::revoke_token(ctx, req)),
        Frame::AddAcl(req) => Reply::later(security::add_acl(ctx, req)),
        Frame::ListAcls(_) => Reply::Now(into_frame(security::list_acls(&ctx))),
        Frame::RemoveAcl(req) => Reply::later(security::remove_acl(ctx, req)),
        Frame::GetStats(_) => Reply::later(stats(ctx)),
        other => Reply::Now(
            ErrorFrame::new(
                ErrorCode::UnexpectedFrame,
                format!(
                    "{:?} is a frame the broker sends, not a request",
                    other.opcode()
                ),
            )
            .into(),
        ),
    }
}
