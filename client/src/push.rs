//! [`PushConsumer`]: a subscriber of a push group, read as an async stream of
//! [`Delivery`] values that are each answered: ack, nack, reject or touch.
//!
//! The broker sends deliveries while this subscriber holds fewer unanswered records than
//! its window (`prefetch`), so the local buffer never holds more than the window. Acks are
//! the common answer and are cheap: [`Delivery::ack`] only queues the offset; a background
//! task gathers queued acks into ranges and keeps a few `Ack` requests in flight. An ack
//! waits up to [`PushConsumerConfig::ack_linger`] for others to go with it (as Pulsar's
//! ack grouping does), unless half the window is waiting to be acked: the broker refills
//! a window once half of it is free, so holding more would only idle the consumer. With a
//! window of 1 or 2 every ack leaves at once. An ack the broker refused surfaces as an
//! error from the stream. [`PushConsumer::flush_acks`]
//! waits until every ack queued so far is stored; [`PushConsumer::close`] flushes, then
//! unsubscribes (what was not answered goes back to the group at once).
//!
//! When the connection breaks, the broker gives this subscriber's unanswered deliveries
//! back to the group; once the client is connected again the consumer subscribes again
//! and carries on. Deliveries received before the break are stale then: the stream drops
//! those it still holds, acking one does nothing, and `nack`, `reject` or `touch` on one
//! fails with [`Error::Disconnected`]. Their records come again (to this subscriber or
//! another), counted as redelivered.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use herald_protocol::{
    read_batches, Ack, Deliver, ErrorCode, Nack, OffsetRange, Record, Reject, StartPosition,
    Subscribe, Subscribed, Touch, Unsubscribe,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::client::{await_reply, expect_reply, Client};
use crate::error::{Error, Result};

/// How a [`PushConsumer`] subscribes.
#[derive(Debug, Clone)]
pub struct PushConsumerConfig {
    /// Most unanswered deliveries held at once (1 to 100,000).
    pub prefetch: u32,
    /// Most unanswered payload bytes held at once; 0 = no byte limit.
    pub prefetch_bytes: u32,
    /// Where the group starts if this subscription creates it.
    pub start: StartPosition,
    /// How long an ack may wait for later ones to share its `Ack` request (zero: none).
    /// One request then answers many deliveries, which saves the broker a stored ack state
    /// per delivery; a crash of this client within the linger redelivers those records.
    pub ack_linger: Duration,
}

impl Default for PushConsumerConfig {
    fn default() -> Self {
        PushConsumerConfig {
            prefetch: 100,
            prefetch_bytes: 0,
            start: StartPosition::Earliest,
            ack_linger: DEFAULT_ACK_LINGER,
        }
    }
}

/// How long an ack waits for company by default.
pub const DEFAULT_ACK_LINGER: Duration = Duration::from_millis(1);

/// One record delivered to this subscriber, to be answered once.
pub struct Delivery {
    pub partition: u32,
    pub offset: u64,
    pub record: Record,
    /// How many times this record has been delivered, this time included.
    pub delivery_count: u32,
    /// Whether it was delivered before (`delivery_count > 1`).
    pub redelivered: bool,
    /// The subscription it came on, which a reconnect replaces.
    on: Current,
    subscription: Arc<Subscription>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("delivery_count", &self.delivery_count)
            .field("record", &self.record)
            .finish()
    }
}

impl Delivery {
    /// Done with this record. Queued and sent in a batch with other acks.
    pub fn ack(self) {
        let _ = self
            .subscription
            .acks
            .send(AckMessage::Ack(self.on, self.partition, self.offset));
    }

    /// Give the record back to the group: redelivered now, or no sooner than `delay`.
    pub async fn nack(self, delay: Duration) -> Result<()> {
        let request = Nack {
            subscription_id: self.live_subscription()?,
            ranges: vec![self.range()],
            delay_ms: delay.as_millis().min(u128::from(u32::MAX)) as u32,
        };
        let reply = self.subscription.client.call(request).await?;
        expect_reply!(reply, Ok).map(drop)
    }

    /// Send the record to the group's dead-letter topic.
    pub async fn reject(self, reason: &str) -> Result<()> {
        let request = Reject {
            subscription_id: self.live_subscription()?,
            ranges: vec![self.range()],
            reason: reason.to_string(),
        };
        let reply = self.subscription.client.call(request).await?;
        expect_reply!(reply, Ok).map(drop)
    }

    /// Still working on it: restart its ack deadline (`None`: the group's ack timeout).
    pub async fn touch(&self, extend: Option<Duration>) -> Result<()> {
        let request = Touch {
            subscription_id: self.live_subscription()?,
            ranges: vec![self.range()],
            extend_ms: extend.map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32),
        };
        let reply = self.subscription.client.call(request).await?;
        expect_reply!(reply, Ok).map(drop)
    }

    /// The subscription this delivery came on, if a reconnect has not replaced it.
    fn live_subscription(&self) -> Result<u64> {
        if self.subscription.is_live(self.on) {
            Ok(self.on.id)
        } else {
            Err(Error::Disconnected(
                "delivered on a connection that has since broken; the broker gave it back to the group"
                    .into(),
            ))
        }
    }

    fn range(&self) -> OffsetRange {
        OffsetRange {
            partition: self.partition,
            start: self.offset,
            end: self.offset + 1,
        }
    }
}

impl Client {
    /// Subscribes to push group `group` on `topic` with the default [`PushConsumerConfig`].
    ///
    /// ```no_run
    /// use futures::StreamExt;
    ///
    /// # async fn run() -> herald_client::Result<()> {
    /// let client = herald_client::Client::connect("127.0.0.1:7420").await?;
    /// let mut jobs = client.push_consumer("jobs", "workers").await?;
    /// while let Some(delivery) = jobs.next().await {
    ///     let delivery = delivery?;
    ///     println!("{:?}", delivery.record.payload);
    ///     delivery.ack();
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn push_consumer(&self, topic: &str, group: &str) -> Result<PushConsumer> {
        self.push_consumer_with(topic, group, PushConsumerConfig::default())
            .await
    }

    /// Subscribes to push group `group` on `topic` (created with default settings if new).
    pub async fn push_consumer_with(
        &self,
        topic: &str,
        group: &str,
        config: PushConsumerConfig,
    ) -> Result<PushConsumer> {
        let request = Subscribe {
            topic: topic.to_string(),
            group: group.to_string(),
            prefetch_count: config.prefetch,
            prefetch_bytes: config.prefetch_bytes,
            start: config.start,
        };
        let (subscribed, on, deliveries) = subscribe(self, request.clone()).await?;
        let (acks, acks_rx) = mpsc::unbounded_channel();
        let failure = Arc::new(Mutex::new(None));
        let current = Arc::new(Mutex::new(on));
        let subscription = Arc::new(Subscription {
            client: self.clone(),
            acks,
            current: Arc::clone(&current),
        });
        let grouping = AckGrouping {
            linger: config.ack_linger,
            // The broker refills a window once half of it is free (see the module docs).
            enough: (config.prefetch as usize).div_ceil(2).max(1),
        };
        tokio::spawn(run_acker(
            self.clone(),
            Arc::clone(&current),
            acks_rx,
            Arc::clone(&failure),
            grouping,
        ));
        let (swaps_tx, swaps) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(keep_subscribed(
            self.clone(),
            current,
            request,
            on.epoch,
            swaps_tx,
            Arc::clone(&failure),
            stop.clone(),
        ));
        Ok(PushConsumer {
            subscription,
            on,
            deliveries,
            swaps,
            keeper_done: false,
            _keeper: stop.drop_guard(),
            ready: VecDeque::new(),
            failure,
            ack_timeout: Duration::from_millis(u64::from(subscribed.ack_timeout_ms)),
            max_deliveries: subscribed.max_deliveries,
            ended: false,
        })
    }
}

/// Subscribes with a fresh delivery queue, with room for one window of delivery frames;
/// returns which subscription it got.
async fn subscribe(
    client: &Client,
    request: Subscribe,
) -> Result<(Subscribed, Current, mpsc::Receiver<Deliver>)> {
    let window = (request.prefetch_count as usize).clamp(1, MAX_WINDOW_FRAMES);
    let (deliveries_tx, deliveries) = mpsc::channel(window);
    let (reply, epoch) = client.subscribe_call(request, deliveries_tx).await?;
    let subscribed = expect_reply!(reply, Subscribed)?;
    let on = Current {
        epoch,
        id: subscribed.subscription_id,
    };
    Ok((subscribed, on, deliveries))
}

/// Subscribes again after every reconnect, handing the stream its new delivery queue.
/// Ends when the consumer goes, or with a failure the stream reports when the client
/// stops or the broker refuses the subscription.
async fn keep_subscribed(
    client: Client,
    current: Arc<Mutex<Current>>,
    request: Subscribe,
    mut epoch: u64,
    swaps: mpsc::UnboundedSender<(Current, mpsc::Receiver<Deliver>)>,
    failure: Arc<Mutex<Option<Error>>>,
    stop: CancellationToken,
) {
    let client = &client;
    loop {
        epoch = tokio::select! {
            _ = stop.cancelled() => return,
            connected = client.connected_after(epoch) => match connected {
                Ok(epoch) => epoch,
                Err(err) => return record(&failure, &mut None, err),
            },
        };
        let subscribed = tokio::select! {
            _ = stop.cancelled() => return,
            subscribed = subscribe(client, request.clone()) => subscribed,
        };
        match subscribed {
            Ok((_, on, deliveries)) => {
                // Perhaps made on a newer connection than awaited: go on from there.
                epoch = on.epoch;
                *lock(&current) = on;
                tracing::info!(
                    topic = request.topic,
                    group = request.group,
                    subscription = on.id,
                    "subscribed again after a reconnect"
                );
                if swaps.send((on, deliveries)).is_err() {
                    return;
                }
            }
            Err(Error::Disconnected(_)) => continue,
            // Refused because the connection broke again before it was sent.
            Err(err) if client.connection_state().epoch != epoch => {
                tracing::debug!(%err, "subscribing again once more");
            }
            Err(err) => return record(&failure, &mut None, err),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which broker subscription deliveries belong to: the connection it was made on (ids
/// repeat after a broker restart) and its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Current {
    epoch: u64,
    id: u64,
}

/// What deliveries share of their subscription. The tasks behind it do not hold it, so
/// the ack queue closes once the consumer and its deliveries are gone.
struct Subscription {
    client: Client,
    acks: mpsc::UnboundedSender<AckMessage>,
    current: Arc<Mutex<Current>>,
}

impl Subscription {
    fn current(&self) -> Current {
        *lock(&self.current)
    }

    /// Whether `on` is still the subscription, on the connection it was made on.
    fn is_live(&self, on: Current) -> bool {
        is_live(&self.client, &self.current, on)
    }
}

fn is_live(client: &Client, current: &Mutex<Current>, on: Current) -> bool {
    *lock(current) == on && client.connection_state().epoch == on.epoch
}

enum AckMessage {
    Ack(Current, u32, u64),
    Flush(oneshot::Sender<Result<()>>),
}

/// A push-group subscriber; see the module docs.
pub struct PushConsumer {
    subscription: Arc<Subscription>,
    /// The subscription `deliveries` belong to.
    on: Current,
    deliveries: mpsc::Receiver<Deliver>,
    /// New delivery queues after reconnects.
    swaps: mpsc::UnboundedReceiver<(Current, mpsc::Receiver<Deliver>)>,
    /// The resubscribing task has ended: no new queue will come.
    keeper_done: bool,
    _keeper: DropGuard,
    ready: VecDeque<Delivery>,
    /// The first error of the ack task, reported by the stream.
    failure: Arc<Mutex<Option<Error>>>,
    ack_timeout: Duration,
    max_deliveries: u32,
    ended: bool,
}

impl PushConsumer {
    /// The subscription id the broker gave (a reconnect brings a new one).
    pub fn subscription_id(&self) -> u64 {
        self.subscription.current().id
    }

    /// The group's ack deadline.
    pub fn ack_timeout(&self) -> Duration {
        self.ack_timeout
    }

    /// The group's `max_deliveries` (0 = unlimited).
    pub fn max_deliveries(&self) -> u32 {
        self.max_deliveries
    }

    /// Whether a delivery is in hand, so the next one comes without waiting.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty() || !self.deliveries.is_empty()
    }

    /// Waits until every ack queued so far is stored by the broker.
    pub async fn flush_acks(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.subscription
            .acks
            .send(AckMessage::Flush(reply))
            .map_err(|_| Error::Closed("the ack task has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Closed("the ack task has stopped".into()))?
    }

    /// Flushes acks, then ends the subscription; unanswered deliveries go back to the group.
    pub async fn close(self) -> Result<()> {
        let flushed = self.flush_acks().await;
        let request = Unsubscribe {
            subscription_id: self.subscription.current().id,
        };
        let reply = self.subscription.client.call(request).await;
        flushed?;
        expect_reply!(reply?, Ok).map(drop)
    }

    fn take_failure(&self) -> Option<Error> {
        lock(&self.failure).take()
    }

    /// Turns one delivery frame into deliveries.
    fn unpack(&mut self, deliver: Deliver) -> Result<()> {
        let batches = read_batches(deliver.batch).map_err(|e| Error::Protocol(e.to_string()))?;
        let mut index = 0;
        for batch in &batches {
            for stored in batch.iter() {
                let stored = stored.map_err(|e| Error::Protocol(e.to_string()))?;
                let delivery_count = deliver.delivery_counts.get(index).copied().unwrap_or(1);
                index += 1;
                self.ready.push_back(Delivery {
                    partition: deliver.partition,
                    offset: stored.offset,
                    record: stored.record,
                    delivery_count,
                    redelivered: delivery_count > 1,
                    on: self.on,
                    subscription: Arc::clone(&self.subscription),
                });
            }
        }
        Ok(())
    }
}

impl Stream for PushConsumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        if let Some(err) = this.take_failure() {
            this.ended = true;
            return Poll::Ready(Some(Err(err)));
        }
        loop {
            while !this.keeper_done {
                match this.swaps.poll_recv(cx) {
                    Poll::Ready(Some((on, deliveries))) => {
                        // What came before the reconnect went back to the group.
                        this.on = on;
                        this.deliveries = deliveries;
                        this.ready.clear();
                    }
                    Poll::Ready(None) => this.keeper_done = true,
                    Poll::Pending => break,
                }
            }
            if let Some(delivery) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(delivery)));
            }
            match this.deliveries.poll_recv(cx) {
                Poll::Ready(Some(deliver)) => {
                    if let Err(err) = this.unpack(deliver) {
                        this.ended = true;
                        return Poll::Ready(Some(Err(err)));
                    }
                }
                // The connection broke; a new queue comes after the reconnect.
                Poll::Ready(None) if !this.keeper_done => return Poll::Pending,
                Poll::Ready(None) => {
                    this.ended = true;
                    let err = this.take_failure().unwrap_or_else(|| {
                        Error::Closed("the connection to the broker ended".into())
                    });
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// The largest window the broker grants (its `MAX_PREFETCH`); a larger request is refused.
const MAX_WINDOW_FRAMES: usize = 100_000;

/// Ack requests kept in flight at once.
const ACKS_IN_FLIGHT: usize = 4;

/// When queued acks leave: after `linger`, or at once when `enough` of them wait.
#[derive(Debug, Clone, Copy)]
struct AckGrouping {
    linger: Duration,
    enough: usize,
}

/// Gathers queued acks into ranges and sends them, a few requests at a time, each ack
/// waiting at most the linger for others to join it. Acks of deliveries made before a
/// reconnect are dropped (those records went back to the group), and so are acks the
/// break cut off.
async fn run_acker(
    client: Client,
    current: Arc<Mutex<Current>>,
    mut queue: mpsc::UnboundedReceiver<AckMessage>,
    failure: Arc<Mutex<Option<Error>>>,
    grouping: AckGrouping,
) {
    let mut in_flight = FuturesUnordered::new();
    let mut flushes: Vec<oneshot::Sender<Result<()>>> = Vec::new();
    let mut pending = PendingAcks::default();
    let mut first_error: Option<String> = None;
    let mut open = true;
    while open || !in_flight.is_empty() || !pending.is_empty() {
        if pending.is_empty() && in_flight.is_empty() {
            for flush in flushes.drain(..) {
                let result = match &first_error {
                    Some(err) => Err(Error::Protocol(format!("an ack was refused: {err}"))),
                    None => Ok(()),
                };
                let _ = flush.send(result);
            }
        }
        let room = in_flight.len() < ACKS_IN_FLIGHT;
        // Everything leaves at once when the queue has closed or a flush waits for it.
        let hurry = !flushes.is_empty() || !open;
        if room && pending.ready(&grouping, hurry) {
            if let Some((on, ranges)) = pending.take() {
                match client
                    .start(Ack {
                        subscription_id: on.id,
                        ranges,
                    })
                    .await
                {
                    Ok(rx) => in_flight.push(async move { (on, await_reply(rx).await) }),
                    Err(err) => {
                        record(&failure, &mut first_error, err);
                        open = false;
                    }
                }
            }
            continue;
        }
        let linger_ends = pending.due.filter(|_| room);
        tokio::select! {
            message = queue.recv(), if open => {
                let Some(message) = message else { open = false; continue };
                let on = *lock(&current);
                let live = is_live(&client, &current, on);
                let mut take = |message| match message {
                    AckMessage::Ack(of, p, offset) if of == on && live => {
                        pending.push(on, p, offset, grouping.linger);
                    }
                    AckMessage::Ack(..) => {}
                    AckMessage::Flush(reply) => flushes.push(reply),
                };
                take(message);
                while let Ok(message) = queue.try_recv() {
                    take(message);
                }
            }
            // Its linger is over: the next turn of the loop sends it.
            _ = tokio::time::sleep_until(linger_ends.unwrap_or_else(tokio::time::Instant::now)),
                if linger_ends.is_some() => {}
            Some((on, reply)) = in_flight.next(), if !in_flight.is_empty() => {
                match reply.and_then(|frame| expect_reply!(frame, Ok).map(drop)) {
                    Ok(()) => {}
                    Err(Error::Disconnected(err)) => {
                        tracing::debug!(%err, "acks cut off by a break; their records come again");
                    }
                    // Written after a reconnect, before or after subscribing again.
                    Err(err) if !is_live(&client, &current, on)
                        && err.code() == Some(ErrorCode::UnknownSubscription) => {}
                    Err(err) => record(&failure, &mut first_error, err),
                }
            }
        }
    }
    for flush in flushes {
        let _ = flush.send(Err(Error::Closed("the consumer has stopped".into())));
    }
}

/// Acks waiting to be sent: all of one subscription, and when the first must leave.
#[derive(Default)]
struct PendingAcks {
    on: Option<Current>,
    acked: Vec<(u32, u64)>,
    due: Option<tokio::time::Instant>,
}

impl PendingAcks {
    fn is_empty(&self) -> bool {
        self.acked.is_empty()
    }

    /// Adds an ack of subscription `on`; those of an older subscription are void (a
    /// reconnect gave their records back to the group).
    fn push(&mut self, on: Current, partition: u32, offset: u64, linger: Duration) {
        if self.on != Some(on) {
            self.acked.clear();
            self.on = Some(on);
            self.due = None;
        }
        self.acked.push((partition, offset));
        self.due
            .get_or_insert_with(|| tokio::time::Instant::now() + linger);
    }

    /// Whether to send now: enough are waiting, the first has lingered long enough, or
    /// the caller is in a `hurry`.
    fn ready(&self, grouping: &AckGrouping, hurry: bool) -> bool {
        !self.acked.is_empty()
            && (hurry
                || self.acked.len() >= grouping.enough
                || self
                    .due
                    .is_some_and(|due| due <= tokio::time::Instant::now()))
    }

    /// The waiting acks as ranges, and the subscription they answer.
    fn take(&mut self) -> Option<(Current, Vec<OffsetRange>)> {
        self.due = None;
        let acked = std::mem::take(&mut self.acked);
        self.on.map(|on| (on, coalesce(acked)))
    }
}

fn record(failure: &Mutex<Option<Error>>, first: &mut Option<String>, err: Error) {
    tracing::warn!(%err, "push consumer failure");
    first.get_or_insert_with(|| err.to_string());
    lock(failure).get_or_insert(err);
}

/// Acked offsets as ranges: sorted, consecutive offsets merged.
fn coalesce(mut acked: Vec<(u32, u64)>) -> Vec<OffsetRange> {
    acked.sort_unstable();
    let mut ranges: Vec<OffsetRange> = Vec::new();
    for (partition, offset) in acked {
        match ranges.last_mut() {
            Some(last) if last.partition == partition && last.end == offset => last.end += 1,
            Some(last) if last.partition == partition && offset < last.end => {}
            _ => ranges.push(OffsetRange {
                partition,
                start: offset,
                end: offset + 1,
            }),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_coalesce_into_ranges_per_partition() {
        let ranges = coalesce(vec![(0, 5), (1, 2), (0, 3), (0, 4), (0, 9), (0, 4)]);
        let spans: Vec<(u32, u64, u64)> = ranges
            .iter()
            .map(|r| (r.partition, r.start, r.end))
            .collect();
        assert_eq!(spans, vec![(0, 3, 6), (0, 9, 10), (1, 2, 3)]);
    }
}
