//! What the broker tells a monitoring system: `GET /metrics` in the Prometheus text format
//! (encoded by `prometheus-client`).
//!
//! Hot paths only bump atomics ([`counters`], the store's histograms in
//! `storage::stats`); everything else is read when a scrape asks: offsets and sizes from
//! each partition log, lag and in-flight counts from the groups, the disk, and the
//! process's own `/proc` entry. A scrape gathers a [`Snapshot`] (asking the groups is
//! async), then encodes it.
//!
//! Label cardinality stays bounded: series are per topic, per partition and per group,
//! never per consumer or record. Past `--metrics-max-topics` topics (by name order), the
//! rest are summed into `topic="_other"` (partition `"_all"`, group `"_all"`).
//!
//! The names, as the README lists them (counters end in `_total`):
//!
//! - per partition: `herald_records_appended_total`, `herald_bytes_appended_total` (since
//!   start), `herald_partition_first_offset`, `herald_partition_next_offset`,
//!   `herald_partition_stored_bytes`;
//! - per group: `herald_group_lag{topic,group,partition}` (next offset minus the committed
//!   offset, or minus the ack floor for push groups), `herald_group_in_flight`,
//!   `herald_group_members` (members, or subscribers), `herald_group_redelivered_total`,
//!   `herald_group_dead_lettered_total`;
//! - edges: `herald_connections{way}`, `herald_sessions_total{way}`,
//!   `herald_session_expiries_total{way}`, `herald_requests_total{way,type,outcome}`,
//!   `herald_authentication_failures_total`;
//! - storage: `herald_storage_append_seconds`, `herald_storage_flush_seconds`,
//!   `herald_storage_index_flush_seconds`, `herald_storage_commit_group_size` (histograms),
//!   `herald_storage_disk_bytes`, `herald_storage_free_disk_bytes`,
//!   `herald_storage_reserve_bytes`, `herald_storage_writer_queue`;
//! - process: `herald_process_resident_memory_bytes`, `herald_process_open_fds`,
//!   `herald_uptime_seconds`, `herald_build_info{version,fsync}`.

pub mod counters;

use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::auth::access::Principal;
use crate::core::Core;
use crate::storage::stats::HistogramSnapshot;

/// The name of the summed series past `--metrics-max-topics`.
pub const OTHER: &str = "_other";

/// One partition's figures.
#[derive(Debug, Clone, Default)]
pub struct PartitionFigures {
    pub topic: String,
    pub partition: String,
    pub appended_records: u64,
    pub appended_bytes: u64,
    pub first_offset: u64,
    pub next_offset: u64,
    pub stored_bytes: u64,
}

/// One group's figures.
#[derive(Debug, Clone, Default)]
pub struct GroupFigures {
    pub topic: String,
    pub group: String,
    pub mode: &'static str,
    /// `(partition, lag)`.
    pub lag: Vec<(String, u64)>,
    pub in_flight: u64,
    pub members: u64,
    pub redelivered: u64,
    pub dead_lettered: u64,
}

/// Everything one scrape reports.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub partitions: Vec<PartitionFigures>,
    pub groups: Vec<GroupFigures>,
    /// `(way, open, opened, expired)`.
    pub connections: Vec<(&'static str, i64, u64, u64)>,
    /// `(way, type, outcome, count)`.
    pub requests: Vec<(&'static str, &'static str, &'static str, u64)>,
    pub authentication_failures: u64,
    pub append_seconds: Option<HistogramSnapshot>,
    pub flush_seconds: Option<HistogramSnapshot>,
    pub index_flush_seconds: Option<HistogramSnapshot>,
    pub commit_group_size: Option<HistogramSnapshot>,
    pub disk_bytes: u64,
    pub free_disk_bytes: u64,
    pub reserve_bytes: u64,
    pub writer_queue: u64,
    pub resident_memory_bytes: u64,
    pub open_fds: u64,
    pub uptime_seconds: f64,
    pub version: &'static str,
    pub fsync: &'static str,
}

/// Reads everything a scrape reports, topics past `max_topics` summed as [`OTHER`].
pub async fn gather(core: &Core, started: Instant, max_topics: usize) -> Snapshot {
    let core = core.acting_for(Principal::Broker);
    let shared = core.shared();
    let mut topics = shared.topics.list();
    topics.sort_by(|a, b| a.name().cmp(b.name()));
    let mut snapshot = Snapshot::default();
    let mut other = PartitionFigures {
        topic: OTHER.into(),
        partition: "_all".into(),
        ..Default::default()
    };
    let mut other_group = GroupFigures {
        topic: OTHER.into(),
        group: "_all".into(),
        mode: "all",
        ..Default::default()
    };
    let mut other_lag = 0;
    for (rank, topic) in topics.iter().enumerate() {
        let kept = rank < max_topics;
        for (p, log) in topic.partitions().iter().enumerate() {
            let figures = PartitionFigures {
                topic: topic.name().to_string(),
                partition: p.to_string(),
                appended_records: log.next_offset(),
                appended_bytes: log.appended_bytes(),
                first_offset: log.first_offset(),
                next_offset: log.next_offset(),
                stored_bytes: log.size_bytes(),
            };
            if kept {
                snapshot.partitions.push(figures);
            } else {
                other.appended_records += figures.appended_records;
                other.appended_bytes += figures.appended_bytes;
                other.stored_bytes += figures.stored_bytes;
            }
        }
        let Ok(groups) = core.list_groups(topic.name()).await else {
            continue; // deleted meanwhile
        };
        for summary in groups {
            let Ok(info) = core.describe_group(topic.name(), &summary.name).await else {
                continue;
            };
            let figures = GroupFigures {
                topic: info.topic.clone(),
                group: info.group.clone(),
                mode: match info.mode {
                    herald_protocol::GroupMode::Pull => "pull",
                    herald_protocol::GroupMode::Push => "push",
                },
                lag: info
                    .partitions
                    .iter()
                    .map(|p| (p.partition.to_string(), p.lag))
                    .collect(),
                in_flight: info.members.iter().map(|m| u64::from(m.in_flight)).sum(),
                members: u64::from(summary.members),
                redelivered: info.redelivered,
                dead_lettered: info.dead_lettered,
            };
            if kept {
                snapshot.groups.push(figures);
            } else {
                other_lag += figures.lag.iter().map(|(_, lag)| lag).sum::<u64>();
                other_group.in_flight += figures.in_flight;
                other_group.members += figures.members;
                other_group.redelivered += figures.redelivered;
                other_group.dead_lettered += figures.dead_lettered;
            }
        }
    }
    if topics.len() > max_topics {
        // First and next offsets do not add up across partitions: only the sums do.
        other.first_offset = 0;
        other.next_offset = 0;
        snapshot.partitions.push(other);
        other_group.lag = vec![("_all".into(), other_lag)];
        snapshot.groups.push(other_group);
    }

    let counters = &shared.counters;
    snapshot.connections = counters
        .connections()
        .into_iter()
        .map(|(way, open, opened, expired)| (way.name(), open, opened, expired))
        .collect();
    snapshot.requests = counters
        .tcp_requests()
        .into_iter()
        .map(|(kind, outcome, n)| ("tcp", kind, outcome, n))
        .chain(
            counters
                .http_requests()
                .into_iter()
                .map(|(route, class, n)| ("http", route, class, n)),
        )
        .collect();
    snapshot.authentication_failures = shared.access.failures();
    let stats = shared.store.stats();
    snapshot.append_seconds = Some(stats.append_seconds.snapshot());
    snapshot.flush_seconds = Some(stats.flush_seconds.snapshot());
    snapshot.index_flush_seconds = Some(stats.index_flush_seconds.snapshot());
    snapshot.commit_group_size = Some(stats.group_size.snapshot());
    let room = shared.store.room();
    snapshot.disk_bytes = room.used();
    snapshot.free_disk_bytes = room.free();
    snapshot.reserve_bytes = room.reserve;
    snapshot.writer_queue = shared.store.writer_queue_depth() as u64;
    let (rss, fds) = process_figures();
    snapshot.resident_memory_bytes = rss;
    snapshot.open_fds = fds;
    snapshot.uptime_seconds = started.elapsed().as_secs_f64();
    snapshot.version = env!("CARGO_PKG_VERSION");
    snapshot.fsync = shared.config.store().fsync.name();
    snapshot
}

/// The process's resident memory and open file descriptors, from `/proc/self` (0 where
/// there is no `/proc`).
fn process_figures() -> (u64, u64) {
    let page = 4096;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count() as u64);
    (rss, fds)
}

/// The broker's headline figures as JSON: what `herald stats` prints and the management
/// page shows (`GET /v1/stats`, and the TCP protocol's `Stats`). Every topic and group,
/// none summed.
///
/// ```text
/// {"version", "fsync", "uptime_ms",
///  "connections": {"tcp", "http", "sse", "websocket"},
///  "disk": {"store_bytes", "free_bytes", "reserve_bytes"},
///  "resident_memory_bytes",
///  "topics": [{"name", "records", "stored_bytes", "appended_bytes",
///              "partitions": [{"partition", "first_offset", "next_offset", "stored_bytes"}]}],
///  "groups": [{"topic", "group", "mode", "members", "in_flight", "lag", "redelivered",
///              "dead_lettered", "partitions": [{"partition", "lag"}]}]}
/// ```
pub async fn stats(core: &Core) -> serde_json::Value {
    use serde_json::json;
    let snapshot = gather(core, core.shared().started, usize::MAX).await;
    let mut topics: Vec<serde_json::Value> = Vec::new();
    let mut current: Option<(String, Vec<&PartitionFigures>)> = None;
    let mut flush = |name: String, parts: Vec<&PartitionFigures>| {
        topics.push(json!({
            "name": name,
            "records": parts.iter().map(|p| p.next_offset - p.first_offset).sum::<u64>(),
            "stored_bytes": parts.iter().map(|p| p.stored_bytes).sum::<u64>(),
            "appended_bytes": parts.iter().map(|p| p.appended_bytes).sum::<u64>(),
            "partitions": parts.iter().map(|p| json!({
                "partition": p.partition.parse::<u32>().unwrap_or(0),
                "first_offset": p.first_offset,
                "next_offset": p.next_offset,
                "stored_bytes": p.stored_bytes,
            })).collect::<Vec<_>>(),
        }));
    };
    for p in &snapshot.partitions {
        match &mut current {
            Some((name, parts)) if *name == p.topic => parts.push(p),
            _ => {
                if let Some((name, parts)) = current.take() {
                    flush(name, parts);
                }
                current = Some((p.topic.clone(), vec![p]));
            }
        }
    }
    if let Some((name, parts)) = current {
        flush(name, parts);
    }
    let groups: Vec<_> = snapshot
        .groups
        .iter()
        .map(|g| {
            json!({
                "topic": g.topic,
                "group": g.group,
                "mode": g.mode,
                "members": g.members,
                "in_flight": g.in_flight,
                "lag": g.lag.iter().map(|(_, lag)| lag).sum::<u64>(),
                "redelivered": g.redelivered,
                "dead_lettered": g.dead_lettered,
                "partitions": g.lag.iter().map(|(p, lag)| json!({
                    "partition": p.parse::<u32>().unwrap_or(0),
                    "lag": lag,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let connections: serde_json::Map<String, serde_json::Value> = snapshot
        .connections
        .iter()
        .map(|(way, open, _, _)| (way.to_string(), json!(open)))
        .collect();
    json!({
        "version": snapshot.version,
        "fsync": snapshot.fsync,
        "uptime_ms": (snapshot.uptime_seconds * 1000.0) as u64,
        "connections": connections,
        "disk": {
            "store_bytes": snapshot.disk_bytes,
            "free_bytes": snapshot.free_disk_bytes,
            "reserve_bytes": snapshot.reserve_bytes,
        },
        "resident_memory_bytes": snapshot.resident_memory_bytes,
        "topics": topics,
        "groups": groups,
    })
}

/// The snapshot in the Prometheus text format.
pub fn encode(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Encoded(snapshot)));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String does not fail");
    text
}

#[derive(Debug)]
struct Encoded(Snapshot);

type Labels = Vec<(&'static str, String)>;

/// Writes one family: its descriptor, then a sample per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    samples: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in samples {
        if labels.is_empty() {
            // A family without labels has its one sample.
            return value.encode(metric);
        }
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    snapshot: &Option<HistogramSnapshot>,
) -> Result<(), std::fmt::Error> {
    let Some(h) = snapshot else { return Ok(()) };
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        h.sum, h.count, &h.buckets, None,
    )
}

impl Collector for Encoded {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let part = |p: &PartitionFigures| {
            vec![
                ("topic", p.topic.clone()),
                ("partition", p.partition.clone()),
            ]
        };
        let counter = MetricType::Counter;
        let gauge_type = MetricType::Gauge;
        family(
            &mut e,
            "herald_records_appended",
            "Records appended to the partition, ever (its next offset).",
            counter,
            s.partitions
                .iter()
                .map(|p| (part(p), ConstCounter::new(p.appended_records))),
        )?;
        family(
            &mut e,
            "herald_bytes_appended",
            "Bytes of record batches appended since the broker started.",
            counter,
            s.partitions
                .iter()
                .map(|p| (part(p), ConstCounter::new(p.appended_bytes))),
        )?;
        family(
            &mut e,
            "herald_partition_first_offset",
            "The first retained offset.",
            gauge_type,
            s.partitions
                .iter()
                .map(|p| (part(p), gauge(p.first_offset))),
        )?;
        family(
            &mut e,
            "herald_partition_next_offset",
            "The next offset to be written.",
            gauge_type,
            s.partitions.iter().map(|p| (part(p), gauge(p.next_offset))),
        )?;
        family(
            &mut e,
            "herald_partition_stored_bytes",
            "Bytes of record batches stored.",
            gauge_type,
            s.partitions
                .iter()
                .map(|p| (part(p), gauge(p.stored_bytes))),
        )?;

        let group = |g: &GroupFigures| {
            vec![
                ("topic", g.topic.clone()),
                ("group", g.group.clone()),
                ("mode", g.mode.to_string()),
            ]
        };
        family(&mut e, "herald_group_lag", "Records not yet consumed: the next offset minus the committed offset (pull) or the ack floor (push).", gauge_type,
            s.groups.iter().flat_map(|g| g.lag.iter().map(move |(p, lag)| {
                (vec![("topic", g.topic.clone()), ("group", g.group.clone()), ("partition", p.clone())], gauge(*lag))
            })))?;
        family(
            &mut e,
            "herald_group_in_flight",
            "Deliveries sent and not yet answered (push groups).",
            gauge_type,
            s.groups.iter().map(|g| (group(g), gauge(g.in_flight))),
        )?;
        family(
            &mut e,
            "herald_group_members",
            "Members (pull) or subscribers (push).",
            gauge_type,
            s.groups.iter().map(|g| (group(g), gauge(g.members))),
        )?;
        family(
            &mut e,
            "herald_group_redelivered",
            "Deliveries made again since the broker started (push groups).",
            counter,
            s.groups
                .iter()
                .map(|g| (group(g), ConstCounter::new(g.redelivered))),
        )?;
        family(
            &mut e,
            "herald_group_dead_lettered",
            "Records dead-lettered since the broker started (push groups).",
            counter,
            s.groups
                .iter()
                .map(|g| (group(g), ConstCounter::new(g.dead_lettered))),
        )?;

        let way = |w: &str| vec![("way", w.to_string())];
        family(
            &mut e,
            "herald_connections",
            "Open connections (TCP, HTTP) and streams (SSE, WebSocket).",
            gauge_type,
            s.connections
                .iter()
                .map(|(w, open, _, _)| (way(w), ConstGauge::new(*open))),
        )?;
        family(
            &mut e,
            "herald_sessions",
            "Connections and streams opened since the broker started.",
            counter,
            s.connections
                .iter()
                .map(|(w, _, opened, _)| (way(w), ConstCounter::new(*opened))),
        )?;
        family(
            &mut e,
            "herald_session_expiries",
            "Sessions ended because the peer was silent for the session timeout.",
            counter,
            s.connections
                .iter()
                .map(|(w, _, _, expired)| (way(w), ConstCounter::new(*expired))),
        )?;
        family(&mut e, "herald_requests", "Requests by way in, type (frame or route) and outcome (ok or the error code; HTTP: the status class).", counter,
            s.requests.iter().map(|(w, kind, outcome, n)| {
                (vec![("way", w.to_string()), ("type", kind.to_string()), ("outcome", outcome.to_string())], ConstCounter::new(*n))
            }))?;
        family(
            &mut e,
            "herald_authentication_failures",
            "Failed logins on every way in.",
            counter,
            [(Labels::new(), ConstCounter::new(s.authentication_failures))],
        )?;

        histogram(
            &mut e,
            "herald_storage_append_seconds",
            "Writing one commit group (or one write in place) into the store, before any flush.",
            &s.append_seconds,
        )?;
        histogram(
            &mut e,
            "herald_storage_flush_seconds",
            "One fdatasync of the segment files a commit wrote (what a confirm under always waits for).",
            &s.flush_seconds,
        )?;
        histogram(
            &mut e,
            "herald_storage_index_flush_seconds",
            "One flush and fdatasync of sled: the index, offsets, acks, groups and topics.",
            &s.index_flush_seconds,
        )?;
        histogram(
            &mut e,
            "herald_storage_commit_group_size",
            "Operations gathered in one commit group.",
            &s.commit_group_size,
        )?;
        for (name, help, value) in [
            (
                "herald_storage_disk_bytes",
                "Bytes the store takes on disk.",
                s.disk_bytes,
            ),
            (
                "herald_storage_free_disk_bytes",
                "Free bytes on the store's filesystem.",
                s.free_disk_bytes,
            ),
            (
                "herald_storage_reserve_bytes",
                "The free-disk reserve (--min-free-disk-bytes); publishing stops at it.",
                s.reserve_bytes,
            ),
            (
                "herald_storage_writer_queue",
                "Operations queued for the store's writer thread.",
                s.writer_queue,
            ),
            (
                "herald_process_resident_memory_bytes",
                "The broker's resident memory.",
                s.resident_memory_bytes,
            ),
            (
                "herald_process_open_fds",
                "The broker's open file descriptors.",
                s.open_fds,
            ),
        ] {
            family(
                &mut e,
                name,
                help,
                gauge_type,
                [(Labels::new(), gauge(value))],
            )?;
        }
        family(
            &mut e,
            "herald_uptime_seconds",
            "Seconds since the broker started.",
            gauge_type,
            [(Labels::new(), ConstGauge::new(s.uptime_seconds))],
        )?;
        family(
            &mut e,
            "herald_build_info",
            "The broker's version and fsync policy (always 1).",
            gauge_type,
            [(
                vec![
                    ("version", s.version.to_string()),
                    ("fsync", s.fsync.to_string()),
                ],
                ConstGauge::new(1i64),
            )],
        )?;
        Ok(())
    }
}
