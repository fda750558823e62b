//! Cluster administration beyond topics: configs (describe, incremental
//! alter), adding partitions, deleting records, describing the cluster.

use std::collections::BTreeMap;
use std::fmt;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
use kafka_protocol::messages::{
    ApiKey, CreatePartitionsRequest, DeleteRecordsRequest, DescribeConfigsRequest, IncrementalAlterConfigsRequest,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use super::Admin;
use crate::TopicPartition;
use crate::cluster::{BrokerInfo, TopicScope};
use crate::config::ConfigError;
use crate::error::{Error, ErrorAction, Result, check_with_message};
use crate::net::Connection;

/// What a config belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConfigResource {
    /// A topic's configs.
    Topic(String),
    /// A broker's configs, by node id.
    Broker(i32),
}

impl ConfigResource {
    fn wire_type(&self) -> i8 {
        match self {
            ConfigResource::Topic(_) => 2,
            ConfigResource::Broker(_) => 4,
        }
    }

    fn wire_name(&self) -> String {
        match self {
            ConfigResource::Topic(name) => name.clone(),
            ConfigResource::Broker(id) => id.to_string(),
        }
    }
}

impl fmt::Display for ConfigResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigResource::Topic(name) => write!(f, "topic {name}"),
            ConfigResource::Broker(id) => write!(f, "broker {id}"),
        }
    }
}

/// Where a config's value comes from (DescribeConfigs v1+).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConfigSource {
    /// Set on the topic.
    DynamicTopic,
    /// Set on this broker at run time.
    DynamicBroker,
    /// Set at run time as every broker's default.
    DynamicDefaultBroker,
    /// From the broker's properties file.
    StaticBroker,
    /// Kafka's default.
    Default,
    /// Set on a broker logger.
    DynamicBrokerLogger,
    /// A code this client does not know (or 0, unknown).
    Unknown(i8),
}

impl ConfigSource {
    fn from_wire(code: i8) -> Self {
        match code {
            1 => ConfigSource::DynamicTopic,
            2 => ConfigSource::DynamicBroker,
            3 => ConfigSource::DynamicDefaultBroker,
            4 => ConfigSource::StaticBroker,
            5 => ConfigSource::Default,
            6 => ConfigSource::DynamicBrokerLogger,
            other => ConfigSource::Unknown(other),
        }
    }

    /// Kafka's name of the source, as `kafka-configs.sh` prints it.
    pub fn as_str(&self) -> &'static str {
        match self {
            ConfigSource::DynamicTopic => "DYNAMIC_TOPIC_CONFIG",
            ConfigSource::DynamicBroker => "DYNAMIC_BROKER_CONFIG",
            ConfigSource::DynamicDefaultBroker => "DYNAMIC_DEFAULT_BROKER_CONFIG",
            ConfigSource::StaticBroker => "STATIC_BROKER_CONFIG",
            ConfigSource::Default => "DEFAULT_CONFIG",
            ConfigSource::DynamicBrokerLogger => "DYNAMIC_BROKER_LOGGER_CONFIG",
            ConfigSource::Unknown(_) => "UNKNOWN",
        }
    }
}

/// One config of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    /// The key (`retention.ms`).
    pub name: String,
    /// The value; `None` for a sensitive one or one without a value.
    pub value: Option<String>,
    /// Where the value comes from.
    pub source: ConfigSource,
    /// Whether it can be altered.
    pub read_only: bool,
    /// Whether the value is a secret (never shown).
    pub sensitive: bool,
}

impl ConfigEntry {
    /// Whether the value is Kafka's default rather than set somewhere.
    pub fn is_default(&self) -> bool {
        self.source == ConfigSource::Default
    }
}

/// One change of an incremental config alteration (KIP-339).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlterConfig {
    /// Sets the key to a value.
    Set(String, String),
    /// Removes the key's override: it falls back to its default.
    Delete(String),
    /// Appends to a list-valued key.
    Append(String, String),
    /// Removes values from a list-valued key.
    Subtract(String, String),
}

impl AlterConfig {
    fn wire(&self) -> AlterableConfig {
        let (name, operation, value) = match self {
            AlterConfig::Set(k, v) => (k, 0, Some(v)),
            AlterConfig::Delete(k) => (k, 1, None),
            AlterConfig::Append(k, v) => (k, 2, Some(v)),
            AlterConfig::Subtract(k, v) => (k, 3, Some(v)),
        };
        AlterableConfig::default()
            .with_name(str(name))
            .with_config_operation(operation)
            .with_value(value.map(|v| str(v)))
    }
}

/// The cluster as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    /// The cluster id, when the broker reports one.
    pub cluster_id: Option<String>,
    /// The controller's node id, when known.
    pub controller: Option<i32>,
    /// The brokers, by node id.
    pub brokers: Vec<BrokerInfo>,
}

fn str(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

impl Admin {
    /// The configs of each resource, in the order asked. A broker's configs
    /// are asked of that broker; a topic's of any.
    pub async fn describe_configs(
        &self,
        resources: &[ConfigResource],
    ) -> Result<Vec<(ConfigResource, Vec<ConfigEntry>)>> {
        let mut out = Vec::with_capacity(resources.len());
        for resource in resources {
            let mut retry = self.retrier(format!("describing the configs of {resource}"));
            loop {
                match self.describe_configs_once(resource).await {
                    Ok(entries) => {
                        out.push((resource.clone(), entries));
                        break;
                    }
                    Err(error) => self.after(&mut retry, error).await?,
                }
            }
        }
        Ok(out)
    }

    /// The connection a resource's config requests go to.
    async fn config_connection(&self, resource: &ConfigResource) -> Result<Connection> {
        match resource {
            ConfigResource::Broker(id) => self.client.cluster().connection_to(*id).await,
            ConfigResource::Topic(_) => self.client.cluster().any_connection().await,
        }
    }

    async fn describe_configs_once(&self, resource: &ConfigResource) -> Result<Vec<ConfigEntry>> {
        let connection = self.config_connection(resource).await?;
        let version = connection.version_for::<DescribeConfigsRequest>()?;
        let request = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(resource.wire_type())
                .with_resource_name(str(&resource.wire_name()))
                .with_configuration_keys(None),
        ]);
        let response = connection.send_at(&request, version, self.client.config().request_timeout).await?;
        let Some(result) = response.results.first() else {
            return Err(Error::protocol(connection.broker(), format!("DescribeConfigs did not answer for {resource}")));
        };
        check_with_message(ApiKey::DescribeConfigs, result.error_code, result.error_message.as_deref(), || {
            resource.to_string()
        })?;
        let mut entries: Vec<ConfigEntry> = result
            .configs
            .iter()
            .map(|c| ConfigEntry {
                name: c.name.to_string(),
                value: c.value.as_ref().map(|v| v.to_string()),
                source: ConfigSource::from_wire(c.config_source),
                read_only: c.read_only,
                sensitive: c.is_sensitive,
            })
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Changes some configs of a resource, leaving the others as they are
    /// (IncrementalAlterConfigs, KIP-339). An unknown key or a bad value is
    /// the broker's `INVALID_CONFIG` naming the resource.
    pub async fn alter_configs(&self, resource: &ConfigResource, changes: &[AlterConfig]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut retry = self.retrier(format!("altering the configs of {resource}"));
        loop {
            match self.alter_configs_once(resource, changes).await {
                Ok(()) => return Ok(()),
                Err(error) => self.after(&mut retry, error).await?,
            }
        }
    }

    async fn alter_configs_once(&self, resource: &ConfigResource, changes: &[AlterConfig]) -> Result<()> {
        let connection = self.config_connection(resource).await?;
        let version = connection.version_for::<IncrementalAlterConfigsRequest>()?;
        let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(resource.wire_type())
                .with_resource_name(str(&resource.wire_name()))
                .with_configs(changes.iter().map(AlterConfig::wire).collect()),
        ]);
        let response = connection.send_at(&request, version, self.client.config().request_timeout).await?;
        let Some(result) = response.responses.first() else {
            return Err(Error::protocol(
                connection.broker(),
                format!("IncrementalAlterConfigs did not answer for {resource}"),
            ));
        };
        check_with_message(
            ApiKey::IncrementalAlterConfigs,
            result.error_code,
            result.error_message.as_deref(),
            || resource.to_string(),
        )?;
        debug!(target: "rill::admin", %resource, changes = changes.len(), "configs altered");
        Ok(())
    }

    /// Grows a topic to `total` partitions and waits until metadata shows
    /// them led. Kafka cannot shrink a topic: fewer partitions than it has
    /// is `INVALID_PARTITIONS`.
    pub async fn create_partitions(&self, topic: &str, total: i32) -> Result<()> {
        if total < 1 {
            return Err(Error::Config(ConfigError::invalid_value(
                "partitions",
                &total.to_string(),
                format!("topic {topic}: the new total is 1 or more"),
            )));
        }
        let mut retry = self.retrier(format!("growing topic {topic} to {total} partitions"));
        loop {
            match self.create_partitions_once(topic, total, retry.remaining()).await {
                Ok(()) => break,
                Err(error) => self.after(&mut retry, error).await?,
            }
        }
        self.wait_for(&[topic], &mut retry, |metadata| {
            metadata.topics.get(topic).is_some_and(|t| {
                t.partitions.len() == total as usize && t.partitions.iter().all(|p| p.leader.is_some())
            })
        })
        .await
    }

    async fn create_partitions_once(&self, topic: &str, total: i32, remaining: std::time::Duration) -> Result<()> {
        let connection = self.controller().await?;
        let version = connection.version_for::<CreatePartitionsRequest>()?;
        let broker_wait = remaining.min(std::time::Duration::from_secs(60));
        let request = CreatePartitionsRequest::default()
            .with_topics(vec![
                CreatePartitionsTopic::default()
                    .with_name(TopicName(str(topic)))
                    .with_count(total)
                    .with_assignments(None),
            ])
            .with_timeout_ms(broker_wait.as_millis() as i32);
        let timeout = self.client.config().request_timeout + broker_wait;
        let response = connection.send_at(&request, version, timeout).await?;
        for result in response.results.iter().filter(|r| r.name.0.as_str() == topic) {
            match ResponseError::try_from_code(result.error_code) {
                Some(ResponseError::UnknownTopicOrPartition) => {
                    return Err(Error::UnknownTopicOrPartition(topic.to_owned()));
                }
                _ => check_with_message(
                    ApiKey::CreatePartitions,
                    result.error_code,
                    result.error_message.as_deref(),
                    || format!("topic {topic}"),
                )?,
            }
        }
        Ok(())
    }

    /// Deletes every record before an offset (DeleteRecords): the
    /// partition's log start moves there. `-1` deletes up to the high
    /// watermark. Returns each partition's new log start.
    pub async fn delete_records(
        &self,
        before: &BTreeMap<TopicPartition, i64>,
    ) -> Result<BTreeMap<TopicPartition, i64>> {
        let cluster = self.client.cluster();
        cluster.want_topics(before.keys().map(|tp| tp.topic.as_str()));
        let mut retry = self.retrier(format!("deleting records of {} partitions", before.len()));
        let mut pending: BTreeMap<TopicPartition, i64> = before.clone();
        let mut results = BTreeMap::new();
        loop {
            let mut topics: Vec<String> = pending.keys().map(|tp| tp.topic.clone()).collect();
            topics.dedup();
            let metadata = {
                let (metadata, report) = cluster.refresh(TopicScope::Named(topics)).await?;
                if let Some(unknown) = report.unknown_topics.first() {
                    return Err(Error::UnknownTopicOrPartition(unknown.clone()));
                }
                metadata
            };
            let mut by_leader: BTreeMap<i32, Vec<(TopicPartition, i64)>> = BTreeMap::new();
            let mut failure = None;
            for (tp, offset) in &pending {
                let partition = metadata
                    .topics
                    .get(&tp.topic)
                    .and_then(|t| t.partition(tp.partition))
                    .ok_or_else(|| Error::UnknownTopicOrPartition(tp.to_string()))?;
                match partition.leader {
                    Some(leader) => by_leader.entry(leader).or_default().push((tp.clone(), *offset)),
                    None => {
                        failure = Some(Error::broker(
                            ApiKey::DeleteRecords,
                            ResponseError::LeaderNotAvailable,
                            format!("partition {tp}"),
                        ))
                    }
                }
            }
            for (leader, partitions) in by_leader {
                let answer = self.delete_records_at(leader, &partitions, retry.remaining()).await;
                super::fold_answers(answer, &mut results, &mut failure)?;
            }
            pending.retain(|tp, _| !results.contains_key(tp));
            if pending.is_empty() {
                return Ok(results);
            }
            let error = failure.unwrap_or_else(|| {
                Error::broker(ApiKey::DeleteRecords, ResponseError::UnknownServerError, "partitions left unanswered")
            });
            self.after(&mut retry, error).await?;
        }
    }

    async fn delete_records_at(
        &self,
        leader: i32,
        partitions: &[(TopicPartition, i64)],
        remaining: std::time::Duration,
    ) -> Result<Vec<(TopicPartition, Result<i64>)>> {
        let connection = self.client.cluster().connection_to(leader).await?;
        let version = connection.version_for::<DeleteRecordsRequest>()?;
        let mut topics: BTreeMap<&str, Vec<DeleteRecordsPartition>> = BTreeMap::new();
        for (tp, offset) in partitions {
            topics
                .entry(tp.topic.as_str())
                .or_default()
                .push(DeleteRecordsPartition::default().with_partition_index(tp.partition).with_offset(*offset));
        }
        let broker_wait = remaining.min(std::time::Duration::from_secs(30));
        let request = DeleteRecordsRequest::default()
            .with_topics(
                topics
                    .into_iter()
                    .map(|(name, partitions)| {
                        DeleteRecordsTopic::default().with_name(TopicName(str(name))).with_partitions(partitions)
                    })
                    .collect(),
            )
            .with_timeout_ms(broker_wait.as_millis() as i32);
        let timeout = self.client.config().request_timeout + broker_wait;
        let response = connection.send_at(&request, version, timeout).await?;
        let mut out = Vec::new();
        for topic in &response.topics {
            for p in &topic.partitions {
                let tp = TopicPartition::new(topic.name.0.as_str(), p.partition_index);
                let outcome = crate::error::check(ApiKey::DeleteRecords, p.error_code, || format!("partition {tp}"))
                    .map(|()| p.low_watermark);
                if outcome.as_ref().is_err_and(|e| e.action() == ErrorAction::RefreshMetadata) {
                    self.client.cluster().request_refresh();
                }
                out.push((tp, outcome));
            }
        }
        Ok(out)
    }

    /// The cluster id, the controller and the brokers (with their racks).
    pub async fn describe_cluster(&self) -> Result<ClusterDescription> {
        let metadata = self.client.refresh_metadata(TopicScope::None).await?;
        Ok(ClusterDescription {
            cluster_id: metadata.cluster_id.clone(),
            controller: metadata.controller,
            brokers: metadata.brokers.values().cloned().collect(),
        })
    }
}
