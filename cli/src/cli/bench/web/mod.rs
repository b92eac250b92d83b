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
use bytes::{Buf, Bytes, BytesMut};
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
    blank_line: memchr::memmem::Finder<'static>,
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
    /// Opens the event stream at `path` on `http` and reads its first event, which must
    /// be the broker's `hello`.
    pub async fn open(http: &mut Http, path: &str) -> anyhow::Result<EventReader> {
        let response = http
            .send(
                "GET",
                path,
                &[("accept", "text/event-stream")],
                Bytes::new(),
            )
            .await?;
        let mut events = EventReader::new(response)?;
        match events.next().await? {
            Some(event) if event.is("hello") => Ok(events),
            _ => anyhow::bail!("the event stream did not start with its hello event"),
        }
    }

    fn new(response: Response<Incoming>) -> anyhow::Result<EventReader> {
        if response.status() != StatusCode::OK {
            anyhow::bail!("the event stream answered {}", response.status());
        }
        Ok(EventReader {
            body: response.into_body(),
            buf: BytesMut::new(),
            scanned: 0,
            blank_line: memchr::memmem::Finder::new(b"\n\n"),
        })
    }

    /// The next event; `None` when the stream ends. Comments (keep-alives) are skipped.
    pub async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            let mut event = None;
            self.drain_while(|name, data| {
                event = Some(Event {
                    name: Bytes::copy_from_slice(name),
                    data: Bytes::copy_from_slice(data),
                });
                Ok(false)
            })?;
            if event.is_some() {
                return Ok(event);
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads what the broker sent next into the buffer; false when the stream ended.
    pub async fn fill(&mut self) -> anyhow::Result<bool> {
        loop {
            match self.body.frame().await {
                None => return Ok(false),
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        self.buf.extend_from_slice(&data);
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Hands every whole event already read to `each` (its name and data, in place), and
    /// returns how many there were.
    pub fn drain(
        &mut self,
        mut each: impl FnMut(&[u8], &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<usize> {
        let mut count = 0;
        self.drain_while(|name, data| {
            count += 1;
            each(name, data).map(|()| true)
        })?;
        Ok(count)
    }

    /// Hands whole events to `each` while it returns true.
    fn drain_while(
        &mut self,
        mut each: impl FnMut(&[u8], &[u8]) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let mut at = 0;
        loop {
            let from = at.max(self.scanned);
            let Some(found) = self.blank_line.find(&self.buf[from..]) else {
                // Nothing more is whole: next time, look at what arrives (and the last byte).
                self.buf.advance(at);
                self.scanned = self.buf.len().saturating_sub(1);
                return Ok(());
            };
            let end = from + found;
            let block = &self.buf[at..end];
            at = end + 2;
            if let Some((name, data)) = fields(block) {
                if !each(name, &data)? {
                    self.buf.advance(at);
                    self.scanned = 0;
                    return Ok(());
                }
            }
        }
    }
}

/// An event's name (`message` when it has none) and its data lines joined; `None` for a
/// block of comments only.
fn fields(block: &[u8]) -> Option<(&[u8], Cow<'_, [u8]>)> {
    let mut name: &[u8] = b"message";
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in memchr::memchr_iter(b'\n', block)
        .chain([block.len()])
        .scan(0, |start, end| {
            let line = &block[*start..end];
            *start = end + 1;
            Some(line)
        })
    {
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => continue, // a comment
            Some(i) => (
                &line[..i],
                line[i + 1..].strip_prefix(b" ").unwrap_or(&line[i + 1..]),
            ),
            None => (line, &b""[..]),
        };
        match field {
            b"event" => name = value,
            b"data" => {
                data = Some(match data.take() {
                    None => Cow::Borrowed(value),
                    Some(before) => Cow::Owned([&before[..], b"\n", value].concat()),
                })
            }
            _ => {}
        }
    }
    if data.is_none() && name == b"message" {
        return None;
    }
    Some((name, data.unwrap_or_default()))
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
pub fn record_value(json: &[u8]) -> anyhow::Result<Cow<'_, [u8]>> {
    const FIELD: &[u8] = b"\"value\":\"";
    static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
        std::sync::OnceLock::new();
    let finder = FINDER.get_or_init(|| memchr::memmem::Finder::new(FIELD));
    if let Some(at) = finder.find(json) {
        let start = at + FIELD.len();
        if let Some(len) = memchr::memchr2(b'"', b'\\', &json[start..]) {
            if json[start + len] == b'"' {
                return Ok(Cow::Borrowed(&json[start..start + len]));
            }
        }
    }
    let record: JsonRecord = serde_json::from_slice(json)
        .map_err(|e| anyhow::anyhow!("an event that is not a record: {e}"))?;
    Ok(Cow::Owned(record.payload()?.to_vec()))
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
