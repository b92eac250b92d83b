//! The broker's settings.
//!
//! [`Config`] is a plain struct whose defaults are written in code ([`Config::default`]);
//! it reads nothing by itself, so a test or an embedding application gets exactly what it
//! builds. `herald-broker` layers three sources over the defaults ([`Config::load`]), each
//! overriding the one before:
//!
//! 1. a TOML file named by `--config FILE` (or `HERALD_CONFIG`), whose keys are the flags'
//!    long names in snake_case (`listen`, `data_dir`, `fsync`, `max_connections`, ...);
//! 2. `HERALD_*` environment variables (`HERALD_DATA_DIR`, ...);
//! 3. command-line flags (`--data-dir`, ...).
//!
//! So flags > environment > file > defaults. The switches (`--repair-store`,
//! `--no-auto-create-topics`) only turn a setting on: a file that turns one on cannot be
//! turned off by a flag. An unknown key, a value of the wrong type and a file that does not
//! parse are errors that name the file and the key.

mod flags;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::storage::{FsyncPolicy, StoreConfig};

pub use flags::Flags;

/// The free-disk reserve of [`Config::ephemeral`]: 16 MiB.
pub const EPHEMERAL_DISK_RESERVE: u64 = 16 * 1024 * 1024;

/// When confirmed data must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Confirm only after the data is flushed; concurrent publishes share one flush.
    Always,
    /// Flush every `--fsync-interval-ms`; confirm without waiting.
    Interval,
    /// Never flush explicitly; the store writes back in the background.
    Never,
}

/// Where a listener binds: an address (port 0 picks one), or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Listen {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Listen, String> {
        if text.eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        text.parse()
            .map(Listen::At)
            .map_err(|err| format!("{text:?} is neither an address (host:port) nor off: {err}"))
    }
}

impl TryFrom<String> for Listen {
    type Error = String;

    fn try_from(text: String) -> Result<Listen, String> {
        text.parse()
    }
}

impl From<Listen> for String {
    fn from(listen: Listen) -> String {
        match listen {
            Listen::Off => "off".to_string(),
            Listen::At(addr) => addr.to_string(),
        }
    }
}

/// Herald broker settings; each field is the flag of the same name (see
/// `herald-broker --help`, or [`Flags`], for what each does).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub http_listen: Listen,
    /// Origins allowed to call the HTTP gateway from a browser (CORS); `*` for any.
    pub http_allow_origin: Vec<String>,
    pub data_dir: PathBuf,
    pub no_auto_create_topics: bool,
    pub fsync: Fsync,
    pub fsync_interval_ms: u64,
    pub cache_mb: u64,
    pub tail_cache_mb: u64,
    pub segment_mb: u64,
    pub max_connections: usize,
    pub max_frame_bytes: u32,
    pub max_message_bytes: u32,
    pub max_in_flight: usize,
    pub outbound_queue: usize,
    pub max_topics: usize,
    pub max_partitions: u32,
    pub session_timeout_ms: u32,
    pub min_session_timeout_ms: u32,
    pub max_session_timeout_ms: u32,
    pub retention_check_ms: u64,
    pub max_outbound_bytes: usize,
    pub max_disk_bytes: u64,
    /// `None`: a twentieth of the filesystem, at most 1 GiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_free_disk_bytes: Option<u64>,
    /// How the free space is read: `statvfs` of the data directory (tests stand in).
    #[serde(skip)]
    pub disk_probe: crate::storage::disk::Probe,
    pub max_batch_records: u32,
    pub max_consumers_per_group: usize,
    pub hello_timeout_ms: u64,
    pub repair_store: bool,
    pub storage_timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
    /// The certificate chain (PEM) for TLS on every listener; with `tls_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Clients must present a certificate signed by this CA (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
    /// Every connection must log in, and every request needs a rule (see `auth`).
    pub auth: bool,
    /// Listening on a non-loopback address without `auth` (refused otherwise).
    pub allow_anonymous: bool,
    /// Topics reported one by one in `GET /metrics`; the rest are summed as `_other`.
    pub metrics_max_topics: usize,
    /// The password of the `admin` user made when `auth` starts a store without users;
    /// from `HERALD_ADMIN_PASSWORD` only, never a flag or a file key (a flag shows in `ps`).
    #[serde(skip)]
    pub admin_password: Option<crate::auth::secrets::Secret>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            http_listen: Listen::At(SocketAddr::from(([127, 0, 0, 1], 7421))),
            http_allow_origin: Vec::new(),
            data_dir: PathBuf::from("./herald-data"),
            no_auto_create_topics: false,
            fsync: Fsync::Always,
            fsync_interval_ms: 100,
            cache_mb: 128,
            tail_cache_mb: 32,
            segment_mb: 64,
            max_connections: 10_000,
            max_frame_bytes: herald_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_message_bytes: 1024 * 1024,
            max_in_flight: 1024,
            outbound_queue: 256,
            max_topics: 10_000,
            max_partitions: 1024,
            session_timeout_ms: 10_000,
            min_session_timeout_ms: 1_000,
            max_session_timeout_ms: 300_000,
            retention_check_ms: 1_000,
            max_outbound_bytes: 64 * 1024 * 1024,
            max_disk_bytes: 0,
            min_free_disk_bytes: None,
            disk_probe: Default::default(),
            max_batch_records: 100_000,
            max_consumers_per_group: 1_000,
            hello_timeout_ms: 10_000,
            repair_store: false,
            storage_timeout_ms: 30_000,
            shutdown_timeout_ms: 10_000,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            auth: false,
            allow_anonymous: false,
            metrics_max_topics: 100,
            admin_password: None,
        }
    }
}

/// Settings that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Where `--auth` takes the first administrator's password from.
pub const ADMIN_PASSWORD_VARIABLE: &str = "HERALD_ADMIN_PASSWORD";

impl Config {
    /// The settings `herald-broker` runs with: the defaults, then the `--config` file,
    /// then `HERALD_*` variables, then the flags in `flags`.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let base = match &flags.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let mut config = flags.apply(base);
        config.admin_password = std::env::var(ADMIN_PASSWORD_VARIABLE)
            .ok()
            .filter(|p| !p.is_empty())
            .map(crate::auth::secrets::Secret::new);
        Ok(config)
    }

    /// The defaults overlaid with the TOML file at `path`.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_toml(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// The defaults overlaid with TOML `text`; the error names the key and line.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config =
            toml::from_str(text).map_err(|err| err.to_string().trim_end().to_string())?;
        if !(1..=1024).contains(&config.segment_mb) {
            return Err(format!(
                "segment_mb = {}: must be 1 to 1024 (MiB)",
                config.segment_mb
            ));
        }
        Ok(config)
    }

    /// Settings for a broker on `127.0.0.1:0`, without the HTTP gateway, storing in
    /// `data_dir` (tests, benches).
    ///
    /// Its free-disk reserve is [`EPHEMERAL_DISK_RESERVE`] rather than the default's up
    /// to 1 GiB: a throwaway store in a temporary directory writes little, and tests run
    /// on build machines whose disks are mostly full of build output. Tests of the
    /// reserve itself set their own.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_listen: Listen::Off,
            data_dir: data_dir.into(),
            min_free_disk_bytes: Some(EPHEMERAL_DISK_RESERVE),
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
            segment_file_bytes: self.segment_mb.saturating_mul(1024 * 1024),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn flags(args: &[&str]) -> Flags {
        Flags::try_parse_from(std::iter::once("herald-broker").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn a_file_overrides_the_defaults_and_flags_override_the_file() {
        let file = Config::from_toml(
            "data_dir = \"/srv/herald\"\nfsync = \"never\"\nmax_connections = 5\nrepair_store = true\n",
        )
        .unwrap();
        assert_eq!(file.data_dir, PathBuf::from("/srv/herald"));
        assert_eq!(file.fsync, Fsync::Never);
        assert_eq!(file.max_connections, 5);
        assert_eq!(
            file.cache_mb,
            Config::default().cache_mb,
            "unset keys keep defaults"
        );

        let config = flags(&["--fsync", "interval", "--cache-mb", "64"]).apply(file);
        assert_eq!(config.fsync, Fsync::Interval, "the flag wins");
        assert_eq!(config.cache_mb, 64);
        assert_eq!(config.max_connections, 5, "the file's value stays");
        assert!(config.repair_store, "a switch a file turned on stays on");
    }

    #[test]
    fn the_segment_size_flag_takes_1_to_1024_mib_and_reaches_the_store() {
        let parse = |size: &str| {
            Flags::try_parse_from(["herald-broker", "--segment-mb", size]).map(|f| f.segment_mb)
        };
        assert_eq!(parse("8").unwrap(), Some(8));
        for bad in ["0", "1025", "big"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("--segment-mb"), "{bad}: {err}");
        }
        let config = flags(&["--segment-mb", "8"]).apply(Config::default());
        assert_eq!(config.store().segment_file_bytes, 8 * 1024 * 1024);
        assert_eq!(
            Config::default().store().segment_file_bytes,
            crate::storage::segment::SEGMENT_BYTES
        );
    }

    #[test]
    fn a_config_without_a_file_is_the_defaults_and_the_flags() {
        let config = Config::load(flags(&["--listen", "127.0.0.1:0"])).unwrap();
        assert_eq!(config.listen, SocketAddr::from(([127, 0, 0, 1], 0)));
        assert_eq!(config.data_dir, Config::default().data_dir);
    }

    #[test]
    fn bad_files_are_errors_that_name_the_key() {
        let unknown = Config::from_toml("listn = \"127.0.0.1:0\"\n").unwrap_err();
        assert!(unknown.contains("unknown field `listn`"), "{unknown}");
        let wrong = Config::from_toml("max_connections = \"many\"\n").unwrap_err();
        assert!(wrong.contains("max_connections"), "{wrong}");
        assert!(wrong.contains("line 1"), "{wrong}");
        let policy = Config::from_toml("fsync = \"sometimes\"\n").unwrap_err();
        assert!(
            policy.contains("fsync") && policy.contains("sometimes"),
            "{policy}"
        );
        let syntax = Config::from_toml("listen = \n").unwrap_err();
        assert!(syntax.contains("line 1"), "{syntax}");
        for size in [0, 1025] {
            let segment = Config::from_toml(&format!("segment_mb = {size}\n")).unwrap_err();
            assert!(
                segment.contains("segment_mb") && segment.contains("1 to 1024"),
                "{segment}"
            );
        }
        assert_eq!(Config::from_toml("segment_mb = 1\n").unwrap().segment_mb, 1);

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let err = Config::from_file(&missing).unwrap_err();
        assert!(err.to_string().contains("missing.toml"), "{err}");
    }

    #[test]
    fn every_setting_has_a_file_key_and_a_flag() {
        // Settings without a default show up once they are set.
        let keys = toml::Value::try_from(Config {
            min_free_disk_bytes: Some(1),
            tls_cert: Some("cert.pem".into()),
            tls_key: Some("key.pem".into()),
            tls_client_ca: Some("ca.pem".into()),
            ..Config::default()
        })
        .unwrap();
        let keys = keys.as_table().unwrap();
        let command = <Flags as clap::CommandFactory>::command();
        for key in keys.keys() {
            let long = key.replace('_', "-");
            assert!(
                command
                    .get_arguments()
                    .any(|a| a.get_long() == Some(long.as_str())),
                "no --{long} for the file key {key}"
            );
        }
        // And back: every flag but --config is a key.
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "config" | "help" | "version") {
                continue;
            }
            assert!(
                keys.contains_key(&long.replace('-', "_")),
                "--{long} has no key"
            );
        }
    }
}
