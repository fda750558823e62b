//! Reads a topic back with librdkafka (the `rdkafka` crate), as an
//! independent consumer of what Rill produced.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A record as librdkafka delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp: Option<i64>,
}

/// Reads partitions `0..partitions` of `topic` from the beginning until
/// `expected` records arrived (or `timeout`), then a little longer to catch
/// any extra (duplicate) record.
pub fn read_all(bootstrap: &str, topic: &str, partitions: i32, expected: usize, timeout: Duration) -> Vec<Consumed> {
    read_all_with(&[("bootstrap.servers", bootstrap)], topic, partitions, expected, timeout)
}

/// [`read_all`] with librdkafka properties of the caller's (a secured
/// listener's `security.protocol`, `ssl.ca.location`, …).
pub fn read_all_with(
    properties: &[(&str, &str)],
    topic: &str,
    partitions: i32,
    expected: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    let mut config = ClientConfig::new();
    for (key, value) in properties {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer = config
        .set("group.id", format!("read-back-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("librdkafka consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut quiet_until: Option<Instant> = None;
    while Instant::now() < deadline && quiet_until.is_none_or(|q| Instant::now() < q) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let headers = message
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect())
                    .unwrap_or_default();
                out.push(Consumed {
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers,
                    timestamp: message.timestamp().to_millis(),
                });
                if out.len() >= expected && quiet_until.is_none() {
                    quiet_until = Some(Instant::now() + Duration::from_millis(500));
                }
            }
            Some(Err(error)) => panic!("librdkafka consumer error: {error}"),
            None => {}
        }
    }
    out
}

/// Records by partition, in offset order.
pub fn by_partition(records: &[Consumed]) -> BTreeMap<i32, Vec<&Consumed>> {
    let mut map: BTreeMap<i32, Vec<&Consumed>> = BTreeMap::new();
    for record in records {
        map.entry(record.partition).or_default().push(record);
    }
    for list in map.values_mut() {
        list.sort_by_key(|r| r.offset);
    }
    map
}

/// Values carry "key:sequence"; parses them back.
pub fn parse(value: &[u8]) -> (String, u64) {
    let text = std::str::from_utf8(value).unwrap();
    let (key, sequence) = text.split_once(':').unwrap();
    (key.to_owned(), sequence.parse().unwrap())
}

/// Checks a read-back against what was sent: per key, values `key:0..n` in
/// order, each exactly once (or at least once, when `exactly` is false).
pub fn check_per_key(records: &[Consumed], sent: &BTreeMap<String, u64>, exactly: bool) {
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, list) in by_partition(records) {
        for record in list {
            let (key, sequence) = parse(record.value.as_ref().unwrap());
            seen.entry(key).or_default().push(sequence);
        }
    }
    for (key, count) in sent {
        let sequences = seen.remove(key).unwrap_or_default();
        if exactly {
            assert_eq!(sequences, (0..*count).collect::<Vec<_>>(), "{key}: exactly once, in order");
        } else {
            let mut first = Vec::new();
            for s in sequences {
                if !first.contains(&s) {
                    first.push(s);
                }
            }
            assert_eq!(first, (0..*count).collect::<Vec<_>>(), "{key}: none lost, first copies in order");
        }
    }
    assert!(seen.is_empty(), "records nobody sent: {seen:?}");
}
