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

mod model {
    //! Random appends, reads, retention passes and reopens, applied to the store and to a
    //! plain in-memory model; they must always agree.

    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const PARTITIONS: u32 = 2;

    #[derive(Debug, Clone)]
    enum Step {
        Append {
            partition: u32,
            sizes: Vec<usize>,
        },
        Read {
            partition: u32,
            from: u64,
            max: u32,
            max_bytes: usize,
        },
        Retain {
            partition: u32,
            max_messages: u64,
            max_bytes: u64,
        },
        Reopen,
    }

    /// The largest payload the model test appends.
    // Larger than a chunk, so records stored in pieces are part of the model too.
    const LARGEST_RECORD: usize = 16_000;

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..PARTITIONS, proptest::collection::vec(0usize..LARGEST_RECORD, 1..40))
                .prop_map(|(partition, sizes)| Step::Append { partition, sizes }),
            3 => (0..PARTITIONS, 0u64..400, 1u32..200, 1usize..40_000)
                .prop_map(|(partition, from, max, max_bytes)| Step::Read { partition, from, max, max_bytes }),
            1 => (0..PARTITIONS, 0u64..200, 0u64..60_000)
                .prop_map(|(partition, max_messages, max_bytes)| Step::Retain { partition, max_messages, max_bytes }),
            1 => Just(Step::Reopen),
        ]
    }

    /// What the store should hold: each partition's first offset and every record's payload.
    #[derive(Default)]
    struct Model {
        first: BTreeMap<u32, u64>,
        records: BTreeMap<u32, Vec<Vec<u8>>>,
    }

    impl Model {
        fn next(&self, p: u32) -> u64 {
            self.records.get(&p).map_or(0, |r| r.len() as u64)
        }
        fn first(&self, p: u32) -> u64 {
            self.first.get(&p).copied().unwrap_or(0)
        }
    }

    fn open(dir: &std::path::Path) -> (Arc<Store>, Vec<Arc<PartitionLog>>) {
        let store = Store::open(
            dir,
            StoreConfig {
                fsync: FsyncPolicy::Never,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let logs = match store.load_topics().unwrap().first() {
            Some(topic) => store.open_logs(topic).unwrap(),
            None => {
                store
                    .create_topic("model", PARTITIONS, RetentionPolicy::default())
                    .unwrap()
                    .1
            }
        };
        (store, logs)
    }

    fn run(steps: Vec<Step>) {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (mut store, mut logs) = open(dir.path());
        let mut model = Model::default();
        let mut counter = 0u32;
        for step in steps {
            match step {
                Step::Append { partition, sizes } => {
                    let payloads: Vec<Vec<u8>> = sizes
                        .iter()
                        .map(|&n| {
                            counter += 1;
                            let mut p = counter.to_be_bytes().to_vec();
                            p.resize(n.max(4), (counter % 251) as u8);
                            p
                        })
                        .collect();
                    let records: Vec<Record> =
                        payloads.iter().map(|p| Record::new(p.clone())).collect();
                    let batch = Batch::parse(encode_batch(&records)).unwrap();
                    let appended = runtime
                        .block_on(store.append(&logs[partition as usize], batch))
                        .unwrap()
                        .unwrap();
                    assert_eq!(appended.base_offset, model.next(partition));
                    model.records.entry(partition).or_default().extend(payloads);
                }
                Step::Read {
                    partition,
                    from,
                    max,
                    max_bytes,
                } => {
                    let log = &logs[partition as usize];
                    assert_eq!(
                        (log.first_offset(), log.next_offset()),
                        (model.first(partition), model.next(partition))
                    );
                    let from = model.first(partition) + from;
                    let read = log.read(from, max, max_bytes).unwrap();
                    let got: Vec<(u64, Vec<u8>)> = read
                        .batches
                        .iter()
                        .flat_map(|b| b.iter().map(|r| r.unwrap()))
                        .map(|r| (r.offset, r.record.payload.to_vec()))
                        .collect();
                    let all = &model.records.get(&partition).cloned().unwrap_or_default();
                    let end = (from.saturating_add(u64::from(max))).min(all.len() as u64);
                    let expected: Vec<(u64, Vec<u8>)> =
                        (from..end).map(|o| (o, all[o as usize].clone())).collect();
                    assert!(got.len() <= expected.len());
                    assert_eq!(got[..], expected[..got.len()], "read {from} max {max}");
                    if !expected.is_empty() {
                        assert!(
                            !got.is_empty(),
                            "a read with records available returns at least one"
                        );
                    }
                    // A read stops short of max_bytes by less than one record and a batch header.
                    if read.bytes <= max_bytes.saturating_sub(LARGEST_RECORD + 64) {
                        assert_eq!(
                            got.len(),
                            expected.len(),
                            "stopped early without reaching max_bytes"
                        );
                    }
                }
                Step::Retain {
                    partition,
                    max_messages,
                    max_bytes,
                } => {
                    let log = &logs[partition as usize];
                    let policy = RetentionPolicy {
                        max_messages,
                        max_bytes,
                        max_age_ms: 0,
                    };
                    let before = log.first_offset();
                    runtime.block_on(store.trim(log, policy)).unwrap().unwrap();
                    let (first, next) = (log.first_offset(), log.next_offset());
                    assert!(first >= before && first <= next);
                    if first > before {
                        // Deletion keeps at least what the policy asks for.
                        let kept = next - first;
                        assert!(max_messages > 0 || max_bytes > 0);
                        if max_bytes == 0 {
                            assert!(
                                kept >= max_messages,
                                "kept {kept} of at least {max_messages}"
                            );
                        }
                        if max_messages == 0 {
                            assert!(
                                log.size_bytes() >= max_bytes,
                                "kept {} of at least {max_bytes} bytes",
                                log.size_bytes()
                            );
                        }
                    }
                    model.first.insert(partition, first);
                }
                Step::Reopen => {
                    drop(logs);
                    store.close().unwrap();
                    drop(store);
                    (store, logs) = open(dir.path());
                    for p in 0..PARTITIONS {
                        let log = &logs[p as usize];
                        assert_eq!(
                            (log.first_offset(), log.next_offset()),
                            (model.first(p), model.next(p)),
                            "after reopen"
                        );
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn store_agrees_with_the_model(steps in proptest::collection::vec(step(), 1..40)) {
            run(steps);
        }
    }
}

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

#[test]
fn appends_queued_while_the_writer_is_busy_are_not_overtaken_by_later_ones() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_tail(dir.path(), 1 << 20);
    let (_, logs) = store
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    // A job that finds the writer idle runs in place on its caller's thread, holding the
    // writer until it is released.
    let (held_tx, held) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let store = Arc::clone(&store);
        std::thread::spawn(move || {
            store.writer.run(move || {
                held_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                Ok(())
            })
        })
    };
    held.recv().unwrap();
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

/// A closed store in a temp dir holding topic "t" with three batches of ten records, each
/// batch one chunk; returns the dir and the log's tree name.
async fn store_of_three_batches() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let (store, logs) = open_one_topic(dir.path());
    for b in 0..3 {
        let items: Vec<String> = (0..10).map(|i| format!("{b}-{i}")).collect();
        let items: Vec<&str> = items.iter().map(String::as_str).collect();
        append(&store, &logs[0], &items).await;
    }
    let name = logs[0].name();
    drop(logs);
    store.close().unwrap();
    drop(store);
    (dir, name)
}

/// Flips a bit at byte `at` of the chunk stored at `offset` in log `name` of the closed
/// store in `dir`, through sled, so that only the chunk's own checksum can tell.
fn flip_a_bit(dir: &std::path::Path, name: &str, offset: u64, at: usize) {
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree(name).unwrap();
    let mut value = tree.get(chunk::key(offset)).unwrap().unwrap().to_vec();
    value[at] ^= 1;
    tree.insert(chunk::key(offset), value).unwrap();
    db.flush().unwrap();
}

fn open_repairing(dir: &std::path::Path, repair: bool) -> Result<Arc<Store>, StorageError> {
    let config = StoreConfig {
        repair,
        ..StoreConfig::default()
    };
    Store::open(dir, config)
}

#[tokio::test]
async fn a_store_without_its_synced_offsets_is_refused_unless_repaired() {
    let (dir, _) = store_of_three_batches().await;
    let offsets = dir.path().join(checkpoint::FILE);
    for damage in ["missing", "unreadable"] {
        match damage {
            "missing" => std::fs::remove_file(&offsets).unwrap(),
            _ => std::fs::write(&offsets, "not offsets\n").unwrap(),
        }
        let refused = open_repairing(dir.path(), false).err().expect("refused");
        let text = refused.to_string();
        assert!(
            text.contains("herald.offsets") && text.contains("--repair-store"),
            "{text}"
        );
    }
    let store = open_repairing(dir.path(), true).unwrap();
    let topic = store.load_topics().unwrap().remove(0);
    let logs = store.open_logs(&topic).unwrap();
    assert_eq!(logs[0].read(0, 100, usize::MAX).unwrap().records, 30);
    drop(logs);
    store.close().unwrap();
    drop(store);
    let recorded = checkpoint::read(dir.path()).unwrap().expect("written anew");
    assert_eq!(recorded.values().copied().collect::<Vec<_>>(), [30]);
    open_repairing(dir.path(), false).expect("accepted once repaired");
}

#[tokio::test]
async fn a_repair_keeps_each_log_up_to_its_first_damaged_chunk() {
    let (dir, name) = store_of_three_batches().await;
    flip_a_bit(dir.path(), &name, 10, 50);
    std::fs::remove_file(dir.path().join(checkpoint::FILE)).unwrap();
    let store = open_repairing(dir.path(), true).unwrap();
    let topic = store.load_topics().unwrap().remove(0);
    let logs = store.open_logs(&topic).unwrap();
    let log = &logs[0];
    assert_eq!((log.first_offset(), log.next_offset()), (0, 10));
    assert_eq!(payloads(&log.read(0, 100, usize::MAX).unwrap()).len(), 10);
    assert_eq!(append(&store, log, &["after"]).await.base_offset, 10);
    assert_eq!(payloads(&log.read(10, 100, usize::MAX).unwrap()), ["after"]);
}

#[tokio::test]
async fn a_damaged_chunk_is_an_error_to_its_reader_not_bytes() {
    let (dir, name) = store_of_three_batches().await;
    flip_a_bit(dir.path(), &name, 10, 60);
    let store = open_repairing(dir.path(), false).unwrap();
    let topic = store.load_topics().unwrap().remove(0);
    let logs = store.open_logs(&topic).unwrap();
    assert_eq!(logs[0].read(0, 10, usize::MAX).unwrap().records, 10);
    let err = logs[0].read(12, 10, usize::MAX).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&name) && text.contains("offset 10"), "{text}");
    assert!(text.contains("checksum"), "{text}");
}

#[tokio::test]
async fn a_writer_stuck_in_a_write_answers_everyone_within_the_storage_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // Generous against a loaded machine: every wait below must end near `limit`, while
    // the stuck write lasts six times as long.
    let limit = std::time::Duration::from_millis(500);
    let config = StoreConfig {
        timeout: limit,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), config).unwrap();
    let (_, logs) = store
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    // A write that hangs, as sled's flush did on a full disk.
    let stuck = store.writer.submit(|| {
        std::thread::sleep(std::time::Duration::from_secs(3));
        Ok(())
    });
    let started = std::time::Instant::now();
    let queued = bounded(store.append(&logs[0], batch(&["a"])), limit).await;
    assert!(
        matches!(queued, Err(StorageError::Stalled(_))),
        "{queued:?}"
    );
    assert!(started.elapsed() < limit * 3, "{:?}", started.elapsed());
    // Once it has been stuck past the limit, new writes are refused at once.
    let refused = std::time::Instant::now();
    let err = store
        .append(&logs[0], batch(&["b"]))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("stuck"), "{err}");
    assert!(refused.elapsed() < limit, "{:?}", refused.elapsed());
    // Reads go on, and closing gives up on the writer in bounded time.
    assert_eq!(logs[0].read(0, 10, usize::MAX).unwrap().records, 0);
    let closing = std::time::Instant::now();
    assert!(matches!(
        store.close_within(limit),
        Err(StorageError::Stalled(_))
    ));
    assert!(closing.elapsed() < limit * 3, "{:?}", closing.elapsed());
    drop(stuck);
}

#[test]
fn a_store_in_an_older_format_is_refused_with_its_format_named() {
    let dir = tempfile::tempdir().unwrap();
    Store::open(dir.path(), StoreConfig::default())
        .unwrap()
        .close()
        .unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("format", &1u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path(), StoreConfig::default())
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(
        text.contains("storage format 1") && text.contains(&format!("format {FORMAT_VERSION}")),
        "{text}"
    );
}
