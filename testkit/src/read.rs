//! Reads a partition back with Rill's own wire client and batch decoder (a
//! Fetch request per round, batches walked and decoded by
//! `rill_client::records`), so tests can check what was written without a
//! consumer.

use std::time::{Duration, Instant};

use rill_client::kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use rill_client::kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
use rill_client::kafka_protocol::protocol::StrBytes;
use rill_client::records::{Batches, DecodedBatch, DecodedRecord, decode_batch};
use rill_client::{Client, TopicScope};

/// Every record of `topic`/`partition` from offset 0 until `expected`
/// records were read (with `expected` 0: until the high watermark) or
/// `timeout` passed. Control batches are skipped.
pub async fn fetch_all(
    client: &Client,
    topic: &str,
    partition: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<DecodedRecord> {
    let count = |batches: &[DecodedBatch]| -> usize {
        batches.iter().filter(|b| !b.header.is_control()).map(|b| b.records.len()).sum()
    };
    let batches = fetch_batches(
        client,
        topic,
        partition,
        |batches, offset, high_watermark| {
            if expected == 0 { offset >= high_watermark } else { count(batches) >= expected }
        },
        timeout,
    )
    .await;
    batches.into_iter().filter(|b| !b.header.is_control()).flat_map(|b| b.records).collect()
}

/// Every batch of `topic`/`partition` from offset 0, control batches
/// (transaction markers) included, until `done(batches, next offset, high
/// watermark)` or `timeout`. Records before the offset a fetch asked for
/// (a compressed batch comes whole) are dropped.
pub async fn fetch_batches(
    client: &Client,
    topic: &str,
    partition: i32,
    done: impl Fn(&[DecodedBatch], i64, i64) -> bool,
    timeout: Duration,
) -> Vec<DecodedBatch> {
    let metadata = client.refresh_metadata(TopicScope::Named(vec![topic.to_owned()])).await.unwrap();
    let leader = metadata.topics[topic].partitions[partition as usize].leader.unwrap();
    let connection = client.broker_connection(leader).await.unwrap();
    let mut offset = 0;
    let mut out: Vec<DecodedBatch> = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut high_watermark = i64::MAX;
    loop {
        if done(&out, offset, high_watermark) || Instant::now() >= deadline {
            break;
        }
        let fetch_offset = offset;
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(100)
            .with_min_bytes(1)
            .with_max_bytes(8 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![
                FetchTopic::default().with_topic(TopicName(StrBytes::from_string(topic.to_owned()))).with_partitions(
                    vec![
                        FetchPartition::default()
                            .with_partition(partition)
                            .with_fetch_offset(offset)
                            .with_partition_max_bytes(4 << 20),
                    ],
                ),
            ]);
        let response = connection.send(&request).await.unwrap();
        let data = &response.responses[0].partitions[0];
        assert_eq!(data.error_code, 0, "fetch error");
        high_watermark = data.high_watermark;
        let Some(records) = data.records.clone() else { continue };
        for batch in Batches::new(records) {
            let mut batch = decode_batch(batch.unwrap(), 64 << 20).unwrap();
            offset = offset.max(batch.header.last_offset() + 1);
            batch.records.retain(|r| r.offset >= fetch_offset);
            out.push(batch);
        }
    }
    out
}
