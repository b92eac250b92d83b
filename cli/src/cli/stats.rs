//! `herald stats`: the broker's headline figures — version, uptime, connections by way in,
//! the publish rate (from two samples `--interval-ms` apart), disk, memory, and the groups
//! that lag most. The figures are the JSON document of `GET /v1/stats`, which `--json`
//! prints as it is (the second sample).

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use herald_client::Client;
use serde_json::Value;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Time between the two samples the publish rate comes from.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// Groups listed, those lagging most first.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Print the broker's JSON document instead of a summary.
    #[arg(long)]
    pub json: bool,
}

async fn sample(client: &Client) -> anyhow::Result<Value> {
    let text = client.stats().await?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("the broker's stats: {e}"))
}

/// Records and bytes appended over every topic.
fn appended(stats: &Value) -> (u64, u64) {
    let topics = stats["topics"].as_array().cloned().unwrap_or_default();
    let records = topics
        .iter()
        .flat_map(|t| t["partitions"].as_array().cloned().unwrap_or_default())
        .map(|p| p["next_offset"].as_u64().unwrap_or(0))
        .sum();
    let bytes = topics
        .iter()
        .map(|t| t["appended_bytes"].as_u64().unwrap_or(0))
        .sum();
    (records, bytes)
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

pub async fn run(client: &Client, args: StatsArgs) -> anyhow::Result<()> {
    let first = sample(client).await?;
    let began = Instant::now();
    tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    let stats = sample(client).await?;
    let elapsed = began.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{stats}")?;
        return Ok(());
    }
    let uptime = Duration::from_millis(stats["uptime_ms"].as_u64().unwrap_or(0));
    writeln!(
        out,
        "herald {}, fsync {}, up {}",
        stats["version"].as_str().unwrap_or("?"),
        stats["fsync"].as_str().unwrap_or("?"),
        humantime::format_duration(Duration::from_secs(uptime.as_secs()))
    )?;
    let ways = ["tcp", "http", "sse", "websocket"];
    let connections: Vec<String> = ways
        .iter()
        .map(|w| format!("{w} {}", stats["connections"][w].as_i64().unwrap_or(0)))
        .collect();
    writeln!(out, "connections: {}", connections.join(", "))?;
    let ((records0, bytes0), (records1, bytes1)) = (appended(&first), appended(&stats));
    writeln!(
        out,
        "publishing: {:.0} msg/s, {:.1} MB/s (over {elapsed:.1} s)",
        records1.saturating_sub(records0) as f64 / elapsed,
        bytes1.saturating_sub(bytes0) as f64 / elapsed / 1e6
    )?;
    let disk = &stats["disk"];
    writeln!(
        out,
        "disk: store {}, free {}, reserve {}",
        megabytes(disk["store_bytes"].as_u64().unwrap_or(0)),
        megabytes(disk["free_bytes"].as_u64().unwrap_or(0)),
        megabytes(disk["reserve_bytes"].as_u64().unwrap_or(0))
    )?;
    writeln!(
        out,
        "memory: {} resident",
        megabytes(stats["resident_memory_bytes"].as_u64().unwrap_or(0))
    )?;
    let topics = stats["topics"].as_array().cloned().unwrap_or_default();
    let stored: u64 = topics
        .iter()
        .map(|t| t["stored_bytes"].as_u64().unwrap_or(0))
        .sum();
    let records: u64 = topics
        .iter()
        .map(|t| t["records"].as_u64().unwrap_or(0))
        .sum();
    writeln!(
        out,
        "topics: {} ({records} records, {})",
        topics.len(),
        megabytes(stored)
    )?;
    let mut groups = stats["groups"].as_array().cloned().unwrap_or_default();
    groups.sort_by_key(|g| std::cmp::Reverse(g["lag"].as_u64().unwrap_or(0)));
    writeln!(out, "top lagging groups:")?;
    writeln!(
        out,
        "{:>12} {:>9} {:>9}  {:<4}  TOPIC / GROUP",
        "LAG", "MEMBERS", "IN_FLIGHT", "MODE"
    )?;
    for g in groups.iter().take(args.top) {
        writeln!(
            out,
            "{:>12} {:>9} {:>9}  {:<4}  {} / {}",
            g["lag"].as_u64().unwrap_or(0),
            g["members"].as_u64().unwrap_or(0),
            g["in_flight"].as_u64().unwrap_or(0),
            g["mode"].as_str().unwrap_or("?"),
            g["topic"].as_str().unwrap_or("?"),
            g["group"].as_str().unwrap_or("?"),
        )?;
    }
    Ok(())
}
