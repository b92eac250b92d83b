//! [`PullConsumer`]: a member of a pull group, read as an async stream of records.
//!
//! Two halves share the work. The handle the application holds is the [`Stream`]; it hands
//! out records from fetched batches. A background task (the *engine*) owns the group
//! membership: it runs one reader per owned partition, commits, and follows the broker's
//! reassignments.
//!
//! - **Prefetch.** Each reader keeps at most two batches of its partition in hand: the one
//!   being handed out, and the next, fetched (with a long-poll) once half of the previous
//!   one has been handed out.
//! - **What is committed.** A record counts as consumed once the stream has handed it
//!   out. With `auto_commit` (the default) the engine commits consumed positions every
//!   `sync_interval`, before giving up a partition, and on close; a crash while the
//!   application is still working on a record therefore skips it for the group. For
//!   at-least-once processing turn `auto_commit` off and call [`PullConsumer::commit`]
//!   after processing: what was handed out but not committed is read again by whoever owns
//!   the partition next.
//! - **Reassignment.** The engine learns of a new generation from a commit's answer or its
//!   periodic sync. For a partition it must give up it stops the reader, drops the
//!   partition's records not yet handed out, commits (with `auto_commit`), and only then
//!   releases it, so the next owner starts exactly after the last record handed out here.
//!   Handing out a record and taking its partition away are one step under the
//!   partition's lock, so no record can slip out after the commit that gives it up.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use herald_protocol::{Assignment, ErrorCode, Record, StartPosition, StoredRecord};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::pull::FetchRequest;

/// How a [`PullConsumer`] reads and commits.
#[derive(Debug, Clone)]
pub struct PullConsumerConfig {
    /// Where the group starts if it is new.
    pub start: StartPosition,
    /// Commit what was handed out every `sync_interval`, before a partition is given up,
    /// and on close. Off: only [`PullConsumer::commit`] commits.
    pub auto_commit: bool,
    /// Most records one fetch returns.
    pub max_messages: u32,
    /// Most bytes one fetch returns (a single larger record still comes alone).
    pub max_bytes: u32,
    /// How long a fetch waits on the broker for new records.
    pub max_wait: Duration,
    /// How often the consumer commits (with `auto_commit`) and checks its assignment.
    pub sync_interval: Duration,
}

impl Default for PullConsumerConfig {
    fn default() -> Self {
        PullConsumerConfig {
            start: StartPosition::Earliest,
            auto_commit: true,
            max_messages: 1000,
            max_bytes: 1024 * 1024,
            max_wait: Duration::from_millis(500),
            sync_interval: Duration::from_millis(250),
        }
    }
}

/// One record handed out by a [`PullConsumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledRecord {
    pub partition: u32,
    pub offset: u64,
    pub record: Record,
}

/// Counters of what a [`PullConsumer`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Fetch requests sent (long-polls that came back empty included).
    pub fetches: u64,
    /// Records received from the broker.
    pub fetched: u64,
    /// Records handed out by the stream.
    pub handed_out: u64,
    /// Commits the broker accepted.
    pub commits: u64,
}

#[derive(Default)]
struct Counters {
    fetches: AtomicU64,
    fetched: AtomicU64,
    handed_out: AtomicU64,
    commits: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The member's view of the group, as last answered by the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    pub member_id: String,
    pub generation: u32,
    /// The partitions this member reads now, ascending.
    pub partitions: Vec<u32>,
}

impl Client {
    /// Joins `group` on `topic` as a new member with the default [`PullConsumerConfig`].
    ///
    /// ```no_run
    /// use futures::StreamExt;
    ///
    /// # async fn run() -> herald_client::Result<()> {
    /// let client = herald_client::Client::connect("127.0.0.1:7420").await?;
    /// let mut orders = client.pull_consumer("orders", "billing").await?;
    /// while let Some(record) = orders.next().await {
    ///     let record = record?;
    ///     println!("{}:{} {:?}", record.partition, record.offset, record.record.payload);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn pull_consumer(&self, topic: &str, group: &str) -> Result<PullConsumer> {
        self.pull_consumer_with(topic, group, PullConsumerConfig::default())
            .await
    }

    /// Joins `group` on `topic` as a new member.
    pub async fn pull_consumer_with(
        &self,
        topic: &str,
        group: &str,
        config: PullConsumerConfig,
    ) -> Result<PullConsumer> {
        let epoch = self.connection_state().epoch;
        let assignment = self.join_group(topic, group, config.start).await?;
        let (batches_tx, batches) = mpsc::channel(BATCH_QUEUE);
        let (commands, commands_rx) = mpsc::channel(1);
        let view = Arc::new(Mutex::new(Membership::default()));
        let counters = Arc::new(Counters::default());
        let mut engine = Engine {
            counters: Arc::clone(&counters),
            client: self.clone(),
            topic: topic.to_string(),
            group: group.to_string(),
            config,
            assignment: Assignment::default(),
            owned: BTreeMap::new(),
            releasing: BTreeMap::new(),
            batches: batches_tx,
            view: Arc::clone(&view),
            epoch,
        };
        engine.apply(assignment);
        let task = tokio::spawn(engine.run(commands_rx));
        Ok(PullConsumer {
            batches,
            current: None,
            commands,
            view,
            counters,
            task: Some(task),
            ended: false,
        })
    }
}

/// Batches waiting for the stream; each reader has at most one here at a time.
const BATCH_QUEUE: usize = 16;

/// A pull-group member. Read it as a [`Stream`] of records; see the module docs for
/// prefetching, commits and reassignment. Call [`PullConsumer::close`] to commit and leave
/// the group at once; dropping it does the same in the background.
pub struct PullConsumer {
    batches: mpsc::Receiver<Result<Delivered>>,
    current: Option<Delivered>,
    commands: mpsc::Sender<Command>,
    view: Arc<Mutex<Membership>>,
    counters: Arc<Counters>,
    task: Option<JoinHandle<()>>,
    /// Set once the stream has reported an error or the engine stopped.
    ended: bool,
}

impl PullConsumer {
    /// The member id, generation and partitions as last answered by the broker.
    pub fn membership(&self) -> Membership {
        lock(&self.view).clone()
    }

    /// What this consumer has done so far.
    pub fn stats(&self) -> ConsumerStats {
        let c = &self.counters;
        ConsumerStats {
            fetches: c.fetches.load(Ordering::Relaxed),
            fetched: c.fetched.load(Ordering::Relaxed),
            handed_out: c.handed_out.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
        }
    }

    /// Whether records are in hand, so the next one comes without waiting on the broker.
    pub fn has_ready(&self) -> bool {
        self.current.as_ref().is_some_and(|c| c.records.len() > 0) || !self.batches.is_empty()
    }

    /// Commits every record handed out so far, on every partition this member owns.
    pub async fn commit(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Commit(reply))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Stops reading, commits (with `auto_commit`) and leaves the group.
    pub async fn close(mut self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        let result = match self.commands.send(Command::Close(reply)).await {
            Ok(()) => rx.await.map_err(|_| stopped())?,
            Err(_) => Err(stopped()),
        };
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        result
    }
}

impl Stream for PullConsumer {
    type Item = Result<PulledRecord>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            if let Some(current) = &mut this.current {
                if let Some(record) = current.hand_out() {
                    Counters::add(&this.counters.handed_out, 1);
                    return Poll::Ready(Some(Ok(record)));
                }
                this.current = None;
            }
            match this.batches.poll_recv(cx) {
                Poll::Ready(Some(Ok(batch))) => this.current = Some(batch),
                Poll::Ready(Some(Err(err))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn stopped() -> Error {
    Error::Closed("the consumer has stopped".into())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One owned partition's hand-out state, shared by the stream and the engine.
struct Slot {
    partition: u32,
    state: Mutex<SlotState>,
}

struct SlotState {
    /// The offset after the last record handed out.
    consumed: u64,
    /// Set when the partition is being given up; nothing more is handed out from it.
    revoked: bool,
}

impl Slot {
    fn new(partition: u32, offset: u64) -> Arc<Slot> {
        Arc::new(Slot {
            partition,
            state: Mutex::new(SlotState {
                consumed: offset,
                revoked: false,
            }),
        })
    }

    /// Stops handing out and returns the offset after the last record handed out.
    fn revoke(&self) -> u64 {
        let mut state = lock(&self.state);
        state.revoked = true;
        state.consumed
    }

    fn consumed(&self) -> u64 {
        lock(&self.state).consumed
    }
}

/// A fetched batch on its way out through the stream.
struct Delivered {
    slot: Arc<Slot>,
    records: std::vec::IntoIter<StoredRecord>,
    /// Fired once half the batch is handed out, so the reader fetches the next one.
    half: Option<oneshot::Sender<()>>,
    half_left: usize,
}

impl Delivered {
    fn hand_out(&mut self) -> Option<PulledRecord> {
        let mut state = lock(&self.slot.state);
        if state.revoked {
            self.records = Vec::new().into_iter();
            return None;
        }
        let stored = self.records.next()?;
        state.consumed = stored.offset + 1;
        drop(state);
        if self.records.len() <= self.half_left {
            if let Some(half) = self.half.take() {
                let _ = half.send(());
            }
        }
        Some(PulledRecord {
            partition: self.slot.partition,
            offset: stored.offset,
            record: stored.record,
        })
    }
}

enum Command {
    Commit(oneshot::Sender<Result<()>>),
    Close(oneshot::Sender<Result<()>>),
}

/// A partition this member reads.
struct Owned {
    slot: Arc<Slot>,
    /// The committed offset as far as this member knows.
    committed: u64,
    stop: CancellationToken,
}

/// Owns the membership: readers, commits, reassignment.
struct Engine {
    client: Client,
    topic: String,
    group: String,
    config: PullConsumerConfig,
    assignment: Assignment,
    owned: BTreeMap<u32, Owned>,
    /// Partitions given up but not yet released, with the offset to commit first (if any).
    releasing: BTreeMap<u32, Option<u64>>,
    batches: mpsc::Sender<Result<Delivered>>,
    view: Arc<Mutex<Membership>>,
    counters: Arc<Counters>,
    /// The connection this member joined on; a newer one means the broker ended the
    /// membership with the old session.
    epoch: u64,
}

/// Most sync rounds in one go; what is left waits for the next interval.
const MAX_ROUNDS: usize = 8;

impl Engine {
    async fn run(mut self, commands: mpsc::Receiver<Command>) {
        let _ = self.serve(commands).await;
    }

    /// Runs the periodic step; a broken connection waits for the next one, any other
    /// error stops the consumer (reported through the stream) and gives `None`.
    async fn maintain_or_stop(&mut self) -> Option<()> {
        match self.maintain().await {
            Ok(()) => Some(()),
            Err(Error::Disconnected(err)) => {
                tracing::info!(%err, group = self.group, "membership upkeep cut off by a break");
                Some(())
            }
            Err(err) => {
                tracing::warn!(%err, group = self.group, "the consumer stops");
                self.stop_readers();
                let _ = self.batches.send(Err(err)).await;
                None
            }
        }
    }

    async fn serve(&mut self, mut commands: mpsc::Receiver<Command>) -> Option<()> {
        let mut tick = tokio::time::interval(self.config.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Commit(reply)) => {
                        let _ = reply.send(self.commit_consumed(true).await.map(drop));
                    }
                    Some(Command::Close(reply)) => {
                        let _ = reply.send(self.close().await);
                        return None;
                    }
                    None => {
                        if let Err(err) = self.close().await {
                            tracing::warn!(%err, group = self.group, "closing the consumer failed");
                        }
                        return None;
                    }
                },
                _ = tick.tick() => self.maintain_or_stop().await?,
                connected = self.client.connected_after(self.epoch) => {
                    // A new session: the old one's membership is gone (or soon will be).
                    // Syncing finds that out and joins again under the same member id.
                    match connected {
                        Ok(epoch) => self.epoch = epoch,
                        Err(err) => {
                            self.stop_readers();
                            let _ = self.batches.send(Err(err)).await;
                            return None;
                        }
                    }
                    self.maintain_or_stop().await?;
                }
            }
        }
    }

    /// The periodic step: commit (with `auto_commit`) and follow the assignment.
    async fn maintain(&mut self) -> Result<()> {
        let sent = if self.config.auto_commit {
            self.commit_consumed(false).await?
        } else {
            false
        };
        if !sent || !self.releasing.is_empty() {
            self.sync().await?;
        }
        Ok(())
    }

    /// Commits consumed positions that moved. Returns whether a commit was sent; a commit
    /// that finds a new generation syncs and retries. With `explicit`, a commit the
    /// application asked for, an error is returned rather than left for the next round.
    async fn commit_consumed(&mut self, explicit: bool) -> Result<bool> {
        for _ in 0..MAX_ROUNDS {
            let offsets: Vec<(u32, u64)> = self
                .owned
                .iter()
                .map(|(&p, owned)| (p, owned.slot.consumed(), owned.committed))
                .filter(|(_, consumed, committed)| consumed > committed)
                .map(|(p, consumed, _)| (p, consumed))
                .collect();
            if offsets.is_empty() {
                return Ok(false);
            }
            match self
                .client
                .commit(&self.topic, &self.group, &self.assignment, &offsets)
                .await
            {
                Ok(generation) => {
                    Counters::add(&self.counters.commits, 1);
                    for (p, offset) in offsets {
                        if let Some(owned) = self.owned.get_mut(&p) {
                            owned.committed = owned.committed.max(offset);
                        }
                    }
                    if generation != self.assignment.generation {
                        self.sync().await?;
                    }
                    return Ok(true);
                }
                Err(err) if needs_sync(&err) => self.sync().await?,
                Err(err) => return Err(err),
            }
        }
        if explicit {
            Err(Error::Protocol(format!(
                "group {:?} kept changing while committing; try again",
                self.group
            )))
        } else {
            Ok(true)
        }
    }

    /// Asks for the current assignment, giving up what the broker moved elsewhere.
    async fn sync(&mut self) -> Result<()> {
        for _ in 0..MAX_ROUNDS {
            self.commit_releasing().await?;
            let released: Vec<u32> = self.releasing.keys().copied().collect();
            let answer = self
                .client
                .sync_group(&self.topic, &self.group, &self.assignment, &released)
                .await;
            let assignment = match answer {
                Ok(assignment) => assignment,
                Err(err) if err.code() == Some(ErrorCode::UnknownMember) => self.rejoin().await?,
                Err(err) => return Err(err),
            };
            self.releasing.clear();
            if !self.apply(assignment) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Commits the final positions of partitions being given up.
    async fn commit_releasing(&mut self) -> Result<()> {
        let offsets: Vec<(u32, u64)> = self
            .releasing
            .iter()
            .filter_map(|(&p, offset)| Some((p, (*offset)?)))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        match self
            .client
            .commit(&self.topic, &self.group, &self.assignment, &offsets)
            .await
        {
            Ok(_) => {
                Counters::add(&self.counters.commits, 1);
                self.releasing.values_mut().for_each(|o| *o = None);
                Ok(())
            }
            Err(err) if err.code() == Some(ErrorCode::StaleGeneration) => {
                // Learn the generation without releasing, then commit with it.
                let assignment = self
                    .client
                    .sync_group(&self.topic, &self.group, &self.assignment, &[])
                    .await?;
                self.assignment.generation = assignment.generation;
                let _ = self
                    .client
                    .commit(&self.topic, &self.group, &self.assignment, &offsets)
                    .await?;
                Counters::add(&self.counters.commits, 1);
                self.releasing.values_mut().for_each(|o| *o = None);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Joins again under the same member id after the broker forgot this member; what it
    /// read meanwhile may belong to others now, so every partition starts afresh.
    async fn rejoin(&mut self) -> Result<Assignment> {
        tracing::info!(
            group = self.group,
            member = self.assignment.member_id,
            "joining again"
        );
        let partitions: Vec<u32> = self.owned.keys().copied().collect();
        for p in partitions {
            self.give_up(p, false);
        }
        self.releasing.clear();
        self.client
            .rejoin_group(
                &self.topic,
                &self.group,
                &self.assignment.member_id,
                self.config.start,
            )
            .await
    }

    /// Takes on an assignment: starts readers for new partitions and gives up those no
    /// longer listed. Returns whether anything was given up (and must be released).
    fn apply(&mut self, assignment: Assignment) -> bool {
        let listed: BTreeSet<u32> = assignment.partitions.iter().map(|p| p.partition).collect();
        let revoked: Vec<u32> = self
            .owned
            .keys()
            .filter(|p| !listed.contains(p))
            .copied()
            .collect();
        for p in &revoked {
            self.give_up(*p, self.config.auto_commit);
        }
        for assigned in &assignment.partitions {
            if !self.owned.contains_key(&assigned.partition) {
                self.start_reader(assigned.partition, assigned.committed);
            }
        }
        if assignment.generation != self.assignment.generation || !revoked.is_empty() {
            tracing::debug!(
                group = self.group,
                generation = assignment.generation,
                partitions = ?listed,
                ?revoked,
                "assignment"
            );
        }
        self.assignment = assignment;
        *lock(&self.view) = Membership {
            member_id: self.assignment.member_id.clone(),
            generation: self.assignment.generation,
            partitions: self.owned.keys().copied().collect(),
        };
        !revoked.is_empty()
    }

    /// Stops reading `partition`; with `commit`, its consumed position is committed before
    /// it is released.
    fn give_up(&mut self, partition: u32, commit: bool) {
        if let Some(owned) = self.owned.remove(&partition) {
            owned.stop.cancel();
            let consumed = owned.slot.revoke();
            let offset = (commit && consumed > owned.committed).then_some(consumed);
            self.releasing.insert(partition, offset);
        }
    }

    fn start_reader(&mut self, partition: u32, offset: u64) {
        let slot = Slot::new(partition, offset);
        let stop = CancellationToken::new();
        let mut request = FetchRequest::new(&self.topic, partition, offset);
        request.max_messages = self.config.max_messages.max(1);
        request.max_bytes = self.config.max_bytes.max(1);
        request.max_wait_ms = self.config.max_wait.as_millis().min(u128::from(u32::MAX)) as u32;
        let reader = Reader {
            client: self.client.clone(),
            request,
            slot: Arc::clone(&slot),
            batches: self.batches.clone(),
            counters: Arc::clone(&self.counters),
        };
        tokio::spawn(reader.run(stop.clone()));
        self.owned.insert(
            partition,
            Owned {
                slot,
                committed: offset,
                stop,
            },
        );
    }

    fn stop_readers(&mut self) {
        for owned in self.owned.values() {
            owned.stop.cancel();
        }
    }

    /// Commits what was handed out (with `auto_commit`) and leaves the group.
    async fn close(&mut self) -> Result<()> {
        let partitions: Vec<u32> = self.owned.keys().copied().collect();
        for p in partitions {
            self.give_up(p, self.config.auto_commit);
        }
        let committed = self.commit_releasing().await;
        let left = self
            .client
            .leave_group(&self.topic, &self.group, &self.assignment)
            .await;
        let left = match left {
            Err(err) if err.code() == Some(ErrorCode::UnknownMember) => Ok(()),
            other => other,
        };
        committed.and(left)
    }
}

/// Errors that mean this member's picture of the group is out of date.
fn needs_sync(err: &Error) -> bool {
    matches!(
        err.code(),
        Some(ErrorCode::StaleGeneration | ErrorCode::NotPartitionOwner | ErrorCode::UnknownMember)
    )
}

/// Fetches one partition: a long-poll at a time, the next once half the last batch is out.
struct Reader {
    client: Client,
    request: FetchRequest,
    slot: Arc<Slot>,
    batches: mpsc::Sender<Result<Delivered>>,
    counters: Arc<Counters>,
}

impl Reader {
    async fn run(mut self, stop: CancellationToken) {
        loop {
            Counters::add(&self.counters.fetches, 1);
            let fetched = tokio::select! {
                _ = stop.cancelled() => return,
                fetched = self.client.fetch(self.request.clone()) => fetched,
            };
            let fetched = match fetched {
                Ok(fetched) => fetched,
                Err(Error::Broker(err)) if err.code == Some(ErrorCode::OffsetOutOfRange) => {
                    let (first, next) = err.offsets.unwrap_or((0, 0));
                    let resume = if self.request.offset < first {
                        first
                    } else {
                        next
                    };
                    tracing::warn!(
                        partition = self.slot.partition,
                        offset = self.request.offset,
                        resume,
                        "offset out of range; resuming at the partition's bounds"
                    );
                    self.request.offset = resume;
                    continue;
                }
                // Asked again once the client is connected again; the engine meanwhile
                // rejoins the group and restarts this reader if the partition stays.
                Err(Error::Disconnected(_)) => continue,
                Err(err) => {
                    if !stop.is_cancelled() {
                        let _ = self.batches.send(Err(err)).await;
                    }
                    return;
                }
            };
            let Some(last) = fetched.records.last() else {
                continue;
            };
            self.request.offset = last.offset + 1;
            Counters::add(&self.counters.fetched, fetched.records.len() as u64);
            let (half, half_done) = oneshot::channel();
            let half_left = fetched.records.len() / 2;
            let delivered = Delivered {
                slot: Arc::clone(&self.slot),
                records: fetched.records.into_iter(),
                half: Some(half),
                half_left,
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                sent = self.batches.send(Ok(delivered)) => if sent.is_err() { return },
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = half_done => {}
            }
        }
    }
}
