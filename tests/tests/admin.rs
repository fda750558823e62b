//! Group and cluster administration against real brokers, each change
//! checked by an independent client (librdkafka), each missing API checked
//! to be named in the error.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rill_client::consumer::{AssignmentStrategy, Consumer, ConsumerConfig, Event, OffsetReset};
use rill_client::kafka_protocol::messages::ApiKey;
use rill_client::{Admin, AlterConfig, ConfigResource, Error, GroupState, ResponseError, TopicPartition};
use rill_testkit::{BrokerKind, ClusterOptions, TestCluster, each_broker, unique_topic};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const PARTITIONS: i32 = 4;
const PER_PARTITION: i64 = 10;

/// One record per request, so that Tansu's ListOffsets (which counts
/// batches, FIXTURES.md) agrees with the record count.
async fn fill(cluster: &TestCluster, topic: &str, per_partition: i64) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("linger.ms", "0")
        .set("max.in.flight", "1")
        .create()
        .unwrap();
    for partition in 0..PARTITIONS {
        for i in 0..per_partition {
            let value = format!("{partition}:{i}");
            let record = FutureRecord::<(), String>::to(topic).partition(partition).payload(&value);
            producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e).unwrap();
        }
    }
}

fn is_unsupported(error: &Error, api: ApiKey) -> bool {
    matches!(error, Error::UnsupportedApi { api: a, .. } if *a == api)
        && error.to_string().contains(&format!("{api:?}"))
}

/// A member that reads until stopped, then closes (commits and leaves).
struct Member {
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<usize>,
}

impl Member {
    fn rill(cluster: &TestCluster, group: &str, topic: &str) -> Member {
        let config = ConsumerConfig::new(cluster.client_config().client_id("rill-member"))
            .group(group)
            .offset_reset(OffsetReset::Earliest)
            .session(Duration::from_secs(6), Duration::from_millis(500))
            .auto_commit(true, Duration::from_millis(200))
            .strategies(vec![AssignmentStrategy::Range])
            .fetch_wait(1, Duration::from_millis(100));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let topic = topic.to_owned();
        let task = tokio::spawn(async move {
            let mut consumer = Consumer::new(config).unwrap();
            consumer.subscribe(&[&topic]).unwrap();
            let mut records = 0;
            loop {
                let event = tokio::select! {
                    event = consumer.next_event() => event.unwrap(),
                    _ = stopped.wait_for(|s| *s) => break,
                };
                match event {
                    Event::Record(_) => records += 1,
                    Event::Error { error, .. } => panic!("rill member: {error}"),
                    _ => {}
                }
            }
            consumer.close(Duration::from_secs(10)).await.unwrap();
            records
        });
        Member { stop, task }
    }

    fn librdkafka(cluster: &TestCluster, group: &str, topic: &str) -> Member {
        let consumer: StreamConsumer = rd_consumer(cluster, group, "rd-member").create().unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut records = 0;
            loop {
                tokio::select! {
                    message = consumer.recv() => { message.unwrap(); records += 1 }
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
            tokio::task::spawn_blocking(move || drop(consumer)).await.unwrap();
            records
        });
        Member { stop, task }
    }

    async fn stop(self) -> usize {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), self.task).await.expect("the member closes").unwrap()
    }
}

fn rd_consumer(cluster: &TestCluster, group: &str, client_id: &str) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config
        .set("bootstrap.servers", cluster.bootstrap())
        .set("group.id", group)
        .set("client.id", client_id)
        .set("partition.assignment.strategy", "range")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .set("auto.commit.interval.ms", "200");
    config
}

/// The group's committed offsets as librdkafka reads them.
fn librdkafka_committed(cluster: &TestCluster, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = rd_consumer(cluster, group, "rd-checker").create().unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = probe().await {
            return found;
        }
        assert!(Instant::now() < end, "{what}: not within 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn committed_everywhere(admin: &Admin, group: &str, topic: &str, offset: i64) {
    eventually(&format!("group {group} committed {offset} on every partition"), async || {
        let offsets = admin.list_group_offsets(group).await.unwrap();
        let mine: Vec<i64> = offsets.iter().filter(|(tp, _)| tp.topic == topic).map(|(_, o)| o.offset).collect();
        (mine.len() == PARTITIONS as usize && mine.iter().all(|o| *o == offset)).then_some(())
    })
    .await
}

/// A group with a Rill member and a librdkafka member: listed, described
/// (both members, their client ids and disjoint assignments covering the
/// topic), its offsets listed; altering them is refused while the members
/// run; once they stop, offsets set to 0 are what librdkafka reads and where
/// a new member starts; then the group is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_listed_described_reset_and_deleted() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let admin = cluster.client().admin().timeout(Duration::from_secs(20));
        let topic = unique_topic("admin-groups");
        let group = unique_topic("admin-g");
        cluster.create_topic(&topic, PARTITIONS).await.unwrap();
        fill(cluster, &topic, PER_PARTITION).await;

        let rill = Member::rill(cluster, &group, &topic);
        let rd = Member::librdkafka(cluster, &group, &topic);
        committed_everywhere(&admin, &group, &topic, PER_PARTITION).await;

        let listed = admin.list_groups().await;
        let described = admin.describe_group(&group).await;
        if cluster.kind() == BrokerKind::Mock {
            // Gap of the mock: no ListGroups, DescribeGroups.
            assert!(is_unsupported(listed.as_ref().unwrap_err(), ApiKey::ListGroups), "{listed:?}");
            let error = described.unwrap_err();
            assert!(is_unsupported(&error, ApiKey::DescribeGroups), "{error:?}");
        } else {
            let listed = listed.unwrap();
            let ours = listed.iter().find(|g| g.group == group).unwrap_or_else(|| panic!("{group} in {listed:?}"));
            assert_eq!(ours.protocol_type, "consumer");
            let described = eventually("both members in a stable group", async || {
                let d = admin.describe_group(&group).await.unwrap();
                (d.state == GroupState::Stable && d.members.len() == 2).then_some(d)
            })
            .await;
            assert_eq!(described.protocol_type, "consumer");
            // Gap of Tansu: DescribeGroups leaves the chosen protocol (the
            // assignor) empty.
            let expected_protocol = if cluster.kind() == BrokerKind::Tansu { "" } else { "range" };
            assert_eq!(described.protocol, expected_protocol);
            // Member ids are the client id and a uuid, on every broker.
            let mut ids: Vec<&str> = described.members.iter().map(|m| m.member_id.as_str()).collect();
            ids.sort();
            assert!(ids[0].starts_with("rd-member-") && ids[1].starts_with("rill-member-"), "{ids:?}");
            if cluster.kind() == BrokerKind::Tansu {
                // Gap of Tansu: DescribeGroups names the members only (no
                // client id, host, subscription or assignment).
                for member in &described.members {
                    assert_eq!((member.client_id.as_str(), member.assignment.as_ref()), ("", None), "{member:?}");
                }
            } else {
                let clients: BTreeSet<&str> = described.members.iter().map(|m| m.client_id.as_str()).collect();
                assert_eq!(clients, BTreeSet::from(["rd-member", "rill-member"]));
                let mut covered = BTreeSet::new();
                for member in &described.members {
                    assert_eq!(member.subscription.as_deref(), Some(&[topic.clone()][..]), "{member:?}");
                    let assigned = member.assignment.as_ref().expect("a decoded assignment");
                    assert_eq!(assigned.len(), 2, "range gives each of two members two of four: {member:?}");
                    for tp in assigned {
                        assert!(covered.insert(tp.clone()), "{tp} assigned twice");
                    }
                }
                assert_eq!(covered, (0..PARTITIONS).map(|p| TopicPartition::new(&topic, p)).collect());
            }

            // Kafka's rule: a group's offsets move only while it is empty.
            let zeros: BTreeMap<TopicPartition, i64> =
                (0..PARTITIONS).map(|p| (TopicPartition::new(&topic, p), 0)).collect();
            let refused = admin.alter_group_offsets(&group, &zeros).await.unwrap_err();
            assert_eq!(refused.code(), Some(ResponseError::NonEmptyGroup), "{refused}");
            assert!(refused.to_string().contains(&group) && refused.to_string().contains("2 member"), "{refused}");
            let refused = admin.delete_groups(&[group.as_str()]).await.unwrap_err();
            assert_eq!(refused.code(), Some(ResponseError::NonEmptyGroup), "{refused}");
        }
        let read = rill.stop().await + rd.stop().await;
        assert_eq!(read as i64, PARTITIONS as i64 * PER_PARTITION, "the two members read the topic once");
        assert_eq!(
            librdkafka_committed(cluster, &group, &topic),
            (0..PARTITIONS).map(|p| (p, PER_PARTITION)).collect()
        );

        // Stopped: back to the start.
        if cluster.kind() == BrokerKind::Tansu {
            eventually("the group empty", async || {
                let d = admin.describe_group(&group).await.unwrap();
                d.members.is_empty().then_some(())
            })
            .await;
        }
        let zeros: BTreeMap<TopicPartition, i64> =
            (0..PARTITIONS).map(|p| (TopicPartition::new(&topic, p), 0)).collect();
        let altered = admin.alter_group_offsets(&group, &zeros).await;
        if cluster.kind() == BrokerKind::Mock {
            // Gap of the mock: once a group exists it refuses every commit
            // from outside it (UNKNOWN_MEMBER_ID), empty or not.
            let refused = altered.unwrap_err();
            assert_eq!(refused.code(), Some(ResponseError::NonEmptyGroup), "{refused}");
            assert!(
                refused.to_string().contains("UNKNOWN_MEMBER_ID") || refused.to_string().contains("UnknownMemberId"),
                "{refused}"
            );
        } else {
            altered.unwrap();
            assert_eq!(librdkafka_committed(cluster, &group, &topic), (0..PARTITIONS).map(|p| (p, 0)).collect());
            let again = Member::librdkafka(cluster, &group, &topic);
            committed_everywhere(&admin, &group, &topic, PER_PARTITION).await;
            assert_eq!(
                again.stop().await as i64,
                PARTITIONS as i64 * PER_PARTITION,
                "a new member re-reads everything"
            );
        }

        // Neither broker has OffsetDelete: the error names it.
        let error = admin.delete_group_offsets(&group, &[TopicPartition::new(&topic, 0)]).await.unwrap_err();
        assert!(is_unsupported(&error, ApiKey::OffsetDelete), "{error:?}");

        let deleted = admin.delete_groups(&[group.as_str()]).await;
        if cluster.kind() == BrokerKind::Mock {
            assert!(is_unsupported(deleted.as_ref().unwrap_err(), ApiKey::DeleteGroups), "{deleted:?}");
        } else {
            eventually("the group deleted", async || {
                // A member's LeaveGroup may still be settling.
                match admin.delete_groups(&[group.as_str()]).await {
                    Ok(()) => Some(()),
                    Err(error) if error.code() == Some(ResponseError::GroupIdNotFound) => Some(()),
                    Err(error) if error.code() == Some(ResponseError::NonEmptyGroup) => None,
                    Err(error) => panic!("{error}"),
                }
            })
            .await;
            assert!(!admin.list_groups().await.unwrap().iter().any(|g| g.group == group));
            assert!(admin.list_group_offsets(&group).await.unwrap().is_empty());
            assert_eq!(librdkafka_committed(cluster, &group, &topic), BTreeMap::new());
            let gone = admin.describe_group(&group).await;
            if cluster.kind() == BrokerKind::Tansu {
                // Gap of Tansu: any unknown group is described as Empty.
                let gone = gone.unwrap();
                assert_eq!((gone.state, gone.members.len()), (GroupState::Empty, 0));
            } else {
                let gone = gone.unwrap_err();
                assert_eq!(gone.code(), Some(ResponseError::GroupIdNotFound), "{gone}");
            }
        }
    })
    .await;
}

/// DeleteRecords moves the log start; librdkafka sees the new low
/// watermark and reads from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_before_an_offset_are_deleted() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let admin = cluster.client().admin().timeout(Duration::from_secs(20));
        let topic = unique_topic("admin-records");
        cluster.create_topic(&topic, PARTITIONS).await.unwrap();
        fill(cluster, &topic, PER_PARTITION).await;
        let before = BTreeMap::from([(TopicPartition::new(&topic, 0), 4), (TopicPartition::new(&topic, 1), -1)]);
        if cluster.kind() == BrokerKind::Tansu {
            // Gap of Tansu: it advertises DeleteRecords, but its memory
            // engine panics on it ("not yet implemented") and drops the
            // connection; the call is retried to its deadline and says so.
            let admin = cluster.client().admin().timeout(Duration::from_secs(3));
            let error = admin.delete_records(&before).await.unwrap_err();
            assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
            assert!(error.to_string().contains("deleting records") && error.to_string().contains("closed"), "{error}");
            return;
        }
        let deleted = admin.delete_records(&before).await;
        if cluster.kind() == BrokerKind::Mock {
            let error = deleted.unwrap_err();
            assert!(is_unsupported(&error, ApiKey::DeleteRecords), "{error:?}");
            return;
        }
        let deleted = deleted.unwrap();
        assert_eq!(deleted[&TopicPartition::new(&topic, 0)], 4);
        assert_eq!(deleted[&TopicPartition::new(&topic, 1)], PER_PARTITION, "-1: up to the high watermark");
        let consumer: BaseConsumer = rd_consumer(cluster, "unused", "rd-checker").create().unwrap();
        let (low, high) = consumer.fetch_watermarks(&topic, 0, Duration::from_secs(10)).unwrap();
        assert_eq!((low, high), (4, PER_PARTITION));
        let (low, _) = consumer.fetch_watermarks(&topic, 2, Duration::from_secs(10)).unwrap();
        assert_eq!(low, 0, "an untouched partition keeps its records");
        let beyond = admin.delete_records(&BTreeMap::from([(TopicPartition::new(&topic, 2), 99)])).await.unwrap_err();
        assert_eq!(beyond.code(), Some(ResponseError::OffsetOutOfRange), "{beyond}");
    })
    .await;
}

/// A topic config set with IncrementalAlterConfigs is what librdkafka's
/// admin then describes, and removing it takes it away; partitions added
/// are what librdkafka's metadata lists. Where a broker lacks the API, the
/// error names it: the mock has no config APIs and neither broker has
/// CreatePartitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_configs_are_altered_and_partitions_added_where_the_broker_can() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let admin = cluster.client().admin().timeout(Duration::from_secs(20));
        let topic = unique_topic("admin-configs");
        cluster.create_topic(&topic, 2).await.unwrap();
        let resource = ConfigResource::Topic(topic.clone());
        let rd: AdminClient<DefaultClientContext> =
            rdkafka::ClientConfig::new().set("bootstrap.servers", cluster.bootstrap()).create().unwrap();
        let rd_retention = async || {
            let described = rd
                .describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
                .await
                .unwrap()
                .remove(0)
                .unwrap();
            described.get("retention.ms").and_then(|entry| entry.value.clone())
        };

        let set = admin.alter_configs(&resource, &[AlterConfig::Set("retention.ms".into(), "1234567".into())]).await;
        if cluster.kind() == BrokerKind::Mock {
            // Gap of the mock: no config APIs at all.
            assert!(is_unsupported(set.as_ref().unwrap_err(), ApiKey::IncrementalAlterConfigs), "{set:?}");
            let described = admin.describe_configs(std::slice::from_ref(&resource)).await;
            assert!(is_unsupported(described.as_ref().unwrap_err(), ApiKey::DescribeConfigs), "{described:?}");
        } else {
            set.unwrap();
            let ours = admin.describe_configs(std::slice::from_ref(&resource)).await.unwrap().remove(0).1;
            let retention = ours.iter().find(|e| e.name == "retention.ms").expect("retention.ms described");
            assert_eq!(retention.value.as_deref(), Some("1234567"));
            assert_eq!(rd_retention().await.as_deref(), Some("1234567"), "librdkafka reads the new value");
            admin.alter_configs(&resource, &[AlterConfig::Delete("retention.ms".into())]).await.unwrap();
            assert_ne!(rd_retention().await.as_deref(), Some("1234567"), "the override is gone");
        }

        let added = admin.create_partitions(&topic, 4).await;
        // Gap of both: no CreatePartitions (Kafka has it).
        assert!(is_unsupported(added.as_ref().unwrap_err(), ApiKey::CreatePartitions), "{added:?}");
        let metadata = rd_partitions(cluster, &topic);
        assert_eq!(metadata, 2, "the topic kept its partitions");
    })
    .await;
}

/// The partition count of `topic` as librdkafka's metadata has it.
fn rd_partitions(cluster: &TestCluster, topic: &str) -> usize {
    let consumer: BaseConsumer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", cluster.bootstrap()).create().unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    metadata.topics()[0].partitions().len()
}

/// The cluster as metadata has it: brokers, the controller among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_is_described() {
    each_broker(ClusterOptions::default(), async |cluster| {
        let admin = cluster.client().admin();
        let described = admin.describe_cluster().await.unwrap();
        let expected = match cluster.kind() {
            BrokerKind::Tansu => Some(1),
            BrokerKind::Mock => Some(3),
            BrokerKind::External => None,
        };
        if let Some(n) = expected {
            assert_eq!(described.brokers.len(), n, "{described:?}");
        }
        if cluster.kind() == BrokerKind::Mock {
            // Gap of the mock: its Metadata names no controller.
            assert_eq!(described.controller, None, "{described:?}");
        } else {
            let controller = described.controller.expect("a controller");
            assert!(described.brokers.iter().any(|b| b.id == controller), "{described:?}");
        }
    })
    .await;
}
