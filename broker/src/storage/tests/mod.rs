use super::commit::MAX_GROUP;
use super::*;
use herald_protocol::{encode_batch, Batch, Record};

fn batch(payloads: &[&str]) -> Batch {
    let records: Vec<Record> = payloads
        .iter()
        .map(|p| Record::new(p.to_string()))
        .collect();
    Batch::parse(encode_batch(&records)).unwrap()
}

fn payloads(read: &log::ReadBatches) -> Vec<String> {
    read.batches
        .iter()
        .flat_map(|b| {
            b.iter()
                .map(|r| String::from_utf8(r.unwrap().record.payload.to_vec()).unwrap())
        })
        .collect()
}

async fn append(store: &Store, log: &Arc<PartitionLog>, items: &[&str]) -> Appended {
    store.append(log, batch(items)).await.unwrap().unwrap()
}

/// Batch `sequence` of idempotent producer `producer_id`.
fn numbered(producer_id: u64, sequence: u64) -> ProducerBatch {
    ProducerBatch {
        producer_id,
        sequence,
    }
}

#[tokio::test]
async fn appends_get_dense_offsets_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let (_, logs) = store
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    let log = &logs[0];
    assert_eq!(append(&store, log, &["a", "b"]).await.base_offset, 0);
    assert_eq!(append(&store, log, &["c"]).await.base_offset, 2);
    assert_eq!(append(&store, log, &["d", "e", "f"]).await.base_offset, 3);
    assert_eq!(log.next_offset(), 6);
    assert_eq!(
        payloads(&log.read(0, 100, usize::MAX).unwrap()),
        ["a", "b", "c", "d", "e", "f"]
    );
    assert_eq!(
        payloads(&log.read(1, 3, usize::MAX).unwrap()),
        ["b", "c", "d"]
    );
    assert_eq!(payloads(&log.read(4, 100, usize::MAX).unwrap()), ["e", "f"]);
    assert_eq!(
        payloads(&log.read(6, 100, usize::MAX).unwrap()),
        Vec::<String>::new()
    );
    let first_only = log.read(0, 100, 1).unwrap();
    assert_eq!(payloads(&first_only), ["a"]);
}

/// A store whose cached tails may hold `tail_cache_bytes` together.
fn store_with_tail(dir: &std::path::Path, tail_cache_bytes: u64) -> Arc<Store> {
    let config = StoreConfig {
        fsync: FsyncPolicy::Never,
        tail_cache_bytes,
        ..StoreConfig::default()
    };
    Store::open(dir, config).unwrap()
}

#[tokio::test]
async fn reads_from_the_cached_tail_equal_reads_from_sled() {
    let (cached_dir, plain_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // A small budget: the tail holds some batches, and the rest are read from sled.
    let cached = store_with_tail(cached_dir.path(), 2048);
    let plain = store_with_tail(plain_dir.path(), 0);
    let (_, cached_logs) = cached
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    let (_, plain_logs) = plain
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    let mut next = 0;
    for size in [1usize, 3, 1, 7, 2, 1, 1, 5, 40, 1, 2] {
        let items: Vec<String> = (next..next + size).map(|i| format!("r{i:04}")).collect();
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        append(&cached, &cached_logs[0], &items).await;
        append(&plain, &plain_logs[0], &items).await;
        next += size;
    }
    assert!(cached.tail_cache_bytes() <= 2048);
    assert!(
        cached.tail_cache_bytes() > 0,
        "the newest batches are cached"
    );
    assert_eq!(plain.tail_cache_bytes(), 0);
    for offset in 0..=next as u64 + 1 {
        for max_records in [0, 1, 2, 5, 100] {
            for max_bytes in [1, 60, 200, usize::MAX] {
                let from_cache = cached_logs[0].read(offset, max_records, max_bytes).unwrap();
                let from_sled = plain_logs[0].read(offset, max_records, max_bytes).unwrap();
                assert_eq!(
                    (payloads(&from_cache), from_cache.bytes),
                    (payloads(&from_sled), from_sled.bytes),
                    "read({offset}, {max_records}, {max_bytes})"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_cached_tail_forgets_what_retention_deleted_and_a_deleted_topic() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_tail(dir.path(), 1 << 20);
    let policy = RetentionPolicy {
        max_messages: 2,
        ..RetentionPolicy::default()
    };
    let (record, logs) = store.create_topic("t", 1, policy).unwrap();
    for item in ["a", "b", "c", "d"] {
        append(&store, &logs[0], &[item]).await;
    }
    assert!(store.trim(&logs[0], policy).await.unwrap().unwrap());
    assert_eq!(logs[0].first_offset(), 2);
    assert_eq!(
        payloads(&logs[0].read(2, 10, usize::MAX).unwrap()),
        ["c", "d"]
    );
    let bytes = store.tail_cache_bytes();
    store.delete_topic(&record, &logs).unwrap();
    assert!(store.tail_cache_bytes() < bytes);
    assert_eq!(store.tail_cache_bytes(), 0);
}

/// The store in `dir` and the logs of its one topic, created as `t` with one partition
/// when the store is new.
fn open_one_topic(dir: &std::path::Path) -> (Arc<Store>, Vec<Arc<PartitionLog>>) {
    let store = Store::open(dir, StoreConfig::default()).unwrap();
    let logs = match store.load_topics().unwrap().first() {
        Some(topic) => store.open_logs(topic).unwrap(),
        None => {
            let policy = RetentionPolicy::default();
            store.create_topic("t", 1, policy).unwrap().1
        }
    };
    (store, logs)
}

#[tokio::test]
async fn producers_of_a_log_whose_bounds_were_never_saved_are_rebuilt_from_all_of_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, logs) = open_one_topic(dir.path());
        for (sequence, item) in [(1, "a"), (2, "b")] {
            let appended = store.append_as(&logs[0], batch(&[item]), numbered(9, sequence));
            appended.await.unwrap().unwrap();
        }
        store.close().unwrap();
    }
    {
        // What a crash within the log's first 100 ms leaves: batches, no state, no bounds.
        let (store, logs) = open_one_topic(dir.path());
        logs[0].set_producer_state(9, None).unwrap();
        logs[0].forget_bounds().unwrap();
        store.close().unwrap();
    }
    let (store, logs) = open_one_topic(dir.path());
    let again = store.append_as(&logs[0], batch(&["b"]), numbered(9, 2));
    assert_eq!(again.await.unwrap().unwrap().base_offset, 1);
    assert_eq!(logs[0].next_offset(), 2, "nothing was stored twice");
}

#[tokio::test]
async fn reopening_recovers_topics_offsets_and_group_positions() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let (record, logs) = store
            .create_topic("t", 2, RetentionPolicy::default())
            .unwrap();
        append(&store, &logs[1], &["x", "y"]).await;
        store.put_offsets(record.id, "g", &[(1, 1)]).unwrap();
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let topics = store.load_topics().unwrap();
    assert_eq!(topics.len(), 1);
    let logs = store.open_logs(&topics[0]).unwrap();
    assert_eq!((logs[0].next_offset(), logs[1].next_offset()), (0, 2));
    assert_eq!(append(&store, &logs[1], &["z"]).await.base_offset, 2);
    assert_eq!(store.offset(topics[0].id, 1, "g").unwrap(), Some(1));
}

#[tokio::test]
async fn a_producer_state_written_just_before_a_crash_lost_its_batch_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, logs) = open_one_topic(dir.path());
        let first = store.append_as(&logs[0], batch(&["a", "b"]), numbered(7, 1));
        assert_eq!(first.await.unwrap().unwrap().base_offset, 0);
        store.close().unwrap();
    }
    {
        // What a crash between the two writes of batch 2 left in stores that wrote the
        // state before each batch: its state, not the batch.
        let (store, logs) = open_one_topic(dir.path());
        let state = producers::Recent::from_entries(&[(1, 0, 2), (2, 2, 1)]);
        logs[0].set_producer_state(7, Some(&state)).unwrap();
        store.close().unwrap();
    }
    let (store, logs) = open_one_topic(dir.path());
    // Batch 2 is appended, not answered with offsets the log never held ...
    let again = store.append_as(&logs[0], batch(&["c"]), numbered(7, 2));
    assert_eq!(again.await.unwrap().unwrap().base_offset, 2);
    assert_eq!(logs[0].next_offset(), 3);
    // ... and batch 1 is still known.
    let first = store.append_as(&logs[0], batch(&["a", "b"]), numbered(7, 1));
    assert_eq!(first.await.unwrap().unwrap().base_offset, 0);
    assert_eq!(logs[0].next_offset(), 3);
}

#[tokio::test]
async fn producer_states_not_saved_before_a_crash_are_rebuilt_from_the_batches() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, logs) = open_one_topic(dir.path());
        for (producer, sequence, items) in [(7, 1, &["a", "b"][..]), (7, 2, &["c"]), (8, 1, &["d"])]
        {
            store
                .append_as(&logs[0], batch(items), numbered(producer, sequence))
                .await
                .unwrap()
                .unwrap();
        }
        store.close().unwrap();
    }
    {
        // What a crash before the states were next saved leaves: the states and the
        // watermark as of batch 1 (offsets 0..2), the later batches stored.
        let (store, logs) = open_one_topic(dir.path());
        let state = producers::Recent::from_entries(&[(1, 0, 2)]);
        logs[0].set_producer_state(7, Some(&state)).unwrap();
        logs[0].set_producer_state(8, None).unwrap();
        logs[0].save_bounds_with_states_through(2).unwrap();
        store.close().unwrap();
    }
    let (store, logs) = open_one_topic(dir.path());
    // Batch 2 of producer 7 and batch 1 of producer 8 are known again, from their tags.
    let again = store.append_as(&logs[0], batch(&["c"]), numbered(7, 2));
    assert_eq!(again.await.unwrap().unwrap().base_offset, 2);
    let again = store.append_as(&logs[0], batch(&["d"]), numbered(8, 1));
    assert_eq!(again.await.unwrap().unwrap().base_offset, 3);
    assert_eq!(logs[0].next_offset(), 4, "nothing was stored twice");
    let next = store.append_as(&logs[0], batch(&["e"]), numbered(7, 3));
    assert_eq!(next.await.unwrap().unwrap().base_offset, 4);
    // The tags never reach readers.
    assert_eq!(
        payloads(&logs[0].read(0, 100, usize::MAX).unwrap()),
        ["a", "b", "c", "d", "e"]
    );
}

#[tokio::test]
async fn retention_forgets_producers_whose_batches_it_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let (_, logs) = store
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    let log = &logs[0];
    let gone = store.append_as(log, batch(&["a", "b"]), numbered(1, 1));
    gone.await.unwrap().unwrap();
    let kept = store.append_as(log, batch(&["c"]), numbered(2, 1));
    kept.await.unwrap().unwrap();
    let policy = RetentionPolicy {
        max_messages: 1,
        ..RetentionPolicy::default()
    };
    assert!(store.trim(log, policy).await.unwrap().unwrap());
    let left: Vec<u64> = log
        .producer_states()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        left,
        [2],
        "producer 1's only batch was deleted, producer 2's was not"
    );
    // Producer 2 is still deduplicated; producer 1 simply goes on.
    let again = store.append_as(log, batch(&["c"]), numbered(2, 1));
    assert_eq!(again.await.unwrap().unwrap().base_offset, 2);
    let next = store.append_as(log, batch(&["d"]), numbered(1, 2));
    assert_eq!(next.await.unwrap().unwrap().base_offset, 3);
}

/// A store in `dir` whose topic "t" held one record and a group's offset, then was
/// deleted; the deleted topic's logs are still held.
async fn store_with_a_deleted_topic(
    dir: &std::path::Path,
) -> (Arc<Store>, TopicRecord, Vec<Arc<PartitionLog>>) {
    let store = Store::open(dir, StoreConfig::default()).unwrap();
    let (record, logs) = store
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    append(&store, &logs[0], &["x"]).await;
    store.put_offsets(record.id, "g", &[(0, 1)]).unwrap();
    store.delete_topic(&record, &logs).unwrap();
    (store, record, logs)
}

#[tokio::test]
async fn deleting_a_topic_removes_its_logs_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (store, record, logs) = store_with_a_deleted_topic(dir.path()).await;
    assert!(store.load_topics().unwrap().is_empty());
    assert_eq!(store.offset(record.id, 0, "g").unwrap(), None);
    // A publish that still held the log is refused, not written into a dead tree.
    let late = store.append(&logs[0], batch(&["late"])).await.unwrap();
    assert!(matches!(late, Err(StorageError::Deleted)), "{late:?}");
    assert!(logs[0].read(0, 10, usize::MAX).unwrap().batches.is_empty());
    let tree = log_tree_name(record.id, 0);
    let registered = |store: &Store| store.db.tree_names().iter().any(|n| n == tree.as_bytes());
    assert!(store.drop_retired().is_none(), "still held");
    assert!(registered(&store), "kept while a handle to it is held");
    drop(logs);
    bounded(
        store.drop_retired().expect("no longer held"),
        store.timeout(),
    )
    .await
    .unwrap();
    assert!(!registered(&store), "dropped once nothing holds it");
    assert!(store.drop_retired().is_none(), "dropped once");
    store.close().unwrap();
    drop(store);
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert!(!registered(&store), "and gone after a restart");
}

#[tokio::test]
async fn a_deleted_topic_whose_log_is_still_held_at_a_stop_is_dropped_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (store, record, logs) = store_with_a_deleted_topic(dir.path()).await;
    let tree = log_tree_name(record.id, 0);
    store.close().unwrap();
    drop(store);
    drop(logs);
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    assert!(!store.db.tree_names().iter().any(|n| n == tree.as_bytes()));
}

#[test]
fn a_directory_of_other_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
    assert!(matches!(
        Store::open(dir.path(), StoreConfig::default()),
        Err(StorageError::NotHerald(_))
    ));
}

#[tokio::test]
async fn every_policy_confirms_and_reports_its_durability() {
    for (policy, expected) in [
        (FsyncPolicy::Always, Durability::Synced),
        (
            FsyncPolicy::Interval(std::time::Duration::from_millis(5)),
            Durability::Buffered,
        ),
        (FsyncPolicy::Never, Durability::Buffered),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            StoreConfig {
                fsync: policy,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let (_, logs) = store
            .create_topic("t", 1, RetentionPolicy::default())
            .unwrap();
        assert_eq!(append(&store, &logs[0], &["x"]).await.durability, expected);
    }
}

mod damage;
mod model;

#[tokio::test]
async fn under_never_an_idle_writer_has_a_small_append_written_before_append_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_tail(dir.path(), 1 << 20);
    let (_, logs) = store
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    for (sequence, item) in [(1, "a"), (2, "b")] {
        let mut appended = store.append_as(&logs[0], batch(&[item]), numbered(5, sequence));
        let appended = appended.try_recv().expect("answered in place").unwrap();
        assert_eq!(appended.base_offset, sequence - 1);
        assert_eq!(appended.durability, Durability::Buffered);
        assert_eq!(logs[0].next_offset(), sequence, "readable at once");
    }
    assert_eq!(
        payloads(&logs[0].read(0, 100, usize::MAX).unwrap()),
        ["a", "b"]
    );
    // The clean stop saves what was written in place: the records, the log's bounds and
    // the producer's state, so a resent batch is still answered with its offsets.
    store.close().unwrap();
    drop((store, logs));
    let store = store_with_tail(dir.path(), 1 << 20);
    let logs = store.open_logs(&store.load_topics().unwrap()[0]).unwrap();
    assert_eq!(logs[0].next_offset(), 2);
    let again = store.append_as(&logs[0], batch(&["b"]), numbered(5, 2));
    assert_eq!(again.await.unwrap().unwrap().base_offset, 1);
    assert_eq!(
        payloads(&logs[0].read(0, 100, usize::MAX).unwrap()),
        ["a", "b"]
    );
}

/// Runs a job on the writer (in place, or on its thread under `always`) that holds it until
/// the returned sender says go; returns once the job runs.
fn hold_writer(
    store: &Arc<Store>,
) -> (
    std::thread::JoinHandle<Result<(), StorageError>>,
    std::sync::mpsc::Sender<()>,
) {
    let (held_tx, held) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let store = Arc::clone(store);
        std::thread::spawn(move || {
            store.writer.run(move || {
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(())
            })
        })
    };
    held.recv().unwrap();
    (holder, release)
}

#[test]
fn appends_queued_while_the_writer_is_busy_are_not_overtaken_by_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_tail(dir.path(), 1 << 20);
    let (_, logs) = store
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    // A job that finds the writer idle runs in place on its caller's thread, holding the
    // writer until it is released.
    let (holder, release) = hold_writer(&store);
    let mut first = store.append_as(&logs[0], batch(&["r1"]), numbered(5, 1));
    assert!(
        matches!(
            first.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ),
        "queued behind the job"
    );
    release.send(()).unwrap();
    // Sent while the first may still be queued: none of them may be written before it (a
    // numbered batch that overtook its predecessor would be refused as out of order).
    let later: Vec<_> = (2..=40)
        .map(|sequence| {
            let item = format!("r{sequence}");
            store.append_as(&logs[0], batch(&[item.as_str()]), numbered(5, sequence))
        })
        .collect();
    holder.join().unwrap().unwrap();
    for (sequence, appended) in (1..).zip(std::iter::once(first).chain(later)) {
        let appended = futures::executor::block_on(appended).unwrap().unwrap();
        assert_eq!(appended.base_offset, sequence - 1);
    }
    let expected: Vec<String> = (1..=40).map(|s| format!("r{s}")).collect();
    assert_eq!(
        payloads(&logs[0].read(0, 100, usize::MAX).unwrap()),
        expected
    );
}

#[test]
fn users_tokens_and_rules_survive_a_reopen_and_go_with_their_user() {
    let dir = tempfile::tempdir().unwrap();
    let user = |name: &str, admin| StoredUser {
        name: name.into(),
        admin,
        argon2: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        scram: "4096$AA==$AA==$AA==".into(),
        created_ms: 1,
    };
    let token = |id: &str, user: &str, byte| StoredToken {
        id: id.into(),
        user: user.into(),
        hash: [byte; 32],
        created_ms: 2,
        expires_ms: Some(3),
    };
    {
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        store.put_user(user("admin", true)).unwrap();
        store.put_user(user("alice", false)).unwrap();
        store.put_token(token("t1", "alice", 1)).unwrap();
        store.put_token(token("t2", "admin", 2)).unwrap();
        let rule = store
            .add_rule("alice", "orders.*", vec!["publish".into()])
            .unwrap();
        assert_eq!(store.rules().unwrap(), vec![rule]);
        store.close().unwrap();
    }
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let names: Vec<String> = store.users().unwrap().into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["admin", "alice"]);
    assert_eq!(store.user("alice").unwrap(), Some(user("alice", false)));
    assert_eq!(
        store.token(&[1; 32]).unwrap(),
        Some(token("t1", "alice", 1))
    );
    assert_eq!(store.rules().unwrap().len(), 1);
    // Debug output never shows the secrets' hashes.
    let shown = format!("{:?} {:?}", user("alice", false), token("t1", "alice", 1));
    assert!(
        !shown.contains("argon2id") && !shown.contains("hash"),
        "{shown}"
    );

    // A user goes with its tokens and rules; others stay.
    assert!(store.delete_user("alice").unwrap());
    assert!(!store.delete_user("alice").unwrap());
    assert_eq!(store.user("alice").unwrap(), None);
    assert_eq!(store.token(&[1; 32]).unwrap(), None);
    assert!(store.rules().unwrap().is_empty());
    assert_eq!(
        store.delete_token("t2").unwrap(),
        Some(token("t2", "admin", 2))
    );
    assert_eq!(store.delete_token("t2").unwrap(), None);
    assert!(!store.delete_rule(99).unwrap());
}

/// A store under `--fsync always` (so with the committer thread) in `dir`.
fn store_always(dir: &std::path::Path) -> Arc<Store> {
    let config = StoreConfig {
        fsync: FsyncPolicy::Always,
        ..StoreConfig::default()
    };
    Store::open(dir, config).unwrap()
}

#[test]
fn under_always_a_short_queue_is_committed_as_one_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_always(dir.path());
    let (_, logs) = store
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    let (holder, release) = hold_writer(&store);
    let before = store.stats().group_size.snapshot();
    // The group that runs the held job began with one operation queued, so it takes up to
    // `MAX_GROUP` of what queues meanwhile; three more than that are left for the next
    // group, which begins with those three queued: fewer than `SPLIT_FROM`, so they are
    // one group, committed in line (halving would send them one by one through the
    // committer's wake-ups).
    let pending: Vec<_> = (0..MAX_GROUP - 1 + 3)
        .map(|i| store.append(&logs[0], batch(&[&format!("r{i}")])))
        .collect();
    release.send(()).unwrap();
    holder.join().unwrap().unwrap();
    for appended in pending {
        let appended = futures::executor::block_on(appended).unwrap().unwrap();
        assert_eq!(appended.durability, Durability::Synced);
    }
    let after = store.stats().group_size.snapshot();
    let groups_of = |snapshot: &stats::HistogramSnapshot, size: f64| {
        snapshot
            .buckets
            .iter()
            .find(|(bound, _)| *bound == size)
            .map_or(0, |(_, n)| *n)
    };
    // One group of `MAX_GROUP` (counted under 4096), then one of three (under 4).
    assert_eq!(after.count - before.count, 2);
    assert_eq!(groups_of(&after, 4096.0) - groups_of(&before, 4096.0), 1);
    assert_eq!(groups_of(&after, 4.0) - groups_of(&before, 4.0), 1);
}

#[test]
fn under_always_groups_handed_to_the_committer_are_answered_in_order_synced_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open = || store_always(dir.path());
    let store = open();
    let (_, logs) = store
        .create_topic("t", 2, RetentionPolicy::default())
        .unwrap();
    let (doomed_record, doomed) = store
        .create_topic("doomed", 1, RetentionPolicy::default())
        .unwrap();
    // Hold the writer while more than one group's worth (`MAX_GROUP`) queues up behind
    // it: the group running the held job began with one operation queued and takes up to
    // `MAX_GROUP`, finds the rest behind it, and goes to the committer while the writer
    // takes the rest.
    let (holder, release) = hold_writer(&store);
    const EACH: u64 = 2100;
    let mut pending = [Vec::new(), Vec::new()];
    for sequence in 1..=EACH {
        for (p, log) in logs.iter().enumerate() {
            let item = format!("p{p}-{sequence}");
            let producer = numbered(7 + p as u64, sequence);
            pending[p].push(store.append_as(log, batch(&[item.as_str()]), producer));
        }
    }
    let gone = store.append(&doomed[0], batch(&["gone"]));
    // Deleting a topic while groups are with the committer: its marks go for good.
    let deleter = {
        let (store, doomed) = (Arc::clone(&store), doomed.clone());
        std::thread::spawn(move || store.delete_topic(&doomed_record, &doomed))
    };
    release.send(()).unwrap();
    holder.join().unwrap().unwrap();
    for (p, appends) in pending.into_iter().enumerate() {
        for (offset, appended) in (0u64..).zip(appends) {
            let appended = futures::executor::block_on(appended).unwrap().unwrap();
            assert_eq!(appended.durability, Durability::Synced);
            assert_eq!(appended.base_offset, offset, "partition {p} in order");
        }
    }
    let _ = futures::executor::block_on(gone).unwrap();
    deleter.join().unwrap().unwrap();
    assert!(store.stats().flush_seconds.snapshot().count >= 1);
    // The hundred-odd operations left behind the first group are halved, group by group,
    // down to `SPLIT_FROM`: 53, 26, 13, … (taking up to `MAX_GROUP` at once would have
    // made one group of them).
    let groups = store.stats().group_size.snapshot();
    assert!(groups.count >= 8, "{} groups", groups.count);
    for (p, log) in logs.iter().enumerate() {
        let expected: Vec<String> = (1..=EACH).map(|s| format!("p{p}-{s}")).collect();
        assert_eq!(
            payloads(&log.read(0, 10_000, usize::MAX).unwrap()),
            expected
        );
    }
    // The marks the committer recorded agree with what is stored: the store reopens.
    store.close().unwrap();
    drop((store, logs, doomed));
    let store = open();
    let topics = store.load_topics().unwrap();
    assert_eq!(topics.len(), 1);
    let logs = store.open_logs(&topics[0]).unwrap();
    assert_eq!(logs.iter().map(|l| l.next_offset()).sum::<u64>(), 2 * EACH);
}

#[tokio::test]
async fn retention_deletes_a_segment_file_once_every_chunk_in_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (store, logs) = open_one_topic(dir.path());
    let log = &logs[0];
    let files = || -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path().join("segments").join(log.name()))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
        names.sort();
        names
    };
    let keep = |max_messages| RetentionPolicy {
        max_messages,
        ..RetentionPolicy::default()
    };
    append(&store, log, &["a", "b"]).await;
    append(&store, log, &["c"]).await;
    assert_eq!(files(), [format!("{:020}.seg", 0)]);
    // Retention reaches into the only file: it stays (it holds "c"), and the next write
    // starts a new one.
    assert!(store.trim(log, keep(1)).await.unwrap().unwrap());
    assert_eq!(files().len(), 1);
    append(&store, log, &["d"]).await;
    assert_eq!(
        files(),
        [format!("{:020}.seg", 0), format!("{:020}.seg", 3)]
    );
    let in_files = log.segment_bytes();
    // Once "c" goes too, so does the first file, and its bytes with it.
    assert!(store.trim(log, keep(1)).await.unwrap().unwrap());
    assert_eq!(files(), [format!("{:020}.seg", 3)]);
    assert!(log.segment_bytes() < in_files);
    assert_eq!(payloads(&log.read(3, 10, usize::MAX).unwrap()), ["d"]);
    // A partition emptied by retention keeps no file; offsets go on.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let aged = RetentionPolicy {
        max_age_ms: 1,
        ..RetentionPolicy::default()
    };
    assert!(store.trim(log, aged).await.unwrap().unwrap());
    assert!(files().is_empty());
    assert_eq!(append(&store, log, &["e"]).await.base_offset, 4);
}

#[tokio::test]
async fn retention_inside_a_large_batch_keeps_it_readable_from_its_new_head_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<String> = (0..100).map(|i| format!("{i:0>1000}")).collect();
    let big: Vec<&str> = big.iter().map(String::as_str).collect();
    let first = {
        let (store, logs) = open_one_topic(dir.path());
        let log = &logs[0];
        // 100 KB in one published batch: many chunks behind one index entry.
        append(&store, log, &big).await;
        let keep = RetentionPolicy {
            max_messages: 50,
            ..RetentionPolicy::default()
        };
        assert!(store.trim(log, keep).await.unwrap().unwrap());
        let first = log.first_offset();
        assert!((1..=50).contains(&first), "{first}");
        assert_eq!(
            log.read(first, 1000, usize::MAX).unwrap().records,
            100 - first
        );
        // A read from inside a chunk past the new head.
        assert_eq!(payloads(&log.read(77, 1, usize::MAX).unwrap()), [big[77]]);
        drop(logs);
        store.close().unwrap();
        first
    };
    let (_store, logs) = open_one_topic(dir.path());
    let log = &logs[0];
    assert_eq!((log.first_offset(), log.next_offset()), (first, 100));
    let read = payloads(&log.read(first, 1000, usize::MAX).unwrap());
    assert_eq!(read, big[first as usize..]);
}

#[tokio::test]
async fn small_reads_in_order_through_a_large_batch_return_what_one_read_does() {
    let dir = tempfile::tempdir().unwrap();
    // No cached tail: every read goes to the segment files.
    let store = store_with_tail(dir.path(), 0);
    let (_, logs) = store
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    let log = &logs[0];
    let items: Vec<String> = (0..300).map(|i| format!("{i:0>200}")).collect();
    let items: Vec<&str> = items.iter().map(String::as_str).collect();
    append(&store, log, &items[..150]).await;
    append(&store, log, &items[150..]).await;
    let whole = payloads(&log.read(0, 1000, usize::MAX).unwrap());
    assert_eq!(whole, items);
    // A consumer reading 7 records at a time (so most reads start inside a chunk), and a
    // second one reading 1,000 bytes at a time beside it.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    while a.len() < 300 || b.len() < 300 {
        if a.len() < 300 {
            a.extend(payloads(&log.read(a.len() as u64, 7, usize::MAX).unwrap()));
        }
        if b.len() < 300 {
            b.extend(payloads(&log.read(b.len() as u64, 1000, 1000).unwrap()));
        }
    }
    assert_eq!((a, b), (whole.clone(), whole));
}

#[tokio::test]
async fn small_batches_share_index_entries_and_every_offset_still_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let items: Vec<String> = (0..300).map(|i| format!("{i:0>100}")).collect();
    let name = {
        let (store, logs) = open_one_topic(dir.path());
        let log = &logs[0];
        for item in &items {
            append(&store, log, &[item]).await;
        }
        let name = log.name();
        drop(logs);
        store.close().unwrap();
        name
    };
    // About 40 KB of single-record batches: one entry per `INDEX_INTERVAL_BYTES` or so,
    // not one per batch.
    let entries = {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree(&name).unwrap();
        tree.range(..log::STATE_KEYS).count()
    };
    let stored: u64 = items.iter().map(|i| i.len() as u64 + 40).sum();
    assert!(
        entries >= 2 && entries as u64 <= stored / log::INDEX_INTERVAL_BYTES + 1,
        "{entries} entries for 300 batches"
    );
    // Every offset reads back alone (most from between entries), in and out of order,
    // with no cached tail to serve them.
    let store = store_with_tail(dir.path(), 0);
    let topic = store.load_topics().unwrap().remove(0);
    let logs = store.open_logs(&topic).unwrap();
    let log = &logs[0];
    assert_eq!(log.next_offset(), 300);
    for offset in (0..300).rev().chain(0..300) {
        let read = payloads(&log.read(offset, 1, usize::MAX).unwrap());
        assert_eq!(read, [items[offset as usize].as_str()], "offset {offset}");
    }
    assert_eq!(payloads(&log.read(0, 1000, usize::MAX).unwrap()), items);
    // And what is appended now goes on from there.
    assert_eq!(append(&store, log, &["next"]).await.base_offset, 300);
    assert_eq!(payloads(&log.read(299, 2, usize::MAX).unwrap())[1], "next");
}

#[tokio::test]
async fn segment_files_close_at_the_configured_size_and_retention_deletes_them_whole() {
    let dir = tempfile::tempdir().unwrap();
    let config = || StoreConfig {
        segment_file_bytes: 16 * 1024,
        ..StoreConfig::default()
    };
    let items: Vec<String> = (0..200).map(|i| format!("{i:0>1000}")).collect();
    let files = |name: &str| -> Vec<u64> {
        let mut lens: Vec<(String, u64)> =
            std::fs::read_dir(dir.path().join(segment::DIR).join(name))
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (
                        e.file_name().into_string().unwrap(),
                        e.metadata().unwrap().len(),
                    )
                })
                .collect();
        lens.sort();
        lens.into_iter().map(|(_, len)| len).collect()
    };
    let name = {
        let store = Store::open(dir.path(), config()).unwrap();
        let (_, logs) = store
            .create_topic("t", 1, RetentionPolicy::default())
            .unwrap();
        // Batches of 10 records, about 10 KB each: a file takes two.
        for batch in items.chunks(10) {
            let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
            append(&store, &logs[0], &batch).await;
        }
        let name = logs[0].name();
        drop(logs);
        store.close().unwrap();
        name
    };
    let lens = files(&name);
    assert_eq!(lens.len(), 10, "{lens:?}");
    // A file closes once it holds the size; the batch that crosses it stays whole in it.
    assert!(
        lens.iter().all(|len| (16 * 1024..32 * 1024).contains(len)),
        "{lens:?}"
    );

    let store = Store::open(dir.path(), config()).unwrap();
    let topic = store.load_topics().unwrap().remove(0);
    let logs = store.open_logs(&topic).unwrap();
    let log = &logs[0];
    assert_eq!(payloads(&log.read(0, 1000, usize::MAX).unwrap()), items);
    let keep = RetentionPolicy {
        max_messages: 55,
        ..RetentionPolicy::default()
    };
    while store.trim(log, keep).await.unwrap().unwrap() {}
    // Retention keeps whole chunks (up to 6 KiB, a few records of 1 KB each): at least 55
    // records, less than a chunk more. Every file wholly before the first kept record is
    // gone.
    let first = log.first_offset();
    assert!((136..=145).contains(&first), "{first}");
    let left = files(&name);
    assert_eq!(left.len(), 10 - (first as usize / 20), "{left:?}");
    let read = payloads(&log.read(first, 1000, usize::MAX).unwrap());
    assert_eq!(read, items[first as usize..]);
}
