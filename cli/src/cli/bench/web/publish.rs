//! `--via http` producers: each on its own keep-alive connection, one
//! `POST /v1/topics/{topic}/records` of up to `--batch` records at a time, each answered
//! once the broker confirms the batch under its fsync policy.

use std::time::Duration;

use bytes::Bytes;
use herald_client::Durability;
use indicatif::ProgressBar;
use serde::Deserialize;

use super::Http;
use crate::cli::bench::pacer::Pacer;
use crate::cli::bench::payload;
use crate::cli::bench::report::histogram;
use crate::cli::bench::workload::{ProducerFigures, PublishPlan};

#[derive(Deserialize)]
struct Published {
    offsets: Vec<serde::de::IgnoredAny>,
    durability: String,
}

/// Publishes producer `producer`'s share of the plan through the gateway at `http`, and
/// returns its publish→confirm latencies and the durability the broker confirmed.
pub async fn run_producer(
    http: String,
    plan: PublishPlan,
    producer: usize,
    progress: ProgressBar,
) -> anyhow::Result<ProducerFigures> {
    let mut connection = Http::connect(&http).await?;
    let path = format!("/v1/topics/{}/records", plan.topic);
    let count = plan.expected.count(producer);
    let per_producer_rate = plan.rate as f64 / plan.expected.producers as f64;
    let mut pacer = (per_producer_rate > 0.0)
        .then(|| Pacer::new(Duration::from_secs_f64(1.0 / per_producer_rate)))
        .transpose()?;
    let mut latencies = histogram();
    let mut durability = None;
    let payloads = payload::Payloads::new(plan.filler, plan.size);
    let mut stamps = Vec::with_capacity(plan.batch);
    let mut body = Vec::new();
    let mut sequence = 0;
    let mut due = 0;
    while sequence < count {
        if due == 0 {
            due = match &mut pacer {
                Some(pacer) => pacer.tick().await?,
                None => count,
            };
        }
        let n = due.min(count - sequence).min(plan.batch as u64);
        body.clear();
        stamps.clear();
        body.extend_from_slice(b"{\"records\":[");
        for i in 0..n {
            if i > 0 {
                body.push(b',');
            }
            let sent_ns = payload::now_ns();
            let message = payloads.encode(producer as u32, sequence + i, sent_ns);
            super::json_record(&message, &mut body);
            stamps.push(sent_ns);
        }
        body.extend_from_slice(b"]}");
        let answer = connection
            .call("POST", &path, Bytes::copy_from_slice(&body))
            .await?;
        let answer: Published = serde_json::from_slice(&answer)
            .map_err(|e| anyhow::anyhow!("the broker's answer to a publish: {e}"))?;
        if answer.offsets.len() as u64 != n {
            anyhow::bail!(
                "published {n} records, the broker confirmed {}",
                answer.offsets.len()
            );
        }
        let now = payload::now_ns();
        for sent_ns in &stamps {
            latencies.saturating_record((now.saturating_sub(*sent_ns) / 1000).max(1));
        }
        durability.get_or_insert(match answer.durability.as_str() {
            "synced" => Durability::Synced,
            "written" => Durability::Written,
            _ => Durability::Buffered,
        });
        progress.inc(n);
        sequence += n;
        due -= n;
    }
    Ok((latencies, durability, None))
}
