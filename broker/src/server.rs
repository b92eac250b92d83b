//! Starting and stopping a broker: open the store, bind, serve, shut down with a deadline.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Listen};
use crate::domain::{PullGroups, PushGroups, TopicLimits, Topics};
use crate::net::listener;
use crate::shared::Shared;
use crate::storage::{blocking, StorageError, Store};
use crate::tasks::retention;

/// The least time shutdown leaves the store for its last commit.
const FINAL_FLUSH: Duration = Duration::from_millis(500);

/// Why a broker could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the store in {}: {source}", dir.display())]
    OpenStore {
        dir: std::path::PathBuf,
        source: StorageError,
    },
    #[error("cannot load topics: {0}")]
    LoadTopics(StorageError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("flushing the store: {0}")]
    Flush(StorageError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("refusing to listen on {addr} without authentication: anyone who can reach it could publish to, read and delete every topic. Start with --auth (users, tokens and permissions; see the README's security section), or pass --allow-anonymous to accept that")]
    Unprotected { addr: SocketAddr },
    #[error("--auth with no users yet: set HERALD_ADMIN_PASSWORD to create the administrator `admin` (read once, at this start)")]
    NoAdministrator,
    #[error("cannot load users, tokens and rules: {0}")]
    LoadDirectory(StorageError),
    #[error("cannot create the administrator: {0}")]
    Bootstrap(crate::auth::directory::DirectoryError),
}

/// Refuses (or, with `--allow-anonymous`, warns about) listening where other hosts can
/// connect without `--auth`.
fn check_exposure(config: &Config) -> Result<(), ServerError> {
    let mut addrs = vec![config.listen];
    if let Listen::At(http) = config.http_listen {
        addrs.push(http);
    }
    for addr in addrs {
        if config.auth || addr.ip().is_loopback() {
            continue;
        }
        if !config.allow_anonymous {
            return Err(ServerError::Unprotected { addr });
        }
        tracing::warn!(%addr, "listening without authentication (--allow-anonymous): anyone who can reach this address may publish to, read and delete every topic");
    }
    Ok(())
}

/// The users, tokens and rules; with `--auth` and none yet, the administrator `admin`
/// made from `HERALD_ADMIN_PASSWORD`.
async fn load_access(
    config: &Config,
    store: &Arc<Store>,
) -> Result<crate::auth::access::Access, ServerError> {
    use crate::auth::directory::Directory;
    let (store, auth, password) = (
        Arc::clone(store),
        config.auth,
        config.admin_password.clone(),
    );
    let directory = tokio::task::spawn_blocking(move || {
        let directory = Directory::load(store).map_err(ServerError::LoadDirectory)?;
        if auth && directory.is_empty() {
            let password = password.ok_or(ServerError::NoAdministrator)?;
            directory
                .add_user("admin", password.expose(), true)
                .map_err(ServerError::Bootstrap)?;
            tracing::info!("created the administrator `admin` from HERALD_ADMIN_PASSWORD");
        }
        Ok::<_, ServerError>(directory)
    })
    .await
    .map_err(|_| ServerError::NoAdministrator)??;
    Ok(crate::auth::access::Access::new(config.auth, directory))
}

/// A running broker.
pub struct Broker {
    local_addr: SocketAddr,
    /// The HTTP gateway's address, when it runs.
    http_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Broker {
    /// Opens the store, binds `config.listen` and starts serving.
    pub async fn start(config: Config) -> Result<Broker, ServerError> {
        check_exposure(&config)?;
        let tls = crate::tls::Tls::from_files(
            config.tls_cert.as_deref(),
            config.tls_key.as_deref(),
            config.tls_client_ca.as_deref(),
        )?;
        let store_config = config.store();
        let dir = config.data_dir.clone();
        let store = blocking(move || Store::open(&dir, store_config))
            .await
            .map_err(|source| ServerError::OpenStore {
                dir: config.data_dir.clone(),
                source,
            })?;
        let limits = TopicLimits {
            auto_create: !config.no_auto_create_topics,
            max_topics: config.max_topics,
            max_partitions: config.max_partitions,
        };
        let access = Arc::new(load_access(&config, &store).await?);
        let topics_store = Arc::clone(&store);
        let topics = blocking(move || Topics::load(topics_store, limits))
            .await
            .map_err(ServerError::LoadTopics)?;
        let listen = |source| ServerError::Listen {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(listen)?;
        let local_addr = listener.local_addr().map_err(listen)?;
        let http = match config.http_listen {
            Listen::Off => None,
            Listen::At(addr) => {
                let listen = |source| ServerError::Listen { addr, source };
                let http = TcpListener::bind(addr).await.map_err(listen)?;
                let bound = http.local_addr().map_err(listen)?;
                Some((http, bound))
            }
        };
        tracing::info!(fsync = config.store().fsync.name(), data_dir = %config.data_dir.display(), tls = tls.is_some(), auth = config.auth, "listening on {local_addr}");
        let shutdown = CancellationToken::new();
        let topics = Arc::new(topics);
        let connections = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
        let shared = Arc::new(Shared {
            pull_groups: PullGroups::new(Arc::clone(&store), config.max_consumers_per_group),
            push_groups: PushGroups::new(
                Arc::clone(&store),
                Arc::clone(&topics),
                config.max_consumers_per_group,
            ),
            store,
            topics,
            config,
            next_session: AtomicU64::new(1),
            connections,
            shutdown: shutdown.clone(),
            outbound_bytes: Arc::new(AtomicU64::new(0)),
            tls,
            access,
            counters: Default::default(),
            started: std::time::Instant::now(),
        });
        let tracker = TaskTracker::new();
        let every = Duration::from_millis(shared.config.retention_check_ms.max(1));
        tracker.spawn(retention::run(
            Arc::clone(&shared.topics),
            every,
            shutdown.clone(),
        ));
        let http_addr = http.as_ref().map(|(_, addr)| *addr);
        if let Some((http, addr)) = http {
            let core = crate::core::Core::new(Arc::clone(&shared));
            let (router, tasks) = crate::http::router(core, &shared.config.http_allow_origin);
            tracing::info!("http gateway listening on {addr}");
            let shared = Arc::clone(&shared);
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                crate::http::serve(http, &shared, router, tasks, shutdown).await
            });
        }
        tracker.spawn(listener::run(
            listener,
            Arc::clone(&shared),
            shutdown.clone(),
            tracker.clone(),
        ));
        Ok(Broker {
            local_addr,
            http_addr,
            shared,
            shutdown,
            tracker,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The HTTP gateway's address actually bound, unless `--http-listen off`.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The broker's verbs, for a way in other than the TCP listener (and for tests).
    pub fn core(&self) -> crate::core::Core {
        crate::core::Core::new(Arc::clone(&self.shared))
    }

    /// Tasks that serve push groups now running: each running group's dispatcher and the
    /// storage waits and dead-letter publishes it started.
    pub fn push_group_tasks(&self) -> usize {
        self.shared.push_groups.task_count()
    }

    /// Bytes of frames now queued for clients, over every connection.
    pub fn outbound_bytes(&self) -> u64 {
        self.shared.outbound_bytes.load(Ordering::Relaxed)
    }

    /// Stops accepting, lets sessions finish their requests in flight (up to
    /// `--shutdown-timeout-ms`), tells clients to go away, stops the push groups' dispatchers
    /// (which store the ack state of every answer they took and finish their dead-letter
    /// publishes), then flushes and closes the store.
    ///
    /// The whole stop takes at most `--shutdown-timeout-ms`, and leaves the store's last
    /// commit at least half a second: a store whose disk failed under it is
    /// left with an error rather than waited for.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        self.tracker.close();
        let budget = Duration::from_millis(self.shared.config.shutdown_timeout_ms);
        let deadline = tokio::time::Instant::now() + budget;
        if tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "sessions still open after the shutdown timeout; closing the store anyway"
            );
        }
        if !self.shared.push_groups.stop(deadline).await {
            tracing::warn!(
                "push groups still storing after the shutdown timeout; closing the store anyway"
            );
        }
        let store = Arc::clone(&self.shared.store);
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(FINAL_FLUSH);
        blocking(move || store.close_within(left))
            .await
            .map_err(ServerError::Flush)?;
        tracing::info!("broker stopped");
        Ok(())
    }
}
