//! Damage and stalls: missing or unreadable synced offsets, damaged chunks and their
//! repair, a stuck writer, an older store format.

use super::*;

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
    // A write that hangs, as sled's flush did on a full disk; the clock starts once the
    // writer is in it (on a loaded machine the thread may take a while to get there).
    let (began, writer_in) = std::sync::mpsc::channel();
    let stuck = store.writer.submit(move || {
        let _ = began.send(());
        std::thread::sleep(std::time::Duration::from_secs(3));
        Ok(())
    });
    tokio::task::spawn_blocking(move || writer_in.recv())
        .await
        .unwrap()
        .expect("the writer runs the stuck job");
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
