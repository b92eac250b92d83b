//! Dead, frozen and cut-off peers are detected within the session timeout plus one
//! heartbeat interval, and their work goes to the living.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_client::{
    Client, ConnectOptions, PullConsumerConfig, PushConsumerConfig, Reconnect, Record,
};
use herald_suite::{binary, disconnected, reconnected, TestBroker};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

/// The session timeout the frozen and cut-off clients ask for, and the heartbeat interval
/// that comes with it.
const TIMEOUT: Duration = Duration::from_millis(1500);
const INTERVAL: Duration = Duration::from_millis(500);

async fn publish(client: &Client, topic: &str, from: usize, count: usize) {
    let records = (from..from + count)
        .map(|i| Record::new(format!("r{i}")).with_key(format!("k{i}")))
        .collect();
    client.producer().send_batch(topic, records).await.unwrap();
}

/// A `herald consume` process asking for [`TIMEOUT`], with its stdout lines readable.
fn spawn_consumer(broker: &TestBroker, args: &[&str]) -> Child {
    Command::new(binary("herald"))
        .arg("--broker")
        .arg(broker.addr().to_string())
        .arg("consume")
        .args(args)
        .args(["--session-timeout-ms", "1500", "--idle-timeout-ms", "60000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn signal(child: &Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([name, &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_push_consumer_loses_its_deliveries_after_the_session_timeout() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("tasks", 1).await.unwrap();
    let mut frozen = spawn_consumer(
        &broker,
        &[
            "tasks",
            "--group",
            "g",
            "--mode",
            "push",
            "--prefetch",
            "100",
        ],
    );
    wait_until("the subscription", Duration::from_secs(10), async || {
        admin
            .describe_group("tasks", "g")
            .await
            .is_ok_and(|info| info.members.len() == 1)
    })
    .await;
    signal(&frozen, "-STOP");
    publish(&admin, "tasks", 0, 50).await;
    wait_until(
        "deliveries to the frozen one",
        Duration::from_secs(5),
        async || {
            let info = admin.describe_group("tasks", "g").await.unwrap();
            info.members.iter().map(|m| m.in_flight).sum::<u32>() == 50
        },
    )
    .await;
    let frozen_at = Instant::now();

    let mut healthy = broker
        .client()
        .await
        .push_consumer_with(
            "tasks",
            "g",
            PushConsumerConfig {
                prefetch: 100,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 50 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), healthy.next())
            .await
            .expect("the frozen consumer's deliveries come back")
            .unwrap()
            .unwrap();
        assert!(delivery.redelivered);
        got.insert(delivery.offset);
        delivery.ack();
    }
    let took = frozen_at.elapsed();
    assert!(
        took >= TIMEOUT - INTERVAL,
        "moved before the session timed out: {took:?}"
    );
    assert!(
        took < TIMEOUT + INTERVAL + Duration::from_secs(2),
        "{took:?}"
    );
    healthy.flush_acks().await.unwrap();
    let info = admin.describe_group("tasks", "g").await.unwrap();
    assert_eq!(
        info.partitions[0].lag, 0,
        "every record was delivered to someone"
    );
    signal(&frozen, "-CONT");
    frozen.kill().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_pull_member_loses_its_partitions_and_consumption_resumes() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("jobs", 2).await.unwrap();
    publish(&admin, "jobs", 0, 100).await;
    let mut frozen = spawn_consumer(&broker, &["jobs", "--group", "g", "--mode", "pull"]);
    let mut lines = BufReader::new(frozen.stdout.take().unwrap()).lines();
    for _ in 0..100 {
        tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the first member prints everything")
            .unwrap()
            .unwrap();
    }
    // It commits after printing; then it freezes.
    wait_until("its commits", Duration::from_secs(5), async || {
        let info = admin.describe_group("jobs", "g").await.unwrap();
        info.partitions.iter().all(|p| p.lag == 0)
    })
    .await;
    signal(&frozen, "-STOP");
    let frozen_at = Instant::now();
    publish(&admin, "jobs", 100, 50).await;

    let config = PullConsumerConfig {
        sync_interval: Duration::from_millis(50),
        max_wait: Duration::from_millis(100),
        ..Default::default()
    };
    let mut healthy = broker
        .client()
        .await
        .pull_consumer_with("jobs", "g", config)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 50 {
        let record = tokio::time::timeout(Duration::from_secs(10), healthy.next())
            .await
            .expect("the frozen member's partitions move")
            .unwrap()
            .unwrap();
        got.push(String::from_utf8(record.record.payload.to_vec()).unwrap());
    }
    let took = frozen_at.elapsed();
    assert!(
        took >= TIMEOUT - INTERVAL,
        "moved before the session timed out: {took:?}"
    );
    assert_eq!(healthy.membership().partitions, vec![0, 1]);
    got.sort();
    let mut expected: Vec<String> = (100..150).map(|i| format!("r{i}")).collect();
    expected.sort();
    assert_eq!(got, expected, "resumed exactly at the committed offsets");
    healthy.close().await.unwrap();
    signal(&frozen, "-CONT");
    frozen.kill().await.unwrap();
    broker.stop().await;
}

/// A TCP proxy that can silently stop forwarding, keeping both connections open.
struct Proxy {
    addr: std::net::SocketAddr,
    blackhole: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let blackhole = Arc::new(AtomicBool::new(false));
        let hole = Arc::clone(&blackhole);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(target).await.unwrap();
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, Arc::clone(&hole)));
                tokio::spawn(forward(server_read, client_write, Arc::clone(&hole)));
            }
        });
        Proxy { addr, blackhole }
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    blackhole: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if blackhole.load(Ordering::Relaxed) {
            continue; // swallowed: neither side hears anything more, and no FIN is sent
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_goes_silent_is_noticed_by_both_sides() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("wire", 1).await.unwrap();
    let proxy = Proxy::start(broker.addr()).await;
    // Without reconnecting, so the stream and later calls fail once the client notices
    // (`a_client_reconnects_through_a_proxy_that_went_silent` covers reconnecting).
    let options = ConnectOptions {
        session_timeout: Some(TIMEOUT),
        reconnect: None,
        ..Default::default()
    };
    let client = Client::connect_with(proxy.addr, options).await.unwrap();
    assert_eq!(
        client.session().heartbeat_interval_ms as u128,
        INTERVAL.as_millis()
    );
    let mut consumer = client.push_consumer("wire", "g").await.unwrap();
    let info = admin.describe_group("wire", "g").await.unwrap();
    assert_eq!(info.members.len(), 1);

    proxy.blackhole.store(true, Ordering::Relaxed);
    let cut_at = Instant::now();
    let limit = TIMEOUT + INTERVAL + Duration::from_millis(500);
    // The client: its stream ends with an error, and calls fail.
    let ended = tokio::time::timeout(limit + Duration::from_secs(1), consumer.next())
        .await
        .expect("the client notices");
    assert!(matches!(ended, Some(Err(_))), "{ended:?}");
    let client_took = cut_at.elapsed();
    assert!(client.list_topics().await.is_err());
    // The broker: the subscription is gone.
    wait_until(
        "the broker to notice",
        limit + Duration::from_secs(1),
        async || {
            let info = admin.describe_group("wire", "g").await.unwrap();
            info.members.is_empty()
        },
    )
    .await;
    let broker_took = cut_at.elapsed();
    for (side, took) in [("client", client_took), ("broker", broker_took)] {
        assert!(took >= TIMEOUT - INTERVAL, "{side} gave up early: {took:?}");
        assert!(
            took <= limit + Duration::from_millis(500),
            "{side} took {took:?}"
        );
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reconnects_through_a_proxy_that_went_silent() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("wire", 1).await.unwrap();
    let proxy = Proxy::start(broker.addr()).await;
    let options = ConnectOptions {
        session_timeout: Some(TIMEOUT),
        connect_timeout: Duration::from_millis(500),
        reconnect: Some(Reconnect {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            max_attempts: None,
        }),
        ..Default::default()
    };
    let client = Client::connect_with(proxy.addr, options).await.unwrap();
    let mut events = client.events();
    let mut consumer = client.push_consumer("wire", "g").await.unwrap();
    publish(&admin, "wire", 0, 1).await;
    let first = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    first.ack();
    consumer.flush_acks().await.unwrap();

    proxy.blackhole.store(true, Ordering::Relaxed);
    let cut_at = Instant::now();
    let limit = TIMEOUT + INTERVAL + Duration::from_millis(500);
    let reason = disconnected(&mut events, limit).await;
    let took = cut_at.elapsed();
    // Whichever side times out first: the client itself, or the broker (its close
    // reaches the client as the proxy's FIN).
    assert!(
        reason.contains("nothing heard") || reason.contains("closed the connection"),
        "{reason}"
    );
    assert!(took >= TIMEOUT - INTERVAL && took <= limit, "{took:?}");
    assert!(!client.connection_state().connected);
    // Attempts through the silent proxy time out; once it forwards again, one gets through.
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.blackhole.store(false, Ordering::Relaxed);
    assert_eq!(reconnected(&mut events, Duration::from_secs(10)).await, 2);
    // The push consumer subscribed again and gets what is published now.
    publish(&admin, "wire", 1, 1).await;
    let next = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("deliveries resume")
        .unwrap()
        .unwrap();
    assert_eq!(&next.record.payload[..], b"r1");
    next.ack();
    consumer.close().await.unwrap();
    broker.stop().await;
}
