//! The bench's clients for the broker's web front door (`--via http|websocket|sse`):
//! what a service in another language or a browser does, over plain HTTP/1.1 (hyper) and
//! WebSocket (tungstenite) connections of their own.
//!
//! - [`publish`]: producers that `POST /v1/topics/{topic}/records` one batch at a time;
//! - [`consume`]: WebSocket push consumers that ack every delivery, and SSE streams that
//!   read a topic from its start;
//! - [`idle`]: thousands of open streams or long-polls with nothing to deliver, and what
//!   they cost the broker.

pub mod consume;
#[cfg(target_os = "linux")]
pub mod idle;
pub mod publish;

use std::borrow::Cow;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// One keep-alive HTTP/1.1 connection to the gateway; requests on it go one at a time.
pub struct Http {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    /// Drives the connection; aborted when the connection is dropped.
    driver: JoinHandle<()>,
}

impl Drop for Http {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Http {
    pub async fn connect(addr: &str) -> anyhow::Result<Http> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the HTTP gateway at {addr}: {e}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| anyhow::anyhow!("HTTP handshake with {addr}: {e}"))?;
        let driver = tokio::spawn(async move {
            // Its end shows up as an error of the request that was on it.
            let _ = connection.await;
        });
        Ok(Http {
            sender,
            host: addr.to_string(),
            driver,
        })
    }

    /// Sends `request` built for `method path` with `body`, and returns the response head
    /// with its body still to read.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Response<Incoming>> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if !body.is_empty() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.sender.ready().await?;
        Ok(self
            .sender
            .send_request(request.body(Full::new(body))?)
            .await?)
    }

    /// `send`, reading the whole body; a status other than 200 is an error naming it.
    pub async fn call(&mut self, method: &str, path: &str, body: Bytes) -> anyhow::Result<Bytes> {
        let response = self.send(method, path, &[], body).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if status != StatusCode::OK {
            anyhow::bail!(
                "{method} {path}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(body)
    }
}

/// Reads Server-Sent Events off a response body.
pub struct EventReader {
    body: Incoming,
    buf: BytesMut,
    /// How far `buf` is known to hold no event's end.
    scanned: usize,
}

/// One event: its name (`message` when it has none) and its data lines joined.
pub struct Event {
    name: Bytes,
    pub data: Bytes,
}

impl Event {
    pub fn is(&self, name: &str) -> bool {
        self.name == name.as_bytes()
    }

    pub fn name(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.name)
    }
}

impl EventReader {
    pub fn new(response: Response<Incoming>) -> anyhow::Result<EventReader> {
        if response.status() != StatusCode::OK {
            anyhow::bail!("the event stream answered {}", response.status());
        }
        Ok(EventReader {
            body: response.into_body(),
            buf: BytesMut::new(),
            scanned: 0,
        })
    }

    /// The next event; `None` when the stream ends. Comments (keep-alives) are skipped.
    pub async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(event) = self.buffered() {
                return Ok(Some(event));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event if it has already arrived whole, without waiting.
    pub fn buffered(&mut self) -> Option<Event> {
        loop {
            let Some(found) = memchr::memmem::find(&self.buf[self.scanned..], b"\n\n") else {
                self.scanned = self.buf.len().saturating_sub(1);
                return None;
            };
            let end = self.scanned + found;
            self.scanned = 0;
            let block = self.buf.split_to(end + 2).freeze();
            let mut name = Bytes::from_static(b"message");
            let mut data: Option<Bytes> = None;
            let mut at = 0;
            while at < end {
                let line_end = memchr::memchr(b'\n', &block[at..end]).map_or(end, |i| at + i);
                let line = at..line_end;
                at = line_end + 1;
                let (field, value) = match memchr::memchr(b':', &block[line.clone()]) {
                    Some(0) => continue, // a comment
                    Some(i) => {
                        let colon = line.start + i;
                        let skip = usize::from(block.get(colon + 1) == Some(&b' '));
                        (
                            line.start..colon,
                            (colon + 1 + skip).min(line.end)..line.end,
                        )
                    }
                    None => (line.clone(), line.end..line.end),
                };
                match &block[field] {
                    b"event" => name = block.slice(value),
                    b"data" => {
                        data = Some(match data.take() {
                            None => block.slice(value),
                            Some(before) => [&before[..], b"\n", &block[value]].concat().into(),
                        })
                    }
                    _ => {}
                }
            }
            if data.is_some() || name != "message".as_bytes() {
                return Some(Event {
                    name,
                    data: data.unwrap_or_default(),
                });
            }
        }
    }
}

/// The parts of a record in the gateway's JSON that the bench reads.
#[derive(Deserialize)]
pub struct JsonRecord<'a> {
    /// A WebSocket message's kind (`delivery`, `subscribed`, `error`, ...).
    #[serde(borrow)]
    pub op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    value: Option<Cow<'a, str>>,
    #[serde(borrow)]
    value_base64: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub handle: Option<Cow<'a, str>>,
}

impl JsonRecord<'_> {
    /// The record's value bytes: its text, or its base64 decoded.
    pub fn payload(&self) -> anyhow::Result<Bytes> {
        match (&self.value, &self.value_base64) {
            (Some(text), _) => Ok(Bytes::copy_from_slice(text.as_bytes())),
            (None, Some(encoded)) => Ok(base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())?
                .into()),
            (None, None) => anyhow::bail!("a record without value or value_base64"),
        }
    }
}

/// A record's value from its JSON text. The bench's payloads are plain text, so the value
/// is found without parsing the whole record; anything else (escapes, base64) takes the
/// full parse.
pub fn record_value(json: &[u8]) -> anyhow::Result<Bytes> {
    const FIELD: &[u8] = b"\"value\":\"";
    if let Some(at) = memchr::memmem::find(json, FIELD) {
        let start = at + FIELD.len();
        if let Some(len) = memchr::memchr2(b'"', b'\\', &json[start..]) {
            if json[start + len] == b'"' {
                return Ok(Bytes::copy_from_slice(&json[start..start + len]));
            }
        }
    }
    let record: JsonRecord = serde_json::from_slice(json)
        .map_err(|e| anyhow::anyhow!("an event that is not a record: {e}"))?;
    record.payload()
}

/// A record of a request body: the value as text where it is UTF-8, else in base64, as a
/// client in another language would send it.
pub fn json_record(payload: &[u8], out: &mut Vec<u8>) {
    match std::str::from_utf8(payload) {
        Ok(text) => {
            out.extend_from_slice(b"{\"value\":");
            serde_json::to_writer(&mut *out, text).expect("a string serializes");
            out.push(b'}');
        }
        Err(_) => {
            out.extend_from_slice(b"{\"value_base64\":\"");
            let start = out.len();
            let len = base64::encoded_len(payload.len(), true).expect("a payload's length");
            out.resize(start + len, 0);
            let written = base64::engine::general_purpose::STANDARD
                .encode_slice(payload, &mut out[start..])
                .expect("room for the encoding");
            out.truncate(start + written);
            out.extend_from_slice(b"\"}");
        }
    }
}
