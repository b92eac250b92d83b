//! What the store measures of itself, for the metrics (`GET /metrics`): how long writing a
//! commit group takes, how long its flush and fdatasync take, and how many operations a
//! group gathers. Histograms of atomic buckets: the writer records without a lock, and a
//! scrape reads them whenever it likes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds, in seconds, of the latency buckets: 50 µs to 1 s.
pub const SECONDS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// Upper bounds of the group-size buckets: 1 to 4096 operations.
pub const SIZES: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// A histogram over fixed bucket bounds, recorded with atomics.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound (not cumulative), then the overflow.
    counts: Vec<AtomicU64>,
    /// The sum of the values, in millionths (microseconds for latencies).
    sum_micros: AtomicU64,
}

/// What a scrape reads of a [`Histogram`]: the sum, the count, and the count in each
/// bucket (not cumulative; the last bucket's bound is `f64::MAX`, for what is past every
/// bound), as `prometheus-client` takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    pub sum: f64,
    pub count: u64,
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one value (in the bounds' unit).
    pub fn record(&self, value: f64) {
        let at = self.bounds.partition_point(|&bound| bound < value);
        self.counts[at].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add((value * 1e6).round() as u64, Relaxed);
    }

    /// Records a duration, in seconds.
    pub fn record_duration(&self, took: Duration) {
        self.record(took.as_secs_f64());
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .chain(std::iter::once(&f64::MAX))
            .zip(&self.counts)
            .map(|(&bound, count)| (bound, count.load(Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        HistogramSnapshot {
            sum: self.sum_micros.load(Relaxed) as f64 / 1e6,
            count,
            buckets,
        }
    }
}

/// The store's histograms.
#[derive(Debug)]
pub struct StoreStats {
    /// Writing one commit group (or one write in place) into the store, before any flush.
    pub append_seconds: Histogram,
    /// One fdatasync of the segment files a commit wrote: what a confirm under `always`
    /// waits for.
    pub flush_seconds: Histogram,
    /// One flush of sled (the index, offsets, acks, groups, topics) and its fdatasync.
    pub index_flush_seconds: Histogram,
    /// Operations in one commit group.
    pub group_size: Histogram,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            append_seconds: Histogram::new(&SECONDS),
            flush_seconds: Histogram::new(&SECONDS),
            index_flush_seconds: Histogram::new(&SECONDS),
            group_size: Histogram::new(&SIZES),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_their_buckets_and_the_sum_adds_up() {
        let histogram = Histogram::new(&SECONDS);
        for micros in [10, 60, 60, 900, 2_000_000] {
            histogram.record_duration(Duration::from_micros(micros));
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 5);
        assert!((snapshot.sum - 2.001030).abs() < 1e-9, "{}", snapshot.sum);
        let at = |bound: f64| snapshot.buckets.iter().find(|b| b.0 == bound).unwrap().1;
        assert_eq!(at(0.000_05), 1);
        assert_eq!(at(0.000_1), 2);
        assert_eq!(at(0.001), 1);
        assert_eq!(at(1.0), 0);
        assert_eq!(at(f64::MAX), 1, "two seconds is past the last bound");
        let sizes = Histogram::new(&SIZES);
        sizes.record(1.0);
        sizes.record(3.0);
        assert_eq!(
            sizes.snapshot().buckets[..3],
            [(1.0, 1), (2.0, 0), (4.0, 1)]
        );
    }
}
