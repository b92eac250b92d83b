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

/// Where the chunk starting at `offset` of log `name` lies in its segment files, in the
/// closed store in `dir`: read on through the files from the index entry before it (the
/// index names only some batches; see `log::INDEX_INTERVAL_BYTES`).
fn pointer_of(dir: &std::path::Path, name: &str, offset: u64) -> segment::Pointer {
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree(name).unwrap();
    let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let segments = segment::Segments::open(dir, name, total).unwrap();
    let source = chunk::Source {
        log: name,
        tree: &tree,
        segments: &segments,
    };
    let found = source
        .walk(offset, u64::MAX)
        .map(Result::unwrap)
        .find(|chunk| chunk.batch.base_offset == offset)
        .and_then(|chunk| chunk.pointer);
    found.expect("a chunk in a segment file")
}

/// Has the index of log `name` in the closed store in `dir` name the chunks at `offsets`,
/// as it names batches of `INDEX_INTERVAL_BYTES` or more. Returns where they lie.
fn index_chunks<const N: usize>(
    dir: &std::path::Path,
    name: &str,
    offsets: [u64; N],
) -> [segment::Pointer; N] {
    let pointers = offsets.map(|offset| pointer_of(dir, name, offset));
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree(name).unwrap();
    for (offset, pointer) in offsets.into_iter().zip(pointers) {
        tree.insert(chunk::key(offset), &pointer.encode()[..])
            .unwrap();
    }
    db.flush().unwrap();
    pointers
}

/// Flips a bit at byte `at` of the value of the chunk stored at `offset` in log `name` of
/// the closed store in `dir`, in its segment file, so that only the chunk's own checksum
/// can tell.
fn flip_a_bit(dir: &std::path::Path, name: &str, offset: u64, at: usize) {
    let pointer = pointer_of(dir, name, offset);
    let path = dir
        .join(segment::DIR)
        .join(name)
        .join(format!("{:020}.seg", pointer.segment));
    let mut file = std::fs::read(&path).unwrap();
    file[pointer.position as usize + segment::FRAME_HEAD + at] ^= 1;
    std::fs::write(&path, file).unwrap();
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
    // Opening verifies the chunks from the last entry below the synced offset on; with an
    // entry per batch, that is the third, and the damaged second is left to its reader.
    index_chunks(dir.path(), &name, [10, 20]);
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

/// A store under `always` whose callers wait for the writer at most `limit`, and the logs
/// of its one topic.
fn store_with_timeout(
    dir: &std::path::Path,
    limit: std::time::Duration,
) -> (Arc<Store>, Vec<Arc<PartitionLog>>) {
    let config = StoreConfig {
        fsync: FsyncPolicy::Always,
        timeout: limit,
        ..StoreConfig::default()
    };
    let store = Store::open(dir, config).unwrap();
    let (_, logs) = store
        .create_topic("t", 1, RetentionPolicy::default())
        .unwrap();
    (store, logs)
}

#[tokio::test]
async fn a_writer_stuck_in_a_write_answers_everyone_within_the_storage_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // Generous against a loaded machine: every wait below must end near `limit`, while
    // the stuck write lasts six times as long.
    let limit = std::time::Duration::from_millis(500);
    let (store, logs) = store_with_timeout(dir.path(), limit);
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

#[tokio::test]
async fn a_stuck_index_flush_refuses_what_waits_for_it_at_once_and_publishing_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let limit = std::time::Duration::from_millis(500);
    let (store, logs) = store_with_timeout(dir.path(), limit);
    // sled's flush hangs, as it did on a full disk: the flusher cannot sync sled's files
    // while a thread of the test holds what syncs them.
    let syncer = store.writer.syncer();
    let (holding, held) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let _guard = syncer.lock().unwrap();
        holding.send(()).unwrap();
        let _ = released.recv();
    });
    held.recv().unwrap();
    // A job (an offset commit, an ack) waits for sled's flush; its caller gives up at the
    // limit.
    let started = std::time::Instant::now();
    let waited = bounded(store.writer.submit(|| Ok(())), limit).await;
    assert!(
        matches!(waited, Err(StorageError::Stalled(_))),
        "{waited:?}"
    );
    assert!(started.elapsed() < limit * 3, "{:?}", started.elapsed());
    let stalled = std::time::Instant::now();
    while !store.writer_stalled() {
        assert!(stalled.elapsed() < limit * 10, "never reported stalled");
        tokio::time::sleep(limit / 10).await;
    }
    // Once the flush has been stuck past the limit, what would wait for it is refused at
    // once, saying why.
    let refused = std::time::Instant::now();
    let err = store.writer.submit(|| Ok(())).await.unwrap().unwrap_err();
    assert!(matches!(err, StorageError::Stalled(_)), "{err:?}");
    assert!(err.to_string().contains("index flush"), "{err}");
    assert!(refused.elapsed() < limit, "{:?}", refused.elapsed());
    // Publishing goes on: an append waits for its segment file only (its sync given room
    // on a loaded machine).
    let appended = bounded(store.append(&logs[0], batch(&["a", "b"])), limit * 4)
        .await
        .unwrap();
    assert_eq!(
        (appended.base_offset, appended.count, appended.durability),
        (0, 2, Durability::Synced)
    );
    assert_eq!(logs[0].read(0, 10, usize::MAX).unwrap().records, 2);
    // Once the flush goes through, everything is taken again.
    drop(release);
    holder.join().unwrap();
    let freed = std::time::Instant::now();
    while store.writer_stalled() {
        assert!(freed.elapsed() < limit * 10, "still reported stalled");
        tokio::time::sleep(limit / 10).await;
    }
    bounded(store.writer.submit(|| Ok(())), limit * 4)
        .await
        .unwrap();
    drop(logs);
    // The last flush is not what is measured here: on a loaded machine it may take longer
    // than the test's short limit.
    store
        .close_within(std::time::Duration::from_secs(30))
        .unwrap();
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

/// The segment file of log `name` in the closed store in `dir` that starts at offset 0.
fn first_segment_file(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    dir.join(segment::DIR)
        .join(name)
        .join(format!("{:020}.seg", 0))
}

#[tokio::test]
async fn after_a_crash_the_index_is_rebuilt_from_the_segment_files_and_a_torn_frame_cut() {
    let (dir, name) = store_of_three_batches().await;
    // What a crash leaves when sled had not written the index of the last two batches,
    // the last batch's frame only partly reached the disk, and the offsets file says
    // nothing was synced.
    {
        let last = pointer_of(dir.path(), &name, 20);
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree(&name).unwrap();
        tree.remove(chunk::key(10)).unwrap();
        tree.remove(chunk::key(20)).unwrap();
        db.flush().unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(first_segment_file(dir.path(), &name))
            .unwrap();
        file.set_len(last.end() - 3).unwrap();
    }
    checkpoint::write(dir.path(), &checkpoint::Marks::new()).unwrap();
    let (store, logs) = open_one_topic(dir.path());
    let log = &logs[0];
    assert_eq!(log.next_offset(), 20, "the whole second batch is back");
    let read = payloads(&log.read(0, 100, usize::MAX).unwrap());
    assert_eq!(read.len(), 20);
    assert_eq!((&read[10][..], &read[19][..]), ("1-0", "1-9"));
    // The torn frame is gone: what comes next follows the second batch.
    assert_eq!(append(&store, log, &["after"]).await.base_offset, 20);
    assert_eq!(payloads(&log.read(20, 100, usize::MAX).unwrap()), ["after"]);
    drop(logs);
    store.close().unwrap();
    drop(store);
    let (_store, logs) = open_one_topic(dir.path());
    assert_eq!(logs[0].read(0, 100, usize::MAX).unwrap().records, 21);
}

#[tokio::test]
async fn index_entries_naming_frames_a_crash_lost_are_dropped() {
    let (dir, name) = store_of_three_batches().await;
    // The index reached the disk, the third batch's frame did not. The index names every
    // batch here, as it does batches of `INDEX_INTERVAL_BYTES` or more.
    let file = first_segment_file(dir.path(), &name);
    let kept = index_chunks(dir.path(), &name, [10, 20])[1].position;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(kept)
        .unwrap();
    // Synced up to 20: the third batch was never confirmed under `always`.
    let mut marks = checkpoint::Marks::new();
    marks.insert(name.clone(), 20);
    checkpoint::write(dir.path(), &marks).unwrap();
    let (store, logs) = open_one_topic(dir.path());
    let log = &logs[0];
    assert_eq!(log.next_offset(), 20);
    assert_eq!(log.read(0, 100, usize::MAX).unwrap().records, 20);
    assert_eq!(append(&store, log, &["next"]).await.base_offset, 20);

    // Below the synced offset, a lost frame is damage the broker refuses to paper over.
    drop(logs);
    store.close().unwrap();
    drop(store);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(kept - 10)
        .unwrap();
    let store = open_repairing(dir.path(), false).unwrap();
    let topic = store.load_topics().unwrap().remove(0);
    let err = store.open_logs(&topic).expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("--repair-store"), "{text}");
}

#[tokio::test]
async fn a_store_that_kept_its_chunks_in_sled_is_read_and_upgraded() {
    let (dir, name) = store_of_three_batches().await;
    // Rewrite it as format 2 left it: every chunk in sled itself, no segment files.
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree(&name).unwrap();
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let segments = segment::Segments::open(dir.path(), &name, total).unwrap();
        let source = chunk::Source {
            log: &name,
            tree: &tree,
            segments: &segments,
        };
        let chunks: Vec<chunk::Chunk> = source.walk(0, u64::MAX).collect::<Result<_, _>>().unwrap();
        assert_eq!(chunks.len(), 3);
        for stored in chunks {
            for (key, value) in chunk::sled_values(&stored.batch, stored.tag) {
                tree.insert(key, value).unwrap();
            }
        }
        db.open_tree("meta")
            .unwrap()
            .insert("format", &SLED_CHUNKS_FORMAT.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
        std::fs::remove_dir_all(dir.path().join(segment::DIR)).unwrap();
    }
    {
        let (store, logs) = open_one_topic(dir.path());
        let read = payloads(&logs[0].read(0, 100, usize::MAX).unwrap());
        assert_eq!((read.len(), &read[29][..]), (30, "2-9"));
        assert_eq!(append(&store, &logs[0], &["new"]).await.base_offset, 30);
        drop(logs);
        store.close().unwrap();
    }
    let db = sled::open(dir.path()).unwrap();
    let format = db
        .open_tree("meta")
        .unwrap()
        .get("format")
        .unwrap()
        .unwrap();
    assert_eq!(format.as_ref(), FORMAT_VERSION.to_be_bytes());
    drop(db);
    let (_store, logs) = open_one_topic(dir.path());
    let read = payloads(&logs[0].read(0, 100, usize::MAX).unwrap());
    assert_eq!(
        (read.len(), &read[0][..], &read[30][..]),
        (31, "0-0", "new")
    );
}
