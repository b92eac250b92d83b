//! `herald`: the Herald command-line client.

use clap::Parser;
mod cli;

/// Allocations through jemalloc, like the broker's (the bench embeds one).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings: freed pages go back to the system after about a second (not ten),
/// from a background thread rather than on the paths that allocate. The store churns
/// through its values at the rate records arrive, and with the default decay the pages it
/// freed in the last seconds counted in the broker's RSS: 700–950 MB while writing 1 KiB
/// records under `--fsync never`, against a heap of about 200 MB.
#[cfg(feature = "jemalloc")]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

use cli::Cli;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
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
