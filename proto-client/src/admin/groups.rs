//! Group administration: list, describe and delete groups; list, alter and
//! delete a group's committed offsets.
//!
//! Groups live on their coordinators: listing asks every broker, the other
//! calls find each group's coordinator and follow it when it moves
//! (NOT_COORDINATOR), waiting out one that is loading
//! (COORDINATOR_LOAD_IN_PROGRESS), under the operation's one deadline.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::consumer_group_describe_response::DescribedGroup;
use kafka_protocol::messages::offset_delete_request::{OffsetDeleteRequestPartition, OffsetDeleteRequestTopic};
use kafka_protocol::messages::{
    ApiKey, ConsumerGroupDescribeRequest, DeleteGroupsRequest, DescribeGroupsRequest, GroupId, ListGroupsRequest,
    OffsetDeleteRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use super::Admin;
use crate::TopicPartition;
use crate::config::ConfigError;
use crate::consumer::coordinator::{CommitOffset, Committer, GroupCoordinator};
use crate::consumer::group::protocol::{decode_assignment, decode_subscription};
use crate::error::{Error, Result, check_with_message};

/// The protocol type of consumer groups (JoinGroup's `protocol_type`).
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// A group's state, as its coordinator names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupState {
    /// No members; committed offsets may remain.
    Empty,
    /// Members are (re)joining (classic protocol).
    PreparingRebalance,
    /// Members joined and wait for their assignment (classic protocol).
    CompletingRebalance,
    /// The target assignment is being computed (KIP-848).
    Assigning,
    /// Members are moving to their target assignment (KIP-848).
    Reconciling,
    /// Every member has its assignment.
    Stable,
    /// The group is gone or never existed.
    Dead,
    /// A state this client does not know, as the broker spelt it.
    Other(String),
}

impl GroupState {
    /// Reads the broker's name of a state.
    pub fn parse(name: &str) -> GroupState {
        match name {
            "Empty" => GroupState::Empty,
            "PreparingRebalance" => GroupState::PreparingRebalance,
            "CompletingRebalance" | "AwaitingSync" => GroupState::CompletingRebalance,
            "Assigning" => GroupState::Assigning,
            "Reconciling" => GroupState::Reconciling,
            "Stable" => GroupState::Stable,
            "Dead" => GroupState::Dead,
            other => GroupState::Other(other.to_owned()),
        }
    }

    /// The broker's name of the state.
    pub fn as_str(&self) -> &str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Assigning => "Assigning",
            GroupState::Reconciling => "Reconciling",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
            GroupState::Other(name) => name,
        }
    }
}

impl fmt::Display for GroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A group as ListGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    /// The group id.
    pub group: String,
    /// `consumer` for consumer groups, empty for a group that only commits
    /// offsets, or another protocol's name (`connect`).
    pub protocol_type: String,
    /// The state (ListGroups v4+; `None` from older brokers).
    pub state: Option<GroupState>,
    /// `classic` or `consumer` (KIP-848; ListGroups v5+, else `None`).
    pub group_type: Option<String>,
    /// The broker that coordinates it.
    pub coordinator: i32,
}

/// One member of a group, as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The id the coordinator gave the member.
    pub member_id: String,
    /// `group.instance.id` of a static member.
    pub instance_id: Option<String>,
    /// The member's `client.id`.
    pub client_id: String,
    /// The host it connected from, as the broker saw it.
    pub host: String,
    /// The topics it subscribed to, decoded when the group speaks the
    /// consumer protocol (every consumer assignor shares its format);
    /// `None` when the broker did not send them.
    pub subscription: Option<Vec<String>>,
    /// The partitions assigned to it, decoded likewise.
    pub assignment: Option<Vec<TopicPartition>>,
    /// The member's metadata as sent, for other protocol types.
    pub metadata_bytes: Bytes,
    /// The member's assignment as sent, for other protocol types.
    pub assignment_bytes: Bytes,
}

/// A group as DescribeGroups reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// The group id.
    pub group: String,
    /// Its state.
    pub state: GroupState,
    /// `consumer` for consumer groups (see [`GroupListing::protocol_type`]).
    pub protocol_type: String,
    /// The protocol chosen for the generation: the assignor of a consumer
    /// group (`range`, `cooperative-sticky`, …); empty when not stable.
    pub protocol: String,
    /// Its members.
    pub members: Vec<GroupMember>,
    /// The broker that coordinates it.
    pub coordinator: i32,
}

/// An offset a group committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset the group will read.
    pub offset: i64,
    /// The leader epoch of the last record read, when the committer knew it.
    pub leader_epoch: Option<i32>,
}

fn str(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

/// A KIP-848 group, asked of its coordinator; `None` when it is not one.
async fn describe_kip848(
    coordinator: &GroupCoordinator,
    group: &str,
    timeout: std::time::Duration,
) -> Result<Option<GroupDescription>> {
    let response = coordinator
        .send(|_| ConsumerGroupDescribeRequest::default().with_group_ids(vec![GroupId(str(group))]), timeout)
        .await?;
    let Some(described) = response.groups.iter().find(|g| g.group_id.0.as_str() == group) else {
        return Ok(None);
    };
    coordinator.check_coordinator(described.error_code);
    consumer_group_description(described, coordinator.node().unwrap_or(-1))
}

/// A KIP-848 group from ConsumerGroupDescribe; `None` when the group is
/// not one (GROUP_ID_NOT_FOUND: a classic group, or no group).
fn consumer_group_description(described: &DescribedGroup, coordinator: i32) -> Result<Option<GroupDescription>> {
    let group = described.group_id.0.to_string();
    if ResponseError::try_from_code(described.error_code) == Some(ResponseError::GroupIdNotFound) {
        return Ok(None);
    }
    check_with_message(
        ApiKey::ConsumerGroupDescribe,
        described.error_code,
        described.error_message.as_deref(),
        || format!("group {group}"),
    )?;
    let members = described
        .members
        .iter()
        .map(|m| GroupMember {
            member_id: m.member_id.to_string(),
            instance_id: m.instance_id.as_ref().map(|i| i.to_string()),
            client_id: m.client_id.to_string(),
            host: m.client_host.to_string(),
            subscription: Some(m.subscribed_topic_names.iter().map(|t| t.0.to_string()).collect()),
            assignment: Some(
                m.assignment
                    .topic_partitions
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| TopicPartition::new(t.topic_name.0.as_str(), *p)))
                    .collect(),
            ),
            metadata_bytes: Bytes::new(),
            assignment_bytes: Bytes::new(),
        })
        .collect();
    Ok(Some(GroupDescription {
        group,
        state: GroupState::parse(&described.group_state),
        protocol_type: CONSUMER_PROTOCOL_TYPE.to_owned(),
        protocol: described.assignor_name.to_string(),
        members,
        coordinator,
    }))
}

impl Admin {
    /// Every group in the cluster: ListGroups to each broker, as each one
    /// lists only the groups it coordinates. Sorted by group id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let mut retry = self.retrier("listing groups".to_owned());
        let cluster = self.client.cluster();
        let mut metadata = cluster.metadata();
        if metadata.brokers.is_empty() {
            metadata = cluster.refresh(crate::cluster::TopicScope::None).await?.0;
        }
        let mut pending: Vec<i32> = metadata.brokers.keys().copied().collect();
        let mut groups = BTreeMap::new();
        while let Some(&broker) = pending.first() {
            match self.list_groups_at(broker).await {
                Ok(found) => {
                    pending.remove(0);
                    for listing in found {
                        groups.insert(listing.group.clone(), listing);
                    }
                }
                Err(error) => self.after(&mut retry, error).await?,
            }
        }
        Ok(groups.into_values().collect())
    }

    async fn list_groups_at(&self, broker: i32) -> Result<Vec<GroupListing>> {
        let link = self.client.cluster().link_to(broker).await?;
        let (response, connection) =
            link.send_idempotent(|_| ListGroupsRequest::default(), self.client.config().request_timeout).await?;
        let version = connection.version_for::<ListGroupsRequest>()?;
        check_with_message(ApiKey::ListGroups, response.error_code, None, || format!("at broker {broker}"))?;
        Ok(response
            .groups
            .iter()
            .map(|g| GroupListing {
                group: g.group_id.0.to_string(),
                protocol_type: g.protocol_type.to_string(),
                state: (version >= 4).then(|| GroupState::parse(&g.group_state)),
                group_type: (version >= 5 && !g.group_type.is_empty()).then(|| g.group_type.to_string()),
                coordinator: broker,
            })
            .collect())
    }

    /// Describes groups: state, assignor, members with their subscriptions
    /// and assignments. A group that does not exist is
    /// `GROUP_ID_NOT_FOUND` naming it (older brokers answer the state
    /// `Dead`; both read the same here).
    pub async fn describe_groups(&self, groups: &[&str]) -> Result<Vec<GroupDescription>> {
        let mut out = Vec::with_capacity(groups.len());
        for group in groups {
            out.push(self.describe_group(group).await?);
        }
        Ok(out)
    }

    /// [`Self::describe_groups`] of one group.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let coordinator = GroupCoordinator::new(self.client.clone(), group.to_owned());
        let mut retry = self.retrier(format!("describing group {group}"));
        loop {
            match self.describe_once(&coordinator, group).await {
                Ok(description) => return Ok(description),
                Err(error) => self.after(&mut retry, error).await?,
            }
        }
    }

    async fn describe_once(&self, coordinator: &GroupCoordinator, group: &str) -> Result<GroupDescription> {
        let timeout = self.client.config().request_timeout;
        let connection = coordinator.connection().await?;
        let response = coordinator
            .send(|_| DescribeGroupsRequest::default().with_groups(vec![GroupId(str(group))]), timeout)
            .await?;
        let Some(described) = response.groups.iter().find(|g| g.group_id.0.as_str() == group) else {
            return Err(Error::protocol(
                connection.broker(),
                format!("DescribeGroups did not answer for group {group}"),
            ));
        };
        coordinator.check_coordinator(described.error_code);
        let not_found = ResponseError::try_from_code(described.error_code) == Some(ResponseError::GroupIdNotFound);
        if !not_found {
            check_with_message(
                ApiKey::DescribeGroups,
                described.error_code,
                described.error_message.as_deref(),
                || format!("group {group}"),
            )?;
        }
        let state = GroupState::parse(&described.group_state);
        if not_found || state == GroupState::Dead {
            // Not a classic group: a KIP-848 group (Kafka describes those
            // by ConsumerGroupDescribe only), or none. Tansu offers
            // ConsumerGroupDescribe but answers it for classic groups too,
            // so it is asked only now.
            if connection.version_for::<ConsumerGroupDescribeRequest>().is_ok()
                && let Some(description) = describe_kip848(coordinator, group, timeout).await?
            {
                return Ok(description);
            }
            return Err(Error::broker(
                ApiKey::DescribeGroups,
                ResponseError::GroupIdNotFound,
                format!("group {group}"),
            ));
        }
        let consumer = described.protocol_type.as_str() == CONSUMER_PROTOCOL_TYPE;
        let members = described
            .members
            .iter()
            .map(|m| GroupMember {
                member_id: m.member_id.to_string(),
                instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                // Empty bytes: the broker did not say (an assignment of
                // nothing still carries a version).
                subscription: (consumer && !m.member_metadata.is_empty())
                    .then(|| decode_subscription(&m.member_metadata).ok().map(|s| s.topics))
                    .flatten(),
                assignment: (consumer && !m.member_assignment.is_empty())
                    .then(|| decode_assignment(&m.member_assignment).ok())
                    .flatten(),
                metadata_bytes: m.member_metadata.clone(),
                assignment_bytes: m.member_assignment.clone(),
            })
            .collect();
        Ok(GroupDescription {
            group: group.to_owned(),
            state,
            protocol_type: described.protocol_type.to_string(),
            protocol: described.protocol_data.to_string(),
            members,
            coordinator: coordinator.node().unwrap_or(-1),
        })
    }

    /// Deletes groups and their committed offsets. Kafka deletes only empty
    /// groups: one with members is `NON_EMPTY_GROUP` naming it. The client
    /// checks that first too (DescribeGroups), as not every broker does
    /// (Tansu deletes a group under its running members).
    pub async fn delete_groups(&self, groups: &[&str]) -> Result<()> {
        for group in groups {
            self.require_empty(group, ApiKey::DeleteGroups, "delete it").await?;
            let coordinator = GroupCoordinator::new(self.client.clone(), (*group).to_owned());
            let mut retry = self.retrier(format!("deleting group {group}"));
            loop {
                match self.delete_group_once(&coordinator, group).await {
                    Ok(()) => break,
                    Err(error) => self.after(&mut retry, error).await?,
                }
            }
        }
        Ok(())
    }

    async fn delete_group_once(&self, coordinator: &GroupCoordinator, group: &str) -> Result<()> {
        let timeout = self.client.config().request_timeout;
        let response = coordinator
            .send(|_| DeleteGroupsRequest::default().with_groups_names(vec![GroupId(str(group))]), timeout)
            .await?;
        let Some(result) = response.results.iter().find(|r| r.group_id.0.as_str() == group) else {
            return Err(Error::protocol(
                coordinator.connection().await?.broker(),
                format!("DeleteGroups did not answer for {group}"),
            ));
        };
        coordinator.check_coordinator(result.error_code);
        if ResponseError::try_from_code(result.error_code) == Some(ResponseError::NonEmptyGroup) {
            return Err(Error::Broker {
                api: ApiKey::DeleteGroups,
                code: ResponseError::NonEmptyGroup,
                context: format!("group {group}"),
                message: Some("the group has members; stop them before you delete it".to_owned()),
            });
        }
        check_with_message(ApiKey::DeleteGroups, result.error_code, None, || format!("group {group}"))?;
        debug!(target: "rill::admin", group, "deleted");
        Ok(())
    }

    /// Every offset `group` has committed, by partition.
    ///
    /// Asks for all of the group's offsets at once (OffsetFetch with no
    /// topics). A broker that cannot answer that (Tansu drops the field and
    /// sends a frame that does not decode) is asked again for every
    /// partition of every topic the cluster has.
    pub async fn list_group_offsets(&self, group: &str) -> Result<BTreeMap<TopicPartition, CommittedOffset>> {
        let coordinator = GroupCoordinator::new(self.client.clone(), group.to_owned());
        let found = match coordinator.fetch_all_offsets(self.timeout).await {
            Err(Error::Protocol { broker, message }) => {
                debug!(target: "rill::admin", group, %broker, %message, "no answer for all offsets; naming every partition");
                let topics = self.list_topics().await?;
                let partitions: Vec<TopicPartition> = topics
                    .iter()
                    .filter(|t| !t.internal)
                    .flat_map(|t| t.partitions.iter().map(|p| TopicPartition::new(&t.name, p.partition)))
                    .collect();
                coordinator
                    .fetch_offsets(&partitions, self.timeout)
                    .await?
                    .into_iter()
                    .filter_map(|(tp, offset)| Some((tp, offset?)))
                    .collect()
            }
            other => other?,
        };
        Ok(found
            .into_iter()
            .map(|(tp, o)| (tp, CommittedOffset { offset: o.offset, leader_epoch: o.leader_epoch }))
            .collect())
    }

    /// Sets `group`'s committed offsets (the next offset to read, per
    /// partition). As in Kafka the group must have no members: with members
    /// it is `NON_EMPTY_GROUP` naming the group, checked by DescribeGroups
    /// where the broker has it and by the commit's answer in any case.
    pub async fn alter_group_offsets(&self, group: &str, offsets: &BTreeMap<TopicPartition, i64>) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        if let Some((tp, offset)) = offsets.iter().find(|(_, o)| **o < 0) {
            return Err(Error::Config(ConfigError::invalid_value(
                "offset",
                &offset.to_string(),
                format!("partition {tp}: an offset to commit is 0 or more"),
            )));
        }
        self.require_empty(group, ApiKey::OffsetCommit, "alter its offsets").await?;
        let coordinator = GroupCoordinator::new(self.client.clone(), group.to_owned());
        let commits: BTreeMap<TopicPartition, CommitOffset> =
            offsets.iter().map(|(tp, &offset)| (tp.clone(), CommitOffset { offset, leader_epoch: None })).collect();
        match coordinator.commit(&commits, &Committer::standalone(), self.timeout).await {
            // A commit outside any generation to a group with members.
            // A commit from outside any generation is refused only by a
            // group with members (Kafka's rule).
            Err(Error::Broker {
                code:
                    code @ (ResponseError::UnknownMemberId
                    | ResponseError::IllegalGeneration
                    | ResponseError::RebalanceInProgress),
                ..
            }) => Err(Error::Broker {
                api: ApiKey::OffsetCommit,
                code: ResponseError::NonEmptyGroup,
                context: format!("group {group}"),
                message: Some(format!(
                    "the coordinator answered {code} to a commit from outside the group: it has members; stop them \
                     before you alter its offsets"
                )),
            }),
            other => other,
        }
    }

    /// Deletes `group`'s committed offsets of `partitions` (OffsetDelete,
    /// Kafka 2.4+). Kafka refuses while the group is subscribed to the
    /// topic: `GROUP_SUBSCRIBED_TO_TOPIC` naming the partition.
    pub async fn delete_group_offsets(&self, group: &str, partitions: &[TopicPartition]) -> Result<()> {
        let coordinator = GroupCoordinator::new(self.client.clone(), group.to_owned());
        let mut retry = self.retrier(format!("deleting offsets of group {group}"));
        loop {
            match self.delete_offsets_once(&coordinator, group, partitions).await {
                Ok(()) => return Ok(()),
                Err(error) => self.after(&mut retry, error).await?,
            }
        }
    }

    async fn delete_offsets_once(
        &self,
        coordinator: &GroupCoordinator,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<()> {
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for tp in partitions {
            topics.entry(tp.topic.as_str()).or_default().push(tp.partition);
        }
        let request = OffsetDeleteRequest::default().with_group_id(GroupId(str(group))).with_topics(
            topics
                .iter()
                .map(|(topic, partitions)| {
                    OffsetDeleteRequestTopic::default().with_name(TopicName(str(topic))).with_partitions(
                        partitions
                            .iter()
                            .map(|p| OffsetDeleteRequestPartition::default().with_partition_index(*p))
                            .collect(),
                    )
                })
                .collect(),
        );
        let response = coordinator.send(|_| request.clone(), self.client.config().request_timeout).await?;
        coordinator.check_coordinator(response.error_code);
        check_with_message(ApiKey::OffsetDelete, response.error_code, None, || format!("group {group}"))?;
        for topic in &response.topics {
            for p in &topic.partitions {
                check_with_message(ApiKey::OffsetDelete, p.error_code, None, || {
                    format!("group {group}, partition {}-{}", topic.name.0.as_str(), p.partition_index)
                })?;
            }
        }
        Ok(())
    }

    /// Fails with `NON_EMPTY_GROUP` when `group` has members; a broker
    /// without DescribeGroups leaves the check to the request itself.
    async fn require_empty(&self, group: &str, api: ApiKey, action: &str) -> Result<()> {
        match self.describe_group(group).await {
            Ok(description) if !description.members.is_empty() => Err(Error::Broker {
                api,
                code: ResponseError::NonEmptyGroup,
                context: format!("group {group}"),
                message: Some(format!(
                    "the group has {} member(s) ({}); stop them before you {action}",
                    description.members.len(),
                    description.state
                )),
            }),
            Ok(_) => Ok(()),
            Err(error) if error.code() == Some(ResponseError::GroupIdNotFound) => Ok(()),
            Err(Error::UnsupportedApi { api: ApiKey::DescribeGroups, .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_group_describe_response::{Assignment, Member, TopicPartitions};

    /// ConsumerGroupDescribe as Kafka 4 answers it (no broker here has
    /// it): the members with their client, host, instance, subscription
    /// and assignment by topic name; GROUP_ID_NOT_FOUND for a classic group.
    #[test]
    fn a_kip848_group_is_described_from_consumer_group_describe() {
        let topic = |name: &str, partitions: &[i32]| {
            TopicPartitions::default()
                .with_topic_id(uuid::Uuid::from_u128(1))
                .with_topic_name(TopicName(str(name)))
                .with_partitions(partitions.to_vec())
        };
        let member = Member::default()
            .with_member_id(str("m-1"))
            .with_instance_id(Some(str("i-1")))
            .with_member_epoch(4)
            .with_client_id(str("rill-a"))
            .with_client_host(str("/127.0.0.1"))
            .with_subscribed_topic_names(vec![TopicName(str("t"))])
            .with_assignment(Assignment::default().with_topic_partitions(vec![topic("t", &[0, 2])]));
        let described = DescribedGroup::default()
            .with_group_id(GroupId(str("g")))
            .with_group_state(str("Reconciling"))
            .with_group_epoch(5)
            .with_assignor_name(str("uniform"))
            .with_members(vec![member]);
        let description = consumer_group_description(&described, 3).unwrap().expect("a KIP-848 group");
        assert_eq!((description.state, description.protocol.as_str()), (GroupState::Reconciling, "uniform"));
        assert_eq!(description.coordinator, 3);
        let m = &description.members[0];
        assert_eq!(
            (m.member_id.as_str(), m.instance_id.as_deref(), m.client_id.as_str()),
            ("m-1", Some("i-1"), "rill-a")
        );
        assert_eq!(m.subscription.as_deref(), Some(&["t".to_owned()][..]));
        assert_eq!(m.assignment, Some(vec![TopicPartition::new("t", 0), TopicPartition::new("t", 2)]));

        let classic = DescribedGroup::default()
            .with_group_id(GroupId(str("g")))
            .with_error_code(ResponseError::GroupIdNotFound.code());
        assert!(consumer_group_description(&classic, 3).unwrap().is_none(), "DescribeGroups describes it");
        let refused = DescribedGroup::default()
            .with_group_id(GroupId(str("g")))
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
        assert!(consumer_group_description(&refused, 3).is_err());
    }
}
