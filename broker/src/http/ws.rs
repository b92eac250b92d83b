//! WebSockets: `GET /v1/ws`, JSON text messages, several subscriptions per socket.
//!
//! Client → broker:
//! - `{"op": "subscribe", "id": "S", "topic": "T", "group": "G", "prefetch": N}`: join push
//!   group `G` as a consumer; its deliveries come as `{"op": "delivery", "sub": "S", ...the
//!   record..., "handle": H, "delivery_count": C, "redelivered": bool}` (a handle is
//!   `SUB.PARTITION.OFFSET.COUNT`);
//! - `{"op": "tail", "id": "S", "topic": "T", "from": "earliest" | "latest" | CURSOR}`: follow
//!   the log (no group, no acks); records come as `{"op": "record", "sub": "S", ...,
//!   "cursor": CURSOR}`, and a cursor past retention as `{"op": "reset", ...}`;
//! - `{"op": "ack" | "nack" | "reject" | "touch", "handles": [...]}` (`"delay_ms"` for nack,
//!   `"reason"` for reject, `"extend_ms"` for touch; `"req"` to be told the results);
//! - `{"op": "publish", "req": "R", "topic": "T", "records": [...]}` → `{"op":
//!   "published", "req": "R", "offsets": [...], "durability": ...}`;
//! - `{"op": "unsubscribe", "id": "S"}`.
//!
//! Errors are `{"op": "error", "req" or "id": ..., "error": {"code", "number",
//! "message"}}`; a bad message is answered so and the socket goes on.
//!
//! A WebSocket is a session, like a TCP connection: the broker pings it every heartbeat
//! interval, and one that closes or sends nothing (not even a pong) for the session
//! timeout ends; its unanswered deliveries go to the group's other consumers at once. The
//! window (`prefetch`) is the backpressure: a browser that stops reading holds at most its
//! window, and the broker's queue towards the socket is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::ConnectInfo;
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use herald_protocol::Batch;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::authed::Authed;
use super::events::{cursor_text, fill_cursor, parse_cursor, Item};
use super::json::{HttpError, InRecord, OutRecord};
use super::Gateway;
use crate::core::Caller;
use crate::domain::group::Start;
use crate::domain::push_group::{Answer, Span};
use crate::error::BrokerError;

/// Messages queued towards one socket.
const OUTBOUND: usize = 256;

pub async fn upgrade(
    Authed(gateway): Authed,
    ConnectInfo(peer): ConnectInfo<super::counted::Peer>,
    ws: WebSocketUpgrade,
) -> Result<Response, HttpError> {
    // Refused at the upgrade: a socket that could do nothing never opens.
    gateway.core.logged_in()?;
    let limit = gateway.core.config().max_frame_bytes as usize;
    Ok(ws
        .max_message_size(limit)
        .on_upgrade(move |socket| session(gateway, socket, peer.addr)))
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum Request {
    Subscribe {
        id: String,
        topic: String,
        group: String,
        prefetch: Option<u32>,
        from: Option<String>,
    },
    Tail {
        id: String,
        topic: String,
        from: Option<String>,
        partition: Option<u32>,
    },
    Unsubscribe {
        id: String,
    },
    Ack {
        handles: Vec<String>,
        req: Option<Value>,
    },
    Nack {
        handles: Vec<String>,
        delay_ms: Option<u64>,
        req: Option<Value>,
    },
    Reject {
        handles: Vec<String>,
        reason: Option<String>,
        req: Option<Value>,
    },
    Touch {
        handles: Vec<String>,
        extend_ms: Option<u64>,
        req: Option<Value>,
    },
    Publish {
        req: Option<Value>,
        topic: String,
        records: Vec<InRecord>,
    },
}

/// What one of the socket's subscriptions is.
enum Sub {
    /// A push-group consumer: its core subscription id.
    Group(u64),
    /// A log tail; cancelling it ends its readers.
    Tail(CancellationToken),
}

struct Session {
    gateway: Gateway,
    caller: Caller,
    out: mpsc::Sender<Message>,
    subs: HashMap<String, Sub>,
    /// Ends every forwarder and tail of this socket.
    closing: CancellationToken,
}

async fn session(gateway: Gateway, socket: WebSocket, peer: SocketAddr) {
    let core = gateway.core.clone();
    let caller = Caller {
        session: core.open_session(),
        address: peer.to_string(),
    };
    let (timeout_ms, heartbeat_ms) = core.config().grant_session(0, 0);
    let (timeout, heartbeat) = (
        Duration::from_millis(u64::from(timeout_ms)),
        Duration::from_millis(u64::from(heartbeat_ms)),
    );
    let (mut sink, mut stream) = socket.split();
    let (out, mut queued) = mpsc::channel::<Message>(OUTBOUND);
    let closing = CancellationToken::new();
    // The writer: queued messages, and a ping whenever nothing else went out for a heartbeat.
    // What is queued together goes out in one write (one flush for all of it, not one
    // system call per delivery). A peer that stops reading stalls the writer for at most
    // the session timeout: then the socket is dropped, its queue closes, and everyone
    // waiting to send to it stops.
    let writer = gateway.tasks.spawn(async move {
        loop {
            let message = match tokio::time::timeout(heartbeat, queued.recv()).await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) => Message::Ping(Default::default()),
            };
            let write = async {
                sink.feed(message).await?;
                while let Ok(more) = queued.try_recv() {
                    sink.feed(more).await?;
                }
                sink.flush().await
            };
            match tokio::time::timeout(timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
        let _ = tokio::time::timeout(timeout, sink.close()).await;
    });
    let mut session = Session {
        gateway,
        caller,
        out,
        subs: HashMap::new(),
        closing: closing.clone(),
    };
    let stopping = core.stopping();
    let counters = std::sync::Arc::clone(&core.shared().counters);
    let _open = counters.open(crate::metrics::counters::Way::WebSocket);
    let hold = core.access().hold(
        session.caller.session,
        core.principal(),
        CancellationToken::new(),
    );
    let reason = loop {
        let next = tokio::select! {
            next = tokio::time::timeout(timeout, stream.next()) => next,
            _ = stopping.cancelled() => break "broker stopping",
            _ = hold.cut.cancelled() => {
                let revoked = HttpError::from(BrokerError::CredentialsRevoked);
                session.error(json!({}), revoked).await;
                break "credentials revoked";
            }
        };
        match next {
            Err(_) => {
                counters.expired(crate::metrics::counters::Way::WebSocket);
                break "silent for the session timeout";
            }
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => break "closed",
            Ok(Some(Ok(Message::Text(text)))) => session.on_text(&text).await,
            Ok(Some(Ok(Message::Binary(_)))) => {
                session
                    .error(json!({}), HttpError::bad_request("messages are JSON text"))
                    .await
            }
            Ok(Some(Ok(_))) => {} // pings and pongs: proof of life
        }
    };
    tracing::debug!(session = session.caller.session, reason, "websocket ended");
    closing.cancel();
    core.session_closed(session.caller.session).await;
    drop(session);
    let _ = writer.await;
}

impl Session {
    async fn send(&self, value: Value) {
        let _ = self
            .out
            .send(Message::Text(Utf8Bytes::from(value.to_string())))
            .await;
    }

    async fn error(&self, about: Value, err: HttpError) {
        let mut message = json!({"op": "error"});
        if let (Value::Object(m), Value::Object(a)) = (&mut message, about) {
            m.extend(a);
        }
        message["error"] = err.body()["error"].clone();
        self.send(message).await;
    }

    async fn on_text(&mut self, text: &str) {
        let request: Request = match serde_json::from_str(text) {
            Ok(request) => request,
            Err(err) => {
                // Name the request when its "req" or "id" can still be read.
                let about = serde_json::from_str::<Value>(text)
                    .ok()
                    .map(|v| {
                        let mut about = json!({});
                        for key in ["req", "id"] {
                            if let Some(value) = v.get(key) {
                                about[key] = value.clone();
                            }
                        }
                        about
                    })
                    .unwrap_or_else(|| json!({}));
                return self
                    .error(about, HttpError::bad_request(err.to_string()))
                    .await;
            }
        };
        match request {
            Request::Subscribe {
                id,
                topic,
                group,
                prefetch,
                from,
            } => self.subscribe(id, topic, group, prefetch, from).await,
            Request::Tail {
                id,
                topic,
                from,
                partition,
            } => self.tail(id, topic, from, partition).await,
            Request::Unsubscribe { id } => self.unsubscribe(id).await,
            Request::Ack { handles, req } => self.answer(handles, Answer::Ack, req).await,
            Request::Nack {
                handles,
                delay_ms,
                req,
            } => {
                let delay = Duration::from_millis(delay_ms.unwrap_or(0));
                self.answer(handles, Answer::Nack { delay }, req).await
            }
            Request::Reject {
                handles,
                reason,
                req,
            } => {
                let reason = reason.unwrap_or_default();
                self.answer(handles, Answer::Reject { reason }, req).await
            }
            Request::Touch {
                handles,
                extend_ms,
                req,
            } => {
                let extend = extend_ms.map(Duration::from_millis);
                self.answer(handles, Answer::Touch { extend }, req).await
            }
            Request::Publish {
                req,
                topic,
                records,
            } => self.publish(req, topic, records).await,
        }
    }

    async fn subscribe(
        &mut self,
        id: String,
        topic: String,
        group: String,
        prefetch: Option<u32>,
        from: Option<String>,
    ) {
        let about = json!({"id": id});
        if self.subs.contains_key(&id) {
            let err = HttpError::bad_request(format!("subscription {id:?} exists on this socket"));
            return self.error(about, err).await;
        }
        let start = match from.as_deref() {
            None | Some("earliest") => Start::Earliest,
            Some("latest") => Start::Latest,
            Some(other) => {
                let err = HttpError::bad_request(format!(
                    "from must be earliest or latest, not {other:?}"
                ));
                return self.error(about, err).await;
            }
        };
        let prefetch = prefetch.unwrap_or(100);
        let core = self.gateway.core.clone();
        let subscribed = core
            .subscribe(&self.caller, &topic, &group, prefetch, 0, start)
            .await;
        let mut subscription = match subscribed {
            Ok(subscription) => subscription,
            Err(err) => return self.error(about, err.into()).await,
        };
        self.subs.insert(id.clone(), Sub::Group(subscription.id));
        self.send(json!({"op": "subscribed", "id": id, "ack_timeout_ms": subscription.settings.ack_timeout_ms}))
            .await;
        let (out, closing, sub) = (self.out.clone(), self.closing.clone(), subscription.id);
        self.gateway.tasks.spawn(async move {
            loop {
                let deliver = tokio::select! {
                    deliver = subscription.deliveries.recv() => deliver,
                    _ = closing.cancelled() => return,
                };
                let Some(deliver) = deliver else { return };
                let Ok(batch) = Batch::parse(deliver.batch) else {
                    return;
                };
                for (i, stored) in batch.iter().enumerate() {
                    let Ok(stored) = stored else { return };
                    let count = deliver.delivery_counts.get(i).copied().unwrap_or(1);
                    let handle = handle(sub, deliver.partition, stored.offset, count);
                    let text = OutRecord {
                        message: Some(("delivery", &id)),
                        delivery: Some((&handle, count)),
                        ..OutRecord::new(&topic, deliver.partition, &stored)
                    }
                    .to_text();
                    if out
                        .send(Message::Text(Utf8Bytes::from(text)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
    }

    async fn tail(
        &mut self,
        id: String,
        topic: String,
        from: Option<String>,
        partition: Option<u32>,
    ) {
        let about = json!({"id": id});
        if self.subs.contains_key(&id) {
            let err = HttpError::bad_request(format!("subscription {id:?} exists on this socket"));
            return self.error(about, err).await;
        }
        let core = self.gateway.core.clone();
        let info = match core.topic_to_read(&topic) {
            Ok(info) => info,
            Err(err) => return self.error(about, err.into()).await,
        };
        let partitions: Vec<u32> = match partition {
            Some(p) if (p as usize) < info.partitions.len() => vec![p],
            Some(p) => {
                let err = BrokerError::UnknownPartition {
                    topic,
                    partition: p,
                };
                return self.error(about, err.into()).await;
            }
            None => (0..info.partitions.len() as u32).collect(),
        };
        let (mut cursor, latest) = match from.as_deref() {
            None | Some("earliest") => (Default::default(), false),
            Some("latest") => (Default::default(), true),
            Some(text) => match parse_cursor(text) {
                Ok(cursor) => (cursor, false),
                Err(err) => return self.error(about, err).await,
            },
        };
        fill_cursor(&mut cursor, &info, &partitions, latest);
        let stop = self.closing.child_token();
        self.subs.insert(id.clone(), Sub::Tail(stop.clone()));
        self.send(json!({"op": "subscribed", "id": id, "cursor": cursor_text(&cursor)}))
            .await;
        let (tx, mut rx) = mpsc::channel(4 * partitions.len().max(1));
        for (&p, &offset) in &cursor {
            let follow = self.gateway.follow(&topic, p);
            self.gateway
                .tasks
                .spawn(follow.run(offset, tx.clone(), stop.clone()));
        }
        drop(tx);
        let out = self.out.clone();
        self.gateway.tasks.spawn(async move {
            while let Some(item) = tokio::select! {
                item = rx.recv() => item,
                _ = stop.cancelled() => None,
            } {
                let messages: Vec<String> = match item {
                    Item::Records(p, records) => records
                        .iter()
                        .map(|stored| {
                            cursor.insert(p, stored.offset + 1);
                            OutRecord {
                                message: Some(("record", &id)),
                                cursor: Some(&cursor_text(&cursor)),
                                ..OutRecord::new(&topic, p, stored)
                            }
                            .to_text()
                        })
                        .collect(),
                    Item::Rendered(p, rendered, from) => rendered
                        .since(from)
                        .map(|(offset, json)| {
                            cursor.insert(p, offset + 1);
                            tail_message(&id, &cursor_text(&cursor), json)
                        })
                        .collect(),
                    Item::Reset(p, offset) => {
                        cursor.insert(p, offset);
                        vec![json!({"op": "reset", "sub": id, "partition": p, "offset": offset, "cursor": cursor_text(&cursor)}).to_string()]
                    }
                    Item::Failed(err) => {
                        vec![json!({"op": "error", "id": id, "error": HttpError::from(err).body()["error"]}).to_string()]
                    }
                };
                for message in messages {
                    if out.send(Message::Text(Utf8Bytes::from(message))).await.is_err() {
                        return;
                    }
                }
            }
        });
    }

    async fn unsubscribe(&mut self, id: String) {
        match self.subs.remove(&id) {
            Some(Sub::Group(sub)) => {
                if let Err(err) = self.gateway.core.unsubscribe(&self.caller, sub).await {
                    return self.error(json!({"id": id}), err.into()).await;
                }
            }
            Some(Sub::Tail(stop)) => stop.cancel(),
            None => {
                let err = HttpError::from(BrokerError::InvalidArgument(format!(
                    "no subscription {id:?} on this socket"
                )));
                return self.error(json!({"id": id}), err).await;
            }
        }
        self.send(json!({"op": "unsubscribed", "id": id})).await;
    }

    /// Answers each handle on its own, so one stale handle fails alone.
    async fn answer(&self, handles: Vec<String>, answer: Answer, req: Option<Value>) {
        let parsed: Vec<Option<(u64, Span)>> = handles
            .iter()
            .map(|handle| parse_handle(handle).map(|(sub, span, _)| (sub, span)))
            .collect();
        let valid: Vec<(u64, Span)> = parsed.iter().flatten().copied().collect();
        let mut answered =
            super::answers::answer_records(&self.gateway.core, &self.caller, &valid, &answer)
                .await
                .into_iter();
        let mut results = Vec::with_capacity(handles.len());
        for (handle, parsed) in handles.into_iter().zip(parsed) {
            let result = match parsed {
                Some(_) => answered.next().unwrap_or(Ok(())),
                None => Err(HttpError::bad_request(format!(
                    "{handle:?} is not a handle"
                ))),
            };
            match result {
                Ok(()) => results.push(json!({"handle": handle, "ok": true})),
                Err(err) => {
                    let error = err.body()["error"].clone();
                    if req.is_none() {
                        let about = json!({"handle": handle});
                        self.error(about, err).await;
                    }
                    results.push(json!({"handle": handle, "error": error}));
                }
            }
        }
        if let Some(req) = req {
            self.send(json!({"op": "answered", "req": req, "results": results}))
                .await;
        }
    }

    async fn publish(&self, req: Option<Value>, topic: String, records: Vec<InRecord>) {
        match super::records::publish_records(&self.gateway.core, &topic, records).await {
            Ok(mut published) => {
                published["op"] = json!("published");
                published["req"] = req.unwrap_or(Value::Null);
                self.send(published).await
            }
            Err(err) => self.error(json!({"req": req}), err).await,
        }
    }
}

/// A tail's message for a record its hub rendered: the record's JSON object with `op`,
/// `sub` and `cursor` put in front.
fn tail_message(sub: &str, cursor: &str, record: &[u8]) -> String {
    let head = json!({"op": "record", "sub": sub, "cursor": cursor}).to_string();
    let body = String::from_utf8_lossy(record.get(1..).unwrap_or_default());
    // `{"op":...,"cursor":"..."}` + `"topic":...}` → one object.
    format!("{},{body}", &head[..head.len() - 1])
}

/// A delivery's handle: `SUB.PARTITION.OFFSET.COUNT`. The delivery count tells this
/// delivery of a record from an earlier one of the same record.
pub(super) fn handle(sub: u64, partition: u32, offset: u64, count: u32) -> String {
    format!("{sub}.{partition}.{offset}.{count}")
}

/// A handle → the subscription, the one-record span it names, and the delivery count.
pub(super) fn parse_handle(handle: &str) -> Option<(u64, Span, u32)> {
    let mut parts = handle.split('.');
    let sub = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let offset: u64 = parts.next()?.parse().ok()?;
    let count = parts.next()?.parse().ok()?;
    let span = Span {
        partition,
        start: offset,
        end: offset + 1,
    };
    parts.next().is_none().then_some((sub, span, count))
}
