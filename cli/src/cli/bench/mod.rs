//! `herald bench`: the tool behind every performance figure Herald quotes.
//!
//! Scenarios: `publish` (throughput and publish→confirm latency), `consume` (read back what
//! a publish phase wrote, committing as it goes), `pubsub` (publish and consume at once,
//! publish→delivery latency), `fanout` (`--groups N` groups each reading everything), and
//! `idle` (`--connections N` open SSE streams or long-polls with nothing to deliver, and
//! what they cost the broker).
//! Every run checks on the consuming side that each published message arrived exactly once
//! (a `publish` run reads its messages back after the timed phase); a run that fails the
//! check exits non-zero and reports no figures.
//!
//! `--via` picks the way in the timed side takes: the TCP protocol with the Rust client
//! (`tcp`), or the web front door: `http` (publishing by POST; long-polls for `idle`),
//! `websocket` (push consumers that ack) or `sse` (one event stream per group). Whatever
//! side is not timed (filling the topic, reading it back to verify) goes over TCP.

mod connect;
mod pacer;
mod payload;
mod report;
mod verify;
mod web;
mod workload;

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use herald_client::{Client, Codec, Durability, ErrorCode};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use payload::Filler;
use report::{BytesPerRecord, Latencies, Machine, Percentiles, Report, Throughput};
use verify::Expected;
use workload::{ConsumePlan, ConsumeVia, PublishPlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Publish,
    Consume,
    Pubsub,
    Fanout,
    Idle,
    /// Connections set up per second (`--connections` in all, by `--producers` workers),
    /// with the login the CLI's credentials ask for.
    Connect,
}

/// The way in the timed side of a run takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    Tcp,
    Http,
    Websocket,
    Sse,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Pull,
    Push,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fsync {
    Always,
    Interval,
    Never,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Start an in-process broker on a temporary data directory instead of using --broker.
    #[arg(long)]
    pub embedded: bool,
    /// Durability policy of the embedded broker.
    #[arg(long, value_enum, default_value = "always")]
    pub fsync: Fsync,
    /// What to measure.
    #[arg(long, value_enum, default_value = "publish")]
    pub scenario: Scenario,
    /// How consumers read (`--via websocket` consumes as a push group).
    #[arg(long, value_enum, default_value = "pull")]
    pub mode: Mode,
    /// The way in: tcp (the Rust client), or the web front door: http (publish; idle
    /// long-polls), websocket (push consumers), sse (event streams, one per group).
    #[arg(long, value_enum, default_value = "tcp")]
    pub via: Via,
    /// The broker's HTTP gateway, for --via other than tcp (ignored with --embedded).
    #[arg(long, default_value = "127.0.0.1:7421")]
    pub http: String,
    /// Producers, each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumers per group, each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Partitions of the bench topic.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,
    /// Messages published in all.
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Payload bytes per message (at least 40: the bench's header, as text).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Most records per published batch.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Messages per second over all producers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Most records a consumer takes per fetch (pull) or holds unacked (push).
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u32,
    /// Topic to use; by default a new one per run.
    #[arg(long)]
    pub topic: Option<String>,
    /// Groups for the fanout scenario.
    #[arg(long, default_value_t = 4)]
    pub groups: usize,
    /// Open connections for the idle scenario.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// How long the idle scenario holds its connections open while measuring.
    #[arg(long, default_value_t = 10_000)]
    pub hold_ms: u64,
    /// The broker's process id for the idle scenario's CPU and memory figures; by default
    /// the process listening on the --http port of this machine.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Fail when consumers receive nothing new for this long.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Compress each published batch: none, lz4 or zstd (over tcp).
    #[arg(long, value_name = "CODEC", default_value = "none")]
    pub compression: Codec,
    /// What fills each payload after the bench's header: fill ('.', as before), random
    /// (letters and digits: hardly compressible), json (realistic, compressible events).
    #[arg(long, value_enum, default_value = "fill")]
    pub payload: Filler,
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.size < payload::HEADER_LEN {
            anyhow::bail!(
                "--size must be at least {} bytes (the bench's sequence header)",
                payload::HEADER_LEN
            );
        }
        if self.payload == Filler::Json && self.size < payload::JSON_MIN_LEN {
            anyhow::bail!(
                "--payload json needs --size of at least {} bytes",
                payload::JSON_MIN_LEN
            );
        }
        if self.compression != Codec::None && self.via == Via::Http {
            anyhow::bail!(
                "--compression applies to the Rust client's producers (--via tcp); the HTTP \
                 gateway takes records as JSON"
            );
        }
        for (name, value) in [
            ("--producers", self.producers as u64),
            ("--consumers", self.consumers as u64),
            ("--partitions", u64::from(self.partitions)),
            ("--messages", self.messages),
            ("--groups", self.groups as u64),
            ("--batch", self.batch as u64),
            ("--prefetch", u64::from(self.prefetch)),
            ("--connections", self.connections as u64),
        ] {
            if value == 0 {
                anyhow::bail!("{name} must be at least 1");
            }
        }
        let supported = match self.scenario {
            Scenario::Publish => matches!(self.via, Via::Tcp | Via::Http),
            Scenario::Consume | Scenario::Pubsub | Scenario::Fanout => {
                matches!(self.via, Via::Tcp | Via::Websocket | Via::Sse)
            }
            Scenario::Idle => matches!(self.via, Via::Http | Via::Sse),
            Scenario::Connect => self.via == Via::Tcp,
        };
        if !supported {
            anyhow::bail!(
                "--scenario {} does not run --via {}: publish runs via tcp or http; consume, \
                 pubsub and fanout via tcp, websocket or sse; idle via sse or http (long-polls); \
                 connect via tcp",
                self.scenario_name(),
                self.via_name()
            );
        }
        if self.scenario == Scenario::Idle && !cfg!(target_os = "linux") {
            anyhow::bail!("--scenario idle reads the broker's figures from /proc: Linux only");
        }
        Ok(())
    }

    fn scenario_name(&self) -> &'static str {
        match self.scenario {
            Scenario::Publish => "publish",
            Scenario::Consume => "consume",
            Scenario::Pubsub => "pubsub",
            Scenario::Fanout => "fanout",
            Scenario::Idle => "idle",
            Scenario::Connect => "connect",
        }
    }

    fn via_name(&self) -> &'static str {
        match self.via {
            Via::Tcp => "tcp",
            Via::Http => "http",
            Via::Websocket => "websocket",
            Via::Sse => "sse",
        }
    }

    /// Whether consumers are push-group members: `--mode push`, or WebSockets.
    fn push(&self) -> bool {
        self.mode == Mode::Push || self.via == Via::Websocket
    }
}

pub async fn run(broker: &super::Target, args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    if args.embedded && broker.tls.is_some() {
        anyhow::bail!("--embedded starts a broker without TLS; measure TLS with --broker");
    }
    let target = Target::start(&broker.addr, &args).await?;
    let broker = super::Target {
        addr: target.addr().to_string(),
        ..broker.clone()
    };
    let result = Bench::new(&args, broker, target.http(&args)).run().await;
    let fsync = result
        .as_ref()
        .ok()
        .map(|report| target.fsync_name(&args, &report.fsync));
    target.stop().await?;
    let mut report = result?;
    report.fsync = fsync.unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if args.json {
        report.print_json(&mut out)
    } else {
        Ok(report.print_table(&mut out)?)
    }
}

/// The broker a run measures.
enum Target {
    Remote(String),
    #[cfg(feature = "embedded-broker")]
    Embedded {
        broker: herald_broker::Broker,
        addr: String,
        http: Option<String>,
        _dir: tempfile::TempDir,
    },
}

impl Target {
    async fn start(broker: &str, args: &BenchArgs) -> anyhow::Result<Target> {
        if !args.embedded {
            return Ok(Target::Remote(broker.to_string()));
        }
        #[cfg(feature = "embedded-broker")]
        {
            let dir = tempfile::tempdir()?;
            let mut config = herald_broker::Config::ephemeral(dir.path().join("data"));
            config.fsync = match args.fsync {
                Fsync::Always => herald_broker::Fsync::Always,
                Fsync::Interval => herald_broker::Fsync::Interval,
                Fsync::Never => herald_broker::Fsync::Never,
            };
            if args.via != Via::Tcp {
                config.http_listen = herald_broker::config::Listen::At(std::net::SocketAddr::from(
                    ([127, 0, 0, 1], 0),
                ));
            }
            if args.scenario == Scenario::Idle {
                // Room for every idle connection and the bench's own.
                config.max_connections = config.max_connections.max(args.connections + 64);
            }
            let broker = herald_broker::Broker::start(config).await?;
            let addr = broker.local_addr().to_string();
            let http = broker.http_addr().map(|a| a.to_string());
            Ok(Target::Embedded {
                broker,
                addr,
                http,
                _dir: dir,
            })
        }
        #[cfg(not(feature = "embedded-broker"))]
        anyhow::bail!("this herald was built without the embedded-broker feature; use --broker")
    }

    fn addr(&self) -> &str {
        match self {
            Target::Remote(addr) => addr,
            #[cfg(feature = "embedded-broker")]
            Target::Embedded { addr, .. } => addr,
        }
    }

    /// The HTTP gateway: the embedded broker's, or `--http`.
    fn http(&self, args: &BenchArgs) -> String {
        match self {
            #[cfg(feature = "embedded-broker")]
            Target::Embedded {
                http: Some(http), ..
            } => http.clone(),
            _ => args.http.clone(),
        }
    }

    /// The fsync policy to report: the embedded broker's, or what a remote one's confirms said.
    fn fsync_name(&self, args: &BenchArgs, observed: &str) -> String {
        match self {
            Target::Remote(_) if observed.is_empty() => "remote broker".to_string(),
            Target::Remote(_) => format!("remote broker ({observed})"),
            #[cfg(feature = "embedded-broker")]
            Target::Embedded { .. } => format!("{:?}", args.fsync).to_lowercase(),
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        match self {
            Target::Remote(_) => Ok(()),
            #[cfg(feature = "embedded-broker")]
            Target::Embedded { broker, .. } => Ok(broker.shutdown().await?),
        }
    }
}

struct Bench<'a> {
    args: &'a BenchArgs,
    broker: super::Target,
    /// The broker's HTTP gateway, for `--via` other than tcp.
    http: String,
    /// Names this run's groups, so a run never resumes another run's committed position.
    run_id: String,
    topic: String,
    expected: Expected,
    bars: MultiProgress,
}

impl<'a> Bench<'a> {
    fn new(args: &'a BenchArgs, broker: super::Target, http: String) -> Self {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let run_id = format!("{}-{stamp}", std::process::id());
        let topic = args
            .topic
            .clone()
            .unwrap_or_else(|| format!("bench-{run_id}"));
        let target = if std::io::stdout().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Bench {
            args,
            broker,
            http,
            run_id,
            topic,
            expected: Expected {
                producers: args.producers,
                messages: args.messages,
            },
            bars: MultiProgress::with_draw_target(target),
        }
    }

    fn bar(&self, label: &'static str, total: u64) -> ProgressBar {
        let style = ProgressStyle::with_template("{prefix:>10} [{bar:40}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        self.bars
            .add(ProgressBar::new(total).with_style(style).with_prefix(label))
    }

    fn publish_plan(&self) -> PublishPlan {
        PublishPlan {
            broker: self.broker.clone(),
            topic: self.topic.clone(),
            expected: self.expected,
            size: self.args.size,
            batch: self.args.batch,
            rate: self.args.rate,
            http: (self.args.via == Via::Http).then(|| self.http.clone()),
            filler: self.args.payload,
            compression: self.args.compression,
        }
    }

    /// How a group's consumers read. Reading back to verify (`timed` false) always goes
    /// over TCP.
    fn consume_plan(
        &self,
        group: String,
        delivery: Option<Arc<Mutex<Histogram<u64>>>>,
        timed: bool,
    ) -> ConsumePlan {
        let via = match self.args.via {
            Via::Websocket if timed => ConsumeVia::WebSocket(self.http.clone()),
            Via::Sse if timed => ConsumeVia::Sse(self.http.clone()),
            _ => ConsumeVia::Tcp,
        };
        ConsumePlan {
            broker: self.broker.clone(),
            topic: self.topic.clone(),
            group,
            expected: self.expected,
            max_messages: self.args.prefetch,
            stall_timeout: Duration::from_millis(self.args.timeout_ms),
            delivery,
            push: timed && self.args.push(),
            consumers: if matches!(via, ConsumeVia::Sse(_)) {
                1
            } else {
                self.args.consumers
            },
            via,
            ready: None,
        }
    }

    fn group(&self, n: usize) -> String {
        format!("bench-{}-g{n}", self.run_id)
    }

    async fn run(&self) -> anyhow::Result<Report> {
        let client = workload::connect(&self.broker).await?;
        let stored = stored_records(&client, &self.topic).await?;
        let reuse = self.args.scenario == Scenario::Consume && stored > 0;
        if !reuse {
            if stored > 0 {
                anyhow::bail!(
                    "topic {} already holds {stored} records; use a new --topic",
                    self.topic
                );
            }
            create_topic(&client, &self.topic, self.args.partitions).await?;
        }
        let mut report = self.empty_report();
        match self.args.scenario {
            Scenario::Idle => {
                report.idle = Some(self.idle().await?);
                return Ok(report);
            }
            Scenario::Connect => {
                let (connections, workers) = (self.args.connections, self.args.producers);
                report.connect = Some(connect::run(&self.broker, connections, workers).await?);
                return Ok(report);
            }
            Scenario::Publish => {
                self.publish(&mut report).await?;
                // Not timed: read everything back, so a fast wrong run is a failure.
                let plan = self.consume_plan(self.group(0), None, false);
                let check = workload::consume(&plan, &ProgressBar::hidden()).await?;
                check
                    .verifier
                    .check()
                    .map_err(|m| anyhow::anyhow!("verification failed: {m}"))?;
            }
            Scenario::Consume => {
                if !reuse {
                    self.publish(&mut report).await?;
                }
                let bar = self.bar("consumed", self.args.messages);
                let consumed =
                    workload::consume(&self.consume_plan(self.group(0), None, true), &bar).await?;
                bar.finish();
                consumed
                    .verifier
                    .check()
                    .map_err(|m| anyhow::anyhow!("verification failed: {m}"))?;
                report.consume = Some(Throughput::new(
                    self.args.messages,
                    self.args.size,
                    consumed.elapsed,
                ));
            }
            Scenario::Pubsub | Scenario::Fanout => {
                let groups = if self.args.scenario == Scenario::Fanout {
                    self.args.groups
                } else {
                    1
                };
                let bar = self.bar("consumed", self.args.messages * groups as u64);
                let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
                let mut members = 0;
                let latency = Arc::new(Mutex::new(report::histogram()));
                let consumers: Vec<_> = (0..groups)
                    .map(|g| {
                        let plan = ConsumePlan {
                            ready: Some(ready_tx.clone()),
                            ..self.consume_plan(self.group(g), Some(Arc::clone(&latency)), true)
                        };
                        members += plan.consumers;
                        let bar = bar.clone();
                        tokio::spawn(async move { workload::consume(&plan, &bar).await })
                    })
                    .collect();
                drop(ready_tx);
                // Publishing starts once every consumer is reading, so that latency is not
                // the time it took to connect.
                let all_ready = async {
                    for _ in 0..members {
                        if ready.recv().await.is_none() {
                            return false;
                        }
                    }
                    true
                };
                if !tokio::time::timeout(Duration::from_secs(60), all_ready)
                    .await
                    .unwrap_or(false)
                {
                    for consumer in consumers {
                        consumer.await??;
                    }
                    anyhow::bail!("the consumers did not all start reading within 60 s");
                }
                self.publish(&mut report).await?;
                let mut slowest = Duration::ZERO;
                for consumer in consumers {
                    let consumed = consumer.await??;
                    consumed
                        .verifier
                        .check()
                        .map_err(|m| anyhow::anyhow!("verification failed: {m}"))?;
                    slowest = slowest.max(consumed.elapsed);
                }
                bar.finish();
                let deliveries = self.args.messages * groups as u64;
                report.consume = Some(Throughput::new(deliveries, self.args.size, slowest));
                let latency = latency.lock().unwrap_or_else(|e| e.into_inner());
                report.latency_us.delivery = Percentiles::of(&latency);
            }
        }
        // Every expected message was seen once; the topic must hold nothing more.
        let stored = stored_records(&client, &self.topic).await?;
        if stored != self.args.messages {
            anyhow::bail!(
                "verification failed: topic {} holds {stored} records, the run published {}",
                self.topic,
                self.args.messages
            );
        }
        report.verified = true;
        Ok(report)
    }

    #[cfg(target_os = "linux")]
    async fn idle(&self) -> anyhow::Result<report::Idle> {
        let plan = web::idle::IdlePlan {
            http: self.http.clone(),
            topic: self.topic.clone(),
            connections: self.args.connections,
            hold: Duration::from_millis(self.args.hold_ms),
            long_poll: self.args.via == Via::Http,
            pid: self.args.broker_pid,
            embedded: self.args.embedded,
        };
        web::idle::run(&plan).await
    }

    #[cfg(not(target_os = "linux"))]
    async fn idle(&self) -> anyhow::Result<report::Idle> {
        anyhow::bail!("--scenario idle reads the broker's figures from /proc: Linux only")
    }

    /// Runs the producers and puts their figures in the report.
    async fn publish(&self, report: &mut Report) -> anyhow::Result<()> {
        let bar = self.bar("published", self.args.messages);
        let published = workload::publish(&self.publish_plan(), &bar).await?;
        bar.finish();
        report.publish = Some(Throughput::new(
            self.args.messages,
            self.args.size,
            published.elapsed,
        ));
        report.latency_us.confirm = Percentiles::of(&published.confirm);
        report.bytes_per_record = Some(self.bytes_per_record(&published).await?);
        report.fsync = match published.durability {
            Some(Durability::Synced) => "confirms synced",
            Some(Durability::Written) => "confirms written",
            Some(Durability::Buffered) | None => "confirms buffered",
        }
        .to_string();
        Ok(())
    }

    /// What a record cost on the wire (its share of the batches sent) and on disk (its
    /// share of what the topic's partitions store, asked of the broker after publishing).
    async fn bytes_per_record(
        &self,
        published: &workload::Published,
    ) -> anyhow::Result<BytesPerRecord> {
        let client = workload::connect(&self.broker).await?;
        let info = client.describe_topic(&self.topic).await?;
        let stored: u64 = info.partitions.iter().map(|p| p.bytes).sum();
        let records = self.args.messages as f64;
        Ok(BytesPerRecord {
            payload: self.args.size,
            wire: published.batch_bytes.map(|b| b as f64 / records),
            disk: stored as f64 / records,
        })
    }

    fn empty_report(&self) -> Report {
        let a = self.args;
        Report {
            scenario: a.scenario_name(),
            via: a.via_name(),
            messages: a.messages,
            size: a.size,
            producers: a.producers,
            consumers: a.consumers,
            fsync: String::new(),
            publish: None,
            consume: None,
            latency_us: Latencies {
                confirm: None,
                delivery: None,
            },
            partitions: a.partitions,
            batch: a.batch,
            rate: a.rate,
            groups: if a.scenario == Scenario::Fanout {
                a.groups
            } else {
                1
            },
            mode: if a.push() { "push" } else { "pull" },
            topic: self.topic.clone(),
            verified: false,
            compression: a.compression.name(),
            payload: a.payload.name(),
            bytes_per_record: None,
            idle: None,
            connect: None,
            machine: Machine::this(),
        }
    }
}

/// Records held by a topic now; 0 when it does not exist.
async fn stored_records(client: &Client, topic: &str) -> anyhow::Result<u64> {
    match client.describe_topic(topic).await {
        Ok(info) => Ok(info
            .partitions
            .iter()
            .map(|p| p.next_offset - p.first_offset)
            .sum()),
        Err(err) if err.code() == Some(ErrorCode::UnknownTopic) => Ok(0),
        Err(err) => Err(err.into()),
    }
}

async fn create_topic(client: &Client, topic: &str, partitions: u32) -> anyhow::Result<()> {
    match client.create_topic(topic, partitions).await {
        Ok(_) => Ok(()),
        Err(err) if err.code() == Some(ErrorCode::TopicExists) => {
            let existing = client.describe_topic(topic).await?.partitions.len() as u32;
            if existing != partitions {
                anyhow::bail!("topic {topic} exists with {existing} partitions, not {partitions}");
            }
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}
