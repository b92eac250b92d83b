//! The `herald` command line: topics, groups, publish, consume, bench.

mod bench;
mod consume;
mod group;
mod publish;
mod topic;

use clap::{Parser, Subcommand};

use herald_client::{Client, ConnectOptions};

/// Herald's command-line client.
#[derive(Debug, Parser)]
#[command(
    name = "herald",
    version,
    about = "Publish, consume and administer a Herald broker"
)]
pub struct Cli {
    /// Broker address.
    #[arg(
        long,
        global = true,
        env = "HERALD_BROKER",
        default_value = "127.0.0.1:7420"
    )]
    pub broker: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Publish messages given as arguments, or one per line of stdin.
    Publish(publish::PublishArgs),
    /// List, describe, reset, create and delete consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Consume a topic as a member of a group and print each message.
    Consume(consume::ConsumeArgs),
    /// Measure throughput and latency; every message is checked on the consuming side.
    Bench(bench::BenchArgs),
}

/// Runs one command against the broker.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Topic(command) => topic::run(&connect(&cli.broker).await?, command).await,
        Command::Publish(args) => publish::run(&connect(&cli.broker).await?, args).await,
        Command::Group(command) => group::run(&connect(&cli.broker).await?, command).await,
        Command::Consume(args) => consume::run(&cli.broker, args).await,
        Command::Bench(args) => bench::run(&cli.broker, args).await,
    }
}

async fn connect(broker: &str) -> anyhow::Result<Client> {
    connect_with(broker, ConnectOptions::default()).await
}

async fn connect_with(broker: &str, options: ConnectOptions) -> anyhow::Result<Client> {
    Client::connect_with(broker, options)
        .await
        .map_err(|err| anyhow::anyhow!("cannot connect to {broker}: {err}"))
}
