//! The registry of topics: create, delete, look up, auto-create on publish.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::error::{valid_name, BrokerError};
use crate::storage::{blocking, RetentionPolicy, StorageError, Store};

use super::Topic;

/// Limits and defaults for topics.
#[derive(Debug, Clone)]
pub struct TopicLimits {
    /// Create a one-partition topic on the first publish to a missing one.
    pub auto_create: bool,
    /// The most topics the broker holds.
    pub max_topics: usize,
    /// The most partitions one topic may have.
    pub max_partitions: u32,
}

/// Every topic, by name.
pub struct Topics {
    store: Arc<Store>,
    limits: TopicLimits,
    by_name: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serialises creations and deletions, so two creators of one name cannot race.
    changing: tokio::sync::Mutex<()>,
}

impl Topics {
    /// Loads every stored topic. Blocks.
    pub fn load(store: Arc<Store>, limits: TopicLimits) -> Result<Topics, StorageError> {
        let mut by_name = HashMap::new();
        for record in store.load_topics()? {
            let logs = store.open_logs(&record)?;
            by_name.insert(record.name.clone(), Arc::new(Topic::new(record, logs)));
        }
        Ok(Topics {
            store,
            limits,
            by_name: RwLock::new(by_name),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    /// The store topics live in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The topic called `name`.
    pub fn get(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        let by_name = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        match by_name.get(name) {
            Some(topic) => Ok(Arc::clone(topic)),
            None if !valid_name(name) => Err(BrokerError::InvalidTopicName(name.to_string())),
            None => Err(BrokerError::UnknownTopic(name.to_string())),
        }
    }

    /// The topic called `name`, created with one partition if it is missing and
    /// auto-creation is on.
    pub async fn get_or_create(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        match self.get(name) {
            Err(BrokerError::UnknownTopic(_)) if self.limits.auto_create => {
                match self.create(name, 1, RetentionPolicy::default()).await {
                    Err(BrokerError::TopicExists(_)) => self.get(name),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// The topic called `name`, created with one partition if it is missing, whatever
    /// the auto-creation setting (for topics the broker itself writes, like dead letters).
    pub async fn ensure(&self, name: &str) -> Result<Arc<Topic>, BrokerError> {
        match self.get(name) {
            Err(BrokerError::UnknownTopic(_)) => {
                match self.create(name, 1, RetentionPolicy::default()).await {
                    Err(BrokerError::TopicExists(_)) => self.get(name),
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Creates a topic.
    pub async fn create(
        &self,
        name: &str,
        partitions: u32,
        retention: RetentionPolicy,
    ) -> Result<Arc<Topic>, BrokerError> {
        if !valid_name(name) {
            return Err(BrokerError::InvalidTopicName(name.to_string()));
        }
        if partitions == 0 {
            return Err(BrokerError::InvalidArgument(
                "a topic has at least one partition".into(),
            ));
        }
        if partitions > self.limits.max_partitions {
            return Err(BrokerError::TooManyPartitions {
                asked: partitions,
                max: self.limits.max_partitions,
            });
        }
        let _changing = self.changing.lock().await;
        {
            let by_name = self.by_name.read().unwrap_or_else(|e| e.into_inner());
            if by_name.contains_key(name) {
                return Err(BrokerError::TopicExists(name.to_string()));
            }
            if by_name.len() >= self.limits.max_topics {
                return Err(BrokerError::TooManyTopics(self.limits.max_topics));
            }
        }
        let store = Arc::clone(&self.store);
        let owned = name.to_string();
        let (record, logs) =
            blocking(move || store.create_topic(&owned, partitions, retention)).await?;
        let topic = Arc::new(Topic::new(record, logs));
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Arc::clone(&topic));
        tracing::info!(topic = name, partitions, "topic created");
        Ok(topic)
    }

    /// Deletes a topic and everything stored for it.
    pub async fn delete(&self, name: &str) -> Result<(), BrokerError> {
        let _changing = self.changing.lock().await;
        let topic = self.get(name)?;
        self.by_name
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        let store = Arc::clone(&self.store);
        let record = topic.record().clone();
        let logs = topic.partitions().to_vec();
        blocking(move || store.delete_topic(&record, &logs)).await?;
        tracing::info!(topic = name, "topic deleted");
        Ok(())
    }

    /// Every topic, sorted by name.
    pub fn list(&self) -> Vec<Arc<Topic>> {
        let by_name = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        let mut topics: Vec<_> = by_name.values().cloned().collect();
        topics.sort_by(|a, b| a.name().cmp(b.name()));
        topics
    }
}
