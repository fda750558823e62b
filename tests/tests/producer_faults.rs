//! The idempotent producer where production hurts: requests refused before
//! or after the broker wrote them, connections cut at random, leaders moving.
//! Every record is produced through testkit's Kafka-aware proxy (or under
//! the mock's leader moves) and read back by librdkafka straight from the
//! brokers: per key, the values must be exactly its sequence numbers, in
//! order, each once (at least once where the broker cannot deduplicate).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::read_back::{check_per_key, read_all};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;
use rill_client::producer::{DeliveryFuture, Producer, ProducerConfig, Record};
use rill_client::{ClientConfig, Error};
use rill_testkit::cluster::on_mock;
use rill_testkit::{
    BrokerKind, ClusterOptions, KafkaProxy, RequestFault, Schedule, TestCluster, each_broker, unique_topic,
};

const NOT_LEADER: i16 = ResponseError::NotLeaderOrFollower.code();

/// Client settings through the proxy.
fn proxied(proxy: &KafkaProxy) -> ClientConfig {
    common::proxied(proxy, Duration::from_secs(3))
}

/// Sends `count` records over `keys` keys, each value `key:n` with `n` the
/// key's own sequence, counted on in `sent`; returns the futures.
/// `before(i)` runs before record `i` and says how long to pause first.
async fn send_keyed(
    producer: &Producer,
    topic: &str,
    count: u64,
    keys: u64,
    sent: &mut BTreeMap<String, u64>,
    mut before: impl FnMut(u64) -> Duration,
) -> Vec<DeliveryFuture> {
    let mut deliveries = Vec::with_capacity(count as usize);
    for i in 0..count {
        let pause = before(i);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let key = format!("k{}", i % keys);
        let sequence = sent.entry(key.clone()).or_default();
        let value = format!("{key}:{sequence}");
        *sequence += 1;
        deliveries.push(producer.send(Record::to(topic).key(&key).value(&value)).await.unwrap());
    }
    deliveries
}

/// Awaits every delivery: none may fail.
async fn all_delivered(deliveries: Vec<DeliveryFuture>) {
    for (i, delivery) in deliveries.into_iter().enumerate() {
        if let Err(error) = delivery.await {
            panic!("record {i} failed: {error}");
        }
    }
}

/// Small batches, so that a run makes many requests for the faults to hit.
fn small_batches(config: ClientConfig) -> ProducerConfig {
    ProducerConfig::new(config).linger(Duration::from_millis(1)).batch_records(200)
}

/// Only brokers that check sequences can drop a resent duplicate; the
/// mock appends it again.
fn deduplicates(cluster: &TestCluster) -> bool {
    cluster.kind() != BrokerKind::Mock
}

/// Item 1 of the fault issue: the first Produce request is answered
/// NOT_LEADER_OR_FOLLOWER without reaching the broker, and the answer is
/// held until the connection's next request has been forwarded. A producer
/// that pipelines a second batch of the partition behind an unacknowledged
/// first one gets the second written first (the mock takes any sequence; so
/// does Kafka for a producer id it does not know yet), then the first
/// after it. Per partition the log must be the send order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_produce_refused_before_the_broker_saw_it_keeps_send_order() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("refused-first");
        cluster.create_topic(&topic, 3).await.unwrap();
        let proxy = KafkaProxy::start(cluster.bootstrap(), 81).await.unwrap();
        proxy.add_rule(ApiKey::Produce, RequestFault::AnswerLate(NOT_LEADER), Schedule::Next(1));
        let producer = Producer::new(small_batches(proxied(&proxy))).unwrap();
        let mut sent = BTreeMap::new();
        let deliveries = send_keyed(&producer, &topic, 20_000, 60, &mut sent, |_| Duration::ZERO).await;
        all_delivered(deliveries).await;
        producer.close(Duration::from_secs(10)).await.unwrap();
        assert_eq!(proxy.faults_applied(), 1, "the proxy refused exactly one request");

        let records = read_all(cluster.bootstrap(), &topic, 3, 20_000, Duration::from_secs(60));
        assert_eq!(records.len(), 20_000, "no loss, no duplicates");
        check_per_key(&records, &sent, true);
    })
    .await;
}

/// Item 2: a fifth of Produce requests are written by the broker but
/// answered NOT_LEADER_OR_FOLLOWER (an acks=all leader that lost
/// leadership after appending), a fifth of the rest refused before the
/// broker sees them. The maybe-written batches are resent with their
/// sequence: a broker that checks sequences keeps exactly one copy; the
/// mock keeps both, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_after_the_append_is_resent_with_its_sequence() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("not-leader-after");
        cluster.create_topic(&topic, 3).await.unwrap();
        let proxy = KafkaProxy::start(cluster.bootstrap(), 82).await.unwrap();
        proxy.add_rule(ApiKey::Produce, RequestFault::ReplaceAnswer(NOT_LEADER), Schedule::Randomly(0.2));
        proxy.add_rule(ApiKey::Produce, RequestFault::AnswerWithoutForwarding(NOT_LEADER), Schedule::Randomly(0.25));
        // A broker that checks no sequences writes a batch pipelined behind
        // a refused one first: there, order needs one request in flight.
        let in_flight = if deduplicates(cluster) { 5 } else { 1 };
        let producer = Producer::new(small_batches(proxied(&proxy)).max_in_flight(in_flight)).unwrap();
        let mut sent = BTreeMap::new();
        let deliveries = send_keyed(&producer, &topic, 30_000, 60, &mut sent, |_| Duration::ZERO).await;
        all_delivered(deliveries).await;
        producer.close(Duration::from_secs(10)).await.unwrap();
        let faults = proxy.faults_applied();
        eprintln!("{}: {faults} Produce requests refused or re-answered", cluster.kind());
        assert!(faults >= 20, "the rules applied ({faults})");

        let records = read_all(cluster.bootstrap(), &topic, 3, 30_000, Duration::from_secs(60));
        if deduplicates(cluster) {
            assert_eq!(records.len(), 30_000, "no loss, no duplicates");
        }
        check_per_key(&records, &sent, deduplicates(cluster));
    })
    .await;
}

/// The Jepsen-style run: 200,000 keyed records, sent over about eight
/// seconds in small batches, while the proxy cuts every connection after a
/// random 0.3–2 s. Tansu checks sequences, so every key's values are there
/// exactly once and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_records_through_random_cuts_exactly_once_in_order() {
    common::logs();
    let cluster = rill_testkit::required(TestCluster::start(BrokerKind::Tansu, &ClusterOptions::default()).await);
    let topic = unique_topic("cuts");
    cluster.create_topic(&topic, 6).await.unwrap();
    let proxy = KafkaProxy::start(cluster.bootstrap(), 83).await.unwrap();
    proxy.cut_randomly(Duration::from_millis(300), Duration::from_secs(2));
    let producer = Producer::new(small_batches(proxied(&proxy))).unwrap();
    let pace = |i: u64| if i.is_multiple_of(1_000) { Duration::from_millis(40) } else { Duration::ZERO };
    let mut sent = BTreeMap::new();
    let deliveries = send_keyed(&producer, &topic, 200_000, 500, &mut sent, pace).await;
    all_delivered(deliveries).await;
    proxy.stop_cutting();
    producer.close(Duration::from_secs(10)).await.unwrap();
    let connections = proxy.connections_accepted();
    eprintln!("{connections} connections through the proxy");
    assert!(connections > 4, "the cuts made the producer reconnect ({connections} connections)");

    let records = read_all(cluster.bootstrap(), &topic, 6, 200_000, Duration::from_secs(120));
    assert_eq!(records.len(), 200_000, "no loss, no duplicates");
    check_per_key(&records, &sent, true);
}

/// The same on the mock cluster, with leaders moving every few hundred
/// milliseconds instead of cuts (the mock does not deduplicate, so lost
/// answers would duplicate; leader moves are refused before any append).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_records_through_leader_moves_exactly_once_in_order() {
    common::logs();
    on_mock(ClusterOptions::default(), async |cluster, mock| {
        let topic = unique_topic("moves");
        mock.create_topic(&topic, 6, 3).unwrap();
        let producer = Producer::new(small_batches(cluster.client_config())).unwrap();
        let mut moves = 0;
        let mut sent = BTreeMap::new();
        let deliveries = send_keyed(&producer, &topic, 200_000, 500, &mut sent, |i| {
            if !i.is_multiple_of(4_000) {
                return Duration::ZERO;
            }
            let partition = (i / 4_000 % 6) as i32;
            mock.partition_leader(&topic, partition, Some((moves % 3) + 1)).unwrap();
            moves += 1;
            Duration::from_millis(20)
        })
        .await;
        all_delivered(deliveries).await;
        producer.close(Duration::from_secs(10)).await.unwrap();
        assert!(moves >= 50);

        let records = read_all(cluster.bootstrap(), &topic, 6, 200_000, Duration::from_secs(120));
        assert_eq!(records.len(), 200_000, "no loss, no duplicates");
        check_per_key(&records, &sent, true);
    })
    .await;
}

/// A record that cannot be delivered in time on one partition fails alone,
/// saying whether it may be written; the producer serves every other
/// partition and later records of the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_maybe_written_batch_fails_alone_and_the_producer_goes_on() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("expire-alone");
        cluster.create_topic(&topic, 2).await.unwrap();
        let proxy = KafkaProxy::start(cluster.bootstrap(), 84).await.unwrap();
        let config = ProducerConfig::new(proxied(&proxy)).delivery_timeout(Duration::from_secs(4));
        let producer = Producer::new(config).unwrap();
        let first = producer.send(Record::to(&topic).partition(0).value("warm-up")).await.unwrap();
        first.await.unwrap();
        // Every answer from now on is "written, but NOT_LEADER": the
        // record may be written, and its delivery times out.
        proxy.add_rule(ApiKey::Produce, RequestFault::ReplaceAnswer(NOT_LEADER), Schedule::Randomly(1.0));
        let doomed = producer.send(Record::to(&topic).partition(0).value("doomed")).await.unwrap();
        let error = doomed.await.unwrap_err();
        assert!(error.maybe_written(), "{error}");
        assert!(matches!(error, Error::DeliveryTimeout { .. } | Error::MaybeWritten { .. }), "{error:?}");
        proxy.clear_rules();
        for partition in [0, 1] {
            let after = producer.send(Record::to(&topic).partition(partition).value("after")).await.unwrap();
            let delivered = after.await.unwrap_or_else(|e| panic!("partition {partition} goes on: {e}"));
            assert_eq!(delivered.partition, partition);
        }
        producer.close(Duration::from_secs(10)).await.unwrap();
    })
    .await;
}

/// Item 4: a broker refuses batches over 16 KiB (MESSAGE_TOO_LARGE, as
/// with that `message.max.bytes`); the producer makes 256 KiB batches. It
/// splits each refused batch in halves, down to what the broker takes, and
/// keeps order and sequences; one record too large on its own fails alone,
/// saying it was not written, and every other record is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_as_too_large_is_split_until_it_fits() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("too-large");
        cluster.create_topic(&topic, 1).await.unwrap();
        let proxy = KafkaProxy::start(cluster.bootstrap(), 88).await.unwrap();
        proxy.limit_batch_size(16 * 1024);
        // The mock checks no sequences: a part written while an earlier
        // one is being split again would overtake it. One at a time there.
        let in_flight = if deduplicates(cluster) { 5 } else { 1 };
        let config = ProducerConfig::new(proxied(&proxy))
            .batch_size(256 * 1024)
            .linger(Duration::from_millis(20))
            .max_in_flight(in_flight);
        let producer = Producer::new(config).unwrap();
        let mut sent = BTreeMap::new();
        let first = send_keyed(&producer, &topic, 2_500, 20, &mut sent, |_| Duration::ZERO).await;
        let huge = vec![b'x'; 20 * 1024];
        let alone = producer.send(Record::to(&topic).key("huge").value(&huge)).await.unwrap();
        let second = send_keyed(&producer, &topic, 2_500, 20, &mut sent, |_| Duration::ZERO).await;
        let error = alone.await.unwrap_err();
        assert!(error.to_string().contains("MessageTooLarge") && !error.maybe_written(), "{error}");
        all_delivered(first).await;
        all_delivered(second).await;
        producer.close(Duration::from_secs(10)).await.unwrap();
        let refusals = proxy.faults_applied();
        eprintln!("{}: {refusals} Produce requests refused as too large", cluster.kind());
        assert!(refusals > 10, "batches were refused and split ({refusals})");

        let records = read_all(cluster.bootstrap(), &topic, 1, 5_000, Duration::from_secs(60));
        assert_eq!(records.len(), 5_000, "every record but the huge one, once");
        check_per_key(&records, &sent, true);
    })
    .await;
}
