//! Delivery: fresh records and redeliveries into the consumers' queues, within each
//! consumer's window.

use super::dispatcher::Dispatcher;
use super::dispatcher::Timer;
use super::*;

impl Dispatcher {
    /// Delivers new records of partition `p`; says whether the partition moved on.
    pub(super) async fn deliver_fresh(
        &mut self,
        id: u64,
        p: u32,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<bool, BrokerError> {
        let log = Arc::clone(&self.topic.partitions()[p as usize]);
        let first = log.first_offset();
        let part = &mut self.parts[p as usize];
        let before = part.next;
        if part.next < first {
            tracing::warn!(
                group = self.group,
                partition = p,
                lost = first - part.next,
                "retention deleted records before the group was done with them"
            );
            part.acks.raise_floor(first);
            part.dirty = true;
            part.next = first;
        }
        let from = part.next;
        let read = log.read_async(from, max_records, max_bytes).await?;
        let part = &mut self.parts[p as usize];
        let mut batches = Vec::new();
        for batch in read.batches {
            part.next = part.next.max(batch.next_offset());
            // After a restart, records acked out of order above the floor are skipped.
            batches.extend(not_done(&batch, &part.acks)?);
        }
        let progressed = self.parts[p as usize].next > before;
        for batch in batches {
            let counts = vec![1; batch.record_count as usize];
            self.send(id, p, batch, counts);
        }
        Ok(progressed)
    }

    /// Delivers records of partition `p` waiting for redelivery from `from`; says whether
    /// any left the queue.
    pub(super) async fn redeliver(
        &mut self,
        id: u64,
        p: u32,
        from: u64,
        max_records: u32,
        max_bytes: usize,
    ) -> Result<bool, BrokerError> {
        let part = &mut self.parts[p as usize];
        // The run of consecutive offsets waiting from `from`.
        let mut run = 0u32;
        while run < max_records && part.ready.contains_key(&(from + u64::from(run))) {
            run += 1;
        }
        let log = Arc::clone(&self.topic.partitions()[p as usize]);
        let first = log.first_offset();
        if from < first {
            let gone: Vec<u64> = part.ready.range(..first).map(|(&o, _)| o).collect();
            for offset in gone {
                part.ready.remove(&offset);
                part.acks.mark(offset, offset + 1);
            }
            part.dirty = true;
            return Ok(true);
        }
        let read = log.read_async(from, run, max_bytes).await?;
        let part = &mut self.parts[p as usize];
        let mut deliveries = Vec::new();
        for batch in read.batches {
            let counts: Vec<u32> = (batch.base_offset..batch.next_offset())
                .map(|offset| part.ready.remove(&offset).unwrap_or(0) + 1)
                .collect();
            deliveries.push((batch, counts));
        }
        let progressed = !deliveries.is_empty();
        for (batch, counts) in deliveries {
            self.redelivered += counts.len() as u64;
            self.send(id, p, batch, counts);
        }
        Ok(progressed)
    }

    /// Hands a batch to subscriber `id` and records its flights.
    pub(super) fn send(&mut self, id: u64, p: u32, batch: Batch, delivery_counts: Vec<u32>) {
        let now = Instant::now();
        let deadline = now + Duration::from_millis(u64::from(self.settings.ack_timeout_ms));
        let (start, end) = (batch.base_offset, batch.next_offset());
        let per_record = (batch.encoded_len() as u64 / u64::from(batch.record_count.max(1))) as u32;
        let mut encoded = BytesMut::with_capacity(batch.encoded_len());
        batch.encode(&mut encoded);
        let deliver = Deliver {
            subscription_id: id,
            partition: p,
            delivery_counts: delivery_counts.clone(),
            batch: encoded.freeze(),
        };
        let Some(sub) = self.subs.get_mut(&id) else {
            return;
        };
        let part = &mut self.parts[p as usize];
        if sub.tx.try_send(deliver).is_err() {
            // Its connection is gone (the window keeps the queue from filling): the records
            // wait for the next consumer, and the session's end removes this one.
            for (offset, count) in (start..end).zip(delivery_counts) {
                part.ready.insert(offset, count.saturating_sub(1));
            }
            sub.prefetch_count = 0;
            return;
        }
        part.flights.insert(
            start,
            Run {
                end,
                sub: id,
                deadline,
                since: now,
                bytes: per_record,
                counts: delivery_counts,
            },
        );
        sub.in_flight += (end - start) as u32;
        if let Some(credit) = &mut sub.credit {
            *credit = credit.saturating_sub((end - start) as u32);
        }
        sub.in_flight_bytes += u64::from(per_record) * (end - start);
        self.timers.insert(Timer {
            when: deadline,
            partition: p,
            start,
            end,
        });
    }
}

/// The parts of `batch` not yet done, as batches of consecutive offsets.
pub(super) fn not_done(batch: &Batch, acks: &AckState) -> Result<Vec<Batch>, BrokerError> {
    let mut out = Vec::new();
    let mut offset = batch.base_offset;
    while offset < batch.next_offset() {
        if acks.is_done(offset) {
            offset += 1;
            continue;
        }
        let mut end = offset + 1;
        while end < batch.next_offset() && !acks.is_done(end) {
            end += 1;
        }
        let slice = batch
            .slice(offset, (end - offset) as u32, usize::MAX)
            .map_err(|e| StorageError::Corrupt(format!("stored batch: {e}")))?;
        out.extend(slice);
        offset = end;
    }
    Ok(out)
}
