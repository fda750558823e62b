//! Rill at scale against real brokers: a topic of 1,000 partitions
//! written and read back whole, by Rill and by librdkafka.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::read_back::{parse, read_all};
use rill_client::TopicPartition;
use rill_client::consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_client::producer::{Producer, ProducerConfig, Record, murmur2_partition};
use rill_testkit::{ClusterOptions, each_broker, unique_topic};

const PARTITIONS: i32 = 1_000;
const KEYS: u64 = 15_000;
const RECORDS: u64 = 30_000;

/// 30,000 keyed records over 1,000 partitions (every partition gets some):
/// every one delivered on its murmur2 partition; Rill's consumer, assigned
/// all 1,000 from the beginning, reads each exactly once and each key in
/// order; librdkafka reads the same count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_partitions_are_written_and_read_back_whole() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("scale");
        cluster.create_topic(&topic, PARTITIONS).await.unwrap();
        let producer = Producer::new(ProducerConfig::new(cluster.client_config())).unwrap();
        let mut deliveries = Vec::with_capacity(RECORDS as usize);
        for i in 0..RECORDS {
            let key = format!("key-{}", i % KEYS);
            let value = format!("{key}:{}", i / KEYS);
            deliveries.push(producer.send(Record::to(&topic).key(&key).value(&value)).await.unwrap());
        }
        let mut written: BTreeMap<i32, u64> = BTreeMap::new();
        for (i, delivery) in deliveries.into_iter().enumerate() {
            let metadata = delivery.await.unwrap();
            let key = format!("key-{}", i as u64 % KEYS);
            assert_eq!(metadata.partition, murmur2_partition(key.as_bytes(), PARTITIONS));
            *written.entry(metadata.partition).or_default() += 1;
        }
        producer.close(Duration::from_secs(10)).await.unwrap();
        assert_eq!(written.len(), PARTITIONS as usize, "every partition got records");

        let config = ConsumerConfig::new(cluster.client_config()).offset_reset(OffsetReset::Earliest);
        let mut consumer = Consumer::new(config).unwrap();
        let all: Vec<TopicPartition> = (0..PARTITIONS).map(|p| TopicPartition::new(&topic, p)).collect();
        consumer.assign(&all);
        let mut next: BTreeMap<String, u64> = BTreeMap::new();
        let mut read: BTreeMap<i32, u64> = BTreeMap::new();
        for _ in 0..RECORDS {
            let record = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("stalled after {} records", read.values().sum::<u64>()))
                .unwrap();
            let (key, sequence) = parse(record.value.as_ref().unwrap());
            let expected = next.entry(key.clone()).or_default();
            assert_eq!(sequence, *expected, "{key}: once each, in order");
            *expected += 1;
            *read.entry(record.partition).or_default() += 1;
        }
        assert_eq!(read, written, "every partition read whole");
        consumer.close(Duration::from_secs(10)).await.unwrap();

        let bootstrap = cluster.bootstrap().to_owned();
        let topic2 = topic.clone();
        let independent = tokio::task::spawn_blocking(move || {
            read_all(&bootstrap, &topic2, PARTITIONS, RECORDS as usize, Duration::from_secs(120))
        })
        .await
        .unwrap();
        // read_all reads on past the count: a record more would show.
        assert_eq!(independent.len() as u64, RECORDS, "librdkafka reads them all, and no more");
    })
    .await;
}
