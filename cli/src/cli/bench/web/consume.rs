//! Consumers through the web front door, feeding the same checks as the TCP ones
//! ([`workload::check`]): every message once, publish→delivery latency from its stamp.
//!
//! - `--via websocket`: a push-group member on `GET /v1/ws` with the plan's prefetch; it
//!   acks what it received in one `ack` message each time it has read everything the
//!   socket holds (or half its window), as a browser that acks in batches would.
//! - `--via sse`: one `GET /v1/topics/{topic}/events?from=earliest` stream, reading the
//!   whole topic (no group, no acks).

use std::sync::Arc;

use futures::{FutureExt, SinkExt, StreamExt};
use indicatif::ProgressBar;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{EventReader, Http, JsonRecord};
use crate::cli::bench::payload;
use crate::cli::bench::workload::{check, ConsumePlan, Shared};

/// One WebSocket push consumer of `plan.group`, acking everything it receives.
pub async fn run_ws_subscriber(
    http: String,
    plan: ConsumePlan,
    shared: Arc<Shared>,
    progress: ProgressBar,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(&http)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the HTTP gateway at {http}: {e}"))?;
    stream.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{http}/v1/ws"), stream)
        .await
        .map_err(|e| anyhow::anyhow!("WebSocket upgrade at {http}: {e}"))?;
    let subscribe = json!({
        "op": "subscribe",
        "id": "bench",
        "topic": plan.topic,
        "group": plan.group,
        "prefetch": plan.max_messages,
    });
    ws.send(Message::text(subscribe.to_string())).await?;
    let ack_every = (plan.max_messages as usize / 2).max(1);
    let mut headers = Vec::with_capacity(ack_every);
    let mut handles: Vec<String> = Vec::with_capacity(ack_every);
    let mut subscribed = false;
    loop {
        let first = tokio::select! {
            next = ws.next() => next,
            _ = shared.done.cancelled() => break,
        };
        let mut next = first;
        loop {
            let message = match next {
                None => anyhow::bail!("the broker closed the WebSocket"),
                Some(message) => message?,
            };
            if let Message::Text(text) = message {
                let message: JsonRecord = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("a WebSocket message that is not JSON: {e}"))?;
                match message.op.as_deref() {
                    Some("delivery") => {
                        headers.push(payload::decode(&message.payload()?));
                        let handle = message.handle.ok_or_else(|| {
                            anyhow::anyhow!("a delivery without a handle: {text}")
                        })?;
                        handles.push(handle.into_owned());
                    }
                    Some("subscribed") if !subscribed => {
                        subscribed = true;
                        if let Some(ready) = &plan.ready {
                            let _ = ready.send(());
                        }
                    }
                    Some("error") => anyhow::bail!("the broker answered: {text}"),
                    _ => {}
                }
            }
            if handles.len() >= ack_every {
                break;
            }
            match ws.next().now_or_never() {
                Some(more) => next = more,
                None => break,
            }
        }
        if !handles.is_empty() {
            let ack = json!({"op": "ack", "handles": handles});
            ws.send(Message::text(ack.to_string())).await?;
            handles.clear();
        }
        check(&plan, &shared, &headers, &progress);
        headers.clear();
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// One Server-Sent Events stream of `plan.topic` from its first record.
pub async fn run_sse_stream(
    http: String,
    plan: ConsumePlan,
    shared: Arc<Shared>,
    progress: ProgressBar,
) -> anyhow::Result<()> {
    // Dropping the connection ends the stream, so it lives as long as the reading.
    let mut connection = Http::connect(&http).await?;
    let path = format!("/v1/topics/{}/events?from=earliest", plan.topic);
    let mut events = EventReader::open(&mut connection, &path).await?;
    if let Some(ready) = &plan.ready {
        let _ = ready.send(());
    }
    let mut headers = Vec::new();
    loop {
        events.drain(|name, data| {
            if name != b"record" {
                anyhow::bail!(
                    "unexpected {} event: {}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(data)
                );
            }
            headers.push(payload::decode(&super::record_value(data)?));
            Ok(())
        })?;
        check(&plan, &shared, &headers, &progress);
        headers.clear();
        let more = tokio::select! {
            more = events.fill() => more?,
            _ = shared.done.cancelled() => break,
        };
        if !more {
            anyhow::bail!("the broker ended the event stream");
        }
    }
    drop(connection);
    Ok(())
}
