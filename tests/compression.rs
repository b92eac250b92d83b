//! Compressed batches end to end: every codec through publish, fetch, push, the HTTP
//! gateway and a restart; mixed codecs in one partition; batches that lie or are damaged
//! refused with nothing stored.

use std::time::Duration;

use futures::StreamExt;
use herald_broker::config::Listen;
use herald_client::{Client, Codec, FetchRequest, ProducerConfig, PushConsumerConfig, Record};
use herald_protocol::{
    encode_batch_with, ErrorCode, Fetch, FetchOk, Frame, Publish, ANY_PARTITION,
};
use herald_suite::{read_all, Raw, TestBroker};
use serde_json::Value;

fn producer_config(codec: Codec) -> ProducerConfig {
    ProducerConfig {
        compression: codec,
        ..ProducerConfig::default()
    }
}

/// Text that compresses as real records do: repeated field names, varying values.
fn record(codec: Codec, i: usize) -> Record {
    let payload = format!(
        r#"{{"codec":"{codec}","n":{i},"user":"user-{}","event":"page_view","path":"/products/{}"}}"#,
        i % 17,
        i * 7919 % 1000
    );
    Record::new(payload).with_header("codec", codec.name())
}

async fn publish(client: &Client, topic: &str, codec: Codec, range: std::ops::Range<usize>) {
    let producer = client.producer_with(producer_config(codec));
    let records: Vec<Record> = range.map(|i| record(codec, i)).collect();
    for batch in records.chunks(250) {
        producer.send_batch(topic, batch.to_vec()).await.unwrap();
    }
}

fn payloads(records: &[(u32, herald_client::StoredRecord)]) -> Vec<String> {
    records
        .iter()
        .map(|(_, r)| String::from_utf8(r.record.payload.to_vec()).unwrap())
        .collect()
}

fn expected(parts: &[(Codec, std::ops::Range<usize>)]) -> Vec<String> {
    parts
        .iter()
        .flat_map(|(codec, range)| range.clone().map(|i| record(*codec, i)))
        .map(|r| String::from_utf8(r.payload.to_vec()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_round_trips_through_fetch_push_http_and_a_restart() {
    let broker = TestBroker::start_with(|c| {
        c.http_listen = Listen::At("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let client = broker.client().await;
    client.create_topic("mixed", 1).await.unwrap();
    // Mixed codecs in one partition, one after another.
    let parts = [
        (Codec::None, 0..500),
        (Codec::Lz4, 500..1000),
        (Codec::Zstd, 1000..1500),
        (Codec::None, 1500..1600),
    ];
    for (codec, range) in &parts {
        publish(&client, "mixed", *codec, range.clone()).await;
    }
    let want = expected(&parts);
    let stored = read_all(&client, "mixed").await;
    assert_eq!(payloads(&stored), want);
    assert!(stored.iter().all(|(_, r)| r.record.headers.len() == 1));
    let offsets: Vec<u64> = stored.iter().map(|(_, r)| r.offset).collect();
    assert_eq!(offsets, (0..1600).collect::<Vec<u64>>());

    // Fetches that start or end inside a compressed batch get exactly what they asked for.
    for (offset, max) in [(510, 3), (999, 2), (1100, 1), (1249, 400)] {
        let request = FetchRequest {
            max_messages: max,
            ..FetchRequest::new("mixed", 0, offset)
        };
        let fetched = client.fetch(request).await.unwrap();
        let got: Vec<u64> = fetched.records.iter().map(|r| r.offset).collect();
        let end = (offset + u64::from(max)).min(1600);
        assert!(!got.is_empty() && got.len() as u64 <= end - offset);
        assert_eq!(got, (offset..offset + got.len() as u64).collect::<Vec<_>>());
        for r in &fetched.records {
            let text = String::from_utf8(r.record.payload.to_vec()).unwrap();
            assert_eq!(text, want[r.offset as usize]);
        }
    }
    // A byte limit smaller than a compressed batch still yields records, uncompressed.
    let small = FetchRequest {
        max_bytes: 200,
        ..FetchRequest::new("mixed", 0, 1000)
    };
    let fetched = client.fetch(small).await.unwrap();
    assert_eq!(fetched.records[0].offset, 1000);

    // A push group gets every record once, whatever its batch's codec.
    let mut consumer = client
        .push_consumer_with(
            "mixed",
            "pushers",
            PushConsumerConfig {
                prefetch: 300,
                ..PushConsumerConfig::default()
            },
        )
        .await
        .unwrap();
    let mut pushed = Vec::new();
    while pushed.len() < want.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("deliveries keep coming")
            .unwrap()
            .unwrap();
        pushed.push((delivery.offset, delivery.record.payload.clone()));
        delivery.ack();
    }
    consumer.flush_acks().await.unwrap();
    pushed.sort();
    let pushed: Vec<String> = pushed
        .into_iter()
        .map(|(_, p)| String::from_utf8(p.to_vec()).unwrap())
        .collect();
    assert_eq!(pushed, want);

    // The HTTP gateway decompresses for JSON.
    let url = format!(
        "http://{}/v1/topics/mixed/partitions/0/records?offset=995&max_records=10",
        broker.http_addr()
    );
    let out = tokio::process::Command::new("curl")
        .args(["-sS", &url])
        .output()
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    let values: Vec<&str> = body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        values,
        want[995..1005]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );

    // After a restart, everything reads back the same.
    drop((client, consumer));
    let broker = broker.restart().await;
    let client = broker.client().await;
    assert_eq!(payloads(&read_all(&client, "mixed").await), want);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_are_stored_compressed_and_split_by_key_keeping_their_codec() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let mut sizes = Vec::new();
    for codec in Codec::ALL {
        let topic = format!("size-{codec}");
        client.create_topic(&topic, 1).await.unwrap();
        publish(&client, &topic, codec, 0..2000).await;
        let info = client.describe_topic(&topic).await.unwrap();
        sizes.push((codec, info.partitions[0].bytes));
    }
    let [(_, none), (_, lz4), (_, zstd)] = sizes[..] else {
        unreachable!()
    };
    assert!(lz4 * 2 < none, "lz4 {lz4} against {none} uncompressed");
    assert!(zstd < lz4, "zstd {zstd} against lz4 {lz4}");

    // Keyed records spread over partitions: each part stays compressed and readable.
    client.create_topic("keyed", 4).await.unwrap();
    let producer = client.producer_with(producer_config(Codec::Zstd));
    let records: Vec<Record> = (0..400)
        .map(|i| record(Codec::Zstd, i).with_key(format!("k{}", i % 13)))
        .collect();
    // Sent as one batch to any partition, so the broker splits it by key.
    let mut raw = Raw::greeted(broker.addr()).await;
    let reply = raw
        .call(Publish {
            topic: "keyed".into(),
            partition: ANY_PARTITION,
            producer_id: 0,
            sequence: 0,
            batch: encode_batch_with(&records, Codec::Zstd),
        })
        .await;
    assert!(matches!(reply, Frame::PublishOk(_)), "{reply:?}");
    let stored = read_all(&client, "keyed").await;
    assert_eq!(stored.len(), 400);
    let partitions: std::collections::BTreeSet<u32> = stored.iter().map(|(p, _)| *p).collect();
    assert!(partitions.len() > 1);
    let mut got = payloads(&stored);
    got.sort();
    let mut want = expected(&[(Codec::Zstd, 0..400)]);
    want.sort();
    assert_eq!(got, want);
    // A partition's part is served compressed: one fetch answer, whose batch is zstd.
    let reply = raw
        .call(Fetch {
            topic: "keyed".into(),
            partition: stored[0].0,
            offset: 0,
            max_messages: 1000,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            min_bytes: 1,
        })
        .await;
    let Frame::FetchOk(FetchOk { batches, .. }) = reply else {
        panic!("{reply:?}")
    };
    let batches = herald_protocol::read_batches(batches).unwrap();
    assert!(
        batches.iter().all(|b| b.codec == Codec::Zstd),
        "{batches:?}"
    );
    drop(producer);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_lie_or_are_damaged_are_refused_and_nothing_is_stored() {
    let broker = TestBroker::start_with(|c| c.max_frame_bytes = 1 << 20).await;
    let client = broker.client().await;
    client.create_topic("t", 1).await.unwrap();
    // And sent to no partition of a topic with several, so the broker would route it.
    client.create_topic("routed", 4).await.unwrap();
    let records: Vec<Record> = (0..50)
        .map(|i| record(Codec::Lz4, i).with_key(format!("k{i}")))
        .collect();
    let mut raw = Raw::greeted(broker.addr()).await;
    let mut id = 100;
    for codec in [Codec::Lz4, Codec::Zstd] {
        let good = encode_batch_with(&records, codec).to_vec();
        let header = herald_protocol::record::BATCH_HEADER_LEN;
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut damaged = good.clone();
        let middle = header + 8 + (good.len() - header - 8) / 2;
        damaged[middle] ^= 0x40;
        cases.push(("a flipped compressed byte", damaged));
        let mut cut = good.clone();
        cut.truncate(good.len() - 5);
        let cut_len = (cut.len() - header) as u32;
        cut[28..32].copy_from_slice(&cut_len.to_be_bytes());
        cases.push(("compressed bytes cut short", cut));
        let mut longer = good.clone();
        let declared = u32::from_be_bytes(good[header..header + 4].try_into().unwrap());
        longer[header..header + 4].copy_from_slice(&(declared + 10).to_be_bytes());
        cases.push(("a longer uncompressed length", longer));
        let mut huge = good.clone();
        huge[header..header + 4].copy_from_slice(&(2u32 << 20).to_be_bytes());
        cases.push(("more than the maximum frame size, uncompressed", huge));
        let mut count = good.clone();
        count[27] += 1;
        cases.push(("one record more than it holds", count));
        let mut other = good.clone();
        other[24] = if codec == Codec::Lz4 { 2 } else { 1 };
        cases.push(("the other codec", other));
        let mut plain = good.clone();
        plain[24] = 0;
        cases.push(("no codec", plain));
        let mut unknown = good.clone();
        unknown[24] = 9;
        cases.push(("an unknown codec", unknown));
        for (what, batch) in cases {
            for (topic, partition) in [("t", 0), ("routed", ANY_PARTITION)] {
                id += 1;
                raw.send(
                    id,
                    Publish {
                        topic: topic.into(),
                        partition,
                        producer_id: 0,
                        sequence: 0,
                        batch: batch.clone().into(),
                    },
                )
                .await;
                let message = raw.expect_error(id, ErrorCode::MalformedFrame).await;
                assert!(!message.is_empty(), "{codec}, {what}, {topic}");
                raw.expect_alive().await;
            }
        }
    }
    for topic in ["t", "routed"] {
        let info = client.describe_topic(topic).await.unwrap();
        for partition in &info.partitions {
            assert_eq!(partition.next_offset, 0, "nothing stored in {topic}");
        }
    }
    // The connection and the broker serve on.
    let reply = raw
        .call(Publish {
            topic: "t".into(),
            partition: 0,
            producer_id: 0,
            sequence: 0,
            batch: encode_batch_with(&records, Codec::Zstd),
        })
        .await;
    assert!(matches!(reply, Frame::PublishOk(_)), "{reply:?}");
    assert_eq!(read_all(&client, "t").await.len(), 50);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_compressed_and_refuses_an_unknown_codec() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("cli", 1).await.unwrap();
    for codec in ["lz4", "zstd", "none"] {
        let args = ["publish", "cli", "--compression", codec, "one", "two"];
        let out = broker.cli(&args).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stored = read_all(&client, "cli").await;
    assert_eq!(payloads(&stored), ["one", "two"].repeat(3));

    let out = broker
        .cli(&["publish", "cli", "--compression", "gzip", "x"])
        .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("gzip") && stderr.contains("zstd"),
        "{stderr}"
    );
    assert_eq!(read_all(&client, "cli").await.len(), 6);
    broker.stop().await;
}
