//! `herald user ...`, `herald token ...` and `herald acl ...`: users, API tokens and
//! permission rules on a broker started with `--auth` (they need the `admin` operation).
//!
//! Passwords never come from the command line, where `ps` and shell history would show
//! them: a new one is read from `HERALD_NEW_PASSWORD`.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use clap::Subcommand;

use herald_client::{AclRule, Client};

/// Where `user add` and `user passwd` read the new password.
const NEW_PASSWORD: &str = "HERALD_NEW_PASSWORD";

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user, its password read from HERALD_NEW_PASSWORD.
    Add {
        name: String,
        /// An administrator: may do everything, whatever the rules.
        #[arg(long)]
        admin: bool,
    },
    /// List users, one a line: name, then `admin` or `user`.
    List,
    /// Delete a user with its tokens and rules; its open sessions end.
    Delete { name: String },
    /// Give a user the password in HERALD_NEW_PASSWORD.
    Passwd { name: String },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token: the token alone on stdout (shown this once), its id on stderr.
    Create {
        #[arg(long)]
        user: String,
        /// Valid for this long (`90s`, `12h`, `30d`, `1week`); without it, until revoked.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// List tokens, one a line: id, user, created, expires (RFC 3339, or `never`).
    List,
    /// Revoke a token by id; sessions that logged in with it end.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// Grant a user operations on topics matching a pattern; prints the rule as `acl list`.
    Add {
        #[arg(long)]
        user: String,
        /// A topic name, a prefix ending in `*` (`orders.*`), or `*`.
        #[arg(long)]
        topic: String,
        /// publish, consume, describe, create, delete, admin; comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        allow: Vec<String>,
    },
    /// List rules, one a line: id, user, pattern, operations.
    List,
    /// Remove a rule by id; its user's open sessions end.
    Remove { id: u64 },
}

fn new_password() -> anyhow::Result<String> {
    match std::env::var(NEW_PASSWORD) {
        Ok(password) if !password.is_empty() => Ok(password),
        _ => anyhow::bail!("set {NEW_PASSWORD} to the new password (it is never a flag)"),
    }
}

pub async fn user(client: &Client, command: UserCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        UserCommand::Add { name, admin } => {
            let password = new_password()?;
            client.create_user(&name, &password, admin).await?;
            let role = if admin { "administrator" } else { "user" };
            writeln!(out, "created {role} {name}")?;
        }
        UserCommand::List => {
            for user in client.list_users().await? {
                let role = if user.admin { "admin" } else { "user" };
                writeln!(out, "{}\t{role}", user.name)?;
            }
        }
        UserCommand::Delete { name } => {
            client.delete_user(&name).await?;
            writeln!(out, "deleted user {name}")?;
        }
        UserCommand::Passwd { name } => {
            let password = new_password()?;
            client.set_password(&name, &password).await?;
            writeln!(out, "changed the password of {name}")?;
        }
    }
    Ok(())
}

pub async fn token(client: &Client, command: TokenCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        TokenCommand::Create { user, ttl } => {
            if ttl.is_some_and(|ttl| ttl.is_zero()) {
                anyhow::bail!("--ttl must be longer than zero");
            }
            let created = client.create_token(&user, ttl).await?;
            writeln!(out, "{}", created.token)?;
            eprintln!("{}", created.summary.id);
        }
        TokenCommand::List => {
            for token in client.list_tokens().await? {
                let expires = match token.expires_ms {
                    0 => "never".to_string(),
                    at => time(at),
                };
                let created = time(token.created_ms);
                writeln!(out, "{}\t{}\t{created}\t{expires}", token.id, token.user)?;
            }
        }
        TokenCommand::Revoke { id } => {
            client.revoke_token(&id).await?;
            writeln!(out, "revoked token {id}")?;
        }
    }
    Ok(())
}

pub async fn acl(client: &Client, command: AclCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        AclCommand::Add { user, topic, allow } => {
            let operations: Vec<&str> = allow.iter().map(String::as_str).collect();
            let rule = client.add_acl(&user, &topic, &operations).await?;
            writeln!(out, "{}", rule_line(&rule))?;
        }
        AclCommand::List => {
            for rule in client.list_acls().await? {
                writeln!(out, "{}", rule_line(&rule))?;
            }
        }
        AclCommand::Remove { id } => {
            client.remove_acl(id).await?;
            writeln!(out, "removed rule {id}")?;
        }
    }
    Ok(())
}

fn rule_line(rule: &AclRule) -> String {
    format!(
        "{}\t{}\t{}\t{}",
        rule.id,
        rule.user,
        rule.pattern,
        rule.operations.join(",")
    )
}

/// Milliseconds since the epoch as RFC 3339, to the second.
fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
