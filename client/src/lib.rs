//! The Herald client library.
//!
//! - [`Client`]: one connection to a broker, shared by cheap clones; every call may run
//!   concurrently with the others over that connection.
//! - [`Producer`]: publishes records, batching those sent close together and keeping
//!   several batches in flight; each record's [`Confirm`] carries its partition and offset.
//! - [`PullConsumer`]: a pull-group member as an async stream of records, following the
//!   broker's partition assignment and committing what it handed out.
//! - [`PushConsumer`]: a push-group subscriber, a stream of [`Delivery`] values each
//!   answered with `ack`, `nack`, `reject` or `touch`.
//! - Reading without a group: [`Client::fetch`] by partition and offset (a long-poll when
//!   `max_wait_ms` is set). The group calls underneath the consumer ([`Client::join_group`],
//!   [`Client::sync_group`], [`Client::commit`]) are public too.
//! - Administration: topics and groups (`create_topic`, `describe_topic`, `list_groups`, …),
//!   and on brokers with `--auth` users, tokens and rules (`create_user`, `create_token`,
//!   `add_acl`, …); [`ConnectOptions::credentials`] logs in.
//! - [`Error`]: typed errors; the broker's error codes arrive as [`ErrorCode`] values.
//!
//! ```no_run
//! use herald_client::{Client, Record};
//!
//! # async fn run() -> herald_client::Result<()> {
//! let client = Client::connect("127.0.0.1:7420").await?;
//! let producer = client.producer();
//! let confirm = producer.send("orders", Record::new("hello").with_key("customer-7")).await?;
//! println!("stored at {}:{}", confirm.partition, confirm.offset);
//! # Ok(()) }
//! ```

mod admin;
mod client;
mod connection;
mod consumer;
mod error;
mod login;
mod producer;
mod pull;
mod push;
mod security;
mod tls;

pub use admin::{PushGroupSettings, DEFAULT_MAX_DELIVERIES};
pub use client::Client;
pub use connection::{ConnectOptions, ConnectionEvent, ConnectionState, Reconnect};
pub use consumer::{ConsumerStats, Membership, PullConsumer, PullConsumerConfig, PulledRecord};
pub use error::{BrokerError, Error, Result};
pub use herald_protocol::{
    AclRule, Assignment, Codec, Durability, ErrorCode, GroupInfo, GroupMode, GroupSummary, Record,
    ResetTarget, Retention, StartPosition, StoredRecord, TokenCreated, TokenSummary, TopicInfo,
    TopicSummary, UserSummary,
};
pub use login::Credentials;
pub use producer::{Confirm, PendingConfirm, Producer, ProducerConfig};
pub use pull::{FetchRequest, Fetched};
pub use push::{Delivery, PushConsumer, PushConsumerConfig, DEFAULT_ACK_LINGER};
pub use tls::TlsOptions;
