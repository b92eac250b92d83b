//! Bad input gets a clear error, never a panic or a large allocation, and the broker keeps
//! serving every other connection.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use herald_client::{Error, ErrorCode, Record};
use herald_protocol::{
    encode_batch, CreateTopic, Frame, Hello, ListTopics, Message, Publish, ANY_PARTITION,
};
use herald_suite::{binary, Raw, TestBroker};

fn hello(min: u16, max: u16) -> Hello {
    Hello {
        min_version: min,
        max_version: max,
        client_id: "raw".into(),
        ..Hello::default()
    }
}

fn publish(topic: &str, batch: Bytes) -> Publish {
    Publish {
        topic: topic.into(),
        partition: ANY_PARTITION,
        producer_id: 0,
        sequence: 0,
        batch,
    }
}

#[tokio::test]
async fn garbage_bytes_get_an_error_frame_and_a_closed_connection() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::connect(broker.addr()).await;
    raw.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    raw.expect_error(0, ErrorCode::FrameTooLarge).await;
    raw.expect_closed().await;
    broker.assert_serving().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_frame_announcing_four_gib_is_refused_from_its_header() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::greeted(broker.addr()).await;
    raw.send_bytes(&[0xff, 0xff, 0xff, 0xff, 0, 1, 0, 0]).await;
    let message = raw.expect_error(0, ErrorCode::FrameTooLarge).await;
    assert!(message.contains("4294967295"), "{message}");
    raw.expect_closed().await;
    broker.assert_serving().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_length_shorter_than_a_header_closes_the_connection_with_an_error() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::greeted(broker.addr()).await;
    raw.send_bytes(&[0, 0, 0, 2, 0, 1]).await;
    raw.expect_error(0, ErrorCode::MalformedFrame).await;
    raw.expect_closed().await;
    broker.assert_serving().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_truncated_frame_waits_for_the_rest() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::connect(broker.addr()).await;
    let bytes = Message::new(1, hello(1, 1)).to_bytes();
    let (head, tail) = bytes.split_at(bytes.len() / 2);
    raw.send_bytes(head).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    raw.send_bytes(tail).await;
    assert!(matches!(raw.recv().await, (1, Frame::HelloOk(_))));
    // A peer that hangs up mid-frame costs the broker nothing.
    let mut cut = Raw::connect(broker.addr()).await;
    cut.send_bytes(head).await;
    drop(cut);
    raw.expect_alive().await;
    broker.assert_serving().await;
    broker.stop().await;
}

#[tokio::test]
async fn an_unknown_opcode_is_an_error_and_the_connection_lives_on() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::greeted(broker.addr()).await;
    let mut frame = BytesMut::new();
    frame.put_u32(8);
    frame.put_u16(0x7777);
    frame.put_u16(0);
    frame.put_u32(5);
    raw.send_bytes(&frame).await;
    raw.expect_error(5, ErrorCode::UnknownOpcode).await;
    raw.expect_alive().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_malformed_body_is_an_error_and_the_connection_lives_on() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::greeted(broker.addr()).await;
    let mut frame = BytesMut::new();
    frame.put_u32(8 + 3);
    frame.put_u16(herald_protocol::Opcode::CreateTopic as u16);
    frame.put_u16(0);
    frame.put_u32(6);
    frame.put_slice(&[0, 9, b'x']); // a string that claims 9 bytes and has 1
    raw.send_bytes(&frame).await;
    raw.expect_error(6, ErrorCode::MalformedFrame).await;
    // A publish whose batch is garbage.
    raw.send(7, publish("t", Bytes::from_static(&[1, 2, 3])))
        .await;
    raw.expect_error(7, ErrorCode::MalformedFrame).await;
    raw.expect_alive().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_request_before_hello_is_refused_until_hello() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::connect(broker.addr()).await;
    raw.send(1, ListTopics {}).await;
    raw.expect_error(1, ErrorCode::HelloRequired).await;
    raw.send(2, hello(1, 1)).await;
    assert!(matches!(raw.recv().await, (2, Frame::HelloOk(_))));
    raw.send(3, hello(1, 1)).await;
    raw.expect_error(3, ErrorCode::UnexpectedFrame).await;
    raw.expect_alive().await;
    broker.stop().await;
}

#[tokio::test]
async fn an_unsupported_version_names_the_versions_the_broker_speaks() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::connect(broker.addr()).await;
    raw.send(1, hello(7, 9)).await;
    let (id, frame) = raw.recv().await;
    let Frame::Error(err) = frame else {
        panic!("expected an error, got {frame:?}")
    };
    assert_eq!(
        (id, err.error_code()),
        (1, Some(ErrorCode::UnsupportedVersion))
    );
    assert!(err.message.contains("1..=1"), "{}", err.message);
    assert_eq!(&err.detail[..], &[0, 1, 0, 1]);
    raw.send(2, hello(1, 9)).await;
    assert!(matches!(raw.recv().await, (2, Frame::HelloOk(ok)) if ok.version == 1));
    broker.stop().await;
}

#[tokio::test]
async fn invalid_topic_names_are_refused() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::greeted(broker.addr()).await;
    for (id, name) in [(1, ""), (2, "has space"), (3, "slash/name"), (4, "é")] {
        raw.send(
            id,
            CreateTopic {
                name: name.into(),
                partitions: 1,
                ..CreateTopic::default()
            },
        )
        .await;
        raw.expect_error(id, ErrorCode::InvalidTopicName).await;
    }
    let long = "a".repeat(201);
    raw.send(
        5,
        CreateTopic {
            name: long.clone(),
            partitions: 1,
            ..CreateTopic::default()
        },
    )
    .await;
    raw.expect_error(5, ErrorCode::InvalidTopicName).await;
    raw.send(6, publish(&long, encode_batch(&[Record::new("x")])))
        .await;
    raw.expect_error(6, ErrorCode::InvalidTopicName).await;
    raw.send(
        7,
        CreateTopic {
            name: "ok".into(),
            partitions: 0,
            ..CreateTopic::default()
        },
    )
    .await;
    raw.expect_error(7, ErrorCode::InvalidArgument).await;
    raw.expect_alive().await;
    broker.stop().await;
}

#[tokio::test]
async fn an_empty_batch_is_refused() {
    let broker = TestBroker::start().await;
    let mut raw = Raw::greeted(broker.addr()).await;
    raw.send(1, publish("t", encode_batch(&[]))).await;
    raw.expect_error(1, ErrorCode::EmptyBatch).await;
    raw.expect_alive().await;
    broker.stop().await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_is_refused_by_broker_and_client() {
    let broker = TestBroker::start_with(|c| c.max_message_bytes = 1024).await;
    let big = Record::new(vec![7u8; 2000]);
    let mut raw = Raw::greeted(broker.addr()).await;
    raw.send(
        1,
        publish("t", encode_batch(&[Record::new("small"), big.clone()])),
    )
    .await;
    let message = raw.expect_error(1, ErrorCode::MessageTooLarge).await;
    assert!(
        message.contains("2000") && message.contains("1024"),
        "{message}"
    );
    raw.expect_alive().await;
    let client = broker.client().await;
    let err = client.producer().send("t", big).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::MessageTooLarge {
                size: 2000,
                max: 1024
            }
        ),
        "{err}"
    );
    broker.assert_serving().await;
    broker.stop().await;
}

#[tokio::test]
async fn publishing_to_a_missing_topic_fails_without_auto_create() {
    let broker = TestBroker::start_with(|c| c.no_auto_create_topics = true).await;
    let client = broker.client().await;
    let err = client
        .producer()
        .send("missing", Record::new("x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownTopic), "{err}");
    client.create_topic("present", 1).await.unwrap();
    client
        .producer()
        .send("present", Record::new("x"))
        .await
        .unwrap();
    broker.stop().await;
}

#[tokio::test]
async fn fetch_outside_the_log_reports_its_bounds() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client
        .producer()
        .send("bounds", Record::new("x"))
        .await
        .unwrap();
    let err = client
        .fetch(herald_client::FetchRequest::new("bounds", 0, 5))
        .await
        .unwrap_err();
    let Error::Broker(err) = err else {
        panic!("{err}")
    };
    assert_eq!(
        (err.code, err.offsets),
        (Some(ErrorCode::OffsetOutOfRange), Some((0, 1)))
    );
    let err = client
        .fetch(herald_client::FetchRequest::new("bounds", 3, 0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UnknownPartition));
    broker.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_refused_cleanly() {
    let broker = TestBroker::start_with(|c| c.max_connections = 2).await;
    let first = broker.client().await;
    let _second = broker.client().await;
    let err = herald_client::Client::connect(broker.addr())
        .await
        .err()
        .expect("third connection refused");
    assert_eq!(err.code(), Some(ErrorCode::TooManyConnections), "{err}");
    first
        .list_topics()
        .await
        .expect("existing sessions keep working");
    broker.stop().await;
}

#[tokio::test]
async fn cli_reports_bad_input_with_a_message_and_a_nonzero_exit() {
    let broker = TestBroker::start().await;
    let addr = broker.addr().to_string();
    let run = |args: &[&str]| {
        tokio::process::Command::new(binary("herald"))
            .arg("--broker")
            .arg(&addr)
            .args(args)
            .output()
    };
    for args in [
        &["publish", "bad name", "x"][..],
        &["topic", "create", "t", "--partitions", "0"],
        &["topic", "describe", "missing"],
        &[
            "consume",
            "missing",
            "--group",
            "g",
            "--idle-timeout-ms",
            "100",
        ],
        &["publish", "t", "--header", "no-equals-sign", "x"],
        &["consume", "t", "--group", "g", "--mode", "push"],
    ] {
        let out = run(args).await.unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.trim().is_empty() && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
    let unreachable = tokio::process::Command::new(binary("herald"))
        .args(["--broker", "127.0.0.1:1", "topic", "list"])
        .output()
        .await
        .unwrap();
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot connect"));
    broker.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_a_long_poll_behind_frees_its_slot() {
    let broker = TestBroker::start_with(|c| c.max_connections = 1).await;
    let mut raw = Raw::greeted(broker.addr()).await;
    raw.send(
        2,
        CreateTopic {
            name: "quiet".into(),
            partitions: 1,
            ..CreateTopic::default()
        },
    )
    .await;
    assert!(matches!(raw.recv().await, (2, Frame::TopicInfo(_))));
    let fetch = herald_protocol::Fetch {
        topic: "quiet".into(),
        partition: 0,
        offset: 0,
        max_messages: 10,
        max_bytes: 1 << 20,
        max_wait_ms: u32::MAX,
        min_bytes: 1,
    };
    raw.send(3, fetch).await;
    drop(raw);
    // The only slot comes back although the fetch could have waited for 49 days.
    let mut connected = None;
    for _ in 0..100 {
        if let Ok(client) = herald_client::Client::connect(broker.addr()).await {
            connected = Some(client);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    connected
        .expect("the slot was freed")
        .list_topics()
        .await
        .unwrap();
    broker.stop().await;
}
