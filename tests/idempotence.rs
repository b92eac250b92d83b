//! Idempotent producers: a numbered batch sent again is answered with its original offsets
//! and stored once, across a broker restart too; gaps and forgotten numbers are refused.

use herald_broker::{Broker, Config};
use herald_client::{Client, ErrorCode};
use herald_protocol::{encode_batch, Frame, Publish, Record, ANY_PARTITION};
use herald_suite::Raw;

/// A connection that sends hand-numbered publishes.
struct Producer {
    raw: Raw,
}

/// Where a batch went: (partition, base offset, count), or the error code.
type Outcome = Result<(u32, u64, u32), ErrorCode>;

impl Producer {
    async fn connect(addr: std::net::SocketAddr) -> Producer {
        Producer {
            raw: Raw::greeted(addr).await,
        }
    }

    async fn send(&mut self, topic: &str, partition: u32, sequence: u64, count: usize) -> Outcome {
        let records: Vec<Record> = (0..count)
            .map(|i| Record::new(format!("seq{sequence}-{i}")))
            .collect();
        let publish = Publish {
            topic: topic.into(),
            partition,
            producer_id: 77,
            sequence,
            batch: encode_batch(&records),
        };
        match self.raw.call(publish).await {
            Frame::PublishOk(ok) => {
                assert_eq!(ok.runs.len(), 1);
                let run = &ok.runs[0];
                Ok((run.partition, run.base_offset, run.count))
            }
            Frame::Error(err) => Err(err.error_code().expect("a known code")),
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn stored(client: &Client, topic: &str) -> Vec<u64> {
    client
        .describe_topic(topic)
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.next_offset)
        .collect()
}

#[tokio::test]
async fn a_resent_batch_gets_its_original_offsets_and_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config::ephemeral(dir.path().join("data"));
    let broker = Broker::start(config()).await.unwrap();
    let client = Client::connect(broker.local_addr()).await.unwrap();
    client.create_topic("orders", 2).await.unwrap();
    let mut producer = Producer::connect(broker.local_addr()).await;

    let first = producer.send("orders", 1, 1, 5).await.unwrap();
    let second = producer.send("orders", 1, 2, 3).await.unwrap();
    assert_eq!((first, second), ((1, 0, 5), (1, 5, 3)));
    assert_eq!(producer.send("orders", 1, 1, 5).await, Ok(first), "resent");
    assert_eq!(producer.send("orders", 1, 2, 3).await, Ok(second), "resent");
    assert_eq!(stored(&client, "orders").await, vec![0, 8], "stored once");

    // Numbers count per partition; a gap or a 0 is refused.
    assert_eq!(producer.send("orders", 0, 1, 2).await, Ok((0, 0, 2)));
    assert_eq!(
        producer.send("orders", 1, 4, 1).await,
        Err(ErrorCode::OutOfOrderSequence)
    );
    assert_eq!(
        producer.send("orders", 1, 0, 1).await,
        Err(ErrorCode::OutOfOrderSequence)
    );
    // A numbered batch must name its partition on a topic with several.
    assert_eq!(
        producer.send("orders", ANY_PARTITION, 3, 1).await,
        Err(ErrorCode::InvalidArgument)
    );
    let third = producer.send("orders", 1, 3, 2).await.unwrap();
    assert_eq!(third, (1, 8, 2));
    broker.shutdown().await.unwrap();

    // The broker remembers across a restart.
    let broker = Broker::start(config()).await.unwrap();
    let client = Client::connect(broker.local_addr()).await.unwrap();
    let mut producer = Producer::connect(broker.local_addr()).await;
    assert_eq!(
        producer.send("orders", 1, 3, 2).await,
        Ok(third),
        "resent after a restart"
    );
    assert_eq!(producer.send("orders", 1, 2, 3).await, Ok(second));
    assert_eq!(stored(&client, "orders").await, vec![2, 10]);
    assert_eq!(producer.send("orders", 1, 4, 1).await, Ok((1, 10, 1)));

    // Only the last batches are remembered: one from long ago is refused, not stored.
    for sequence in 5..30 {
        producer.send("orders", 1, sequence, 1).await.unwrap();
    }
    assert_eq!(
        producer.send("orders", 1, 1, 5).await,
        Err(ErrorCode::OutOfOrderSequence)
    );
    assert_eq!(stored(&client, "orders").await, vec![2, 36]);
    broker.shutdown().await.unwrap();
}
