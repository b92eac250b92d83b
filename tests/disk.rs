//! A disk that runs out: the reserve refuses publishes while everything else goes on, and
//! publishing resumes by itself once space is freed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_broker::storage::disk::{FsSpace, Probe};
use herald_client::{Client, ErrorCode, FetchRequest, Record};
use herald_suite::TestBroker;

const RESERVE: u64 = 1024 * 1024;

/// A filesystem with `outside` bytes free besides what the store's own files take: it
/// reports `outside` less those files (measured at each sample), so the space that deleted
/// segment files give back shows, as on a real disk.
struct FakeDisk {
    outside: AtomicU64,
    /// The store's files as of the last sample.
    store: AtomicU64,
}

impl FakeDisk {
    fn new() -> Arc<FakeDisk> {
        Arc::new(FakeDisk {
            outside: AtomicU64::new(1 << 40),
            store: AtomicU64::new(0),
        })
    }

    /// Another process fills the disk until `free` bytes are left.
    fn fill_to(&self, free: u64) {
        self.outside
            .store(self.store.load(Ordering::Relaxed) + free, Ordering::Relaxed);
    }

    /// The operator frees plenty.
    fn free_plenty(&self) {
        self.outside.store(1 << 40, Ordering::Relaxed);
    }
}

/// The bytes of every file under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => bytes_under(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// A broker on `disk`, keeping [`RESERVE`].
async fn broker_on_a_disk(disk: &Arc<FakeDisk>) -> TestBroker {
    let disk = Arc::clone(disk);
    let probe = Probe::new(move |dir| {
        let store = bytes_under(dir);
        disk.store.store(store, Ordering::Relaxed);
        Ok(FsSpace {
            available: disk.outside.load(Ordering::Relaxed).saturating_sub(store),
            total: 1 << 40,
        })
    });
    TestBroker::start_with(|c| {
        c.disk_probe = probe;
        c.min_free_disk_bytes = Some(RESERVE);
    })
    .await
}

/// How many records partition 0 of `topic` holds from offset 0 on (one fetch of up to
/// 2,000 records and 16 MiB).
async fn count_records(client: &Client, topic: &str) -> u64 {
    let request = FetchRequest {
        max_messages: 2000,
        max_bytes: 16 * 1024 * 1024,
        ..FetchRequest::new(topic, 0, 0)
    };
    client.fetch(request).await.unwrap().records.len() as u64
}

/// Publishes one record to `topic`, retrying while the broker answers `StorageFull`, for at
/// most `limit`; returns its offset, or the last refusal's message when it never got through.
async fn publish_within(client: &Client, topic: &str, limit: Duration) -> Result<u64, String> {
    let started = Instant::now();
    loop {
        match client.producer().send(topic, Record::new("after")).await {
            Ok(confirm) => return Ok(confirm.offset),
            Err(err) => {
                assert_eq!(err.code(), Some(ErrorCode::StorageFull), "{err}");
                if started.elapsed() > limit {
                    return Err(err.to_string());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Publishes to `topic` until the broker refuses (it samples the disk every few
/// milliseconds), at most 2 s; returns the refusal and how many records got through.
async fn until_refused(client: &Client, topic: &str) -> (String, u64) {
    let started = Instant::now();
    let mut through = 0;
    loop {
        match client.producer().send(topic, Record::new("before")).await {
            Ok(_) => through += 1,
            Err(err) => {
                assert_eq!(err.code(), Some(ErrorCode::StorageFull), "{err}");
                return (err.to_string(), through);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(2), "never refused");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_reserve_publishing_stops_the_rest_goes_on_and_freed_space_resumes_it() {
    let disk = FakeDisk::new();
    let broker = broker_on_a_disk(&disk).await;
    let client = broker.client().await;
    client.create_topic("big", 1).await.unwrap();
    client.create_topic("jobs", 1).await.unwrap();
    let producer = client.producer();
    for _ in 0..8 {
        let records = (0..64).map(|_| Record::new(vec![7u8; 8 * 1024])).collect();
        producer.send_batch("big", records).await.unwrap();
    }
    let jobs = (0..100).map(|i| Record::new(format!("job {i}"))).collect();
    producer.send_batch("jobs", jobs).await.unwrap();
    let mut workers = client.push_consumer("jobs", "workers").await.unwrap();
    let mut readers = client.pull_consumer("jobs", "readers").await.unwrap();

    // The disk fills up to below the reserve (another process wrote to it).
    disk.fill_to(RESERVE / 2);
    let (refused, through) = until_refused(&client, "jobs").await;
    assert!(
        refused.contains(&format!("reserve of {RESERVE} bytes"))
            && refused.contains("--min-free-disk-bytes")
            && refused.contains("free disk space"),
        "{refused}"
    );
    let mut next = 100 + through;

    // Reads, acks, commits and group changes go on.
    assert_eq!(count_records(&client, "jobs").await, next);
    for _ in 0..next {
        workers.next().await.unwrap().unwrap().ack();
    }
    workers.flush_acks().await.unwrap();
    for _ in 0..next {
        readers.next().await.unwrap().unwrap();
    }
    readers.commit().await.unwrap();
    let group = client.describe_group("jobs", "readers").await.unwrap();
    assert_eq!(group.partitions[0].committed, next, "{group:?}");
    client.create_topic("more", 1).await.unwrap();
    client.delete_topic("more").await.unwrap();

    // The operator frees disk: publishing resumes by itself.
    disk.free_plenty();
    let offset = publish_within(&client, "jobs", Duration::from_secs(10))
        .await
        .expect("publishing resumes once the operator frees disk");
    assert_eq!(offset, next, "offsets go on where they stopped");
    next += 1;

    // Full again; deleting the big topic deletes its segment files, which gives their
    // space back, and publishing resumes by itself.
    disk.fill_to(RESERVE / 2);
    let (_, through) = until_refused(&client, "jobs").await;
    next += through;
    assert!(publish_within(&client, "jobs", Duration::from_millis(100))
        .await
        .is_err());
    client.delete_topic("big").await.unwrap();
    let offset = publish_within(&client, "jobs", Duration::from_secs(10))
        .await
        .expect("publishing resumes once the deleted topic's space is free");
    assert_eq!(offset, next);
    disk.free_plenty();
    broker.assert_serving().await;
    broker.stop().await;
}

/// A tmpfs of a few megabytes mounted on a temp dir, unmounted when dropped.
struct SmallFilesystem {
    dir: tempfile::TempDir,
}

impl SmallFilesystem {
    /// Mounts one of `megabytes`; `None` where this process may not mount (it needs root,
    /// as CI has).
    fn mount(megabytes: u32) -> Option<SmallFilesystem> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(SmallFilesystem { dir })
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Writes a file until the filesystem has no space left; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = vec![0xAB; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.write_all(&block[..4096]);
        let _ = file.write_all(&block[..512]);
        let _ = file.sync_all();
        path
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filled_by_another_process_gets_errors_in_bounded_time_and_loses_nothing() {
    let Some(fs) = SmallFilesystem::mount(32) else {
        // CI runs as root and must run it; elsewhere it needs root to mount a tmpfs.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI could not mount a tmpfs for the full-disk test"
        );
        eprintln!("not run: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let data = fs.path().join("data");
    let args = [
        "--storage-timeout-ms",
        "3000",
        "--shutdown-timeout-ms",
        "3000",
    ];
    let broker = herald_suite::BrokerProcess::start(&data, "127.0.0.1:0", &args).await;
    let client = Client::connect(broker.addr()).await.unwrap();
    client.create_topic("kept", 1).await.unwrap();
    let producer = client.producer();
    for _ in 0..10 {
        let records = (0..100).map(|i| Record::new(vec![i as u8; 1024])).collect();
        producer.send_batch("kept", records).await.unwrap();
    }
    let mut readers = client.pull_consumer("kept", "readers").await.unwrap();
    for _ in 0..10 {
        readers.next().await.unwrap().unwrap();
    }
    readers.commit().await.unwrap();

    let filler = fs.fill();
    // Publishing is refused once the broker next samples the free space (every 20 ms);
    // what it confirmed before that is kept. A commit needs a write and is answered either
    // way; nothing waits for longer than the storage timeout.
    let filled = Instant::now();
    let mut confirmed = 1000;
    let err = loop {
        match client.producer().send("kept", Record::new("late")).await {
            Ok(_) => confirmed += 1,
            Err(err) => break err,
        }
        assert!(
            filled.elapsed() < Duration::from_secs(1),
            "{confirmed} records taken on a full disk"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(err.code(), Some(ErrorCode::StorageFull), "{err}");
    for _ in 0..10 {
        readers.next().await.unwrap().unwrap();
    }
    readers
        .commit()
        .await
        .expect("a commit fits in the room the reserve kept");
    // Commits until the filesystem refuses sled a write: each is answered, within the
    // storage timeout, and once one fails the broker still answers everything.
    let standalone = herald_client::Assignment::default();
    let mut failed = None;
    for offset in 0..5000u64 {
        let asked = Instant::now();
        let offsets = [(0, offset % 1000)];
        let commit = client.commit("kept", "marks", &standalone, &offsets);
        let answer = tokio::time::timeout(Duration::from_secs(10), commit)
            .await
            .expect("a commit on a full disk is answered in bounded time");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "{:?}",
            asked.elapsed()
        );
        if let Err(err) = answer {
            failed = Some(err);
            break;
        }
    }
    let failed = failed.expect("the full filesystem refused a write");
    assert!(
        matches!(
            failed.code(),
            Some(ErrorCode::StorageFull | ErrorCode::StorageError)
        ),
        "{failed}"
    );
    let err = client
        .producer()
        .send("kept", Record::new("later"))
        .await
        .expect_err("still full");
    assert_eq!(err.code(), Some(ErrorCode::StorageFull), "{err}");
    let read = tokio::time::timeout(Duration::from_secs(10), count_records(&client, "kept"))
        .await
        .expect("reads are answered");
    assert_eq!(read, confirmed, "reading goes on");

    // SIGTERM still stops it within the shutdown timeout (and its last flush's bound).
    drop(readers);
    drop(client);
    broker.signal("-TERM");
    let stopped = Instant::now();
    broker.exit_code(Duration::from_secs(10)).await;
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopped.elapsed()
    );

    // Space freed: every confirmed record is there.
    std::fs::remove_file(filler).unwrap();
    let broker = herald_suite::BrokerProcess::start(&data, "127.0.0.1:0", &[]).await;
    let client = Client::connect(broker.addr()).await.unwrap();
    assert_eq!(count_records(&client, "kept").await, confirmed);
    broker.signal("-TERM");
    assert_eq!(broker.exit_code(Duration::from_secs(10)).await, Some(0));
}
