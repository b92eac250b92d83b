//! Server-Sent Events: `GET /v1/topics/{topic}/events?from=earliest|latest[&partition=P]`.
//!
//! Each record is `event: record`, `id: CURSOR`, `data: RECORD_JSON`. A cursor names, for
//! every partition streamed, the next offset to read — `0:15,1:7` — so a browser that
//! reconnects with `Last-Event-ID` (or `?last_event_id=`, for clients that cannot set
//! headers) resumes right after the last record it saw, across all partitions. A cursor
//! older than retention gets `event: reset` with `{"partition": P, "offset": FIRST}`, the
//! point it restarts from. A comment goes out at least every 15 s to keep proxies from
//! closing an idle stream, and the first event sets `retry:` to a random 1–5 s, so that
//! thousands of browsers cut off together do not all come back in the same instant.
//!
//! Per stream, one task per partition long-polls the core (no CPU while waiting) and hands
//! records to the stream through a small queue: a browser that stops reading stalls only
//! its own tasks. They end with the stream, or when the broker stops.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream};
use herald_protocol::{read_batches, StoredRecord};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::json::{out_record, HttpError};
use super::{Gateway, PathArgs, QueryArgs};
use crate::core::{Core, FetchArgs};
use crate::error::BrokerError;

/// Records one read of a partition takes.
const READ_RECORDS: u32 = 500;
/// How long one long-poll waits before looking again (the stream's end is noticed sooner).
const POLL_WAIT: Duration = Duration::from_secs(15);
/// Reads handed to the stream and not yet sent, per partition.
const QUEUE: usize = 4;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    from: Option<String>,
    partition: Option<u32>,
    last_event_id: Option<String>,
}

/// What a partition's task hands the stream.
pub(super) enum Item {
    Records(u32, Vec<StoredRecord>),
    /// The cursor was older than retention: reading restarts at `first`.
    Reset(u32, u64),
    Failed(BrokerError),
}

pub async fn events(
    State(gateway): State<Gateway>,
    PathArgs(topic): PathArgs<String>,
    QueryArgs(query): QueryArgs<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let info = gateway.core.describe_topic(&topic)?;
    let partitions: Vec<u32> = match query.partition {
        Some(p) if (p as usize) < info.partitions.len() => vec![p],
        Some(p) => {
            return Err(BrokerError::UnknownPartition {
                topic,
                partition: p,
            }
            .into())
        }
        None => (0..info.partitions.len() as u32).collect(),
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(query.last_event_id);
    let mut cursor: BTreeMap<u32, u64> = match resume {
        Some(text) => parse_cursor(&text)?,
        None => BTreeMap::new(),
    };
    let latest = match query.from.as_deref() {
        None | Some("earliest") => false,
        Some("latest") => true,
        Some(other) => {
            return Err(HttpError::bad_request(format!(
                "from must be earliest or latest, not {other:?}"
            )))
        }
    };
    fill_cursor(&mut cursor, &info, &partitions, latest);

    let stop = CancellationToken::new();
    let (tx, rx) = mpsc::channel(QUEUE * partitions.len().max(1));
    for (&partition, &offset) in &cursor {
        let (core, topic, tx, stop) = (
            gateway.core.clone(),
            topic.clone(),
            tx.clone(),
            stop.clone(),
        );
        gateway
            .tasks
            .spawn(follow(core, topic, partition, offset, tx, stop));
    }
    let stream = stream_of(
        topic,
        cursor,
        rx,
        stop.drop_guard(),
        gateway.core.stopping(),
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Completes `cursor` for `partitions` (those it does not name start at the first or the
/// next offset) and drops partitions not streamed.
pub(super) fn fill_cursor(
    cursor: &mut BTreeMap<u32, u64>,
    info: &herald_protocol::TopicInfo,
    partitions: &[u32],
    latest: bool,
) {
    for p in partitions {
        let part = &info.partitions[*p as usize];
        let start = if latest {
            part.next_offset
        } else {
            part.first_offset
        };
        cursor.entry(*p).or_insert(start);
    }
    cursor.retain(|p, _| partitions.contains(p));
}

/// `0:15,1:7` → {0: 15, 1: 7}.
pub(super) fn parse_cursor(text: &str) -> Result<BTreeMap<u32, u64>, HttpError> {
    let bad = || HttpError::bad_request(format!("{text:?} is not a cursor of this stream"));
    text.split(',')
        .map(|pair| {
            let (p, o) = pair.split_once(':').ok_or_else(bad)?;
            Ok((p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?))
        })
        .collect()
}

pub(super) fn cursor_text(cursor: &BTreeMap<u32, u64>) -> String {
    cursor
        .iter()
        .map(|(p, o)| format!("{p}:{o}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Long-polls one partition from `offset`, handing what it reads to the stream, until the
/// stream goes (`stop`) or the broker stops.
pub(super) async fn follow(
    core: Core,
    topic: String,
    partition: u32,
    mut offset: u64,
    tx: mpsc::Sender<Item>,
    stop: CancellationToken,
) {
    loop {
        let args = FetchArgs {
            topic: topic.clone(),
            partition,
            offset,
            max_messages: READ_RECORDS,
            max_bytes: core.config().max_frame_bytes,
            min_bytes: 1,
            max_wait: POLL_WAIT,
        };
        let item = match core.fetch(args, &stop).await {
            Ok(fetched) => match records_from(fetched.batches, offset) {
                Ok(records) => {
                    let Some(last) = records.last() else {
                        if stop.is_cancelled() || core.stopping().is_cancelled() {
                            return;
                        }
                        continue;
                    };
                    offset = last.offset + 1;
                    Item::Records(partition, records)
                }
                Err(err) => Item::Failed(err),
            },
            Err(BrokerError::OffsetOutOfRange { first, next, .. }) => {
                offset = if offset < first { first } else { next };
                Item::Reset(partition, offset)
            }
            Err(err) => Item::Failed(err),
        };
        let failed = matches!(item, Item::Failed(_));
        tokio::select! {
            sent = tx.send(item) => if sent.is_err() { return },
            _ = stop.cancelled() => return,
        }
        if failed {
            return;
        }
    }
}

fn records_from(batches: bytes::Bytes, from: u64) -> Result<Vec<StoredRecord>, BrokerError> {
    let mut out = Vec::new();
    for batch in read_batches(batches).map_err(BrokerError::BadBatch)? {
        for stored in batch.iter() {
            let stored = stored.map_err(BrokerError::BadBatch)?;
            if stored.offset >= from {
                out.push(stored);
            }
        }
    }
    Ok(out)
}

/// The events of one stream: a first event setting `retry:`, then records and resets in
/// the order the partitions' tasks hand them over, each record with the cursor after it.
fn stream_of(
    topic: String,
    cursor: BTreeMap<u32, u64>,
    rx: mpsc::Receiver<Item>,
    guard: DropGuard,
    stopping: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let retry = Duration::from_millis(1000 + fastrand::u64(..4000));
    let hello = Event::default()
        .event("hello")
        .retry(retry)
        .id(cursor_text(&cursor))
        .data(json!({"topic": topic, "cursor": cursor_text(&cursor)}).to_string());
    struct State {
        topic: String,
        cursor: BTreeMap<u32, u64>,
        rx: mpsc::Receiver<Item>,
        ready: std::collections::VecDeque<Event>,
        _guard: DropGuard,
        stopping: CancellationToken,
        ended: bool,
    }
    let state = State {
        topic,
        cursor,
        rx,
        ready: [hello].into(),
        _guard: guard,
        stopping,
        ended: false,
    };
    stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.ready.pop_front() {
                return Some((Ok(event), state));
            }
            if state.ended {
                return None;
            }
            let item = tokio::select! {
                item = state.rx.recv() => item,
                _ = state.stopping.cancelled() => None,
            };
            match item {
                None => return None,
                Some(Item::Records(partition, records)) => {
                    for stored in records {
                        state.cursor.insert(partition, stored.offset + 1);
                        let data = Value::Object(out_record(&state.topic, partition, &stored));
                        state.ready.push_back(
                            Event::default()
                                .event("record")
                                .id(cursor_text(&state.cursor))
                                .data(data.to_string()),
                        );
                    }
                }
                Some(Item::Reset(partition, offset)) => {
                    state.cursor.insert(partition, offset);
                    state.ready.push_back(
                        Event::default()
                            .event("reset")
                            .id(cursor_text(&state.cursor))
                            .data(json!({"partition": partition, "offset": offset}).to_string()),
                    );
                }
                Some(Item::Failed(err)) => {
                    let error = HttpError::from(err);
                    state.ready.push_back(
                        Event::default()
                            .event("error")
                            .data(error.body().to_string()),
                    );
                    state.ended = true;
                }
            }
        }
    })
}
