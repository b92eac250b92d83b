//! Pull groups: members share partitions, hand them over cooperatively, commit with the
//! current generation only, and resume from committed offsets after a leave, a silent
//! member's expiry, or a broker restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use herald_client::{
    Client, ErrorCode, PullConsumer, PullConsumerConfig, PulledRecord, Record, ResetTarget,
    StartPosition,
};
use herald_protocol::{Commit, Frame, JoinGroup, PartitionOffset};
use herald_suite::{publish_records, Raw, TestBroker};

/// Publishes `count` keyed records (spread over the topic's partitions by key hash).
async fn publish_keyed(client: &Client, topic: &str, count: usize) {
    publish_records(client, topic, count, |i| {
        Record::new(format!("record-{i}")).with_key(format!("key-{i}"))
    })
    .await;
}

fn quick_config() -> PullConsumerConfig {
    PullConsumerConfig {
        max_messages: 50,
        max_wait: Duration::from_millis(100),
        sync_interval: Duration::from_millis(50),
        ..PullConsumerConfig::default()
    }
}

async fn member(broker: &TestBroker, topic: &str, group: &str) -> PullConsumer {
    broker
        .client()
        .await
        .pull_consumer_with(topic, group, quick_config())
        .await
        .unwrap()
}

/// Waits until `done` holds for the consumers' memberships, driving nothing else.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes up to `count` records from `consumer`, stopping early after `idle` without one.
async fn take(consumer: &mut PullConsumer, count: usize, idle: Duration) -> Vec<PulledRecord> {
    let mut taken = Vec::new();
    while taken.len() < count {
        match tokio::time::timeout(idle, consumer.next()).await {
            Ok(Some(record)) => taken.push(record.unwrap()),
            Ok(None) => panic!("the consumer stopped"),
            Err(_) => break,
        }
    }
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_six_partitions_and_take_over_from_one_that_leaves() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("orders", 6).await.unwrap();
    publish_keyed(&admin, "orders", 6000).await;

    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(member(&broker, "orders", "billing").await);
    }
    wait_for("two partitions each", || {
        members.iter().all(|m| m.membership().partitions.len() == 2)
    })
    .await;
    let owned: BTreeSet<u32> = members
        .iter()
        .flat_map(|m| m.membership().partitions)
        .collect();
    assert_eq!(owned.len(), 6, "no partition has two owners");
    let generation = members[0].membership().generation;
    assert!(members
        .iter()
        .all(|m| m.membership().generation == generation));

    let info = admin.describe_group("orders", "billing").await.unwrap();
    assert_eq!(info.members.len(), 3);
    assert!(info.members.iter().all(|m| m.partitions.len() == 2));

    // Everyone reads part of its share; then the third member leaves.
    let mut seen: Vec<PulledRecord> = Vec::new();
    for m in members.iter_mut() {
        seen.extend(take(m, 300, Duration::from_secs(5)).await);
    }
    let leaver = members.pop().unwrap();
    let handed_over = leaver.membership().partitions;
    leaver.close().await.unwrap();
    let info = admin.describe_group("orders", "billing").await.unwrap();
    for p in &handed_over {
        let progress = &info.partitions[*p as usize];
        let read_there = seen.iter().filter(|r| r.partition == *p).count() as u64;
        assert_eq!(
            progress.committed, read_there,
            "the leaver committed what it handed out on partition {p}"
        );
    }

    wait_for("the leaver's partitions to move", || {
        members.iter().all(|m| m.membership().partitions.len() == 3)
    })
    .await;
    // The other two finish the topic.
    loop {
        let mut progressed = false;
        for m in members.iter_mut() {
            let got = take(m, 1000, Duration::from_millis(300)).await;
            progressed |= !got.is_empty();
            seen.extend(got);
        }
        if !progressed {
            break;
        }
    }
    let mut unique = BTreeSet::new();
    for record in &seen {
        assert!(
            unique.insert((record.partition, record.offset)),
            "{}:{} was read twice",
            record.partition,
            record.offset
        );
    }
    let payloads: BTreeSet<String> = seen
        .iter()
        .map(|r| String::from_utf8(r.record.payload.to_vec()).unwrap())
        .collect();
    let expected: BTreeSet<String> = (0..6000).map(|i| format!("record-{i}")).collect();
    assert_eq!(payloads, expected, "together they read every record");
    for m in members {
        m.close().await.unwrap();
    }
    let info = admin.describe_group("orders", "billing").await.unwrap();
    assert!(info.members.is_empty());
    assert!(info.partitions.iter().all(|p| p.lag == 0), "{info:?}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_member_loses_its_partitions_after_the_session_timeout() {
    let broker = TestBroker::start_with(|c| c.session_timeout_ms = 1000).await;
    let admin = broker.client().await;
    admin.create_topic("jobs", 2).await.unwrap();
    publish_keyed(&admin, "jobs", 100).await;
    let ends: Vec<u64> = admin
        .describe_topic("jobs")
        .await
        .unwrap()
        .partitions
        .iter()
        .map(|p| p.next_offset)
        .collect();
    assert!(ends.iter().all(|&end| end > 10), "{ends:?}");

    let mut silent = Raw::greeted(broker.addr()).await;
    let join = JoinGroup {
        topic: "jobs".into(),
        group: "workers".into(),
        member_id: String::new(),
        start: StartPosition::Earliest,
    };
    let Frame::Assignment(assignment) = silent.call(join).await else {
        panic!("no assignment");
    };
    assert_eq!(assignment.partitions.len(), 2);
    let commit = Commit {
        topic: "jobs".into(),
        group: "workers".into(),
        member_id: assignment.member_id.clone(),
        generation: assignment.generation,
        offsets: vec![PartitionOffset {
            partition: 0,
            offset: 10,
        }],
    };
    assert!(matches!(silent.call(commit).await, Frame::CommitOk(_)));
    // From here on the raw member sends nothing, not even heartbeats.
    let silent_since = tokio::time::Instant::now();

    let mut healthy = member(&broker, "jobs", "workers").await;
    assert!(
        healthy.membership().partitions.is_empty(),
        "the silent member keeps its partitions while its session lasts"
    );
    wait_for("the silent member's partitions", || {
        healthy.membership().partitions == vec![0, 1]
    })
    .await;
    // Measured from the event, not slept: nothing moved before the session expired.
    assert!(
        silent_since.elapsed() >= Duration::from_millis(1000),
        "moved after {:?}, before the 1 s session timeout",
        silent_since.elapsed()
    );
    let read = take(&mut healthy, 1000, Duration::from_millis(500)).await;
    let first_of_0 = read.iter().find(|r| r.partition == 0).map(|r| r.offset);
    assert_eq!(first_of_0, Some(10), "resumed at the committed offset");
    assert_eq!(read.len() as u64, ends.iter().sum::<u64>() - 10);
    healthy.close().await.unwrap();
    drop(silent);
    broker.stop().await;
}

#[tokio::test]
async fn commits_need_the_current_generation_and_ownership() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("ledger", 2).await.unwrap();
    publish_keyed(&client, "ledger", 20).await;

    let first = client
        .join_group("ledger", "audit", StartPosition::Earliest)
        .await
        .unwrap();
    assert_eq!(first.partitions.len(), 2);
    let second = client
        .join_group("ledger", "audit", StartPosition::Earliest)
        .await
        .unwrap();
    assert!(second.generation > first.generation);
    assert!(second.partitions.is_empty(), "granted only once released");

    let stale = client
        .commit("ledger", "audit", &first, &[(0, 1)])
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Some(ErrorCode::StaleGeneration), "{stale}");

    // The first member learns the new generation and what it must give up.
    let now = client
        .sync_group("ledger", "audit", &first, &[])
        .await
        .unwrap();
    assert_eq!(now.partitions.len(), 1);
    let kept = now.partitions[0].partition;
    let moving = 1 - kept;
    // It still owns the moving partition until it releases it: a last commit is fine.
    client
        .commit("ledger", "audit", &now, &[(moving, 3)])
        .await
        .unwrap();
    let now = client
        .sync_group("ledger", "audit", &now, &[moving])
        .await
        .unwrap();
    let second = client
        .sync_group("ledger", "audit", &second, &[])
        .await
        .unwrap();
    assert_eq!(second.generation, now.generation);
    assert_eq!(second.partitions.len(), 1);
    assert_eq!(
        (
            second.partitions[0].partition,
            second.partitions[0].committed
        ),
        (moving, 3),
        "the new owner starts where the old one committed"
    );

    let not_owner = client
        .commit("ledger", "audit", &now, &[(moving, 4)])
        .await
        .unwrap_err();
    assert_eq!(not_owner.code(), Some(ErrorCode::NotPartitionOwner));
    let standalone = client
        .commit("ledger", "audit", &Default::default(), &[(0, 1)])
        .await
        .unwrap_err();
    assert_eq!(standalone.code(), Some(ErrorCode::GroupNotEmpty));
    let reset = client
        .reset_group("ledger", "audit", ResetTarget::Earliest)
        .await
        .unwrap_err();
    assert_eq!(reset.code(), Some(ErrorCode::GroupNotEmpty));

    client
        .leave_group("ledger", "audit", &second)
        .await
        .unwrap();
    let gone = client
        .commit("ledger", "audit", &second, &[(moving, 4)])
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some(ErrorCode::UnknownMember));
    client.leave_group("ledger", "audit", &now).await.unwrap();
    client
        .reset_group("ledger", "audit", ResetTarget::Offset(2))
        .await
        .unwrap();
    let info = client.describe_group("ledger", "audit").await.unwrap();
    assert!(info.partitions.iter().all(|p| p.committed == 2), "{info:?}");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_resumes_after_a_broker_restart_at_what_it_committed() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("events", 3).await.unwrap();
    publish_keyed(&client, "events", 300).await;
    let mut consumer = client.pull_consumer("events", "reader").await.unwrap();
    let first = take(&mut consumer, 120, Duration::from_secs(5)).await;
    assert_eq!(first.len(), 120);
    consumer.close().await.unwrap();
    let broker = broker.restart().await;

    let client = broker.client().await;
    let mut consumer = client
        .pull_consumer_with(
            "events",
            "reader",
            PullConsumerConfig {
                start: StartPosition::Latest,
                ..quick_config()
            },
        )
        .await
        .unwrap();
    let rest = take(&mut consumer, 1000, Duration::from_millis(500)).await;
    let mut by_partition: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for r in first.iter().chain(&rest) {
        by_partition.entry(r.partition).or_default().push(r.offset);
    }
    assert_eq!(first.len() + rest.len(), 300, "nothing lost, nothing twice");
    for (p, offsets) in by_partition {
        let dense: Vec<u64> = (0..offsets.len() as u64).collect();
        assert_eq!(offsets, dense, "partition {p} read densely, in order");
    }
    consumer.close().await.unwrap();
    broker.stop().await;
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_describes_and_resets_groups() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("clicks", 2).await.unwrap();
    publish_keyed(&client, "clicks", 40).await;

    let consume = [
        "consume",
        "clicks",
        "--group",
        "stats",
        "--mode",
        "pull",
        "--idle-timeout-ms",
        "500",
    ];
    let out = broker.cli(&consume).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out).lines().count(), 40);

    let out = broker.cli(&["group", "list", "clicks"]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "stats\n");

    let out = broker.cli(&["group", "describe", "clicks", "stats"]).await;
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("mode: pull") && text.contains("members: 0"),
        "{text}"
    );
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip_while(|l| !l.starts_with("PARTITION"))
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    for row in &rows {
        // PARTITION OWNER COMMITTED END LAG: everything read, nothing owned.
        assert_eq!(row[1], "-");
        assert_eq!(row[2], row[3], "{text}");
        assert_eq!(row[4], "0", "{text}");
    }

    // Committed after printing: a second run finds nothing new.
    let out = broker.cli(&consume).await;
    assert!(out.status.success() && stdout(&out).is_empty(), "{out:?}");

    let out = broker
        .cli(&["group", "reset", "clicks", "stats", "--to", "earliest"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let out = broker.cli(&consume).await;
    assert_eq!(
        stdout(&out).lines().count(),
        40,
        "read again from the start"
    );

    let out = broker
        .cli(&["group", "reset", "clicks", "stats", "--to", "latest"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let info = client.describe_group("clicks", "stats").await.unwrap();
    assert!(info.partitions.iter().all(|p| p.lag == 0));

    let out = broker
        .cli(&["group", "reset", "clicks", "stats", "--to", "3"])
        .await;
    assert!(out.status.success(), "{out:?}");
    let info = client.describe_group("clicks", "stats").await.unwrap();
    assert!(info.partitions.iter().all(|p| p.committed == 3), "{info:?}");

    // Not while the group has a member; bad targets and unknown groups are errors.
    let member = client.pull_consumer("clicks", "stats").await.unwrap();
    let out = broker
        .cli(&["group", "reset", "clicks", "stats", "--to", "earliest"])
        .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("member"), "{err}");
    let out = broker.cli(&["group", "describe", "clicks", "stats"]).await;
    assert!(stdout(&out).contains("members: 1"), "{out:?}");
    member.close().await.unwrap();
    let out = broker
        .cli(&["group", "reset", "clicks", "stats", "--to", "soon"])
        .await;
    assert!(!out.status.success());
    let out = broker.cli(&["group", "describe", "clicks", "nobody"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown group"));
    broker.stop().await;
}

/// Reads in its own task, slowly, until told to stop; then closes (committing) and
/// returns what it read.
fn spawn_reader(
    mut consumer: PullConsumer,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<PulledRecord>> {
    tokio::spawn(async move {
        let mut read = Vec::new();
        loop {
            let next = tokio::select! {
                next = consumer.next() => next,
                _ = stop.cancelled() => break,
            };
            read.push(next.expect("open").expect("a record"));
            if read.len() % 25 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        consumer.close().await.unwrap();
        read
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_mid_stream_neither_lose_nor_repeat_records() {
    let broker = TestBroker::start().await;
    let admin = broker.client().await;
    admin.create_topic("stream", 4).await.unwrap();
    publish_keyed(&admin, "stream", 8000).await;

    let stops: Vec<_> = (0..3)
        .map(|_| tokio_util::sync::CancellationToken::new())
        .collect();
    let a = spawn_reader(member(&broker, "stream", "g").await, stops[0].clone());
    let b = spawn_reader(member(&broker, "stream", "g").await, stops[1].clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c = spawn_reader(member(&broker, "stream", "g").await, stops[2].clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stops[0].cancel();
    let mut seen = a.await.unwrap();
    assert!(!seen.is_empty(), "the first member read before it left");
    // The others finish the topic.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = admin.describe_group("stream", "g").await.unwrap();
        if info.partitions.iter().all(|p| p.lag == 0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stops[1].cancel();
    stops[2].cancel();
    seen.extend(b.await.unwrap());
    let late = c.await.unwrap();
    assert!(
        !late.is_empty(),
        "the member that joined mid-stream took a share"
    );
    seen.extend(late);

    let mut unique = BTreeSet::new();
    for record in &seen {
        assert!(
            unique.insert((record.partition, record.offset)),
            "{}:{} was read twice",
            record.partition,
            record.offset
        );
    }
    assert_eq!(unique.len(), 8000, "every record was read");
    broker.stop().await;
}

#[tokio::test]
async fn the_consumer_fetches_the_next_batch_once_half_the_last_is_handed_out() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    client.create_topic("deep", 1).await.unwrap();
    publish_keyed(&client, "deep", 1000).await;
    let config = PullConsumerConfig {
        max_messages: 100,
        ..quick_config()
    };
    let mut consumer = client
        .pull_consumer_with("deep", "slow", config)
        .await
        .unwrap();
    let settle = Duration::from_millis(300);

    assert_eq!(take(&mut consumer, 10, settle).await.len(), 10);
    tokio::time::sleep(settle).await;
    let stats = consumer.stats();
    assert_eq!((stats.fetches, stats.fetched), (1, 100), "{stats:?}");

    // Half of the first batch handed out: exactly one more fetch, then it waits again.
    assert_eq!(take(&mut consumer, 40, settle).await.len(), 40);
    wait_for("the second fetch", || consumer.stats().fetched >= 200).await;
    tokio::time::sleep(settle).await;
    let stats = consumer.stats();
    assert_eq!((stats.fetches, stats.fetched), (2, 200), "{stats:?}");
    assert_eq!(stats.handed_out, 50);

    assert_eq!(take(&mut consumer, 100, settle).await.len(), 100);
    wait_for("the third fetch", || consumer.stats().fetched >= 300).await;
    tokio::time::sleep(settle).await;
    let stats = consumer.stats();
    assert_eq!((stats.fetches, stats.fetched), (3, 300), "{stats:?}");
    assert!(stats.commits >= 1, "auto-commit ran: {stats:?}");
    consumer.close().await.unwrap();
    let info = client.describe_group("deep", "slow").await.unwrap();
    assert_eq!(
        info.partitions[0].committed, 150,
        "committed what was handed out"
    );
    broker.stop().await;
}
