//! Group administration: creating, resetting, deleting, listing and describing a topic's
//! pull and push groups.

use std::sync::Arc;

use herald_protocol::{GroupInfo, GroupMode, GroupPartitionInfo, GroupSummary, MemberInfo};

use super::{Core, GroupSpec};
use crate::auth::rules::Operation;
use crate::domain::group::MODE_PUSH;
use crate::domain::pull_group::ResetTo;
use crate::domain::Topic;
use crate::error::{valid_name, BrokerError};
use crate::storage::GroupRecord;

impl Core {
    // Group administration.

    pub async fn create_group(
        &self,
        topic: &str,
        group: &str,
        spec: GroupSpec,
    ) -> Result<(), BrokerError> {
        self.check(Operation::Consume, topic)?;
        if !spec.dead_letter.is_empty() {
            self.check(Operation::Publish, &spec.dead_letter)?;
        }
        let topic = self.shared.topics.get(topic)?;
        if spec.mode == GroupMode::Pull {
            return self
                .shared
                .pull_groups
                .create(&topic, group, spec.start)
                .await;
        }
        if !spec.dead_letter.is_empty() && !valid_name(&spec.dead_letter) {
            return Err(BrokerError::InvalidTopicName(spec.dead_letter));
        }
        let record = GroupRecord {
            mode: MODE_PUSH,
            ack_timeout_ms: spec.ack_timeout_ms,
            max_deliveries: spec.max_deliveries,
            dead_letter: spec.dead_letter,
        };
        self.shared
            .push_groups
            .create(&topic, group, spec.start, record)
            .await
    }

    pub async fn reset_group(
        &self,
        topic: &str,
        group: &str,
        to: ResetTo,
    ) -> Result<(), BrokerError> {
        self.check(Operation::Consume, topic)?;
        let topic = self.shared.topics.get(topic)?;
        self.shared.pull_groups.reset(&topic, group, to).await
    }

    pub async fn delete_group(&self, topic: &str, group: &str) -> Result<(), BrokerError> {
        self.check(Operation::Consume, topic)?;
        let topic = self.shared.topics.get(topic)?;
        self.shared.pull_groups.delete(&topic, group).await
    }

    /// The topic's groups with their mode and members (pull) or subscribers (push).
    pub async fn list_groups(&self, topic: &str) -> Result<Vec<GroupSummary>, BrokerError> {
        self.check(Operation::Describe, topic)?;
        let topic = self.shared.topics.get(topic)?;
        let mut groups = Vec::new();
        for (name, mode, members) in self.shared.pull_groups.list(&topic).await? {
            let members = if mode == MODE_PUSH {
                let push = &self.shared.push_groups;
                push.consumer_count(topic.record().id, &name).await
            } else {
                members
            };
            groups.push(GroupSummary {
                name,
                mode: mode_of(mode),
                members,
            });
        }
        Ok(groups)
    }

    /// A group's settings, members or subscribers, and progress (lag) per partition.
    pub async fn describe_group(&self, topic: &str, group: &str) -> Result<GroupInfo, BrokerError> {
        self.check(Operation::Describe, topic)?;
        let t = self.shared.topics.get(topic)?;
        let Some(described) = self.shared.pull_groups.describe(&t, group).await? else {
            return Err(BrokerError::UnknownGroup(group.to_string()));
        };
        if described.record.mode == MODE_PUSH {
            return self.describe_push(&t, group).await;
        }
        let members = described
            .members
            .into_iter()
            .map(|(member_id, address, partitions)| MemberInfo {
                member_id,
                address,
                partitions,
                in_flight: 0,
                oldest_unacked_ms: 0,
            })
            .collect();
        let partitions = described
            .partitions
            .into_iter()
            .map(|p| GroupPartitionInfo {
                partition: p.partition,
                owner: p.owner.unwrap_or_default(),
                committed: p.committed,
                end: p.end,
                lag: p.end.saturating_sub(p.committed),
            })
            .collect();
        let record = described.record;
        Ok(GroupInfo {
            topic: topic.to_string(),
            group: group.to_string(),
            mode: mode_of(record.mode),
            generation: described.generation,
            ack_timeout_ms: record.ack_timeout_ms,
            max_deliveries: record.max_deliveries,
            dead_letter: record.dead_letter,
            members,
            partitions,
            redelivered: 0,
            dead_lettered: 0,
        })
    }

    async fn describe_push(
        &self,
        topic: &Arc<Topic>,
        group: &str,
    ) -> Result<GroupInfo, BrokerError> {
        let described = self.shared.push_groups.describe(topic, group).await?;
        let members = described
            .consumers
            .into_iter()
            .map(|consumer| MemberInfo {
                member_id: format!("subscription-{}", consumer.subscription),
                address: consumer.address,
                partitions: Vec::new(),
                in_flight: consumer.in_flight,
                oldest_unacked_ms: consumer.oldest.as_millis() as u64,
            })
            .collect();
        let partitions = described
            .partitions
            .into_iter()
            .map(|progress| GroupPartitionInfo {
                partition: progress.partition,
                owner: String::new(),
                committed: progress.floor,
                end: progress.end,
                lag: progress.left,
            })
            .collect();
        let settings = described.settings;
        Ok(GroupInfo {
            topic: topic.name().to_string(),
            group: group.to_string(),
            mode: GroupMode::Push,
            generation: 0,
            ack_timeout_ms: settings.ack_timeout_ms,
            max_deliveries: settings.max_deliveries,
            dead_letter: settings.dead_letter,
            members,
            partitions,
            redelivered: described.redelivered,
            dead_lettered: described.dead_lettered,
        })
    }
}

fn mode_of(mode: u8) -> GroupMode {
    if mode == MODE_PUSH {
        GroupMode::Push
    } else {
        GroupMode::Pull
    }
}
