//! `herald consume TOPIC --group G [--mode pull|push] [--from earliest|latest] [--count N]
//! [--idle-timeout-ms MS] [--output raw|json]`

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use herald_client::{Client, Error, ErrorCode, FetchRequest, Fetched, StartPosition, StoredRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Pull,
    Push,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum From {
    Earliest,
    Latest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Raw,
    Json,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Consumer group to consume as.
    #[arg(long)]
    pub group: String,
    /// Pull (fetch by offset and commit) or push (the broker delivers, each is acked).
    #[arg(long, value_enum, default_value = "pull")]
    pub mode: Mode,
    /// Where a new group starts.
    #[arg(long, value_enum, default_value = "earliest")]
    pub from: From,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Exit once no message arrived for this long.
    #[arg(long, default_value_t = 5000)]
    pub idle_timeout_ms: u64,
    /// raw: each payload on its own line; json: one object per line.
    #[arg(long, value_enum, default_value = "raw")]
    pub output: Output,
}

pub async fn run(broker: &str, args: ConsumeArgs) -> anyhow::Result<()> {
    if args.mode == Mode::Push {
        anyhow::bail!(
            "--mode push is not supported yet by this version of herald; use --mode pull"
        );
    }
    let client = super::connect(broker).await?;
    PullLoop::new(client, args).run().await
}

/// Longest a single fetch waits before the loop checks the idle timeout again.
const MAX_POLL: Duration = Duration::from_secs(5);

struct PullLoop {
    client: Client,
    args: ConsumeArgs,
    printed: u64,
}

impl PullLoop {
    fn new(client: Client, args: ConsumeArgs) -> Self {
        PullLoop {
            client,
            args,
            printed: 0,
        }
    }

    /// Long-polls every partition at once, prints what arrives, commits after printing.
    async fn run(mut self) -> anyhow::Result<()> {
        let start = match self.args.from {
            From::Earliest => StartPosition::Earliest,
            From::Latest => StartPosition::Latest,
        };
        let (topic, group) = (self.args.topic.clone(), self.args.group.clone());
        let assignment = self.client.join_group(&topic, &group, start).await?;
        let mut positions: BTreeMap<u32, u64> = assignment
            .partitions
            .iter()
            .map(|p| (p.partition, p.committed))
            .collect();
        let idle = Duration::from_millis(self.args.idle_timeout_ms);
        let mut last_message = Instant::now();
        let mut polls = FuturesUnordered::new();
        for (&partition, &offset) in &positions {
            polls.push(self.poll(partition, offset, idle));
        }
        while !self.done() {
            let idle_left = idle.saturating_sub(last_message.elapsed());
            let result = tokio::select! {
                next = polls.next() => match next { Some(result) => result, None => break },
                _ = tokio::time::sleep(idle_left) => break,
            };
            let (partition, fetched) = result;
            let offset = positions[&partition];
            let next = match fetched {
                Ok(fetched) if !fetched.records.is_empty() => {
                    last_message = Instant::now();
                    let next = self.print(&fetched)?;
                    self.client
                        .commit(&topic, &group, &assignment, &[(partition, next)])
                        .await?;
                    next
                }
                Ok(_) => offset,
                Err(Error::Broker(err)) if err.code == Some(ErrorCode::OffsetOutOfRange) => {
                    let (first, _) = err.offsets.unwrap_or((offset, offset));
                    eprintln!("herald: partition {partition} offset {offset} is gone; resuming at {first}");
                    first
                }
                Err(err) => return Err(err.into()),
            };
            positions.insert(partition, next);
            polls.push(self.poll(partition, next, idle.saturating_sub(last_message.elapsed())));
        }
        drop(polls);
        self.client.leave_group(&topic, &group, &assignment).await?;
        Ok(())
    }

    fn done(&self) -> bool {
        self.args.count.is_some_and(|count| self.printed >= count)
    }

    fn poll(
        &self,
        partition: u32,
        offset: u64,
        wait: Duration,
    ) -> impl std::future::Future<Output = (u32, Result<Fetched, Error>)> {
        let client = self.client.clone();
        let mut request = FetchRequest::new(&self.args.topic, partition, offset);
        if let Some(count) = self.args.count {
            request.max_messages = (count - self.printed).clamp(1, 1000) as u32;
        }
        request.max_wait_ms = wait.min(MAX_POLL).as_millis() as u32;
        async move { (partition, client.fetch(request).await) }
    }

    /// Prints records up to `--count` and returns the offset after the last one printed.
    fn print(&mut self, fetched: &Fetched) -> anyhow::Result<u64> {
        let mut out = std::io::stdout().lock();
        let mut next = fetched.records[0].offset;
        for record in &fetched.records {
            if self.done() {
                break;
            }
            match self.args.output {
                Output::Raw => {
                    out.write_all(&record.record.payload)?;
                    out.write_all(b"\n")?;
                }
                Output::Json => {
                    serde_json::to_writer(
                        &mut out,
                        &json(&self.args.topic, fetched.partition, record),
                    )?;
                    out.write_all(b"\n")?;
                }
            }
            self.printed += 1;
            next = record.offset + 1;
        }
        out.flush()?;
        Ok(next)
    }
}

/// One message as a JSON object. Bytes that are not UTF-8 are written as base64 under a
/// `_base64` name (`payload_base64`, `key_base64`; a header value as `{"base64": "..."}`).
fn json(topic: &str, partition: u32, stored: &StoredRecord) -> serde_json::Value {
    let record = &stored.record;
    let mut object = serde_json::json!({
        "topic": topic,
        "partition": partition,
        "offset": stored.offset,
        "key": null,
        "timestamp": record.timestamp,
        "redelivered": false,
        "delivery_count": 1,
    });
    let headers: serde_json::Map<String, serde_json::Value> = record
        .headers
        .iter()
        .map(|(name, value)| {
            let value = match std::str::from_utf8(value) {
                Ok(text) => serde_json::Value::from(text),
                Err(_) => serde_json::json!({ "base64": base64(value) }),
            };
            (name.clone(), value)
        })
        .collect();
    object["headers"] = serde_json::Value::Object(headers);
    if let Some(key) = &record.key {
        put_bytes(&mut object, "key", key);
    }
    put_bytes(&mut object, "payload", &record.payload);
    object
}

fn put_bytes(object: &mut serde_json::Value, name: &str, bytes: &Bytes) {
    match std::str::from_utf8(bytes) {
        Ok(text) => object[name] = serde_json::Value::from(text),
        Err(_) => object[format!("{name}_base64")] = serde_json::Value::from(base64(bytes)),
    }
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
