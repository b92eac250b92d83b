//! `herald consume TOPIC --group G [--mode pull|push] [--from earliest|latest] [--count N]
//! [--idle-timeout-ms MS] [--prefetch N] [--session-timeout-ms MS] [--output raw|json]`

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::StreamExt;

use herald_client::{
    Client, ConnectOptions, PullConsumerConfig, PushConsumerConfig, Record, StartPosition,
};

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
    /// Ask the broker for this session timeout: it ends the session (and hands this
    /// consumer's work to others) once nothing arrived from it for this long.
    #[arg(long)]
    pub session_timeout_ms: Option<u32>,
    /// Push mode: most unacked deliveries held at once.
    #[arg(long, default_value_t = 100)]
    pub prefetch: u32,
    /// raw: each payload on its own line; json: one object per line.
    #[arg(long, value_enum, default_value = "raw")]
    pub output: Output,
}

pub async fn run(broker: &super::Target, args: ConsumeArgs) -> anyhow::Result<()> {
    let options = ConnectOptions {
        session_timeout: args
            .session_timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms))),
        ..ConnectOptions::default()
    };
    let client = super::connect_with(broker, options).await?;
    match args.mode {
        Mode::Pull => consume_pull(&client, &args).await,
        Mode::Push => consume_push(&client, &args).await,
    }
}

/// Subscribes to the push group, prints each delivery and acks it after printing. On exit
/// it waits for the acks to be stored and unsubscribes.
async fn consume_push(client: &Client, args: &ConsumeArgs) -> anyhow::Result<()> {
    let config = PushConsumerConfig {
        prefetch: args.prefetch,
        start: start(args.from),
        ..PushConsumerConfig::default()
    };
    let mut consumer = client
        .push_consumer_with(&args.topic, &args.group, config)
        .await?;
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    let result = loop {
        let delivery = match next_message(&mut consumer, args, printed).await {
            None => break Ok(()),
            Some(Err(err)) => break Err(err),
            Some(Ok(delivery)) => delivery,
        };
        let shown = Shown {
            partition: delivery.partition,
            offset: delivery.offset,
            record: &delivery.record,
            delivery_count: delivery.delivery_count,
        };
        if let Err(err) = print(&mut out, args, &shown).and_then(|()| Ok(out.flush()?)) {
            break Err(err);
        }
        delivery.ack();
        printed += 1;
    };
    drop(out);
    let closed = consumer.close().await;
    result?;
    closed?;
    Ok(())
}

/// The next message, or `None` once `--count` are printed, the stream ended, or nothing
/// came for `--idle-timeout-ms`.
async fn next_message<S, T>(
    consumer: &mut S,
    args: &ConsumeArgs,
    printed: u64,
) -> Option<anyhow::Result<T>>
where
    S: futures::Stream<Item = herald_client::Result<T>> + Unpin,
{
    if args.count.is_some_and(|count| printed >= count) {
        return None;
    }
    let idle = Duration::from_millis(args.idle_timeout_ms);
    match tokio::time::timeout(idle, consumer.next()).await {
        Err(_) | Ok(None) => None,
        Ok(Some(item)) => Some(item.map_err(Into::into)),
    }
}

fn start(from: From) -> StartPosition {
    match from {
        From::Earliest => StartPosition::Earliest,
        From::Latest => StartPosition::Latest,
    }
}

/// What a printed message shows, from either mode.
struct Shown<'a> {
    partition: u32,
    offset: u64,
    record: &'a Record,
    delivery_count: u32,
}

/// Joins the group, prints what the broker assigns this member, and commits whenever it
/// has printed everything received so far (so at most the records of one fetch are read
/// again if it dies mid-way). Leaves the group on exit.
async fn consume_pull(client: &Client, args: &ConsumeArgs) -> anyhow::Result<()> {
    let mut config = PullConsumerConfig {
        start: start(args.from),
        auto_commit: false,
        ..PullConsumerConfig::default()
    };
    if let Some(count) = args.count {
        config.max_messages = count.clamp(1, u64::from(config.max_messages)) as u32;
    }
    let mut consumer = client
        .pull_consumer_with(&args.topic, &args.group, config)
        .await?;
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    let result = loop {
        let record = match next_message(&mut consumer, args, printed).await {
            None => break Ok(()),
            Some(Err(err)) => break Err(err),
            Some(Ok(record)) => record,
        };
        let shown = Shown {
            partition: record.partition,
            offset: record.offset,
            record: &record.record,
            delivery_count: 1,
        };
        if let Err(err) = print(&mut out, args, &shown) {
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

fn print(out: &mut impl Write, args: &ConsumeArgs, shown: &Shown) -> anyhow::Result<()> {
    match args.output {
        Output::Raw => {
            out.write_all(&shown.record.payload)?;
            out.write_all(b"\n")?;
        }
        Output::Json => {
            serde_json::to_writer(&mut *out, &json(&args.topic, shown))?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// One message as a JSON object. Bytes that are not UTF-8 are written as base64 under a
/// `_base64` name (`payload_base64`, `key_base64`; a header value as `{"base64": "..."}`).
fn json(topic: &str, shown: &Shown) -> serde_json::Value {
    let record = shown.record;
    let mut object = serde_json::json!({
        "topic": topic,
        "partition": shown.partition,
        "offset": shown.offset,
        "key": null,
        "timestamp": record.timestamp,
        "redelivered": shown.delivery_count > 1,
        "delivery_count": shown.delivery_count,
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
