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
async fn deleting_a_topic_removes_its_logs_and_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let (record, logs) = store
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    append(&store, &logs[0], &["x"]).await;
    store.put_offsets(record.id, "g", &[(0, 1)]).unwrap();
    store.delete_topic(&record).unwrap();
    assert!(store.load_topics().unwrap().is_empty());
    assert_eq!(store.offset(record.id, 0, "g").unwrap(), None);
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
        (FsyncPolicy::Always, Durability::Written),
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
