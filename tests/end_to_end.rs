//! Publish and read back through the library and through the `herald` binary.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use herald_client::{Client, FetchRequest, Record, StoredRecord};
use herald_suite::{binary, TestBroker};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const COUNT: usize = 10_000;

/// Every record of a one-partition topic, from offset 0 to its end.
async fn read_all(client: &Client, topic: &str, expected: usize) -> Vec<StoredRecord> {
    let mut records = Vec::new();
    while records.len() < expected {
        let mut request = FetchRequest::new(topic, 0, records.len() as u64);
        request.max_wait_ms = 5_000;
        let fetched = client.fetch(request).await.expect("fetch");
        assert!(
            !fetched.records.is_empty(),
            "no record at offset {}",
            records.len()
        );
        records.extend(fetched.records);
    }
    records
}

fn payload(i: usize) -> Bytes {
    // Varied sizes and every byte value, so framing mistakes cannot hide.
    let len = i % 300;
    Bytes::from(
        (0..len)
            .map(|j| ((i * 31 + j * 7) % 256) as u8)
            .collect::<Vec<u8>>(),
    )
}

#[tokio::test]
async fn library_publishes_ten_thousand_and_reads_them_back_in_order() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("lib", 1).await.unwrap();
    let producer = client.producer();
    let mut pending = Vec::with_capacity(COUNT);
    for i in 0..COUNT {
        let record = Record::new(payload(i)).with_header("i", i.to_string());
        pending.push(producer.enqueue("lib", record).await.unwrap());
    }
    for (i, confirm) in pending.into_iter().enumerate() {
        let confirm = confirm.await.unwrap();
        assert_eq!((confirm.partition, confirm.offset), (0, i as u64));
    }
    let records = read_all(&client, "lib", COUNT).await;
    assert_eq!(records.len(), COUNT);
    for (i, stored) in records.iter().enumerate() {
        assert_eq!(stored.offset, i as u64);
        assert_eq!(stored.record.payload, payload(i), "payload {i}");
        assert_eq!(
            stored.record.headers,
            vec![("i".to_string(), Bytes::from(i.to_string()))]
        );
    }
    broker.stop().await;
}

#[tokio::test]
async fn cli_publishes_ten_thousand_lines_and_consumes_them_in_order() {
    let broker = TestBroker::start().await;
    let lines: Vec<String> = (0..COUNT)
        .map(|i| format!("message {i} \u{e9}\t{}", "x".repeat(i % 50)))
        .collect();
    let mut stdin = lines.join("\n");
    stdin.push('\n');

    let mut publish = Command::new(binary("herald"))
        .args([
            "--broker",
            &broker.addr().to_string(),
            "publish",
            "cli",
            "--print-offsets",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = publish.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let published = publish.wait_with_output().await.unwrap();
    assert!(
        published.status.success(),
        "publish failed: {}",
        String::from_utf8_lossy(&published.stderr)
    );
    let offsets: Vec<String> = String::from_utf8(published.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let expected: Vec<String> = (0..COUNT).map(|i| format!("0:{i}")).collect();
    assert_eq!(offsets, expected);

    let consumed = Command::new(binary("herald"))
        .args([
            "--broker",
            &broker.addr().to_string(),
            "consume",
            "cli",
            "--group",
            "g",
            "--count",
        ])
        .arg(COUNT.to_string())
        .output()
        .await
        .unwrap();
    assert!(
        consumed.status.success(),
        "consume failed: {}",
        String::from_utf8_lossy(&consumed.stderr)
    );
    assert_eq!(String::from_utf8(consumed.stdout).unwrap(), stdin);

    // The same bytes through the library.
    let client = broker.client().await;
    let records = read_all(&client, "cli", COUNT).await;
    for (line, stored) in lines.iter().zip(&records) {
        assert_eq!(stored.record.payload, line.as_bytes());
    }

    // The group committed after printing: a second consume finds nothing new.
    let again = Command::new(binary("herald"))
        .args([
            "--broker",
            &broker.addr().to_string(),
            "consume",
            "cli",
            "--group",
            "g",
            "--idle-timeout-ms",
            "300",
        ])
        .output()
        .await
        .unwrap();
    assert!(again.status.success());
    assert!(
        again.stdout.is_empty(),
        "re-read {} bytes",
        again.stdout.len()
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_waiting_fetch_does_not_hold_up_a_publish_on_the_same_connection() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("poll", 1).await.unwrap();
    let mut request = FetchRequest::new("poll", 0, 0);
    request.max_wait_ms = 10_000;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.fetch(request).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the fetch answered before any record existed"
    );
    let confirm = tokio::time::timeout(
        Duration::from_secs(5),
        client.producer().send("poll", Record::new("late")),
    )
    .await
    .expect("the publish was not held up by the waiting fetch")
    .unwrap();
    assert_eq!(confirm.offset, 0);
    let fetched = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(fetched.records.len(), 1);
    assert_eq!(fetched.records[0].record.payload, "late");
    broker.stop().await;
}

#[tokio::test]
async fn keyed_records_go_to_their_key_partition_and_unkeyed_batches_round_robin() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("keys", 4).await.unwrap();
    let producer = client.producer();
    let keyed = producer
        .send_batch(
            "keys",
            (0..40)
                .map(|i| Record::new(format!("v{i}")).with_key(format!("k{}", i % 8)))
                .collect(),
        )
        .await
        .unwrap();
    for (i, confirm) in keyed.iter().enumerate() {
        let key = format!("k{}", i % 8);
        assert_eq!(
            confirm.partition,
            herald_protocol::partition_for_key(key.as_bytes(), 4),
            "record {i}"
        );
    }
    let mut partitions = std::collections::BTreeSet::new();
    for i in 0..8 {
        partitions.insert(
            producer
                .send("keys", Record::new(format!("u{i}")))
                .await
                .unwrap()
                .partition,
        );
    }
    assert_eq!(
        partitions.len(),
        4,
        "unkeyed sends spread over every partition"
    );
    let info = client.describe_topic("keys").await.unwrap();
    let stored: u64 = info.partitions.iter().map(|p| p.next_offset).sum();
    assert_eq!(stored, 48);
    broker.stop().await;
}

#[tokio::test]
async fn topics_and_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for round in 0..2u64 {
        let config = herald_broker::Config::ephemeral(&data);
        let broker = herald_broker::Broker::start(config).await.unwrap();
        let client = Client::connect(broker.local_addr()).await.unwrap();
        if round == 0 {
            client.create_topic("durable", 2).await.unwrap();
        }
        let confirm = client
            .producer()
            .send("durable", Record::new("r").with_key("same"))
            .await
            .unwrap();
        assert_eq!(confirm.offset, round, "offsets continue after a restart");
        assert_eq!(client.list_topics().await.unwrap().len(), 1);
        broker.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn topics_are_created_described_and_deleted() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let info = client.create_topic("gone", 2).await.unwrap();
    assert_eq!(info.partitions.len(), 2);
    let err = client.create_topic("gone", 2).await.unwrap_err();
    assert_eq!(err.code(), Some(herald_client::ErrorCode::TopicExists));
    client
        .producer()
        .send("gone", Record::new("x"))
        .await
        .unwrap();
    client.delete_topic("gone").await.unwrap();
    assert!(client.list_topics().await.unwrap().is_empty());
    let err = client.describe_topic("gone").await.unwrap_err();
    assert_eq!(err.code(), Some(herald_client::ErrorCode::UnknownTopic));
    let err = client.delete_topic("gone").await.unwrap_err();
    assert_eq!(err.code(), Some(herald_client::ErrorCode::UnknownTopic));
    client.create_topic("gone", 1).await.unwrap();
    let confirm = client
        .producer()
        .send("gone", Record::new("again"))
        .await
        .unwrap();
    assert_eq!(confirm.offset, 0, "a re-created topic starts empty");
    broker.stop().await;
}

#[tokio::test]
async fn cli_json_output_carries_every_field() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("json", 1).await.unwrap();
    let producer = client.producer();
    producer
        .send(
            "json",
            Record::new("text").with_key("k1").with_header("h", "v"),
        )
        .await
        .unwrap();
    producer
        .send("json", Record::new(vec![0xff, 0x00, 0xfe]))
        .await
        .unwrap();
    let out = Command::new(binary("herald"))
        .args([
            "--broker",
            &broker.addr().to_string(),
            "consume",
            "json",
            "--group",
            "g",
            "--count",
            "2",
        ])
        .args(["--output", "json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    let first = &lines[0];
    assert_eq!(first["topic"], "json");
    assert_eq!(first["partition"], 0);
    assert_eq!(first["offset"], 0);
    assert_eq!(first["key"], "k1");
    assert_eq!(first["headers"]["h"], "v");
    assert_eq!(first["payload"], "text");
    assert_eq!(first["redelivered"], false);
    assert_eq!(first["delivery_count"], 1);
    assert!(first["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    let second = &lines[1];
    assert_eq!(second["offset"], 1);
    assert!(second["key"].is_null());
    assert!(second.get("payload").is_none());
    assert_eq!(second["payload_base64"], "/wD+");
    broker.stop().await;
}

#[tokio::test]
async fn a_fetch_waits_for_min_bytes_or_the_end_of_its_wait() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("min", 1).await.unwrap();
    let producer = client.producer();
    let record = || Record::new(vec![7u8; 200]);

    // Enough bytes for three records: one is not enough, three are.
    let mut request = FetchRequest::new("min", 0, 0);
    request.max_wait_ms = 10_000;
    request.min_bytes = 3 * 200;
    let waiting = tokio::spawn({
        let (client, request) = (client.clone(), request.clone());
        async move { client.fetch(request).await }
    });
    producer.send("min", record()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "answered with fewer than min_bytes");
    producer
        .send_batch("min", vec![record(), record()])
        .await
        .unwrap();
    let fetched = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(fetched.records.len(), 3);

    // min_bytes never reached: the wait ends and what is there comes back.
    let mut request = FetchRequest::new("min", 0, 3);
    request.max_wait_ms = 400;
    request.min_bytes = 1 << 20;
    producer.send("min", record()).await.unwrap();
    let started = std::time::Instant::now();
    let fetched = client.fetch(request).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "answered before max_wait_ms"
    );
    assert_eq!(fetched.records.len(), 1);
    broker.stop().await;
}
