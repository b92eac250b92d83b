//! Server-Sent Events from the HTTP gateway, read with `curl`: records with cursors,
//! resuming with `Last-Event-ID` after a dropped connection, a reset past retention.

use std::time::Duration;

use herald_broker::config::Listen;
use herald_client::{Client, Record, Retention};
use herald_suite::TestBroker;
use serde_json::Value;
use tokio::process::Command;

async fn gateway() -> TestBroker {
    TestBroker::start_with(|c| {
        c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
        c.retention_check_ms = 20;
    })
    .await
}

/// One SSE event: its fields.
#[derive(Debug, Default, Clone)]
struct Sse {
    event: String,
    id: String,
    data: String,
    retry: Option<u64>,
}

/// Reads the stream at `path` with `curl -N` for `seconds`, with `headers`; returns its events.
async fn listen(broker: &TestBroker, path: &str, headers: &[&str], seconds: u32) -> Vec<Sse> {
    let mut command = Command::new("curl");
    command.args(["-sN", "--max-time", &seconds.to_string()]);
    for header in headers {
        command.args(["-H", header]);
    }
    let out = command
        .arg(format!("http://{}{path}", broker.http_addr()))
        .output()
        .await
        .expect("curl runs");
    // curl ends with "operation timed out" (28): the stream itself never ends.
    let text = String::from_utf8(out.stdout).unwrap();
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = Sse::default();
            for line in block.lines() {
                match line.split_once(':') {
                    Some(("event", v)) => event.event = v.trim().to_string(),
                    Some(("id", v)) => event.id = v.trim().to_string(),
                    Some(("data", v)) => event.data = v.trim().to_string(),
                    Some(("retry", v)) => event.retry = v.trim().parse().ok(),
                    _ => {}
                }
            }
            (!event.event.is_empty()).then_some(event)
        })
        .collect()
}

async fn publish(client: &Client, topic: &str, from: usize, count: usize) {
    let records = (from..from + count)
        .map(|i| Record::new(format!("e{i}")))
        .collect();
    client.producer().send_batch(topic, records).await.unwrap();
}

fn values(events: &[Sse]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "record")
        .map(|e| {
            let record: Value = serde_json::from_str(&e.data).unwrap();
            record["value"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_stream_resumes_after_the_last_event_it_saw() {
    let broker = gateway().await;
    let client = broker.client().await;
    client.create_topic("feed", 2).await.unwrap();
    publish(&client, "feed", 0, 6).await;

    let first = listen(&broker, "/v1/topics/feed/events?from=earliest", &[], 2).await;
    let hello = &first[0];
    assert_eq!(hello.event, "hello");
    let retry = hello.retry.expect("a retry: field");
    assert!((1000..5000).contains(&retry), "jittered retry: {retry}");
    let mut seen = values(&first);
    seen.sort();
    assert_eq!(seen, (0..6).map(|i| format!("e{i}")).collect::<Vec<_>>());
    let last = first.last().unwrap();
    assert_eq!(last.event, "record");

    // Dropped; more records arrive; the browser comes back with the last id it saw.
    publish(&client, "feed", 6, 4).await;
    let header = format!("Last-Event-ID: {}", last.id);
    let resumed = listen(&broker, "/v1/topics/feed/events", &[&header], 2).await;
    let mut again = values(&resumed);
    again.sort();
    assert_eq!(
        again,
        (6..10).map(|i| format!("e{i}")).collect::<Vec<_>>(),
        "exactly the rest"
    );

    // The same from the query, for clients that cannot set headers.
    let path = format!(
        "/v1/topics/feed/events?last_event_id={}",
        last.id.replace(',', "%2C")
    );
    let by_query = listen(&broker, &path, &[], 2).await;
    assert_eq!(values(&by_query).len(), 4);

    // `from=latest` sends only what arrives after it connected.
    let latest = {
        let broker_addr = broker.http_addr();
        tokio::spawn(async move {
            let out = Command::new("curl")
                .args(["-sN", "--max-time", "3"])
                .arg(format!(
                    "http://{broker_addr}/v1/topics/feed/events?from=latest&partition=1"
                ))
                .output()
                .await
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    client
        .producer()
        .send_batch("feed", vec![Record::new("late").with_key("k")])
        .await
        .unwrap();
    let text = latest.await.unwrap();
    let records = text.matches("event: record").count();
    assert!(records <= 1, "only what came after: {text}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_retention_gets_a_reset_to_where_it_restarts() {
    let broker = gateway().await;
    let client = broker.client().await;
    let retention = Retention {
        max_age_ms: 0,
        max_bytes: 0,
        max_messages: 5,
    };
    client
        .create_topic_with("short", 1, retention)
        .await
        .unwrap();
    for i in 0..30 {
        publish(&client, "short", i * 10, 10).await;
    }
    let mut first = 0;
    for _ in 0..500 {
        first = client.describe_topic("short").await.unwrap().partitions[0].first_offset;
        if first > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(first > 0, "retention trimmed");
    let events = listen(
        &broker,
        "/v1/topics/short/events",
        &["Last-Event-ID: 0:0"],
        2,
    )
    .await;
    let reset = events
        .iter()
        .find(|e| e.event == "reset")
        .expect("a reset event");
    let point: Value = serde_json::from_str(&reset.data).unwrap();
    assert_eq!(point["partition"], 0);
    assert!(point["offset"].as_u64().unwrap() >= first, "{point}");
    let records = events.iter().filter(|e| e.event == "record").count();
    assert_eq!(records as u64, 300 - point["offset"].as_u64().unwrap());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_are_refused_with_the_error_shape() {
    let broker = gateway().await;
    let client = broker.client().await;
    client.create_topic("feed", 1).await.unwrap();
    let get = |path: &'static str| {
        let addr = broker.http_addr();
        async move {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-w",
                    "\n%{http_code}",
                    &format!("http://{addr}{path}"),
                ])
                .output()
                .await
                .unwrap();
            let text = String::from_utf8(out.stdout).unwrap();
            let (body, status) = text.rsplit_once('\n').unwrap();
            (
                status.parse::<u16>().unwrap(),
                serde_json::from_str::<Value>(body).unwrap(),
            )
        }
    };
    let (status, body) = get("/v1/topics/missing/events").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("UnknownTopic"))
    );
    let (status, body) = get("/v1/topics/feed/events?partition=3").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("UnknownPartition"))
    );
    let (status, _) = get("/v1/topics/feed/events?from=soon").await;
    assert_eq!(status, 400);
    let (status, _) = get("/v1/topics/feed/events?last_event_id=nonsense").await;
    assert_eq!(status, 400);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_does_not_hold_up_a_shutdown() {
    let broker = gateway().await;
    let client = broker.client().await;
    client.create_topic("feed", 3).await.unwrap();
    let addr = broker.http_addr();
    let stream = tokio::spawn(async move {
        Command::new("curl")
            .args(["-sN", "--max-time", "30"])
            .arg(format!("http://{addr}/v1/topics/feed/events"))
            .output()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = std::time::Instant::now();
    broker.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopping.elapsed()
    );
    let out = tokio::time::timeout(Duration::from_secs(10), stream)
        .await
        .expect("the stream ended with the broker")
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("event: hello"));
}
