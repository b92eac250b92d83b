//! Work queues over plain HTTP, with job handles (the push groups' semantics):
//!
//! - `POST /v1/topics/{topic}/groups/{group}/leases` with `{"max": N, "wait_ms": W}` →
//!   `{"records": [...]}`: up to `N` records, each with a `handle`, answered as soon as
//!   there are `N` or after `wait_ms` (at most a minute; 0 = a short poll);
//! - `POST .../acks`, `.../nacks` (`"delay_ms"`), `.../rejects` (`"reason"`) and
//!   `.../touches` (`"extend_ms"`) with `{"handles": [...]}` → `{"results": [{"handle",
//!   "ok": true} | {"handle", "error": {...}}]}`.
//!
//! The gateway holds one credit-based subscription per group (its *lessee*): a lease
//! request grants it `max` records, takes what arrives, and takes back the credit it did
//! not use, so no record waits in flight without a holder. A lease not answered within
//! the group's ack timeout goes back to the group exactly as a push delivery does; its
//! handle is then stale, and answering it is an error in its result (the record may be
//! with another consumer by then). A handle the gateway never issued is an error too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use herald_protocol::{Batch, Deliver, StoredRecord};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::authed::Authed;
use super::json::{ok, HttpError, JsonBody, OutRecord};
use super::records::MAX_WAIT_MS;
use super::{Gateway, PathArgs};
use crate::auth::rules::Operation;
use crate::core::Caller;
use crate::domain::push_group::{Answer, Span};
use crate::error::BrokerError;

/// Most records leased and unanswered per group through the gateway.
const WINDOW: u32 = 10_000;
/// Most records one lease request takes.
const MAX_LEASE: u32 = 1_000;

/// The gateway's consumer in one group.
pub struct Lessee {
    caller: Caller,
    sub: u64,
    ack_timeout: Duration,
    deliveries: tokio::sync::Mutex<mpsc::Receiver<Deliver>>,
    /// (partition, offset) → the delivery count leased and when the lease runs out.
    leases: Mutex<HashMap<(u32, u64), (u32, Instant)>>,
}

/// The lessees by topic and group.
#[derive(Default)]
pub struct Lessees(Mutex<HashMap<(String, String), Arc<Lessee>>>);

impl Lessees {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Lessee>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn lessee(gateway: &Gateway, topic: &str, group: &str) -> Result<Arc<Lessee>, HttpError> {
    let key = (topic.to_string(), group.to_string());
    if let Some(lessee) = gateway.lessees.lock().get(&key) {
        return Ok(Arc::clone(lessee));
    }
    let caller = Caller {
        session: gateway.core.open_session(),
        address: "http leases".into(),
    };
    let subscription = gateway
        .core
        .lease_subscription(&caller, topic, group, WINDOW)
        .await?;
    let lessee = Arc::new(Lessee {
        caller,
        sub: subscription.id,
        ack_timeout: Duration::from_millis(u64::from(subscription.settings.ack_timeout_ms)),
        deliveries: tokio::sync::Mutex::new(subscription.deliveries),
        leases: Mutex::new(HashMap::new()),
    });
    // Two first requests at once: keep the one stored first, end the other.
    let kept = Arc::clone(gateway.lessees.lock().entry(key).or_insert(lessee.clone()));
    if !Arc::ptr_eq(&kept, &lessee) {
        gateway.core.session_closed(lessee.caller.session).await;
    }
    Ok(kept)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    #[serde(default = "one")]
    max: u32,
    #[serde(default)]
    wait_ms: u64,
}

fn one() -> u32 {
    1
}

pub async fn lease(
    Authed(gateway): Authed,
    PathArgs((topic, group)): PathArgs<(String, String)>,
    JsonBody(body): JsonBody<LeaseBody>,
) -> Result<Response, HttpError> {
    // The group's lessee is shared by every HTTP caller: each must be allowed.
    gateway.core.check(Operation::Consume, &topic)?;
    if body.max == 0 || body.max > MAX_LEASE {
        return Err(HttpError::bad_request(format!(
            "max must be 1 to {MAX_LEASE}, not {}",
            body.max
        )));
    }
    let mut lessee = lessee(&gateway, &topic, &group).await?;
    let taken = match take(&gateway, &lessee, &body).await {
        // Its subscription ended (the topic was deleted and made again): start over once.
        Err(gone) if gone.is_closed() => {
            gateway
                .lessees
                .lock()
                .remove(&(topic.clone(), group.clone()));
            lessee = self::lessee(&gateway, &topic, &group).await?;
            take(&gateway, &lessee, &body).await
        }
        other => other,
    }
    .map_err(Taken::into_error)?;
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        records: Vec<OutRecord<'a>>,
    }
    let records = taken
        .iter()
        .map(|leased| OutRecord {
            delivery: Some((&leased.handle, leased.count)),
            ..OutRecord::new(&topic, leased.partition, &leased.stored)
        })
        .collect();
    Ok(ok(Answer { records }))
}

/// A record leased: where it is, its handle and how often it was delivered.
struct Leased {
    partition: u32,
    stored: StoredRecord,
    handle: String,
    count: u32,
}

/// Why a lease request took nothing.
enum Taken {
    Closed,
    Failed(BrokerError),
}

impl Taken {
    fn is_closed(&self) -> bool {
        matches!(self, Taken::Closed)
    }

    fn into_error(self) -> HttpError {
        match self {
            Taken::Closed => BrokerError::UnknownGroup("its subscription ended".into()).into(),
            Taken::Failed(err) => err.into(),
        }
    }
}

async fn take(gateway: &Gateway, lessee: &Lessee, body: &LeaseBody) -> Result<Vec<Leased>, Taken> {
    let core = &gateway.core;
    let mut deliveries = lessee.deliveries.lock().await;
    let deadline = Instant::now() + Duration::from_millis(body.wait_ms.min(MAX_WAIT_MS));
    core.grant(&lessee.caller, lessee.sub, body.max)
        .await
        .map_err(|err| match err {
            BrokerError::UnknownSubscription(_) => Taken::Closed,
            err => Taken::Failed(err),
        })?;
    let mut got: Vec<Deliver> = Vec::new();
    let mut records = 0;
    while records < body.max as usize {
        match tokio::time::timeout_at(deadline, deliveries.recv()).await {
            Ok(Some(deliver)) => {
                records += deliver.delivery_counts.len();
                got.push(deliver);
            }
            Ok(None) => return Err(Taken::Closed),
            Err(_) => break,
        }
    }
    // Take back the credit not used; what was sent before is in the queue by now.
    let _ = core.revoke(&lessee.caller, lessee.sub).await;
    while let Ok(deliver) = deliveries.try_recv() {
        got.push(deliver);
    }
    let until = Instant::now() + lessee.ack_timeout;
    let mut leases = lessee.leases.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    leases.retain(|_, (_, expires)| *expires > now);
    let mut out = Vec::new();
    for deliver in got {
        let batch =
            Batch::parse(deliver.batch).map_err(|e| Taken::Failed(BrokerError::BadBatch(e)))?;
        for (i, stored) in batch.iter().enumerate() {
            let stored = stored.map_err(|e| Taken::Failed(BrokerError::BadBatch(e)))?;
            let count = deliver.delivery_counts.get(i).copied().unwrap_or(1);
            leases.insert((deliver.partition, stored.offset), (count, until));
            out.push(Leased {
                partition: deliver.partition,
                handle: super::ws::handle(lessee.sub, deliver.partition, stored.offset, count),
                stored,
                count,
            });
        }
    }
    Ok(out)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerBody {
    handles: Vec<String>,
    delay_ms: Option<u64>,
    reason: Option<String>,
    extend_ms: Option<u64>,
}

/// What each answer route does.
#[derive(Clone, Copy)]
pub enum Kind {
    Ack,
    Nack,
    Reject,
    Touch,
}

pub async fn answer(
    kind: Kind,
    gateway: Gateway,
    topic: String,
    group: String,
    body: AnswerBody,
) -> Result<Response, HttpError> {
    let answer = match kind {
        Kind::Ack => Answer::Ack,
        Kind::Nack => Answer::Nack {
            delay: Duration::from_millis(body.delay_ms.unwrap_or(0)),
        },
        Kind::Reject => Answer::Reject {
            reason: body.reason.clone().unwrap_or_default(),
        },
        Kind::Touch => Answer::Touch {
            extend: body.extend_ms.map(Duration::from_millis),
        },
    };
    let lessee = gateway
        .lessees
        .lock()
        .get(&(topic.clone(), group.clone()))
        .cloned();
    // Each handle is checked against the leases first; those that hold are answered
    // together.
    let checked: Vec<Result<(u64, Span), HttpError>> = body
        .handles
        .iter()
        .map(|handle| match &lessee {
            Some(lessee) => check_lease(lessee, handle, kind, &answer),
            None => Err(unknown(handle)),
        })
        .collect();
    let valid: Vec<(u64, Span)> = checked.iter().flatten().copied().collect();
    let mut answered = match &lessee {
        Some(lessee) => {
            super::answers::answer_records(&gateway.core, &lessee.caller, &valid, &answer).await
        }
        None => Vec::new(),
    }
    .into_iter();
    let results: Vec<Value> = body
        .handles
        .iter()
        .zip(checked)
        .map(
            |(handle, checked)| match checked.and_then(|_| answered.next().unwrap_or(Ok(()))) {
                Ok(()) => json!({"handle": handle, "ok": true}),
                Err(err) => json!({"handle": handle, "error": err.body()["error"]}),
            },
        )
        .collect();
    Ok(ok(json!({"results": results})))
}

fn unknown(handle: &str) -> HttpError {
    HttpError::bad_request(format!("{handle:?} is not a lease this group handed out"))
}

/// Whether `handle` names a lease that still holds; if so, updates the lease for the
/// answer (a touch extends it, anything else ends it) and returns what to answer.
fn check_lease(
    lessee: &Lessee,
    handle: &str,
    kind: Kind,
    answer: &Answer,
) -> Result<(u64, Span), HttpError> {
    let (sub, span, count) = super::ws::parse_handle(handle).ok_or_else(|| unknown(handle))?;
    if sub != lessee.sub {
        return Err(unknown(handle));
    }
    let key = (span.partition, span.start);
    let mut leases = lessee.leases.lock().unwrap_or_else(|e| e.into_inner());
    let Some((leased, expires)) = leases.get_mut(&key) else {
        return Err(unknown(handle));
    };
    // An earlier lease of a record leased again since: its holder's time ran out (the
    // later lease stays).
    let replaced = *leased != count;
    if replaced || *expires <= Instant::now() {
        if !replaced {
            leases.remove(&key);
        }
        return Err(HttpError::bad_request(format!(
            "the lease of {handle:?} ran out; the record went back to the group"
        )));
    }
    match kind {
        Kind::Touch => {
            let extend = match answer {
                Answer::Touch { extend: Some(d) } => *d,
                _ => lessee.ack_timeout,
            };
            *expires = Instant::now() + extend;
        }
        _ => {
            leases.remove(&key);
        }
    }
    Ok((sub, span))
}

macro_rules! answer_route {
    ($name:ident, $kind:expr) => {
        pub async fn $name(
            Authed(gateway): Authed,
            PathArgs((topic, group)): PathArgs<(String, String)>,
            JsonBody(body): JsonBody<AnswerBody>,
        ) -> Result<Response, HttpError> {
            gateway.core.check(Operation::Consume, &topic)?;
            answer($kind, gateway, topic, group, body).await
        }
    };
}

answer_route!(acks, Kind::Ack);
answer_route!(nacks, Kind::Nack);
answer_route!(rejects, Kind::Reject);
answer_route!(touches, Kind::Touch);
