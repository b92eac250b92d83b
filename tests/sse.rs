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
    parse_events(&String::from_utf8(out.stdout).unwrap())
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

/// A `curl -N` reading the stream at `path` in the background, until it has seen a record
/// whose value starts with `last` (then it is killed) or 30 s pass.
struct Reader {
    pid: u32,
    events: tokio::task::JoinHandle<Vec<Sse>>,
}

impl Reader {
    fn start(broker: &TestBroker, path: &str, last: &str) -> Reader {
        use tokio::io::AsyncReadExt;
        let mut child = Command::new("curl")
            .args(["-sN", "--max-time", "30"])
            .arg(format!("http://{}{path}", broker.http_addr()))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("curl runs");
        let pid = child.id().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let last = format!("\"value\":\"{last}");
        let events = tokio::spawn(async move {
            let mut text = Vec::new();
            let mut chunk = vec![0; 64 * 1024];
            loop {
                let n = stdout.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                text.extend_from_slice(&chunk[..n]);
                // Done once the last record's event is whole.
                let seen = String::from_utf8_lossy(&text[text.len().saturating_sub(128 * 1024)..]);
                if seen
                    .rfind(&last)
                    .is_some_and(|at| seen[at..].contains("\n\n"))
                {
                    break;
                }
            }
            let _ = child.kill().await;
            parse_events(&String::from_utf8_lossy(&text))
        });
        Reader { pid, events }
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([name, &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// The whole events of `text` (one cut off by a closed connection is left out).
fn parse_events(text: &str) -> Vec<Sse> {
    let whole = text.rsplit_once("\n\n").map_or("", |(whole, _)| whole);
    whole
        .split("\n\n")
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

/// The records' values up to their first `-`, each event's cursor checked to name the
/// offset after its record.
fn numbered(events: &[Sse]) -> Vec<String> {
    for e in events.iter().filter(|e| e.event == "record") {
        let record: Value = serde_json::from_str(&e.data).unwrap();
        let offset = record["offset"].as_u64().unwrap();
        assert_eq!(
            e.id,
            format!("0:{}", offset + 1),
            "the cursor after the record"
        );
    }
    values(events)
        .iter()
        .map(|v| v.split('-').next().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_on_one_partition_share_its_reads_and_a_stalled_one_catches_up() {
    let broker = gateway().await;
    let client = broker.client().await;
    client.create_topic("wide", 1).await.unwrap();
    publish(&client, "wide", 0, 5).await;
    // Enough bytes to fill a stalled reader's socket buffers many times over, each record
    // its own append (and so its own read for the streams that follow the tail).
    let (records, padding) = (600, "x".repeat(32 * 1024));
    let last = format!("e{}-", 5 + records - 1);
    let old = Reader::start(&broker, "/v1/topics/wide/events", &last);
    let stalled = Reader::start(&broker, "/v1/topics/wide/events", &last);
    let new = Reader::start(&broker, "/v1/topics/wide/events?from=latest", &last);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stalled.signal("-STOP");
    let producer = client.producer();
    for i in 5..5 + records {
        let record = Record::new(format!("e{i}-{padding}"));
        producer.send("wide", record).await.unwrap();
    }
    stalled.signal("-CONT");

    let every: Vec<String> = (0..5 + records).map(|i| format!("e{i}")).collect();
    assert_eq!(numbered(&old.events.await.unwrap()), every);
    assert_eq!(numbered(&stalled.events.await.unwrap()), every);
    assert_eq!(numbered(&new.events.await.unwrap()), every[5..].to_vec());
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_reader_stops_reading_is_closed_after_the_session_timeout() {
    let broker = TestBroker::start_with(|c| {
        c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
        c.session_timeout_ms = 1_000;
    })
    .await;
    let client = broker.client().await;
    client.create_topic("wide", 1).await.unwrap();
    let (records, padding) = (600, "x".repeat(32 * 1024));
    let last = format!("e{}-", records - 1);
    let stalled = Reader::start(&broker, "/v1/topics/wide/events", &last);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stalled.signal("-STOP");
    // Far more than the socket buffers hold: the broker's writes to it stall.
    let producer = client.producer();
    for i in 0..records {
        let record = Record::new(format!("e{i}-{padding}"));
        producer.send("wide", record).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stalled.signal("-CONT");
    // The broker closed it: the reader ends with what was buffered, short of the end
    // (curl alone would wait 30 s).
    let events = tokio::time::timeout(Duration::from_secs(20), stalled.events)
        .await
        .expect("the stream was closed")
        .unwrap();
    let got = numbered(&events);
    assert!(got.len() < records, "it was cut off: {} records", got.len());
    assert!(got.iter().enumerate().all(|(i, v)| *v == format!("e{i}")));
    broker.assert_serving().await;
    broker.stop().await;
}
