//! The producer against real brokers, read back by librdkafka (and by
//! Rill's own decoder for what librdkafka wrote).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use common::read_back::{by_partition, check_per_key, parse, read_all};
use rdkafka::message::{Header as RdHeader, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rill_client::producer::{Header, Producer, ProducerConfig, Record, TrySendError, murmur2_partition};
use rill_client::records::Compression;
use rill_client::{ClientConfig, Error, TopicScope};
use rill_testkit::cluster::on_mock;
use rill_testkit::mock::{RDKafkaApiKey, RDKafkaRespErr};
use rill_testkit::read::fetch_all;
use rill_testkit::{ClusterOptions, Fault, Proxy, each_broker, unique_topic};

fn settings(config: ClientConfig) -> ProducerConfig {
    ProducerConfig::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_keyed_records_land_on_murmur2_partitions_in_order() {
    each_broker(ClusterOptions::default(), async |cluster| {
        const RECORDS: u64 = 100_000;
        const KEYS: u64 = 1_000;
        let topic = unique_topic("keyed");
        cluster.create_topic(&topic, 6).await.unwrap();
        let producer = Producer::new(settings(cluster.client_config())).unwrap();
        let mut deliveries = Vec::with_capacity(RECORDS as usize);
        for i in 0..RECORDS {
            let key = format!("key-{}", i % KEYS);
            let value = format!("{key}:{}", i / KEYS);
            deliveries.push(producer.send(Record::to(&topic).key(&key).value(&value)).await.unwrap());
        }
        // Rill's own view: every record delivered, on the murmur2 partition.
        for (i, delivery) in deliveries.into_iter().enumerate() {
            let metadata = delivery.await.unwrap();
            let key = format!("key-{}", i as u64 % KEYS);
            assert_eq!(metadata.partition, murmur2_partition(key.as_bytes(), 6));
            assert!(metadata.offset.is_some());
        }
        producer.close(Duration::from_secs(10)).await.unwrap();

        let records = read_all(cluster.bootstrap(), &topic, 6, RECORDS as usize, Duration::from_secs(60));
        assert_eq!(records.len() as u64, RECORDS, "exact count");
        let mut next: HashMap<String, u64> = HashMap::new();
        for (partition, list) in by_partition(&records) {
            for record in list {
                let key = String::from_utf8(record.key.clone().unwrap()).unwrap();
                let (value_key, sequence) = parse(record.value.as_ref().unwrap());
                assert_eq!(key, value_key);
                assert_eq!(partition, murmur2_partition(key.as_bytes(), 6), "{key} on Java's partition");
                let expected = next.entry(key.clone()).or_default();
                assert_eq!(sequence, *expected, "{key}: records in send order");
                *expected += 1;
            }
        }
        assert_eq!(next.len() as u64, KEYS);
    })
    .await;
}

const CODECS: [Compression; 4] = [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_codec_interoperates_with_librdkafka_both_ways() {
    each_broker(ClusterOptions::default(), async |cluster| {
        for codec in CODECS {
            // Rill writes, librdkafka reads.
            let topic = unique_topic(&format!("rill-{codec}"));
            cluster.create_topic(&topic, 1).await.unwrap();
            let producer = Producer::new(settings(cluster.client_config()).compression(codec)).unwrap();
            let headers = [Header::new("dup", Some(b"1")), Header::new("dup", Some(b"2")), Header::new("null", None)];
            for i in 0..2_000 {
                let value = format!("k{}:{i}", i % 7);
                let record = Record::to(&topic).key(&value[..2]).value(&value).headers(&headers);
                let record = if i % 100 == 0 { Record { key: None, value: None, ..record } } else { record };
                drop(producer.send(record).await.unwrap());
            }
            producer.flush().await.unwrap();
            let read = read_all(cluster.bootstrap(), &topic, 1, 2_000, Duration::from_secs(30));
            assert_eq!(read.len(), 2_000, "{codec}: librdkafka reads what Rill compressed");
            for (i, record) in read.iter().enumerate() {
                if i % 100 == 0 {
                    assert_eq!(
                        (record.key.as_ref(), record.value.as_ref()),
                        (None, None),
                        "{codec}: null key and value"
                    );
                } else {
                    assert_eq!(record.value.as_deref(), Some(format!("k{}:{i}", i % 7).as_bytes()), "{codec}");
                }
                let names: Vec<(&str, Option<&[u8]>)> =
                    record.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                assert_eq!(names, [("dup", Some(&b"1"[..])), ("dup", Some(&b"2"[..])), ("null", None)], "{codec}");
            }

            // librdkafka writes, Rill reads.
            let topic = unique_topic(&format!("rdkafka-{codec}"));
            cluster.create_topic(&topic, 1).await.unwrap();
            let rdkafka: FutureProducer = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", cluster.bootstrap())
                .set("compression.codec", codec.to_string())
                .set("linger.ms", "5")
                .create()
                .unwrap();
            let mut pending = Vec::new();
            for i in 0..2_000 {
                let value = format!("v{i}");
                let headers = OwnedHeaders::new()
                    .insert(RdHeader { key: "dup", value: Some("a") })
                    .insert(RdHeader { key: "dup", value: Some("b") });
                let key = format!("k{i}");
                let record = FutureRecord::to(&topic).key(&key).payload(&value).headers(headers).partition(0);
                pending.push(rdkafka.send_result(record).map_err(|(e, _)| e).unwrap());
            }
            for p in pending {
                p.await.unwrap().unwrap();
            }
            let read = fetch_all(&cluster.client(), &topic, 0, 2_000, Duration::from_secs(30)).await;
            assert_eq!(read.len(), 2_000, "{codec}: Rill reads what librdkafka compressed");
            for (i, record) in read.iter().enumerate() {
                assert_eq!(record.value.as_deref(), Some(format!("v{i}").as_bytes()));
                assert_eq!(record.key.as_deref(), Some(format!("k{i}").as_bytes()));
                let headers: Vec<(&str, Option<&[u8]>)> =
                    record.headers.iter().map(|h| (h.key.as_str(), h.value.as_deref())).collect();
                assert_eq!(headers, [("dup", Some(&b"a"[..])), ("dup", Some(&b"b"[..]))], "duplicate keys survive");
            }
        }
    })
    .await;
}

fn proxied(proxy: &Proxy) -> ClientConfig {
    ClientConfig::new(&proxy.address())
        .unwrap()
        .request_timeout(Duration::from_secs(2))
        .connection_setup_timeout(Duration::from_secs(2))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_on_tansu_when_answers_are_lost() {
    let (tansu, proxy) = rill_testkit::required(rill_testkit::tansu::behind_proxy(11).await);
    let topic = unique_topic("lost-answers");
    let client = rill_client::Client::new(proxied(&proxy)).unwrap();
    client.admin().create_topics(&[rill_client::NewTopic::new(&topic, 3)]).await.unwrap();
    let producer = Producer::new(settings(proxied(&proxy)).linger(Duration::from_millis(2))).unwrap();
    producer.send(Record::to(&topic).key("warm-up").value("warm-up:0")).await.unwrap().await.unwrap();
    let mut sent: BTreeMap<String, u64> = BTreeMap::from([("warm-up".to_owned(), 1)]);
    let mut deliveries = Vec::new();
    // Every 300 ms, answers are cut for 40 ms: the broker writes the
    // batches, the producer never hears, reconnects and resends.
    let proxy = std::sync::Arc::new(proxy);
    let chaos = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            loop {
                proxy.set_fault(Fault::CutResponses);
                tokio::time::sleep(Duration::from_millis(40)).await;
                proxy.set_fault(Fault::None);
                tokio::time::sleep(Duration::from_millis(260)).await;
            }
        })
    };
    for i in 0..20_000u64 {
        let key = format!("k{}", i % 30);
        let sequence = sent.entry(key.clone()).or_default();
        let value = format!("{key}:{sequence}");
        *sequence += 1;
        deliveries.push(producer.send(Record::to(&topic).key(&key).value(&value)).await.unwrap());
        // Spread the records over about three seconds: ten cut windows.
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    chaos.abort();
    proxy.set_fault(Fault::None);
    let mut duplicates_acknowledged = 0;
    for delivery in deliveries {
        let metadata = delivery.await.unwrap();
        duplicates_acknowledged += usize::from(metadata.offset.is_none());
    }
    producer.close(Duration::from_secs(10)).await.unwrap();
    assert!(proxy.connections_accepted() > 2, "the fault cut connections");
    eprintln!("{duplicates_acknowledged} records acknowledged as duplicates of earlier writes");
    assert!(duplicates_acknowledged > 0, "no write lost its answer: the test did not exercise deduplication");
    let records = read_all(&tansu.bootstrap(), &topic, 3, 20_001, Duration::from_secs(60));
    assert_eq!(records.len(), 20_001, "exactly once");
    check_per_key(&records, &sent, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_request_errors_on_the_mock_lose_nothing_and_keep_order() {
    on_mock(ClusterOptions::default(), async |cluster, mock| {
        let topic = unique_topic("injected");
        mock.create_topic(&topic, 3, 3).unwrap();
        // The mock does not check sequences, so only the client can keep
        // order, and only with one request in flight per connection.
        let config = settings(cluster.client_config()).max_in_flight(1);
        let producer = Producer::new(config).unwrap();
        let mut sent: BTreeMap<String, u64> = BTreeMap::new();
        let mut deliveries = Vec::new();
        use RDKafkaRespErr::*;
        for round in 0..20u64 {
            mock.request_errors(
                RDKafkaApiKey::Produce,
                &[
                    RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
                    RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
                    RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
                    RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
                ],
            )
            .unwrap();
            for i in 0..500u64 {
                let key = format!("k{}", (round * 500 + i) % 20);
                let sequence = sent.entry(key.clone()).or_default();
                let value = format!("{key}:{sequence}");
                *sequence += 1;
                deliveries.push(producer.send(Record::to(&topic).key(&key).value(&value)).await.unwrap());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for delivery in deliveries {
            delivery.await.unwrap();
        }
        producer.close(Duration::from_secs(10)).await.unwrap();
        let records = read_all(cluster.bootstrap(), &topic, 3, 10_000, Duration::from_secs(60));
        check_per_key(&records, &sent, false);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_moves_on_the_mock_mid_stream() {
    on_mock(ClusterOptions::default(), async |cluster, mock| {
        let topic = unique_topic("moves");
        mock.create_topic(&topic, 6, 3).unwrap();
        let producer = Producer::new(settings(cluster.client_config())).unwrap();
        let mut sent: BTreeMap<String, u64> = BTreeMap::new();
        let mut deliveries = Vec::new();
        let mut moves = 0;
        for i in 0..30_000u64 {
            if i % 1_500 == 0 {
                let partition = (i / 1_500 % 6) as i32;
                mock.partition_leader(&topic, partition, Some((moves % 3) + 1)).unwrap();
                moves += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let key = format!("k{}", i % 60);
            let sequence = sent.entry(key.clone()).or_default();
            let value = format!("{key}:{sequence}");
            *sequence += 1;
            deliveries.push(producer.send(Record::to(&topic).key(&key).value(&value)).await.unwrap());
        }
        for delivery in deliveries {
            delivery.await.expect("no fatal error, no lost record");
        }
        producer.close(Duration::from_secs(10)).await.unwrap();
        let records = read_all(cluster.bootstrap(), &topic, 6, 30_000, Duration::from_secs(60));
        assert_eq!(records.len(), 30_000, "no loss, no duplicates");
        check_per_key(&records, &sent, true);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_buffer_refuses_try_send_and_makes_send_wait() {
    let (_tansu, proxy) = rill_testkit::required(rill_testkit::tansu::behind_proxy(12).await);
    let topic = unique_topic("full");
    let client = rill_client::Client::new(proxied(&proxy)).unwrap();
    client.admin().create_topics(&[rill_client::NewTopic::new(&topic, 2)]).await.unwrap();
    let config = settings(proxied(&proxy)).buffer_limits(50, 1 << 20).max_message_bytes(100_000).batch_size(100_000);
    let producer = Producer::new(config).unwrap();
    // Learn the topic first, then stop every answer.
    producer.send(Record::to(&topic).value("warm-up")).await.unwrap().await.unwrap();
    proxy.set_fault(Fault::Blackhole);
    let mut deliveries = Vec::new();
    for i in 0..50 {
        let value = format!("v{i}");
        deliveries.push(producer.try_send(Record::to(&topic).value(&value)).unwrap());
    }
    assert!(matches!(producer.try_send(Record::to(&topic).value("one too many")), Err(TrySendError::QueueFull)));
    let (records, bytes) = producer.buffered();
    assert_eq!(records, 50, "the buffer holds exactly its limit");
    assert!(bytes <= 1 << 20);
    // send waits for room instead of failing: polled again and again while
    // nothing can free the buffer, it stays pending.
    let waiting = producer.send(Record::to(&topic).value("patient"));
    tokio::pin!(waiting);
    for _ in 0..20 {
        assert!(tokio::time::timeout(Duration::ZERO, &mut waiting).await.is_err(), "send waits");
        tokio::task::yield_now().await;
    }
    proxy.set_fault(Fault::None);
    let last = tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("room again").unwrap();
    for delivery in deliveries {
        delivery.await.unwrap();
    }
    last.await.unwrap();
    assert_eq!(producer.buffered(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_records_and_unknown_topics_fail_at_once() {
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("bad-input");
        cluster.create_topic(&topic, 1).await.unwrap();
        let producer =
            Producer::new(settings(cluster.client_config()).max_message_bytes(10_000).batch_size(10_000)).unwrap();
        let big = vec![0u8; 20_000];
        let error = producer.send(Record::to(&topic).value(&big)).await.unwrap_err();
        assert!(matches!(error, Error::RecordTooLarge { max: 10_000, .. }), "{error:?}");
        let error = producer.send(Record::to(&topic).partition(7).value("x")).await.unwrap_err();
        assert!(matches!(error, Error::UnknownTopicOrPartition(_)), "{error:?}");

        let started = Instant::now();
        let missing = unique_topic("never-created");
        let error = producer.send(Record::to(&missing).value("x")).await.unwrap_err();
        assert!(matches!(error, Error::UnknownTopicOrPartition(ref t) if *t == missing), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "immediate once metadata says so");
        let metadata = cluster.client().refresh_metadata(TopicScope::Named(vec![missing.clone()])).await.unwrap();
        assert!(!metadata.topics.contains_key(&missing), "the lookup did not create the topic");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_drops_what_is_not_sent_as_a_crash_would() {
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("abort");
        cluster.create_topic(&topic, 1).await.unwrap();
        let producer = Producer::new(settings(cluster.client_config()).linger(Duration::from_secs(30))).unwrap();
        let before = producer.send(Record::to(&topic).value("before")).await.unwrap();
        producer.flush().await.unwrap();
        before.await.unwrap();
        // These wait out a 30 s linger: still in the producer's memory.
        let mut waiting = Vec::new();
        for i in 0..100 {
            let value = format!("lost-{i}");
            waiting.push(producer.send(Record::to(&topic).value(&value)).await.unwrap());
        }
        producer.clone().abort();
        for delivery in waiting {
            let error = delivery.await.unwrap_err();
            assert!(!error.maybe_written(), "never sent: certainly not written ({error})");
        }
        assert!(producer.send(Record::to(&topic).value("after")).await.is_err(), "an aborted producer takes nothing");
        let records = read_all(cluster.bootstrap(), &topic, 1, 1, Duration::from_secs(20));
        let values: Vec<&[u8]> = records.iter().filter_map(|r| r.value.as_deref()).collect();
        assert_eq!(values, [&b"before"[..]], "only what was delivered before the abort");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_and_silent_brokers_give_clear_outcomes() {
    let (tansu, proxy) = rill_testkit::required(rill_testkit::tansu::behind_proxy(13).await);
    let topic = unique_topic("broken");
    let client = rill_client::Client::new(proxied(&proxy)).unwrap();
    client.admin().create_topics(&[rill_client::NewTopic::new(&topic, 1)]).await.unwrap();

    // Closed mid-response: retried, delivered once.
    let producer = Producer::new(settings(proxied(&proxy))).unwrap();
    producer.send(Record::to(&topic).value("first")).await.unwrap().await.unwrap();
    proxy.set_fault(Fault::TruncateResponse(6));
    producer.send(Record::to(&topic).value("second")).await.unwrap().await.unwrap();
    producer.close(Duration::from_secs(5)).await.unwrap();
    let records = read_all(&tansu.bootstrap(), &topic, 1, 2, Duration::from_secs(20));
    let values: Vec<&[u8]> = records.iter().map(|r| r.value.as_deref().unwrap()).collect();
    assert_eq!(values, [&b"first"[..], &b"second"[..]]);

    // Never answering: every record fails, saying it may have been written.
    let config = settings(proxied(&proxy).request_timeout(Duration::from_millis(500)))
        .delivery_timeout(Duration::from_secs(3))
        .linger(Duration::from_millis(1));
    let producer = Producer::new(config).unwrap();
    producer.send(Record::to(&topic).value("warm-up")).await.unwrap().await.unwrap();
    proxy.set_fault(Fault::Blackhole);
    let started = Instant::now();
    let deliveries: Vec<_> = futures_for(&producer, &topic, 20).await;
    for delivery in deliveries {
        let error = delivery.await.unwrap_err();
        assert!(matches!(error, Error::DeliveryTimeout { maybe_written: true, .. }), "{error:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by delivery.timeout.ms");
    // close returns within its deadline even though the broker is silent.
    let closing = Instant::now();
    let _ = producer.close(Duration::from_secs(1)).await;
    assert!(closing.elapsed() < Duration::from_secs(3));
}

async fn futures_for(producer: &Producer, topic: &str, n: usize) -> Vec<rill_client::producer::DeliveryFuture> {
    let mut out = Vec::new();
    for i in 0..n {
        let value = format!("lost-{i}");
        out.push(producer.send(Record::to(topic).value(&value)).await.unwrap());
    }
    out
}

struct LastPartition;

impl rill_client::producer::Partitioner for LastPartition {
    fn partition(&self, _topic: &str, _key: &[u8], partitions: i32) -> i32 {
        partitions - 1
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chosen_partitioners_and_authorization_errors() {
    on_mock(ClusterOptions::default(), async |cluster, mock| {
        let topic = unique_topic("partitioners");
        mock.create_topic(&topic, 4, 3).unwrap();
        let custom = Producer::new(settings(cluster.client_config()).custom_partitioner(LastPartition)).unwrap();
        let crc = Producer::new(
            settings(cluster.client_config()).partitioner(rill_client::producer::PartitionerKind::ConsistentRandom),
        )
        .unwrap();
        for i in 0..50 {
            let key = format!("key-{i}");
            let landed = custom.send(Record::to(&topic).key(&key).value("v")).await.unwrap().await.unwrap();
            assert_eq!(landed.partition, 3, "the application's partitioner decides");
            let landed = crc.send(Record::to(&topic).key(&key).value("v")).await.unwrap().await.unwrap();
            assert_eq!(
                landed.partition,
                rill_client::producer::partitioner::crc32_partition(key.as_bytes(), 4),
                "librdkafka's consistent_random"
            );
            // An explicit partition overrides any partitioner.
            let landed =
                custom.send(Record::to(&topic).key(&key).partition(1).value("v")).await.unwrap().await.unwrap();
            assert_eq!(landed.partition, 1);
        }

        let forbidden = unique_topic("forbidden");
        mock.create_topic(&forbidden, 1, 3).unwrap();
        mock.topic_error(&forbidden, RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED).unwrap();
        let started = Instant::now();
        let error = custom.send(Record::to(&forbidden).value("v")).await.unwrap_err();
        assert_eq!(error.code(), Some(rill_client::ResponseError::TopicAuthorizationFailed), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5), "an authorization error is not retried");
    })
    .await;
}
