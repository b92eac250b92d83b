//! Heartbeats keep idle sessions alive in both directions; a silent peer is dropped.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use herald_client::ErrorCode;
use herald_protocol::{Frame, FrameCodec, Hello, Message};
use herald_suite::{Raw, TestBroker};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

#[tokio::test]
async fn an_idle_client_outlives_many_session_timeouts() {
    let broker = TestBroker::start_with(|c| {
        c.session_timeout_ms = 300;
        c.min_session_timeout_ms = 100;
    })
    .await;
    let client = broker.client().await;
    assert_eq!(client.session().session_timeout_ms, 300);
    assert_eq!(client.session().heartbeat_interval_ms, 100);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    client
        .create_topic("still-here", 1)
        .await
        .expect("the idle session is alive");
    broker.stop().await;
}

#[tokio::test]
async fn a_silent_client_is_expired_after_the_session_timeout() {
    let broker = TestBroker::start_with(|c| {
        c.session_timeout_ms = 300;
        c.min_session_timeout_ms = 100;
    })
    .await;
    let stream = TcpStream::connect(broker.addr()).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::default());
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        client_id: "silent".into(),
        ..Hello::default()
    };
    framed.send(Message::new(1, hello)).await.unwrap();
    let started = Instant::now();
    let mut heartbeats = 0;
    let expired = loop {
        let raw = tokio::time::timeout(Duration::from_secs(5), framed.next())
            .await
            .expect("the broker acts within the timeout")
            .expect("an expiry notice before the close")
            .unwrap();
        match raw.decode().unwrap() {
            Frame::HelloOk(_) => {}
            Frame::Heartbeat(_) => heartbeats += 1,
            Frame::Error(err) => break err,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(expired.error_code(), Some(ErrorCode::SessionExpired));
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "expired early: {:?}",
        started.elapsed()
    );
    assert!(
        heartbeats >= 1,
        "the broker heartbeats while the client is quiet"
    );
    assert!(framed.next().await.is_none(), "the connection is closed");
    broker.stop().await;
}

/// Says `Hello` asking for `timeout_ms`, and returns what the broker granted.
async fn granted(broker: &TestBroker, timeout_ms: u32, heartbeat_ms: u32) -> (u32, u32) {
    let mut raw = Raw::connect(broker.addr()).await;
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        client_id: "asking".into(),
        heartbeat_interval_ms: heartbeat_ms,
        session_timeout_ms: timeout_ms,
    };
    match raw.call(hello).await {
        Frame::HelloOk(ok) => (ok.session_timeout_ms, ok.heartbeat_interval_ms),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn hello_negotiates_the_session_within_the_brokers_bounds() {
    let broker = TestBroker::start_with(|c| {
        c.session_timeout_ms = 6_000;
        c.min_session_timeout_ms = 1_500;
        c.max_session_timeout_ms = 60_000;
    })
    .await;
    assert_eq!(granted(&broker, 0, 0).await, (6_000, 2_000), "the defaults");
    assert_eq!(granted(&broker, 3_000, 0).await, (3_000, 1_000), "as asked");
    assert_eq!(
        granted(&broker, 100, 0).await,
        (1_500, 500),
        "raised to the minimum"
    );
    assert_eq!(
        granted(&broker, 900_000, 0).await,
        (60_000, 20_000),
        "cut to the maximum"
    );
    assert_eq!(
        granted(&broker, 3_000, 200).await,
        (3_000, 200),
        "a shorter heartbeat"
    );
    assert_eq!(
        granted(&broker, 3_000, 9_000).await,
        (3_000, 1_500),
        "at most half"
    );

    // The granted timeout is the one enforced: a silent client asking for 1.5 s is gone
    // after 1.5 s, not after the broker's default of 6 s.
    let options = herald_client::ConnectOptions {
        session_timeout: Some(Duration::from_millis(1_500)),
        ..Default::default()
    };
    let client = herald_client::Client::connect_with(broker.addr(), options)
        .await
        .unwrap();
    assert_eq!(client.session().session_timeout_ms, 1_500);
    let stream = TcpStream::connect(broker.addr()).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::default());
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        client_id: "silent".into(),
        heartbeat_interval_ms: 0,
        session_timeout_ms: 1_500,
    };
    framed.send(Message::new(1, hello)).await.unwrap();
    let started = Instant::now();
    loop {
        let raw = tokio::time::timeout(Duration::from_secs(4), framed.next())
            .await
            .expect("expired well before the default timeout")
            .expect("an expiry notice")
            .unwrap();
        if let Frame::Error(err) = raw.decode().unwrap() {
            assert_eq!(err.error_code(), Some(ErrorCode::SessionExpired));
            break;
        }
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1_500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    broker.stop().await;
}
