//! The broker's semantics: topics and their partitions, publishing, consumer groups.
//! Nothing here knows a frame or a socket; requests arrive as plain values.

pub mod ack_state;
pub mod assignment;
pub mod flights;
pub mod group;
pub mod pull_group;
pub mod push_group;
pub mod topic;
pub mod topics;

pub use pull_group::PullGroups;
pub use push_group::PushGroups;
pub use topic::{Published, Run, Topic};
pub use topics::{TopicLimits, Topics};

use crate::error::BrokerError;
use crate::storage::StorageError;

/// Runs blocking domain work (sled calls) off the async worker threads.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, BrokerError>
where
    F: FnOnce() -> Result<T, BrokerError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| BrokerError::Storage(StorageError::Closed))?
}
