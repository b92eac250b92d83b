//! Heartbeats keep idle sessions alive in both directions; a silent peer is dropped.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use herald_client::ErrorCode;
use herald_protocol::{Frame, FrameCodec, Hello, Message};
use herald_suite::TestBroker;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

#[tokio::test]
async fn an_idle_client_outlives_many_session_timeouts() {
    let broker = TestBroker::start_with(|c| c.session_timeout_ms = 300).await;
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
    let broker = TestBroker::start_with(|c| c.session_timeout_ms = 300).await;
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
