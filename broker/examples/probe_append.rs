use bytes::Bytes;
use herald_broker::storage::{FsyncPolicy, RetentionPolicy, Store, StoreConfig};
use herald_protocol::{encode_batch, Batch, Record};
use std::time::Instant;

fn main() {
    let which = std::env::args().nth(1).unwrap();
    let n: u64 = std::env::args()
        .nth(2)
        .map_or(20_000, |v| v.parse().unwrap());
    let records: Vec<Record> = (0..100)
        .map(|i| Record::new(Bytes::from(vec![(i % 251) as u8; 100])))
        .collect();
    let batch = Batch::parse(encode_batch(&records)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let start = Instant::now();
    if which == "raw" {
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(128 << 20)
            .mode(sled::Mode::HighThroughput)
            .open()
            .unwrap();
        let tree = db.open_tree("raw").unwrap();
        let mut enc = bytes::BytesMut::new();
        for i in 0..n {
            batch.encode_as(i * 100, 0, &mut enc);
            tree.insert((i * 100).to_be_bytes(), enc.split().as_ref())
                .unwrap();
        }
        println!(
            "raw loop: {:.0} rec/s",
            (n * 100) as f64 / start.elapsed().as_secs_f64()
        );
    } else {
        let store = Store::open(
            &dir.path().join("d"),
            StoreConfig {
                fsync: FsyncPolicy::Never,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        let (_, logs) = store
            .create_topic("b", 1, RetentionPolicy::default())
            .unwrap();
        for _ in 0..n / 64 {
            let p: Vec<_> = (0..64)
                .map(|_| store.append(&logs[0], batch.clone()))
                .collect();
            for p in p {
                p.blocking_recv().unwrap().unwrap();
            }
        }
        println!(
            "herald loop: {:.0} rec/s",
            (n * 100) as f64 / start.elapsed().as_secs_f64()
        );
    }
    let el = start.elapsed();
    println!("{which}: {:.0} rec/s", (n * 100) as f64 / el.as_secs_f64());
}
