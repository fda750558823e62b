//! Log truncation detection (KIP-320) against real brokers.
//!
//! - librdkafka's mock cluster answers OffsetForLeaderEpoch (v2) with the
//!   end of the last batch written in an epoch, and bumps the epoch on each
//!   leader move. It never truncates a log, so a truncation is staged the
//!   way a consumer would meet it: a position (15, epoch 0) read from a
//!   leader whose epoch 0 is longer than the new leader's (10 records).
//! - Neither broker answers a fetch with a diverging epoch; the Kafka-aware
//!   proxy makes a real broker's Fetch answer say so, as a Kafka leader
//!   does after an unclean election.

mod common;

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rill_client::consumer::{Consumer, ConsumerConfig, Event, OffsetReset, Resume, TruncationReset};
use rill_client::{Error, TopicPartition, TopicScope};
use rill_testkit::mock::MockKafka;
use rill_testkit::{ClusterOptions, TestCluster, each_broker, unique_topic};

/// librdkafka writes values `v{from}..v{to}` to partition 0.
async fn write(bootstrap: &str, topic: &str, from: usize, to: usize) {
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).set("linger.ms", "5").create().unwrap();
    let mut pending = Vec::new();
    for i in from..to {
        let value = format!("v{i}");
        pending.push(producer.send_result(FutureRecord::<(), String>::to(topic).partition(0).payload(&value)).unwrap());
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

/// The partition's leader epoch once the metadata shows `broker` leading.
async fn leader_epoch_at(cluster: &TestCluster, topic: &str, broker: i32) -> i32 {
    let client = cluster.client();
    for _ in 0..100 {
        let metadata = client.refresh_metadata(TopicScope::Named(vec![topic.to_owned()])).await.unwrap();
        if let Some((leader, epoch)) = metadata.leader(topic, 0)
            && leader.id == broker
        {
            return epoch;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("broker {broker} never led {topic}/0");
}

/// A one-partition topic whose epochs at broker 1 (offsets 0-9) and, after
/// a leader move, at broker 2 (offsets 10-19) hold ten records each:
/// its name and the two leader epochs.
async fn two_epochs(cluster: &TestCluster, mock: &MockKafka, name: &str) -> (String, i32, i32) {
    let topic = unique_topic(name);
    mock.create_topic(&topic, 1, 3).unwrap();
    mock.partition_leader(&topic, 0, Some(1)).unwrap();
    let first_epoch = leader_epoch_at(cluster, &topic, 1).await;
    write(cluster.bootstrap(), &topic, 0, 10).await;
    mock.partition_leader(&topic, 0, Some(2)).unwrap();
    let second_epoch = leader_epoch_at(cluster, &topic, 2).await;
    assert!(second_epoch > first_epoch, "a leader move bumps the epoch");
    write(cluster.bootstrap(), &topic, 10, 20).await;
    (topic, first_epoch, second_epoch)
}

/// The next event that is not a record, with the records before it.
async fn next_non_record(consumer: &mut Consumer) -> (Vec<i64>, Event) {
    let mut offsets = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), consumer.next_event()).await.expect("an event").unwrap() {
            Event::Record(record) => offsets.push(record.offset),
            event => return (offsets, event),
        }
    }
}

async fn offsets(consumer: &mut Consumer, count: usize) -> Vec<i64> {
    let mut out = Vec::new();
    while out.len() < count {
        let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("stalled after {out:?}"))
            .unwrap();
        out.push(record.offset);
    }
    out
}

fn range(from: i64, to: i64) -> Vec<i64> {
    (from..to).collect()
}

/// Epoch 0 holds offsets 0-9 at the new leader, which wrote 10-19 in its
/// own epoch. A position at 15 in epoch 0 (read from an old leader that
/// had more of epoch 0) is validated: truncated at 10, reported with both
/// offsets, then the consumer goes on as configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_past_the_end_of_its_epoch_is_reported_and_moved_on_the_mock() {
    common::logs();
    rill_testkit::cluster::on_mock(ClusterOptions::default(), async |cluster, mock| {
        let (topic, first_epoch, _) = two_epochs(cluster, mock, "truncated").await;
        let tp = TopicPartition::new(&topic, 0);

        let consumer_with = |reset: OffsetReset, policy: TruncationReset| {
            let config = ConsumerConfig::new(cluster.client_config())
                .offset_reset(reset)
                .truncation_reset(policy)
                .fetch_wait(1, Duration::from_millis(50));
            let consumer = Consumer::new(config).unwrap();
            consumer.assign(std::slice::from_ref(&tp));
            consumer
        };

        // To the divergence point (the default, and Java's).
        let mut consumer = consumer_with(OffsetReset::Latest, TruncationReset::Divergence);
        consumer.handle().seek_with_epoch(&tp, 15, Some(first_epoch)).unwrap();
        let (before, event) = next_non_record(&mut consumer).await;
        assert!(before.is_empty(), "nothing is fetched before the position is validated: {before:?}");
        let Event::LogTruncated { partition, error, resume } = event else { panic!("{event:?}") };
        assert_eq!((partition, resume), (tp.clone(), Resume::At(10)));
        assert!(
            matches!(error, Error::LogTruncated { offset: 15, divergence: Some(10), .. }),
            "names the position and the divergence: {error}"
        );
        let message = error.to_string();
        assert!(message.contains(&tp.to_string()) && message.contains("15") && message.contains("10"), "{message}");
        assert_eq!(offsets(&mut consumer, 10).await, range(10, 20), "the records that replaced the lost ones");
        consumer.close(Duration::from_secs(5)).await.unwrap();

        // Where auto.offset.reset says, when so configured.
        let mut consumer = consumer_with(OffsetReset::Earliest, TruncationReset::AutoOffsetReset);
        consumer.handle().seek_with_epoch(&tp, 15, Some(first_epoch)).unwrap();
        let (_, event) = next_non_record(&mut consumer).await;
        assert!(matches!(event, Event::LogTruncated { resume: Resume::Reset(OffsetReset::Earliest), .. }), "{event:?}");
        assert_eq!(offsets(&mut consumer, 20).await, range(0, 20));
        consumer.close(Duration::from_secs(5)).await.unwrap();

        // With auto.offset.reset=error the partition stops, and recv says why.
        let mut consumer = consumer_with(OffsetReset::Error, TruncationReset::Divergence);
        consumer.handle().seek_with_epoch(&tp, 15, Some(first_epoch)).unwrap();
        // (A NoOffset error may come first: auto.offset.reset=error had
        // nothing to go by between the assignment and the seek.)
        let error = loop {
            match tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await.unwrap() {
                Err(Error::NoOffset(_)) => continue,
                other => break other.unwrap_err(),
            }
        };
        assert!(matches!(error, Error::LogTruncated { offset: 15, divergence: Some(10), .. }), "{error}");
        consumer.handle().seek(&tp, 10).unwrap();
        assert_eq!(offsets(&mut consumer, 10).await, range(10, 20), "a seek goes on");
        consumer.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}

/// A position that the new leader's log does hold is no truncation: at
/// the end of an epoch (validated: the seek carries an epoch), and
/// through a leader move while reading. The second half shows only that
/// nothing is reported falsely: whether the consumer asked the third
/// leader is not observed here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_the_new_leader_holds_read_on_without_a_word_on_the_mock() {
    common::logs();
    rill_testkit::cluster::on_mock(ClusterOptions::default(), async |cluster, mock| {
        let (topic, first_epoch, second_epoch) = two_epochs(cluster, mock, "not-truncated").await;
        let tp = TopicPartition::new(&topic, 0);
        // Latest: a position the leader could not vouch for would move
        // there, and say so.
        let config = ConsumerConfig::new(cluster.client_config())
            .offset_reset(OffsetReset::Latest)
            .fetch_wait(1, Duration::from_millis(50));
        let mut consumer = Consumer::new(config).unwrap();
        consumer.assign(std::slice::from_ref(&tp));
        consumer.handle().seek_with_epoch(&tp, 10, Some(first_epoch)).unwrap();
        let mut epochs = Vec::new();
        for expected in 10..20 {
            let record = tokio::time::timeout(Duration::from_secs(20), consumer.next_event()).await.unwrap().unwrap();
            let Event::Record(record) = record else { panic!("no event but records: {record:?}") };
            assert_eq!(record.offset, expected);
            epochs.push(record.leader_epoch);
        }
        assert!(epochs.iter().all(|e| *e == Some(second_epoch)), "records carry their epoch: {epochs:?}");

        // The leader moves while the consumer reads: its position (20, in
        // the second epoch) is one the third leader holds.
        mock.partition_leader(&topic, 0, Some(3)).unwrap();
        leader_epoch_at(cluster, &topic, 3).await;
        write(cluster.bootstrap(), &topic, 20, 30).await;
        for expected in 20..30 {
            let record = tokio::time::timeout(Duration::from_secs(20), consumer.next_event()).await.unwrap().unwrap();
            let Event::Record(record) = record else { panic!("no event but records: {record:?}") };
            assert_eq!(record.offset, expected);
        }
        consumer.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}

/// A leader that answers a fetch with a diverging epoch (through the
/// proxy, on both brokers): the consumer had returned offsets up to 20 and
/// the leader's log parts at 12, so it reports that and reads 12-19 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_answered_with_a_diverging_epoch_moves_back_to_the_divergence() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("diverging");
        cluster.create_topic(&topic, 1).await.unwrap();
        write(cluster.bootstrap(), &topic, 0, 20).await;
        let proxy = rill_testkit::KafkaProxy::start(cluster.bootstrap(), 95).await.unwrap();
        let config = ConsumerConfig::new(common::proxied(&proxy, Duration::from_secs(5)))
            .offset_reset(OffsetReset::Earliest)
            .fetch_wait(1, Duration::from_millis(50));
        let mut consumer = Consumer::new(config).unwrap();
        let tp = TopicPartition::new(&topic, 0);
        consumer.assign(std::slice::from_ref(&tp));
        assert_eq!(offsets(&mut consumer, 20).await, range(0, 20));
        proxy.diverge_next_fetch(&topic, 0, 0, 12);
        let (before, event) = next_non_record(&mut consumer).await;
        assert!(before.is_empty(), "{before:?}");
        assert_eq!(proxy.faults_applied(), 1);
        let Event::LogTruncated { partition, error, resume } = event else { panic!("{event:?}") };
        assert_eq!((partition, resume), (tp.clone(), Resume::At(12)));
        assert!(matches!(error, Error::LogTruncated { offset: 20, divergence: Some(12), .. }), "{error}");
        assert_eq!(offsets(&mut consumer, 8).await, range(12, 20));
        assert_eq!(consumer.position(&tp), Some(20));
        consumer.close(Duration::from_secs(5)).await.unwrap();
    })
    .await;
}
