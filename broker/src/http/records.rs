//! Publishing and reading a partition: `POST /v1/topics/{topic}/records` and
//! `GET /v1/topics/{topic}/partitions/{p}/records` (a long-poll).

use std::time::Duration;

use axum::response::Response;
use herald_protocol::{encode_batch, read_batches};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::authed::Authed;
use super::json::{ok, HttpError, InRecord, JsonBody, OutRecord};
use super::{PathArgs, QueryArgs};
use crate::core::{Core, FetchArgs};
use crate::error::BrokerError;
use crate::storage::Durability;

/// The most a long-poll may wait, so a forgotten request does not hold a connection
/// for ever.
pub const MAX_WAIT_MS: u64 = 60_000;
/// Records one read answers with when the request names no `max_records`.
const DEFAULT_MAX_RECORDS: u32 = 500;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    records: Vec<InRecord>,
}

/// Answers once every record is confirmed under the broker's fsync policy.
pub async fn publish(
    Authed(gateway): Authed,
    PathArgs(topic): PathArgs<String>,
    JsonBody(body): JsonBody<PublishBody>,
) -> Result<Response, HttpError> {
    Ok(ok(
        publish_records(&gateway.core, &topic, body.records).await?
    ))
}

/// Publishes `records` to `topic`; once they are confirmed under the fsync policy,
/// returns `{"offsets": [{"partition", "offset"}, ...], "durability": ...}` (HTTP and
/// WebSocket publishing alike).
pub(super) async fn publish_records(
    core: &Core,
    topic: &str,
    records: Vec<InRecord>,
) -> Result<Value, HttpError> {
    if records.is_empty() {
        return Err(HttpError::bad_request("records is empty"));
    }
    // Refused before encoding, as the TCP protocol's batches are (and a batch's count has
    // 24 bits, which a large enough body could pass).
    let max = core
        .config()
        .max_batch_records
        .min(herald_protocol::record::MAX_BATCH_RECORDS);
    if records.len() > max as usize {
        return Err(BrokerError::BatchTooLarge {
            records: u32::try_from(records.len()).unwrap_or(u32::MAX),
            max,
        }
        .into());
    }
    let records = records
        .into_iter()
        .enumerate()
        .map(|(i, record)| record.into_record(i))
        .collect::<Result<Vec<_>, _>>()?;
    let committed = core
        .publish(topic, encode_batch(&records), None, None)
        .await?;
    let published = committed.await?;
    let offsets: Vec<Value> = published
        .runs
        .iter()
        .flat_map(|run| {
            (0..u64::from(run.count))
                .map(move |i| json!({"partition": run.partition, "offset": run.base_offset + i}))
        })
        .collect();
    let durability = match published.durability {
        Durability::Synced => "synced",
        Durability::Buffered => "buffered",
    };
    Ok(json!({"offsets": offsets, "durability": durability}))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    offset: u64,
    max_records: Option<u32>,
    #[serde(default)]
    wait_ms: u64,
}

/// Answers as soon as a record exists at `offset` or after `wait_ms` (at most
/// [`MAX_WAIT_MS`]); `wait_ms=0` is a short poll. Waiting is a parked future, no CPU.
pub async fn read(
    Authed(gateway): Authed,
    PathArgs((topic, partition)): PathArgs<(String, u32)>,
    QueryArgs(query): QueryArgs<ReadQuery>,
) -> Result<Response, HttpError> {
    let max_records = query.max_records.unwrap_or(DEFAULT_MAX_RECORDS).max(1);
    let args = FetchArgs {
        topic: topic.clone(),
        partition,
        offset: query.offset,
        max_messages: max_records,
        max_bytes: gateway.core.config().max_frame_bytes,
        min_bytes: 1,
        max_wait: Duration::from_millis(query.wait_ms.min(MAX_WAIT_MS)),
    };
    // A client that goes away drops this future, and the wait with it.
    let fetched = gateway.core.fetch(args, &CancellationToken::new()).await?;
    let mut stored_records = Vec::new();
    let mut next_offset = query.offset;
    let batches = read_batches(fetched.batches)
        .map_err(|err| HttpError::from(crate::error::BrokerError::BadBatch(err)))?;
    for batch in batches {
        for stored in batch.iter() {
            let stored =
                stored.map_err(|err| HttpError::from(crate::error::BrokerError::BadBatch(err)))?;
            if stored.offset < query.offset {
                continue;
            }
            if stored_records.len() as u32 >= max_records {
                break;
            }
            next_offset = stored.offset + 1;
            stored_records.push(stored);
        }
    }
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        records: Vec<OutRecord<'a>>,
        next_offset: u64,
    }
    let records = stored_records
        .iter()
        .map(|stored| OutRecord::new(&topic, partition, stored))
        .collect();
    Ok(ok(Answer {
        records,
        next_offset,
    }))
}
