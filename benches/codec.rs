//! Frame encode and decode of publish batches, 100 B and 1 KiB records, 100 and 1000 per batch.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald_protocol::{encode_batch, Batch, FrameCodec, Message, Publish, Record, ANY_PARTITION};
use tokio_util::codec::Decoder;

fn records(count: usize, size: usize) -> Vec<Record> {
    (0..count)
        .map(|i| Record::new(Bytes::from(vec![(i % 251) as u8; size])))
        .collect()
}

fn publish_frame(count: usize, size: usize) -> Bytes {
    let batch = encode_batch(&records(count, size));
    let publish = Publish {
        topic: "bench".into(),
        partition: ANY_PARTITION,
        producer_id: 0,
        sequence: 0,
        batch,
    };
    Message::new(1, publish).to_bytes()
}

fn bench_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for (count, size) in [(100, 100), (1000, 100), (100, 1024)] {
        let label = format!("{count}x{size}B");
        group.throughput(Throughput::Elements(count as u64));
        let recs = records(count, size);
        group.bench_with_input(
            BenchmarkId::new("encode_batch", &label),
            &recs,
            |b, recs| b.iter(|| encode_batch(recs)),
        );
        let frame = publish_frame(count, size);
        group.bench_with_input(
            BenchmarkId::new("decode_and_validate", &label),
            &frame,
            |b, frame| {
                b.iter(|| {
                    let mut buf = BytesMut::from(&frame[..]);
                    let raw = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
                    let herald_protocol::Frame::Publish(p) = raw.decode().unwrap() else {
                        panic!("not a publish")
                    };
                    Batch::parse(p.batch).unwrap().validate().unwrap()
                })
            },
        );
        let batch = Batch::parse(encode_batch(&recs)).unwrap();
        group.bench_with_input(
            BenchmarkId::new("iterate_records", &label),
            &batch,
            |b, batch| {
                b.iter(|| {
                    batch
                        .iter()
                        .map(|r| r.unwrap().record.payload.len())
                        .sum::<usize>()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
