//! The WebSocket gateway, driven by Python's `websockets` package (installed by `.ci/run`)
//! and checked from the broker's side with the Rust client.

use std::time::Duration;

use herald_broker::config::Listen;
use herald_suite::{python_script, TestBroker};
use tokio::process::Command;

async fn gateway() -> TestBroker {
    TestBroker::start_with(|c| {
        c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// A Python WebSocket consumer of group `workers` on topic `jobs` holding `count`
/// deliveries unanswered (and reading nothing more) once this returns.
async fn hold(broker: &TestBroker, count: u32) -> tokio::process::Child {
    hold_with_window(broker, count, count).await
}

/// `hold` with a window of `prefetch`: the broker may send that many.
async fn hold_with_window(broker: &TestBroker, count: u32, prefetch: u32) -> tokio::process::Child {
    use tokio::io::AsyncBufReadExt;
    let url = format!("ws://{}/v1/ws", broker.http_addr());
    let mut holder = Command::new("python3")
        .arg(python_script("ws_hold.py"))
        .args([
            &url,
            "jobs",
            "workers",
            &count.to_string(),
            &prefetch.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(holder.stdout.take().unwrap()).lines();
    let said = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the consumer takes its window")
        .unwrap();
    assert_eq!(said, Some(format!("held {count}")));
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_websocket_session_publishes_tails_consumes_and_answers() {
    let broker = gateway().await;
    let client = broker.client().await;
    client.create_topic("jobs", 1).await.unwrap();
    let url = format!("ws://{}/v1/ws", broker.http_addr());
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("python3")
            .arg(python_script("ws_session.py"))
            .arg(&url)
            .output(),
    )
    .await
    .expect("the session ends")
    .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The broker's view: everything the script acked is done.
    let info = client.describe_group("jobs", "workers").await.unwrap();
    assert_eq!(info.partitions[0].committed, 6, "{info:?}");
    assert_eq!(
        info.partitions[0].lag, 1,
        "the record published last: {info:?}"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_consumer_killed_mid_window_has_its_deliveries_sent_to_another() {
    use futures::StreamExt;

    let broker = gateway().await;
    let client = broker.client().await;
    client.create_topic("jobs", 1).await.unwrap();
    let records = (0..10)
        .map(|i| herald_client::Record::new(format!("j{i}")))
        .collect();
    client.producer().send_batch("jobs", records).await.unwrap();

    let mut holder = hold(&broker, 10).await;
    holder.kill().await.unwrap();

    // Its deliveries reach another consumer at once, long before the 30 s ack deadline.
    let config = herald_client::PushConsumerConfig {
        prefetch: 100,
        ..Default::default()
    };
    let mut other = client
        .push_consumer_with("jobs", "workers", config)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    for _ in 0..10 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), other.next())
            .await
            .expect("redelivered at once")
            .unwrap()
            .unwrap();
        assert_eq!(delivery.delivery_count, 2, "it was delivered before");
        delivery.ack();
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    other.flush_acks().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_consumer_that_stops_reading_holds_no_more_than_its_window() {
    use futures::StreamExt;

    let broker = gateway().await;
    let client = broker.client().await;
    client.create_topic("jobs", 1).await.unwrap();
    let records = (0..50)
        .map(|i| herald_client::Record::new(format!("j{i}")))
        .collect();
    client.producer().send_batch("jobs", records).await.unwrap();

    // Takes its window of 5, then reads nothing more and answers nothing.
    let mut holder = hold(&broker, 5).await;

    // Everyone else is served: another consumer gets the other 45 at once.
    let config = herald_client::PushConsumerConfig {
        prefetch: 100,
        ..Default::default()
    };
    let mut other = client
        .push_consumer_with("jobs", "workers", config)
        .await
        .unwrap();
    for _ in 0..45 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), other.next())
            .await
            .expect("the rest flows to the other consumer")
            .unwrap()
            .unwrap();
        assert_eq!(delivery.delivery_count, 1);
        delivery.ack();
    }
    other.flush_acks().await.unwrap();
    let info = client.describe_group("jobs", "workers").await.unwrap();
    let held: Vec<u32> = info.members.iter().map(|m| m.in_flight).collect();
    assert!(
        held.contains(&5),
        "the silent socket holds its window: {info:?}"
    );
    assert_eq!(
        info.partitions[0].lag, 5,
        "only its window is left: {info:?}"
    );
    holder.kill().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_websocket_with_full_buffers_ends_after_the_session_timeout() {
    use futures::StreamExt;

    let broker = TestBroker::start_with(|c| {
        c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
        c.session_timeout_ms = 1_500;
    })
    .await;
    let client = broker.client().await;
    client.create_topic("jobs", 1).await.unwrap();
    // 24 MiB: far more than the socket buffers between the broker and a frozen peer hold.
    let padding = "x".repeat(64 * 1024);
    let producer = client.producer();
    for batch in 0..8 {
        let records = (0..48)
            .map(|i| herald_client::Record::new(format!("j{}-{padding}", batch * 48 + i)))
            .collect();
        producer.send_batch("jobs", records).await.unwrap();
    }

    // It takes one delivery and freezes with a window of all 384: the broker's writer
    // fills the socket and stalls, and no pong comes back.
    let holder = hold_with_window(&broker, 1, 384).await;
    let pid = holder.id().unwrap().to_string();
    let frozen = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status();
    assert!(frozen.unwrap().success());

    // After the session timeout its socket ends, and another consumer gets everything.
    let config = herald_client::PushConsumerConfig {
        prefetch: 400,
        ..Default::default()
    };
    let mut other = client
        .push_consumer_with("jobs", "workers", config)
        .await
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 384 {
        let delivery = tokio::time::timeout(Duration::from_secs(20), other.next())
            .await
            .expect("the frozen socket's deliveries come back")
            .unwrap()
            .unwrap();
        seen.insert(delivery.offset);
        delivery.ack();
    }
    other.flush_acks().await.unwrap();
    let info = client.describe_group("jobs", "workers").await.unwrap();
    assert_eq!(
        info.members.len(),
        1,
        "the frozen socket's session ended: {info:?}"
    );
    // The stalled writer let go: the broker stops without waiting on it.
    tokio::time::timeout(Duration::from_secs(10), broker.stop())
        .await
        .expect("a stalled socket does not hold up a stop");
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
}
