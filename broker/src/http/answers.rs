//! Answering many deliveries at once, for WebSocket answers and leases alike.
//!
//! A browser acks a window of deliveries in one message, and each handle names one
//! record. Answering them one by one would cost a trip to the group's dispatcher and an
//! ack-state write per record; instead the records of each subscription are merged into
//! runs of offsets and answered in one call. Where that call fails (a handle naming
//! offsets the group never delivered, a subscription that ended), each record is answered
//! alone, so that every handle gets its own result.

use std::collections::BTreeMap;

use super::json::HttpError;
use crate::core::{Caller, Core};
use crate::domain::push_group::{Answer, Span};

/// Answers `records` (each a subscription and a one-record span) with `answer`; the
/// results come in the same order.
pub(super) async fn answer_records(
    core: &Core,
    caller: &Caller,
    records: &[(u64, Span)],
    answer: &Answer,
) -> Vec<Result<(), HttpError>> {
    let mut results: Vec<Result<(), HttpError>> = (0..records.len()).map(|_| Ok(())).collect();
    let mut by_subscription: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, (sub, _)) in records.iter().enumerate() {
        by_subscription.entry(*sub).or_default().push(i);
    }
    for (sub, indexes) in by_subscription {
        let spans = merged(indexes.iter().map(|&i| records[i].1));
        if core
            .answer(caller, sub, spans, answer.clone())
            .await
            .is_ok()
        {
            continue;
        }
        for i in indexes {
            results[i] = core
                .answer(caller, sub, vec![records[i].1], answer.clone())
                .await
                .map_err(HttpError::from);
        }
    }
    results
}

/// `spans` sorted, with overlapping and adjoining ones of a partition joined.
fn merged(spans: impl Iterator<Item = Span>) -> Vec<Span> {
    let mut spans: Vec<Span> = spans.collect();
    spans.sort_by_key(|s| (s.partition, s.start, s.end));
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        match out.last_mut() {
            Some(last) if last.partition == span.partition && span.start <= last.end => {
                last.end = last.end.max(span.end);
            }
            _ => out.push(span),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(partition: u32, start: u64, end: u64) -> Span {
        Span {
            partition,
            start,
            end,
        }
    }

    #[test]
    fn adjoining_and_repeated_records_of_a_partition_join_into_one_span() {
        let records = [
            span(0, 3, 4),
            span(1, 0, 1),
            span(0, 1, 2),
            span(0, 2, 3),
            span(0, 2, 3),
            span(0, 7, 8),
        ];
        assert_eq!(
            merged(records.into_iter()),
            vec![span(0, 1, 4), span(0, 7, 8), span(1, 0, 1)]
        );
    }
}
