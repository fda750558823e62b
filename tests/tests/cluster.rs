//! Connections, version negotiation, metadata and admin calls against real
//! brokers: Tansu and a 3-broker librdkafka mock cluster (and
//! `KAFKA_BOOTSTRAP`, when set).

use std::collections::BTreeSet;
use std::time::Duration;

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiKey, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use rill_client::{BrokerAddress, Client, Error, NewTopic, OffsetSpec, ResponseError, TopicPartition, TopicScope};
use rill_testkit::cluster::on_mock;
use rill_testkit::mock::RDKafkaApiKey;
use rill_testkit::{BrokerKind, Capability, ClusterOptions, TestCluster, each_broker, unique_topic};
use tokio::task::JoinSet;

fn expected_brokers(cluster: &TestCluster) -> Option<usize> {
    match cluster.kind() {
        BrokerKind::Tansu => Some(1),
        BrokerKind::Mock => Some(3),
        BrokerKind::External => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_list_create_describe_offsets_delete() {
    each_broker(ClusterOptions::default(), async |cluster| {
        let client = cluster.client();
        let admin = client.admin().timeout(Duration::from_secs(20));

        // ApiVersions negotiated with every broker the metadata lists.
        let metadata = client.refresh_metadata(TopicScope::None).await.unwrap();
        if let Some(n) = expected_brokers(cluster) {
            assert_eq!(metadata.brokers.len(), n, "brokers: {:?}", metadata.brokers);
        }
        for id in metadata.brokers.keys() {
            let connection = client.broker_connection(*id).await.unwrap();
            assert!(connection.api_versions().len() > 10, "broker {id} advertised too little");
            let metadata_version = connection.version_for::<MetadataRequest>().unwrap();
            assert!(metadata_version >= 9, "metadata v{metadata_version}");
            let (_, api_versions_max) = connection.api_versions().range(ApiKey::ApiVersions).unwrap();
            if cluster.kind() == BrokerKind::Mock {
                // The mock rejects our v3 ApiVersions (error 35 with a non-v0
                // body): the client fell back and still negotiated.
                assert!(api_versions_max < 3);
            }
        }

        // A 6-partition topic.
        let topic = unique_topic("cluster");
        if cluster.has(Capability::TopicAdmin) {
            admin.create_topics(&[NewTopic::new(&topic, 6)]).await.unwrap();
            let again = admin.create_topics(&[NewTopic::new(&topic, 6)]).await.unwrap_err();
            assert_eq!(again.code(), Some(ResponseError::TopicAlreadyExists), "{again}");
        } else {
            // Gap of the mock: no CreateTopics. The error names the API.
            let error = admin.create_topics(&[NewTopic::new(&topic, 6)]).await.unwrap_err();
            assert!(matches!(error, Error::UnsupportedApi { api: ApiKey::CreateTopics, .. }), "{error:?}");
            assert!(error.to_string().contains("CreateTopics"), "{error}");
            cluster.create_topic(&topic, 6).await.unwrap();
        }
        let described = admin.describe_topics(&[topic.as_str()]).await.unwrap();
        assert_eq!(described.len(), 1);
        let info = &described[0];
        assert_eq!(info.partitions.len(), 6);
        let metadata = client.metadata();
        for (index, partition) in info.partitions.iter().enumerate() {
            assert_eq!(partition.partition, index as i32);
            let leader = partition.leader.expect("every partition has a leader");
            assert!(metadata.brokers.contains_key(&leader), "leader {leader} is not a known broker");
        }
        if cluster.kind() == BrokerKind::Mock {
            // The testkit spreads leadership over the three brokers, each
            // leader one of its partition's replicas.
            for partition in &info.partitions {
                let leader = partition.leader.unwrap();
                assert!(partition.replicas.contains(&leader), "{partition:?}");
            }
            let leaders: BTreeSet<i32> = info.partitions.iter().filter_map(|p| p.leader).collect();
            assert_eq!(leaders, BTreeSet::from([1, 2, 3]), "leadership is spread over the brokers");
        }
        let listed = admin.list_topics().await.unwrap();
        assert!(listed.iter().any(|t| t.name == topic));

        // Offsets of an empty topic: 0 and 0 everywhere.
        for spec in [OffsetSpec::Earliest, OffsetSpec::Latest] {
            let requests: Vec<_> = (0..6).map(|p| (TopicPartition::new(&topic, p), spec)).collect();
            let offsets = admin.list_offsets(&requests).await.unwrap();
            assert_eq!(offsets.len(), 6);
            for (tp, listed) in &offsets {
                assert_eq!(listed.offset, 0, "{spec:?} of {tp}");
            }
        }
        let missing = admin.list_offsets(&[(TopicPartition::new(&topic, 99), OffsetSpec::Latest)]).await.unwrap_err();
        assert!(matches!(missing, Error::UnknownTopicOrPartition(_)), "{missing:?}");

        // Delete.
        if cluster.has(Capability::TopicAdmin) {
            admin.delete_topics(&[topic.as_str()]).await.unwrap();
            let gone = admin.describe_topics(&[topic.as_str()]).await.unwrap_err();
            assert!(matches!(gone, Error::UnknownTopicOrPartition(ref t) if *t == topic), "{gone:?}");
            assert!(!admin.list_topics().await.unwrap().iter().any(|t| t.name == topic));
        } else {
            let error = admin.delete_topics(&[topic.as_str()]).await.unwrap_err();
            assert!(matches!(error, Error::UnsupportedApi { api: ApiKey::DeleteTopics, .. }), "{error:?}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelined_requests_on_one_connection_are_all_matched() {
    each_broker(ClusterOptions::default(), async |cluster| {
        let client = cluster.client();
        let connection = client.any_connection().await.unwrap();
        let mut requests = JoinSet::new();
        for i in 0..1000 {
            let connection = connection.clone();
            requests.spawn(async move {
                // Each asks about its own (absent) topic; the answer must be
                // about that topic and no other.
                let name = format!("pipelined-probe-{i}");
                let request = MetadataRequest::default().with_topics(Some(vec![
                    MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(name.clone())))),
                ]));
                let response = connection.send(&request).await.unwrap();
                let names: Vec<String> =
                    response.topics.iter().filter_map(|t| t.name.as_ref().map(|n| n.0.to_string())).collect();
                assert_eq!(names, [name]);
                i
            });
        }
        let mut answered = BTreeSet::new();
        while let Some(done) = requests.join_next().await {
            answered.insert(done.unwrap());
        }
        assert_eq!(answered.len(), 1000);
        assert!(!connection.is_closed(), "{:?}", connection.close_reason());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_bootstrap_broker_does_not_fail_the_client() {
    each_broker(ClusterOptions::default(), async |cluster| {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut servers = vec![BrokerAddress::new("127.0.0.1", dead)];
        servers.extend(cluster.bootstrap().split(',').map(|s| BrokerAddress::parse(s).unwrap()));
        let config = cluster.client_config().bootstrap_servers(servers);
        for _ in 0..3 {
            // A fresh client each time: its first candidate may be the dead one.
            let client = Client::new(config.clone()).unwrap();
            let metadata = client.refresh_metadata(TopicScope::None).await.unwrap();
            assert!(!metadata.brokers.is_empty());
        }
        // Names, not only addresses: every address `localhost` resolves to is
        // tried (on a machine where it is ::1 first, that one is refused).
        let by_name = cluster.bootstrap().replace("127.0.0.1", "localhost");
        let client = Client::new(
            cluster
                .client_config()
                .bootstrap_servers(by_name.split(',').map(|s| BrokerAddress::parse(s).unwrap()).collect()),
        )
        .unwrap();
        client.refresh_metadata(TopicScope::None).await.unwrap();

        let nobody = cluster
            .client_config()
            .bootstrap_servers(vec![BrokerAddress::new("127.0.0.1", dead)])
            .connection_setup_timeout(Duration::from_millis(500));
        let error = Client::new(nobody).unwrap().refresh_metadata(TopicScope::None).await.unwrap_err();
        assert!(matches!(error, Error::NoBrokerAvailable { .. }), "{error:?}");
        assert!(error.to_string().contains(&format!("127.0.0.1:{dead}")), "{error}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_moves_and_dead_brokers_on_the_mock() {
    on_mock(ClusterOptions::default(), async |cluster, mock| {
        let topic = unique_topic("moves");
        mock.create_topic(&topic, 3, 3).unwrap();
        // Pin leaders: partition p on broker p + 1.
        for partition in 0..3 {
            mock.partition_leader(&topic, partition, Some(partition + 1)).unwrap();
        }
        let client = cluster.client();
        let scope = TopicScope::Named(vec![topic.clone()]);
        let before = client.refresh_metadata(scope.clone()).await.unwrap();
        let leaders: Vec<_> = before.topics[&topic].partitions.iter().map(|p| p.leader).collect();
        assert_eq!(leaders, [Some(1), Some(2), Some(3)]);
        let epoch = before.topics[&topic].partitions[0].leader_epoch;
        mock.partition_leader(&topic, 0, Some(2)).unwrap();
        let after = client.refresh_metadata(scope.clone()).await.unwrap();
        assert_eq!(after.topics[&topic].partitions[0].leader, Some(2));
        assert!(after.topics[&topic].partitions[0].leader_epoch > epoch, "a leader move bumps the epoch");

        // With broker 3 down, metadata still comes from the others, and
        // offsets of the partitions it does not lead are still listed.
        let down = 3;
        mock.broker_down(down).unwrap();
        let during = client.refresh_metadata(scope.clone()).await.unwrap();
        assert!(during.brokers.len() >= 2, "brokers while {down} is down: {:?}", during.brokers);
        let led_elsewhere = [0, 1].map(|p| (TopicPartition::new(&topic, p), OffsetSpec::Latest));
        let offsets = client.admin().list_offsets(&led_elsewhere).await.unwrap();
        assert_eq!(offsets.len(), 2);
        mock.broker_up(down).unwrap();
        let all: Vec<_> = (0..3).map(|p| (TopicPartition::new(&topic, p), OffsetSpec::Earliest)).collect();
        let offsets = client.admin().timeout(Duration::from_secs(20)).list_offsets(&all).await.unwrap();
        assert_eq!(offsets.len(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_metadata_versions_negotiate_and_decode() {
    on_mock(ClusterOptions::default(), async |cluster, mock| {
        let topic = unique_topic("versions");
        mock.create_topic(&topic, 2, 1).unwrap();
        for max in [1i16, 4, 8] {
            mock.api_version(RDKafkaApiKey::Metadata, Some(0), Some(max)).unwrap();
            let client = cluster.client();
            let connection = client.any_connection().await.unwrap();
            assert_eq!(connection.version_for::<MetadataRequest>().unwrap(), max);
            let metadata = client.refresh_metadata(TopicScope::Named(vec![topic.clone()])).await.unwrap();
            assert_eq!(metadata.topics[&topic].partitions.len(), 2, "at Metadata v{max}");
            assert!(metadata.topics[&topic].partitions.iter().all(|p| p.leader.is_some()));
        }
        // Take Metadata away altogether: the error names the API.
        mock.api_version(RDKafkaApiKey::Metadata, None, None).unwrap();
        let error = cluster.client().refresh_metadata(TopicScope::None).await.unwrap_err();
        let Error::NoBrokerAvailable { last, .. } = &error else { panic!("{error:?}") };
        assert!(matches!(**last, Error::UnsupportedApi { api: ApiKey::Metadata, .. }), "{last:?}");
        assert!(last.to_string().contains("does not support Metadata"), "{last}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_refreshes_itself_for_topics_in_use() {
    on_mock(ClusterOptions::default(), async |cluster, mock| {
        let topic = unique_topic("refresh");
        mock.create_topic(&topic, 2, 3).unwrap();
        mock.partition_leader(&topic, 0, Some(1)).unwrap();
        let config = cluster.client_config().metadata_max_age(Duration::from_millis(200));
        let client = Client::new(config).unwrap();
        // Listing offsets puts the topic among those the refresher covers.
        let tp = TopicPartition::new(&topic, 0);
        client.admin().list_offsets(&[(tp.clone(), OffsetSpec::Latest)]).await.unwrap();
        assert_eq!(client.metadata().leader(&topic, 0).map(|(b, _)| b.id), Some(1));

        mock.partition_leader(&topic, 0, Some(3)).unwrap();
        // No request from us: the snapshot changes by itself.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while client.metadata().leader(&topic, 0).map(|(b, _)| b.id) != Some(3) {
            assert!(tokio::time::Instant::now() < deadline, "metadata was not refreshed within 5 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_errors_are_retried_after_a_metadata_refresh() {
    on_mock(ClusterOptions::default(), async |cluster, mock| {
        let topic = unique_topic("not-leader");
        mock.create_topic(&topic, 1, 3).unwrap();
        let client = cluster.client();
        let tp = TopicPartition::new(&topic, 0);
        client.admin().list_offsets(&[(tp.clone(), OffsetSpec::Earliest)]).await.unwrap();
        use rill_testkit::mock::RDKafkaRespErr::*;
        mock.request_errors(
            RDKafkaApiKey::ListOffsets,
            &[RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE],
        )
        .unwrap();
        let offsets = client.admin().list_offsets(&[(tp.clone(), OffsetSpec::Latest)]).await.unwrap();
        assert_eq!(offsets[&tp].offset, 0);

        // A fatal code is not retried.
        mock.request_errors(RDKafkaApiKey::ListOffsets, &[RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED]).unwrap();
        let error = client.admin().list_offsets(&[(tp.clone(), OffsetSpec::Latest)]).await.unwrap_err();
        assert_eq!(error.code(), Some(ResponseError::TopicAuthorizationFailed), "{error}");
    })
    .await;
}
