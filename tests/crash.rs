//! A broker killed with SIGKILL mid-stream loses no confirmed record.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use herald_client::{Client, ConnectOptions, FetchRequest, Record};
use herald_suite::BrokerProcess;

const PARTITIONS: u32 = 4;
const PRODUCERS: usize = 4;

/// A confirmed record: where the broker said it stored which bytes.
type Confirmed = (u32, u64, Bytes);

/// Publishes until the broker dies; returns what was confirmed.
async fn produce_until_killed(addr: String, cycle: usize, producer: usize) -> Vec<Confirmed> {
    // Without reconnecting: the producer stops at the kill, and what it had confirmed
    // must all be there after the restart.
    let options = ConnectOptions {
        reconnect: None,
        ..Default::default()
    };
    let Ok(client) = Client::connect_with(addr.as_str(), options).await else {
        return Vec::new();
    };
    let sender = client.producer();
    let mut pending = VecDeque::new();
    let mut confirmed = Vec::new();
    for seq in 0u64.. {
        let payload = Bytes::from(format!(
            "cycle {cycle} producer {producer} seq {seq} {}",
            "x".repeat(seq as usize % 200)
        ));
        match sender.enqueue("crash", Record::new(payload.clone())).await {
            Ok(p) => pending.push_back((payload, p)),
            Err(_) => break,
        }
        if pending.len() >= 256 {
            let (payload, p) = pending.pop_front().unwrap();
            match p.await {
                Ok(c) => confirmed.push((c.partition, c.offset, payload)),
                Err(_) => break,
            }
        }
    }
    // Whatever was confirmed before the connection broke still counts.
    while let Some((payload, p)) = pending.pop_front() {
        if let Ok(c) = p.await {
            confirmed.push((c.partition, c.offset, payload));
        }
    }
    confirmed
}

/// Every record of every partition, by partition and offset.
async fn read_everything(client: &Client) -> BTreeMap<u32, Vec<Bytes>> {
    let info = client.describe_topic("crash").await.unwrap();
    let mut all = BTreeMap::new();
    for p in &info.partitions {
        assert_eq!(p.first_offset, 0);
        let mut records = Vec::new();
        while (records.len() as u64) < p.next_offset {
            let mut request = FetchRequest::new("crash", p.partition, records.len() as u64);
            request.max_messages = 10_000;
            let fetched = client.fetch(request).await.unwrap();
            for (i, r) in fetched.records.iter().enumerate() {
                assert_eq!(r.offset, (records.len() + i) as u64, "offsets are dense");
            }
            records.extend(fetched.records.into_iter().map(|r| r.record.payload));
        }
        all.insert(p.partition, records);
    }
    all
}

/// A key whose records go to `partition`.
fn key_for(partition: u32) -> String {
    (0..)
        .map(|i| format!("probe-{i}"))
        .find(|k| herald_protocol::partition_for_key(k.as_bytes(), PARTITIONS) == partition)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut confirmed: Vec<Confirmed> = Vec::new();
    for cycle in 0..3 {
        let broker = BrokerProcess::start(&data, "127.0.0.1:0", &["--fsync", "always"]).await;
        let addr = broker.addr().to_string();
        let client = Client::connect(&addr).await.unwrap();
        if cycle == 0 {
            client.create_topic("crash", PARTITIONS).await.unwrap();
        }
        check(&client, &confirmed).await;
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| tokio::spawn(produce_until_killed(addr.clone(), cycle, p)))
            .collect();
        tokio::time::sleep(Duration::from_millis(400)).await;
        broker.kill().await;
        let before = confirmed.len();
        for producer in producers {
            confirmed.extend(producer.await.unwrap());
        }
        assert!(
            confirmed.len() > before + 100,
            "cycle {cycle} confirmed only {} records",
            confirmed.len() - before
        );
    }
    let broker = BrokerProcess::start(&data, "127.0.0.1:0", &["--fsync", "always"]).await;
    check(&Client::connect(broker.addr()).await.unwrap(), &confirmed).await;
}

/// Every confirmed record is at its offset with its bytes, and new records continue each
/// partition at its next offset.
async fn check(client: &Client, confirmed: &[Confirmed]) {
    let stored = read_everything(client).await;
    for (partition, offset, payload) in confirmed {
        let found = stored
            .get(partition)
            .and_then(|records| records.get(*offset as usize));
        assert_eq!(
            found,
            Some(payload),
            "confirmed record {partition}:{offset} lost or changed"
        );
    }
    let producer = client.producer();
    for (&partition, records) in &stored {
        let probe = producer
            .send("crash", Record::new("probe").with_key(key_for(partition)))
            .await
            .unwrap();
        assert_eq!(
            (probe.partition, probe.offset),
            (partition, records.len() as u64),
            "offsets continue"
        );
    }
}
