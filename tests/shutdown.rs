//! SIGTERM / SIGINT stop the broker cleanly: clients are told, requests in flight end,
//! the store is flushed, and the exit code is 0. A second signal exits at once, and the
//! store still opens with everything that was confirmed.

use std::time::{Duration, Instant};

use herald_client::{Client, ConnectOptions, FetchRequest, Record};
use herald_protocol::Fetch;
use herald_suite::{disconnected, BrokerProcess, Raw};

async fn publish(client: &Client, n: usize) {
    let records = (0..n).map(|i| Record::new(format!("{i:>1024}"))).collect();
    client.producer().send_batch("kept", records).await.unwrap();
}

async fn stored(client: &Client) -> u64 {
    let info = client.describe_topic("kept").await.unwrap();
    info.partitions[0].next_offset
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_tells_clients_ends_long_polls_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // `never`: only the shutdown's flush puts the records on disk.
    let args = ["--fsync", "never"];
    let broker = BrokerProcess::start(&data, "127.0.0.1:0", &args).await;
    let options = ConnectOptions {
        reconnect: None,
        ..Default::default()
    };
    let client = Client::connect_with(broker.addr(), options).await.unwrap();
    client.create_topic("kept", 1).await.unwrap();
    publish(&client, 1_000).await;
    let mut events = client.events();
    let mut long_poll = FetchRequest::new("kept", 0, 1_000);
    long_poll.max_wait_ms = 60_000;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.fetch(long_poll).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    broker.signal("-TERM");
    let told = disconnected(&mut events, Duration::from_secs(5)).await;
    assert!(told.contains("going away"), "{told}");
    let answered = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the long-poll ends with the shutdown")
        .unwrap();
    assert!(answered.is_ok(), "{answered:?}");
    assert_eq!(broker.exit_code(Duration::from_secs(10)).await, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    let broker = BrokerProcess::start(&data, "127.0.0.1:0", &args).await;
    let client = Client::connect(broker.addr()).await.unwrap();
    assert_eq!(stored(&client).await, 1_000, "flushed before exiting");
    broker.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_and_the_store_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--fsync",
        "always",
        "--shutdown-timeout-ms",
        "60000",
        "--max-outbound-bytes",
        "65536",
    ];
    let broker = BrokerProcess::start(&data, "127.0.0.1:0", &args).await;
    let client = Client::connect(broker.addr()).await.unwrap();
    client.create_topic("kept", 1).await.unwrap();
    publish(&client, 1_000).await;
    // A client that asks for much and reads nothing holds the first shutdown up (its
    // replies cannot be written), up to the long shutdown timeout.
    let mut stuck = Raw::greeted(broker.addr()).await;
    for id in 1..=200 {
        let fetch = Fetch {
            topic: "kept".into(),
            partition: 0,
            offset: 0,
            max_messages: 1_000,
            max_bytes: 1 << 20,
            max_wait_ms: 0,
            min_bytes: 0,
        };
        stuck.send(id, fetch).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    broker.signal("-INT");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    broker.signal("-INT");
    let code = broker.exit_code(Duration::from_secs(5)).await;
    assert_eq!(code, Some(130), "the second signal ends it");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(stuck);

    let broker = BrokerProcess::start(&data, "127.0.0.1:0", &args).await;
    let client = Client::connect(broker.addr()).await.unwrap();
    assert_eq!(
        stored(&client).await,
        1_000,
        "everything confirmed is there"
    );
    publish(&client, 10).await;
    assert_eq!(stored(&client).await, 1_010);
    broker.kill().await;
}
