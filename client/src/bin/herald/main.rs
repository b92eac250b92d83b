//! `herald`: the Herald command-line client.

use clap::Parser;
mod cli;

/// Allocations through jemalloc, like the broker's (the bench embeds one).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
