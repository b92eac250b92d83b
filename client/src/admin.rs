//! Topic and group administration calls.

use herald_protocol::{
    CreateGroup, CreateTopic, DeleteGroup, DeleteTopic, DescribeGroup, DescribeTopic, GroupInfo,
    GroupMode, GroupSummary, ListGroups, ListTopics, ResetGroup, ResetTarget, Retention,
    StartPosition, TopicInfo, TopicSummary,
};

use crate::client::{expect_reply, Client};

/// Deliveries of one record before it is dead-lettered, unless a group says otherwise.
pub const DEFAULT_MAX_DELIVERIES: u32 = 20;

/// A push group's settings; `None` takes the default.
#[derive(Debug, Clone, Default)]
pub struct PushGroupSettings {
    /// Where the new group starts.
    pub start: StartPosition,
    /// How long a delivery may stay unanswered before it goes to another consumer
    /// (default 30 s).
    pub ack_timeout: Option<std::time::Duration>,
    /// Deliveries of one record before it goes to the dead-letter topic (default 20;
    /// `Some(0)` = unlimited).
    pub max_deliveries: Option<u32>,
    /// The dead-letter topic (default `<topic>.dlq`).
    pub dead_letter: Option<String>,
}
use crate::error::Result;

impl Client {
    /// Creates a topic with `partitions` partitions and no retention limit.
    pub async fn create_topic(&self, name: &str, partitions: u32) -> Result<TopicInfo> {
        self.create_topic_with(name, partitions, Retention::default())
            .await
    }

    /// Creates a topic with per-partition retention limits (0 = unlimited).
    pub async fn create_topic_with(
        &self,
        name: &str,
        partitions: u32,
        retention: Retention,
    ) -> Result<TopicInfo> {
        let request = CreateTopic {
            name: name.to_string(),
            partitions,
            retention,
        };
        expect_reply!(self.call(request).await?, TopicInfo)
    }

    /// Deletes a topic and all its records.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        expect_reply!(
            self.call(DeleteTopic {
                name: name.to_string()
            })
            .await?,
            Ok
        )
        .map(drop)
    }

    /// Every topic, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicSummary>> {
        Ok(expect_reply!(self.call(ListTopics {}).await?, TopicList)?.topics)
    }

    /// A topic's settings and partitions.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        expect_reply!(
            self.call(DescribeTopic {
                name: name.to_string()
            })
            .await?,
            TopicInfo
        )
    }

    /// A topic's consumer groups, sorted by name.
    pub async fn list_groups(&self, topic: &str) -> Result<Vec<GroupSummary>> {
        Ok(expect_reply!(
            self.call(ListGroups {
                topic: topic.to_string()
            })
            .await?,
            GroupList
        )?
        .groups)
    }

    /// A group's settings, members and progress.
    pub async fn describe_group(&self, topic: &str, group: &str) -> Result<GroupInfo> {
        let request = DescribeGroup {
            topic: topic.to_string(),
            group: group.to_string(),
        };
        expect_reply!(self.call(request).await?, GroupInfo)
    }

    /// Creates a pull group that starts at `start`; fails with `GroupExists` if it exists.
    pub async fn create_pull_group(
        &self,
        topic: &str,
        group: &str,
        start: StartPosition,
    ) -> Result<()> {
        let request = CreateGroup {
            topic: topic.to_string(),
            group: group.to_string(),
            mode: GroupMode::Pull,
            start,
            ..CreateGroup::default()
        };
        expect_reply!(self.call(request).await?, Ok).map(drop)
    }

    /// Creates a push group with explicit settings; fails with `GroupExists` if it exists.
    /// (Without this, the first subscriber creates the group with the defaults.)
    pub async fn create_push_group(
        &self,
        topic: &str,
        group: &str,
        settings: PushGroupSettings,
    ) -> Result<()> {
        let request = CreateGroup {
            topic: topic.to_string(),
            group: group.to_string(),
            mode: GroupMode::Push,
            start: settings.start,
            ack_timeout_ms: settings
                .ack_timeout
                .map_or(0, |d| d.as_millis().clamp(1, u128::from(u32::MAX)) as u32),
            max_deliveries: settings.max_deliveries.unwrap_or(DEFAULT_MAX_DELIVERIES),
            dead_letter: settings.dead_letter.unwrap_or_default(),
        };
        expect_reply!(self.call(request).await?, Ok).map(drop)
    }

    /// Moves a group on every partition; only while it has no members. An offset is
    /// clamped to each partition's retained range.
    pub async fn reset_group(&self, topic: &str, group: &str, to: ResetTarget) -> Result<()> {
        let request = ResetGroup {
            topic: topic.to_string(),
            group: group.to_string(),
            to,
        };
        expect_reply!(self.call(request).await?, Ok).map(drop)
    }

    /// Deletes a group without members and its committed offsets.
    pub async fn delete_group(&self, topic: &str, group: &str) -> Result<()> {
        let request = DeleteGroup {
            topic: topic.to_string(),
            group: group.to_string(),
        };
        expect_reply!(self.call(request).await?, Ok).map(drop)
    }
}
