//! [`Admin`]: topics (create, delete, list, describe, add partitions),
//! offsets (list, delete records), groups (list, describe, delete, their
//! committed offsets), configs (describe, alter) and the cluster.
//!
//! Every operation has one deadline ([`Admin::timeout`]) that covers its
//! retries. Retriable failures (a controller that moved, a leader election,
//! a broker restarting) are retried with backoff until the deadline; fatal
//! ones (topic exists, invalid config, authorization) return at once.
//! Creating and deleting wait until metadata shows the result, so a topic
//! can be used as soon as `create_topics` returns.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, CreateTopicsRequest, DeleteTopicsRequest, ListOffsetsRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use crate::TopicPartition;
use crate::client::Client;
use crate::cluster::{Metadata, TopicInfo, TopicScope};
use crate::config::ConfigError;
use crate::consumer::IsolationLevel;
use crate::error::{Error, ErrorAction, Result, check_with_message};
use crate::net::Connection;
use crate::retry::Retrier;
use crate::wire::ApiRequest;

mod configs;
mod groups;

pub use configs::{AlterConfig, ClusterDescription, ConfigEntry, ConfigResource, ConfigSource};
pub use groups::{CONSUMER_PROTOCOL_TYPE, CommittedOffset, GroupDescription, GroupListing, GroupMember, GroupState};

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    /// Topic name.
    pub name: String,
    /// Number of partitions; `None` takes the broker's default.
    pub partitions: Option<i32>,
    /// Replication factor; `None` takes the broker's default.
    pub replication_factor: Option<i16>,
    /// Topic configs (`cleanup.policy`, `retention.ms`, …).
    pub configs: Vec<(String, String)>,
}

impl NewTopic {
    /// Counts a broker would refuse, or worse accept (Tansu makes a topic
    /// with no partitions), are refused here.
    fn check(&self) -> Result<()> {
        let invalid = |key: &str, value: String| {
            Error::Config(ConfigError::InvalidValue {
                key: format!("{key} of topic {}", self.name),
                value,
                reason: "must be at least 1 (or unset for the broker's default)".to_owned(),
            })
        };
        if let Some(partitions) = self.partitions.filter(|n| *n < 1) {
            return Err(invalid("partitions", partitions.to_string()));
        }
        if let Some(replicas) = self.replication_factor.filter(|n| *n < 1) {
            return Err(invalid("replication factor", replicas.to_string()));
        }
        Ok(())
    }

    /// A topic with `partitions` partitions and the broker's default
    /// replication factor.
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        NewTopic { name: name.into(), partitions: Some(partitions), replication_factor: None, configs: Vec::new() }
    }

    /// Sets the replication factor.
    pub fn replication_factor(mut self, factor: i16) -> Self {
        self.replication_factor = Some(factor);
        self
    }

    /// Adds a topic config.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.configs.push((key.into(), value.into()));
        self
    }
}

/// Which offset [`Admin::list_offsets`] looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark: the offset the next record will get.
    Latest,
    /// The offset of the record with the highest timestamp (ListOffsets v7+).
    MaxTimestamp,
    /// The earliest offset whose timestamp is at or after this one (ms since
    /// the epoch).
    Timestamp(i64),
}

impl OffsetSpec {
    fn wire_timestamp(self) -> i64 {
        match self {
            OffsetSpec::Earliest => -2,
            OffsetSpec::Latest => -1,
            OffsetSpec::MaxTimestamp => -3,
            OffsetSpec::Timestamp(ms) => ms,
        }
    }
}

/// An offset found by [`Admin::list_offsets`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedOffset {
    /// The offset; -1 when no record matches a timestamp lookup.
    pub offset: i64,
    /// The matching record's timestamp, -1 for earliest/latest.
    pub timestamp: i64,
    /// The leader epoch of the answering leader (ListOffsets v4+).
    pub leader_epoch: Option<i32>,
}

/// Admin operations. Made by [`Client::admin`].
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
    timeout: Duration,
}

impl Admin {
    pub(crate) fn new(client: Client) -> Self {
        Admin { client, timeout: Duration::from_secs(30) }
    }

    /// The deadline of each operation, retries included. Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn retrier(&self, operation: String) -> Retrier {
        Retrier::new(self.client.config(), operation, self.timeout)
    }

    /// Waits out a retriable error (refreshing metadata when it calls for
    /// it), or returns it.
    async fn after(&self, retry: &mut Retrier, error: Error) -> Result<()> {
        if retry.after(error).await? == ErrorAction::RefreshMetadata {
            // Best effort: the next attempt reports its own error.
            let _ = self.client.cluster().refresh(TopicScope::None).await;
        }
        Ok(())
    }

    /// A connection to the controller, or to any broker when the cluster
    /// does not name one.
    async fn controller(&self) -> Result<Connection> {
        let cluster = self.client.cluster();
        let mut metadata = cluster.metadata();
        if metadata.brokers.is_empty() {
            metadata = cluster.refresh(TopicScope::None).await?.0;
        }
        match metadata.controller {
            Some(id) => cluster.connection_to(id).await,
            None => cluster.any_connection().await,
        }
    }

    /// Creates topics and waits until metadata shows each with all its
    /// partitions led.
    ///
    /// Fails on the first topic the broker rejects (`TOPIC_ALREADY_EXISTS`,
    /// `INVALID_REPLICATION_FACTOR`, …), naming it. A broker without
    /// CreateTopics (librdkafka's mock cluster) gives
    /// [`Error::UnsupportedApi`].
    pub async fn create_topics(&self, topics: &[NewTopic]) -> Result<()> {
        for topic in topics {
            topic.check()?;
        }
        let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
        let mut retry = self.retrier(format!("creating topics {names:?}"));
        let mut remaining: Vec<&NewTopic> = topics.iter().collect();
        while !remaining.is_empty() {
            match self.create_once(&remaining, retry.remaining()).await {
                Ok(left) => remaining.retain(|t| left.contains(&t.name)),
                Err(error) => {
                    self.after(&mut retry, error).await?;
                    continue;
                }
            }
            if !remaining.is_empty() {
                self.after(&mut retry, Error::broker(ApiKey::CreateTopics, ResponseError::NotController, "controller"))
                    .await?;
            }
        }
        let expected: BTreeMap<&str, Option<i32>> = topics.iter().map(|t| (t.name.as_str(), t.partitions)).collect();
        self.wait_for(&names, &mut retry, |metadata| {
            expected.iter().all(|(name, partitions)| {
                metadata.topics.get(*name).is_some_and(|topic| {
                    partitions.is_none_or(|n| topic.partitions.len() == n as usize)
                        && !topic.partitions.is_empty()
                        && topic.partitions.iter().all(|p| p.leader.is_some())
                })
            })
        })
        .await
    }

    /// One CreateTopics round; returns the names to send again (the
    /// controller moved).
    async fn create_once(&self, topics: &[&NewTopic], remaining: Duration) -> Result<Vec<String>> {
        let connection = self.controller().await?;
        let version = connection.version_for::<CreateTopicsRequest>()?;
        let mut creatable = Vec::with_capacity(topics.len());
        for topic in topics {
            if version < 4 && (topic.partitions.is_none() || topic.replication_factor.is_none()) {
                return Err(Error::broker(
                    ApiKey::CreateTopics,
                    ResponseError::InvalidRequest,
                    format!(
                        "topic {}: this broker (CreateTopics v{version}) needs explicit partitions and replication factor",
                        topic.name
                    ),
                ));
            }
            creatable.push(
                CreatableTopic::default()
                    .with_name(TopicName(StrBytes::from_string(topic.name.clone())))
                    .with_num_partitions(topic.partitions.unwrap_or(-1))
                    .with_replication_factor(topic.replication_factor.unwrap_or(-1))
                    .with_configs(
                        topic
                            .configs
                            .iter()
                            .map(|(k, v)| {
                                CreatableTopicConfig::default()
                                    .with_name(StrBytes::from_string(k.clone()))
                                    .with_value(Some(StrBytes::from_string(v.clone())))
                            })
                            .collect(),
                    ),
            );
        }
        let broker_wait = remaining.min(Duration::from_secs(60));
        let request =
            CreateTopicsRequest::default().with_topics(creatable).with_timeout_ms(broker_wait.as_millis() as i32);
        // The broker holds the request up to `timeout_ms`.
        let timeout = self.client.config().request_timeout + broker_wait;
        let response = connection.send_at(&request, version, timeout).await?;
        let mut again = Vec::new();
        for result in &response.topics {
            let name = result.name.0.to_string();
            topic_outcome(ApiKey::CreateTopics, name, result.error_code, result.error_message.as_deref(), &mut again)?;
        }
        Ok(again)
    }

    /// Deletes topics and waits until metadata no longer shows them.
    pub async fn delete_topics(&self, names: &[&str]) -> Result<()> {
        let mut retry = self.retrier(format!("deleting topics {names:?}"));
        let mut remaining: Vec<&str> = names.to_vec();
        while !remaining.is_empty() {
            match self.delete_once(&remaining, retry.remaining()).await {
                Ok(left) => remaining.retain(|n| left.iter().any(|l| l == n)),
                // Elsewhere a sign of stale metadata; here the answer.
                Err(error) if error.code() == Some(ResponseError::UnknownTopicOrPartition) => return Err(error),
                Err(error) => {
                    self.after(&mut retry, error).await?;
                    continue;
                }
            }
            if !remaining.is_empty() {
                self.after(&mut retry, Error::broker(ApiKey::DeleteTopics, ResponseError::NotController, "controller"))
                    .await?;
            }
        }
        self.wait_for(names, &mut retry, |metadata| names.iter().all(|n| !metadata.topics.contains_key(*n))).await
    }

    async fn delete_once(&self, names: &[&str], remaining: Duration) -> Result<Vec<String>> {
        let connection = self.controller().await?;
        let version = connection.version_for::<DeleteTopicsRequest>()?;
        let topic_name = |n: &&str| TopicName(StrBytes::from_string((*n).to_owned()));
        let broker_wait = remaining.min(Duration::from_secs(60));
        let mut request = DeleteTopicsRequest::default().with_timeout_ms(broker_wait.as_millis() as i32);
        // v6 names topics by `topics` (name or id); earlier versions by
        // `topic_names`. The encoder rejects the field a version lacks.
        if version >= 6 {
            request.topics = names.iter().map(|n| DeleteTopicState::default().with_name(Some(topic_name(n)))).collect();
        } else {
            request.topic_names = names.iter().map(topic_name).collect();
        }
        let timeout = self.client.config().request_timeout + broker_wait;
        let response = connection.send_at(&request, version, timeout).await?;
        let mut again = Vec::new();
        for result in &response.responses {
            let name = result.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default();
            topic_outcome(ApiKey::DeleteTopics, name, result.error_code, result.error_message.as_deref(), &mut again)?;
        }
        Ok(again)
    }

    /// Refreshes metadata for `names` until `done` holds.
    async fn wait_for(&self, names: &[&str], retry: &mut Retrier, done: impl Fn(&Metadata) -> bool) -> Result<()> {
        let scope = TopicScope::Named(names.iter().map(|n| (*n).to_owned()).collect());
        loop {
            let error = match self.client.cluster().refresh(scope.clone()).await {
                Ok((metadata, _)) if done(&metadata) => return Ok(()),
                // Not there yet: metadata propagates after the controller
                // acknowledged the change.
                Ok(_) => {
                    Error::broker(ApiKey::Metadata, ResponseError::LeaderNotAvailable, format!("topics {names:?}"))
                }
                Err(error) => error,
            };
            self.after(retry, error).await?;
        }
    }

    /// Every topic in the cluster (internal ones included, flagged).
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let metadata = self.client.refresh_metadata(TopicScope::All).await?;
        Ok(metadata.topics.values().cloned().collect())
    }

    /// Metadata of the named topics; an unknown topic is an error naming it.
    pub async fn describe_topics(&self, names: &[&str]) -> Result<Vec<TopicInfo>> {
        let scope = TopicScope::Named(names.iter().map(|n| (*n).to_owned()).collect());
        let (metadata, report) = self.client.cluster().refresh(scope).await?;
        if let Some(unknown) = report.unknown_topics.first() {
            return Err(Error::UnknownTopicOrPartition(unknown.clone()));
        }
        if let Some((topic, code)) = report.topic_errors.first() {
            return Err(Error::broker(ApiKey::Metadata, *code, format!("topic {topic}")));
        }
        names
            .iter()
            .map(|n| metadata.topics.get(*n).cloned().ok_or_else(|| Error::UnknownTopicOrPartition((*n).to_owned())))
            .collect()
    }

    /// Looks up offsets, asking each partition's leader.
    pub async fn list_offsets(
        &self,
        requests: &[(TopicPartition, OffsetSpec)],
    ) -> Result<BTreeMap<TopicPartition, ListedOffset>> {
        self.list_offsets_isolated(requests, IsolationLevel::ReadUncommitted).await
    }

    /// [`Self::list_offsets`] as a consumer of `isolation` sees them: under
    /// read_committed, [`OffsetSpec::Latest`] is the last stable offset
    /// (nothing of an open transaction counts yet).
    pub async fn list_offsets_isolated(
        &self,
        requests: &[(TopicPartition, OffsetSpec)],
        isolation: IsolationLevel,
    ) -> Result<BTreeMap<TopicPartition, ListedOffset>> {
        let cluster = self.client.cluster();
        cluster.want_topics(requests.iter().map(|(tp, _)| tp.topic.as_str()));
        let mut retry = self.retrier(format!("listing offsets of {} partitions", requests.len()));
        let mut results = BTreeMap::new();
        let mut pending: Vec<(TopicPartition, OffsetSpec)> = requests.to_vec();
        loop {
            let metadata = self.metadata_covering(&pending).await?;
            let mut by_leader: BTreeMap<i32, Vec<(TopicPartition, OffsetSpec, i32)>> = BTreeMap::new();
            let mut leaderless = false;
            for (tp, spec) in &pending {
                let topic =
                    metadata.topics.get(&tp.topic).ok_or_else(|| Error::UnknownTopicOrPartition(tp.topic.clone()))?;
                let partition =
                    topic.partition(tp.partition).ok_or_else(|| Error::UnknownTopicOrPartition(tp.to_string()))?;
                match partition.leader {
                    Some(leader) => {
                        by_leader.entry(leader).or_default().push((tp.clone(), *spec, partition.leader_epoch))
                    }
                    None => leaderless = true,
                }
            }
            let mut failure = None;
            for (leader, partitions) in by_leader {
                let answer = self.list_offsets_at(leader, &partitions, isolation).await;
                fold_answers(answer, &mut results, &mut failure)?;
            }
            pending.retain(|(tp, _)| !results.contains_key(tp));
            if pending.is_empty() {
                return Ok(results);
            }
            let error = failure.unwrap_or_else(|| {
                debug_assert!(leaderless);
                Error::broker(ApiKey::ListOffsets, ResponseError::LeaderNotAvailable, "partitions without a leader")
            });
            self.after(&mut retry, error).await?;
        }
    }

    /// Metadata that knows every topic in `pending`, refreshed if needed.
    async fn metadata_covering(&self, pending: &[(TopicPartition, OffsetSpec)]) -> Result<std::sync::Arc<Metadata>> {
        let cluster = self.client.cluster();
        let metadata = cluster.metadata();
        if pending.iter().all(|(tp, _)| metadata.topics.contains_key(&tp.topic)) {
            return Ok(metadata);
        }
        let mut topics: Vec<String> = pending.iter().map(|(tp, _)| tp.topic.clone()).collect();
        topics.dedup();
        let (metadata, report) = cluster.refresh(TopicScope::Named(topics)).await?;
        if let Some(unknown) = report.unknown_topics.first() {
            return Err(Error::UnknownTopicOrPartition(unknown.clone()));
        }
        Ok(metadata)
    }

    /// One ListOffsets request to one leader.
    async fn list_offsets_at(
        &self,
        leader: i32,
        partitions: &[(TopicPartition, OffsetSpec, i32)],
        isolation: IsolationLevel,
    ) -> Result<Vec<(TopicPartition, Result<ListedOffset>)>> {
        let link = self.client.cluster().link_to(leader).await?;
        if partitions.iter().any(|(_, spec, _)| *spec == OffsetSpec::MaxTimestamp) {
            let connection = link.connection().await?;
            if connection.version_for::<ListOffsetsRequest>()? < 7 {
                return Err(Error::UnsupportedApi {
                    broker: connection.broker().to_owned(),
                    api: ApiKey::ListOffsets,
                    ours: "7..10 (for MaxTimestamp)".to_owned(),
                    theirs: connection
                        .api_versions()
                        .negotiate(ApiKey::ListOffsets, <ListOffsetsRequest as ApiRequest>::SUPPORTED)
                        .theirs_display(),
                });
            }
        }
        let request_timeout = self.client.config().request_timeout;
        let build = |version: i16| list_offsets_request(partitions, isolation, request_timeout, version);
        let (response, connection) = link.send_idempotent(build, request_timeout).await?;
        let version = connection.version_for::<ListOffsetsRequest>()?;
        let mut out = Vec::new();
        for topic in &response.topics {
            for p in &topic.partitions {
                let tp = TopicPartition::new(topic.name.0.as_str(), p.partition_index);
                let outcome =
                    crate::error::check(ApiKey::ListOffsets, p.error_code, || format!("partition {tp}")).map(|()| {
                        ListedOffset {
                            offset: p.offset,
                            timestamp: p.timestamp,
                            leader_epoch: (version >= 4 && p.leader_epoch >= 0).then_some(p.leader_epoch),
                        }
                    });
                if outcome.as_ref().is_err_and(|e| e.action() == ErrorAction::RefreshMetadata) {
                    self.client.cluster().request_refresh();
                }
                out.push((tp, outcome));
            }
        }
        Ok(out)
    }
}

/// The ListOffsets request for `partitions` (with their leader epochs) at
/// `version`. The isolation level goes out from v2 on; before that a
/// broker answers read_uncommitted.
fn list_offsets_request(
    partitions: &[(TopicPartition, OffsetSpec, i32)],
    isolation: IsolationLevel,
    timeout: Duration,
    version: i16,
) -> ListOffsetsRequest {
    let mut topics: BTreeMap<&str, Vec<ListOffsetsPartition>> = BTreeMap::new();
    for (tp, spec, epoch) in partitions {
        topics.entry(tp.topic.as_str()).or_default().push(
            ListOffsetsPartition::default()
                .with_partition_index(tp.partition)
                .with_current_leader_epoch(if version >= 4 { *epoch } else { -1 })
                .with_timestamp(spec.wire_timestamp()),
        );
    }
    let mut request = ListOffsetsRequest::default().with_replica_id(BrokerId(-1)).with_topics(
        topics
            .into_iter()
            .map(|(name, partitions)| {
                ListOffsetsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(name.to_owned())))
                    .with_partitions(partitions)
            })
            .collect(),
    );
    if version >= 2 {
        request.isolation_level = match isolation {
            IsolationLevel::ReadUncommitted => 0,
            IsolationLevel::ReadCommitted => 1,
        };
    }
    if version >= 10 {
        request.timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    }
    request
}

/// One topic's answer to CreateTopics or DeleteTopics: done, to send again
/// (NOT_CONTROLLER: the controller moved), or an error naming the topic.
fn topic_outcome(api: ApiKey, name: String, code: i16, message: Option<&str>, again: &mut Vec<String>) -> Result<()> {
    match ResponseError::try_from_code(code) {
        None => {
            let done = if api == ApiKey::CreateTopics { "created" } else { "deleted" };
            debug!(target: "rill::admin", topic = %name, "{done}");
        }
        Some(ResponseError::NotController) => again.push(name),
        Some(ResponseError::UnknownTopicOrPartition) => {
            return Err(Error::broker(
                api,
                ResponseError::UnknownTopicOrPartition,
                format!("topic {name} does not exist"),
            ));
        }
        Some(_) => check_with_message(api, code, message, || format!("topic {name}"))?,
    }
    Ok(())
}

/// Folds one leader's per-partition answers in: each success into
/// `results`, a retriable failure (of a partition or of the whole request)
/// into `failure` for the retrier; a fatal one ends the call.
fn fold_answers<T>(
    answer: Result<Vec<(TopicPartition, Result<T>)>>,
    results: &mut BTreeMap<TopicPartition, T>,
    failure: &mut Option<Error>,
) -> Result<()> {
    match answer {
        Ok(found) => {
            for (tp, outcome) in found {
                match outcome {
                    Ok(value) => {
                        results.insert(tp, value);
                    }
                    Err(error) if error.action() == ErrorAction::Fatal => return Err(error),
                    Err(error) => *failure = Some(error),
                }
            }
        }
        Err(error) => *failure = Some(error),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_offsets_says_the_isolation_level_from_v2() {
        let partitions = [(TopicPartition::new("t", 0), OffsetSpec::Latest, 3)];
        let timeout = Duration::from_secs(5);
        let request = list_offsets_request(&partitions, IsolationLevel::ReadCommitted, timeout, 2);
        assert_eq!(request.isolation_level, 1);
        assert_eq!(request.topics[0].partitions[0].timestamp, -1);
        assert_eq!(request.topics[0].partitions[0].current_leader_epoch, -1, "epochs from v4");
        let request = list_offsets_request(&partitions, IsolationLevel::ReadUncommitted, timeout, 9);
        assert_eq!(request.isolation_level, 0);
        assert_eq!(request.topics[0].partitions[0].current_leader_epoch, 3);
        let request = list_offsets_request(&partitions, IsolationLevel::ReadCommitted, timeout, 10);
        assert_eq!((request.isolation_level, request.timeout_ms), (1, 5_000));
    }

    #[test]
    fn a_topic_needs_a_partition_and_a_replica() {
        assert!(NewTopic::new("t", 1).check().is_ok());
        let default = NewTopic { partitions: None, ..NewTopic::new("t", 1) };
        assert!(default.check().is_ok(), "unset: the broker's default");
        for partitions in [0, -1, -3] {
            let error = NewTopic::new("t", partitions).check().unwrap_err();
            assert!(error.to_string().contains("partitions of topic t"), "{error}");
        }
        let no_replicas = NewTopic { replication_factor: Some(0), ..NewTopic::new("t", 1) };
        assert!(no_replicas.check().unwrap_err().to_string().contains("replication factor"));
    }
}
