//! Push groups: competing consumers, fan-out, answers (ack, nack, reject, touch), ack
//! deadlines, redelivery, dead letters, restarts and a frozen consumer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use herald_client::{Client, Delivery, FetchRequest, PushConsumer, PushConsumerConfig, Record};
use herald_protocol::Opcode;
use herald_suite::{publish_records, FrameTap, TestBroker};

async fn publish(client: &Client, topic: &str, count: usize) {
    publish_records(client, topic, count, |i| {
        Record::new(format!("m{i}")).with_key(format!("k{i}"))
    })
    .await;
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

/// A broker holding `count` records on one-partition `topic`, a client of it, and a
/// frame-counting tap in front of it.
async fn tapped_topic(topic: &str, count: usize) -> (TestBroker, Client, FrameTap) {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic(topic, 1).await.unwrap();
    publish(&admin, topic, count).await;
    let tap = FrameTap::start(broker.addr()).await;
    (broker, admin, tap)
}

/// A consumer through a frame-counting tap, acks lingering for an hour unless the window
/// needs them.
async fn tapped(tap: &FrameTap, topic: &str, group: &str, prefetch: u32) -> PushConsumer {
    let config = PushConsumerConfig {
        prefetch,
        ack_linger: Duration::from_secs(3600),
        ..PushConsumerConfig::default()
    };
    let client = Client::connect(tap.addr()).await.unwrap();
    client
        .push_consumer_with(topic, group, config)
        .await
        .unwrap()
}

/// Takes `count` deliveries, acking each as it comes.
async fn ack_each(consumer: &mut PushConsumer, count: usize) {
    for i in 0..count {
        let delivery = next(consumer, Duration::from_secs(5)).await;
        delivery
            .unwrap_or_else(|| panic!("delivery {i} never came"))
            .ack();
    }
}

/// Records of `group` not yet acked, as the broker describes them.
async fn unacked(client: &Client, topic: &str, group: &str) -> u64 {
    let info = client.describe_group(topic, group).await.unwrap();
    info.partitions.iter().map(|p| p.lag).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_given_within_the_linger_travel_in_one_request() {
    let (broker, admin, tap) = tapped_topic("grouped", 200).await;
    let mut consumer = tapped(&tap, "grouped", "g", 1000).await;
    ack_each(&mut consumer, 200).await;
    // 200 acks are fewer than half the window: they wait for the linger or a flush.
    consumer.flush_acks().await.unwrap();
    assert_eq!(tap.count(Opcode::Ack), 1, "one request carried every ack");
    assert_eq!(unacked(&admin, "grouped", "g").await, 0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lingering_acks_leave_once_half_the_window_waits_so_deliveries_never_stall() {
    let (broker, _admin, tap) = tapped_topic("window", 100).await;
    let mut consumer = tapped(&tap, "window", "g", 10).await;
    ack_each(&mut consumer, 100).await;
    consumer.flush_acks().await.unwrap();
    let requests = tap.count(Opcode::Ack);
    assert!(
        (1..=21).contains(&requests),
        "acks left five or more at a time (the flush took the rest), in {requests} requests"
    );
    // Prefetch 1: nothing can wait, or the next delivery never comes.
    let mut one = tapped(&tap, "window", "single", 1).await;
    ack_each(&mut one, 10).await;
    one.flush_acks().await.unwrap();
    assert_eq!(
        tap.count(Opcode::Ack) - requests,
        10,
        "each ack left at once"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_delivery_moves_after_the_ack_deadline_and_the_slow_session_lives_on() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("slow", 1).await.unwrap();
    let settings = herald_client::PushGroupSettings {
        ack_timeout: Some(Duration::from_millis(1500)),
        ..Default::default()
    };
    admin
        .create_push_group("slow", "g", settings)
        .await
        .unwrap();
    let slow_client = broker.client().await;
    let mut slow = slow_client
        .push_consumer_with("slow", "g", prefetch(10))
        .await
        .unwrap();
    publish(&admin, "slow", 1).await;
    let held = next(&mut slow, Duration::from_secs(5)).await.unwrap();
    let delivered = tokio::time::Instant::now();
    assert_eq!(held.delivery_count, 1);
    let mut other = subscriber(&broker, "slow", "g", 10).await;

    // Touching keeps it with the slow consumer past the first deadline (1.5 s after the
    // delivery): nothing moves for 1.3 s after the touch, which spans that deadline. (The
    // dispatcher's unit tests check the same on a paused clock.)
    tokio::time::sleep_until(delivered + Duration::from_millis(300)).await;
    held.touch(None).await.unwrap();
    assert!(
        delivered.elapsed() < Duration::from_millis(1_500),
        "touched after the first deadline: the machine stalled for {:?}",
        delivered.elapsed()
    );
    assert!(next(&mut other, Duration::from_millis(1300))
        .await
        .is_none());
    let started = tokio::time::Instant::now();
    let moved = next(&mut other, Duration::from_secs(5)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!((moved.offset, moved.delivery_count), (held.offset, 2));
    moved.ack();
    other.flush_acks().await.unwrap();

    // The slow consumer's session and subscription are untouched.
    slow_client.list_topics().await.unwrap();
    publish(&admin, "slow", 1).await;
    let info = admin.describe_group("slow", "g").await.unwrap();
    assert_eq!(info.members.len(), 2, "{info:?}");
    held.ack(); // a late answer for a record that moved is taken as done
    slow.flush_acks().await.unwrap();
    slow.close().await.unwrap();
    other.close().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_disconnects_has_its_deliveries_sent_to_the_others_at_once() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("jobs", 1).await.unwrap();
    let mut leaving = subscriber(&broker, "jobs", "g", 100).await;
    publish(&admin, "jobs", 20).await;
    let mut held = Vec::new();
    while held.len() < 20 {
        held.push(next(&mut leaving, Duration::from_secs(5)).await.unwrap());
    }
    let mut staying = subscriber(&broker, "jobs", "g", 100).await;
    assert!(next(&mut staying, Duration::from_millis(200))
        .await
        .is_none());
    drop(held);
    drop(leaving); // closes its connection: nothing was answered

    let started = tokio::time::Instant::now();
    let mut got = BTreeSet::new();
    while got.len() < 20 {
        let delivery = next(&mut staying, Duration::from_secs(5)).await.unwrap();
        assert_eq!(delivery.delivery_count, 2);
        got.insert(delivery.offset);
        delivery.ack();
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "well before any ack deadline"
    );
    staying.close().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_only_unacked_records_are_delivered_again() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("ledger", 1).await.unwrap();
    publish(&client, "ledger", 100).await;
    let mut consumer = client
        .push_consumer_with("ledger", "g", prefetch(100))
        .await
        .unwrap();
    let acked: BTreeSet<u64> = (0..50).chain([60, 70, 99]).collect();
    for _ in 0..100 {
        let delivery = next(&mut consumer, Duration::from_secs(5)).await.unwrap();
        if acked.contains(&delivery.offset) {
            delivery.ack();
        }
    }
    consumer.flush_acks().await.unwrap();
    drop(consumer);
    let broker = broker.restart().await;

    let client = broker.client().await;
    let mut consumer = client
        .push_consumer_with("ledger", "g", prefetch(100))
        .await
        .unwrap();
    let mut again = BTreeSet::new();
    while let Some(delivery) = next(&mut consumer, Duration::from_millis(500)).await {
        assert!(again.insert(delivery.offset), "{} twice", delivery.offset);
        delivery.ack();
    }
    let expected: BTreeSet<u64> = (0..100).filter(|o| !acked.contains(o)).collect();
    assert_eq!(again, expected);
    consumer.close().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_consumer_holds_no_more_than_its_window_and_stalls_nobody() {
    use herald_protocol::{Frame, StartPosition, Subscribe};

    let broker = TestBroker::start_with(|c| c.session_timeout_ms = 3000).await;
    let admin = broker.client().await;
    admin.create_topic("big", 1).await.unwrap();

    // A subscriber that never reads its socket again after subscribing.
    let mut frozen = herald_suite::Raw::greeted(broker.addr()).await;
    let subscribe = Subscribe {
        topic: "big".into(),
        group: "g".into(),
        prefetch_count: 300,
        prefetch_bytes: 0,
        start: StartPosition::Earliest,
    };
    assert!(matches!(frozen.call(subscribe).await, Frame::Subscribed(_)));

    // 600 records of 64 KiB: the frozen window alone (~19 MB) is more than the sockets
    // buffer, so the broker's writes to it block.
    let producer = admin.producer();
    for chunk in 0..20 {
        let records = (0..30)
            .map(|i| Record::new(vec![b'a' + ((chunk * 30 + i) % 26) as u8; 64 * 1024]))
            .collect();
        producer.send_batch("big", records).await.unwrap();
    }
    let mut healthy = subscriber(&broker, "big", "g", 50).await;
    let mut other_group = subscriber(&broker, "big", "other", 50).await;
    let (in_group, everything) = tokio::join!(
        drain(&mut healthy, Duration::from_millis(700)),
        drain(&mut other_group, Duration::from_millis(700))
    );
    assert_eq!(everything.len(), 600, "another group reads at full speed");
    let info = admin.describe_group("big", "g").await.unwrap();
    let held = info
        .members
        .iter()
        .map(|m| m.in_flight)
        .max()
        .expect("two subscribers");
    assert!(
        held > 0 && held <= 300,
        "never more than its window: {held}"
    );
    assert_eq!(
        in_group.len() as u32 + held,
        600,
        "the rest of the group's records went to the healthy one"
    );

    // Its session expires (it sends no heartbeats) and what it held comes back.
    let mut recovered = 0;
    while let Some(delivery) = next(&mut healthy, Duration::from_secs(8)).await {
        assert!(delivery.redelivered);
        delivery.ack();
        recovered += 1;
        if recovered == held {
            break;
        }
    }
    assert_eq!(recovered, held);
    drop(frozen);
    healthy.close().await.unwrap();
    other_group.close().await.unwrap();
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_describes_and_consumes_push_groups() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("mail", 2).await.unwrap();
    publish(&admin, "mail", 30).await;

    let out = broker
        .cli(&[
            "group",
            "create",
            "mail",
            "senders",
            "--mode",
            "push",
            "--ack-timeout-ms",
            "5000",
            "--max-deliveries",
            "3",
            "--dead-letter",
            "mail.failed",
        ])
        .await;
    assert!(out.status.success(), "{out:?}");
    let out = broker
        .cli(&["group", "create", "mail", "senders", "--mode", "push"])
        .await;
    assert!(!out.status.success(), "a second create fails");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    let consume = |count: &'static str| {
        [
            "consume",
            "mail",
            "--group",
            "senders",
            "--mode",
            "push",
            "--prefetch",
            "5",
            "--count",
            count,
            "--idle-timeout-ms",
            "1000",
            "--output",
            "json",
        ]
    };
    let out = broker.cli(&consume("10")).await;
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    assert!(lines
        .iter()
        .all(|l| l["delivery_count"] == 1 && l["redelivered"] == false && l["topic"] == "mail"));

    // Acked after printing: the next run gets the other 20 (and anything unacked
    // by the first run comes back to it).
    let out = broker.cli(&consume("100")).await;
    assert!(out.status.success(), "{out:?}");
    let second: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rest: BTreeSet<String> = second.iter().map(|l| l["payload"].to_string()).collect();
    // What the first run held unacked when it left comes back marked as redelivered.
    let redelivered = second.iter().filter(|l| l["redelivered"] == true).count();
    assert!(second
        .iter()
        .all(|l| (l["delivery_count"] == 2) == (l["redelivered"] == true)));
    let first: BTreeSet<String> = lines.iter().map(|l| l["payload"].to_string()).collect();
    assert_eq!(rest.len(), 20);
    assert!(rest.is_disjoint(&first));

    let out = broker.cli(&["group", "describe", "mail", "senders"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "mode: push".to_string(),
        "ack_timeout_ms: 5000".to_string(),
        "max_deliveries: 3".to_string(),
        "dead_letter: mail.failed".to_string(),
        format!("redelivered: {redelivered}"),
        "dead_lettered: 0".to_string(),
        "consumers: 0".to_string(),
    ] {
        assert!(text.contains(&expected), "{expected} in {text}");
    }
    let list = broker.cli(&["group", "list", "mail"]).await;
    assert_eq!(String::from_utf8_lossy(&list.stdout), "senders\n");
    let out = broker
        .cli(&["consume", "mail", "--group", "senders", "--mode", "pull"])
        .await;
    assert!(!out.status.success(), "a push group cannot be pulled");
    broker.stop().await;
}

#[tokio::test]
async fn bad_answers_get_clear_errors_and_the_subscription_lives_on() {
    use herald_client::ErrorCode;
    use herald_protocol::{Ack, Frame, Nack, OffsetRange, StartPosition, Subscribe};

    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("strict", 1).await.unwrap();
    publish(&admin, "strict", 3).await;
    let mut raw = herald_suite::Raw::greeted(broker.addr()).await;
    let subscribe = Subscribe {
        topic: "strict".into(),
        group: "g".into(),
        prefetch_count: 10,
        prefetch_bytes: 0,
        start: StartPosition::Earliest,
    };
    let Frame::Subscribed(subscribed) = raw.call(subscribe).await else {
        panic!("not subscribed");
    };
    let id = subscribed.subscription_id;
    let range = |start, end| OffsetRange {
        partition: 0,
        start,
        end,
    };
    let code = |frame: Frame| match frame {
        Frame::Error(err) => err.error_code(),
        other => panic!("expected an error, got {other:?}"),
    };
    let huge = Ack {
        subscription_id: id,
        ranges: vec![range(0, u64::MAX)],
    };
    assert_eq!(code(raw.call(huge).await), Some(ErrorCode::InvalidArgument));
    let backwards = Nack {
        subscription_id: id,
        ranges: vec![range(2, 1)],
        delay_ms: 0,
    };
    assert_eq!(
        code(raw.call(backwards).await),
        Some(ErrorCode::InvalidArgument)
    );
    let stranger = Ack {
        subscription_id: id + 1000,
        ranges: vec![range(0, 1)],
    };
    assert_eq!(
        code(raw.call(stranger).await),
        Some(ErrorCode::UnknownSubscription)
    );
    let no_partition = Ack {
        subscription_id: id,
        ranges: vec![OffsetRange {
            partition: 7,
            start: 0,
            end: 1,
        }],
    };
    assert_eq!(
        code(raw.call(no_partition).await),
        Some(ErrorCode::UnknownPartition)
    );
    // The subscription still works: all three records are acked as one range.
    let good = Ack {
        subscription_id: id,
        ranges: vec![range(0, 3)],
    };
    assert!(matches!(raw.call(good).await, Frame::Ok(_)));
    let info = admin.describe_group("strict", "g").await.unwrap();
    assert_eq!(
        (info.partitions[0].committed, info.partitions[0].lag),
        (3, 0)
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_ends_the_tasks_of_its_push_groups() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    publish(&client, "doomed", 20).await;
    assert_eq!(broker.push_group_tasks(), 0, "no group runs yet");
    let mut first = subscriber(&broker, "doomed", "a", 5).await;
    let mut second = subscriber(&broker, "doomed", "b", 5).await;
    assert!(next(&mut first, Duration::from_secs(5)).await.is_some());
    assert!(next(&mut second, Duration::from_secs(5)).await.is_some());
    assert!(broker.push_group_tasks() >= 2, "a dispatcher per group");

    client.delete_topic("doomed").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.push_group_tasks() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} push group tasks outlived their topic",
            broker.push_group_tasks()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A topic of the same name starts afresh, with groups of its own.
    publish(&client, "doomed", 3).await;
    let mut again = subscriber(&broker, "doomed", "a", 5).await;
    let delivery = next(&mut again, Duration::from_secs(5)).await.unwrap();
    assert_eq!(payload(&delivery), "m0");
    assert_eq!(broker.push_group_tasks(), 1);
    broker.stop().await;
}
