//! Looking at topics: `GET /v1/topics` and `GET /v1/topics/{topic}`.
//!
//! What a client in another language needs before it reads by offset or resumes: the
//! partitions with their first and next offsets. Creating and deleting topics stay with
//! the TCP protocol and the CLI.

use axum::response::Response;
use serde_json::json;

use super::authed::Authed;
use super::json::{ok, HttpError};
use super::PathArgs;

/// `{"topics": [{"name", "partitions"}, ...]}`, sorted by name.
pub async fn list(Authed(gateway): Authed) -> Result<Response, HttpError> {
    let topics: Vec<_> = gateway
        .core
        .list_topics()?
        .into_iter()
        .map(|t| json!({"name": t.name, "partitions": t.partitions}))
        .collect();
    Ok(ok(json!({ "topics": topics })))
}

/// `{"name", "retention": {"max_age_ms", "max_bytes", "max_messages"}, "partitions":
/// [{"partition", "first_offset", "next_offset", "bytes"}, ...]}` (0 in a retention field:
/// no limit).
pub async fn describe(
    Authed(gateway): Authed,
    PathArgs(topic): PathArgs<String>,
) -> Result<Response, HttpError> {
    let info = gateway.core.describe_topic(&topic)?;
    let partitions: Vec<_> = info
        .partitions
        .iter()
        .map(|p| {
            json!({
                "partition": p.partition,
                "first_offset": p.first_offset,
                "next_offset": p.next_offset,
                "bytes": p.bytes,
            })
        })
        .collect();
    let r = &info.retention;
    Ok(ok(json!({
        "name": info.name,
        "retention": {
            "max_age_ms": r.max_age_ms,
            "max_bytes": r.max_bytes,
            "max_messages": r.max_messages,
        },
        "partitions": partitions,
    })))
}
