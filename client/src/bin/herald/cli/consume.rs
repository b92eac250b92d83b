//! `herald consume TOPIC --group G [--mode pull|push] [--from earliest|latest] [--count N]
//! [--idle-timeout-ms MS] [--output raw|json]`

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::StreamExt;

use herald_client::{Client, PullConsumerConfig, PulledRecord, StartPosition};

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
    consume_pull(&client, &args).await
}

/// Joins the group, prints what the broker assigns this member, and commits whenever it
/// has printed everything received so far (so at most the records of one fetch are read
/// again if it dies mid-way). Leaves the group on exit.
async fn consume_pull(client: &Client, args: &ConsumeArgs) -> anyhow::Result<()> {
    let mut config = PullConsumerConfig {
        start: match args.from {
            From::Earliest => StartPosition::Earliest,
            From::Latest => StartPosition::Latest,
        },
        auto_commit: false,
        ..PullConsumerConfig::default()
    };
    if let Some(count) = args.count {
        config.max_messages = count.clamp(1, u64::from(config.max_messages)) as u32;
    }
    let mut consumer = client
        .pull_consumer_with(&args.topic, &args.group, config)
        .await?;
    let idle = Duration::from_millis(args.idle_timeout_ms);
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    let result = loop {
        if args.count.is_some_and(|count| printed >= count) {
            break Ok(());
        }
        let record = match tokio::time::timeout(idle, consumer.next()).await {
            Err(_) | Ok(None) => break Ok(()),
            Ok(Some(Err(err))) => break Err(err.into()),
            Ok(Some(Ok(record))) => record,
        };
        if let Err(err) = print(&mut out, args, &record) {
            break Err(err);
        }
        printed += 1;
        if !consumer.has_ready() || args.count.is_some_and(|count| printed >= count) {
            if let Err(err) = out.flush() {
                break Err(err.into());
            }
            if let Err(err) = consumer.commit().await {
                break Err(err.into());
            }
        }
    };
    drop(out);
    let closed = consumer.close().await;
    result?;
    closed?;
    Ok(())
}

fn print(out: &mut impl Write, args: &ConsumeArgs, record: &PulledRecord) -> anyhow::Result<()> {
    match args.output {
        Output::Raw => {
            out.write_all(&record.record.payload)?;
            out.write_all(b"\n")?;
        }
        Output::Json => {
            serde_json::to_writer(&mut *out, &json(&args.topic, record))?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// One message as a JSON object. Bytes that are not UTF-8 are written as base64 under a
/// `_base64` name (`payload_base64`, `key_base64`; a header value as `{"base64": "..."}`).
fn json(topic: &str, pulled: &PulledRecord) -> serde_json::Value {
    let record = &pulled.record;
    let mut object = serde_json::json!({
        "topic": topic,
        "partition": pulled.partition,
        "offset": pulled.offset,
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
