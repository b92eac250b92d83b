//! For operators and their monitoring: `GET /healthz`, `GET /readyz` and `GET /metrics`,
//! the management page at `GET /` with its data at `GET /v1/stats`, and the count of every
//! HTTP request by route and status class.
//!
//! - `/healthz`: 200 while the process serves (a liveness probe). No credentials.
//! - `/readyz`: 200 when the broker takes writes: the store is open, its writer is not
//!   stuck past the storage timeout, and the free disk is above the reserve; 503 with the
//!   reasons in JSON otherwise (a readiness probe, or a load balancer's check). No
//!   credentials: it says nothing about the data.
//! - `/metrics`: the Prometheus text format (see `metrics`). With `--auth` it needs
//!   `describe` on every topic (a rule on `*`), as it names them all.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::authed::Authed;
use super::json::HttpError;
use super::Gateway;

pub async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

pub async fn readyz(State(gateway): State<Gateway>) -> Response {
    let shared = gateway.core.shared();
    let mut reasons = Vec::new();
    if shared.shutdown.is_cancelled() {
        reasons.push("the broker is shutting down".to_string());
    }
    if shared.store.writer_stalled() {
        reasons.push(format!(
            "the store's writer, or its index flush, has been busy with one commit for \
             longer than the storage timeout of {} ms",
            shared.config.storage_timeout_ms
        ));
    }
    let room = shared.store.room();
    if room.below_reserve() {
        reasons.push(format!(
            "free disk space is {} bytes, at or below the reserve of {} bytes \
             (--min-free-disk-bytes)",
            room.free(),
            room.reserve
        ));
    }
    if reasons.is_empty() {
        return (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response();
    }
    let body = json!({"status": "unavailable", "reasons": reasons});
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

pub async fn metrics(Authed(gateway): Authed) -> Result<Response, HttpError> {
    gateway
        .core
        .check_everything(crate::auth::rules::Operation::Describe)?;
    let started = gateway.core.shared().started;
    let max_topics = gateway.core.config().metrics_max_topics;
    let snapshot = crate::metrics::gather(&gateway.core, started, max_topics).await;
    let text = crate::metrics::encode(snapshot);
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// `GET /`: the management page (HTML, CSS and JavaScript in one file, in the binary). It
/// holds no data: what it shows it fetches from the endpoints above, with the credentials
/// its login form takes, so it is behind the same authentication as everything else.
pub async fn page() -> Response {
    let html = include_str!("page.html");
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

/// `GET /v1/stats`: the headline figures as JSON (see `metrics::stats`); the same rule as
/// `/metrics`.
pub async fn stats(Authed(gateway): Authed) -> Result<Response, HttpError> {
    gateway
        .core
        .check_everything(crate::auth::rules::Operation::Describe)?;
    Ok(axum::Json(crate::metrics::stats(&gateway.core).await).into_response())
}

/// Counts each request under its route (`other` for a path no route takes) and the class
/// of its status.
pub async fn count(State(gateway): State<Gateway>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let counters = &gateway.core.shared().counters;
    let path = path.as_ref().map(MatchedPath::as_str);
    counters.http_request(method.as_str(), path, response.status().as_u16());
    response
}
