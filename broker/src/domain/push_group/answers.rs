//! Answers to deliveries: ack, nack, reject, touch, and what happens to the records.

use super::dead_letter::Failed;
use super::dispatcher::Timer;
use super::dispatcher::{keys_in, Dispatcher};
use super::*;

impl Dispatcher {
    pub(super) async fn answer(
        &mut self,
        id: u64,
        spans: &[Span],
        answer: Answer,
    ) -> Result<(), BrokerError> {
        for span in spans {
            self.topic.partition(span.partition)?;
            let next = self.parts[span.partition as usize].next;
            if span.end > next || span.start > span.end {
                return Err(BrokerError::InvalidArgument(format!(
                    "partition {} offsets {}..{} were never delivered to this group (next {next})",
                    span.partition, span.start, span.end
                )));
            }
        }
        let now = Instant::now();
        let mut to_dead_letter = Vec::new();
        if let Answer::Ack = answer {
            for span in spans {
                self.ack(span);
            }
            return Ok(());
        }
        for span in spans {
            let p = span.partition;
            // Only this subscriber's records in flight can be nacked, rejected or touched.
            let held = |run: &Run| run.sub == id;
            match &answer {
                Answer::Ack => unreachable!("acks are handled above"),
                Answer::Nack { delay } => {
                    for (start, run) in self.take_flights(p, span.start, span.end, held) {
                        for (offset, count) in run.records(start) {
                            if let Some(reason) =
                                self.requeue(p, offset, count, now + *delay, "nacked")
                            {
                                to_dead_letter.push(Failed {
                                    partition: p,
                                    offset,
                                    deliveries: count,
                                    reason,
                                });
                            }
                        }
                    }
                }
                Answer::Reject { reason } => {
                    let reason = if reason.is_empty() {
                        "rejected".to_string()
                    } else {
                        format!("rejected: {reason}")
                    };
                    for (start, run) in self.take_flights(p, span.start, span.end, held) {
                        for (offset, count) in run.records(start) {
                            to_dead_letter.push(Failed {
                                partition: p,
                                offset,
                                deliveries: count,
                                reason: reason.clone(),
                            });
                        }
                    }
                }
                Answer::Touch { extend } => {
                    let extend = extend.unwrap_or(Duration::from_millis(u64::from(
                        self.settings.ack_timeout_ms,
                    )));
                    let flights = &mut self.parts[p as usize].flights;
                    for (start, end) in flights.touch(span.start, span.end, id, now + extend) {
                        self.timers.insert(Timer {
                            when: now + extend,
                            partition: p,
                            start,
                            end,
                        });
                    }
                }
            }
        }
        self.dead_letter(to_dead_letter).await;
        Ok(())
    }

    /// Marks records done, wherever they are (except on their way to the dead-letter
    /// topic, which marks them done itself).
    pub(super) fn ack(&mut self, span: &Span) {
        let p = span.partition;
        self.take_flights(p, span.start, span.end, |_| true);
        let part = &mut self.parts[p as usize];
        for offset in keys_in(&part.ready, span) {
            part.ready.remove(&offset);
        }
        for offset in keys_in(&part.delayed, span) {
            part.delayed.remove(&offset);
        }
        // Everything in the span is done, except what is on its way to the dead-letter
        // topic (marked done once stored there).
        let mut skipped: Vec<u64> = part
            .dead_lettering
            .keys()
            .copied()
            .filter(|offset| (span.start..span.end).contains(offset))
            .collect();
        skipped.sort_unstable();
        let mut from = span.start;
        for offset in skipped {
            part.acks.mark(from, offset);
            from = offset + 1;
        }
        part.acks.mark(from, span.end);
        part.dirty = true;
    }

    /// Takes the records of `start..end` whose run satisfies `which` out of flight,
    /// updating their consumers' counts.
    pub(super) fn take_flights(
        &mut self,
        p: u32,
        start: u64,
        end: u64,
        which: impl Fn(&Run) -> bool,
    ) -> Vec<(u64, Run)> {
        let taken = self.parts[p as usize].flights.take(start, end, which);
        for (_, run) in &taken {
            if let Some(sub) = self.subs.get_mut(&run.sub) {
                let records = u32::try_from(run.record_count()).unwrap_or(u32::MAX);
                sub.in_flight = sub.in_flight.saturating_sub(records);
                let bytes = u64::from(run.bytes) * run.record_count();
                sub.in_flight_bytes = sub.in_flight_bytes.saturating_sub(bytes);
            }
        }
        taken
    }

    /// Queues a record for redelivery at `due`, or returns the reason to dead-letter it
    /// when it has been delivered `max_deliveries` times.
    pub(super) fn requeue(
        &mut self,
        p: u32,
        offset: u64,
        count: u32,
        due: Instant,
        why: &str,
    ) -> Option<String> {
        let max = self.settings.max_deliveries;
        if max > 0 && count >= max {
            return Some(format!(
                "{why} after {count} deliveries (max_deliveries {max})"
            ));
        }
        let part = &mut self.parts[p as usize];
        if due <= Instant::now() {
            part.ready.insert(offset, count);
        } else {
            part.delayed.insert(offset, (due, count));
            self.timers.insert(Timer {
                when: due,
                partition: p,
                start: offset,
                end: offset + 1,
            });
        }
        None
    }
}
