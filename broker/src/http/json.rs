//! The gateway's JSON: records in requests and responses, and errors.
//!
//! A record in a request is `{"key": "...", "headers": {"name": "value"}, "value": "text"}`
//! (`key` and `headers` optional; `value_base64` / `key_base64` instead for bytes). A record
//! in a response carries `topic, partition, offset, timestamp, key, headers, value`, with
//! `value_base64` / `key_base64` (and `headers_base64`) in place of the text fields where the
//! bytes are not UTF-8.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use herald_protocol::{ErrorCode, Record, StoredRecord};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::BrokerError;

/// A record as a request gives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InRecord {
    pub key: Option<String>,
    pub key_base64: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub value: Option<String>,
    pub value_base64: Option<String>,
}

impl InRecord {
    /// The record to publish; `index` names it in errors.
    pub fn into_record(self, index: usize) -> Result<Record, HttpError> {
        let bytes = |text: Option<String>, b64: Option<String>, field: &str| match (text, b64) {
            (Some(_), Some(_)) => Err(HttpError::bad_request(format!(
                "record {index}: give {field} or {field}_base64, not both"
            ))),
            (Some(text), None) => Ok(Some(Bytes::from(text))),
            (None, Some(b64)) => BASE64
                .decode(b64.as_bytes())
                .map(|b| Some(b.into()))
                .map_err(|err| {
                    HttpError::bad_request(format!("record {index}: {field}_base64: {err}"))
                }),
            (None, None) => Ok(None),
        };
        let payload = bytes(self.value, self.value_base64, "value")?.ok_or_else(|| {
            HttpError::bad_request(format!("record {index}: value or value_base64 is required"))
        })?;
        let mut record = Record::new(payload);
        record.key = bytes(self.key, self.key_base64, "key")?;
        record.headers = self
            .headers
            .into_iter()
            .map(|(name, value)| (name, Bytes::from(value)))
            .collect();
        Ok(record)
    }
}

/// `bytes` as `{field: text}` when UTF-8, else `{field_base64: ...}`.
fn put_bytes(out: &mut serde_json::Map<String, Value>, field: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) => out.insert(field.to_string(), Value::String(text.to_string())),
        Err(_) => out.insert(
            format!("{field}_base64"),
            Value::String(BASE64.encode(bytes)),
        ),
    };
}

/// A stored record as responses show it.
pub fn out_record(
    topic: &str,
    partition: u32,
    stored: &StoredRecord,
) -> serde_json::Map<String, Value> {
    let record = &stored.record;
    let mut out = serde_json::Map::new();
    out.insert("topic".into(), json!(topic));
    out.insert("partition".into(), json!(partition));
    out.insert("offset".into(), json!(stored.offset));
    out.insert("timestamp".into(), json!(record.timestamp));
    match &record.key {
        Some(key) => put_bytes(&mut out, "key", key),
        None => {
            out.insert("key".into(), Value::Null);
        }
    }
    let text: Option<BTreeMap<&str, &str>> = record
        .headers
        .iter()
        .map(|(name, value)| std::str::from_utf8(value).ok().map(|v| (name.as_str(), v)))
        .collect();
    match text {
        Some(headers) => out.insert("headers".into(), json!(headers)),
        None => {
            let encoded: BTreeMap<&str, String> = record
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), BASE64.encode(value)))
                .collect();
            out.insert("headers_base64".into(), json!(encoded))
        }
    };
    put_bytes(&mut out, "value", &record.payload);
    out
}

/// An error answer: a fitting status and `{"error": {"code", "number", "message"}}`.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl HttpError {
    pub fn bad_request(message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::BAD_REQUEST,
            code: ErrorCode::InvalidArgument,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> HttpError {
        HttpError {
            status: StatusCode::NOT_FOUND,
            code: ErrorCode::NotSupported,
            message: message.into(),
        }
    }

    /// The error's JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "code": self.code.name(),
            "number": self.code as u16,
            "message": self.message,
        }})
    }
}

impl From<BrokerError> for HttpError {
    fn from(err: BrokerError) -> HttpError {
        let code = err.code();
        HttpError {
            status: status_of(code),
            code,
            message: err.to_string(),
        }
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// The HTTP status that fits a broker error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        UnknownTopic | UnknownPartition | UnknownGroup | UnknownMember | UnknownSubscription => {
            StatusCode::NOT_FOUND
        }
        TopicExists | GroupExists | GroupModeMismatch | GroupNotEmpty | StaleGeneration
        | NotPartitionOwner | OutOfOrderSequence => StatusCode::CONFLICT,
        OffsetOutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
        MessageTooLarge | BatchTooLarge | FrameTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        TooManyConnections | TooManyRequests | TooManyTopics | TooManyConsumers => {
            StatusCode::TOO_MANY_REQUESTS
        }
        StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        NotSupported => StatusCode::NOT_IMPLEMENTED,
        StorageError | Internal => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// `Json<T>` whose rejections (malformed JSON, wrong types) answer in the error shape.
pub struct JsonBody<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for JsonBody<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = HttpError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, HttpError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(rejection) => Err(HttpError {
                status: rejection.status(),
                code: ErrorCode::InvalidArgument,
                message: rejection.body_text(),
            }),
        }
    }
}

/// Serializes `value` as the JSON answer.
pub fn ok<T: Serialize>(value: T) -> Response {
    Json(value).into_response()
}
