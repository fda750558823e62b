//! [`Metadata`]: an immutable snapshot of the cluster (brokers, topics,
//! partition leaders and leader epochs), and the pure rules for merging a
//! Metadata response into it.

use std::collections::BTreeMap;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::MetadataResponse;
use uuid::Uuid;

use crate::net::BrokerAddress;

/// A broker as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    /// Node id.
    pub id: i32,
    /// Advertised address.
    pub address: BrokerAddress,
    /// Rack, if configured.
    pub rack: Option<String>,
}

/// One partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition index.
    pub partition: i32,
    /// Leader's node id; `None` while there is no leader.
    pub leader: Option<i32>,
    /// Leader epoch, -1 when the broker does not report it (Metadata < v7).
    pub leader_epoch: i32,
    /// Replica node ids.
    pub replicas: Vec<i32>,
    /// In-sync replica node ids.
    pub isr: Vec<i32>,
    /// Offline replica node ids.
    pub offline_replicas: Vec<i32>,
    /// The partition-level error the broker reported, if any
    /// (`LEADER_NOT_AVAILABLE` during an election, for instance).
    pub error: Option<ResponseError>,
}

/// A topic and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Topic id (Metadata v10+; nil before).
    pub id: Uuid,
    /// Whether this is an internal topic (`__consumer_offsets`, …).
    pub internal: bool,
    /// Partitions, sorted by index.
    pub partitions: Vec<PartitionInfo>,
}

impl TopicInfo {
    /// A partition by index.
    pub fn partition(&self, partition: i32) -> Option<&PartitionInfo> {
        match self.partitions.get(usize::try_from(partition).ok()?) {
            Some(p) if p.partition == partition => Some(p),
            _ => self.partitions.iter().find(|p| p.partition == partition),
        }
    }
}

/// An immutable picture of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Cluster id, when the broker reports one.
    pub cluster_id: Option<String>,
    /// Controller node id, when known.
    pub controller: Option<i32>,
    /// Brokers by node id.
    pub brokers: BTreeMap<i32, BrokerInfo>,
    /// Topics by name: those this client asked about and that exist.
    pub topics: BTreeMap<String, TopicInfo>,
}

/// Which topics a Metadata request asked about, which decides what an
/// absent topic means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicScope {
    /// Only brokers and controller.
    None,
    /// These topics.
    Named(Vec<String>),
    /// Every topic; a topic missing from the answer no longer exists.
    All,
}

/// What a merge changed or found, for logs and for callers waiting on a
/// topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// Topics the broker says do not exist.
    pub unknown_topics: Vec<String>,
    /// Topic-level errors other than "unknown" (authorization, election…).
    pub topic_errors: Vec<(String, ResponseError)>,
    /// Partitions whose answer was older (lower leader epoch) than what was
    /// known, and was ignored.
    pub stale_partitions: usize,
    /// Partitions whose leader changed.
    pub leader_changes: usize,
}

impl Metadata {
    /// The leader of a partition: its broker and the leader epoch.
    pub fn leader(&self, topic: &str, partition: i32) -> Option<(&BrokerInfo, i32)> {
        let info = self.topics.get(topic)?.partition(partition)?;
        let broker = self.brokers.get(&info.leader?)?;
        Some((broker, info.leader_epoch))
    }

    /// Merges a Metadata response, returning the new snapshot.
    ///
    /// Rules:
    /// - the broker list is replaced (every answer carries all brokers),
    ///   unless it is empty; a controller id not in it counts as none;
    /// - a topic reported as unknown is dropped; a topic with another error
    ///   keeps what was known about it;
    /// - a partition whose leader epoch is lower than the known one comes
    ///   from a broker that has not caught up, and is ignored: metadata
    ///   never goes back in time, unless the topic id changed (the topic
    ///   was created again, and its epochs started over);
    /// - with [`TopicScope::All`], topics absent from the answer are gone.
    pub fn merge(&self, response: &MetadataResponse, scope: &TopicScope) -> (Metadata, MergeReport) {
        let mut next = self.clone();
        let mut report = MergeReport::default();

        let brokers: BTreeMap<i32, BrokerInfo> = response
            .brokers
            .iter()
            .filter_map(|b| {
                let port = u16::try_from(b.port).ok()?;
                Some((
                    b.node_id.0,
                    BrokerInfo {
                        id: b.node_id.0,
                        address: BrokerAddress::new(b.host.as_str(), port),
                        rack: b.rack.as_ref().map(|r| r.to_string()),
                    },
                ))
            })
            .collect();
        if !brokers.is_empty() {
            next.brokers = brokers;
        }
        // A controller outside the broker list (librdkafka's mock reports one)
        // is no controller: admin requests then go to any broker, which
        // forwards them in KRaft clusters.
        let controller = response.controller_id.0;
        next.controller = next.brokers.contains_key(&controller).then_some(controller);
        if let Some(id) = &response.cluster_id {
            next.cluster_id = Some(id.to_string());
        }

        let mut seen = Vec::with_capacity(response.topics.len());
        for topic in &response.topics {
            let Some(name) = topic.name.as_ref().map(|n| n.0.to_string()) else {
                continue;
            };
            seen.push(name.clone());
            match ResponseError::try_from_code(topic.error_code) {
                None => {}
                Some(ResponseError::UnknownTopicOrPartition | ResponseError::InvalidTopicException) => {
                    next.topics.remove(&name);
                    report.unknown_topics.push(name);
                    continue;
                }
                Some(code) => {
                    report.topic_errors.push((name, code));
                    continue;
                }
            }
            // A topic deleted and created again under the same name has a
            // new id, and its leader epochs start over: what was known of
            // the old one says nothing of it. As Java's client, a first id
            // after none counts as new too.
            let previous = self.topics.get(&name).filter(|known| topic.topic_id.is_nil() || known.id == topic.topic_id);
            let mut partitions: Vec<PartitionInfo> = topic
                .partitions
                .iter()
                .map(|p| {
                    let fresh = PartitionInfo {
                        partition: p.partition_index,
                        leader: (p.leader_id.0 >= 0).then_some(p.leader_id.0),
                        leader_epoch: p.leader_epoch,
                        replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                        isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                        offline_replicas: p.offline_replicas.iter().map(|b| b.0).collect(),
                        error: ResponseError::try_from_code(p.error_code),
                    };
                    match previous.and_then(|t| t.partition(p.partition_index)) {
                        Some(old) if old.leader_epoch >= 0 && fresh.leader_epoch < old.leader_epoch => {
                            report.stale_partitions += 1;
                            old.clone()
                        }
                        Some(old) => {
                            if old.leader != fresh.leader {
                                report.leader_changes += 1;
                            }
                            fresh
                        }
                        None => fresh,
                    }
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            next.topics
                .insert(name.clone(), TopicInfo { name, id: topic.topic_id, internal: topic.is_internal, partitions });
        }
        if *scope == TopicScope::All {
            next.topics.retain(|name, _| seen.contains(name));
        }
        (next, report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn broker(id: i32, port: i32) -> MetadataResponseBroker {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_static_str("127.0.0.1"))
            .with_port(port)
    }

    fn partition(index: i32, leader: i32, epoch: i32) -> MetadataResponsePartition {
        MetadataResponsePartition::default()
            .with_partition_index(index)
            .with_leader_id(BrokerId(leader))
            .with_leader_epoch(epoch)
            .with_replica_nodes(vec![BrokerId(leader)])
            .with_isr_nodes(vec![BrokerId(leader)])
    }

    fn topic(name: &'static str, error: i16, partitions: Vec<MetadataResponsePartition>) -> MetadataResponseTopic {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str(name))))
            .with_error_code(error)
            .with_partitions(partitions)
    }

    fn response(topics: Vec<MetadataResponseTopic>) -> MetadataResponse {
        MetadataResponse::default()
            .with_brokers(vec![broker(1, 9001), broker(2, 9002)])
            .with_controller_id(BrokerId(1))
            .with_topics(topics)
    }

    fn named(names: &[&str]) -> TopicScope {
        TopicScope::Named(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn first_answer_fills_brokers_topics_and_leaders() {
        let answer = response(vec![topic("t", 0, vec![partition(1, 2, 5), partition(0, 1, 3)])]);
        let (metadata, report) = Metadata::default().merge(&answer, &named(&["t"]));
        assert_eq!(report, MergeReport::default());
        assert_eq!(metadata.brokers.len(), 2);
        assert_eq!(metadata.controller, Some(1));
        let t = &metadata.topics["t"];
        assert_eq!(t.partitions.iter().map(|p| p.partition).collect::<Vec<_>>(), [0, 1]);
        let (leader, epoch) = metadata.leader("t", 1).unwrap();
        assert_eq!((leader.id, leader.address.port, epoch), (2, 9002, 5));
        assert!(metadata.leader("t", 2).is_none());
        assert!(metadata.leader("other", 0).is_none());
    }

    #[test]
    fn lower_leader_epoch_never_overwrites_newer_knowledge() {
        let (known, _) = Metadata::default()
            .merge(&response(vec![topic("t", 0, vec![partition(0, 2, 7), partition(1, 1, 3)])]), &named(&["t"]));
        // A lagging broker still thinks broker 1 leads partition 0 at epoch 6.
        let stale = response(vec![topic("t", 0, vec![partition(0, 1, 6), partition(1, 2, 4)])]);
        let (merged, report) = known.merge(&stale, &named(&["t"]));
        assert_eq!(report.stale_partitions, 1);
        assert_eq!(report.leader_changes, 1);
        assert_eq!(merged.leader("t", 0).map(|(b, e)| (b.id, e)), Some((2, 7)));
        assert_eq!(merged.leader("t", 1).map(|(b, e)| (b.id, e)), Some((2, 4)));
    }

    #[test]
    fn a_new_topic_id_starts_the_leader_epochs_over() {
        let old = Uuid::from_u128(1);
        let new = Uuid::from_u128(2);
        let (known, _) = Metadata::default()
            .merge(&response(vec![topic("t", 0, vec![partition(0, 2, 7)]).with_topic_id(old)]), &named(&["t"]));
        let recreated = response(vec![topic("t", 0, vec![partition(0, 1, 0)]).with_topic_id(new)]);
        let (merged, report) = known.merge(&recreated, &named(&["t"]));
        assert_eq!(report.stale_partitions, 0);
        assert_eq!(merged.leader("t", 0).map(|(b, e)| (b.id, e)), Some((1, 0)));
        assert_eq!(merged.topics["t"].id, new);
        // The same id with a lower epoch is still a lagging broker.
        let lagging = response(vec![topic("t", 0, vec![partition(0, 1, 0)]).with_topic_id(old)]);
        let (merged, report) = known.merge(&lagging, &named(&["t"]));
        assert_eq!(report.stale_partitions, 1);
        assert_eq!(merged.leader("t", 0).map(|(b, e)| (b.id, e)), Some((2, 7)));
    }

    #[test]
    fn unknown_topics_are_dropped_other_errors_keep_what_was_known() {
        let (known, _) = Metadata::default().merge(
            &response(vec![topic("a", 0, vec![partition(0, 1, 1)]), topic("b", 0, vec![partition(0, 1, 1)])]),
            &named(&["a", "b"]),
        );
        let answer = response(vec![topic("a", 3, vec![]), topic("b", 5, vec![])]);
        let (merged, report) = known.merge(&answer, &named(&["a", "b"]));
        assert_eq!(report.unknown_topics, ["a"]);
        assert_eq!(report.topic_errors, [("b".to_string(), ResponseError::LeaderNotAvailable)]);
        assert!(!merged.topics.contains_key("a"));
        assert!(merged.topics.contains_key("b"));
    }

    #[test]
    fn only_a_full_listing_removes_absent_topics() {
        let (known, _) = Metadata::default().merge(
            &response(vec![topic("a", 0, vec![partition(0, 1, 1)]), topic("b", 0, vec![partition(0, 1, 1)])]),
            &TopicScope::All,
        );
        let only_a = response(vec![topic("a", 0, vec![partition(0, 1, 1)])]);
        let (named_merge, _) = known.merge(&only_a, &named(&["a"]));
        assert!(named_merge.topics.contains_key("b"));
        let (full_merge, _) = known.merge(&only_a, &TopicScope::All);
        assert!(!full_merge.topics.contains_key("b"));
    }

    #[test]
    fn a_controller_that_is_not_a_broker_is_no_controller() {
        let answer = response(vec![]).with_controller_id(BrokerId(0));
        let (metadata, _) = Metadata::default().merge(&answer, &TopicScope::None);
        assert_eq!(metadata.controller, None);
    }

    #[test]
    fn empty_broker_list_keeps_the_known_brokers() {
        let (known, _) = Metadata::default().merge(&response(vec![]), &TopicScope::None);
        let (merged, _) = known.merge(&MetadataResponse::default(), &TopicScope::None);
        assert_eq!(merged.brokers.len(), 2);
        assert_eq!(merged.controller, None);
    }
}
