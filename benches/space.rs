//! Bytes on disk per payload byte, and peak memory, after writing a lot of data through the
//! storage layer: `cargo bench --bench space` writes 1 GB (`HERALD_SPACE_MB` changes it) of
//! 100 B and of 1 KiB records under `--fsync never` and `always`, each case in a process of
//! its own so its peak RSS is its own.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use herald_broker::storage::{FsyncPolicy, RetentionPolicy, Store, StoreConfig};
use herald_protocol::{encode_batch, Batch, Record};

const CASE: &str = "HERALD_SPACE_CASE";

fn main() {
    let megabytes: u64 = std::env::var("HERALD_SPACE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    if let Ok(case) = std::env::var(CASE) {
        let (policy, size) = case.split_once(':').expect("POLICY:SIZE");
        let fsync = if policy == "always" {
            FsyncPolicy::Always
        } else {
            FsyncPolicy::Never
        };
        return measure(
            policy,
            fsync,
            size.parse().expect("record size"),
            megabytes * 1_000_000,
        );
    }
    let exe = std::env::current_exe().unwrap();
    for case in ["never:100", "never:1024", "always:100", "always:1024"] {
        let status = std::process::Command::new(&exe)
            .env(CASE, case)
            .status()
            .unwrap();
        assert!(status.success(), "case {case} failed");
    }
}

fn measure(policy: &str, fsync: FsyncPolicy, size: usize, payload_bytes: u64) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open(
        &data,
        StoreConfig {
            fsync,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let (_, logs) = store
        .create_topic("space", 1, RetentionPolicy::default())
        .unwrap();
    let per_batch = (64 * 1024 / size).max(1);
    let records: Vec<Record> = (0..per_batch)
        .map(|i| {
            Record::new(Bytes::from(
                (0..size)
                    .map(|j| ((i * 7 + j * 13) % 251) as u8)
                    .collect::<Vec<u8>>(),
            ))
        })
        .collect();
    let batch = Batch::parse(encode_batch(&records)).unwrap();
    let batches = payload_bytes / (per_batch * size) as u64;
    let start = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..batches {
        pending.push_back(store.append(&logs[0], batch.clone()));
        if pending.len() >= 64 {
            pending
                .pop_front()
                .unwrap()
                .blocking_recv()
                .unwrap()
                .unwrap();
        }
    }
    for p in pending {
        p.blocking_recv().unwrap().unwrap();
    }
    store.close().unwrap();
    let elapsed = start.elapsed();
    let written = batches * (per_batch * size) as u64;
    let on_disk = disk_usage(&data);
    println!(
        "--fsync {policy:<6} {size:>5} B records: {:.0} MB payload in {:.1} s ({:.0} records/s), {:.0} MB on disk = {:.2} bytes per payload byte; peak RSS {} MB",
        written as f64 / 1e6,
        elapsed.as_secs_f64(),
        (batches * per_batch as u64) as f64 / elapsed.as_secs_f64(),
        on_disk as f64 / 1e6,
        on_disk as f64 / written as f64,
        peak_rss_kb() / 1024,
    );
}

/// Allocated bytes of every file under `dir` (what `du` counts).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                disk_usage(&e.path())
            } else {
                meta.blocks() * 512
            }
        })
        .sum()
}

fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
