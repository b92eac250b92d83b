//! The storage layer alone: appends under each fsync policy, reads, and the raw sled
//! baseline (the same batches as one sled value each in one tree, no broker logic), measured
//! side by side so the cost of Herald's layer is visible.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_broker::storage::{FsyncPolicy, PartitionLog, RetentionPolicy, Store, StoreConfig};
use herald_protocol::{encode_batch, Batch, Record};

/// Appends kept in flight at once, as concurrent publishers would.
const DEPTH: usize = 64;

fn batch(records: usize, size: usize) -> Batch {
    let records: Vec<Record> = (0..records)
        .map(|i| Record::new(Bytes::from(vec![(i % 251) as u8; size])))
        .collect();
    Batch::parse(encode_batch(&records)).unwrap()
}

fn policies() -> [(&'static str, FsyncPolicy); 3] {
    [
        ("never", FsyncPolicy::Never),
        (
            "interval",
            FsyncPolicy::Interval(Duration::from_millis(100)),
        ),
        ("always", FsyncPolicy::Always),
    ]
}

fn open(
    policy: FsyncPolicy,
    partitions: u32,
) -> (tempfile::TempDir, Arc<Store>, Vec<Arc<PartitionLog>>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("data"),
        StoreConfig {
            fsync: policy,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    let (_, logs) = store
        .create_topic("bench", partitions, RetentionPolicy::default())
        .unwrap();
    (dir, store, logs)
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    for (name, policy) in policies() {
        for size in [100, 1024] {
            for records in [1, 100, 1000] {
                let batch = batch(records, size);
                group.throughput(Throughput::Elements((records * DEPTH) as u64));
                let id = BenchmarkId::new(format!("herald/{name}"), format!("{records}x{size}B"));
                group.bench_function(id, |b| herald_append(b, policy, &batch));
                let id = BenchmarkId::new(format!("raw-sled/{name}"), format!("{records}x{size}B"));
                group.bench_function(id, |b| raw_sled(b, policy, &batch));
            }
        }
    }
    group.finish();
}

/// Herald's storage layer: DEPTH appends queued at once, then every confirm awaited. Like
/// the baseline, each call starts from an empty store, so both write the same amount into
/// a tree of the same size.
fn herald_append(b: &mut criterion::Bencher, policy: FsyncPolicy, batch: &Batch) {
    let (_dir, store, logs) = open(policy, 1);
    b.iter(|| {
        let pending: Vec<_> = (0..DEPTH)
            .map(|_| store.append(&logs[0], batch.clone()))
            .collect();
        for p in pending {
            p.blocking_recv().unwrap().unwrap();
        }
    });
}

/// The baseline: each batch encoded once and inserted as one value into one tree; under
/// `always`, every group of DEPTH batches is flushed and fdatasync'ed once.
fn raw_sled(b: &mut criterion::Bencher, policy: FsyncPolicy, batch: &Batch) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(128 << 20)
        .mode(sled::Mode::HighThroughput)
        .open()
        .unwrap();
    let tree = db.open_tree("raw").unwrap();
    let log = File::open(dir.path().join("db")).unwrap();
    let mut key = 0u64;
    let mut encoded = bytes::BytesMut::new();
    b.iter(|| {
        for _ in 0..DEPTH {
            batch.encode_as(key, 0, &mut encoded);
            tree.insert(key.to_be_bytes(), encoded.split().as_ref())
                .unwrap();
            key += u64::from(batch.record_count);
        }
        if policy == FsyncPolicy::Always {
            db.flush().unwrap();
            log.sync_data().unwrap();
        }
    });
}

/// 8 producers, each appending batches of 100 × 100 B to one of 4 partitions and waiting
/// for each confirm before the next, under `--fsync always`: group commit at work.
fn concurrent_always(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrent");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    const PRODUCERS: usize = 8;
    const BATCHES: usize = 50;
    group.throughput(Throughput::Elements((PRODUCERS * BATCHES * 100) as u64));
    let (_dir, store, logs) = open(FsyncPolicy::Always, 4);
    let batch = batch(100, 100);
    group.bench_function("always/8-producers/100x100B/4-partitions", |b| {
        b.iter_custom(|iterations| {
            let start = Instant::now();
            for _ in 0..iterations {
                std::thread::scope(|scope| {
                    for producer in 0..PRODUCERS {
                        let (store, log, batch) = (&store, &logs[producer % 4], &batch);
                        scope.spawn(move || {
                            for _ in 0..BATCHES {
                                store
                                    .append(log, batch.clone())
                                    .blocking_recv()
                                    .unwrap()
                                    .unwrap();
                            }
                        });
                    }
                });
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let (_dir, store, logs) = open(FsyncPolicy::Never, 1);
    let log = &logs[0];
    let stored = 200_000u64;
    let batch = batch(100, 100);
    let pending: Vec<_> = (0..stored / 100)
        .map(|_| store.append(log, batch.clone()))
        .collect();
    for p in pending {
        p.blocking_recv().unwrap().unwrap();
    }
    group.throughput(Throughput::Elements(stored));
    group.bench_function("sequential/100B/1000-per-read", |b| {
        b.iter(|| {
            let mut offset = 0;
            while offset < stored {
                offset += log.read(offset, 1000, 1 << 20).unwrap().records;
            }
        })
    });
    group.throughput(Throughput::Elements(1000));
    group.bench_function("random/100B/1-per-read", |b| {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        b.iter(|| {
            for _ in 0..1000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let read = log.read(x % stored, 1, 1 << 20).unwrap();
                assert_eq!(read.records, 1);
            }
        })
    });
    group.finish();
}

criterion_group!(benches, append, concurrent_always, read);
criterion_main!(benches);
