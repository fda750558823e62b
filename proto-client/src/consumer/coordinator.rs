//! The group coordinator, from the consumer's side: finding it and the
//! offset requests (OffsetFetch, OffsetCommit). Group membership requests
//! go through [`GroupCoordinator::send`] too.
//!
//! A coordinator that moved (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE) or
//! whose connection broke is looked up again; one that is loading
//! (COORDINATOR_LOAD_IN_PROGRESS) is retried; both with backoff, within the
//! caller's deadline.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, GroupId, OffsetCommitRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use crate::TopicPartition;
use crate::client::Client;
use crate::error::{Error, Result};
use crate::net::broker::BrokerLink;
use crate::net::{BrokerAddress, Connection};
use crate::retry::Retrier;
use crate::wire::ApiRequest;

/// Who commits: a group member of a generation, or nobody in particular
/// (a consumer that assigns its own partitions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Committer {
    /// The classic generation, or the KIP-848 member epoch.
    pub(crate) generation: i32,
    pub(crate) member_id: String,
    pub(crate) instance_id: Option<String>,
    /// A KIP-848 member: its commits go at OffsetCommit v9, which Kafka
    /// requires of them; a classic group's stop at v8.
    pub(crate) member_epoch: bool,
}

impl Committer {
    /// Commits outside any generation (`assign`), as Java's simple consumer.
    pub(crate) fn standalone() -> Self {
        Committer { generation: -1, member_id: String::new(), instance_id: None, member_epoch: false }
    }
}

/// An offset to commit: the next offset to consume, and the leader epoch
/// of the last record consumed, when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommitOffset {
    pub(crate) offset: i64,
    pub(crate) leader_epoch: Option<i32>,
}

/// The coordinator of one group.
#[derive(Debug)]
pub(crate) struct GroupCoordinator {
    client: Client,
    group: String,
    /// FindCoordinator's key type: 0 a group, 1 a transactional id.
    key_type: i8,
    current: Mutex<Option<Arc<BrokerLink>>>,
}

fn str(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

impl GroupCoordinator {
    pub(crate) fn new(client: Client, group: String) -> Self {
        GroupCoordinator { client, group, key_type: 0, current: Mutex::new(None) }
    }

    /// Whose coordinator this is, for messages.
    fn what(&self) -> String {
        match self.key_type {
            0 => format!("group {}", self.group),
            _ => format!("transactional id {}", self.group),
        }
    }

    /// The transaction coordinator of `transactional_id`.
    pub(crate) fn for_transactions(client: Client, transactional_id: String) -> Self {
        GroupCoordinator { client, group: transactional_id, key_type: 1, current: Mutex::new(None) }
    }

    /// Looks the coordinator up (or takes the one known) and says its node.
    pub(crate) async fn find_node(&self) -> Result<i32> {
        self.find().await.map(|link| link.id())
    }

    fn cached(&self) -> Option<Arc<BrokerLink>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets the coordinator: the next request looks it up again.
    pub(crate) fn invalidate(&self) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn find(&self) -> Result<Arc<BrokerLink>> {
        if let Some(link) = self.cached() {
            return Ok(link);
        }
        let connection = self.client.any_connection().await?;
        let version = connection.version_for::<FindCoordinatorRequest>()?;
        if self.key_type != 0 && version < 1 {
            return Err(Error::UnsupportedApi {
                broker: connection.broker().to_owned(),
                api: ApiKey::FindCoordinator,
                ours: "1.. (for transactions)".to_owned(),
                theirs: "0".to_owned(),
            });
        }
        let mut request = FindCoordinatorRequest::default().with_key_type(self.key_type);
        if version >= 4 {
            request.coordinator_keys = vec![str(&self.group)];
        } else {
            request.key = str(&self.group);
        }
        let response = connection.send_at(&request, version, self.client.config().request_timeout).await?;
        let (code, message, node, host, port) = if version >= 4 {
            let Some(found) = response.coordinators.first() else {
                return Err(Error::protocol(connection.broker(), "FindCoordinator answered no coordinator"));
            };
            (found.error_code, found.error_message.clone(), found.node_id.0, found.host.clone(), found.port)
        } else {
            (
                response.error_code,
                response.error_message.clone(),
                response.node_id.0,
                response.host.clone(),
                response.port,
            )
        };
        crate::error::check_with_message(ApiKey::FindCoordinator, code, message.as_deref(), || self.what())?;
        let port = u16::try_from(port)
            .map_err(|_| Error::protocol(connection.broker(), format!("coordinator port {port}")))?;
        let link = self.client.cluster().coordinator_link(node, BrokerAddress::new(host.as_str(), port));
        debug!(target: "rill::cgrp", of = %self.what(), coordinator = node, address = %link.address(), "coordinator found");
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(link.clone());
        Ok(link)
    }

    /// The coordinator's node id, once found.
    pub(crate) fn node(&self) -> Option<i32> {
        self.cached().map(|link| link.id())
    }

    /// A connection to the coordinator (found first if needed).
    pub(crate) async fn connection(&self) -> Result<Connection> {
        let link = self.find().await?;
        match link.connection().await {
            Ok(connection) => Ok(connection),
            Err(error) => {
                self.invalidate();
                Err(error)
            }
        }
    }

    /// Sends one request to the coordinator; a broken connection or a
    /// coordinator error in `code_of(response)` forgets the coordinator.
    pub(crate) async fn send<R: ApiRequest>(&self, build: impl Fn(i16) -> R, timeout: Duration) -> Result<R::Response> {
        self.send_at_most(build, timeout, i16::MAX).await
    }

    /// [`Self::send`] at version `max` or lower.
    pub(crate) async fn send_at_most<R: ApiRequest>(
        &self,
        build: impl Fn(i16) -> R,
        timeout: Duration,
        max: i16,
    ) -> Result<R::Response> {
        let connection = self.connection().await?;
        let version = connection.version_for::<R>()?.min(max);
        let result = connection.send_at(&build(version), version, timeout).await;
        if matches!(result, Err(Error::ConnectionClosed { .. } | Error::RequestTimeout { .. })) {
            self.invalidate();
        }
        result
    }

    /// Forgets the coordinator when `code` says it moved or is down.
    pub(crate) fn check_coordinator(&self, code: i16) {
        if matches!(
            ResponseError::try_from_code(code),
            Some(ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable)
        ) {
            self.invalidate();
        }
    }

    /// Handles a coordinator-level error code: moved or unavailable
    /// coordinators are forgotten. Returns the error for the caller.
    pub(crate) fn check(&self, api: ApiKey, code: i16, context: &str) -> Result<()> {
        match ResponseError::try_from_code(code) {
            None => Ok(()),
            Some(code) => {
                if matches!(code, ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable) {
                    self.invalidate();
                }
                Err(Error::broker(api, code, format!("group {} {context}", self.group)))
            }
        }
    }

    /// Committed offsets of `partitions` (`None`: nothing committed),
    /// retried within `timeout`.
    pub(crate) async fn fetch_offsets(
        &self,
        partitions: &[TopicPartition],
        timeout: Duration,
    ) -> Result<BTreeMap<TopicPartition, Option<CommitOffset>>> {
        let mut retry =
            Retrier::new(self.client.config(), format!("fetching offsets of group {}", self.group), timeout);
        loop {
            match self.fetch_offsets_once(Some(partitions)).await {
                Ok(found) => return Ok(found),
                Err(error) => {
                    retry.after(error).await?;
                }
            }
        }
    }

    /// Every offset the group has committed, retried within `timeout`.
    pub(crate) async fn fetch_all_offsets(&self, timeout: Duration) -> Result<BTreeMap<TopicPartition, CommitOffset>> {
        let mut retry =
            Retrier::new(self.client.config(), format!("listing the offsets of group {}", self.group), timeout);
        loop {
            match self.fetch_offsets_once(None).await {
                Ok(found) => {
                    return Ok(found.into_iter().filter_map(|(tp, offset)| Some((tp, offset?))).collect());
                }
                Err(error) => {
                    retry.after(error).await?;
                }
            }
        }
    }

    /// One OffsetFetch: of `partitions`, or (`None`, v2+) of every
    /// partition the group committed.
    async fn fetch_offsets_once(
        &self,
        partitions: Option<&[TopicPartition]>,
    ) -> Result<BTreeMap<TopicPartition, Option<CommitOffset>>> {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions.unwrap_or_default() {
            topics.entry(tp.topic.as_str()).or_default().push(tp.partition);
        }
        let timeout = self.client.config().request_timeout;
        let connection = self.connection().await?;
        if partitions.is_none() && connection.version_for::<OffsetFetchRequest>()? < 2 {
            return Err(Error::UnsupportedApi {
                broker: connection.broker().to_owned(),
                api: ApiKey::OffsetFetch,
                ours: "2..7 (for all of a group's offsets)".to_owned(),
                theirs: connection
                    .api_versions()
                    .negotiate(ApiKey::OffsetFetch, <OffsetFetchRequest as ApiRequest>::SUPPORTED)
                    .theirs_display(),
            });
        }
        let response = self
            .send(
                |version| {
                    OffsetFetchRequest::default()
                        .with_group_id(GroupId(str(&self.group)))
                        .with_require_stable(version >= 7)
                        .with_topics(partitions.map(|_| {
                            topics
                                .iter()
                                .map(|(topic, partitions)| {
                                    OffsetFetchRequestTopic::default()
                                        .with_name(TopicName(str(topic)))
                                        .with_partition_indexes(partitions.clone())
                                })
                                .collect()
                        }))
                },
                timeout,
            )
            .await?;
        self.check(ApiKey::OffsetFetch, response.error_code, "offsets")?;
        let mut out = BTreeMap::new();
        for topic in &response.topics {
            for p in &topic.partitions {
                let tp = TopicPartition::new(topic.name.0.as_str(), p.partition_index);
                self.check(ApiKey::OffsetFetch, p.error_code, &format!("partition {tp}"))?;
                let committed = (p.committed_offset >= 0).then_some(CommitOffset {
                    offset: p.committed_offset,
                    leader_epoch: (p.committed_leader_epoch >= 0).then_some(p.committed_leader_epoch),
                });
                out.insert(tp, committed);
            }
        }
        Ok(out)
    }

    /// Commits offsets, retried within `timeout`; a generation or member
    /// error (the group moved on) is returned at once.
    pub(crate) async fn commit(
        &self,
        offsets: &BTreeMap<TopicPartition, CommitOffset>,
        committer: &Committer,
        timeout: Duration,
    ) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut retry =
            Retrier::new(self.client.config(), format!("committing offsets of group {}", self.group), timeout);
        loop {
            match self.commit_once(offsets, committer).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    retry.after(error).await?;
                }
            }
        }
    }

    async fn commit_once(&self, offsets: &BTreeMap<TopicPartition, CommitOffset>, committer: &Committer) -> Result<()> {
        let mut topics: BTreeMap<&str, Vec<(i32, CommitOffset)>> = BTreeMap::new();
        for (tp, offset) in offsets {
            topics.entry(tp.topic.as_str()).or_default().push((tp.partition, *offset));
        }
        let timeout = self.client.config().request_timeout;
        let max_version = if committer.member_epoch { 9 } else { 8 };
        let response = self
            .send_at_most(
                |version| {
                    let partition = |(partition, offset): &(i32, CommitOffset)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*partition)
                            .with_committed_offset(offset.offset)
                            .with_committed_leader_epoch(if version >= 6 {
                                offset.leader_epoch.unwrap_or(-1)
                            } else {
                                -1
                            })
                            .with_committed_metadata(Some(StrBytes::new()))
                    };
                    let mut request = OffsetCommitRequest::default()
                        .with_group_id(GroupId(str(&self.group)))
                        .with_generation_id_or_member_epoch(committer.generation)
                        .with_member_id(str(&committer.member_id))
                        .with_topics(
                            topics
                                .iter()
                                .map(|(topic, partitions)| {
                                    OffsetCommitRequestTopic::default()
                                        .with_name(TopicName(str(topic)))
                                        .with_partitions(partitions.iter().map(partition).collect())
                                })
                                .collect(),
                        );
                    if version >= 7 {
                        request.group_instance_id = committer.instance_id.as_deref().map(str);
                    }
                    if version <= 4 {
                        request.retention_time_ms = -1;
                    }
                    request
                },
                timeout,
                max_version,
            )
            .await?;
        for topic in &response.topics {
            for p in &topic.partitions {
                let context = format!("commit of {}/{}", topic.name.0, p.partition_index);
                self.check(ApiKey::OffsetCommit, p.error_code, &context)?;
            }
        }
        Ok(())
    }
}
