//! The two halves of every scenario: producers that publish numbered messages and record
//! publish→confirm latency, and consumers that read, verify and answer everything — over
//! the TCP protocol with the Rust client, or through the web front door ([`super::web`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use herald_client::{
    Client, Codec, Confirm, ConnectOptions, Durability, Error, PendingConfirm, ProducerConfig,
    PullConsumer, PullConsumerConfig, PushConsumer, PushConsumerConfig, Reconnect, Record,
    StartPosition,
};
use indicatif::ProgressBar;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::pacer::Pacer;
use super::payload::{self, Filler, Payloads};
use super::report::histogram;
use super::verify::{Expected, Verifier};
use super::web;
use crate::cli::Target;

/// How producers publish.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub broker: Target,
    pub topic: String,
    pub expected: Expected,
    pub size: usize,
    pub batch: usize,
    /// Messages per second over all producers; 0 = as fast as possible.
    pub rate: u64,
    /// Publish by HTTP to this gateway instead of over TCP.
    pub http: Option<String>,
    /// What follows each payload's header.
    pub filler: Filler,
    /// The producers' codec (TCP only).
    pub compression: Codec,
}

/// What one producer measured: its publish→confirm latencies, the durability its confirms
/// reported, and the bytes of batches it sent (`None` over HTTP).
pub type ProducerFigures = (Histogram<u64>, Option<Durability>, Option<u64>);

/// What the producers measured.
pub struct Published {
    pub elapsed: Duration,
    pub confirm: Histogram<u64>,
    pub durability: Option<Durability>,
    /// Bytes of record batches the producers sent (TCP; `None` over HTTP).
    pub batch_bytes: Option<u64>,
}

/// A connection for the bench. It connects again after a break, but gives up after a few
/// attempts (about ten seconds): a bench measures a running broker, and a broker that went
/// away must end the run with an error, not leave it waiting.
pub async fn connect(broker: &Target) -> anyhow::Result<Client> {
    let options = ConnectOptions {
        tls: broker.tls.clone(),
        credentials: broker.credentials.clone(),
        reconnect: Some(Reconnect {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(2),
            max_attempts: Some(6),
        }),
        ..ConnectOptions::default()
    };
    Ok(Client::connect_with(broker.addr.as_str(), options).await?)
}

/// Runs every producer on its own connection until all messages are confirmed.
pub async fn publish(plan: &PublishPlan, progress: &ProgressBar) -> anyhow::Result<Published> {
    let start = Instant::now();
    let mut producers = Vec::new();
    for p in 0..plan.expected.producers {
        let (plan, progress) = (plan.clone(), progress.clone());
        producers.push(match plan.http.clone() {
            Some(http) => tokio::spawn(web::publish::run_producer(http, plan, p, progress)),
            None => {
                let client = connect(&plan.broker).await?;
                tokio::spawn(run_producer(client, plan, p, progress))
            }
        });
    }
    let mut confirm = histogram();
    let mut durability = None;
    let mut batch_bytes = None;
    for producer in producers {
        let (latencies, seen, sent) = producer.await??;
        confirm.add(&latencies)?;
        durability = durability.or(seen);
        if let Some(sent) = sent {
            *batch_bytes.get_or_insert(0) += sent;
        }
    }
    Ok(Published {
        elapsed: start.elapsed(),
        confirm,
        durability,
        batch_bytes,
    })
}

async fn run_producer(
    client: Client,
    plan: PublishPlan,
    producer: usize,
    progress: ProgressBar,
) -> anyhow::Result<ProducerFigures> {
    let config = ProducerConfig {
        batch_records: plan.batch.max(1),
        compression: plan.compression,
        ..ProducerConfig::default()
    };
    let sender = client.producer_with(config);
    let payloads = Payloads::new(plan.filler, plan.size);
    // Confirms are awaited on a task of their own, handed over in runs of at most
    // CONFIRM_RUN records (and whenever the pacer is about to wait), so that nothing per
    // record crosses a channel. The channel has room for as many runs as the records the
    // confirmer may lag behind by, since a paced run may be a single record.
    let (pending_tx, mut pending_rx) = mpsc::channel::<Vec<(u64, PendingConfirm)>>(64 * 1024);
    let confirmer = tokio::spawn(async move {
        let mut latencies = histogram();
        let mut durability = None;
        while let Some(run) = pending_rx.recv().await {
            let confirmed = run.len() as u64;
            for (sent_ns, pending) in run {
                let confirm: Confirm = pending.await?;
                latencies
                    .saturating_record((payload::now_ns().saturating_sub(sent_ns) / 1000).max(1));
                durability.get_or_insert(confirm.durability);
            }
            progress.inc(confirmed);
        }
        Ok::<_, Error>((latencies, durability))
    });
    let count = plan.expected.count(producer);
    let per_producer_rate = plan.rate as f64 / plan.expected.producers as f64;
    let mut pacer = (per_producer_rate > 0.0)
        .then(|| Pacer::new(Duration::from_secs_f64(1.0 / per_producer_rate)))
        .transpose()?;
    let mut sequence = 0;
    let mut run = Vec::with_capacity(CONFIRM_RUN);
    'publishing: while sequence < count {
        let due = match &mut pacer {
            Some(pacer) => pacer.tick().await?,
            None => count,
        };
        let due = due.min(count - sequence);
        for i in 0..due {
            let (sent_ns, record) = stamped(&payloads, producer, sequence);
            run.push((sent_ns, sender.enqueue(&plan.topic, record).await?));
            sequence += 1;
            // A run goes when full, at the end, and whenever the pacer is about to wait.
            let waits = pacer.is_some() && i + 1 == due;
            if run.len() == CONFIRM_RUN || sequence == count || waits {
                let full = std::mem::replace(&mut run, Vec::with_capacity(CONFIRM_RUN));
                if pending_tx.send(full).await.is_err() {
                    break 'publishing; // the confirmer failed; its error is reported below
                }
            }
        }
    }
    drop(pending_tx);
    let (latencies, durability) = confirmer.await??;
    Ok((latencies, durability, Some(sender.batch_bytes_sent())))
}

/// Most confirms handed to the confirmer at once.
const CONFIRM_RUN: usize = 128;

/// Message `sequence` of `producer`, stamped with the time it leaves.
fn stamped(payloads: &Payloads, producer: usize, sequence: u64) -> (u64, Record) {
    let sent_ns = payload::now_ns();
    let body = payloads.encode(producer as u32, sequence, sent_ns);
    let record = Record {
        timestamp: payload::unix_ms_at(sent_ns),
        payload: body,
        ..Record::default()
    };
    (sent_ns, record)
}

/// How one group of pull consumers reads.
#[derive(Debug, Clone)]
pub struct ConsumePlan {
    pub broker: Target,
    pub topic: String,
    pub group: String,
    pub consumers: usize,
    pub expected: Expected,
    /// Most records per fetch.
    pub max_messages: u32,
    /// Give up when nothing new arrived for this long.
    pub stall_timeout: Duration,
    /// Where to record publish→delivery latency (from the payloads' stamps), if at all:
    /// one histogram for the whole run, whatever the number of groups and consumers.
    pub delivery: Option<Arc<Mutex<Histogram<u64>>>>,
    /// Pull members or push subscribers.
    pub push: bool,
    /// How the consumers reach the broker.
    pub via: ConsumeVia,
    /// Told once by each consumer when it is subscribed and reading, so that publishing
    /// can wait for all of them.
    pub ready: Option<mpsc::UnboundedSender<()>>,
}

/// How a group's consumers reach the broker.
#[derive(Debug, Clone)]
pub enum ConsumeVia {
    /// The Rust client over the TCP protocol.
    Tcp,
    /// Push subscribers on WebSockets at this HTTP gateway.
    WebSocket(String),
    /// One Server-Sent Events stream per group at this HTTP gateway.
    Sse(String),
}

/// What one group's consumers measured.
pub struct Consumed {
    pub elapsed: Duration,
    pub verifier: Verifier,
}

pub(super) struct Shared {
    verifier: Mutex<Verifier>,
    received: AtomicU64,
    /// Cancelled once every message arrived, or the run stalled.
    pub(super) done: tokio_util::sync::CancellationToken,
}

/// Runs `plan.consumers` members of one group, each on its own connection, until every
/// expected message has arrived or nothing arrived for the stall timeout. Pull members are
/// [`herald_client::PullConsumer`]s reading the partitions the broker assigns them
/// (committing automatically); push members are [`herald_client::PushConsumer`]s acking
/// every delivery.
pub async fn consume(plan: &ConsumePlan, progress: &ProgressBar) -> anyhow::Result<Consumed> {
    let shared = Arc::new(Shared {
        verifier: Mutex::new(Verifier::new(plan.expected)),
        received: AtomicU64::new(0),
        done: tokio_util::sync::CancellationToken::new(),
    });
    let start = Instant::now();
    let mut members = Vec::new();
    for _ in 0..plan.consumers {
        let (plan, shared, progress) = (plan.clone(), Arc::clone(&shared), progress.clone());
        members.push(match plan.via.clone() {
            ConsumeVia::WebSocket(http) => tokio::spawn(web::consume::run_ws_subscriber(
                http, plan, shared, progress,
            )),
            ConsumeVia::Sse(http) => {
                tokio::spawn(web::consume::run_sse_stream(http, plan, shared, progress))
            }
            ConsumeVia::Tcp => {
                let client = connect(&plan.broker).await?;
                tokio::spawn(async move {
                    if plan.push {
                        run_subscriber(client, plan, shared, progress).await
                    } else {
                        run_member(client, plan, shared, progress).await
                    }
                })
            }
        });
    }
    let watchdog = tokio::spawn(watch_for_stall(Arc::clone(&shared), plan.stall_timeout));
    for member in members {
        member.await??;
    }
    let elapsed = start.elapsed();
    watchdog.abort();
    let _ = watchdog.await; // cancelled: its handle on the results is gone once this returns
    let shared = Arc::into_inner(shared)
        .ok_or_else(|| anyhow::anyhow!("consumer tasks still hold the results"))?;
    Ok(Consumed {
        elapsed,
        verifier: shared
            .verifier
            .into_inner()
            .map_err(|_| anyhow::anyhow!("a consumer panicked"))?,
    })
}

async fn watch_for_stall(shared: Arc<Shared>, timeout: Duration) {
    let mut last = shared.received.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(timeout).await;
        let now = shared.received.load(Ordering::Relaxed);
        if now == last {
            shared.done.cancel();
            return;
        }
        last = now;
    }
}

async fn run_member(
    client: Client,
    plan: ConsumePlan,
    shared: Arc<Shared>,
    progress: ProgressBar,
) -> anyhow::Result<()> {
    let config = PullConsumerConfig {
        start: StartPosition::Earliest,
        max_messages: plan.max_messages.max(1),
        max_bytes: 4 * 1024 * 1024,
        max_wait: Duration::from_millis(200),
        ..PullConsumerConfig::default()
    };
    let mut consumer = client
        .pull_consumer_with(&plan.topic, &plan.group, config)
        .await?;
    if let Some(ready) = &plan.ready {
        let _ = ready.send(());
    }
    let take = |record: herald_client::PulledRecord| record.record.payload;
    let read = verify(
        &mut consumer,
        PullConsumer::has_ready,
        take,
        &plan,
        &shared,
        &progress,
    );
    let result = read.await;
    consumer.close().await?;
    result
}

async fn run_subscriber(
    client: Client,
    plan: ConsumePlan,
    shared: Arc<Shared>,
    progress: ProgressBar,
) -> anyhow::Result<()> {
    let config = PushConsumerConfig {
        prefetch: plan.max_messages.max(1),
        ..PushConsumerConfig::default()
    };
    let mut consumer = client
        .push_consumer_with(&plan.topic, &plan.group, config)
        .await?;
    if let Some(ready) = &plan.ready {
        let _ = ready.send(());
    }
    let take = |delivery: herald_client::Delivery| {
        let payload = delivery.record.payload.clone();
        delivery.ack();
        payload
    };
    let read = verify(
        &mut consumer,
        PushConsumer::has_ready,
        take,
        &plan,
        &shared,
        &progress,
    );
    let result = read.await;
    consumer.close().await?;
    result
}

/// Reads `consumer` until every expected message arrived (or the run stalled), checking
/// payloads a chunk at a time: `take` turns an item into its payload (answering it if it
/// must be), `has_ready` says whether more is in hand without waiting.
async fn verify<S, T>(
    consumer: &mut S,
    has_ready: impl Fn(&S) -> bool,
    mut take: impl FnMut(T) -> Bytes,
    plan: &ConsumePlan,
    shared: &Shared,
    progress: &ProgressBar,
) -> anyhow::Result<()>
where
    S: futures::Stream<Item = herald_client::Result<T>> + Unpin,
{
    let mut pending = Vec::with_capacity(CHECK_EVERY);
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            _ = shared.done.cancelled() => break,
        };
        match next {
            Some(Ok(item)) => pending.push(payload::decode(&take(item))),
            Some(Err(err)) => {
                check(plan, shared, &pending, progress);
                return Err(err.into());
            }
            None => break,
        }
        if pending.len() >= CHECK_EVERY || !has_ready(consumer) {
            check(plan, shared, &pending, progress);
            pending.clear();
        }
    }
    check(plan, shared, &pending, progress);
    Ok(())
}

/// Records checked together, so members take the shared verifier's lock once per chunk.
const CHECK_EVERY: usize = 1024;

/// Verifies and counts handed-out records, by their payloads' headers (`None`: a payload
/// no bench wrote).
pub(super) fn check(
    plan: &ConsumePlan,
    shared: &Shared,
    headers: &[Option<(u32, u64, u64)>],
    progress: &ProgressBar,
) {
    if headers.is_empty() {
        return;
    }
    let now = payload::now_ns();
    let mut delivery = plan
        .delivery
        .as_ref()
        .map(|d| d.lock().unwrap_or_else(|e| e.into_inner()));
    let mut verifier = shared.verifier.lock().unwrap_or_else(|e| e.into_inner());
    for header in headers {
        match *header {
            Some((producer, sequence, sent_ns)) => {
                verifier.record(producer, sequence);
                if let Some(delivery) = &mut delivery {
                    delivery.saturating_record((now.saturating_sub(sent_ns) / 1000).max(1));
                }
            }
            None => verifier.record_foreign(),
        }
    }
    let count = headers.len() as u64;
    progress.inc(count);
    shared.received.fetch_add(count, Ordering::Relaxed);
    if verifier.complete() {
        shared.done.cancel();
    }
}
