//! `--scenario connect`: how many connections a second the broker sets up, each a whole
//! session start as a client makes it — TCP (and TLS with `--tls`/`--tls-ca`), `Hello`, and
//! the login the CLI's credentials ask for (SCRAM-SHA-256 with `--user`, a token with
//! `--token`, none otherwise) — then one request (listing topics, which needs the login to
//! have worked), then closing. `--producers` workers connect one after another each.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_client::{Client, ConnectOptions, Credentials};

use super::report::{self, Percentiles};

/// What the connect scenario found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Connect {
    pub connections: usize,
    pub workers: usize,
    /// `scram-sha-256`, `token` or `none`.
    pub login: &'static str,
    pub tls: bool,
    pub per_second: f64,
    /// Microseconds from the TCP connect to the listing's answer.
    pub latency_us: Percentiles,
}

pub async fn run(
    broker: &crate::cli::Target,
    connections: usize,
    workers: usize,
) -> anyhow::Result<Connect> {
    let options = ConnectOptions {
        tls: broker.tls.clone(),
        credentials: broker.credentials.clone(),
        reconnect: None,
        connect_timeout: Duration::from_secs(10),
        ..ConnectOptions::default()
    };
    let histogram = Arc::new(Mutex::new(report::histogram()));
    let workers = workers.clamp(1, connections);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..workers {
        // The connections shared out, the first workers taking one more.
        let share = connections / workers + usize::from(worker < connections % workers);
        let (addr, options, histogram) =
            (broker.addr.clone(), options.clone(), Arc::clone(&histogram));
        tasks.spawn(async move {
            for _ in 0..share {
                let began = Instant::now();
                let client = Client::connect_with(addr.as_str(), options.clone()).await?;
                client.list_topics().await?;
                let took = began.elapsed().as_micros().max(1) as u64;
                histogram
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .saturating_record(took);
                drop(client);
            }
            Ok::<_, herald_client::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    let histogram = histogram.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Connect {
        connections,
        workers,
        login: match &broker.credentials {
            Some(Credentials::Password { .. }) => "scram-sha-256",
            Some(Credentials::Token(_)) => "token",
            None => "none",
        },
        tls: broker.tls.is_some(),
        per_second: connections as f64 / elapsed.as_secs_f64(),
        latency_us: Percentiles::of(&histogram).expect("at least one connection"),
    })
}
