//! The Herald broker.
//!
//! Modules follow a request's path:
//!
//! - [`net`]: the listener (accept, connection limit) and one session per client (handshake,
//!   frames in and out, requests in flight).
//! - [`cmd`]: the TCP protocol's adapter: decodes a request into a call of a [`core`]
//!   verb and encodes its answer.
//! - [`core`]: the broker's verbs for every way in ([`core::Core`]): topics, publish,
//!   fetch, groups, subscriptions; typed results and errors, no sockets.
//! - [`domain`]: the semantics: topics, publish routing, consumer groups.
//! - [`storage`]: sled, the partition logs stored as checksummed chunks, the writer thread
//!   that commits in groups, and the free-space reserve.
//!
//! [`metrics`] reports on all of it (`GET /metrics`), [`auth`] decides who may do what.
//! [`shared`] is the state every way in shares (config, store, topics, groups); [`tasks`]
//! holds the periodic duties (retention). [`server`] wires everything together and owns
//! every task; [`config`] holds the flags. Arrows point down only: `server` → `net` →
//! `cmd` → `core` → `domain` → `storage`, and none of `cmd`, `domain`, `storage` knows a socket.
//! A subscription is handed to its session as a stream of deliveries, which the session
//! forwards to its socket.
//!
//! ```no_run
//! # async fn run() -> Result<(), herald_broker::server::ServerError> {
//! let broker = herald_broker::Broker::start(herald_broker::Config::ephemeral("/tmp/herald")).await?;
//! println!("listening on {}", broker.local_addr());
//! broker.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod cmd;
pub mod config;
pub mod core;
pub mod domain;
pub mod error;
pub mod http;
pub mod metrics;
pub mod net;
pub mod server;
pub mod shared;
pub mod storage;
pub mod tasks;
pub mod tls;

pub use config::{Config, Fsync, EPHEMERAL_DISK_RESERVE};
pub use error::BrokerError;
pub use server::{Broker, ServerError};
