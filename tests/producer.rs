//! The producer's batching, as a user of the client sees it: linger, flush, a small queue
//! that makes callers wait, a dropped producer that still delivers what it queued, and a
//! batch's one answer shared by all its records.

use std::time::Duration;

use herald_client::{Client, ErrorCode, ProducerConfig, Record};
use herald_suite::{read_all, TestBroker};

/// A broker, a client of it, and `topic` with `partitions` partitions.
async fn with_topic(topic: &str, partitions: u32) -> (TestBroker, Client) {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic(topic, partitions).await.unwrap();
    (broker, client)
}

fn body(i: usize) -> Record {
    Record::new(format!("record-{i}"))
}

async fn bodies(client: &Client, topic: &str) -> Vec<String> {
    read_all(client, topic)
        .await
        .into_iter()
        .map(|(_, r)| String::from_utf8(r.record.payload.to_vec()).unwrap())
        .collect()
}

fn expected(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("record-{i}")).collect()
}

#[tokio::test]
async fn records_share_their_batch_answer_and_get_consecutive_offsets() {
    let (_broker, client) = with_topic("shared", 1).await;
    let producer = client.producer_with(ProducerConfig {
        linger: Duration::from_millis(50),
        ..ProducerConfig::default()
    });
    let mut pending = Vec::new();
    for i in 0..300 {
        pending.push(producer.enqueue("shared", body(i)).await.unwrap());
    }
    let mut offsets = Vec::new();
    for p in pending {
        let confirm = p.await.unwrap();
        assert_eq!(confirm.partition, 0);
        offsets.push(confirm.offset);
    }
    assert_eq!(offsets, (0..300).collect::<Vec<u64>>());
    assert_eq!(bodies(&client, "shared").await, expected(300));
}

#[tokio::test]
async fn linger_holds_a_partial_batch_until_it_is_due_and_flush_sends_it_at_once() {
    let (_broker, client) = with_topic("lingering", 1).await;
    let producer = client.producer_with(ProducerConfig {
        linger: Duration::from_secs(3600),
        ..ProducerConfig::default()
    });
    let first = producer.enqueue("lingering", body(0)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let info = client.describe_topic("lingering").await.unwrap();
    assert_eq!(info.partitions[0].next_offset, 0, "held back by linger");
    tokio::time::timeout(Duration::from_secs(10), producer.flush())
        .await
        .expect("flush does not wait for linger")
        .unwrap();
    assert_eq!(first.await.unwrap().offset, 0);

    // A short linger sends on its own.
    let producer = client.producer_with(ProducerConfig {
        linger: Duration::from_millis(20),
        ..ProducerConfig::default()
    });
    let second = producer.enqueue("lingering", body(1)).await.unwrap();
    let confirm = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("sent once its linger passed")
        .unwrap();
    assert_eq!(confirm.offset, 1);
    assert_eq!(bodies(&client, "lingering").await, expected(2));
}

#[tokio::test]
async fn a_full_batch_leaves_before_its_linger() {
    let (_broker, client) = with_topic("full", 1).await;
    let producer = client.producer_with(ProducerConfig {
        linger: Duration::from_secs(3600),
        batch_records: 10,
        ..ProducerConfig::default()
    });
    let mut pending = Vec::new();
    for i in 0..25 {
        pending.push(producer.enqueue("full", body(i)).await.unwrap());
    }
    let last_of_full = pending.swap_remove(19);
    let confirm = tokio::time::timeout(Duration::from_secs(10), last_of_full)
        .await
        .expect("a full batch does not linger")
        .unwrap();
    assert_eq!(confirm.offset, 19);
    let info = client.describe_topic("full").await.unwrap();
    assert_eq!(
        info.partitions[0].next_offset, 20,
        "the partial batch lingers"
    );
    producer.flush().await.unwrap();
    assert_eq!(bodies(&client, "full").await, expected(25));
}

#[tokio::test]
async fn a_small_queue_makes_callers_wait_and_loses_nothing() {
    let (_broker, client) = with_topic("narrow", 2).await;
    let producer = client.producer_with(ProducerConfig {
        queue: 3,
        batch_records: 2,
        max_in_flight: 1,
        ..ProducerConfig::default()
    });
    // Several clones enqueue at once through the narrow queue.
    let mut tasks = Vec::new();
    for clone in 0..4 {
        let producer = producer.clone();
        tasks.push(tokio::spawn(async move {
            let mut pending = Vec::new();
            for i in 0..500 {
                let record = Record::new(format!("c{clone}-{i}")).with_key(format!("k{clone}"));
                pending.push(producer.enqueue("narrow", record).await.unwrap());
            }
            let mut offsets = Vec::new();
            for p in pending {
                offsets.push(p.await.unwrap());
            }
            offsets
        }));
    }
    for task in tasks {
        let confirms = task.await.unwrap();
        // One key: one partition, and offsets rising in the order the records were queued.
        assert!(confirms
            .windows(2)
            .all(|w| w[0].partition == w[1].partition));
        assert!(confirms.windows(2).all(|w| w[0].offset < w[1].offset));
    }
    let stored = read_all(&client, "narrow").await;
    assert_eq!(stored.len(), 2000);
}

#[tokio::test]
async fn a_dropped_producer_still_delivers_what_it_queued() {
    let (_broker, client) = with_topic("dropped", 1).await;
    let producer = client.producer_with(ProducerConfig {
        linger: Duration::from_secs(3600),
        ..ProducerConfig::default()
    });
    let mut pending = Vec::new();
    for i in 0..50 {
        pending.push(producer.enqueue("dropped", body(i)).await.unwrap());
    }
    drop(producer);
    for (i, p) in pending.into_iter().enumerate() {
        let confirm = tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .expect("sent once the producer is dropped, linger or not")
            .unwrap();
        assert_eq!(confirm.offset, i as u64);
    }
    assert_eq!(bodies(&client, "dropped").await, expected(50));
}

#[tokio::test]
async fn a_refused_batch_fails_each_of_its_records_and_the_producer_goes_on() {
    let broker = TestBroker::start_with(|c| c.no_auto_create_topics = true).await;
    let client = broker.client().await;
    let producer = client.producer();
    let mut pending = Vec::new();
    for i in 0..20 {
        pending.push(producer.enqueue("missing", body(i)).await.unwrap());
    }
    for p in pending {
        let err = p.await.expect_err("no such topic");
        assert_eq!(err.code(), Some(ErrorCode::UnknownTopic), "{err}");
    }
    // Once the topic exists, the same producer asks again and publishes to it.
    client.create_topic("missing", 3).await.unwrap();
    let confirm = producer.send("missing", body(0)).await.unwrap();
    assert!(confirm.partition < 3);
    assert_eq!(bodies(&client, "missing").await, expected(1));
}
