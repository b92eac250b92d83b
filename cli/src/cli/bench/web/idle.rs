//! `--scenario idle`: `--connections` open SSE streams (`--via sse`) or HTTP long-polls
//! (`--via http`) on a topic nobody publishes to, held for `--hold-ms`, and what they cost
//! the broker: its CPU time over the hold and its resident memory per connection.
//!
//! The broker's figures come from `/proc` of its process: found by the HTTP port it
//! listens on (or `--broker-pid`), or this very process for `--embedded` (then the
//! figures include the bench's own side of every connection, and the report says so).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{EventReader, Http};
use crate::cli::bench::report::Idle;

/// What an idle run measures.
pub struct IdlePlan {
    pub http: String,
    pub topic: String,
    pub connections: usize,
    pub hold: Duration,
    pub long_poll: bool,
    /// The broker's process; `None` finds it by the HTTP port.
    pub pid: Option<u32>,
    /// The broker runs in this process (`--embedded`).
    pub embedded: bool,
}

/// Connections opened at once while setting up.
const OPENING: usize = 256;
/// Wait after the last connection opened, so the broker has seen every request.
const SETTLE: Duration = Duration::from_secs(1);
/// How long one long-poll waits: the gateway's longest.
const LONG_POLL_MS: u64 = 60_000;

pub async fn run(plan: &IdlePlan) -> anyhow::Result<Idle> {
    raise_open_files_limit();
    let (pid, measured) = match (plan.pid, plan.embedded) {
        (Some(pid), _) => (pid, format!("broker process {pid} (--broker-pid)")),
        (None, true) => (
            std::process::id(),
            "this process: the embedded broker and the bench's own connections".to_string(),
        ),
        (None, false) => {
            let pid = listener_pid(&plan.http)?;
            (pid, format!("broker process {pid}"))
        }
    };
    let rss_before = rss_bytes(pid)?;
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (failed_tx, mut failed) = mpsc::unbounded_channel::<anyhow::Error>();
    let started = Instant::now();
    let mut opening = futures::stream::iter(0..plan.connections)
        .map(|_| open(plan))
        .buffer_unordered(OPENING);
    let mut opened = 0;
    while let Some(connection) = opening.next().await {
        let connection = connection.map_err(|e| {
            anyhow::anyhow!("after {opened} connections opened, another failed: {e}")
        })?;
        opened += 1;
        let (stop, failed) = (stop.clone(), failed_tx.clone());
        tasks.spawn(async move {
            if let Err(err) = connection.hold(stop).await {
                let _ = failed.send(err);
            }
        });
    }
    let open_ms = started.elapsed().as_millis() as u64;
    tokio::time::sleep(SETTLE).await;
    let rss_open = rss_bytes(pid)?;
    let cpu_before = cpu_ticks(pid)?;
    let held = Instant::now();
    let failure = tokio::select! {
        _ = tokio::time::sleep(plan.hold) => None,
        err = failed.recv() => err,
    };
    let cpu = cpu_ticks(pid)?.saturating_sub(cpu_before);
    let hold = held.elapsed();
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    if let Some(err) = failure.or_else(|| failed.try_recv().ok()) {
        return Err(err.context("an idle connection failed while held"));
    }
    let ticks_per_sec = clock_ticks_per_sec();
    Ok(Idle {
        connections: plan.connections,
        way: if plan.long_poll {
            "long-polls"
        } else {
            "SSE streams"
        },
        open_ms,
        hold_ms: hold.as_millis() as u64,
        broker_cpu_percent: cpu as f64 / ticks_per_sec / hold.as_secs_f64() * 100.0,
        rss_before_mb: rss_before as f64 / 1e6,
        rss_open_mb: rss_open as f64 / 1e6,
        bytes_per_connection: rss_open.saturating_sub(rss_before) / plan.connections as u64,
        measured,
    })
}

/// One open connection and what it waits on.
enum Held {
    Stream(Http, Box<EventReader>),
    Poll(Http, String),
}

async fn open(plan: &IdlePlan) -> anyhow::Result<Held> {
    let mut http = Http::connect(&plan.http).await?;
    if plan.long_poll {
        let info = http
            .call("GET", &format!("/v1/topics/{}", plan.topic), Bytes::new())
            .await?;
        let next = next_offset(&info)?;
        let path = format!(
            "/v1/topics/{}/partitions/0/records?offset={next}&wait_ms={LONG_POLL_MS}",
            plan.topic
        );
        return Ok(Held::Poll(http, path));
    }
    let path = format!("/v1/topics/{}/events?from=latest", plan.topic);
    let events = EventReader::open(&mut http, &path).await?;
    Ok(Held::Stream(http, Box::new(events)))
}

impl Held {
    /// Waits on the connection until `stop`; anything delivered is an error (nobody
    /// publishes to an idle run's topic).
    async fn hold(self, stop: CancellationToken) -> anyhow::Result<()> {
        match self {
            Held::Stream(_http, mut events) => {
                let event = tokio::select! {
                    event = events.next() => event?,
                    _ = stop.cancelled() => return Ok(()),
                };
                match event {
                    Some(event) => {
                        anyhow::bail!(
                            "an idle stream received a {} event: {}",
                            event.name(),
                            String::from_utf8_lossy(&event.data)
                        )
                    }
                    None => anyhow::bail!("the broker ended an idle stream"),
                }
            }
            Held::Poll(mut http, path) => loop {
                let answer = tokio::select! {
                    answer = http.call("GET", &path, Bytes::new()) => answer?,
                    _ = stop.cancelled() => return Ok(()),
                };
                let answer: serde_json::Value = serde_json::from_slice(&answer)?;
                if answer["records"].as_array().is_some_and(|r| !r.is_empty()) {
                    anyhow::bail!("an idle long-poll received records");
                }
            },
        }
    }
}

/// Partition 0's next offset from `GET /v1/topics/{topic}`.
fn next_offset(info: &[u8]) -> anyhow::Result<u64> {
    let info: serde_json::Value = serde_json::from_slice(info)?;
    info["partitions"][0]["next_offset"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no next_offset for partition 0 in {info}"))
}

/// The process holding the listening socket of `addr`'s port, from `/proc/net/tcp*` and
/// each process's descriptors.
fn listener_pid(addr: &str) -> anyhow::Result<u32> {
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no port in {addr}"))?;
    let not_found = || {
        anyhow::anyhow!(
            "cannot find the process listening on port {port} (not on this machine, or \
             not ours to read); pass --broker-pid"
        )
    };
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return Err(not_found());
    }
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Ok(pid);
                }
            }
        }
    }
    Err(not_found())
}

fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| anyhow::anyhow!("cannot read the broker's memory (process {pid}): {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| anyhow::anyhow!("cannot read the broker's CPU time (process {pid}): {e}"))?;
    // The command name may hold spaces; the fields after it are space-separated.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; the first after the name is 3.
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse()?)
    };
    Ok(field(11)? + field(12)?)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf reads a constant of the system and takes no pointers.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Thousands of connections need thousands of descriptors: the soft limit goes up to the
/// hard one (a failure leaves it as it was; opening then fails with a clear error).
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls get a pointer to a valid rlimit for their duration only.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
