//! The web front door: HTTP (and, built on it, Server-Sent Events and WebSockets) onto
//! the same [`Core`] as the TCP protocol.
//!
//! Routes (JSON everywhere; errors are a fitting status and `{"error": {"code", "number",
//! "message"}}` with the broker's error codes, see [`json`]):
//!
//! - `GET /v1/topics` and `GET /v1/topics/{topic}`: the topics, and one topic's partitions
//!   with their first and next offsets (see `topics`).
//! - `POST /v1/topics/{topic}/records` with `{"records": [...]}`: publishes, answering once
//!   the records are confirmed under the fsync policy.
//! - `GET /v1/topics/{topic}/partitions/{p}/records?offset=N&max_records=M&wait_ms=W`: reads,
//!   long-polling up to `wait_ms` (at most a minute) for a record to exist.
//! - `GET /v1/topics/{topic}/events?from=earliest|latest[&partition=P]`: Server-Sent
//!   Events, resumable with `Last-Event-ID` (see `events`).
//! - `POST /v1/topics/{topic}/groups/{group}/leases`, `.../acks`, `.../nacks`,
//!   `.../rejects`, `.../touches`: work queues with job handles (see `leases`).
//! - `GET /v1/ws`: a WebSocket session with push-group subscriptions, log tails, answers
//!   and publishing (see `ws`).
//!
//! - `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /v1/stats`, and the management
//!   page at `GET /`: for operators (see `health`).
//!
//! `--http-allow-origin` turns on CORS for the origins it names (`*` for any).
//!
//! Every route acts for the credentials its request presents (see `authed`); with
//! `--auth` the core checks each one. SSE streams and WebSockets end when their
//! credentials are revoked.

mod answers;
mod authed;
mod counted;
mod events;
mod health;
pub mod json;
mod leases;
mod records;
mod tails;
mod topics;
mod ws;

use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method};
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::core::Core;
use json::HttpError;

/// What every handler holds.
#[derive(Clone)]
pub struct Gateway {
    core: Core,
    /// The gateway's consumers in push groups, for leases.
    lessees: std::sync::Arc<leases::Lessees>,
    /// The tasks streams start (an SSE stream's partition readers); [`serve`] waits for
    /// them after the last connection closed.
    tasks: TaskTracker,
    /// One reader per partition for the streams following its tail.
    tails: std::sync::Arc<tails::Tails>,
}

impl Gateway {
    /// The same gateway, its core acting for `principal`.
    fn acting_for(&self, principal: crate::auth::access::Principal) -> Gateway {
        Gateway {
            core: self.core.acting_for(principal),
            ..self.clone()
        }
    }

    /// A follower of `topic`'s `partition` for one stream.
    fn follow(&self, topic: &str, partition: u32) -> tails::Follow {
        tails::Follow {
            core: self.core.clone(),
            tails: std::sync::Arc::clone(&self.tails),
            tasks: self.tasks.clone(),
            topic: topic.to_string(),
            partition,
        }
    }
}

/// The gateway's routes over `core`, with CORS for `origins` (none: no CORS headers), and
/// the tracker of the tasks its streams start.
pub fn router(core: Core, origins: &[String]) -> (Router, TaskTracker) {
    let tasks = TaskTracker::new();
    let limit = core.config().max_frame_bytes as usize;
    let router = Router::new()
        .route("/v1/topics", get(topics::list))
        .route("/v1/topics/{topic}", get(topics::describe))
        .route("/v1/topics/{topic}/records", post(records::publish))
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(records::read),
        )
        .route("/v1/topics/{topic}/events", get(events::events))
        .route("/v1/ws", get(ws::upgrade))
        .route(
            "/v1/topics/{topic}/groups/{group}/leases",
            post(leases::lease),
        )
        .route("/v1/topics/{topic}/groups/{group}/acks", post(leases::acks))
        .route(
            "/v1/topics/{topic}/groups/{group}/nacks",
            post(leases::nacks),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/rejects",
            post(leases::rejects),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/touches",
            post(leases::touches),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/v1/stats", get(health::stats))
        .route("/", get(health::page))
        .fallback(|| async { HttpError::not_found("no such path") });
    let gateway = Gateway {
        core,
        lessees: Default::default(),
        tasks: tasks.clone(),
        tails: Default::default(),
    };
    let router = router
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            health::count,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(gateway);
    if origins.is_empty() {
        return (router, tasks);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list: Vec<HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
        AllowOrigin::list(list)
    };
    let cors = CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(Any);
    (router.layer(cors), tasks)
}

/// Serves `router` on `listener` until `shutdown` is cancelled and every connection has
/// closed (streams end with the shutdown), then waits for the streams' `tasks`.
///
/// From `shared`: TLS (each handshake within `--hello-timeout-ms`), the broker's connection
/// slots, the counters, and the stall limit: a connection whose peer reads nothing for the
/// session timeout while there is something to write is closed.
pub async fn serve(
    listener: TcpListener,
    shared: &std::sync::Arc<crate::shared::Shared>,
    router: Router,
    tasks: TaskTracker,
    shutdown: CancellationToken,
) {
    let config = &shared.config;
    let tls = shared.tls.clone().map(|tls| {
        let within = std::time::Duration::from_millis(config.hello_timeout_ms.max(1));
        (tls, within)
    });
    let stall_limit = std::time::Duration::from_millis(u64::from(config.session_timeout_ms.max(1)));
    let listener = counted::Counted::new(
        listener,
        std::sync::Arc::clone(&shared.connections),
        config.max_connections,
        tls,
        tasks.clone(),
        stall_limit,
        std::sync::Arc::clone(&shared.counters),
    );
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<counted::Peer>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await;
    if let Err(err) = served {
        tracing::error!(%err, "the HTTP listener stopped");
    }
    tasks.close();
    tasks.wait().await;
}

/// `Path<T>` whose rejections answer in the error shape.
pub struct PathArgs<T>(pub T);

impl<S, T> FromRequestParts<S> for PathArgs<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| PathArgs(value))
            .map_err(|rejection| HttpError::bad_request(rejection.body_text()))
    }
}

/// `Query<T>` whose rejections answer in the error shape.
pub struct QueryArgs<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryArgs<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HttpError;

    /// `access_token` (credentials, read by `authed`) is left out: every route takes it.
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, HttpError> {
        let query = parts.uri.query().unwrap_or_default();
        let without_token;
        let uri = if query.contains("access_token") {
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| pair.split('=').next() != Some("access_token"))
                .collect();
            without_token = format!("/?{}", kept.join("&"))
                .parse::<axum::http::Uri>()
                .map_err(|_| HttpError::bad_request("a malformed query string"))?;
            &without_token
        } else {
            &parts.uri
        };
        axum::extract::Query::<T>::try_from_uri(uri)
            .map(|axum::extract::Query(value)| QueryArgs(value))
            .map_err(|rejection| HttpError::bad_request(rejection.body_text()))
    }
}
