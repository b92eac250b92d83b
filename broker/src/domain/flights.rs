//! A push group's records in flight on one partition, kept as runs of consecutive offsets.
//!
//! A delivery hands a subscriber a batch of consecutive records at once, and acks mostly
//! come back as ranges, so the records in flight are stored as the runs they were
//! delivered in: one entry per delivery instead of one per record. An answer that covers
//! part of a run (a nack of one record, a touch, an ack that stops midway) cuts the run
//! at its edges first. Per-record entries had made a map insert for every record
//! delivered and a removal for every record acked, a tenth of the CPU of a push fan-out.

use std::collections::BTreeMap;
use tokio::time::Instant;

/// Consecutive records delivered together to one subscriber and not yet answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// One past the run's last offset.
    pub end: u64,
    pub sub: u64,
    /// When the run goes back to the group unless answered (or touched).
    pub deadline: Instant,
    /// When it was delivered.
    pub since: Instant,
    /// What each record counts against its subscriber's byte window.
    pub bytes: u32,
    /// How many times each record has been delivered, this time included, from the
    /// run's first offset on.
    pub counts: Vec<u32>,
}

impl Run {
    /// Records in the run.
    pub fn record_count(&self) -> u64 {
        self.counts.len() as u64
    }

    /// Each record's offset and delivery count, given the run's first offset.
    pub fn records(&self, start: u64) -> impl Iterator<Item = (u64, u32)> + '_ {
        (start..self.end).zip(self.counts.iter().copied())
    }

    /// Cuts the run at `offset` (strictly inside it): `self` keeps what is before, the
    /// returned run holds the rest.
    fn split_off(&mut self, start: u64, offset: u64) -> Run {
        let rest = Run {
            end: self.end,
            sub: self.sub,
            deadline: self.deadline,
            since: self.since,
            bytes: self.bytes,
            counts: self.counts.split_off((offset - start) as usize),
        };
        self.end = offset;
        rest
    }
}

/// The runs in flight, by first offset; runs never overlap.
#[derive(Debug, Default)]
pub struct Flights {
    runs: BTreeMap<u64, Run>,
}

impl Flights {
    /// Records `run`, starting at `start`; none of its offsets may be in flight already.
    pub fn insert(&mut self, start: u64, run: Run) {
        debug_assert!(start < run.end && run.record_count() == run.end - start);
        debug_assert!(self.runs.range(start..run.end).next().is_none());
        debug_assert!(self.containing(start).is_none());
        self.runs.insert(start, run);
    }

    /// The run holding `offset`, with its first offset.
    pub fn containing(&self, offset: u64) -> Option<(u64, &Run)> {
        let (&start, run) = self.runs.range(..=offset).next_back()?;
        (run.end > offset).then_some((start, run))
    }

    /// Every run, with its first offset, in offset order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Run)> {
        self.runs.iter().map(|(&start, run)| (start, run))
    }

    /// Takes out the records in `start..end` whose run satisfies `which`, as runs (with
    /// their first offsets, in offset order). Runs reaching past the range are cut at its
    /// edges; what lies outside stays in flight.
    pub fn take(&mut self, start: u64, end: u64, which: impl Fn(&Run) -> bool) -> Vec<(u64, Run)> {
        if start >= end {
            return Vec::new();
        }
        self.cut(start, end, &which);
        let starts: Vec<u64> = self
            .runs
            .range(start..end)
            .filter(|(_, run)| which(run))
            .map(|(&s, _)| s)
            .collect();
        starts
            .into_iter()
            .filter_map(|s| self.runs.remove(&s).map(|run| (s, run)))
            .collect()
    }

    /// Moves the deadline of `sub`'s records in `start..end` to `deadline`; returns the
    /// ranges it moved.
    pub fn touch(&mut self, start: u64, end: u64, sub: u64, deadline: Instant) -> Vec<(u64, u64)> {
        if start >= end {
            return Vec::new();
        }
        let held = |run: &Run| run.sub == sub;
        self.cut(start, end, &held);
        self.runs
            .range_mut(start..end)
            .filter(|(_, run)| held(run))
            .map(|(&s, run)| {
                run.deadline = deadline;
                (s, run.end)
            })
            .collect()
    }

    /// Makes `start` and `end` run edges where a run satisfying `which` crosses them.
    fn cut(&mut self, start: u64, end: u64, which: &impl Fn(&Run) -> bool) {
        for edge in [start, end] {
            let Some((&first, run)) = self.runs.range_mut(..edge).next_back() else {
                continue;
            };
            if run.end > edge && which(run) {
                let rest = run.split_off(first, edge);
                self.runs.insert(edge, rest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap as Model;
    use std::time::Duration;

    fn run(start: u64, end: u64, sub: u64, at: Instant) -> Run {
        Run {
            end,
            sub,
            deadline: at,
            since: at,
            bytes: 10,
            counts: (start..end).map(|o| (o % 3) as u32 + 1).collect(),
        }
    }

    /// Every record in flight: offset → (sub, count, deadline).
    fn records(flights: &Flights) -> Model<u64, (u64, u32, Instant)> {
        flights
            .iter()
            .flat_map(|(start, run)| {
                run.records(start)
                    .map(move |(offset, count)| (offset, (run.sub, count, run.deadline)))
            })
            .collect()
    }

    #[test]
    fn a_partial_answer_cuts_the_run_and_leaves_the_rest_in_flight() {
        let now = Instant::now();
        let mut flights = Flights::default();
        flights.insert(10, run(10, 20, 1, now));
        let taken = flights.take(12, 15, |_| true);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, 12);
        assert_eq!(taken[0].1.end, 15);
        assert_eq!(taken[0].1.counts, vec![1, 2, 3]);
        let left: Vec<(u64, u64)> = flights.iter().map(|(s, r)| (s, r.end)).collect();
        assert_eq!(left, [(10, 12), (15, 20)]);
        assert_eq!(flights.containing(12), None);
        assert_eq!(flights.containing(16).map(|(s, _)| s), Some(15));
    }

    #[test]
    fn another_subscribers_runs_are_neither_taken_nor_cut() {
        let now = Instant::now();
        let mut flights = Flights::default();
        flights.insert(0, run(0, 10, 1, now));
        flights.insert(10, run(10, 20, 2, now));
        let taken = flights.take(5, 15, |r| r.sub == 2);
        assert_eq!(
            taken.iter().map(|(s, r)| (*s, r.end)).collect::<Vec<_>>(),
            [(10, 15)]
        );
        let left: Vec<(u64, u64)> = flights.iter().map(|(s, r)| (s, r.end)).collect();
        assert_eq!(left, [(0, 10), (15, 20)]);
    }

    proptest! {
        /// Any sequence of deliveries, takes and touches leaves exactly the records a
        /// per-record model says, with the same subscribers, counts and deadlines.
        #[test]
        fn runs_agree_with_a_per_record_model(
            ops in proptest::collection::vec((0u8..3, 0u64..60, 1u64..12, 1u64..4), 1..60)
        ) {
            let base = Instant::now();
            let mut flights = Flights::default();
            let mut model: Model<u64, (u64, u32, Instant)> = Model::new();
            for (i, (kind, start, len, sub)) in ops.into_iter().enumerate() {
                let end = start + len;
                match kind {
                    0 => {
                        // Deliver the records of start..end not in flight, as runs.
                        let mut from = start;
                        while from < end {
                            if model.contains_key(&from) { from += 1; continue; }
                            let mut to = from;
                            while to < end && !model.contains_key(&to) { to += 1; }
                            let r = run(from, to, sub, base);
                            for (offset, count) in r.records(from) {
                                model.insert(offset, (sub, count, base));
                            }
                            flights.insert(from, r);
                            from = to;
                        }
                    }
                    1 => {
                        let taken = flights.take(start, end, |r| r.sub == sub);
                        let mut got = Model::new();
                        for (s, r) in &taken {
                            prop_assert!(r.sub == sub && *s >= start && r.end <= end);
                            for (offset, count) in r.records(*s) {
                                got.insert(offset, (r.sub, count, r.deadline));
                            }
                        }
                        let expected: Model<_, _> = model
                            .range(start..end)
                            .filter(|(_, v)| v.0 == sub)
                            .map(|(&o, &v)| (o, v))
                            .collect();
                        for offset in expected.keys() {
                            model.remove(offset);
                        }
                        prop_assert_eq!(got, expected);
                    }
                    _ => {
                        let deadline = base + Duration::from_millis(i as u64 + 1);
                        flights.touch(start, end, sub, deadline);
                        for (_, v) in model.range_mut(start..end) {
                            if v.0 == sub { v.2 = deadline; }
                        }
                    }
                }
                prop_assert_eq!(records(&flights), model.clone());
                for offset in 0..80 {
                    let held = flights.containing(offset).map(|(_, r)| r.sub);
                    prop_assert_eq!(held, model.get(&offset).map(|v| v.0));
                }
            }
        }
    }
}
