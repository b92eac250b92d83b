//! `herald group ...`

use std::io::Write;

use clap::Subcommand;

use std::time::Duration;

use herald_client::{Client, GroupInfo, GroupMode, PushGroupSettings, ResetTarget, StartPosition};

use super::consume::{From, Mode};

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List a topic's groups, one name per line.
    List { topic: String },
    /// Show a group's members, the partitions each owns, and per partition the committed
    /// offset, the end offset and the lag.
    Describe { topic: String, group: String },
    /// Move a group on every partition; only while it has no members.
    Reset {
        topic: String,
        group: String,
        /// earliest, latest, or an offset (clamped to each partition's retained range).
        #[arg(long, value_parser = parse_reset_target)]
        to: ResetTarget,
    },
    /// Create a group with explicit settings (otherwise its first consumer creates it).
    Create {
        topic: String,
        group: String,
        #[arg(long, value_enum)]
        mode: Mode,
        /// Where the new group starts.
        #[arg(long, value_enum, default_value = "earliest")]
        from: From,
        /// Push groups: how long a delivery may stay unanswered before it goes to another
        /// consumer.
        #[arg(long)]
        ack_timeout_ms: Option<u32>,
        /// Push groups: deliveries of one record before it goes to the dead-letter topic
        /// (0 = unlimited).
        #[arg(long)]
        max_deliveries: Option<u32>,
        /// Push groups: the dead-letter topic (default `<topic>.dlq`).
        #[arg(long)]
        dead_letter: Option<String>,
    },
    /// Delete a group without members and its committed offsets.
    Delete { topic: String, group: String },
}

fn parse_reset_target(value: &str) -> Result<ResetTarget, String> {
    match value {
        "earliest" => Ok(ResetTarget::Earliest),
        "latest" => Ok(ResetTarget::Latest),
        other => other.parse::<u64>().map(ResetTarget::Offset).map_err(|_| {
            format!("{other:?} is not earliest, latest or an offset (a whole number)")
        }),
    }
}

pub async fn run(client: &Client, command: GroupCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        GroupCommand::List { topic } => {
            for group in client.list_groups(&topic).await? {
                writeln!(out, "{}", group.name)?;
            }
        }
        GroupCommand::Describe { topic, group } => {
            print_description(&mut out, &client.describe_group(&topic, &group).await?)?;
        }
        GroupCommand::Reset { topic, group, to } => {
            client.reset_group(&topic, &group, to).await?;
            let to = match to {
                ResetTarget::Earliest => "earliest".to_string(),
                ResetTarget::Latest => "latest".to_string(),
                ResetTarget::Offset(offset) => format!("offset {offset}"),
            };
            writeln!(out, "reset group {group} on {topic} to {to}")?;
        }
        GroupCommand::Create {
            topic,
            group,
            mode,
            from,
            ack_timeout_ms,
            max_deliveries,
            dead_letter,
        } => {
            let start = match from {
                From::Earliest => StartPosition::Earliest,
                From::Latest => StartPosition::Latest,
            };
            if mode == Mode::Push {
                let settings = PushGroupSettings {
                    start,
                    ack_timeout: ack_timeout_ms.map(|ms| Duration::from_millis(u64::from(ms))),
                    max_deliveries,
                    dead_letter,
                };
                if settings.ack_timeout.is_some_and(|d| d.is_zero()) {
                    anyhow::bail!("--ack-timeout-ms must be at least 1");
                }
                client.create_push_group(&topic, &group, settings).await?;
                writeln!(out, "created push group {group} on {topic}")?;
                return Ok(());
            }
            if ack_timeout_ms.is_some() || max_deliveries.is_some() || dead_letter.is_some() {
                anyhow::bail!(
                    "--ack-timeout-ms, --max-deliveries and --dead-letter apply to push groups only"
                );
            }
            client.create_pull_group(&topic, &group, start).await?;
            writeln!(out, "created pull group {group} on {topic}")?;
        }
        GroupCommand::Delete { topic, group } => {
            client.delete_group(&topic, &group).await?;
            writeln!(out, "deleted group {group} on {topic}")?;
        }
    }
    Ok(())
}

fn print_description(out: &mut impl Write, info: &GroupInfo) -> std::io::Result<()> {
    let mode = match info.mode {
        GroupMode::Pull => "pull",
        GroupMode::Push => "push",
    };
    writeln!(out, "group: {}", info.group)?;
    writeln!(out, "topic: {}", info.topic)?;
    writeln!(out, "mode: {mode}")?;
    if info.mode == GroupMode::Push {
        return print_push(out, info);
    }
    writeln!(out, "generation: {}", info.generation)?;
    writeln!(out, "members: {}", info.members.len())?;
    if !info.members.is_empty() {
        writeln!(out, "{:<40} {:<22} PARTITIONS", "MEMBER", "ADDRESS")?;
        for member in &info.members {
            let partitions: Vec<String> = member.partitions.iter().map(u32::to_string).collect();
            writeln!(
                out,
                "{:<40} {:<22} {}",
                member.member_id,
                member.address,
                partitions.join(",")
            )?;
        }
    }
    writeln!(
        out,
        "{:<10} {:<40} {:>14} {:>14} {:>14}",
        "PARTITION", "OWNER", "COMMITTED", "END", "LAG"
    )?;
    for p in &info.partitions {
        let owner = if p.owner.is_empty() { "-" } else { &p.owner };
        writeln!(
            out,
            "{:<10} {:<40} {:>14} {:>14} {:>14}",
            p.partition, owner, p.committed, p.end, p.lag
        )?;
    }
    Ok(())
}

fn print_push(out: &mut impl Write, info: &GroupInfo) -> std::io::Result<()> {
    let max = if info.max_deliveries == 0 {
        "unlimited".to_string()
    } else {
        info.max_deliveries.to_string()
    };
    writeln!(out, "ack_timeout_ms: {}", info.ack_timeout_ms)?;
    writeln!(out, "max_deliveries: {max}")?;
    writeln!(out, "dead_letter: {}", info.dead_letter)?;
    writeln!(out, "redelivered: {}", info.redelivered)?;
    writeln!(out, "dead_lettered: {}", info.dead_lettered)?;
    writeln!(out, "consumers: {}", info.members.len())?;
    if !info.members.is_empty() {
        writeln!(
            out,
            "{:<24} {:<22} {:>10} {:>18}",
            "CONSUMER", "ADDRESS", "IN_FLIGHT", "OLDEST_UNACKED_MS"
        )?;
        for member in &info.members {
            writeln!(
                out,
                "{:<24} {:<22} {:>10} {:>18}",
                member.member_id, member.address, member.in_flight, member.oldest_unacked_ms
            )?;
        }
    }
    writeln!(
        out,
        "{:<10} {:>14} {:>14} {:>14}",
        "PARTITION", "ACK_FLOOR", "END", "LAG"
    )?;
    for p in &info.partitions {
        writeln!(
            out,
            "{:<10} {:>14} {:>14} {:>14}",
            p.partition, p.committed, p.end, p.lag
        )?;
    }
    Ok(())
}
