//! `herald`: the Herald command-line client.

use clap::Parser;
mod cli;

/// Allocations through jemalloc, like the broker's (the bench embeds one).
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

use cli::Cli;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let cli = Cli::parse_from(cli::login_flag::hoist(std::env::args_os().collect()));
    // Warnings, and the client's connection story (lost, reconnecting, reconnected).
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,herald_client=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(err) = cli::run(cli).await {
        eprintln!("herald: {err:#}");
        std::process::exit(1);
    }
}
