//! The dispatcher task: one per push group. It owns the group's state, takes requests in
//! order from its inbox, moves records to consumers with room, and keeps timers for ack
//! deadlines and delayed redeliveries. Delivery, answers and dead-lettering are its other
//! files.

use super::dead_letter::Failed;
use super::*;

/// One partition's delivery state.
pub(super) struct Part {
    pub(super) acks: AckState,
    pub(super) next: u64,
    /// Waiting for redelivery now: offset → deliveries so far.
    pub(super) ready: BTreeMap<u64, u32>,
    /// Waiting for redelivery after a delay: offset → (due, deliveries so far).
    pub(super) delayed: BTreeMap<u64, (Instant, u32)>,
    pub(super) flights: Flights,
    /// Deliveries so far of records on their way to the dead-letter topic.
    pub(super) dead_lettering: HashMap<u64, u32>,
    pub(super) dirty: bool,
}

impl Part {
    pub(super) fn new(acks: AckState) -> Part {
        Part {
            next: acks.floor(),
            acks,
            ready: BTreeMap::new(),
            delayed: BTreeMap::new(),
            flights: Flights::default(),
            dead_lettering: HashMap::new(),
            dirty: false,
        }
    }
}

pub(super) struct Sub {
    pub(super) session: u64,
    pub(super) address: String,
    pub(super) tx: mpsc::Sender<Deliver>,
    pub(super) prefetch_count: u32,
    pub(super) prefetch_bytes: u32,
    pub(super) in_flight: u32,
    pub(super) in_flight_bytes: u64,
    /// Records it may still be sent, for a credit-based subscription (leases).
    pub(super) credit: Option<u32>,
}

impl Sub {
    pub(super) fn room(&self) -> u32 {
        let window = self.prefetch_count.saturating_sub(self.in_flight);
        match self.credit {
            Some(credit) => window.min(credit),
            None => window,
        }
    }

    pub(super) fn byte_room(&self) -> usize {
        if self.prefetch_bytes == 0 {
            MAX_DELIVER_BYTES
        } else {
            (u64::from(self.prefetch_bytes).saturating_sub(self.in_flight_bytes) as usize)
                .min(MAX_DELIVER_BYTES)
        }
    }

    /// Whether to deliver to this subscriber now: when it holds nothing, or when at least
    /// half its window is free. Topping up a nearly full window record by record would
    /// answer every small ack with a small delivery; waiting for half keeps deliveries
    /// large while the subscriber still has half a window in hand.
    pub(super) fn has_room(&self) -> bool {
        if self.credit.is_some() {
            // Credit is asked for and taken back per lease: deliver whatever it allows.
            return self.room() > 0 && self.byte_room() > 0;
        }
        if self.in_flight == 0 {
            return self.prefetch_count > 0;
        }
        self.room() >= self.prefetch_count.div_ceil(2) && self.byte_room() > 0
    }
}

/// What to deliver next.
pub(super) enum Work {
    /// Records waiting for redelivery, from this offset.
    Redeliver(u32, u64),
    /// New records from the partition's `next`.
    Fresh(u32),
}

/// When to look at offsets `[start, end)` of a partition again: an ack deadline of a
/// delivered span, or the due time of a delayed redelivery. A hint: each record's own
/// state decides what happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub(super) when: Instant,
    pub(super) partition: u32,
    pub(super) start: u64,
    pub(super) end: u64,
}

pub(super) struct Dispatcher {
    pub(super) topic: Arc<Topic>,
    pub(super) group: String,
    pub(super) settings: Settings,
    pub(super) store: Arc<Store>,
    pub(super) topics: Arc<Topics>,
    pub(super) parts: Vec<Part>,
    pub(super) subs: BTreeMap<u64, Sub>,
    /// Most subscriptions at once (`--max-consumers-per-group`).
    pub(super) max_subs: usize,
    /// The subscription served last, for round-robin.
    pub(super) served: u64,
    /// The partition to look at first next time, for round-robin.
    pub(super) next_part: usize,
    /// Ack deadlines and delayed redeliveries, soonest first.
    pub(super) timers: BTreeSet<Timer>,
    pub(super) redelivered: u64,
    pub(super) dead_lettered: u64,
    pub(super) inbox: mpsc::WeakSender<Command>,
    pub(super) subscriptions: Subscriptions,
    /// Answers taken but not yet confirmed: confirmed once their ack state is stored.
    pub(super) answered: Vec<oneshot::Sender<Result<(), BrokerError>>>,
    /// Where the dispatcher's own tasks (storage waits, dead-letter publishes) run.
    pub(super) tasks: TaskTracker,
}

impl Dispatcher {
    /// A dispatcher for `group` of `topic`, not yet running, with the group's stored
    /// progress in `parts`.
    pub(super) fn new(
        groups: &PushGroups,
        topic: &Arc<Topic>,
        group: &str,
        settings: Settings,
        parts: Vec<Part>,
        inbox: mpsc::WeakSender<Command>,
    ) -> Dispatcher {
        Dispatcher {
            topic: Arc::clone(topic),
            group: group.to_string(),
            settings,
            store: Arc::clone(&groups.store),
            topics: Arc::clone(&groups.topics),
            parts,
            subs: BTreeMap::new(),
            max_subs: groups.max_subscribers,
            served: 0,
            next_part: 0,
            timers: BTreeSet::new(),
            redelivered: 0,
            dead_lettered: 0,
            inbox,
            subscriptions: groups.subscriptions.clone(),
            answered: Vec::new(),
            tasks: groups.tasks.clone(),
        }
    }

    /// Serves the group until one of `ends` or until every inbox sender is gone. When the
    /// broker stops, requests already in the inbox are still taken, and every answer taken
    /// is confirmed once its ack state is stored; when the topic is deleted, nothing more
    /// is stored.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Command>, ends: Ends) {
        let topic = Arc::clone(&self.topic);
        loop {
            // Register for appends before looking, so none slips in between.
            let mut appended: Vec<_> = topic
                .partitions()
                .iter()
                .map(|log| Box::pin(log.appended()))
                .collect();
            for notified in &mut appended {
                notified.as_mut().enable();
            }
            if let Err(err) = self.pump().await {
                tracing::error!(%err, group = self.group, "push group stops");
                break;
            }
            let waiting_for_records = self.subs.values().any(Sub::has_room);
            let next_timer = self.timers.first().map(|t| t.when);
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => {
                        self.handle(command).await;
                        while let Ok(command) = rx.try_recv() {
                            self.handle(command).await;
                        }
                    }
                    None => break,
                },
                _ = futures::future::select_all(appended), if waiting_for_records => {}
                _ = sleep_until(next_timer), if next_timer.is_some() => self.fire_timers().await,
                _ = ends.stopping.cancelled() => {
                    self.finish(&mut rx).await;
                    break;
                }
                _ = ends.deleted.cancelled() => break,
            }
            self.flush();
        }
        let mut subscriptions = self.subscriptions.lock();
        for id in self.subs.keys() {
            subscriptions.remove(id);
        }
    }

    /// The broker stops: takes the requests already queued and waits for dead-letter
    /// publishes in flight (whose records are done only once stored there), then stores
    /// the ack state. Sessions have ended by now, so nothing new arrives.
    pub(super) async fn finish(&mut self, rx: &mut mpsc::Receiver<Command>) {
        loop {
            while let Ok(command) = rx.try_recv() {
                self.handle(command).await;
            }
            if self.parts.iter().all(|part| part.dead_lettering.is_empty()) {
                break;
            }
            match rx.recv().await {
                Some(command) => self.handle(command).await,
                None => break,
            }
        }
        self.flush();
    }

    pub(super) async fn handle(&mut self, command: Command) {
        match command {
            Command::Subscribe { id, request, reply } => {
                if self.subs.len() >= self.max_subs {
                    let _ = reply.send(Err(BrokerError::TooManyConsumers {
                        group: self.group.clone(),
                        max: self.max_subs,
                    }));
                    return;
                }
                let capacity = request.prefetch_count as usize;
                let (tx, deliveries) = mpsc::channel(capacity);
                let inbox = self.inbox.upgrade();
                if let Some(inbox) = inbox {
                    self.subscriptions.lock().insert(
                        id,
                        Owned {
                            session: request.session,
                            dispatcher: inbox,
                        },
                    );
                }
                self.subs.insert(
                    id,
                    Sub {
                        session: request.session,
                        address: request.address,
                        tx,
                        prefetch_count: request.prefetch_count,
                        prefetch_bytes: request.prefetch_bytes,
                        in_flight: 0,
                        in_flight_bytes: 0,
                        credit: request.credit.then_some(0),
                    },
                );
                tracing::debug!(group = self.group, id, "subscribed");
                let _ = reply.send(Ok(Subscription {
                    id,
                    settings: self.settings.clone(),
                    deliveries,
                }));
            }
            Command::Grant {
                session,
                id,
                records,
                reply,
            } => {
                let result = match self.subs.get_mut(&id) {
                    Some(sub) if sub.session == session => {
                        if let Some(credit) = &mut sub.credit {
                            *credit = credit.saturating_add(records);
                        }
                        Ok(())
                    }
                    _ => Err(BrokerError::UnknownSubscription(id)),
                };
                // Deliver what is there before answering, so a short poll (a grant, then
                // a revoke right after) gets the records that exist now.
                let result = match result {
                    Ok(()) => self.pump().await,
                    err => err,
                };
                let _ = reply.send(result);
            }
            Command::Revoke { session, id, reply } => {
                let result = match self.subs.get_mut(&id) {
                    Some(sub) if sub.session == session => Ok(sub.credit.replace(0).unwrap_or(0)),
                    _ => Err(BrokerError::UnknownSubscription(id)),
                };
                let _ = reply.send(result);
            }
            Command::Unsubscribe { session, id, reply } => {
                let result = match self.subs.get(&id) {
                    Some(sub) if sub.session == session => {
                        self.remove_sub(id).await;
                        Ok(())
                    }
                    _ => Err(BrokerError::UnknownSubscription(id)),
                };
                let _ = reply.send(result);
            }
            Command::Answer {
                session,
                id,
                spans,
                answer,
                reply,
            } => {
                let result = match self.subs.get(&id) {
                    Some(sub) if sub.session == session => self.answer(id, &spans, answer).await,
                    _ => Err(BrokerError::UnknownSubscription(id)),
                };
                match result {
                    Ok(()) => self.answered.push(reply),
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                }
            }
            Command::SessionClosed { session } => {
                let ids: Vec<u64> = self
                    .subs
                    .iter()
                    .filter(|(_, s)| s.session == session)
                    .map(|(&id, _)| id)
                    .collect();
                for id in ids {
                    self.remove_sub(id).await;
                }
            }
            Command::Describe { reply } => {
                let _ = reply.send(self.describe());
            }
            Command::DeadLettered {
                partition,
                offsets,
                stored,
            } => {
                let part = &mut self.parts[partition as usize];
                for offset in offsets {
                    let Some(count) = part.dead_lettering.remove(&offset) else {
                        continue;
                    };
                    if stored {
                        part.acks.mark(offset, offset + 1);
                        part.dirty = true;
                        self.dead_lettered += 1;
                    } else {
                        part.ready.insert(offset, count);
                    }
                }
            }
        }
    }

    /// Delivers while some consumer has room and there is something to deliver. A read
    /// that finds nothing ends the round (the next append or answer starts another), so a
    /// store that lags what it announced can never make the dispatcher spin.
    pub(super) async fn pump(&mut self) -> Result<(), BrokerError> {
        loop {
            let Some(id) = self.next_sub_with_room() else {
                return Ok(());
            };
            let Some(work) = self.find_work() else {
                return Ok(());
            };
            self.served = id;
            let sub = &self.subs[&id];
            let max_records = sub.room().min(MAX_DELIVER_RECORDS);
            let max_bytes = sub.byte_room();
            let progressed = match work {
                Work::Fresh(p) => self.deliver_fresh(id, p, max_records, max_bytes).await?,
                Work::Redeliver(p, from) => {
                    self.redeliver(id, p, from, max_records, max_bytes).await?
                }
            };
            if !progressed {
                tracing::debug!(group = self.group, "a read found nothing; waiting");
                return Ok(());
            }
        }
    }

    /// The next subscriber with room after the one served last.
    pub(super) fn next_sub_with_room(&self) -> Option<u64> {
        let after = self
            .subs
            .range(self.served + 1..)
            .chain(self.subs.range(..=self.served));
        after
            .filter(|(_, s)| s.has_room())
            .map(|(&id, _)| id)
            .next()
    }

    /// A partition with records to deliver: redeliveries first, then new records,
    /// round-robin over partitions.
    pub(super) fn find_work(&mut self) -> Option<Work> {
        let count = self.parts.len();
        for i in 0..count {
            let p = (self.next_part + i) % count;
            if let Some((&offset, _)) = self.parts[p].ready.first_key_value() {
                self.next_part = (p + 1) % count;
                return Some(Work::Redeliver(p as u32, offset));
            }
        }
        for i in 0..count {
            let p = (self.next_part + i) % count;
            if self.parts[p].next < self.topic.partitions()[p].next_offset() {
                self.next_part = (p + 1) % count;
                return Some(Work::Fresh(p as u32));
            }
        }
        None
    }

    /// Ack deadlines that passed go to another consumer; delays that ended become ready.
    pub(super) async fn fire_timers(&mut self) {
        let now = Instant::now();
        let mut to_dead_letter = Vec::new();
        while let Some(&Timer {
            when,
            partition: p,
            start,
            end,
        }) = self.timers.first()
        {
            if when > now {
                break;
            }
            self.timers.pop_first();
            let part = &mut self.parts[p as usize];
            let due: Vec<(u64, u32)> = part
                .delayed
                .range(start..end)
                .filter(|(_, &(due, _))| due <= now)
                .map(|(&offset, &(_, count))| (offset, count))
                .collect();
            for (offset, count) in due {
                part.delayed.remove(&offset);
                part.ready.insert(offset, count);
            }
            for (first, run) in self.take_flights(p, start, end, |run| run.deadline <= now) {
                for (offset, count) in run.records(first) {
                    if let Some(reason) = self.requeue(p, offset, count, now, "ack timeout") {
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
        self.dead_letter(to_dead_letter).await;
    }

    /// Ends a subscription; its in-flight records are redelivered at once.
    pub(super) async fn remove_sub(&mut self, id: u64) {
        self.subs.remove(&id);
        self.subscriptions.lock().remove(&id);
        let now = Instant::now();
        let mut to_dead_letter = Vec::new();
        for p in 0..self.parts.len() as u32 {
            for (start, run) in self.take_flights(p, 0, u64::MAX, |run| run.sub == id) {
                for (offset, count) in run.records(start) {
                    if let Some(reason) = self.requeue(p, offset, count, now, "consumer gone") {
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
        tracing::debug!(group = self.group, id, "subscription ended");
        self.dead_letter(to_dead_letter).await;
    }

    /// Stores the ack state of changed partitions — once for every answer taken since the
    /// last time, like the storage writer's group commit — and confirms those answers
    /// when it is stored.
    pub(super) fn flush(&mut self) {
        let answered = std::mem::take(&mut self.answered);
        let Some(written) = self.persist() else {
            for reply in answered {
                let _ = reply.send(Ok(()));
            }
            return;
        };
        let limit = self.store.timeout();
        self.tasks.spawn(async move {
            let stored = crate::storage::bounded(written, limit).await;
            for reply in answered {
                let _ = reply.send(stored.clone().map_err(BrokerError::from));
            }
        });
    }

    /// Queues the ack state of changed partitions for storage.
    pub(super) fn persist(&mut self) -> Option<Written> {
        let states: Vec<(u32, Vec<u8>)> = self
            .parts
            .iter_mut()
            .enumerate()
            .filter(|(_, part)| part.dirty)
            .map(|(p, part)| {
                part.dirty = false;
                (p as u32, part.acks.encode())
            })
            .collect();
        if states.is_empty() {
            return None;
        }
        Some(
            self.store
                .queue_ack_states(self.topic.record().id, &self.group, states),
        )
    }

    pub(super) fn describe(&self) -> PushDescription {
        let now = Instant::now();
        let consumers = self
            .subs
            .iter()
            .map(|(&id, sub)| {
                let oldest = self
                    .parts
                    .iter()
                    .flat_map(|part| part.flights.iter())
                    .filter(|(_, run)| run.sub == id)
                    .map(|(_, run)| now.saturating_duration_since(run.since))
                    .max()
                    .unwrap_or_default();
                ConsumerState {
                    subscription: id,
                    address: sub.address.clone(),
                    in_flight: sub.in_flight,
                    oldest,
                }
            })
            .collect();
        let partitions = self
            .parts
            .iter()
            .zip(self.topic.partitions())
            .enumerate()
            .map(|(p, (part, log))| {
                let end = log.next_offset();
                let floor = part.acks.floor().max(log.first_offset()).min(end);
                let left = (end - floor).saturating_sub(part.acks.done_above_floor());
                PartitionProgress {
                    partition: p as u32,
                    floor,
                    end,
                    left,
                }
            })
            .collect();
        PushDescription {
            settings: self.settings.clone(),
            consumers,
            partitions,
            redelivered: self.redelivered,
            dead_lettered: self.dead_lettered,
        }
    }
}

/// The offsets of `map` within `span`.
pub(super) fn keys_in<V>(map: &BTreeMap<u64, V>, span: &Span) -> Vec<u64> {
    map.range(span.start..span.end)
        .map(|(&offset, _)| offset)
        .collect()
}
pub(super) async fn sleep_until(when: Option<Instant>) {
    match when {
        Some(when) => tokio::time::sleep_until(when).await,
        None => std::future::pending().await,
    }
}
