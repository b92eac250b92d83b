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
