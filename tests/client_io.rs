//! The client's connection against a scripted broker: it keeps reading replies while a
//! write waits on a socket the broker has stopped reading.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_client::{Client, Record};
use herald_protocol::{
    Frame, FrameCodec, HelloOk, Message, PartitionInfo, Retention, TopicInfo, TopicList,
    PROTOCOL_VERSION,
};
use tokio::net::TcpSocket;
use tokio_util::codec::{FramedRead, FramedWrite};

const MAX_FRAME: u32 = 8 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_read_while_a_write_waits_on_a_full_socket() {
    // A small receive buffer, so the client's writes back up soon.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(8).unwrap();
    let addr = listener.local_addr().unwrap();
    let (asked_tx, asked) = tokio::sync::oneshot::channel();
    let mut asked_tx = Some(asked_tx);
    let (published_tx, published) = tokio::sync::oneshot::channel();
    let (answer_tx, answer) = tokio::sync::oneshot::channel::<()>();
    let broker = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, write) = stream.into_split();
        let codec = FrameCodec::new(MAX_FRAME);
        let (mut frames, mut sink) = (FramedRead::new(read, codec), FramedWrite::new(write, codec));
        let hello = frames.next().await.unwrap().unwrap();
        let granted = HelloOk {
            version: PROTOCOL_VERSION,
            broker_version: "scripted".into(),
            session_id: 1,
            heartbeat_interval_ms: 60_000,
            session_timeout_ms: 120_000,
            max_frame_bytes: MAX_FRAME,
            max_message_bytes: MAX_FRAME / 2,
        };
        sink.send(Message::new(hello.correlation_id, granted))
            .await
            .unwrap();
        // Holds the first request (a listing) unanswered, answers the producers'
        // questions about the topic, and stops reading at the first publish: the client's
        // writes back up.
        let mut listing = None;
        loop {
            let request = frames.next().await.unwrap().unwrap();
            let id = request.correlation_id;
            match request.decode().unwrap() {
                Frame::ListTopics(_) => {
                    listing = Some(id);
                    asked_tx.take().unwrap().send(()).unwrap();
                }
                Frame::DescribeTopic(_) => {
                    let partition = PartitionInfo {
                        partition: 0,
                        first_offset: 0,
                        next_offset: 0,
                        bytes: 0,
                    };
                    let info = TopicInfo {
                        name: "stuck".into(),
                        retention: Retention::default(),
                        partitions: vec![partition],
                    };
                    sink.send(Message::new(id, info)).await.unwrap();
                }
                Frame::Publish(_) => break,
                other => panic!("unexpected {:?}", other.opcode()),
            }
        }
        published_tx.send(()).unwrap();
        answer.await.unwrap();
        let reply = TopicList { topics: vec![] };
        sink.send(Message::new(listing.unwrap(), reply))
            .await
            .unwrap();
        // Holds the socket open (unread) until the test ends.
        std::future::pending::<()>().await;
        drop(frames);
    });

    let client = Client::connect(addr).await.unwrap();
    let listing = tokio::spawn({
        let client = client.clone();
        async move { client.list_topics().await }
    });
    asked.await.unwrap();
    // 64 producers of a 1 MiB record each: far more than the socket buffers hold, so the
    // connection's writes wait on a socket nobody reads.
    let publishing: Vec<_> = (0..64)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let record = Record::new(vec![7u8; 1 << 20]);
                client.producer().send("stuck", record).await
            })
        })
        .collect();
    published.await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    answer_tx.send(()).unwrap();
    let listed = tokio::time::timeout(Duration::from_secs(10), listing)
        .await
        .expect("the reply is read while the write waits")
        .unwrap()
        .unwrap();
    assert!(listed.is_empty());
    for publish in publishing {
        assert!(
            !publish.is_finished(),
            "the scripted broker answers no publish"
        );
        publish.abort();
    }
    broker.abort();
}
