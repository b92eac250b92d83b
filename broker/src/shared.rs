//! The state every way in shares: configuration, the store, topics and groups. Front doors
//! (the TCP sessions in [`crate::net`]) and request handlers ([`crate::cmd`]) hold it; it
//! depends on nothing above [`crate::domain`].

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::{PullGroups, PushGroups, Topics};
use crate::storage::Store;

/// Everything the request handlers share.
pub struct Shared {
    pub config: Config,
    pub store: Arc<Store>,
    pub topics: Arc<Topics>,
    pub pull_groups: PullGroups,
    pub push_groups: PushGroups,
    /// Source of session ids.
    pub next_session: AtomicU64,
    /// Cancelled when the broker starts shutting down.
    pub shutdown: CancellationToken,
    /// Client connections over every way in (TCP, HTTP, WebSocket), at most
    /// `--max-connections` at once.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// Bytes of frames queued for clients, over every session (see `net::outbound`).
    pub outbound_bytes: Arc<AtomicU64>,
    /// TLS for every listener, when `--tls-cert` and `--tls-key` are set.
    pub tls: Option<crate::tls::Tls>,
    /// Users, tokens, rules and the `--auth` switch.
    pub access: Arc<crate::auth::access::Access>,
    /// Connections, sessions and requests by way in (see `metrics`).
    pub counters: Arc<crate::metrics::counters::Counters>,
    /// When the broker started.
    pub started: std::time::Instant,
}
