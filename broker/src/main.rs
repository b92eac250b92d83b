//! `herald-broker`: parse flags, start the broker, stop cleanly on SIGINT or SIGTERM.

use herald_broker::config::Flags;
use herald_broker::{Broker, Config};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// Allocations through jemalloc: see the `jemalloc` feature in Cargo.toml.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings: freed pages go back to the system after about 100 ms (not ten
/// seconds), purged by the threads that allocate. sled churns through memory several
/// times faster than records arrive (a 512 KiB log buffer per segment written, pages read
/// and evicted), and pages freed but not yet purged count in the broker's RSS: with the
/// default decay it reached 700–950 MB while writing 1 KiB records under `--fsync never`,
/// against a live heap of about 200 MB; purged after a second by jemalloc's background
/// thread it still peaked at 740–990 MB; purged after 100 ms inline it peaked at 340–770
/// MB in the same kind of run, with W1–W5 within noise (W1 1 KiB under `never` faster).
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] = b"background_thread:false,dirty_decay_ms:100,muzzy_decay_ms:0\0";

#[tokio::main]
async fn main() {
    let config = match Config::load(Flags::from_env()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("herald-broker: {err}");
            std::process::exit(2);
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match run(config).await {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("herald-broker: {err:#}");
            1
        }
    };
    // Exit here rather than through the runtime's drop, which would wait for blocking
    // threads: one stuck in a failing disk must not keep the process alive.
    std::process::exit(code);
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while starting must stop us cleanly too.
    let mut signals = Signals::install()?;
    let broker = Broker::start(config).await?;
    // Also on stdout, for scripts that start the broker on port 0 and read its address.
    println!("herald-broker listening on {}", broker.local_addr());
    if let Some(addr) = broker.http_addr() {
        println!("herald-broker http listening on {addr}");
    }
    signals.next().await;
    tracing::info!("shutting down");
    let second = tokio::spawn(async move {
        signals.next().await;
        eprintln!("herald-broker: second signal, exiting now");
        std::process::exit(130);
    });
    broker.shutdown().await?;
    second.abort();
    Ok(())
}

/// SIGINT and SIGTERM.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
