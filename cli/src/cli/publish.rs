//! `herald publish TOPIC [--key K] [--header NAME=VALUE]... [--print-offsets] [--compression CODEC] [MESSAGE]...`

use std::collections::VecDeque;
use std::io::Write;

use bytes::Bytes;
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};

use herald_client::{Client, Codec, PendingConfirm, Producer, ProducerConfig, Record};

/// Most unconfirmed messages held at once while reading stdin.
const WINDOW: usize = 16 * 1024;

#[derive(Debug, Args)]
pub struct PublishArgs {
    pub topic: String,
    /// Key for every message (routes them all to one partition).
    #[arg(long)]
    pub key: Option<String>,
    /// A header for every message; repeatable.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Print "PARTITION:OFFSET" for each confirmed message, in confirmation order.
    #[arg(long)]
    pub print_offsets: bool,
    /// Compress each batch: none, lz4 or zstd (consumers decompress it).
    #[arg(long, value_name = "CODEC", default_value = "none")]
    pub compression: Codec,
    /// Messages to publish; with none, each line of stdin is one message.
    pub messages: Vec<String>,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

/// Publishes every message; fails (non-zero exit) unless all are confirmed.
pub async fn run(client: &Client, args: PublishArgs) -> anyhow::Result<()> {
    let producer = client.producer_with(ProducerConfig {
        compression: args.compression,
        ..ProducerConfig::default()
    });
    let mut publisher = Publisher {
        producer,
        args: &args,
        pending: VecDeque::new(),
        confirmed: 0,
    };
    if args.messages.is_empty() {
        let mut lines = BufReader::new(tokio::io::stdin());
        let mut line = Vec::new();
        while lines.read_until(b'\n', &mut line).await? > 0 {
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            publisher
                .publish(Bytes::from(std::mem::take(&mut line)))
                .await?;
        }
    } else {
        for message in &args.messages {
            publisher.publish(Bytes::from(message.clone())).await?;
        }
    }
    publisher.finish().await
}

struct Publisher<'a> {
    producer: Producer,
    args: &'a PublishArgs,
    pending: VecDeque<PendingConfirm>,
    confirmed: u64,
}

impl Publisher<'_> {
    async fn publish(&mut self, payload: Bytes) -> anyhow::Result<()> {
        let mut record = Record::new(payload);
        if let Some(key) = &self.args.key {
            record = record.with_key(key.clone());
        }
        for (name, value) in &self.args.headers {
            record = record.with_header(name.clone(), value.clone());
        }
        self.pending
            .push_back(self.producer.enqueue(&self.args.topic, record).await?);
        if self.pending.len() >= WINDOW {
            self.confirm_oldest().await?;
        }
        Ok(())
    }

    async fn confirm_oldest(&mut self) -> anyhow::Result<()> {
        let Some(pending) = self.pending.pop_front() else {
            return Ok(());
        };
        let confirm = pending.await.map_err(|err| {
            anyhow::anyhow!("message {} was not confirmed: {err}", self.confirmed + 1)
        })?;
        self.confirmed += 1;
        if self.args.print_offsets {
            writeln!(
                std::io::stdout().lock(),
                "{}:{}",
                confirm.partition,
                confirm.offset
            )?;
        }
        Ok(())
    }

    async fn finish(mut self) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.confirm_oldest().await?;
        }
        std::io::stdout().flush()?;
        Ok(())
    }
}
