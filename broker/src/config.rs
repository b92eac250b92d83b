//! The broker's settings: command-line flags, each with an `HERALD_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::storage::{FsyncPolicy, StoreConfig};

/// When confirmed data must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    /// Confirm only after the data is flushed; concurrent publishes share one flush.
    Always,
    /// Flush every `--fsync-interval-ms`; confirm without waiting.
    Interval,
    /// Never flush explicitly; the store writes back in the background.
    Never,
}

/// Herald broker settings.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-broker", version, about = "The Herald message broker")]
pub struct Config {
    /// Address to listen on; port 0 picks a free port (the bound address is logged).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:7420")]
    pub listen: SocketAddr,

    /// Directory of the sled store.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./herald-data")]
    pub data_dir: PathBuf,

    /// Refuse publishes to missing topics with UnknownTopic instead of creating them.
    #[arg(long, env = "HERALD_NO_AUTO_CREATE_TOPICS")]
    pub no_auto_create_topics: bool,

    /// Durability policy for confirms.
    #[arg(long, env = "HERALD_FSYNC", value_enum, default_value = "always")]
    pub fsync: Fsync,

    /// Flush period under `--fsync interval`.
    #[arg(long, env = "HERALD_FSYNC_INTERVAL_MS", default_value_t = 100)]
    pub fsync_interval_ms: u64,

    /// sled's page cache, in MiB.
    #[arg(long, env = "HERALD_CACHE_MB", default_value_t = 128)]
    pub cache_mb: u64,

    /// Memory for the newest batches of every partition together, in MiB: consumers keeping
    /// up with a partition read them from here rather than from sled (0 turns it off).
    #[arg(long, env = "HERALD_TAIL_CACHE_MB", default_value_t = 32)]
    pub tail_cache_mb: u64,

    /// Most simultaneous client connections; more are refused with TooManyConnections.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Largest frame accepted, in bytes (checked on the frame header).
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES", default_value_t = herald_protocol::DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: u32,

    /// Largest record (key + headers + payload), in bytes.
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub max_message_bytes: u32,

    /// Most requests one connection may have in flight; more get TooManyRequests.
    #[arg(long, env = "HERALD_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Most frames queued for one connection's socket before its requests wait.
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,

    /// Most topics the broker holds.
    #[arg(long, env = "HERALD_MAX_TOPICS", default_value_t = 10_000)]
    pub max_topics: usize,

    /// Most partitions one topic may have.
    #[arg(long, env = "HERALD_MAX_PARTITIONS", default_value_t = 1024)]
    pub max_partitions: u32,

    /// Session timeout granted to clients that ask for none: a session that sends nothing
    /// for this long is ended. The heartbeat interval granted with it is a third of it.
    #[arg(long, env = "HERALD_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u32,

    /// Shortest session timeout a client may ask for.
    #[arg(long, env = "HERALD_MIN_SESSION_TIMEOUT_MS", default_value_t = 1_000)]
    pub min_session_timeout_ms: u32,

    /// Longest session timeout a client may ask for.
    #[arg(long, env = "HERALD_MAX_SESSION_TIMEOUT_MS", default_value_t = 300_000)]
    pub max_session_timeout_ms: u32,

    /// How often retention limits are enforced.
    #[arg(long, env = "HERALD_RETENTION_CHECK_MS", default_value_t = 1_000)]
    pub retention_check_ms: u64,

    /// Most bytes of frames queued for one connection (record bytes of fetch replies and
    /// deliveries, plus a little per frame); a client that stops reading stalls itself
    /// once this much waits for it.
    #[arg(long, env = "HERALD_MAX_OUTBOUND_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_outbound_bytes: usize,

    /// Most bytes the store may take on disk (0 = no quota): its files, less the space in
    /// them that retention and deleted topics freed for reuse. Publishes that would go
    /// beyond fail with StorageFull; reading goes on, and publishing resumes once retention
    /// or topic deletion frees space.
    #[arg(long, env = "HERALD_MAX_DISK_BYTES", default_value_t = 0)]
    pub max_disk_bytes: u64,

    /// Free space to keep on the data directory's filesystem, in bytes: below it publishes
    /// fail with StorageFull (naming the reserve and the free space), while reads, acks,
    /// commits, group changes, retention and topic deletion go on in the room it keeps;
    /// publishing resumes by itself once space is freed. Default: a twentieth of the
    /// filesystem, at most 1 GiB.
    #[arg(long, env = "HERALD_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,

    /// How the free space is read: `statvfs` of the data directory (tests stand in).
    #[arg(skip)]
    pub disk_probe: crate::storage::disk::Probe,

    /// Most records in one published batch; more are refused with BatchTooLarge.
    #[arg(long, env = "HERALD_MAX_BATCH_RECORDS", default_value_t = 100_000)]
    pub max_batch_records: u32,

    /// Most consumers of one group at once (pull members or push subscribers); more are
    /// refused with TooManyConsumers.
    #[arg(long, env = "HERALD_MAX_CONSUMERS_PER_GROUP", default_value_t = 1_000)]
    pub max_consumers_per_group: usize,

    /// How long a new connection has to say `Hello` before it is closed (heartbeats do not
    /// count), so connections that never finish the handshake hold nothing for long.
    #[arg(long, env = "HERALD_HELLO_TIMEOUT_MS", default_value_t = 10_000)]
    pub hello_timeout_ms: u64,

    /// Verify every stored batch at start, keep each partition up to its first damage (logging
    /// what was found and dropped) and write a new `herald.offsets`. Needed to start a store
    /// whose `herald.offsets` is missing or unreadable, which is otherwise refused.
    #[arg(long, env = "HERALD_REPAIR_STORE")]
    pub repair_store: bool,

    /// The longest any request waits for the store: past it the request is answered with
    /// an error (the disk may be full or failing), and while the store's writer stays stuck
    /// for longer, writes are refused at once. Shutdown waits for the writer this long too.
    #[arg(long, env = "HERALD_STORAGE_TIMEOUT_MS", default_value_t = 30_000)]
    pub storage_timeout_ms: u64,

    /// How long shutdown waits for requests in flight before closing anyway.
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT_MS", default_value_t = 10_000)]
    pub shutdown_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["herald-broker"])
    }
}

impl Config {
    /// Settings for a broker on `127.0.0.1:0` storing in `data_dir` (tests, benches).
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            ..Config::default()
        }
    }

    /// The store settings these flags select.
    pub fn store(&self) -> StoreConfig {
        let fsync = match self.fsync {
            Fsync::Always => FsyncPolicy::Always,
            Fsync::Interval => {
                FsyncPolicy::Interval(Duration::from_millis(self.fsync_interval_ms.max(1)))
            }
            Fsync::Never => FsyncPolicy::Never,
        };
        StoreConfig {
            fsync,
            cache_bytes: self.cache_mb.saturating_mul(1024 * 1024),
            tail_cache_bytes: self.tail_cache_mb.saturating_mul(1024 * 1024),
            repair: self.repair_store,
            min_free_disk_bytes: self.min_free_disk_bytes,
            disk_probe: self.disk_probe.clone(),
            timeout: Duration::from_millis(self.storage_timeout_ms.max(1)),
        }
    }

    /// The session timeout and heartbeat interval granted to a client that asks for
    /// `timeout_ms` and `heartbeat_ms` (0 = the defaults): the timeout is clamped to
    /// `--min-session-timeout-ms`..`--max-session-timeout-ms`; the heartbeat defaults to a
    /// third of it and is never more than half of it.
    pub fn grant_session(&self, timeout_ms: u32, heartbeat_ms: u32) -> (u32, u32) {
        let (min, max) = (
            self.min_session_timeout_ms.max(1),
            self.max_session_timeout_ms
                .max(self.min_session_timeout_ms)
                .max(1),
        );
        let asked = if timeout_ms == 0 {
            self.session_timeout_ms
        } else {
            timeout_ms
        };
        let timeout = asked.clamp(min, max);
        let heartbeat = if heartbeat_ms == 0 {
            timeout / 3
        } else {
            heartbeat_ms.min(timeout / 2)
        };
        (timeout, heartbeat.max(1))
    }

    /// The heartbeat interval granted with the default session timeout.
    pub fn heartbeat_interval_ms(&self) -> u32 {
        self.grant_session(0, 0).1
    }
}
