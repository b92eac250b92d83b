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
//!
//! The stream writes its own `text/event-stream` frames: every record a read handed over
//! goes out in one body frame (one write), each record's JSON serialized straight into
//! it. With a thousand streams following a busy topic, that is what keeps a broker from
//! spending its time on per-event allocations and system calls.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;

use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::stream::{self, Stream};
use herald_protocol::{read_batches, StoredRecord};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::authed::Authed;
use super::json::{HttpError, OutRecord};
use super::tails::Rendered;
use super::{PathArgs, QueryArgs};
use crate::auth::access::Hold;
use crate::error::BrokerError;

/// Records one read of a partition takes.
pub(super) const READ_RECORDS: u32 = 500;
/// Reads handed to the stream and not yet sent, per partition.
const QUEUE: usize = 4;
/// Longest a stream goes without sending anything: then a comment goes out, so proxies
/// do not close it as idle.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

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
    /// Records the partition's hub rendered, from the offset given on.
    Rendered(u32, Arc<Rendered>, u64),
    /// The cursor was older than retention: reading restarts at `first`.
    Reset(u32, u64),
    Failed(BrokerError),
}

pub async fn events(
    Authed(gateway): Authed,
    PathArgs(topic): PathArgs<String>,
    QueryArgs(query): QueryArgs<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let info = gateway.core.topic_to_read(&topic)?;
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
        let follow = gateway.follow(&topic, partition);
        gateway
            .tasks
            .spawn(follow.run(offset, tx.clone(), stop.clone()));
    }
    drop(tx);
    // The stream ends with the broker, or with its credentials.
    let core = &gateway.core;
    let hold = core.access().hold(
        core.open_session(),
        core.principal(),
        core.stopping().child_token(),
    );
    // The stream counts as open (the metrics) for as long as it runs.
    let open = core
        .shared()
        .counters
        .open(crate::metrics::counters::Way::Sse);
    let guard = (stop.drop_guard(), open);
    let stream = stream_of(topic, cursor, rx, guard, hold);
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
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

/// The records of `batches` from offset `from` on.
pub(super) fn read_records(
    batches: bytes::Bytes,
    from: u64,
) -> Result<Vec<StoredRecord>, BrokerError> {
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
/// the order the partitions' tasks hand them over, each record with the cursor after it;
/// a comment after [`KEEP_ALIVE`] without any.
/// `guard` lives as long as the stream: what ends with it (its readers, its count).
fn stream_of<G: Send + 'static>(
    topic: String,
    cursor: BTreeMap<u32, u64>,
    rx: mpsc::Receiver<Item>,
    guard: G,
    hold: Hold,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let retry = 1000 + fastrand::u64(..4000);
    let mut hello = BytesMut::new();
    let cursor_now = cursor_text(&cursor);
    let data = json!({"topic": topic, "cursor": cursor_now}).to_string();
    write_event(&mut hello, "hello", Some(&cursor_now), Some(retry), |out| {
        out.put_slice(data.as_bytes())
    });
    struct State<G> {
        topic: String,
        cursor: BTreeMap<u32, u64>,
        rx: mpsc::Receiver<Item>,
        hello: Option<Bytes>,
        _guard: G,
        /// Cancelled when the broker stops (the stream just ends) or the credentials are
        /// revoked (an `error` event first).
        hold: Hold,
        ended: bool,
    }
    let state = State {
        topic,
        cursor,
        rx,
        hello: Some(hello.freeze()),
        _guard: guard,
        hold,
        ended: false,
    };
    stream::unfold(state, |mut state| async move {
        if let Some(hello) = state.hello.take() {
            return Some((Ok(hello), state));
        }
        if state.ended {
            return None;
        }
        let item = tokio::select! {
            item = tokio::time::timeout(KEEP_ALIVE, state.rx.recv()) => match item {
                Ok(item) => item,
                Err(_) => return Some((Ok(Bytes::from_static(b":\n\n")), state)),
            },
            _ = state.hold.cut.cancelled() => {
                state.hold.revoked().then_some(Item::Failed(BrokerError::CredentialsRevoked))
            }
        };
        let mut frame = BytesMut::new();
        match item? {
            Item::Records(partition, records) => {
                for stored in records {
                    state.cursor.insert(partition, stored.offset + 1);
                    let id = cursor_text(&state.cursor);
                    let record = OutRecord::new(&state.topic, partition, &stored);
                    write_event(&mut frame, "record", Some(&id), None, |out| {
                        serde_json::to_writer(out.writer(), &record).expect("a record serializes")
                    });
                }
            }
            Item::Rendered(partition, rendered, from) => {
                for (offset, json) in rendered.since(from) {
                    state.cursor.insert(partition, offset + 1);
                    let id = cursor_text(&state.cursor);
                    write_event(&mut frame, "record", Some(&id), None, |out| {
                        out.put_slice(json)
                    });
                }
            }
            Item::Reset(partition, offset) => {
                state.cursor.insert(partition, offset);
                let id = cursor_text(&state.cursor);
                let data = json!({"partition": partition, "offset": offset}).to_string();
                write_event(&mut frame, "reset", Some(&id), None, |out| {
                    out.put_slice(data.as_bytes())
                });
            }
            Item::Failed(err) => {
                let data = HttpError::from(err).body().to_string();
                write_event(&mut frame, "error", None, None, |out| {
                    out.put_slice(data.as_bytes())
                });
                state.ended = true;
            }
        }
        Some((Ok(frame.freeze()), state))
    })
}

/// Appends one event to `out`; `data` writes its data, which must be one line (JSON
/// without newlines, as serde_json writes it).
fn write_event(
    out: &mut BytesMut,
    name: &str,
    id: Option<&str>,
    retry_ms: Option<u64>,
    data: impl FnOnce(&mut BytesMut),
) {
    out.put_slice(b"event: ");
    out.put_slice(name.as_bytes());
    if let Some(id) = id {
        out.put_slice(b"\nid: ");
        out.put_slice(id.as_bytes());
    }
    if let Some(retry) = retry_ms {
        out.put_slice(format!("\nretry: {retry}").as_bytes());
    }
    out.put_slice(b"\ndata: ");
    data(out);
    out.put_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tokio::time::Instant;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_sends_a_comment_every_keep_alive_interval() {
        let (tx, rx) = mpsc::channel(1);
        let stop = CancellationToken::new();
        let cursor = BTreeMap::from([(0, 7)]);
        let stream = stream_of(
            "orders".into(),
            cursor,
            rx,
            stop.clone().drop_guard(),
            Hold::detached(CancellationToken::new()),
        );
        futures::pin_mut!(stream);
        let hello = stream.next().await.unwrap().unwrap();
        let hello = String::from_utf8(hello.to_vec()).unwrap();
        assert!(
            hello.starts_with("event: hello\nid: 0:7\nretry: ") && hello.ends_with("\n\n"),
            "{hello:?}"
        );
        for _ in 0..2 {
            let quiet = Instant::now();
            let comment = stream.next().await.unwrap().unwrap();
            assert_eq!(&comment[..], b":\n\n");
            assert_eq!(quiet.elapsed(), KEEP_ALIVE);
        }
        // Once its readers are gone the stream ends, and a stream that ends tells its
        // readers to stop.
        assert!(!stop.is_cancelled());
        drop(tx);
        assert!(stream.next().await.is_none());
        assert!(stop.is_cancelled());
    }
}
