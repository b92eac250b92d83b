//! The shared harness of Herald's black-box tests and benches: a real broker on
//! `127.0.0.1:0` in a temporary data directory, and the paths of the built binaries.
//!
//! ```no_run
//! # async fn run() {
//! let broker = herald_suite::TestBroker::start().await;
//! let client = broker.client().await;
//! client.create_topic("t", 1).await.unwrap();
//! broker.stop().await;
//! # }
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use herald_broker::{Broker, Config};
use herald_client::Client;
use tempfile::TempDir;

/// A broker started in-process for one test, with its own data directory.
pub struct TestBroker {
    broker: Broker,
    addr: SocketAddr,
    dir: TempDir,
}

impl TestBroker {
    /// A broker with default settings.
    pub async fn start() -> TestBroker {
        TestBroker::start_with(|_| {}).await
    }

    /// A broker whose settings `adjust` changes first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::ephemeral(dir.path().join("data"));
        adjust(&mut config);
        let broker = Broker::start(config).await.expect("broker starts");
        let addr = broker.local_addr();
        TestBroker { broker, addr, dir }
    }

    /// The address the broker listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A new client connection.
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await.expect("client connects")
    }

    /// Shuts the broker down cleanly and removes its data.
    pub async fn stop(self) {
        self.broker.shutdown().await.expect("clean shutdown");
    }
}

/// The path of a binary built by this workspace (`herald`, `herald-broker`), next to the
/// running test's own directory. `cargo test --workspace` builds both before any test runs;
/// `cargo test -p herald-suite` alone does not rebuild them, so run
/// `cargo build --workspace` first when iterating on one test file.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is not built; run `cargo build --workspace` first",
        path.display()
    );
    path
}
