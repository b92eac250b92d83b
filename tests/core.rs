//! The broker's verbs called directly, as a front door other than the TCP protocol does,
//! and seen from a TCP client: one core, one set of topics and groups.

use std::time::Duration;

use herald_broker::core::{Caller, FetchArgs};
use herald_broker::domain::group::Start;
use herald_broker::domain::push_group::{Answer, Span};
use herald_broker::storage::RetentionPolicy;
use herald_protocol::{encode_batch, Batch, Record};
use herald_suite::TestBroker;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_core_serves_without_a_socket_and_a_client_sees_the_same_topics() {
    let broker = TestBroker::start().await;
    let core = broker.core();
    let info = core
        .create_topic("direct", 1, RetentionPolicy::default())
        .await
        .unwrap();
    assert_eq!(info.partitions.len(), 1);

    let records: Vec<Record> = (0..5).map(|i| Record::new(format!("r{i}"))).collect();
    let published = core
        .publish("direct", encode_batch(&records), Some(0), None)
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(published.runs[0].count, 5);

    // A long-poll from the next offset waits for the next publish.
    let wait = FetchArgs {
        topic: "direct".into(),
        partition: 0,
        offset: 5,
        max_messages: 100,
        max_bytes: 1 << 20,
        min_bytes: 1,
        max_wait: Duration::from_secs(10),
    };
    let gone = CancellationToken::new();
    let waiting = tokio::spawn({
        let (core, wait, gone) = (core.clone(), wait.clone(), gone.clone());
        async move { core.fetch(wait, &gone).await }
    });
    let client = broker.client().await;
    client
        .producer()
        .send("direct", herald_client::Record::new("from tcp"))
        .await
        .unwrap();
    let fetched = waiting.await.unwrap().unwrap();
    assert_eq!(fetched.records, 1);
    let batch = Batch::parse(fetched.batches).unwrap();
    let record = batch.iter().next().unwrap().unwrap();
    assert_eq!(record.record.payload, "from tcp");

    // A caller that goes away ends its long-poll.
    let idle = FetchArgs { offset: 6, ..wait };
    let ended = tokio::spawn({
        let (core, gone) = (core.clone(), gone.clone());
        async move { core.fetch(idle, &gone).await }
    });
    gone.cancel();
    assert_eq!(ended.await.unwrap().unwrap().records, 0);

    // Push: subscribe, take a delivery, ack it; the group's lag shows it.
    let caller = Caller {
        session: u64::MAX,
        address: "in-process".into(),
    };
    let mut subscription = core
        .subscribe(&caller, "direct", "workers", 100, 0, Start::Earliest)
        .await
        .unwrap();
    let deliver = subscription.deliveries.recv().await.unwrap();
    let batch = Batch::parse(deliver.batch).unwrap();
    let span = Span {
        partition: deliver.partition,
        start: batch.base_offset,
        end: batch.base_offset + u64::from(batch.record_count),
    };
    core.answer(&caller, subscription.id, vec![span], Answer::Ack)
        .await
        .unwrap();
    let groups = client.list_groups("direct").await.unwrap();
    assert_eq!(groups.len(), 1, "the TCP client sees the core's group");
    core.session_closed(caller.session).await;
    assert!(core
        .list_topics()
        .unwrap()
        .iter()
        .any(|t| t.name == "direct"));
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_ends_the_long_polls_on_it() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("short-lived", 1).await.unwrap();
    let mut request = herald_client::FetchRequest::new("short-lived", 0, 0);
    request.max_wait_ms = 60_000;
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.fetch(request).await }
    });
    // The long-poll is parked once the broker has answered a later request.
    client.list_topics().await.unwrap();
    client.delete_topic("short-lived").await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the long-poll ends with its topic")
        .unwrap();
    let err = answer.expect_err("no records from a deleted topic");
    assert_eq!(
        err.code(),
        Some(herald_client::ErrorCode::UnknownTopic),
        "{err}"
    );
    broker.stop().await;
}
