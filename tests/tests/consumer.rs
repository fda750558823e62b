//! The consumer against real brokers: reading what librdkafka wrote,
//! positions, offsets, and (with groups) membership.

mod common;

use std::time::Duration;

use rdkafka::message::{Header as RdHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rill_client::TopicPartition;
use rill_client::consumer::{Consumer, ConsumerConfig, Event, OffsetReset};
use rill_client::records::Compression;
use rill_testkit::{BrokerKind, ClusterOptions, TestCluster, each_broker, unique_topic};

/// librdkafka writes `count` records to partition `partition`: key `k{i}`
/// (null for every tenth), value `v{i}` (null for every seventh), headers
/// `dup=a, dup=b` and a null-valued one.
async fn write_with_librdkafka(cluster: &TestCluster, topic: &str, partition: i32, count: usize, codec: &str) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("compression.codec", codec)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for i in 0..count {
        let key = format!("k{i}");
        let value = format!("v{i}");
        let headers = OwnedHeaders::new()
            .insert(RdHeader { key: "dup", value: Some("a") })
            .insert(RdHeader { key: "dup", value: Some("b") })
            .insert(RdHeader::<&str> { key: "none", value: None });
        let mut record = FutureRecord::<String, String>::to(topic).partition(partition).headers(headers);
        if i % 10 != 0 {
            record = record.key(&key);
        }
        if i % 7 != 0 {
            record = record.payload(&value);
        }
        pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

fn consumer_config(cluster: &TestCluster) -> ConsumerConfig {
    ConsumerConfig::new(cluster.client_config())
        .offset_reset(OffsetReset::Earliest)
        .fetch_wait(1, Duration::from_millis(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_what_librdkafka_wrote_with_every_codec() {
    each_broker(ClusterOptions::default(), async |cluster| {
        for codec in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let topic = unique_topic(&format!("read-{codec}"));
            cluster.create_topic(&topic, 1).await.unwrap();
            write_with_librdkafka(cluster, &topic, 0, 3_000, &codec.to_string()).await;
            let mut consumer = Consumer::new(consumer_config(cluster)).unwrap();
            consumer.assign(&[TopicPartition::new(&topic, 0)]);
            for i in 0..3_000i64 {
                let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{codec}: record {i} did not arrive"))
                    .unwrap();
                assert_eq!(record.offset, i, "{codec}");
                let key = (i % 10 != 0).then(|| format!("k{i}"));
                let value = (i % 7 != 0).then(|| format!("v{i}"));
                assert_eq!(record.key.as_deref(), key.as_deref().map(str::as_bytes), "{codec} key {i}");
                assert_eq!(record.value.as_deref(), value.as_deref().map(str::as_bytes), "{codec} value {i}");
                let headers: Vec<(&str, Option<&[u8]>)> =
                    record.headers.iter().map(|h| (h.key.as_str(), h.value.as_deref())).collect();
                assert_eq!(headers, [("dup", Some(&b"a"[..])), ("dup", Some(&b"b"[..])), ("none", None)]);
                assert!(record.timestamp > 0);
            }
            assert_eq!(consumer.position(&TopicPartition::new(&topic, 0)), Some(3_000));
            consumer.close(Duration::from_secs(5)).await.unwrap();
        }
    })
    .await;
}

async fn recv_within(consumer: &mut Consumer, what: &str) -> rill_client::consumer::ConsumerRecord {
    tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} did not arrive"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_resumes_from_committed_offsets() {
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("resume");
        let group = unique_topic("resume-group");
        cluster.create_topic(&topic, 2).await.unwrap();
        for partition in 0..2 {
            write_with_librdkafka(cluster, &topic, partition, 100, "none").await;
        }
        let partitions = [TopicPartition::new(&topic, 0), TopicPartition::new(&topic, 1)];
        let config = consumer_config(cluster).group(&group).auto_commit(false, Duration::from_secs(5));

        let mut first = Consumer::new(config.clone()).unwrap();
        first.assign(&partitions);
        let mut seen = std::collections::BTreeMap::<i32, i64>::new();
        while seen.values().copied().sum::<i64>() < 2 * 60 {
            let record = recv_within(&mut first, "first consumer's record").await;
            let count = seen.entry(record.partition).or_default();
            if *count < 60 {
                assert_eq!(record.offset, *count);
                *count += 1;
                if *count == 60 {
                    first.handle().pause(&[record.topic_partition()]);
                }
            }
        }
        first.commit().await.unwrap();
        let committed = first.handle().committed(&partitions).await.unwrap();
        assert_eq!(committed.values().copied().collect::<Vec<_>>(), [Some(60), Some(60)]);
        first.close(Duration::from_secs(5)).await.unwrap();

        let mut second = Consumer::new(config).unwrap();
        second.assign(&partitions);
        let mut next = std::collections::BTreeMap::<i32, i64>::new();
        for _ in 0..80 {
            let record = recv_within(&mut second, "second consumer's record").await;
            let expected = next.entry(record.partition).or_insert(60);
            assert_eq!(record.offset, *expected, "partition {} resumes at its commit", record.partition);
            *expected += 1;
        }
        second.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}

/// Within one assignment the stored offset never goes back: an offset
/// below where the assignment started (the group's commit) or below one
/// already stored is refused, so a late store (a processor's tracker of a
/// partition lost and assigned again) cannot move the group's commit back.
/// A seek back lowers the floor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stored_offset_never_goes_back_within_an_assignment() {
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("store-floor");
        let group = unique_topic("store-floor-group");
        cluster.create_topic(&topic, 1).await.unwrap();
        write_with_librdkafka(cluster, &topic, 0, 20, "none").await;
        let tp = TopicPartition::new(&topic, 0);
        let config = consumer_config(cluster).group(&group).auto_commit(false, Duration::from_secs(5));
        let first = Consumer::new(config.clone()).unwrap();
        first.handle().commit_offsets(&[(tp.clone(), 10)]).await.unwrap();
        first.close(Duration::from_secs(5)).await.unwrap();

        let mut consumer = Consumer::new(config.auto_offset_store(false)).unwrap();
        consumer.assign(std::slice::from_ref(&tp));
        assert_eq!(recv_within(&mut consumer, "the record at the commit").await.offset, 10);
        let behind = |result: rill_client::Result<()>, expected: i64| match result {
            Err(rill_client::Error::OffsetBehind { floor, offset, .. }) => assert_eq!((floor, offset), (expected, 5)),
            other => panic!("storing 5 with the floor at {expected}: {other:?}"),
        };
        let handle = consumer.handle();
        behind(handle.store_offsets(&[(tp.clone(), 5)]), 10);
        handle.store_offsets(&[(tp.clone(), 12)]).unwrap();
        behind(handle.store_offsets(&[(tp.clone(), 5)]), 12);
        handle.commit().await.unwrap();
        assert_eq!(handle.committed(std::slice::from_ref(&tp)).await.unwrap()[&tp], Some(12));
        // Seeking back moves the floor down with the position.
        handle.seek(&tp, 3).unwrap();
        handle.store_offsets(&[(tp.clone(), 5)]).unwrap();
        handle.commit().await.unwrap();
        assert_eq!(handle.committed(std::slice::from_ref(&tp)).await.unwrap()[&tp], Some(5));
        consumer.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seek_pause_resume_and_partition_eof() {
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("seek");
        cluster.create_topic(&topic, 2).await.unwrap();
        write_with_librdkafka(cluster, &topic, 0, 50, "none").await;
        let tp = TopicPartition::new(&topic, 0);
        let other = TopicPartition::new(&topic, 1);
        let mut consumer = Consumer::new(consumer_config(cluster).partition_eof(true)).unwrap();
        consumer.assign(&[tp.clone(), other.clone()]);
        let handle = consumer.handle();

        // Read to the end: 50 records, then one end-of-partition event
        // (the other partition is empty: its end comes at offset 0).
        let mut offsets = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(20), consumer.next_event()).await.unwrap().unwrap() {
                Event::Record(record) => offsets.push((record.partition, record.offset)),
                Event::PartitionEof { partition, offset } if partition == other => assert_eq!(offset, 0),
                Event::PartitionEof { partition, offset } => {
                    assert_eq!((partition, offset), (tp.clone(), 50));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(offsets, (0..50).map(|o| (0, o)).collect::<Vec<_>>());

        // Seek back: the records come again from there.
        handle.seek(&tp, 45).unwrap();
        assert_eq!(recv_within(&mut consumer, "record after seek").await.offset, 45);

        // Paused: nothing of it arrives even though records wait, while a
        // record written later to another partition does.
        handle.pause(std::slice::from_ref(&tp));
        assert_eq!(handle.paused(), std::slice::from_ref(&tp));
        write_with_librdkafka(cluster, &topic, 1, 1, "none").await;
        let sentinel = recv_within(&mut consumer, "the other partition's record").await;
        assert_eq!((sentinel.partition, sentinel.offset), (1, 0), "a paused partition delivered {sentinel:?}");
        handle.resume(std::slice::from_ref(&tp));
        assert_eq!(recv_within(&mut consumer, "record after resume").await.offset, 46);

        // Seeking a partition not assigned is refused.
        assert!(handle.seek(&TopicPartition::new(&topic, 7), 0).is_err());
        consumer.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_reset_latest_and_error() {
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("reset");
        cluster.create_topic(&topic, 1).await.unwrap();
        // One record per batch: Tansu answers ListOffsets(latest) with the
        // newest batch's base offset + 1, right only for one-record batches.
        for _ in 0..10 {
            write_with_librdkafka(cluster, &topic, 0, 1, "none").await;
        }
        let tp = TopicPartition::new(&topic, 0);

        // `error` (Java: `none`) with no committed offset: an error naming the partition.
        let group = unique_topic("reset-group");
        let mut strict =
            Consumer::new(consumer_config(cluster).group(&group).offset_reset(OffsetReset::Error)).unwrap();
        strict.assign(std::slice::from_ref(&tp));
        match tokio::time::timeout(Duration::from_secs(20), strict.next_event()).await.unwrap().unwrap() {
            Event::Error { partition, error } => {
                assert_eq!(partition, Some(tp.clone()));
                assert!(matches!(error, rill_client::Error::NoOffset(_)), "{error:?}");
            }
            other => panic!("expected an error, got {other:?}"),
        }
        strict.close(Duration::from_secs(5)).await.unwrap();

        // `latest`: only what is written after the consumer starts.
        let mut latest = Consumer::new(consumer_config(cluster).offset_reset(OffsetReset::Latest)).unwrap();
        latest.assign(std::slice::from_ref(&tp));
        // Wait until the position is resolved before writing more.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while latest.position(&tp).is_none() {
            assert!(tokio::time::Instant::now() < deadline, "position never resolved");
            let _ = tokio::time::timeout(Duration::from_millis(50), latest.recv()).await;
        }
        assert_eq!(latest.position(&tp), Some(10));
        write_with_librdkafka(cluster, &topic, 0, 5, "none").await;
        assert_eq!(recv_within(&mut latest, "record written after start").await.offset, 10);
        latest.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_out_of_range_applies_the_reset_policy() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("oor");
        cluster.create_topic(&topic, 1).await.unwrap();
        write_with_librdkafka(cluster, &topic, 0, 20, "none").await;
        let tp = TopicPartition::new(&topic, 0);
        let config = ConsumerConfig::new(cluster.client_config().request_timeout(Duration::from_secs(3)))
            .offset_reset(OffsetReset::Earliest)
            .fetch_wait(1, Duration::from_millis(100));
        let mut consumer = Consumer::new(config).unwrap();
        consumer.assign(std::slice::from_ref(&tp));
        assert_eq!(recv_within(&mut consumer, "first record").await.offset, 0);
        consumer.handle().seek(&tp, 1_000_000).unwrap();
        if cluster.kind() == BrokerKind::Tansu {
            // Tansu never answers a fetch past the end (no
            // OFFSET_OUT_OF_RANGE; the request times out). The consumer
            // keeps trying without inventing records, and a seek back in
            // range recovers.
            let quiet = tokio::time::timeout(Duration::from_secs(4), consumer.recv()).await;
            assert!(quiet.is_err(), "a record from nowhere: {quiet:?}");
            consumer.handle().seek(&tp, 5).unwrap();
            assert_eq!(recv_within(&mut consumer, "record after seeking back").await.offset, 5);
        } else {
            // OFFSET_OUT_OF_RANGE: start over per auto.offset.reset.
            assert_eq!(recv_within(&mut consumer, "record after the reset").await.offset, 0);
        }
        consumer.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}

/// The broker leading a partition is down when the consumer looks for its
/// start offset, longer than any one operation's deadline (the admin
/// deadline is 30 s). The lookup goes on for as long as the partition is
/// assigned, with no error event, and reading starts when the broker is
/// back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_lookup_outlasts_a_long_broker_outage() {
    common::logs();
    rill_testkit::cluster::on_mock(ClusterOptions::default(), async |cluster, mock| {
        let topic = unique_topic("outage");
        mock.create_topic(&topic, 1, 3).unwrap();
        mock.partition_leader(&topic, 0, Some(2)).unwrap();
        write_with_librdkafka(cluster, &topic, 0, 10, "none").await;
        mock.broker_down(2).unwrap();
        let tp = TopicPartition::new(&topic, 0);
        let config = ConsumerConfig::new(cluster.client_config().request_timeout(Duration::from_secs(2)))
            .offset_reset(OffsetReset::Earliest);
        let mut consumer = Consumer::new(config).unwrap();
        consumer.assign(std::slice::from_ref(&tp));
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(35)) => {}
            event = consumer.next_event() => panic!("during the outage: {:?}", event.map(|e| format!("{e:?}"))),
        }
        mock.broker_up(2).unwrap();
        let first = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record once the broker is back")
            .unwrap();
        assert_eq!((first.partition, first.offset), (0, 0));
        consumer.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}

/// The consumer variant of the producer's Jepsen-style run: 30,000
/// records read through the Kafka-aware proxy while it cuts every
/// connection after a random 0.3–2 s; each partition's records arrive
/// exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_once_and_in_order_through_random_cuts() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        const PER_PARTITION: i64 = 10_000;
        let topic = unique_topic("cut-reads");
        cluster.create_topic(&topic, 3).await.unwrap();
        for partition in 0..3 {
            write_with_librdkafka(cluster, &topic, partition, PER_PARTITION as usize, "none").await;
        }
        let proxy = rill_testkit::KafkaProxy::start(cluster.bootstrap(), 86).await.unwrap();
        proxy.cut_randomly(Duration::from_millis(300), Duration::from_secs(2));
        let client = common::proxied(&proxy, Duration::from_secs(3));
        // Small fetches, read slowly: the run lasts several seconds of cuts.
        let config = ConsumerConfig::new(client)
            .offset_reset(OffsetReset::Earliest)
            .fetch_sizes(16 * 1024, 64 * 1024)
            .fetch_wait(1, Duration::from_millis(50));
        let mut consumer = Consumer::new(config).unwrap();
        let partitions: Vec<TopicPartition> = (0..3).map(|p| TopicPartition::new(&topic, p)).collect();
        consumer.assign(&partitions);
        let mut next = [0i64; 3];
        let mut read = 0;
        while next.iter().any(|&n| n < PER_PARTITION) {
            let record = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("stalled at {next:?}"))
                .unwrap();
            let expected = &mut next[record.partition as usize];
            assert_eq!(record.offset, *expected, "partition {}: once, in order", record.partition);
            *expected += 1;
            read += 1;
            if read % 300 == 0 {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        proxy.stop_cutting();
        let connections = proxy.connections_accepted();
        eprintln!("{}: {connections} connections through the cuts", cluster.kind());
        assert!(connections > 4, "the cuts made the consumer reconnect ({connections})");
        consumer.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}
