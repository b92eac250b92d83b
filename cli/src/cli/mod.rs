//! The `herald` command line: topics, groups, publish, consume, bench, and users, tokens
//! and rules.

mod bench;
mod consume;
mod group;
pub mod login_flag;
mod publish;
mod security;
mod stats;
mod topic;

use clap::{Parser, Subcommand};

use herald_client::{Client, ConnectOptions, Credentials, TlsOptions};

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

    /// Connect with TLS, trusting the system's certificate store.
    #[arg(long, global = true)]
    pub tls: bool,

    /// Connect with TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long, global = true, env = "HERALD_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Present this client certificate (PEM) to a broker that asks for one; with --tls-key.
    #[arg(long, global = true, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Log in as this user (SCRAM-SHA-256), with the password in HERALD_PASSWORD. After
    /// `token create` and `acl add`, `--user` names whom the token or rule is for: log in
    /// with `--user` before those (`herald --user admin acl add --user alice ...`).
    #[arg(long, env = "HERALD_USER", conflicts_with = "token")]
    pub user: Option<String>,

    /// Log in with this API token (taken inside TLS or on loopback).
    #[arg(long, global = true, env = "HERALD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

/// The broker to talk to, and how.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: String,
    pub tls: Option<TlsOptions>,
    pub credentials: Option<Credentials>,
}

/// Where `--user`'s password is read (never a flag: `ps` would show it).
const PASSWORD: &str = "HERALD_PASSWORD";

impl Cli {
    /// The broker, the TLS settings and the login the flags ask for.
    fn target(&self) -> anyhow::Result<Target> {
        let tls = match (&self.tls_ca, self.tls || self.tls_cert.is_some()) {
            (Some(ca), _) => Some(TlsOptions::ca_file(ca)?),
            (None, true) => Some(TlsOptions::system_roots()?),
            (None, false) => None,
        };
        let tls = match (tls, &self.tls_cert, &self.tls_key) {
            (Some(tls), Some(cert), Some(key)) => Some(tls.client_cert_files(cert, key)?),
            (tls, _, _) => tls,
        };
        // The certificate must carry the host name connected to (or its IP address).
        let host = self
            .broker
            .rsplit_once(':')
            .map_or(self.broker.as_str(), |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let tls = match tls {
            Some(tls) if host.parse::<std::net::IpAddr>().is_err() => Some(tls.server_name(host)),
            tls => tls,
        };
        let credentials = match (&self.user, &self.token) {
            (Some(user), _) => match std::env::var(PASSWORD) {
                Ok(password) => Some(Credentials::password(user, password)),
                Err(_) => anyhow::bail!("--user {user} needs the password in {PASSWORD}"),
            },
            (None, Some(token)) => Some(Credentials::token(token)),
            (None, None) => None,
        };
        Ok(Target {
            addr: self.broker.clone(),
            tls,
            credentials,
        })
    }
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
    /// Add, list, delete users and change passwords (brokers with --auth).
    #[command(subcommand)]
    User(security::UserCommand),
    /// Create, list and revoke API tokens.
    #[command(subcommand)]
    Token(security::TokenCommand),
    /// Grant, list and remove permission rules.
    #[command(subcommand)]
    Acl(security::AclCommand),
    /// The broker's headline figures: throughput, connections, disk, top lagging groups.
    Stats(stats::StatsArgs),
}

/// Runs one command against the broker.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = cli.target()?;
    match cli.command {
        Command::Topic(command) => topic::run(&connect(&target).await?, command).await,
        Command::Publish(args) => publish::run(&connect(&target).await?, args).await,
        Command::Group(command) => group::run(&connect(&target).await?, command).await,
        Command::Consume(args) => consume::run(&target, args).await,
        Command::Bench(args) => bench::run(&target, args).await,
        Command::User(command) => security::user(&connect(&target).await?, command).await,
        Command::Token(command) => security::token(&connect(&target).await?, command).await,
        Command::Acl(command) => security::acl(&connect(&target).await?, command).await,
        Command::Stats(args) => stats::run(&connect(&target).await?, args).await,
    }
}

async fn connect(target: &Target) -> anyhow::Result<Client> {
    connect_with(target, ConnectOptions::default()).await
}

/// Connects to `target` with `options` and the target's TLS settings.
async fn connect_with(target: &Target, options: ConnectOptions) -> anyhow::Result<Client> {
    let options = ConnectOptions {
        tls: target.tls.clone(),
        credentials: target.credentials.clone(),
        ..options
    };
    Client::connect_with(target.addr.as_str(), options)
        .await
        .map_err(|err| anyhow::anyhow!("cannot connect to {}: {err}", target.addr))
}
