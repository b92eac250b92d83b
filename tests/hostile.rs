//! Random and mutated frames thrown at a live broker: it never panics, answers or closes
//! each hostile connection, and keeps serving a well-behaved client throughout. (The
//! decoder alone is fuzzed by `fuzz/`; this is its counterpart that runs in CI.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use herald_client::{FetchRequest, Record};
use herald_protocol::{
    encode_batch, encode_batch_with, Ack, Codec, Commit, CreateTopic, DescribeTopic, Fetch, Frame,
    Hello, JoinGroup, ListTopics, Message, OffsetRange, PartitionOffset, Publish, Retention,
    StartPosition, Subscribe,
};
use herald_suite::TestBroker;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Small, so that oversized lengths are easy to reach.
const MAX_FRAME: u32 = 64 * 1024;

fn encode(id: u32, frame: impl Into<Frame>) -> Vec<u8> {
    let mut out = BytesMut::new();
    Message::new(id, frame).encode(&mut out);
    out.to_vec()
}

fn hello() -> Vec<u8> {
    encode(
        1,
        Hello {
            min_version: 1,
            max_version: 1,
            client_id: "hostile".into(),
            ..Hello::default()
        },
    )
}

/// Well-formed frames of many kinds, to be mutated.
fn templates() -> Vec<Vec<u8>> {
    let batch = encode_batch(&[Record::new("payload").with_key("key")]);
    let records: Vec<Record> = (0..20)
        .map(|i| Record::new(format!("compressed {i}")))
        .collect();
    let compressed = [Codec::Lz4, Codec::Zstd].map(|codec| {
        encode(
            5,
            Publish {
                topic: "t".into(),
                partition: 1,
                producer_id: 0,
                sequence: 0,
                batch: encode_batch_with(&records, codec),
            },
        )
    });
    let mut templates = vec![
        hello(),
        encode(2, ListTopics {}),
        encode(3, DescribeTopic { name: "t".into() }),
        encode(
            4,
            CreateTopic {
                name: "fuzzed".into(),
                partitions: 2,
                retention: Retention::default(),
            },
        ),
        encode(
            5,
            Publish {
                topic: "t".into(),
                partition: 0,
                producer_id: 9,
                sequence: 1,
                batch,
            },
        ),
        encode(
            6,
            Fetch {
                topic: "t".into(),
                partition: 0,
                offset: 0,
                max_messages: 10,
                max_bytes: 4096,
                max_wait_ms: 10,
                min_bytes: 1,
            },
        ),
        encode(
            7,
            Subscribe {
                topic: "t".into(),
                group: "g".into(),
                prefetch_count: 5,
                prefetch_bytes: 0,
                start: StartPosition::Earliest,
            },
        ),
        encode(
            8,
            Ack {
                subscription_id: 1,
                ranges: vec![OffsetRange {
                    partition: 0,
                    start: 0,
                    end: 3,
                }],
            },
        ),
        encode(
            9,
            JoinGroup {
                topic: "t".into(),
                group: "pg".into(),
                member_id: String::new(),
                start: StartPosition::Earliest,
            },
        ),
        encode(
            10,
            Commit {
                topic: "t".into(),
                group: "pg".into(),
                member_id: "m".into(),
                generation: 1,
                offsets: vec![PartitionOffset {
                    partition: 0,
                    offset: 1,
                }],
            },
        ),
    ];
    templates.extend(compressed);
    templates
}

/// What one hostile connection sends.
#[derive(Debug, Clone)]
enum Attack {
    /// Bytes of no particular shape.
    Garbage { greet: bool, bytes: Vec<u8> },
    /// A well-formed frame with bytes overwritten, then cut short or extended.
    Mutated {
        greet: bool,
        template: usize,
        writes: Vec<(usize, u8)>,
        keep: usize,
        tail: Vec<u8>,
    },
}

fn attack(templates: usize) -> impl Strategy<Value = Attack> {
    prop_oneof![
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..2048))
            .prop_map(|(greet, bytes)| Attack::Garbage { greet, bytes }),
        (
            any::<bool>(),
            0..templates,
            prop::collection::vec((0usize..256, any::<u8>()), 1..8),
            0usize..512,
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(greet, template, writes, keep, tail)| Attack::Mutated {
                greet,
                template,
                writes,
                keep,
                tail,
            }),
    ]
}

impl Attack {
    fn bytes(&self, templates: &[Vec<u8>]) -> Vec<u8> {
        let (greet, body) = match self {
            Attack::Garbage { greet, bytes } => (*greet, bytes.clone()),
            Attack::Mutated {
                greet,
                template,
                writes,
                keep,
                tail,
            } => {
                let mut frame = templates[*template].clone();
                for &(at, byte) in writes {
                    let len = frame.len();
                    frame[at % len] = byte;
                }
                frame.truncate((*keep).max(1));
                frame.extend_from_slice(tail);
                (*greet, frame)
            }
        };
        let mut out = if greet { hello() } else { Vec::new() };
        out.extend_from_slice(&body);
        out
    }
}

/// Sends the attack and reads whatever comes back until the broker closes the
/// connection or falls quiet.
async fn run(addr: std::net::SocketAddr, bytes: Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    // The broker may close mid-write after a fatal error: that is a fine answer.
    let _ = stream.write_all(&bytes).await;
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(30), stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
    }
}

#[test]
fn hostile_frames_never_take_the_broker_down() {
    // A panic in a broker task would not stop the process: catch any, anywhere.
    let panicked = Arc::new(AtomicBool::new(false));
    let default_hook = std::panic::take_hook();
    std::panic::set_hook({
        let panicked = Arc::clone(&panicked);
        Box::new(move |info| {
            panicked.store(true, Ordering::Relaxed);
            default_hook(info);
        })
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = runtime.block_on(TestBroker::start_with(|c| c.max_frame_bytes = MAX_FRAME));
    let addr = broker.addr();
    let client = runtime.block_on(broker.client());
    runtime.block_on(client.create_topic("t", 2)).unwrap();

    // A well-behaved client publishes and reads back the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let steady = runtime.spawn({
        let (client, stop, served) = (client.clone(), Arc::clone(&stop), Arc::clone(&served));
        async move {
            let producer = client.producer();
            while !stop.load(Ordering::Relaxed) {
                let confirm = producer.send("steady", Record::new("ok")).await?;
                let request = FetchRequest::new("steady", confirm.partition, confirm.offset);
                let fetched = client.fetch(request).await?;
                assert_eq!(fetched.records[0].record.payload, "ok");
                served.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<(), herald_client::Error>(())
        }
    });

    let templates = templates();
    let mut runner = TestRunner::new(Config {
        cases: 192,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&attack(templates.len()), |attack| {
        runtime.block_on(run(addr, attack.bytes(&templates)));
        Ok(())
    });
    result.unwrap();

    stop.store(true, Ordering::Relaxed);
    runtime
        .block_on(steady)
        .unwrap()
        .expect("the well-behaved client was served throughout");
    assert!(served.load(Ordering::Relaxed) > 10);
    runtime.block_on(broker.assert_serving());
    runtime.block_on(broker.stop());
    assert!(
        !panicked.load(Ordering::Relaxed),
        "something panicked (see above)"
    );
}
