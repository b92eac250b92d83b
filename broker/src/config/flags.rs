//! `herald-broker`'s command line: every setting as a flag and an `HERALD_*` variable.
//! A flag or variable not given leaves the setting to the `--config` file or the default;
//! `--help` shows the defaults from [`Config::default`].

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

use super::{Config, Fsync};

/// The Herald message broker.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "herald-broker", version, about = "The Herald message broker")]
pub struct Flags {
    /// A TOML file of settings: keys are the flags' long names in snake_case (`data_dir`,
    /// `max_connections`, ...). Flags and HERALD_* variables override it.
    #[arg(long, env = "HERALD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to listen on; port 0 picks a free port (the bound address is logged).
    #[arg(long, env = "HERALD_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Address of the HTTP gateway (HTTP, SSE, WebSocket), or `off`; port 0 picks a free
    /// port (printed as `herald-broker http listening on ADDR`).
    #[arg(long, env = "HERALD_HTTP_LISTEN")]
    pub http_listen: Option<super::Listen>,

    /// An origin allowed to call the HTTP gateway from a browser (CORS); repeatable, `*`
    /// for any. None: no CORS headers.
    #[arg(long, env = "HERALD_HTTP_ALLOW_ORIGIN", value_delimiter = ',')]
    pub http_allow_origin: Vec<String>,

    /// Directory of the sled store.
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Refuse publishes to missing topics with UnknownTopic instead of creating them.
    #[arg(long, env = "HERALD_NO_AUTO_CREATE_TOPICS")]
    pub no_auto_create_topics: bool,

    /// Durability policy for confirms.
    #[arg(long, env = "HERALD_FSYNC", value_enum)]
    pub fsync: Option<Fsync>,

    /// Flush period under `--fsync interval`.
    #[arg(long, env = "HERALD_FSYNC_INTERVAL_MS")]
    pub fsync_interval_ms: Option<u64>,

    /// sled's page cache, in MiB.
    #[arg(long, env = "HERALD_CACHE_MB")]
    pub cache_mb: Option<u64>,

    /// Memory for the newest batches of every partition together, in MiB: consumers keeping
    /// up with a partition read them from here rather than from sled (0 turns it off).
    #[arg(long, env = "HERALD_TAIL_CACHE_MB")]
    pub tail_cache_mb: Option<u64>,

    /// The size of each partition's segment files, in MiB (1 to 1024): retention frees
    /// disk space a whole file at a time.
    #[arg(long, env = "HERALD_SEGMENT_MB", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub segment_mb: Option<u64>,

    /// Most simultaneous client connections; more are refused with TooManyConnections.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Largest frame accepted, in bytes (checked on the frame header).
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<u32>,

    /// Largest record (key + headers + payload), in bytes.
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<u32>,

    /// Most requests one connection may have in flight; more get TooManyRequests.
    #[arg(long, env = "HERALD_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,

    /// Most frames queued for one connection's socket before its requests wait.
    #[arg(long, env = "HERALD_OUTBOUND_QUEUE")]
    pub outbound_queue: Option<usize>,

    /// Most topics the broker holds.
    #[arg(long, env = "HERALD_MAX_TOPICS")]
    pub max_topics: Option<usize>,

    /// Most partitions one topic may have.
    #[arg(long, env = "HERALD_MAX_PARTITIONS")]
    pub max_partitions: Option<u32>,

    /// Session timeout granted to clients that ask for none: a session that sends nothing
    /// for this long is ended. The heartbeat interval granted with it is a third of it.
    #[arg(long, env = "HERALD_SESSION_TIMEOUT_MS")]
    pub session_timeout_ms: Option<u32>,

    /// Shortest session timeout a client may ask for.
    #[arg(long, env = "HERALD_MIN_SESSION_TIMEOUT_MS")]
    pub min_session_timeout_ms: Option<u32>,

    /// Longest session timeout a client may ask for.
    #[arg(long, env = "HERALD_MAX_SESSION_TIMEOUT_MS")]
    pub max_session_timeout_ms: Option<u32>,

    /// How often retention limits are enforced.
    #[arg(long, env = "HERALD_RETENTION_CHECK_MS")]
    pub retention_check_ms: Option<u64>,

    /// Most bytes of frames queued for one connection (record bytes of fetch replies and
    /// deliveries, plus a little per frame); a client that stops reading stalls itself
    /// once this much waits for it.
    #[arg(long, env = "HERALD_MAX_OUTBOUND_BYTES")]
    pub max_outbound_bytes: Option<usize>,

    /// Most bytes the store may take on disk (0 = no quota): its files, less the space in
    /// them that retention and deleted topics freed for reuse. Publishes that would go
    /// beyond fail with StorageFull; reading goes on, and publishing resumes once retention
    /// or topic deletion frees space.
    #[arg(long, env = "HERALD_MAX_DISK_BYTES")]
    pub max_disk_bytes: Option<u64>,

    /// Free space to keep on the data directory's filesystem, in bytes: below it publishes
    /// fail with StorageFull (naming the reserve and the free space), while reads, acks,
    /// commits, group changes, retention and topic deletion go on in the room it keeps;
    /// publishing resumes by itself once space is freed. Default: a twentieth of the
    /// filesystem, at most 1 GiB.
    #[arg(long, env = "HERALD_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,

    /// Most records in one published batch; more are refused with BatchTooLarge (at most
    /// 16,777,215, what a batch's count holds).
    #[arg(long, env = "HERALD_MAX_BATCH_RECORDS",
          value_parser = clap::value_parser!(u32).range(1..=16_777_215))]
    pub max_batch_records: Option<u32>,

    /// Most consumers of one group at once (pull members or push subscribers); more are
    /// refused with TooManyConsumers.
    #[arg(long, env = "HERALD_MAX_CONSUMERS_PER_GROUP")]
    pub max_consumers_per_group: Option<usize>,

    /// How long a new connection has to say `Hello` before it is closed (heartbeats do not
    /// count), so connections that never finish the handshake hold nothing for long.
    #[arg(long, env = "HERALD_HELLO_TIMEOUT_MS")]
    pub hello_timeout_ms: Option<u64>,

    /// Verify every stored batch at start, keep each partition up to its first damage (logging
    /// what was found and dropped) and write a new `herald.offsets`. Needed to start a store
    /// whose `herald.offsets` is missing or unreadable, which is otherwise refused.
    #[arg(long, env = "HERALD_REPAIR_STORE")]
    pub repair_store: bool,

    /// The longest any request waits for the store: past it the request is answered with
    /// an error (the disk may be full or failing), and while the store's writer stays stuck
    /// for longer, writes are refused at once. Shutdown waits for the writer this long too.
    #[arg(long, env = "HERALD_STORAGE_TIMEOUT_MS")]
    pub storage_timeout_ms: Option<u64>,

    /// How long shutdown waits for requests in flight before closing anyway.
    #[arg(long, env = "HERALD_SHUTDOWN_TIMEOUT_MS")]
    pub shutdown_timeout_ms: Option<u64>,

    /// TLS on every listener (TCP, and HTTPS/WSS): the certificate chain, PEM, leaf first.
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert, PEM.
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Clients must present a certificate signed by this CA (PEM); its common name names
    /// the client.
    #[arg(long, env = "HERALD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Every connection must log in (SASL on TCP; a token or Basic over HTTP) and every
    /// request needs a rule. A store without users gets user `admin` with the password in
    /// HERALD_ADMIN_PASSWORD.
    #[arg(long, env = "HERALD_AUTH")]
    pub auth: bool,

    /// Allows listening on a non-loopback address without --auth (anyone who reaches the
    /// port may do anything).
    #[arg(long, env = "HERALD_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,

    /// Topics reported one by one in GET /metrics (by name); past them, their series are
    /// summed under topic="_other", so the number of series stays bounded.
    #[arg(long, env = "HERALD_METRICS_MAX_TOPICS")]
    pub metrics_max_topics: Option<usize>,
}

impl Flags {
    /// Parses the process's arguments (and `HERALD_*` variables); exits with clap's
    /// message on bad input, as a command line does.
    pub fn from_env() -> Flags {
        Flags::parse_with_defaults_shown(std::env::args_os())
    }

    /// Parses `args` (the first is the program name), showing each setting's default from
    /// [`Config::default`] in `--help`.
    pub fn parse_with_defaults_shown<I, T>(args: I) -> Flags
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = with_defaults(Flags::command()).get_matches_from(args);
        Flags::from_arg_matches(&matches).unwrap_or_else(|err| err.exit())
    }

    /// `base` with every setting these flags (or variables) give put over it.
    pub fn apply(self, mut base: Config) -> Config {
        fn set<T>(slot: &mut T, value: Option<T>) {
            if let Some(value) = value {
                *slot = value;
            }
        }
        set(&mut base.listen, self.listen);
        set(&mut base.http_listen, self.http_listen);
        if !self.http_allow_origin.is_empty() {
            base.http_allow_origin = self.http_allow_origin;
        }
        set(&mut base.data_dir, self.data_dir);
        base.no_auto_create_topics |= self.no_auto_create_topics;
        set(&mut base.fsync, self.fsync);
        set(&mut base.fsync_interval_ms, self.fsync_interval_ms);
        set(&mut base.cache_mb, self.cache_mb);
        set(&mut base.tail_cache_mb, self.tail_cache_mb);
        set(&mut base.segment_mb, self.segment_mb);
        set(&mut base.max_connections, self.max_connections);
        set(&mut base.max_frame_bytes, self.max_frame_bytes);
        set(&mut base.max_message_bytes, self.max_message_bytes);
        set(&mut base.max_in_flight, self.max_in_flight);
        set(&mut base.outbound_queue, self.outbound_queue);
        set(&mut base.max_topics, self.max_topics);
        set(&mut base.max_partitions, self.max_partitions);
        set(&mut base.session_timeout_ms, self.session_timeout_ms);
        set(
            &mut base.min_session_timeout_ms,
            self.min_session_timeout_ms,
        );
        set(
            &mut base.max_session_timeout_ms,
            self.max_session_timeout_ms,
        );
        set(&mut base.retention_check_ms, self.retention_check_ms);
        set(&mut base.max_outbound_bytes, self.max_outbound_bytes);
        set(&mut base.max_disk_bytes, self.max_disk_bytes);
        if self.min_free_disk_bytes.is_some() {
            base.min_free_disk_bytes = self.min_free_disk_bytes;
        }
        set(&mut base.max_batch_records, self.max_batch_records);
        set(
            &mut base.max_consumers_per_group,
            self.max_consumers_per_group,
        );
        set(&mut base.hello_timeout_ms, self.hello_timeout_ms);
        base.repair_store |= self.repair_store;
        base.auth |= self.auth;
        base.allow_anonymous |= self.allow_anonymous;
        set(&mut base.metrics_max_topics, self.metrics_max_topics);
        set(&mut base.storage_timeout_ms, self.storage_timeout_ms);
        set(&mut base.shutdown_timeout_ms, self.shutdown_timeout_ms);
        for (setting, flag) in [
            (&mut base.tls_cert, self.tls_cert),
            (&mut base.tls_key, self.tls_key),
            (&mut base.tls_client_ca, self.tls_client_ca),
        ] {
            if flag.is_some() {
                *setting = flag;
            }
        }
        base
    }
}

/// `command` with `[default: ...]` after each setting's help, read from [`Config::default`]
/// (one source for the defaults; switches and settings without one show none).
fn with_defaults(command: clap::Command) -> clap::Command {
    let defaults = toml::Value::try_from(Config::default()).expect("defaults serialize");
    let ids: Vec<String> = command
        .get_arguments()
        .map(|arg| arg.get_id().to_string())
        .collect();
    ids.into_iter().fold(command, |command, id| {
        let shown = match defaults.get(&id) {
            Some(toml::Value::String(text)) => text.clone(),
            Some(toml::Value::Boolean(_)) | None => return command,
            Some(toml::Value::Array(values)) if values.is_empty() => return command,
            Some(other) => other.to_string(),
        };
        command.mut_arg(&id, |arg| {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            arg.help(format!("{help} [default: {shown}]"))
        })
    })
}
