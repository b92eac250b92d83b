//! `herald-broker`: parse flags, start the broker, stop cleanly on SIGINT or SIGTERM.

use clap::Parser;
use herald_broker::{Broker, Config};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Err(err) = run(config).await {
        eprintln!("herald-broker: {err:#}");
        std::process::exit(1);
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let broker = Broker::start(config).await?;
    // Also on stdout, for scripts that start the broker on port 0 and read its address.
    println!("herald-broker listening on {}", broker.local_addr());
    wait_for_signal().await?;
    tracing::info!("shutting down");
    let second = tokio::spawn(async {
        if wait_for_signal().await.is_ok() {
            eprintln!("herald-broker: second signal, exiting now");
            std::process::exit(130);
        }
    });
    broker.shutdown().await?;
    second.abort();
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}
