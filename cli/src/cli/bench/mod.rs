//! `herald bench`: the tool behind every performance figure Herald quotes.
//!
//! Scenarios: `publish` (throughput and publish→confirm latency), `consume` (read back what
//! a publish phase wrote, committing as it goes), `pubsub` (publish and consume at once,
//! publish→delivery latency), `fanout` (`--groups N` groups each reading everything).
//! Every run checks on the consuming side that each published message arrived exactly once
//! (a `publish` run reads its messages back after the timed phase); a run that fails the
//! check exits non-zero and reports no figures.

mod pacer;
mod payload;
mod report;
mod verify;
mod workload;

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, ValueEnum};
use herald_client::{Client, Durability, ErrorCode};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use report::{Latencies, Machine, Percentiles, Report, Throughput};
use verify::Expected;
use workload::{ConsumePlan, PublishPlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    Publish,
    Consume,
    Pubsub,
    Fanout,
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
    /// How consumers read.
    #[arg(long, value_enum, default_value = "pull")]
    pub mode: Mode,
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
    /// Payload bytes per message (at least 20).
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
    /// Fail when consumers receive nothing new for this long.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    fn validate(&self) -> anyhow::Result<()> {
        if self.size < payload::HEADER_LEN {
            anyhow::bail!(
                "--size must be at least {} bytes (the bench's sequence header)",
                payload::HEADER_LEN
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
        ] {
            if value == 0 {
                anyhow::bail!("{name} must be at least 1");
            }
        }
        Ok(())
    }
}

pub async fn run(broker: &str, args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let target = Target::start(broker, &args).await?;
    let result = Bench::new(&args, target.addr()).run().await;
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
            let broker = herald_broker::Broker::start(config).await?;
            let addr = broker.local_addr().to_string();
            Ok(Target::Embedded {
                broker,
                addr,
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
    addr: String,
    /// Names this run's groups, so a run never resumes another run's committed position.
    run_id: String,
    topic: String,
    expected: Expected,
    bars: MultiProgress,
}

impl<'a> Bench<'a> {
    fn new(args: &'a BenchArgs, addr: &str) -> Self {
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
            addr: addr.to_string(),
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
            addr: self.addr.clone(),
            topic: self.topic.clone(),
            expected: self.expected,
            size: self.args.size,
            batch: self.args.batch,
            rate: self.args.rate,
        }
    }

    fn consume_plan(&self, group: String, measure_delivery: bool) -> ConsumePlan {
        ConsumePlan {
            addr: self.addr.clone(),
            topic: self.topic.clone(),
            group,
            consumers: self.args.consumers,
            expected: self.expected,
            max_messages: self.args.prefetch,
            stall_timeout: Duration::from_millis(self.args.timeout_ms),
            measure_delivery,
            push: self.args.mode == Mode::Push,
        }
    }

    fn group(&self, n: usize) -> String {
        format!("bench-{}-g{n}", self.run_id)
    }

    async fn run(&self) -> anyhow::Result<Report> {
        let client = workload::connect(&self.addr).await?;
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
            Scenario::Publish => {
                self.publish(&mut report).await?;
                // Not timed: read everything back, so a fast wrong run is a failure.
                let plan = ConsumePlan {
                    push: false,
                    ..self.consume_plan(self.group(0), false)
                };
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
                    workload::consume(&self.consume_plan(self.group(0), false), &bar).await?;
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
                let delivery = self.args.scenario == Scenario::Pubsub;
                let bar = self.bar("consumed", self.args.messages * groups as u64);
                let consumers: Vec<_> = (0..groups)
                    .map(|g| {
                        let (plan, bar) = (self.consume_plan(self.group(g), delivery), bar.clone());
                        tokio::spawn(async move { workload::consume(&plan, &bar).await })
                    })
                    .collect();
                self.publish(&mut report).await?;
                let mut slowest = Duration::ZERO;
                let mut latency = report::histogram();
                for consumer in consumers {
                    let consumed = consumer.await??;
                    consumed
                        .verifier
                        .check()
                        .map_err(|m| anyhow::anyhow!("verification failed: {m}"))?;
                    slowest = slowest.max(consumed.elapsed);
                    latency.add(&consumed.delivery)?;
                }
                bar.finish();
                let deliveries = self.args.messages * groups as u64;
                report.consume = Some(Throughput::new(deliveries, self.args.size, slowest));
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
        report.fsync = match published.durability {
            Some(Durability::Synced) => "confirms synced",
            Some(Durability::Written) => "confirms written",
            Some(Durability::Buffered) | None => "confirms buffered",
        }
        .to_string();
        Ok(())
    }

    fn empty_report(&self) -> Report {
        let a = self.args;
        Report {
            scenario: match a.scenario {
                Scenario::Publish => "publish",
                Scenario::Consume => "consume",
                Scenario::Pubsub => "pubsub",
                Scenario::Fanout => "fanout",
            },
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
            mode: match a.mode {
                Mode::Pull => "pull",
                Mode::Push => "push",
            },
            topic: self.topic.clone(),
            verified: false,
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
