//! The client rides out broker restarts: it connects again with jittered backoff, the
//! producer's resent batches are stored exactly once, and consumers pick up where their
//! group left off.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_client::{
    Client, ConnectOptions, ConnectionEvent, PullConsumerConfig, PushConsumerConfig, Reconnect,
    Record,
};
use herald_suite::{disconnected, reconnected, BrokerProcess};
use tokio::sync::broadcast;

/// Quick reconnection, so the tests do not wait on the default backoff.
fn quick() -> ConnectOptions {
    ConnectOptions {
        reconnect: Some(Reconnect {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(200),
            max_attempts: None,
        }),
        ..Default::default()
    }
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every payload of every partition of `topic`, in offset order.
async fn payloads(client: &Client, topic: &str) -> BTreeMap<u32, Vec<String>> {
    let mut all: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (partition, record) in herald_suite::read_all(client, topic).await {
        let payloads = all.entry(partition).or_default();
        assert_eq!(record.offset, payloads.len() as u64, "offsets are dense");
        payloads.push(String::from_utf8(record.record.payload.to_vec()).unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_stores_every_record_exactly_once_across_two_broker_kills() {
    const RECORDS: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--fsync", "always"];
    let mut broker = BrokerProcess::start(&data, "127.0.0.1:0", &args).await;
    let addr = broker.addr();
    let client = Client::connect_with(addr, quick()).await.unwrap();
    let mut events = client.events();
    client.create_topic("exact", 4).await.unwrap();

    let producer = client.producer();
    let confirmed = Arc::new(AtomicUsize::new(0));
    let (pending_tx, mut pending_rx) = tokio::sync::mpsc::unbounded_channel();
    let enqueue = tokio::spawn(async move {
        for i in 0..RECORDS {
            // Paced, so that both kills land while records are on their way.
            if i % 1000 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let pending = producer
                .enqueue("exact", Record::new(format!("{i:06}")))
                .await
                .unwrap();
            pending_tx.send((i, pending)).unwrap();
        }
    });
    let counter = Arc::clone(&confirmed);
    let confirms = tokio::spawn(async move {
        let mut confirms = Vec::with_capacity(RECORDS);
        while let Some((i, pending)) = pending_rx.recv().await {
            let confirm = pending
                .await
                .unwrap_or_else(|err| panic!("record {i} failed: {err}"));
            confirms.push((i, confirm));
            counter.fetch_add(1, Ordering::Relaxed);
        }
        confirms
    });

    for at in [RECORDS * 3 / 10, RECORDS * 65 / 100] {
        wait_until("confirms before the kill", Duration::from_secs(120), || {
            confirmed.load(Ordering::Relaxed) >= at
        })
        .await;
        broker.kill().await;
        let at_kill = confirmed.load(Ordering::Relaxed);
        assert!(at_kill < RECORDS, "killed mid-stream ({at_kill} confirmed)");
        tokio::time::sleep(Duration::from_millis(100)).await;
        broker = BrokerProcess::start(&data, &addr.to_string(), &args).await;
    }
    enqueue.await.unwrap();
    let confirms = tokio::time::timeout(Duration::from_secs(120), confirms)
        .await
        .expect("every record confirmed")
        .unwrap();
    assert_eq!(confirms.len(), RECORDS);
    let mut breaks = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let ConnectionEvent::Disconnected { reason, .. } = event {
            breaks.push(reason);
        }
    }
    eprintln!("connection breaks: {breaks:?}");
    assert!(
        breaks.len() >= 2,
        "each kill broke the connection: {breaks:?}"
    );
    assert!(
        client.connection_state().epoch > breaks.len() as u64,
        "the client came back after each break"
    );

    let stored = payloads(&client, "exact").await;
    let total: usize = stored.values().map(Vec::len).sum();
    assert_eq!(total, RECORDS, "every record stored once, none twice");
    let mut seen = BTreeSet::new();
    for (partition, payloads) in &stored {
        let numbers: Vec<usize> = payloads.iter().map(|p| p.parse().unwrap()).collect();
        assert!(
            numbers.windows(2).all(|w| w[0] < w[1]),
            "partition {partition} is in the order records were sent"
        );
        seen.extend(numbers);
    }
    assert_eq!(seen, (0..RECORDS).collect::<BTreeSet<_>>());
    for (i, confirm) in confirms {
        let payload = &stored[&confirm.partition][confirm.offset as usize];
        assert_eq!(
            payload,
            &format!("{i:06}"),
            "record {i} is where its confirm says"
        );
    }
    broker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_cut_at_once_come_back_spread_over_time() {
    const CLIENTS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, "127.0.0.1:0", &[]).await;
    let addr = broker.addr();
    // Default reconnection settings: this is what an application gets.
    let mut clients = Vec::with_capacity(CLIENTS);
    let (back_tx, mut back) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..CLIENTS {
        let client = Client::connect(addr).await.unwrap();
        let mut events = client.events();
        let back_tx = back_tx.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(ConnectionEvent::Connected { epoch: 2, .. }) => {
                        let _ = back_tx.send(Instant::now());
                        return;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        clients.push(client);
    }

    broker.kill().await;
    let cut = Instant::now();
    let broker = BrokerProcess::start(&data, &addr.to_string(), &[]).await;
    let mut times = Vec::with_capacity(CLIENTS);
    while times.len() < CLIENTS {
        let at = tokio::time::timeout(Duration::from_secs(60), back.recv())
            .await
            .expect("every client reconnects")
            .unwrap();
        times.push(at.duration_since(cut));
    }
    times.sort();
    let busiest = (0..times.len())
        .map(|i| times[i..].partition_point(|t| *t < times[i] + Duration::from_millis(100)))
        .max()
        .unwrap();
    let spread = times[times.len() - 1] - times[0];
    eprintln!(
        "{CLIENTS} clients back between {:?} and {:?}; at most {busiest} within any 100 ms",
        times[0],
        times[times.len() - 1]
    );
    assert!(
        busiest <= CLIENTS / 2,
        "{busiest} of {CLIENTS} clients came back within the same 100 ms"
    );
    assert!(
        spread >= Duration::from_millis(300),
        "came back within {spread:?}"
    );
    for client in &clients {
        assert!(client.connection_state().connected);
    }
    clients[0].list_topics().await.unwrap();
    broker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_carry_on_after_a_broker_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(&data, "127.0.0.1:0", &[]).await;
    let addr = broker.addr();
    let admin = Client::connect_with(addr, quick()).await.unwrap();
    admin.create_topic("work", 2).await.unwrap();
    let publish = |from: usize| {
        let admin = admin.clone();
        async move {
            let records = (from..from + 100)
                .map(|i| Record::new(format!("{i}")).with_key(format!("k{i}")))
                .collect();
            admin.producer().send_batch("work", records).await.unwrap();
        }
    };
    publish(0).await;

    let pusher = Client::connect_with(addr, quick()).await.unwrap();
    let config = PushConsumerConfig {
        prefetch: 10,
        ..Default::default()
    };
    let mut push = pusher
        .push_consumer_with("work", "p", config)
        .await
        .unwrap();
    let puller = Client::connect_with(addr, quick()).await.unwrap();
    let config = PullConsumerConfig {
        sync_interval: Duration::from_millis(50),
        ..Default::default()
    };
    let mut pull = puller
        .pull_consumer_with("work", "q", config)
        .await
        .unwrap();
    let mut pushed = BTreeSet::new();
    let mut pulled = BTreeSet::new();
    let limit = Duration::from_secs(10);
    while pushed.len() < 50 {
        let delivery = tokio::time::timeout(limit, push.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        pushed.insert(delivery.record.payload.clone());
        delivery.ack();
    }
    while pulled.len() < 50 {
        let record = tokio::time::timeout(limit, pull.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        pulled.insert(record.record.payload);
    }
    push.flush_acks().await.unwrap();
    pull.commit().await.unwrap();

    broker.kill().await;
    let broker = BrokerProcess::start(&data, &addr.to_string(), &[]).await;
    publish(100).await;

    // Every record reaches each group; those not answered before the kill come again.
    while pushed.len() < 200 {
        let delivery = tokio::time::timeout(limit, push.next())
            .await
            .expect("push deliveries resume")
            .unwrap()
            .unwrap();
        pushed.insert(delivery.record.payload.clone());
        delivery.ack();
    }
    while pulled.len() < 200 {
        let record = tokio::time::timeout(limit, pull.next())
            .await
            .expect("pull consumption resumes")
            .unwrap()
            .unwrap();
        pulled.insert(record.record.payload);
    }
    assert_eq!(pusher.connection_state().epoch, 2);
    assert_eq!(puller.connection_state().epoch, 2);
    for group in ["p", "q"] {
        let info = admin.describe_group("work", group).await.unwrap();
        assert_eq!(info.members.len(), 1, "group {group}: {info:?}");
    }
    push.close().await.unwrap();
    pull.close().await.unwrap();
    broker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_sends_clients_away_without_a_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = herald_broker::Config::ephemeral(dir.path().join("data"));
    let first = herald_broker::Broker::start(config.clone()).await.unwrap();
    let addr = first.local_addr();
    let client = Client::connect(addr).await.unwrap();
    let timeout = Duration::from_millis(u64::from(client.session().session_timeout_ms));
    let mut events = client.events();

    let stopping = Instant::now();
    first.shutdown().await.unwrap();
    let reason = disconnected(&mut events, Duration::from_secs(5)).await;
    assert!(reason.contains("going away"), "{reason}");
    assert!(
        stopping.elapsed() < timeout / 2,
        "told at once, not after the session timeout"
    );
    // It waits at least as long as the broker asked (`GoingAway` says 1 s).
    match events.recv().await.unwrap() {
        ConnectionEvent::Reconnecting { attempt: 1, delay } => {
            assert!(delay >= Duration::from_secs(1), "{delay:?}");
        }
        other => panic!("expected a reconnection attempt, got {other:?}"),
    }
    let mut config = config;
    config.listen = addr;
    let second = herald_broker::Broker::start(config).await.unwrap();
    assert_eq!(reconnected(&mut events, Duration::from_secs(10)).await, 2);
    client.list_topics().await.unwrap();
    second.shutdown().await.unwrap();
}
