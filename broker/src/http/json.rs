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

/// A stored record as responses show it, written straight to the output (no map built
/// per record): `topic, partition, offset, timestamp, key, headers, value`, with the
/// `_base64` forms where the bytes are not UTF-8, then what the way it goes out adds.
pub struct OutRecord<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub stored: &'a StoredRecord,
    /// A WebSocket message's `op` and `sub` (first in the object).
    pub message: Option<(&'static str, &'a str)>,
    /// A delivery to a group: its `handle` and `delivery_count` (and `redelivered`).
    pub delivery: Option<(&'a str, u32)>,
    /// A tail's `cursor` after this record.
    pub cursor: Option<&'a str>,
}

impl<'a> OutRecord<'a> {
    pub fn new(topic: &'a str, partition: u32, stored: &'a StoredRecord) -> Self {
        OutRecord {
            topic,
            partition,
            stored,
            message: None,
            delivery: None,
            cursor: None,
        }
    }

    /// The record as one line of JSON text.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a record serializes")
    }
}

impl Serialize for OutRecord<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let record = &self.stored.record;
        let mut map = serializer.serialize_map(None)?;
        if let Some((op, sub)) = self.message {
            map.serialize_entry("op", op)?;
            map.serialize_entry("sub", sub)?;
        }
        map.serialize_entry("topic", self.topic)?;
        map.serialize_entry("partition", &self.partition)?;
        map.serialize_entry("offset", &self.stored.offset)?;
        map.serialize_entry("timestamp", &record.timestamp)?;
        match &record.key {
            Some(key) => put_bytes(&mut map, "key", "key_base64", key)?,
            None => map.serialize_entry("key", &())?,
        }
        if record
            .headers
            .iter()
            .all(|(_, value)| std::str::from_utf8(value).is_ok())
        {
            map.serialize_entry("headers", &Headers(&record.headers, false))?;
        } else {
            map.serialize_entry("headers_base64", &Headers(&record.headers, true))?;
        }
        put_bytes(&mut map, "value", "value_base64", &record.payload)?;
        if let Some((handle, count)) = self.delivery {
            map.serialize_entry("handle", handle)?;
            map.serialize_entry("delivery_count", &count)?;
            map.serialize_entry("redelivered", &(count > 1))?;
        }
        if let Some(cursor) = self.cursor {
            map.serialize_entry("cursor", cursor)?;
        }
        map.end()
    }
}

/// `bytes` as `field: text` when UTF-8, else `field_base64: ...`.
fn put_bytes<M: serde::ser::SerializeMap>(
    map: &mut M,
    field: &'static str,
    field_base64: &'static str,
    bytes: &[u8],
) -> Result<(), M::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => map.serialize_entry(field, text),
        Err(_) => map.serialize_entry(field_base64, &Base64(bytes)),
    }
}

/// Bytes serialized as base64 text, encoded as they are written.
struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&base64::display::Base64Display::new(self.0, &BASE64))
    }
}

/// A record's headers as an object of text values, or of base64 values.
struct Headers<'a>(&'a [(String, Bytes)], bool);

impl Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            match (self.1, std::str::from_utf8(value)) {
                (false, Ok(text)) => map.serialize_entry(name, text)?,
                _ => map.serialize_entry(name, &Base64(value))?,
            }
        }
        map.end()
    }
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
    /// A 401 names the schemes that would do (RFC 9110), so a browser or `curl` knows
    /// what to send.
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static(
                    "Bearer realm=\"herald\", Basic realm=\"herald\"",
                ),
            );
        }
        response
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
        AuthenticationRequired | AuthenticationFailed | CredentialsRevoked => {
            StatusCode::UNAUTHORIZED
        }
        NotAuthorized => StatusCode::FORBIDDEN,
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
