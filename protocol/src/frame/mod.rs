//! Every frame of the protocol, and the one table that gives each its opcode.
//!
//! A frame on the wire is a 12-byte header and a body:
//!
//! ```text
//! +----------+----------+----------+----------------+------------------+
//! |  length  |  opcode  |  flags   | correlation_id |       body       |
//! |   u32    |   u16    |   u16    |      u32       | length - 8 bytes |
//! +----------+----------+----------+----------------+------------------+
//! ```
//!
//! `length` counts the bytes after itself. `flags` is reserved and sent as 0. A reply carries
//! its request's `correlation_id`; frames nobody asked for (heartbeats, deliveries, going-away)
//! carry 0, so clients number their requests from 1.

pub mod auth;
pub mod fetch;
pub mod group;
pub mod publish;
pub mod push;
pub mod security;
pub mod session;
pub mod topic;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::wire::{Reader, Wire};

pub use auth as sasl;
pub use auth::{SaslChallenge, SaslContinue, SaslOk, SaslStart};
pub use fetch::*;
pub use group::*;
pub use publish::*;
pub use push::*;
pub use security::*;
pub use session::*;
pub use topic::*;

/// Bytes before the body: length, opcode, flags, correlation id.
pub const HEADER_LEN: usize = 12;

macro_rules! frames {
    ($($(#[$meta:meta])* $name:ident($ty:ty) = $code:literal,)*) => {
        /// The numeric code of each frame type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Opcode { $($(#[$meta])* $name = $code,)* }

        impl Opcode {
            /// Every opcode, in table order.
            pub const ALL: &'static [Opcode] = &[$(Opcode::$name,)*];

            /// The frame's name, as PROTOCOL.md writes it.
            pub fn name(self) -> &'static str {
                match self { $(Opcode::$name => stringify!($name),)* }
            }

            /// The opcode for a number, if it is one.
            pub fn from_u16(code: u16) -> Option<Opcode> {
                match code {
                    $($code => Some(Opcode::$name),)*
                    _ => None,
                }
            }
        }

        /// A decoded frame body.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Frame { $($(#[$meta])* $name($ty),)* }

        impl Frame {
            /// This frame's opcode.
            pub fn opcode(&self) -> Opcode {
                match self { $(Frame::$name(_) => Opcode::$name,)* }
            }

            fn put_body(&self, dst: &mut BytesMut) {
                match self { $(Frame::$name(body) => body.put(dst),)* }
            }

            fn get_body(opcode: Opcode, src: &mut Reader) -> Result<Frame, DecodeError> {
                match opcode { $(Opcode::$name => Ok(Frame::$name(<$ty>::get(src)?)),)* }
            }
        }

        $(impl From<$ty> for Frame {
            fn from(body: $ty) -> Frame {
                Frame::$name(body)
            }
        })*
    };
}

frames! {
    // Session: 0x00xx
    /// Client → broker: open a session.
    Hello(Hello) = 0x0001,
    /// Broker → client: session granted.
    HelloOk(HelloOk) = 0x0002,
    /// Either direction: keep-alive.
    Heartbeat(Heartbeat) = 0x0003,
    /// Broker → client: shutting down, reconnect later.
    GoingAway(GoingAway) = 0x0004,
    /// Broker → client: a request failed.
    Error(ErrorFrame) = 0x0005,
    /// Broker → client: a request succeeded with nothing to return.
    Ok(OkReply) = 0x0006,
    /// Client → broker: begin authenticating.
    SaslStart(SaslStart) = 0x0007,
    /// Broker → client: the next step of authentication.
    SaslChallenge(SaslChallenge) = 0x0008,
    /// Client → broker: an answer to a challenge.
    SaslContinue(SaslContinue) = 0x0009,
    /// Broker → client: authenticated.
    SaslOk(SaslOk) = 0x000A,
    // Topics: 0x01xx
    /// Create a topic.
    CreateTopic(CreateTopic) = 0x0101,
    /// Delete a topic.
    DeleteTopic(DeleteTopic) = 0x0102,
    /// List topics.
    ListTopics(ListTopics) = 0x0103,
    /// The topics.
    TopicList(TopicList) = 0x0104,
    /// Describe a topic.
    DescribeTopic(DescribeTopic) = 0x0105,
    /// A topic's description.
    TopicInfo(TopicInfo) = 0x0106,
    // Publishing: 0x02xx
    /// Append a batch.
    Publish(Publish) = 0x0201,
    /// The batch's offsets.
    PublishOk(PublishOk) = 0x0202,
    // Pull consuming: 0x03xx
    /// Read from a partition, waiting up to `max_wait_ms`.
    Fetch(Fetch) = 0x0301,
    /// Records read.
    FetchOk(FetchOk) = 0x0302,
    /// Join a pull group.
    JoinGroup(JoinGroup) = 0x0303,
    /// A member's partitions.
    Assignment(Assignment) = 0x0304,
    /// Release partitions and refresh the assignment.
    SyncGroup(SyncGroup) = 0x0305,
    /// Leave a pull group.
    LeaveGroup(LeaveGroup) = 0x0306,
    /// Commit offsets.
    Commit(Commit) = 0x0307,
    /// Offsets committed.
    CommitOk(CommitOk) = 0x0308,
    // Push consuming: 0x04xx
    /// Start a push subscription.
    Subscribe(Subscribe) = 0x0401,
    /// Subscription started.
    Subscribed(Subscribed) = 0x0402,
    /// End a push subscription.
    Unsubscribe(Unsubscribe) = 0x0403,
    /// Records for a subscription.
    Deliver(Deliver) = 0x0404,
    /// Deliveries done.
    Ack(Ack) = 0x0405,
    /// Deliveries to retry.
    Nack(Nack) = 0x0406,
    /// Deliveries to dead-letter.
    Reject(Reject) = 0x0407,
    /// Deliveries still being worked on.
    Touch(Touch) = 0x0408,
    // Group administration: 0x05xx
    /// Create a group.
    CreateGroup(CreateGroup) = 0x0501,
    /// List a topic's groups.
    ListGroups(ListGroups) = 0x0502,
    /// The groups.
    GroupList(GroupList) = 0x0503,
    /// Describe a group.
    DescribeGroup(DescribeGroup) = 0x0504,
    /// A group's description.
    GroupInfo(GroupInfo) = 0x0505,
    /// Move a group's position.
    ResetGroup(ResetGroup) = 0x0506,
    /// Delete a group.
    DeleteGroup(DeleteGroup) = 0x0507,
    // Users, tokens and rules: 0x06xx
    /// Add a user.
    CreateUser(CreateUser) = 0x0601,
    /// Change a user's password.
    SetPassword(SetPassword) = 0x0602,
    /// Delete a user.
    DeleteUser(DeleteUser) = 0x0603,
    /// List users.
    ListUsers(ListUsers) = 0x0604,
    /// The users.
    UserList(UserList) = 0x0605,
    /// Create an API token.
    CreateToken(CreateToken) = 0x0606,
    /// A new token.
    TokenCreated(TokenCreated) = 0x0607,
    /// List tokens.
    ListTokens(ListTokens) = 0x0608,
    /// The tokens.
    TokenList(TokenList) = 0x0609,
    /// Revoke a token.
    RevokeToken(RevokeToken) = 0x060A,
    /// Grant a rule.
    AddAcl(AddAcl) = 0x060B,
    /// A rule.
    AclRule(AclRule) = 0x060C,
    /// List rules.
    ListAcls(ListAcls) = 0x060D,
    /// The rules.
    AclList(AclList) = 0x060E,
    /// Remove a rule.
    RemoveAcl(RemoveAcl) = 0x060F,
    // Operations: 0x07xx
    /// Ask for the broker's headline figures.
    GetStats(GetStats) = 0x0701,
    /// The figures, as JSON.
    Stats(Stats) = 0x0702,
}

/// A frame split from the stream whose body is not decoded yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub opcode: u16,
    pub flags: u16,
    pub correlation_id: u32,
    pub body: Bytes,
}

impl RawFrame {
    /// Decodes the body. An error here is the request's fault, not the stream's: answer it
    /// with an error frame and keep reading.
    pub fn decode(self) -> Result<Frame, DecodeError> {
        let opcode =
            Opcode::from_u16(self.opcode).ok_or(DecodeError::UnknownOpcode(self.opcode))?;
        let mut reader = Reader::new(self.body);
        let frame = Frame::get_body(opcode, &mut reader)?;
        reader.finish()?;
        Ok(frame)
    }
}

/// A frame with its correlation id: what a connection writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub correlation_id: u32,
    pub frame: Frame,
}

impl Message {
    /// A message with the given correlation id.
    pub fn new(correlation_id: u32, frame: impl Into<Frame>) -> Self {
        Message {
            correlation_id,
            frame: frame.into(),
        }
    }

    /// Appends the whole frame, header included, to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.put_u32(0); // length, patched below
        dst.put_u16(self.frame.opcode() as u16);
        dst.put_u16(0);
        dst.put_u32(self.correlation_id);
        self.frame.put_body(dst);
        let length = (dst.len() - start - 4) as u32;
        dst[start..start + 4].copy_from_slice(&length.to_be_bytes());
    }

    /// The whole frame as bytes.
    pub fn to_bytes(&self) -> Bytes {
        let mut dst = BytesMut::new();
        self.encode(&mut dst);
        dst.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn opcodes_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for &opcode in Opcode::ALL {
            assert!(seen.insert(opcode as u16), "duplicate opcode {opcode:?}");
            assert_eq!(Opcode::from_u16(opcode as u16), Some(opcode));
        }
        assert_eq!(Opcode::from_u16(0), None);
    }
}
