//! Every broker limit answers the caller with an error code and leaves everything else
//! running. (Connections, frame size and message size are in `bad_input.rs`.)

use std::time::{Duration, Instant};

use herald_client::{ErrorCode, PullConsumerConfig, PushConsumerConfig, Record, Retention};
use herald_protocol::{encode_batch, Fetch, Frame, Heartbeat, Publish, StartPosition, Subscribe};
use herald_suite::{Raw, TestBroker};

fn records(n: usize, size: usize) -> Vec<Record> {
    (0..n).map(|_| Record::new(vec![b'x'; size])).collect()
}

#[tokio::test]
async fn a_batch_over_the_record_limit_is_refused() {
    let broker = TestBroker::start_with(|c| c.max_batch_records = 10).await;
    let mut raw = Raw::greeted(broker.addr()).await;
    let publish = |n| Publish {
        topic: "t".into(),
        partition: 0,
        producer_id: 0,
        sequence: 0,
        batch: encode_batch(&records(n, 10)),
    };
    raw.send(1, publish(11)).await;
    let message = raw.expect_error(1, ErrorCode::BatchTooLarge).await;
    assert!(message.contains("11 records"), "{message}");
    assert!(matches!(raw.call(publish(10)).await, Frame::PublishOk(_)));
    broker.assert_serving().await;
    broker.stop().await;
}

#[tokio::test]
async fn topics_and_partitions_over_their_limits_are_refused() {
    let broker = TestBroker::start_with(|c| {
        c.max_topics = 2;
        c.max_partitions = 4;
    })
    .await;
    let client = broker.client().await;
    let err = client.create_topic("wide", 5).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyTopics), "{err}");
    client.create_topic("a", 4).await.unwrap();
    client.create_topic("b", 1).await.unwrap();
    let err = client.create_topic("c", 1).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyTopics), "{err}");
    // Auto-creation counts too.
    let err = client
        .producer()
        .send("d", Record::new("x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyTopics), "{err}");
    client.producer().send("a", Record::new("x")).await.unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn consumers_over_the_group_limit_are_refused() {
    let broker = TestBroker::start_with(|c| c.max_consumers_per_group = 2).await;
    let client = broker.client().await;
    client.create_topic("t", 4).await.unwrap();
    let config = PullConsumerConfig::default;
    let _one = client
        .pull_consumer_with("t", "pull", config())
        .await
        .unwrap();
    let _two = client
        .pull_consumer_with("t", "pull", config())
        .await
        .unwrap();
    let err = client
        .pull_consumer_with("t", "pull", config())
        .await
        .err()
        .expect("third member refused");
    assert_eq!(err.code(), Some(ErrorCode::TooManyConsumers), "{err}");

    let config = PushConsumerConfig::default;
    let _one = client
        .push_consumer_with("t", "push", config())
        .await
        .unwrap();
    let _two = client
        .push_consumer_with("t", "push", config())
        .await
        .unwrap();
    let err = client
        .push_consumer_with("t", "push", config())
        .await
        .err()
        .expect("third subscriber refused");
    assert_eq!(err.code(), Some(ErrorCode::TooManyConsumers), "{err}");
    // Other groups are not affected.
    let _other = client
        .push_consumer_with("t", "other", config())
        .await
        .unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn requests_over_the_in_flight_limit_are_refused() {
    let broker = TestBroker::start_with(|c| c.max_in_flight = 3).await;
    broker
        .client()
        .await
        .create_topic("quiet", 1)
        .await
        .unwrap();
    let mut raw = Raw::greeted(broker.addr()).await;
    let long_poll = Fetch {
        topic: "quiet".into(),
        partition: 0,
        offset: 0,
        max_messages: 10,
        max_bytes: 1 << 20,
        max_wait_ms: 5_000,
        min_bytes: 1,
    };
    for id in 1..=3 {
        raw.send(id, long_poll.clone()).await;
    }
    raw.send(4, long_poll.clone()).await;
    raw.expect_error(4, ErrorCode::TooManyRequests).await;
    broker.assert_serving().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_at_most_its_outbound_budget() {
    const BUDGET: usize = 1 << 20;
    let broker = TestBroker::start_with(|c| {
        c.max_outbound_bytes = BUDGET;
        c.max_in_flight = 10_000;
    })
    .await;
    let client = broker.client().await;
    client.create_topic("big", 1).await.unwrap();
    let producer = client.producer();
    for _ in 0..8 {
        producer
            .send_batch("big", records(256, 1024))
            .await
            .unwrap();
    }
    // 400 fetches of 256 KiB each, never read: 100 MiB of replies if nothing held back.
    let mut raw = Raw::greeted(broker.addr()).await;
    for id in 1..=400 {
        let fetch = Fetch {
            topic: "big".into(),
            partition: 0,
            offset: 0,
            max_messages: 10_000,
            max_bytes: 256 * 1024,
            max_wait_ms: 0,
            min_bytes: 0,
        };
        raw.send(id, fetch).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = broker.outbound_bytes();
    assert!(
        queued <= BUDGET as u64,
        "{queued} bytes queued for clients, budget {BUDGET}"
    );
    assert!(queued > 0, "the replies wait in the queue");
    broker.assert_serving().await;
    drop(raw);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_says_hello_is_closed() {
    let broker = TestBroker::start_with(|c| c.hello_timeout_ms = 500).await;
    let mut raw = Raw::connect(broker.addr()).await;
    let started = Instant::now();
    // Heartbeats are not a handshake.
    for _ in 0..3 {
        raw.send(0, Heartbeat {}).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    raw.expect_error(0, ErrorCode::HelloRequired).await;
    raw.expect_closed().await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "{took:?}"
    );
    broker.assert_serving().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dribbling_one_byte_at_a_time_is_timed_out() {
    let broker = TestBroker::start_with(|c| {
        c.min_session_timeout_ms = 500;
        c.session_timeout_ms = 1_000;
    })
    .await;
    let mut raw = Raw::greeted(broker.addr()).await;
    // A subscribe frame that would take far longer than the session timeout to arrive.
    let mut frame = bytes::BytesMut::new();
    let subscribe = Subscribe {
        topic: "t".into(),
        group: "g".into(),
        prefetch_count: 1,
        prefetch_bytes: 0,
        start: StartPosition::Earliest,
    };
    herald_protocol::Message::new(7, subscribe).encode(&mut frame);
    let started = Instant::now();
    for byte in frame.iter().take(8) {
        if !raw.try_send_bytes(&[*byte]).await {
            break; // closed by the broker meanwhile
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    raw.expect_error(0, ErrorCode::SessionExpired).await;
    raw.expect_closed().await;
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "{took:?}");
    broker.assert_serving().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_quota_refuses_publishes_while_reading_goes_on_until_retention_frees_space() {
    // The quota counts what the store takes on disk, sled's files included (an empty store
    // takes about a megabyte of them).
    const QUOTA: u64 = 3 * 1024 * 1024;
    let broker = TestBroker::start_with(|c| {
        c.max_disk_bytes = QUOTA;
        c.retention_check_ms = 100;
    })
    .await;
    let client = broker.client().await;
    // Old enough that retention deletes nothing while the disk fills, even on a loaded
    // machine (at 1.5 s, a slow CI run saw the first records trimmed before it read them).
    let retention = Retention {
        max_age_ms: 4_000,
        ..Retention::default()
    };
    client
        .create_topic_with("full", 1, retention)
        .await
        .unwrap();
    let producer = client.producer();
    let mut stored = 0u64;
    let err = loop {
        match producer
            .send("full", Record::new(vec![b'r'; 8 * 1024]))
            .await
        {
            Ok(confirm) => {
                assert_eq!(confirm.offset, stored);
                stored += 1;
                assert!(stored < 1_000, "the quota never applied");
            }
            Err(err) => break err,
        }
    };
    assert_eq!(err.code(), Some(ErrorCode::StorageFull), "{err}");
    assert!(
        stored >= 50,
        "only {stored} records before the quota of {QUOTA} bytes"
    );
    // Consumers keep reading everything stored.
    let mut request = herald_client::FetchRequest::new("full", 0, 0);
    request.max_messages = 1_000;
    request.max_bytes = 16 * 1024 * 1024;
    let fetched = client.fetch(request).await.unwrap();
    assert_eq!(fetched.records.len() as u64, stored);
    // Once retention has dropped the old records, publishing resumes (the same producer:
    // its refused batch left no gap in its numbering).
    let started = Instant::now();
    let confirm = loop {
        match producer.send("full", Record::new("after")).await {
            Ok(confirm) => break confirm,
            Err(err) => {
                assert_eq!(err.code(), Some(ErrorCode::StorageFull), "{err}");
                assert!(started.elapsed() < Duration::from_secs(10), "never freed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(confirm.offset, stored, "offsets go on where they stopped");
    // Once retention has dropped every old record, there is room for everyone again.
    let trimmed = Instant::now();
    while client.describe_topic("full").await.unwrap().partitions[0].first_offset < stored {
        assert!(trimmed.elapsed() < Duration::from_secs(10), "never trimmed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.assert_serving().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_past_the_limit_is_refused_and_its_slots_come_back() {
    let broker = TestBroker::start_with(|c| {
        c.max_connections = 50;
        c.hello_timeout_ms = 1_000;
    })
    .await;
    let existing = broker.client().await;
    let mut flood = Vec::new();
    for _ in 0..149 {
        flood.push(Raw::connect(broker.addr()).await);
    }
    // 49 more fit beside the existing session; the other 100 are refused with a reason.
    for raw in &mut flood[49..] {
        raw.expect_error(0, ErrorCode::TooManyConnections).await;
        raw.expect_closed().await;
    }
    existing
        .list_topics()
        .await
        .expect("existing sessions keep working");
    // The flood never says Hello: it is closed, and its slots are free again.
    for raw in &mut flood[..49] {
        raw.expect_error(0, ErrorCode::HelloRequired).await;
        raw.expect_closed().await;
    }
    let started = Instant::now();
    let mut clients = Vec::new();
    while clients.len() < 49 {
        match herald_client::Client::connect(broker.addr()).await {
            Ok(client) => clients.push(client),
            Err(err) => {
                assert_eq!(err.code(), Some(ErrorCode::TooManyConnections), "{err}");
                assert!(
                    started.elapsed() < Duration::from_secs(3),
                    "slots not freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    clients[48].list_topics().await.unwrap();
    broker.stop().await;
}
