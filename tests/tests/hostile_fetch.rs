//! The consumer against a broker that sends bad record data: corrupt CRC,
//! a truncated batch, a record count larger than the batch, lengths that
//! lie. Each is a specific error (or, for a truncated tail, the records
//! before it), never a panic, never an allocation sized by a lie.
//!
//! Its own test binary, so that the process's peak heap (counted by the
//! `cap` allocator) belongs to these tests alone.

mod common;

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cap::Cap;
use common::fake_broker::{FakeBroker, Reply, api_versions, frame, one_broker_metadata};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::metadata_response::{MetadataResponsePartition, MetadataResponseTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rill_client::consumer::{Consumer, ConsumerConfig, Event};
use rill_client::{BrokerAddress, ClientConfig, Error, TopicPartition};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

const TOPIC: &str = "hostile";

/// A valid uncompressed batch (magic 2) of `values` starting at `base`,
/// laid out by hand so that the test owns every byte.
fn batch(base: i64, values: &[&str]) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, value: i64) {
        let mut v = ((value << 1) ^ (value >> 63)) as u64;
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut records = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let mut body = vec![0u8]; // attributes
        varint(&mut body, 0); // timestamp delta
        varint(&mut body, i as i64); // offset delta
        varint(&mut body, -1); // null key
        varint(&mut body, value.len() as i64);
        body.extend_from_slice(value.as_bytes());
        varint(&mut body, 0); // no headers
        varint(&mut records, body.len() as i64);
        records.extend(body);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&base.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // length, below
    out.extend_from_slice(&(-1i32).to_be_bytes()); // partition leader epoch
    out.push(2); // magic
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes
    out.extend_from_slice(&(values.len() as i32 - 1).to_be_bytes());
    out.extend_from_slice(&1_000i64.to_be_bytes());
    out.extend_from_slice(&1_000i64.to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes());
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out.extend_from_slice(&(-1i32).to_be_bytes());
    out.extend_from_slice(&(values.len() as i32).to_be_bytes());
    out.extend(records);
    let length = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    reseal(&mut out);
    out
}

/// Recomputes a batch's CRC after an edit.
fn reseal(batch: &mut [u8]) {
    let crc = crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// CRC-32C (Castagnoli), bitwise: test data is small.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// A broker leading partition 0 of `hostile` whose first Fetch answer
/// carries `records` (later ones carry nothing), or, with `raw`, whose
/// Fetch answers are those bytes as they are.
/// A broker that answers the first Fetch with `records` (or every Fetch
/// when `every_fetch`: the consumer passes over what is before its
/// position), later ones empty; or every Fetch with the `raw` frame.
async fn broker(records: Vec<u8>, raw: Option<Vec<u8>>) -> FakeBroker {
    broker_with(records, raw, false).await
}

async fn broker_with(records: Vec<u8>, raw: Option<Vec<u8>>, every_fetch: bool) -> FakeBroker {
    let port = Arc::new(AtomicU16::new(0));
    let port2 = port.clone();
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let broker = FakeBroker::start(move |_, _, header| {
        let version = header.request_api_version;
        let id = header.correlation_id;
        match ApiKey::try_from(header.request_api_key).unwrap() {
            ApiKey::ApiVersions => {
                let body =
                    api_versions(&[(ApiKey::ApiVersions, 0, 3), (ApiKey::Metadata, 0, 12), (ApiKey::Fetch, 4, 12)]);
                Reply::Raw(frame(ApiKey::ApiVersions, version, id, &body))
            }
            ApiKey::Metadata => {
                let body = one_broker_metadata(port2.load(Ordering::SeqCst)).with_topics(vec![
                    MetadataResponseTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_static_str(TOPIC))))
                        .with_partitions(vec![
                            MetadataResponsePartition::default()
                                .with_partition_index(0)
                                .with_leader_id(BrokerId(1))
                                .with_replica_nodes(vec![BrokerId(1)])
                                .with_isr_nodes(vec![BrokerId(1)]),
                        ]),
                ]);
                Reply::Raw(frame(ApiKey::Metadata, version, id, &body))
            }
            ApiKey::Fetch => {
                if let Some(raw) = &raw {
                    let mut out = raw.clone();
                    out[4..8].copy_from_slice(&id.to_be_bytes());
                    return Reply::Raw(out);
                }
                let first = fetches.fetch_add(1, Ordering::SeqCst) == 0;
                let data = if first || every_fetch { records.clone() } else { Vec::new() };
                Reply::Raw(frame(ApiKey::Fetch, version, id, &fetch_response(data)))
            }
            other => panic!("unexpected {other:?}"),
        }
    })
    .await;
    port.store(broker.address.port, Ordering::SeqCst);
    broker
}

fn fetch_response(records: Vec<u8>) -> FetchResponse {
    FetchResponse::default().with_responses(vec![
        FetchableTopicResponse::default().with_topic(TopicName(StrBytes::from_static_str(TOPIC))).with_partitions(
            vec![
                PartitionData::default()
                    .with_partition_index(0)
                    .with_high_watermark(100)
                    .with_last_stable_offset(100)
                    .with_records(Some(Bytes::from(records))),
            ],
        ),
    ])
}

fn consumer(address: &BrokerAddress) -> Consumer {
    let client = ClientConfig::new(&address.to_string()).unwrap().request_timeout(Duration::from_secs(2));
    let config = ConsumerConfig::new(client).fetch_wait(1, Duration::from_millis(50)).fetch_sizes(64 * 1024, 1 << 20);
    let consumer = Consumer::new(config).unwrap();
    let tp = TopicPartition::new(TOPIC, 0);
    consumer.assign(std::slice::from_ref(&tp));
    consumer.handle().seek(&tp, 0).unwrap();
    consumer
}

/// Records until an event other than a record, or until quiet.
async fn drain(consumer: &mut Consumer) -> (Vec<String>, Option<Error>) {
    let (values, unreadable) = drain_to_unreadable(consumer).await;
    (values, unreadable.map(|(_, _, error)| error))
}

/// Records until the partition is reported unreadable (offset, skip_to,
/// error), or until quiet.
async fn drain_to_unreadable(consumer: &mut Consumer) -> (Vec<String>, Option<(i64, i64, Error)>) {
    let mut values = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(1500), consumer.next_event()).await {
            Err(_) => return (values, None),
            Ok(Ok(Event::Record(r))) => values.push(String::from_utf8(r.value.unwrap().to_vec()).unwrap()),
            Ok(Ok(Event::Unreadable { partition, offset, skip_to, error })) => {
                assert_eq!(partition, TopicPartition::new(TOPIC, 0));
                return (values, Some((offset, skip_to, error)));
            }
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_crc_is_an_error_after_the_good_batches() {
    let mut bad = batch(2, &["c", "d"]);
    let last = bad.len() - 1;
    bad[last] ^= 0x5a;
    let mut data = batch(0, &["a", "b"]);
    data.extend(bad);
    let broker = broker(data, None).await;
    let mut consumer = consumer(&broker.address);
    let (values, error) = drain(&mut consumer).await;
    assert_eq!(values, ["a", "b"]);
    let error = error.expect("an error for the corrupt batch");
    assert!(error.to_string().contains("CRC"), "{error}");
    assert_eq!(consumer.position(&TopicPartition::new(TOPIC, 0)), Some(2), "stays at the bad batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_batch_says_where_it_ends_and_seeking_there_goes_on() {
    let mut bad = batch(2, &["c", "d", "e"]);
    let last = bad.len() - 1;
    bad[last] ^= 0x5a;
    let mut data = batch(0, &["a", "b"]);
    data.extend(bad);
    data.extend(batch(5, &["f"]));
    let broker = broker_with(data, None, true).await;
    let mut consumer = consumer(&broker.address);
    let (values, unreadable) = drain_to_unreadable(&mut consumer).await;
    assert_eq!(values, ["a", "b"]);
    let (offset, skip_to, error) = unreadable.expect("the corrupt batch is reported");
    assert_eq!((offset, skip_to), (2, 5), "{error}");
    consumer.handle().seek(&TopicPartition::new(TOPIC, 0), skip_to).unwrap();
    let (values, unreadable) = drain_to_unreadable(&mut consumer).await;
    assert_eq!(values, ["f"]);
    assert!(unreadable.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_last_batch_yields_the_records_before_it() {
    let second = batch(2, &["c", "d"]);
    let mut data = batch(0, &["a", "b"]);
    data.extend_from_slice(&second[..second.len() / 2]);
    let broker = broker(data, None).await;
    let mut consumer = consumer(&broker.address);
    let (values, error) = drain(&mut consumer).await;
    assert_eq!(values, ["a", "b"]);
    assert!(error.is_none(), "a partial tail is normal: {error:?}");
    assert_eq!(consumer.position(&TopicPartition::new(TOPIC, 0)), Some(2), "fetched again from the partial batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_count_larger_than_the_batch_is_an_error() {
    let mut data = batch(0, &["a"]);
    data[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    reseal(&mut data);
    let broker = broker(data, None).await;
    let mut consumer = consumer(&broker.address);
    let (values, error) = drain(&mut consumer).await;
    assert!(values.is_empty());
    let error = error.expect("an error for the lying record count");
    assert!(error.to_string().contains("record"), "{error}");
    assert!(ALLOCATOR.max_allocated() < 64 * 1024 * 1024, "peak heap {}", ALLOCATOR.max_allocated());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_claiming_two_gib_is_an_error_not_an_allocation() {
    let mut data = batch(0, &["a"]);
    data[8..12].copy_from_slice(&i32::MAX.to_be_bytes());
    let broker = broker(data, None).await;
    let mut consumer = consumer(&broker.address);
    let (values, error) = drain(&mut consumer).await;
    assert!(values.is_empty());
    let error = error.expect("a batch larger than the fetch size is reported");
    assert!(error.to_string().contains("max.partition.fetch.bytes"), "{error}");
    assert!(ALLOCATOR.max_allocated() < 64 * 1024 * 1024, "peak heap {}", ALLOCATOR.max_allocated());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_frame_whose_records_length_lies_is_rejected() {
    // A v12 Fetch answer whose records field claims far more bytes than
    // the frame holds: the walk rejects it before anything is sized by
    // it; the consumer retries and reports nothing it did not get.
    let records = batch(0, &["a"]);
    let mut lying = frame(ApiKey::Fetch, 12, 0, &fetch_response(records.clone()));
    // The answer ends: records length (compact: length + 1, one byte
    // here), the batch, then three empty tag buffers (partition, topic,
    // response). Make the length say 2 GiB.
    let length_at = lying.len() - 3 - records.len() - 1;
    assert_eq!(usize::from(lying[length_at]), records.len() + 1);
    lying.splice(length_at..length_at + 1, [0xff, 0xff, 0xff, 0xff, 0x07]);
    let size = (lying.len() - 4) as u32;
    lying[..4].copy_from_slice(&size.to_be_bytes());
    let broker = broker(Vec::new(), Some(lying)).await;
    let mut consumer = consumer(&broker.address);
    let (values, error) = drain(&mut consumer).await;
    assert!(values.is_empty() && error.is_none(), "{values:?} {error:?}");
    let fetches = broker.requests().iter().filter(|(api, _)| *api == ApiKey::Fetch as i16).count();
    assert!(fetches >= 2, "the consumer kept fetching after the bad answer ({fetches})");
    assert!(ALLOCATOR.max_allocated() < 64 * 1024 * 1024, "peak heap {}", ALLOCATOR.max_allocated());
}
