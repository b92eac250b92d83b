//! `herald topic ...`

use std::io::Write;

use clap::Subcommand;

use herald_client::{Client, Retention, TopicInfo};

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Delete records older than this, per partition (0 = keep forever).
        #[arg(long, default_value_t = 0)]
        retention_ms: u64,
        /// Keep about this many bytes per partition, deleting the oldest (0 = no limit).
        #[arg(long, default_value_t = 0)]
        retention_bytes: u64,
        /// Keep about this many records per partition, deleting the oldest (0 = no limit).
        #[arg(long, default_value_t = 0)]
        retention_messages: u64,
    },
    /// List topic names, one per line.
    List,
    /// Show a topic's retention and each partition's offsets and size.
    Describe { name: String },
    /// Delete a topic and all its records.
    Delete { name: String },
}

pub async fn run(client: &Client, command: TopicCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        TopicCommand::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            retention_messages,
        } => {
            let retention = Retention {
                max_age_ms: retention_ms,
                max_bytes: retention_bytes,
                max_messages: retention_messages,
            };
            let info = client
                .create_topic_with(&name, partitions, retention)
                .await?;
            writeln!(
                out,
                "created topic {} with {} partition(s)",
                info.name,
                info.partitions.len()
            )?;
        }
        TopicCommand::List => {
            for topic in client.list_topics().await? {
                writeln!(out, "{}", topic.name)?;
            }
        }
        TopicCommand::Describe { name } => {
            print_description(&mut out, &client.describe_topic(&name).await?)?
        }
        TopicCommand::Delete { name } => {
            client.delete_topic(&name).await?;
            writeln!(out, "deleted topic {name}")?;
        }
    }
    Ok(())
}

fn print_description(out: &mut impl Write, info: &TopicInfo) -> std::io::Result<()> {
    let limit = |v: u64| {
        if v == 0 {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    let r = &info.retention;
    writeln!(out, "topic: {}", info.name)?;
    writeln!(out, "partitions: {}", info.partitions.len())?;
    writeln!(
        out,
        "retention: max_age_ms={} max_bytes={} max_messages={}",
        limit(r.max_age_ms),
        limit(r.max_bytes),
        limit(r.max_messages)
    )?;
    writeln!(
        out,
        "{:<10} {:>14} {:>14} {:>14}",
        "PARTITION", "FIRST_OFFSET", "NEXT_OFFSET", "BYTES"
    )?;
    for p in &info.partitions {
        writeln!(
            out,
            "{:<10} {:>14} {:>14} {:>14}",
            p.partition, p.first_offset, p.next_offset, p.bytes
        )?;
    }
    Ok(())
}
