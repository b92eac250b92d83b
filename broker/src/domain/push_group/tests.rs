//! The dispatcher without a socket: a store in a temporary directory, a topic, and the
//! push groups' own API.

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::{encode_batch, Batch, Record};
use tokio::time::Instant;

use super::*;
use crate::domain::{TopicLimits, Topics};
use crate::storage::{GroupRecord, RetentionPolicy, StoreConfig};

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    topic: Arc<Topic>,
    groups: PushGroups,
}

/// A topic of one partition holding `records` records, and its push groups.
async fn fixture(records: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let limits = TopicLimits {
        auto_create: true,
        max_topics: 100,
        max_partitions: 8,
    };
    let topics = Arc::new(Topics::load(Arc::clone(&store), limits).unwrap());
    let topic = topics
        .create("jobs", 1, RetentionPolicy::default())
        .await
        .unwrap();
    let batch: Vec<Record> = (0..records)
        .map(|i| Record::new(format!("job {i}")))
        .collect();
    let batch = Batch::parse(encode_batch(&batch)).unwrap();
    topic
        .publish(&store, batch, Some(0), 1 << 20, None)
        .unwrap()
        .await
        .unwrap();
    let groups = PushGroups::new(Arc::clone(&store), topics, 16);
    Fixture {
        _dir: dir,
        store,
        topic,
        groups,
    }
}

fn request(session: u64) -> SubscribeRequest {
    SubscribeRequest {
        session,
        address: "test".into(),
        prefetch_count: 1000,
        prefetch_bytes: 0,
        start: Start::Earliest,
        credit: false,
    }
}

/// The offsets `[start, end)` one delivery carries.
fn span_of(deliver: &Deliver) -> Span {
    let batch = Batch::parse(deliver.batch.clone()).unwrap();
    Span {
        partition: deliver.partition,
        start: batch.base_offset,
        end: batch.base_offset + u64::from(batch.record_count),
    }
}

fn stored_floor(f: &Fixture, group: &str) -> u64 {
    let value = f
        .store
        .ack_state(f.topic.record().id, 0, group)
        .unwrap()
        .expect("an ack state");
    AckState::decode(&value).unwrap().floor()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

#[tokio::test]
async fn a_stop_stores_the_answers_already_sent() {
    // The answer and the stop race; whichever the dispatcher sees first, the answer is
    // taken, confirmed and stored before the stop returns.
    for round in 0..20 {
        let f = fixture(10).await;
        let mut sub = f.groups.subscribe(&f.topic, "g", request(1)).await.unwrap();
        let deliver = sub.deliveries.recv().await.unwrap();
        let span = span_of(&deliver);
        assert_eq!((span.start, span.end), (0, 10));
        let (answered, stopped) = tokio::join!(
            f.groups.answer(1, sub.id, vec![span], Answer::Ack),
            f.groups.stop(soon())
        );
        answered.unwrap_or_else(|err| panic!("round {round}: the ack failed: {err}"));
        assert!(stopped, "round {round}: the stop timed out");
        assert_eq!(stored_floor(&f, "g"), 10, "round {round}");
        assert_eq!(f.groups.task_count(), 0);
    }
}

#[tokio::test]
async fn a_stop_waits_for_a_dead_letter_publish() {
    let f = fixture(3).await;
    let mut sub = f.groups.subscribe(&f.topic, "g", request(1)).await.unwrap();
    let span = span_of(&sub.deliveries.recv().await.unwrap());
    let reason = "bad job".to_string();
    let (rejected, stopped) = tokio::join!(
        f.groups
            .answer(1, sub.id, vec![span], Answer::Reject { reason }),
        f.groups.stop(soon())
    );
    rejected.unwrap();
    assert!(stopped);
    let dlq = f
        .groups
        .topics
        .get("jobs.dlq")
        .expect("the dead-letter topic");
    assert_eq!(
        dlq.partitions()[0].next_offset(),
        3,
        "every rejected record"
    );
    assert_eq!(stored_floor(&f, "g"), 3, "done once dead-lettered");
}

#[tokio::test]
async fn deleting_the_topic_ends_its_dispatchers() {
    let f = fixture(5).await;
    let before = f.groups.task_count();
    let mut first = f.groups.subscribe(&f.topic, "a", request(1)).await.unwrap();
    let mut second = f.groups.subscribe(&f.topic, "b", request(2)).await.unwrap();
    assert!(first.deliveries.recv().await.is_some());
    assert!(second.deliveries.recv().await.is_some());
    assert_eq!(
        f.groups.task_count(),
        before + 2,
        "one dispatcher per group"
    );

    f.groups.topic_deleted(f.topic.record().id);
    assert!(first.deliveries.recv().await.is_none(), "the stream ends");
    assert!(second.deliveries.recv().await.is_none(), "the stream ends");
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.groups.task_count() != before {
        assert!(
            Instant::now() < deadline,
            "{} tasks left",
            f.groups.task_count()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = f
        .groups
        .answer(1, first.id, vec![], Answer::Ack)
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::UnknownSubscription(_)), "{err}");
}

#[tokio::test]
async fn a_stopped_broker_starts_no_dispatcher() {
    let f = fixture(1).await;
    assert!(f.groups.stop(soon()).await);
    let err = f
        .groups
        .subscribe(&f.topic, "late", request(1))
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, BrokerError::ShuttingDown), "{err}");
}

/// A group whose ack deadline is `ack_timeout_ms`.
async fn group_with_deadline(f: &Fixture, group: &str, ack_timeout_ms: u32) {
    let record = GroupRecord {
        mode: MODE_PUSH,
        ack_timeout_ms,
        max_deliveries: 10,
        dead_letter: String::new(),
    };
    f.groups
        .create(&f.topic, group, Start::Earliest, record)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unanswered_delivery_comes_back_at_its_deadline_and_not_before() {
    let f = fixture(4).await;
    group_with_deadline(&f, "g", 30_000).await;
    let mut sub = f.groups.subscribe(&f.topic, "g", request(1)).await.unwrap();
    let first = sub.deliveries.recv().await.unwrap();
    assert_eq!(first.delivery_counts, vec![1; 4]);

    // From here on the clock moves only when told (or when everything waits on a timer).
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(29_000)).await;
    assert!(
        sub.deliveries.try_recv().is_err(),
        "not before the deadline"
    );
    tokio::time::advance(Duration::from_millis(1_001)).await;
    let again = sub.deliveries.recv().await.unwrap();
    assert_eq!(span_of(&again), span_of(&first), "the same records");
    assert_eq!(again.delivery_counts, vec![2; 4]);
    let description = f.groups.describe(&f.topic, "g").await.unwrap();
    assert_eq!(description.redelivered, 4);
}

#[tokio::test]
async fn a_touch_moves_the_deadline_and_a_nack_delay_holds_the_record_back() {
    let f = fixture(1).await;
    group_with_deadline(&f, "g", 10_000).await;
    let mut sub = f.groups.subscribe(&f.topic, "g", request(1)).await.unwrap();
    let span = span_of(&sub.deliveries.recv().await.unwrap());

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(8)).await;
    let extend = Some(Duration::from_secs(20));
    f.groups
        .answer(1, sub.id, vec![span], Answer::Touch { extend })
        .await
        .unwrap();
    // The first deadline (10 s) passes; the touched one (8 + 20 s) has not.
    tokio::time::advance(Duration::from_secs(19)).await;
    assert!(sub.deliveries.try_recv().is_err(), "touched: still held");

    let delay = Duration::from_secs(60);
    f.groups
        .answer(1, sub.id, vec![span], Answer::Nack { delay })
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(
        sub.deliveries.try_recv().is_err(),
        "nacked: held for its delay"
    );
    tokio::time::advance(Duration::from_millis(1_001)).await;
    let again = sub.deliveries.recv().await.unwrap();
    assert_eq!(span_of(&again), span);
    assert_eq!(again.delivery_counts, vec![2]);
}

#[tokio::test]
async fn a_credit_subscription_gets_what_it_is_granted_and_no_more() {
    let f = fixture(10).await;
    let request = SubscribeRequest {
        credit: true,
        ..request(1)
    };
    let mut sub = f.groups.subscribe(&f.topic, "g", request).await.unwrap();
    // Nothing without credit (a describe is answered after any delivery would be queued).
    f.groups.describe(&f.topic, "g").await.unwrap();
    assert!(sub.deliveries.try_recv().is_err(), "no credit, no delivery");

    f.groups.grant(1, sub.id, 3).await.unwrap();
    let deliver = sub.deliveries.recv().await.unwrap();
    assert_eq!(deliver.delivery_counts.len(), 3, "exactly the credit");
    assert_eq!(
        f.groups.revoke(1, sub.id).await.unwrap(),
        0,
        "all of it used"
    );

    f.groups.grant(1, sub.id, 100).await.unwrap();
    let rest = sub.deliveries.recv().await.unwrap();
    assert_eq!(rest.delivery_counts.len(), 7, "what is left");
    assert_eq!(
        f.groups.revoke(1, sub.id).await.unwrap(),
        93,
        "the unused credit"
    );
    let err = f.groups.grant(2, sub.id, 1).await.unwrap_err();
    assert!(
        matches!(err, BrokerError::UnknownSubscription(_)),
        "another session's"
    );
}

#[tokio::test]
async fn a_grant_taken_back_at_once_still_delivers_what_was_there() {
    // A short poll: grant, then revoke straight away; the records that existed are queued.
    for _ in 0..20 {
        let f = fixture(2).await;
        let request = SubscribeRequest {
            credit: true,
            ..request(1)
        };
        let mut sub = f.groups.subscribe(&f.topic, "g", request).await.unwrap();
        f.groups.grant(1, sub.id, 5).await.unwrap();
        assert_eq!(
            f.groups.revoke(1, sub.id).await.unwrap(),
            3,
            "two of five used"
        );
        let deliver = sub
            .deliveries
            .try_recv()
            .expect("queued before the grant returned");
        assert_eq!(deliver.delivery_counts.len(), 2);
    }
}
