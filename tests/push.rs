//! Push groups: competing consumers, fan-out, answers (ack, nack, reject, touch), ack
//! deadlines, redelivery, dead letters, restarts and a frozen consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use herald_client::{Client, Delivery, FetchRequest, PushConsumer, PushConsumerConfig, Record};
use herald_suite::TestBroker;

async fn publish(client: &Client, topic: &str, count: usize) {
    let producer = client.producer();
    let numbers: Vec<usize> = (0..count).collect();
    for chunk in numbers.chunks(500) {
        let records = chunk
            .iter()
            .map(|i| Record::new(format!("m{i}")).with_key(format!("k{i}")))
            .collect();
        producer.send_batch(topic, records).await.unwrap();
    }
}

fn prefetch(n: u32) -> PushConsumerConfig {
    PushConsumerConfig {
        prefetch: n,
        ..PushConsumerConfig::default()
    }
}

async fn subscriber(broker: &TestBroker, topic: &str, group: &str, n: u32) -> PushConsumer {
    broker
        .client()
        .await
        .push_consumer_with(topic, group, prefetch(n))
        .await
        .unwrap()
}

/// The next delivery within `wait`, if any.
async fn next(consumer: &mut PushConsumer, wait: Duration) -> Option<Delivery> {
    match tokio::time::timeout(wait, consumer.next()).await {
        Ok(Some(delivery)) => Some(delivery.unwrap()),
        Ok(None) => panic!("the subscription ended"),
        Err(_) => None,
    }
}

/// Reads and acks until nothing arrives for `idle`; returns the payloads.
async fn drain(consumer: &mut PushConsumer, idle: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    while let Some(delivery) = next(consumer, idle).await {
        seen.push(payload(&delivery));
        delivery.ack();
    }
    consumer.flush_acks().await.unwrap();
    seen
}

fn payload(delivery: &Delivery) -> String {
    String::from_utf8(delivery.record.payload.to_vec()).unwrap()
}

fn all(count: usize) -> BTreeSet<String> {
    (0..count).map(|i| format!("m{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_split_the_records_and_groups_each_get_all() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("work", 3).await.unwrap();
    publish(&admin, "work", 3000).await;

    let mut a = subscriber(&broker, "work", "crew", 50).await;
    let mut b = subscriber(&broker, "work", "crew", 50).await;
    let mut audit = subscriber(&broker, "work", "audit", 200).await;
    let idle = Duration::from_millis(500);
    let (seen_a, seen_b, seen_audit) = tokio::join!(
        drain(&mut a, idle),
        drain(&mut b, idle),
        drain(&mut audit, idle)
    );
    assert!(
        !seen_a.is_empty() && !seen_b.is_empty(),
        "both consumers got work"
    );
    let mut crew: Vec<String> = seen_a.into_iter().chain(seen_b).collect();
    crew.sort();
    let unique: BTreeSet<String> = crew.iter().cloned().collect();
    assert_eq!(crew.len(), unique.len(), "no record went to both");
    assert_eq!(unique, all(3000));
    let audited: BTreeSet<String> = seen_audit.into_iter().collect();
    assert_eq!(audited, all(3000), "another group gets every record too");

    let info = admin.describe_group("work", "crew").await.unwrap();
    assert_eq!(info.members.len(), 2);
    assert!(
        info.partitions
            .iter()
            .all(|p| p.lag == 0 && p.committed == p.end),
        "{info:?}"
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
    audit.close().await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn with_prefetch_one_a_single_consumer_gets_a_partition_strictly_in_order() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("line", 1).await.unwrap();
    publish(&admin, "line", 200).await;
    let mut consumer = subscriber(&broker, "line", "one", 1).await;
    for expected in 0..200u64 {
        let delivery = next(&mut consumer, Duration::from_secs(5)).await.unwrap();
        assert_eq!(delivery.offset, expected);
        assert!(
            !consumer.has_ready(),
            "prefetch 1: one unanswered at a time"
        );
        delivery.ack();
    }
    consumer.close().await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn a_nack_comes_back_now_or_after_its_delay() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("retry", 1).await.unwrap();
    publish(&admin, "retry", 2).await;
    let mut consumer = subscriber(&broker, "retry", "g", 10).await;
    let wait = Duration::from_secs(5);

    let first = next(&mut consumer, wait).await.unwrap();
    let second = next(&mut consumer, wait).await.unwrap();
    assert_eq!((first.delivery_count, first.redelivered), (1, false));
    let first_offset = first.offset;
    first.nack(Duration::ZERO).await.unwrap();
    let again = next(&mut consumer, wait).await.unwrap();
    assert_eq!(again.offset, first_offset);
    assert_eq!((again.delivery_count, again.redelivered), (2, true));
    again.ack();

    let delayed_offset = second.offset;
    let nacked_at = tokio::time::Instant::now();
    second.nack(Duration::from_millis(700)).await.unwrap();
    let later = next(&mut consumer, wait).await.unwrap();
    assert!(
        nacked_at.elapsed() >= Duration::from_millis(700),
        "came back too soon"
    );
    assert_eq!((later.offset, later.delivery_count), (delayed_offset, 2));
    later.ack();
    consumer.close().await.unwrap();
    let info = admin.describe_group("retry", "g").await.unwrap();
    assert_eq!(info.redelivered, 2);
    broker.stop().await;
}

#[tokio::test]
async fn max_deliveries_and_reject_send_records_to_the_dead_letter_topic() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("orders", 1).await.unwrap();
    publish(&admin, "orders", 2).await;
    admin
        .create_push_group("orders", "billing", Default::default())
        .await
        .unwrap();
    let mut consumer = subscriber(&broker, "orders", "billing", 10).await;
    assert_eq!(consumer.max_deliveries(), 20);
    let wait = Duration::from_secs(5);

    // Offset 1 is rejected outright; offset 0 fails until it runs out of deliveries.
    let mut rejected = false;
    let mut failures = 0;
    while let Some(delivery) = next(&mut consumer, Duration::from_millis(500)).await {
        if delivery.offset == 1 && !rejected {
            rejected = true;
            delivery.reject("bad total").await.unwrap();
        } else {
            assert_eq!(delivery.offset, 0);
            failures += 1;
            assert_eq!(delivery.delivery_count, failures);
            delivery.nack(Duration::ZERO).await.unwrap();
        }
    }
    assert_eq!(failures, 20);
    assert!(rejected);

    let dlq = admin
        .fetch(FetchRequest::new("orders.dlq", 0, 0))
        .await
        .unwrap();
    assert_eq!(dlq.records.len(), 2);
    let by_offset: BTreeMap<String, BTreeMap<String, String>> = dlq
        .records
        .iter()
        .map(|stored| {
            let headers = stored
                .record
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8(v.to_vec()).unwrap()))
                .collect::<BTreeMap<_, _>>();
            (headers["x-herald-original-offset"].clone(), headers)
        })
        .collect();
    let rejected = &by_offset["1"];
    assert_eq!(rejected["x-herald-original-topic"], "orders");
    assert_eq!(rejected["x-herald-original-partition"], "0");
    assert_eq!(rejected["x-herald-group"], "billing");
    assert_eq!(rejected["x-herald-reason"], "rejected: bad total");
    assert_eq!(rejected["x-herald-delivery-count"], "1");
    let exhausted = &by_offset["0"];
    assert!(
        exhausted["x-herald-reason"].contains("max_deliveries 20"),
        "{exhausted:?}"
    );
    assert_eq!(exhausted["x-herald-delivery-count"], "20");
    let original: BTreeSet<&[u8]> = dlq.records.iter().map(|r| &r.record.payload[..]).collect();
    assert_eq!(original, BTreeSet::from([&b"m0"[..], &b"m1"[..]]));

    // Dead-lettered records are done for the group.
    assert!(next(&mut consumer, Duration::from_millis(300))
        .await
        .is_none());
    let info = admin.describe_group("orders", "billing").await.unwrap();
    assert_eq!(info.dead_lettered, 2);
    assert_eq!(info.partitions[0].lag, 0, "{info:?}");
    let _ = wait;
    consumer.close().await.unwrap();
    broker.stop().await;
}
