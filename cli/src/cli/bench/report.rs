//! The bench's results: a table for people, one JSON object for scripts.

use std::io::Write;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Throughput of one side of a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Throughput {
    pub msgs_per_sec: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub mb_per_sec: f64,
}

impl Throughput {
    pub fn new(messages: u64, size: usize, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let msgs_per_sec = messages as f64 / secs;
        Throughput {
            msgs_per_sec,
            mb_per_sec: msgs_per_sec * size as f64 / 1e6,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    /// `None` for an empty histogram.
    pub fn of(histogram: &Histogram<u64>) -> Option<Self> {
        (!histogram.is_empty()).then(|| Percentiles {
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        })
    }
}

/// A latency histogram in microseconds, from 1 µs to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone, Serialize)]
pub struct Latencies {
    pub confirm: Option<Percentiles>,
    pub delivery: Option<Percentiles>,
}

/// The machine a run used.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_mb: u64,
    pub kernel: String,
}

impl Machine {
    pub fn this() -> Self {
        let memory_kb = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                let line = info
                    .lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .to_string();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mb: memory_kb / 1024,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
                |_| std::env::consts::OS.to_string(),
                |k| k.trim().to_string(),
            ),
        }
    }
}

/// What the idle scenario found: the broker's cost of connections that wait.
#[derive(Debug, Clone, Serialize)]
pub struct Idle {
    pub connections: usize,
    /// `SSE streams` or `long-polls`.
    pub way: &'static str,
    /// How long opening them all took.
    pub open_ms: u64,
    pub hold_ms: u64,
    /// The broker's CPU time over the hold, as a share of one core.
    pub broker_cpu_percent: f64,
    pub rss_before_mb: f64,
    pub rss_open_mb: f64,
    /// The broker's resident memory growth divided by the connections.
    pub bytes_per_connection: u64,
    /// Whose `/proc` entry the figures come from.
    pub measured: String,
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "machine: {} cores, {} MiB memory, kernel {}",
            self.cores, self.memory_mb, self.kernel
        )
    }
}

/// Everything a run reports. The field order is the JSON's.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// The way in of the timed side: `tcp`, `http`, `websocket` or `sse`.
    pub via: &'static str,
    pub messages: u64,
    pub size: usize,
    pub producers: usize,
    pub consumers: usize,
    pub fsync: String,
    pub publish: Option<Throughput>,
    pub consume: Option<Throughput>,
    pub latency_us: Latencies,
    pub partitions: u32,
    pub batch: usize,
    pub rate: u64,
    pub groups: usize,
    pub mode: &'static str,
    pub topic: String,
    pub verified: bool,
    /// The producers' codec and what filled the payloads.
    pub compression: &'static str,
    pub payload: &'static str,
    /// What one record took, when the run published.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_per_record: Option<BytesPerRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Idle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<super::connect::Connect>,
    pub machine: Machine,
}

/// Bytes one record took: its payload, its share of the batches producers sent (record
/// encoding, batch headers, compression), and its share of what the broker stores (also
/// chunk checksums and producer tags).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BytesPerRecord {
    pub payload: usize,
    /// `None` when publishing went over HTTP.
    pub wire: Option<f64>,
    pub disk: f64,
}

impl Report {
    pub fn print_json(&self, out: &mut impl Write) -> anyhow::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        writeln!(out)?;
        Ok(())
    }

    pub fn print_table(&self, out: &mut impl Write) -> std::io::Result<()> {
        if let Some(idle) = &self.idle {
            return self.print_idle(idle, out);
        }
        if let Some(connect) = &self.connect {
            return self.print_connect(connect, out);
        }
        writeln!(
            out,
            "scenario {}  via {}  topic {}  mode {}",
            self.scenario, self.via, self.topic, self.mode
        )?;
        writeln!(
            out,
            "settings: {} messages of {} B, {} producer(s), {} consumer(s), {} partition(s), batch {}, rate {}, groups {}, fsync {}, payload {}, compression {}",
            self.messages,
            self.size,
            self.producers,
            self.consumers,
            self.partitions,
            self.batch,
            if self.rate == 0 { "unlimited".to_string() } else { format!("{}/s", self.rate) },
            self.groups,
            self.fsync,
            self.payload,
            self.compression
        )?;
        writeln!(out, "{}", self.machine)?;
        writeln!(out, "verified: every message delivered exactly once")?;
        writeln!(out)?;
        writeln!(out, "{:<10} {:>14} {:>10}", "", "msgs/s", "MB/s")?;
        for (name, t) in [("publish", self.publish), ("consume", self.consume)] {
            if let Some(t) = t {
                writeln!(
                    out,
                    "{:<10} {:>14.0} {:>10.1}",
                    name, t.msgs_per_sec, t.mb_per_sec
                )?;
            }
        }
        if let Some(b) = self.bytes_per_record {
            let wire = b.wire.map_or("-".to_string(), |w| format!("{w:.1}"));
            writeln!(
                out,
                "bytes/record: payload {}, wire {wire}, disk {:.1}",
                b.payload, b.disk
            )?;
        }
        writeln!(out)?;
        writeln!(
            out,
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (µs)", "p50", "p90", "p99", "p99.9", "max"
        )?;
        let lat = &self.latency_us;
        for (name, p) in [
            ("publish→confirm", lat.confirm),
            ("publish→delivery", lat.delivery),
        ] {
            if let Some(p) = p {
                writeln!(
                    out,
                    "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    name, p.p50, p.p90, p.p99, p.p999, p.max
                )?;
            }
        }
        Ok(())
    }

    fn print_connect(
        &self,
        connect: &super::connect::Connect,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        writeln!(out, "scenario connect  via tcp")?;
        writeln!(
            out,
            "settings: {} connections by {} worker(s), login {}, tls {}",
            connect.connections,
            connect.workers,
            connect.login,
            if connect.tls { "on" } else { "off" }
        )?;
        writeln!(out, "{}", self.machine)?;
        writeln!(out)?;
        writeln!(out, "connections/s {:>10.0}", connect.per_second)?;
        let l = &connect.latency_us;
        writeln!(
            out,
            "connect + login + one request, µs: p50 {}  p99 {}  max {}",
            l.p50, l.p99, l.max
        )
    }

    fn print_idle(&self, idle: &Idle, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "scenario idle  via {}  topic {}", self.via, self.topic)?;
        writeln!(
            out,
            "settings: {} idle {}, held {} ms (opened in {} ms)",
            idle.connections, idle.way, idle.hold_ms, idle.open_ms
        )?;
        writeln!(out, "{}", self.machine)?;
        writeln!(out, "measured: {}", idle.measured)?;
        writeln!(out)?;
        writeln!(
            out,
            "broker CPU while held   {:>8.2} % of a core",
            idle.broker_cpu_percent
        )?;
        writeln!(
            out,
            "broker RSS              {:>8.1} MB before, {:.1} MB with them open",
            idle.rss_before_mb, idle.rss_open_mb
        )?;
        writeln!(
            out,
            "memory per connection   {:>8} bytes",
            idle.bytes_per_connection
        )
    }
}
