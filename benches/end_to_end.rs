//! Publish and fetch through a real broker on loopback, under each fsync policy.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_broker::Fsync;
use herald_client::{FetchRequest, Record};
use herald_suite::TestBroker;

const MESSAGES: usize = 10_000;

fn bench_end_to_end(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let _context = runtime.enter(); // the producer spawns its batching task
    let mut group = c.benchmark_group("end_to_end");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(MESSAGES as u64));
    for fsync in [Fsync::Always, Fsync::Never] {
        let broker = runtime.block_on(TestBroker::start_with(|c| c.fsync = fsync));
        let client = runtime.block_on(broker.client());
        let producer = client.producer();
        let label = format!("{fsync:?}").to_lowercase();
        let mut topic_number = 0;
        group.bench_function(BenchmarkId::new("publish_then_fetch_100B", &label), |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iterations {
                        topic_number += 1;
                        let topic = format!("bench-{topic_number}");
                        let mut pending = Vec::with_capacity(MESSAGES);
                        for i in 0..MESSAGES {
                            pending.push(
                                producer
                                    .enqueue(&topic, Record::new(vec![i as u8; 100]))
                                    .await
                                    .unwrap(),
                            );
                        }
                        for p in pending {
                            p.await.unwrap();
                        }
                        let mut offset = 0;
                        while offset < MESSAGES as u64 {
                            let fetched = client
                                .fetch(FetchRequest::new(&topic, 0, offset))
                                .await
                                .unwrap();
                            offset += fetched.records.len() as u64;
                        }
                    }
                    start.elapsed()
                })
            })
        });
        runtime.block_on(broker.stop());
    }
    group.finish();
}

criterion_group!(benches, bench_end_to_end);
criterion_main!(benches);
