//! The processor against real brokers: outputs, committed watermarks,
//! filtering, error tolerances, dead letters, delivery failures.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rill::{
    DefaultSerde, ErrorTolerance, Guarantee, Ignore, MetricsSnapshot, Output, Processor, ProcessorError, Retry,
    RunningProcessor, Stage,
};
use rill_client::TopicPartition;
use rill_client::consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_client::producer::{Producer, ProducerConfig, Record};
use rill_testkit::{ClusterOptions, TestCluster, each_broker, unique_topic};
use tokio::time::Instant;

/// Writes `values` round-robin over the partitions, as raw bytes.
async fn write(cluster: &TestCluster, topic: &str, partitions: i32, values: &[Vec<u8>]) {
    let producer = Producer::new(ProducerConfig::new(cluster.client_config())).unwrap();
    let mut pending = Vec::new();
    for (i, value) in values.iter().enumerate() {
        let record = Record::to(topic).value(value).partition(i as i32 % partitions);
        pending.push(producer.send(record).await.unwrap());
    }
    for delivery in pending {
        delivery.await.unwrap();
    }
    producer.close(Duration::from_secs(5)).await.unwrap();
}

/// Everything in `topic` now: (key, value, headers) per record.
type Read = (Option<String>, Option<Vec<u8>>, Vec<(String, Option<Vec<u8>>)>);

/// At least `expected` records, then whatever else arrives before a quiet
/// half second.
async fn read_all(cluster: &TestCluster, topic: &str, partitions: i32, expected: usize) -> Vec<Read> {
    let config = ConsumerConfig::new(cluster.client_config())
        .offset_reset(OffsetReset::Earliest)
        .fetch_wait(1, Duration::from_millis(100));
    let mut consumer = Consumer::new(config).unwrap();
    consumer.assign(&(0..partitions).map(|p| TopicPartition::new(topic, p)).collect::<Vec<_>>());
    let mut out = Vec::new();
    while out.len() < expected {
        let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{topic}: {} of {expected} records", out.len()))
            .unwrap();
        out.push((
            record.key.map(|k| String::from_utf8(k.to_vec()).unwrap()),
            record.value.map(|v| v.to_vec()),
            record.headers.iter().map(|h| (h.key.to_string(), h.value.as_ref().map(|v| v.to_vec()))).collect(),
        ));
    }
    while let Ok(record) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
        let record = record.unwrap();
        out.push((
            record.key.map(|k| String::from_utf8(k.to_vec()).unwrap()),
            record.value.map(|v| v.to_vec()),
            record.headers.iter().map(|h| (h.key.to_string(), h.value.as_ref().map(|v| v.to_vec()))).collect(),
        ));
    }
    consumer.close(Duration::from_secs(5)).await.unwrap();
    out
}

/// The group's committed offsets for `topic`.
/// Exactly once, on the brokers here (neither stores a TxnOffsetCommit or
/// filters aborted records, so what they can show is the wire flow): every
/// input's outputs once after a clean stop, written as transactional
/// batches under one producer id, with the input offsets sent in the
/// transactions (TxnOffsetCommit answered); on Tansu every output batch is
/// followed by a COMMIT marker (the mock writes none). A source is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_outputs_commit_in_transactions() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output) = (unique_topic("eos-in"), unique_topic("eos-out"));
        cluster.create_topic(&input, 3).await.unwrap();
        cluster.create_topic(&output, 2).await.unwrap();
        let lines: Vec<Vec<u8>> = (0..600).map(line).collect();
        write(cluster, &input, 3, &lines).await;
        let name = unique_topic("eos");
        let processor = processor_for(cluster, &name, &input, &output)
            .processing_guarantee(Guarantee::ExactlyOnce)
            .commit_interval(Duration::from_millis(50))
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("every record", &metrics, |m| m.produced == 480 && m.filtered == 120).await;
        running.stop().await.unwrap();
        let got = read_all(cluster, &output, 2, 480).await;
        assert_eq!(got.len(), 480, "no output twice");
        let client = cluster.client();
        let mut producers = std::collections::BTreeSet::new();
        let mut markers = 0;
        for partition in 0..2 {
            let batches = rill_testkit::read::fetch_batches(
                &client,
                &output,
                partition,
                |_, offset, high_watermark| offset >= high_watermark,
                Duration::from_secs(30),
            )
            .await;
            for batch in &batches {
                assert!(batch.header.is_transactional(), "{:?}", batch.header);
                producers.insert(batch.header.producer_id);
                markers += usize::from(batch.header.is_control());
            }
            if cluster.kind() == rill_testkit::BrokerKind::Tansu {
                let last = batches.last().expect("outputs");
                assert!(last.header.is_control(), "partition {partition}: the last transaction's marker ends the log");
            }
        }
        assert_eq!(producers.len(), 1, "one transactional producer: {producers:?}");
        eprintln!("{}: {markers} transaction markers in the output", cluster.kind());
        if cluster.kind() == rill_testkit::BrokerKind::Tansu {
            assert!(markers >= 2, "a COMMIT marker on each output partition");
        }
        let source = Processor::<Ignore, String, String, String>::builder()
            .name(&name)
            .bootstrap_servers(cluster.bootstrap())
            .output_topic(&output)
            .processing_guarantee(Guarantee::ExactlyOnce)
            .source(|| async { Vec::<Output<String, String>>::new() })
            .build();
        assert!(source.is_err(), "a source has no input offsets to commit");
    })
    .await;
}

async fn committed(cluster: &TestCluster, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, Option<i64>> {
    let consumer = Consumer::new(ConsumerConfig::new(cluster.client_config()).group(group)).unwrap();
    let tps: Vec<TopicPartition> = (0..partitions).map(|p| TopicPartition::new(topic, p)).collect();
    let found = consumer.handle().committed(&tps).await.unwrap();
    found.into_iter().map(|(tp, offset)| (tp.partition, offset)).collect()
}

/// A spawned processor, stopped within 30 s.
struct Running(RunningProcessor);

fn start<K, V, OK, OV>(processor: Processor<K, V, OK, OV>, instance: &str) -> Running
where
    K: Send + Sync + 'static,
    V: Send + Sync + 'static,
    OK: Send + Sync + 'static,
    OV: Send + Sync + 'static,
{
    Running(processor.spawn(instance))
}

impl Running {
    async fn stop(self) -> Result<(), ProcessorError> {
        tokio::time::timeout(Duration::from_secs(30), self.0.stop()).await.expect("the processor stops")
    }
}

async fn until(what: &str, metrics: &rill::Metrics, done: impl Fn(&MetricsSnapshot) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let snapshot = metrics.snapshot();
        if done(&snapshot) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {snapshot:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn line(i: usize) -> Vec<u8> {
    format!("10.0.{}.{} GET /page/{i}", i % 7, i % 250).into_bytes()
}

/// Splits `ip rest`; keys the output by the address's second-to-last
/// octet (a stand-in for the country lookup); filters lines whose number is
/// a multiple of five.
fn weblog(value: &str) -> Option<Output<String, String>> {
    let (ip, rest) = value.split_once(' ')?;
    let n: usize = rest.rsplit('/').next()?.parse().ok()?;
    if n.is_multiple_of(5) {
        return None;
    }
    let region = ip.split('.').nth(2)?;
    Some(Output::new(format!("region-{region}"), rest.to_owned()))
}

/// A processor on `cluster` with the tests' settings: from the earliest
/// offset, a short session, frequent commits; the function is the caller's.
fn builder<K, V, OK, OV>(
    cluster: &TestCluster,
    name: &str,
    input: &str,
    output: &str,
) -> rill::ProcessorBuilder<K, V, OK, OV>
where
    K: DefaultSerde,
    V: DefaultSerde,
    OK: DefaultSerde,
    OV: DefaultSerde,
{
    Processor::<K, V, OK, OV>::builder()
        .name(name)
        .bootstrap_servers(cluster.bootstrap())
        .input_topic(input)
        .output_topic(output)
        .auto_offset_reset("earliest")
        .consumer_property("session.timeout.ms", "6000")
        .consumer_property("heartbeat.interval.ms", "500")
        .consumer_property("auto.commit.interval.ms", "100")
}

fn processor_for(
    cluster: &TestCluster,
    name: &str,
    input: &str,
    output: &str,
) -> rill::ProcessorBuilder<Ignore, String, String, String> {
    builder::<Ignore, String, String, String>(cluster, name, input, output).function(|input| weblog(&input.value))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_filters_and_commits_the_watermark() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output) = (unique_topic("proc-in"), unique_topic("proc-out"));
        cluster.create_topic(&input, 3).await.unwrap();
        cluster.create_topic(&output, 2).await.unwrap();
        let lines: Vec<Vec<u8>> = (0..600).map(line).collect();
        write(cluster, &input, 3, &lines).await;
        let name = unique_topic("weblog");
        let processor = processor_for(cluster, &name, &input, &output).build().unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("every record", &metrics, |m| m.produced == 480 && m.filtered == 120).await;
        running.stop().await.unwrap();

        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.consumed, snapshot.skipped, snapshot.in_flight), (600, 0, 0));
        let got = read_all(cluster, &output, 2, 480).await;
        assert_eq!(got.len(), 480, "no output twice");
        let mut got: Vec<(String, String)> =
            got.into_iter().map(|(k, v, _)| (k.unwrap(), String::from_utf8(v.unwrap()).unwrap())).collect();
        got.sort();
        let mut expected: Vec<(String, String)> =
            (0..600).filter_map(|i| weblog(std::str::from_utf8(&line(i)).unwrap())).map(|o| (o.key, o.value)).collect();
        expected.sort();
        assert_eq!(got, expected);
        // Filtered records count as done: the watermark is the end.
        let offsets = committed(cluster, &format!("{name}-group"), &input, 3).await;
        assert_eq!(offsets.values().copied().collect::<Vec<_>>(), [Some(200); 3]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_input_is_skipped_dead_lettered_or_stops() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let input = unique_topic("proc-bad");
        cluster.create_topic(&input, 1).await.unwrap();
        // Record 3 is not UTF-8: the String value serde refuses it.
        let mut lines: Vec<Vec<u8>> = (1..=6).map(line).collect();
        lines[3] = vec![0xff, 0xfe, b' ', b'x'];
        write(cluster, &input, 1, &lines).await;

        // All: skipped and counted; the watermark passes it.
        let output = unique_topic("proc-out");
        cluster.create_topic(&output, 1).await.unwrap();
        let name = unique_topic("skip");
        let processor = processor_for(cluster, &name, &input, &output)
            .consume_error_tolerance(ErrorTolerance::Skip)
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("skip", &metrics, |m| m.consumed == 6 && m.in_flight == 0 && m.skipped == 1).await;
        running.stop().await.unwrap();
        assert_eq!(committed(cluster, &format!("{name}-group"), &input, 1).await[&0], Some(6));

        // DeadLetter: the raw bytes, with the error and the source.
        let (output, dead) = (unique_topic("proc-out"), unique_topic("proc-dead"));
        cluster.create_topic(&output, 1).await.unwrap();
        cluster.create_topic(&dead, 1).await.unwrap();
        let name = unique_topic("dlq");
        let processor = processor_for(cluster, &name, &input, &output)
            .consume_error_tolerance(ErrorTolerance::DeadLetter(dead.clone()))
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("dead letter", &metrics, |m| m.dead_lettered == 1 && m.consumed == 6 && m.in_flight == 0).await;
        running.stop().await.unwrap();
        let letters = read_all(cluster, &dead, 1, 1).await;
        assert_eq!(letters.len(), 1);
        let (key, value, headers) = &letters[0];
        assert_eq!((key.as_deref(), value.as_deref()), (None, Some(&lines[3][..])));
        let header = |name: &str| {
            headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.clone()).map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(header("rill.error.kind").as_deref(), Some("deserialization"));
        assert!(header("rill.error.message").unwrap().contains("UTF-8"), "{headers:?}");
        assert_eq!(header("rill.source.topic").as_deref(), Some(input.as_str()));
        assert_eq!(header("rill.source.partition").as_deref(), Some("0"));
        assert_eq!(header("rill.source.offset").as_deref(), Some("3"));
        assert!(header("rill.source.timestamp").is_some());
        assert_eq!(committed(cluster, &format!("{name}-group"), &input, 1).await[&0], Some(6));

        // None: run stops with the error; nothing at or after it is stored.
        let output = unique_topic("proc-out");
        cluster.create_topic(&output, 1).await.unwrap();
        let name = unique_topic("stop");
        let processor = processor_for(cluster, &name, &input, &output).build().unwrap();
        let error = tokio::time::timeout(Duration::from_secs(60), processor.run("one", std::future::pending()))
            .await
            .expect("the processor stops on its own")
            .unwrap_err();
        assert!(matches!(error, ProcessorError::Deserialize { what: "value", offset: 3, .. }), "{error}");
        let stored = committed(cluster, &format!("{name}-group"), &input, 1).await[&0];
        assert!(stored.is_none_or(|o| o <= 3), "stored past the bad record: {stored:?}");
    })
    .await;
}

/// The input log loses records already processed (a fetch answered with a
/// diverging epoch at offset 12, through the proxy): the processor reads
/// 12-19 again from the records now there, and the committed watermark
/// ends where the log does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_input_is_processed_again_from_the_divergence() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output) = (unique_topic("proc-trunc-in"), unique_topic("proc-trunc-out"));
        cluster.create_topic(&input, 1).await.unwrap();
        cluster.create_topic(&output, 1).await.unwrap();
        let lines: Vec<Vec<u8>> = (0..20).map(line).collect();
        write(cluster, &input, 1, &lines).await;
        let proxy = rill_testkit::KafkaProxy::start(cluster.bootstrap(), 96).await.unwrap();
        let name = unique_topic("trunc");
        let processor =
            processor_for(cluster, &name, &input, &output).bootstrap_servers(proxy.bootstrap()).build().unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("first pass", &metrics, |m| m.consumed == 20 && m.in_flight == 0).await;
        proxy.diverge_next_fetch(&input, 0, 0, 12);
        until("after the truncation", &metrics, |m| m.consumed == 28 && m.in_flight == 0).await;
        running.stop().await.unwrap();
        assert_eq!(proxy.faults_applied(), 1);
        assert_eq!(committed(cluster, &format!("{name}-group"), &input, 1).await[&0], Some(20));
        // Lines 0-19 less the multiples of five, then 12-19 less 15 again.
        let outputs = read_all(cluster, &output, 1, 16 + 7).await;
        assert_eq!(outputs.len(), 23, "no output lost or repeated beyond the truncated range");
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (_, value, _) in &outputs {
            *counts.entry(String::from_utf8(value.clone().unwrap()).unwrap()).or_default() += 1;
        }
        for i in (0..20).filter(|i| i % 5 != 0) {
            let expected = if i >= 12 { 2 } else { 1 };
            assert_eq!(counts.get(&format!("GET /page/{i}")), Some(&expected), "line {i}: {counts:?}");
        }
    })
    .await;
}

/// A fetch answered OFFSET_OUT_OF_RANGE (through the proxy, as a broker
/// answers a position past a log that was rebuilt) makes the consumer
/// reset to the earliest offset: the records come again from 0. The
/// processor starts the partition's ledger over there (counted as a
/// rewind) and processes every record again, the async calls of the
/// second pass included; the committed watermark ends at the log's end.
/// Before, the tracker refused the records that came again as out of
/// order and only logged it: none of them was tracked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_reset_back_starts_the_partition_over() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output) = (unique_topic("proc-rewind-in"), unique_topic("proc-rewind-out"));
        cluster.create_topic(&input, 1).await.unwrap();
        cluster.create_topic(&output, 1).await.unwrap();
        write(cluster, &input, 1, &(0..10).map(line).collect::<Vec<_>>()).await;
        let proxy = rill_testkit::KafkaProxy::start(cluster.bootstrap(), 97).await.unwrap();
        let name = unique_topic("rewind");
        let processor = builder::<Ignore, String, String, String>(cluster, &name, &input, &output)
            .bootstrap_servers(proxy.bootstrap())
            .async_function(4, |input| async move { Output::new(String::new(), input.value) })
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        let at = |m: &MetricsSnapshot| m.partitions.first().and_then(|(_, p)| p.watermark);
        until("first pass", &metrics, |m| m.produced == 10 && at(m) == Some(10)).await;
        proxy.out_of_range_next_fetch(&input, 0);
        // The answer that carries the partition again is the one refused.
        write(cluster, &input, 1, &(10..15).map(line).collect::<Vec<_>>()).await;
        until("second pass", &metrics, |m| m.produced == 25 && at(m) == Some(15) && m.in_flight == 0).await;
        let snapshot = metrics.snapshot();
        running.stop().await.unwrap();
        assert_eq!(proxy.faults_applied(), 1);
        assert_eq!((snapshot.consumed, snapshot.rewound), (25, 1), "{snapshot:?}");
        assert_eq!(committed(cluster, &format!("{name}-group"), &input, 1).await[&0], Some(15));
        let outputs = read_all(cluster, &output, 1, 25).await;
        let mut counts: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for (_, value, _) in outputs {
            *counts.entry(value.unwrap()).or_default() += 1;
        }
        for i in 0..15 {
            assert_eq!(counts.get(&line(i)), Some(&if i < 10 { 2 } else { 1 }), "line {i}");
        }
    })
    .await;
}

/// A batch that arrives damaged (the Kafka-aware proxy flips a byte of the
/// first batch in a Fetch answer; the broker's copy is intact) is an
/// unreadable range, and the consume-error tolerance decides: skip past
/// it, dead-letter it, or stop. Before, the partition stalled with a log
/// line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_batch_follows_the_consume_tolerance() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let input = unique_topic("proc-unreadable");
        cluster.create_topic(&input, 1).await.unwrap();
        // Three batches of four lines each: offsets 0-3, 4-7, 8-11.
        let lines: Vec<Vec<u8>> = (1..=12).map(line).collect();
        for chunk in lines.chunks(4) {
            write(cluster, &input, 1, chunk).await;
        }
        let proxy = rill_testkit::KafkaProxy::start(cluster.bootstrap(), 91).await.unwrap();
        let through_proxy = |name: &str, output: &str| {
            processor_for(cluster, name, &input, output).bootstrap_servers(proxy.bootstrap())
        };

        // All: the range is skipped (counted once), the rest processed, and
        // the committed watermark passes the range.
        proxy.corrupt_fetched_batches(1);
        let output = unique_topic("proc-out");
        cluster.create_topic(&output, 1).await.unwrap();
        let name = unique_topic("skip");
        let processor = through_proxy(&name, &output).consume_error_tolerance(ErrorTolerance::Skip).build().unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("skip", &metrics, |m| m.consumed == 8 && m.in_flight == 0 && m.skipped == 1).await;
        running.stop().await.unwrap();
        assert_eq!(proxy.faults_applied(), 1, "one batch was damaged");
        assert_eq!(committed(cluster, &format!("{name}-group"), &input, 1).await[&0], Some(12));
        let produced = metrics.snapshot().produced as usize;
        assert_eq!(produced + metrics.snapshot().filtered as usize, 8, "lines 5 to 12, each once");
        assert_eq!(read_all(cluster, &output, 1, produced).await.len(), produced);

        // DeadLetter: one letter for the range, naming it; then on.
        proxy.corrupt_fetched_batches(1);
        let (output, dead) = (unique_topic("proc-out"), unique_topic("proc-dead"));
        cluster.create_topic(&output, 1).await.unwrap();
        cluster.create_topic(&dead, 1).await.unwrap();
        let name = unique_topic("dlq");
        let processor = through_proxy(&name, &output)
            .consume_error_tolerance(ErrorTolerance::DeadLetter(dead.clone()))
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("dead letter", &metrics, |m| m.dead_lettered == 1 && m.consumed == 8 && m.in_flight == 0).await;
        running.stop().await.unwrap();
        let letters = read_all(cluster, &dead, 1, 1).await;
        assert_eq!(letters.len(), 1);
        let (_, value, headers) = &letters[0];
        assert_eq!(value.as_deref(), None, "no bytes could be read");
        let header = |name: &str| {
            headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| v.clone()).map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(header("rill.error.kind").as_deref(), Some("unreadable"));
        let message = header("rill.error.message").unwrap();
        assert!(message.contains("offsets 0 to 3") && message.contains("CRC"), "{message}");
        assert_eq!(header("rill.source.offset").as_deref(), Some("0"));
        assert_eq!(committed(cluster, &format!("{name}-group"), &input, 1).await[&0], Some(12));

        // None: run stops with the range; nothing at or after it is stored.
        proxy.corrupt_fetched_batches(1);
        let output = unique_topic("proc-out");
        cluster.create_topic(&output, 1).await.unwrap();
        let name = unique_topic("stop");
        let processor = through_proxy(&name, &output).build().unwrap();
        let error = tokio::time::timeout(Duration::from_secs(60), processor.run("one", std::future::pending()))
            .await
            .expect("the processor stops on its own")
            .unwrap_err();
        assert!(matches!(error, ProcessorError::Unreadable { offset: 0, skip_to: 4, .. }), "{error}");
        let stored = committed(cluster, &format!("{name}-group"), &input, 1).await[&0];
        assert!(stored.is_none_or(|o| o == 0), "stored past the unreadable range: {stored:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_errors_follow_their_tolerance() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output, dead) = (unique_topic("proc-in"), unique_topic("proc-out"), unique_topic("proc-dead"));
        for topic in [&input, &output, &dead] {
            cluster.create_topic(topic, 1).await.unwrap();
        }
        let lines: Vec<Vec<u8>> = (1..=4).map(line).collect();
        write(cluster, &input, 1, &lines).await;
        let failing = |name: &str, tolerance: ErrorTolerance| {
            builder::<Ignore, String, String, String>(cluster, name, &input, &output)
                .function_error_tolerance(tolerance)
                .function(|input| {
                    if input.offset == 2 { Err("offset two is cursed".to_owned()) } else { Ok(weblog(&input.value)) }
                })
                .build()
                .unwrap()
        };
        let name = unique_topic("fdlq");
        let processor = failing(&name, ErrorTolerance::DeadLetter(dead.clone()));
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("dead letter", &metrics, |m| m.dead_lettered == 1 && m.consumed == 4 && m.in_flight == 0).await;
        running.stop().await.unwrap();
        let letters = read_all(cluster, &dead, 1, 1).await;
        assert_eq!(letters[0].1.as_deref(), Some(&lines[2][..]));
        assert!(letters[0].2.iter().any(|(k, v)| k == "rill.error.kind" && v.as_deref() == Some(b"function")));

        let name = unique_topic("fstop");
        let error = failing(&name, ErrorTolerance::Stop).run("one", std::future::pending()).await.unwrap_err();
        assert!(matches!(error, ProcessorError::Function { offset: 2, .. }), "{error}");
        assert!(error.to_string().contains("cursed"), "{error}");
        let stored = committed(cluster, &format!("{name}-group"), &input, 1).await[&0];
        assert!(stored.is_none_or(|o| o <= 2), "{stored:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_that_cannot_be_sent_stops_and_is_retried_after_a_restart() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output) = (unique_topic("proc-in"), unique_topic("proc-out"));
        cluster.create_topic(&input, 1).await.unwrap();
        cluster.create_topic(&output, 1).await.unwrap();
        let mut lines: Vec<Vec<u8>> = (1..=5).map(line).collect();
        lines[2] = format!("10.0.0.1 GET /{}/7", "x".repeat(5000)).into_bytes();
        write(cluster, &input, 1, &lines).await;
        let name = unique_topic("big");
        // The producer refuses records over 2000 bytes: record 2's output.
        let small = processor_for(cluster, &name, &input, &output)
            .producer_property("message.max.bytes", "2000")
            .producer_property("batch.size", "2000")
            .build()
            .unwrap();
        let error = small.run("one", std::future::pending()).await.unwrap_err();
        assert!(error.to_string().contains("message.max.bytes"), "{error}");
        let stored = committed(cluster, &format!("{name}-group"), &input, 1).await[&0];
        assert!(stored.is_none_or(|o| o <= 2), "stored past the failed record: {stored:?}");

        // Restarted with room: the failed input is processed again.
        let roomy = processor_for(cluster, &name, &input, &output).build().unwrap();
        let metrics = roomy.metrics();
        let running = start(roomy, "one");
        until("after the restart", &metrics, |m| {
            m.partitions.iter().any(|(_, p)| p.watermark == Some(5)) && m.in_flight == 0
        })
        .await;
        running.stop().await.unwrap();
        let values: Vec<String> = read_all(cluster, &output, 1, 4)
            .await
            .into_iter()
            .map(|(_, v, _)| String::from_utf8(v.unwrap()).unwrap())
            .collect();
        assert!(values.iter().any(|v| v.len() > 5000), "the big record's output arrived: {values:?}");
        assert_eq!(committed(cluster, &format!("{name}-group"), &input, 1).await[&0], Some(5));
    })
    .await;
}

#[tokio::test]
async fn settings_the_processor_owns_are_refused() {
    let builder = || {
        Processor::<Ignore, String, String, String>::builder()
            .name("n")
            .bootstrap_servers("127.0.0.1:9")
            .input_topic("i")
            .output_topic("o")
            .function(|input| weblog(&input.value))
    };
    for key in ["enable.auto.offset.store", "enable.auto.commit", "group.id"] {
        let error = builder().consumer_property(key, "x").build().unwrap_err();
        assert!(error.to_string().contains(key), "{error}");
    }
    let error = builder().producer_property("enable.idempotence", "false").build().unwrap_err();
    assert!(error.to_string().contains("enable.idempotence"), "{error}");
    let error = builder().consumer_property("no.such.key", "1").build().unwrap_err();
    assert!(error.to_string().contains("no.such.key"), "{error}");
    assert!(builder().build().is_ok());
    let error = builder().source(|| async { None::<Output<String, String>> }).build().unwrap_err();
    assert!(error.to_string().contains("a source has no input topic"), "{error}");
}

#[tokio::test]
async fn an_unreachable_cluster_is_an_error_before_the_first_message() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let processor = Processor::<Ignore, String, String, String>::builder()
        .name("unreachable")
        .bootstrap_servers(format!("127.0.0.1:{port}"))
        .input_topic("i")
        .output_topic("o")
        .startup_timeout(Duration::from_secs(1))
        .function(|input| weblog(&input.value))
        .build()
        .unwrap();
    let started = Instant::now();
    let error = tokio::time::timeout(Duration::from_secs(20), processor.run("one", std::future::pending()))
        .await
        .expect("run gives up")
        .unwrap_err();
    assert!(matches!(error, ProcessorError::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains(&port.to_string()), "{error}");
    eprintln!("gave up after {:?}: {error}", started.elapsed());
}

/// A pseudo-random delay in 0..20 ms from a number (no clock, no RNG).
fn delay_of(n: i64) -> Duration {
    Duration::from_millis((n as u64).wrapping_mul(2_654_435_761) % 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_finish_out_of_order_and_outputs_keep_input_order() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output) = (unique_topic("async-in"), unique_topic("async-out"));
        cluster.create_topic(&input, 3).await.unwrap();
        cluster.create_topic(&output, 1).await.unwrap();
        let values: Vec<Vec<u8>> = (0..1500).map(|i| i.to_string().into_bytes()).collect();
        write(cluster, &input, 3, &values).await;
        let name = unique_topic("async");
        let (running_calls, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (calls, peak) = (running_calls.clone(), most.clone());
        let processor = builder::<Ignore, i64, String, i64>(cluster, &name, &input, &output)
            .input_value_serde(Arc::new(DecimalI64))
            .output_value_serde(Arc::new(DecimalI64))
            .function_error_tolerance(ErrorTolerance::Skip)
            .async_function(8, move |input| {
                let (calls, peak) = (calls.clone(), peak.clone());
                async move {
                    let now = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(delay_of(input.value)).await;
                    calls.fetch_sub(1, Ordering::SeqCst);
                    match input.value {
                        v if v % 100 == 99 => Err("a service said no".into()),
                        v if v % 10 == 3 => Ok(Vec::new()),
                        v => Ok::<_, rill::BoxError>(vec![Output::new(format!("p{}", input.partition), v)]),
                    }
                }
            })
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("every record", &metrics, |m| m.consumed == 1500 && m.in_flight == 0 && m.skipped == 15).await;
        running.stop().await.unwrap();
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.filtered, snapshot.produced), (150, 1335), "{snapshot:?}");
        let peak = most.load(Ordering::SeqCst);
        assert!((2..=8).contains(&peak), "calls at once: {peak}");

        // One output partition: the order of its records is the send order.
        let got = read_all(cluster, &output, 1, 1335).await;
        assert_eq!(got.len(), 1335);
        let mut last: BTreeMap<String, i64> = BTreeMap::new();
        for (key, value, _) in got {
            let (key, value) = (key.unwrap(), DecimalI64.parse(&value.unwrap()));
            let previous = last.insert(key.clone(), value);
            assert!(previous.is_none_or(|p| p < value), "{key}: {value} after {previous:?}");
        }
        let offsets = committed(cluster, &format!("{name}-group"), &input, 3).await;
        assert_eq!(offsets.values().copied().collect::<Vec<_>>(), [Some(500); 3]);
        eprintln!("async: at most {peak} calls at once");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_blocking_function_runs_off_the_runtime_and_in_parallel() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output) = (unique_topic("blocking-in"), unique_topic("blocking-out"));
        cluster.create_topic(&input, 1).await.unwrap();
        cluster.create_topic(&output, 1).await.unwrap();
        let values: Vec<Vec<u8>> = (0..8).map(|i| format!("v{i}").into_bytes()).collect();
        write(cluster, &input, 1, &values).await;
        // Each call blocks its thread until four calls wait together. On the
        // processor's task (or with fewer than four at once) the first call
        // would block for ever; on one worker thread, so would any call the
        // runtime ran itself.
        let together = Arc::new(std::sync::Barrier::new(4));
        let processor = builder::<Ignore, String, String, String>(cluster, &unique_topic("blocking"), &input, &output)
            .blocking_function(4, move |input| {
                together.wait();
                Some(Output::new("k".to_owned(), input.value.to_uppercase()))
            })
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("every record", &metrics, |m| m.produced == 8 && m.in_flight == 0).await;
        running.stop().await.unwrap();
        let got = read_all(cluster, &output, 1, 8).await;
        let values: Vec<String> =
            got.into_iter().map(|(_, v, _)| String::from_utf8(v.unwrap().to_vec()).unwrap()).collect();
        assert_eq!(values, (0..8).map(|i| format!("V{i}")).collect::<Vec<_>>(), "input order kept");
    })
    .await;
}

/// An output of a partition already revoked fails late (the mock answers
/// its Produce with INVALID_RECORD after a 2 s round trip, while the
/// revocation's drain gave up after 200 ms): the failure belongs to a
/// partition this instance no longer owns, whose input was not stored, so
/// the processor goes on; once it owns the partition again it processes
/// the input again and delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_failure_of_a_revoked_partition_does_not_stop_the_processor() {
    use rill_testkit::mock::{RDKafkaApiKey, RDKafkaRespErr};
    common::logs();
    rill_testkit::cluster::on_mock(ClusterOptions::default(), async |cluster, mock| {
        let (input, output) = (unique_topic("late-in"), unique_topic("late-out"));
        let name = unique_topic("late");
        let group = format!("{name}-group");
        mock.create_topic(&input, 1, 1).unwrap();
        mock.create_topic(&output, 1, 1).unwrap();
        mock.partition_leader(&input, 0, Some(1)).unwrap();
        mock.partition_leader(&output, 0, Some(3)).unwrap();
        mock.group_coordinator(&group, 1).unwrap();
        write(cluster, &input, 1, &[b"10.0.0.1 GET /late".to_vec()]).await;
        // The output leader answers slowly, and the next Produce with an error.
        mock.round_trip_time(3, Duration::from_secs(2)).unwrap();
        mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD]).unwrap();

        let eager = || {
            builder::<Ignore, String, String, String>(cluster, &name, &input, &output)
                .function(|input| Some(Output::new("k".to_owned(), input.value)))
                .consumer_property("partition.assignment.strategy", "range")
                .consumer_property("heartbeat.interval.ms", "100")
                .static_membership(false)
                .revoke_timeout(Duration::from_millis(200))
        };
        let a = eager().build().unwrap();
        let metrics = a.metrics();
        let running = start(a, "a");
        until("the output is on its way", &metrics, |m| m.in_flight == 1).await;

        // A second member: the eager rebalance revokes the partition.
        // It bootstraps from broker 1 (the coordinator), not through the
        // slow broker 3.
        let first_broker = mock.bootstrap().split(',').next().unwrap();
        let other = ConsumerConfig::new(rill_client::ClientConfig::new(first_broker).unwrap())
            .group(&group)
            .offset_reset(OffsetReset::Earliest)
            .auto_commit(false, Duration::from_secs(5))
            .session(Duration::from_secs(6), Duration::from_millis(100))
            .strategies(vec![rill_client::consumer::AssignmentStrategy::Range]);
        let mut other = Consumer::new(other).unwrap();
        other.subscribe(&[input.as_str()]).unwrap();
        // It reads a little (without committing) and leaves, so the
        // partition comes back to the processor whichever member had it.
        let other = tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(3), other.recv()).await;
            other.close(Duration::from_secs(5)).await.unwrap();
        });
        // The input is processed again after the revocation, and delivered
        // once; the first output failed late, and did not stop the processor.
        let deadline = Instant::now() + Duration::from_secs(60);
        while metrics.snapshot().produced < 1 {
            assert!(!running.0.is_finished(), "the processor stopped: {:?}", running.stop().await);
            assert!(Instant::now() < deadline, "no delivery: {:?}", metrics.snapshot());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        other.await.unwrap();
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.consumed, snapshot.produced), (2, 1), "processed twice, delivered once: {snapshot:?}");
        running.stop().await.unwrap();
        let got = read_all(cluster, &output, 1, 1).await;
        assert_eq!(got.len(), 1);
    })
    .await;
}

/// `i64` as decimal text.
struct DecimalI64;

impl DecimalI64 {
    fn parse(&self, data: &[u8]) -> i64 {
        std::str::from_utf8(data).unwrap().parse().unwrap()
    }
}

impl rill::Serde<i64> for DecimalI64 {
    fn serialize(&self, value: &i64) -> Result<Option<bytes::Bytes>, rill::SerdeError> {
        Ok(Some(value.to_string().into()))
    }

    fn deserialize(&self, data: Option<&bytes::Bytes>) -> Result<i64, rill::SerdeError> {
        let text =
            std::str::from_utf8(data.map_or(&[][..], |d| d)).map_err(|e| rill::SerdeError::new(e.to_string()))?;
        text.parse().map_err(|e: std::num::ParseIntError| rill::SerdeError::new(e.to_string()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_produces_until_stopped_and_its_errors_follow_the_tolerance() {
    use std::sync::atomic::{AtomicI64, Ordering};
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let output = unique_topic("source-out");
        cluster.create_topic(&output, 2).await.unwrap();
        let next = Arc::new(AtomicI64::new(0));
        let counter = next.clone();
        // Each acknowledgement, with the outputs delivered when it came.
        let acks: Arc<std::sync::Mutex<Vec<(u64, u64)>>> = Arc::default();
        let watched: Arc<std::sync::OnceLock<Arc<rill::Metrics>>> = Arc::default();
        let (acked, watching) = (acks.clone(), watched.clone());
        let processor = Processor::<(), (), String, i64>::builder()
            .name(unique_topic("source"))
            .bootstrap_servers(cluster.bootstrap())
            .output_topic(&output)
            .acknowledge(move |calls| {
                let produced = watching.get().map_or(0, |m| m.snapshot().produced);
                acked.lock().unwrap().push((calls, produced));
            })
            .source(move || {
                let call = counter.fetch_add(10, Ordering::SeqCst);
                async move {
                    // Every seventh call has nothing to say.
                    if (call / 10) % 7 == 6 {
                        return Vec::new();
                    }
                    (call..call + 10).map(|n| Output::new(format!("k{}", n % 4), n)).collect()
                }
            })
            .build()
            .unwrap();
        let metrics = processor.metrics();
        watched.set(metrics.clone()).unwrap();
        let running = start(processor, "one");
        until("two thousand outputs", &metrics, |m| m.produced >= 2000).await;
        running.stop().await.unwrap();
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.in_flight, 0);
        assert!(snapshot.filtered > 0, "{snapshot:?}");
        let calls = next.load(Ordering::SeqCst) / 10;
        let expected: Vec<i64> = (0..calls).filter(|c| c % 7 != 6).flat_map(|c| c * 10..c * 10 + 10).collect();
        assert_eq!(snapshot.produced, expected.len() as u64, "every output returned was delivered");
        // Acknowledgements grow, never run ahead of the deliveries, and
        // reach every call that finished (the one under way at the stop is
        // dropped).
        let acks = acks.lock().unwrap().clone();
        let outputs_before = |n: u64| (0..n as i64).filter(|c| c % 7 != 6).count() as u64 * 10;
        assert!(acks.windows(2).all(|w| w[0].0 < w[1].0), "{acks:?}");
        for &(n, produced) in &acks {
            assert!(produced >= outputs_before(n), "calls before {n} acknowledged with {produced} delivered");
        }
        let last = acks.last().expect("acknowledgements").0 as i64;
        assert!(last == calls || last == calls - 1, "last acknowledged {last} of {calls} calls");
        let mut got: Vec<i64> = read_all(cluster, &output, 2, expected.len())
            .await
            .into_iter()
            .map(|(_, v, _)| i64::from_be_bytes(v.unwrap().try_into().unwrap()))
            .collect();
        got.sort_unstable();
        assert_eq!(got, expected);

        // A source error stops it unless tolerated.
        let failing = |tolerance: ErrorTolerance| {
            let calls = Arc::new(AtomicI64::new(0));
            Processor::<(), (), String, i64>::builder()
                .name(unique_topic("source-err"))
                .bootstrap_servers(cluster.bootstrap())
                .output_topic(&output)
                .function_error_tolerance(tolerance)
                .source(move || {
                    let call = calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if call == 3 {
                            Err("the feed broke".into())
                        } else {
                            Ok::<_, rill::BoxError>(vec![Output::new("k".into(), call)])
                        }
                    }
                })
                .build()
                .unwrap()
        };
        let error = failing(ErrorTolerance::Stop).run("one", std::future::pending()).await.unwrap_err();
        assert!(matches!(&error, ProcessorError::Source(e) if e.to_string() == "the feed broke"), "{error:?}");
        let skipping = failing(ErrorTolerance::Skip);
        let metrics = skipping.metrics();
        let running = start(skipping, "one");
        until("past the error", &metrics, |m| m.skipped == 1 && m.produced >= 10).await;
        running.stop().await.unwrap();
    })
    .await;
}

/// Writes generated web-log lines `from..to` at about `rate` per second.
async fn feed(cluster: &TestCluster, topic: &str, from: u64, to: u64, rate: u64) {
    let producer = Producer::new(ProducerConfig::new(cluster.client_config())).unwrap();
    let started = Instant::now();
    let mut pending = Vec::new();
    for id in from..to {
        let line = rill_cli::weblog::line(id);
        pending.push(producer.send(Record::to(topic).value(&line)).await.unwrap());
        if id % 50 == 49 {
            tokio::time::sleep_until(started + Duration::from_secs_f64((id - from + 1) as f64 / rate as f64)).await;
        }
    }
    for delivery in pending {
        delivery.await.unwrap();
    }
    producer.close(Duration::from_secs(10)).await.unwrap();
}

/// How often each id reached `topic`, once `count` distinct ids are there.
async fn ids_in(cluster: &TestCluster, topic: &str, partitions: i32, count: u64) -> BTreeMap<u64, u32> {
    let config = ConsumerConfig::new(cluster.client_config())
        .offset_reset(OffsetReset::Earliest)
        .fetch_wait(1, Duration::from_millis(100));
    let mut consumer = Consumer::new(config).unwrap();
    consumer.assign(&(0..partitions).map(|p| TopicPartition::new(topic, p)).collect::<Vec<_>>());
    let mut seen: BTreeMap<u64, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await {
            Ok(record) => {
                let record = record.unwrap();
                let value = std::str::from_utf8(record.value.as_deref().unwrap()).unwrap();
                *seen.entry(rill_cli::weblog::id_of(value).unwrap()).or_default() += 1;
            }
            Err(_) if seen.len() as u64 >= count => break,
            Err(_) => {
                if Instant::now() > deadline {
                    let missing: Vec<u64> = (0..count).filter(|id| !seen.contains_key(id)).collect();
                    let mut ranges: Vec<(u64, u64)> = Vec::new();
                    for id in missing {
                        match ranges.last_mut() {
                            Some((_, end)) if *end + 1 == id => *end = id,
                            _ => ranges.push((id, id)),
                        }
                    }
                    panic!("{} of {count} ids in {topic}; missing {ranges:?}", seen.len());
                }
            }
        }
    }
    consumer.close(Duration::from_secs(5)).await.unwrap();
    seen
}

fn weblog_processor(
    cluster: &TestCluster,
    name: &str,
    input: &str,
    output: &str,
) -> rill::ProcessorBuilder<Ignore, String, String, String> {
    builder::<Ignore, String, String, String>(cluster, name, input, output)
        .function(|input| rill_cli::weblog::process(&input.value))
}

/// A second instance joins mid-stream and later leaves (cooperative-sticky
/// on the mock cluster): nothing is lost, and since each revocation drains
/// and commits before the partitions move, nothing is processed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_joins_and_leaves_mid_stream() {
    common::logs();
    rill_testkit::cluster::on_mock(ClusterOptions::default(), async |cluster, mock| {
        let (input, output) = (unique_topic("reb-in"), unique_topic("reb-out"));
        mock.create_topic(&input, 4, 1).unwrap();
        mock.create_topic(&output, 3, 1).unwrap();
        let name = unique_topic("reb");
        let build = || {
            weblog_processor(cluster, &name, &input, &output)
                .consumer_property("partition.assignment.strategy", "cooperative-sticky")
                .static_membership(false)
                .build()
                .unwrap()
        };
        let count = 40_000;
        let feeding = feed(cluster, &input, 0, count, 2_000);
        let scenario = async {
            let a = build();
            let a_metrics = a.metrics();
            let running_a = start(a, "a");
            until("a consumes", &a_metrics, |m| m.produced > 1_000).await;
            let b = build();
            let b_metrics = b.metrics();
            let running_b = start(b, "b");
            until("b takes a share", &b_metrics, |m| m.produced > 500).await;
            running_b.stop().await.unwrap();
            until("a takes everything back", &a_metrics, |m| m.partitions.len() == 4).await;
            (running_a, a_metrics)
        };
        let ((running_a, _), ()) = tokio::join!(scenario, feeding);
        // a runs on until every id is out.
        let seen = ids_in(cluster, &output, 3, count).await;
        running_a.stop().await.unwrap();
        assert_eq!(seen.len() as u64, count, "every id reached the output");
        let duplicates: u32 = seen.values().map(|n| n - 1).sum();
        eprintln!("rebalance: {count} ids, {duplicates} duplicates");
        assert_eq!(duplicates, 0, "revocations drain and commit before the partitions move");
    })
    .await;
}

/// Outputs spread over three partitions, one behind a slow leader, so they
/// complete out of input order; the processor is aborted (no shutdown, as
/// a crash) three times mid-stream and restarted: nothing is lost, so the
/// stored watermark never passed an input whose output was still in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_completion_never_stores_past_an_undelivered_input() {
    common::logs();
    rill_testkit::cluster::on_mock(ClusterOptions::default(), async |cluster, mock| {
        let (input, output) = (unique_topic("ooo-in"), unique_topic("ooo-out"));
        mock.create_topic(&input, 2, 1).unwrap();
        mock.create_topic(&output, 3, 1).unwrap();
        for (partition, broker) in [(0, 1), (1, 2), (2, 3)] {
            mock.partition_leader(&output, partition, Some(broker)).unwrap();
        }
        mock.round_trip_time(2, Duration::from_millis(400)).unwrap();
        let name = unique_topic("ooo");
        let count = 9_000;
        let feeding = feed(cluster, &input, 0, count, 1_500);
        let crashes = async {
            for round in 0..3 {
                let processor = weblog_processor(cluster, &name, &input, &output).build().unwrap();
                let metrics = processor.metrics();
                let running = start(processor, "one");
                until("some progress", &metrics, |m| m.produced > 300).await;
                // Outputs to the slow partition are in flight now.
                tokio::time::sleep(Duration::from_millis(150 * (round + 1))).await;
                let snapshot = metrics.snapshot();
                eprintln!("round {round}: aborting with {} outputs in flight", snapshot.in_flight);
                running.0.abort().await;
            }
        };
        tokio::join!(feeding, crashes);
        let processor = weblog_processor(cluster, &name, &input, &output).build().unwrap();
        let running = start(processor, "one");
        let seen = ids_in(cluster, &output, 3, count).await;
        running.stop().await.unwrap();
        let duplicates: u32 = seen.values().map(|n| n - 1).sum();
        eprintln!("out of order: {count} ids, {duplicates} duplicates after 3 crashes");
        assert_eq!(seen.len() as u64, count);
    })
    .await;
}

/// The function stage's retries come before its tolerance: a call that
/// fails twice succeeds on its third try; one that always fails, and one
/// that hangs (each try cut at 300 ms), are dead-lettered after three
/// tries with the stage and the attempts in their headers; the others are
/// processed meanwhile and the committed watermark passes them all. A
/// plain function is retried too, and with `Stop` its last error stops
/// the processor with the input not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_retries_and_timeouts_come_before_the_tolerance() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output, dead) = (unique_topic("retry-in"), unique_topic("retry-out"), unique_topic("retry-dead"));
        for topic in [&input, &output, &dead] {
            cluster.create_topic(topic, 1).await.unwrap();
        }
        write(cluster, &input, 1, &(0..5).map(|i| format!("r{i}").into_bytes()).collect::<Vec<_>>()).await;
        let tries: Arc<std::sync::Mutex<BTreeMap<i64, u32>>> = Arc::default();
        let counted = tries.clone();
        let name = unique_topic("retry");
        let processor = builder::<Ignore, String, String, String>(cluster, &name, &input, &output)
            .async_function(4, move |input| {
                let tried = {
                    let mut tries = counted.lock().unwrap();
                    let n = tries.entry(input.offset).or_default();
                    *n += 1;
                    *n
                };
                async move {
                    match input.offset {
                        1 if tried < 3 => Err("flaky".to_owned()),
                        2 => Err("always broken".to_owned()),
                        3 => std::future::pending().await,
                        _ => Ok(Output::new(String::new(), input.value)),
                    }
                }
            })
            .function_retry(
                Retry::attempts(3)
                    .backoff(Duration::from_millis(10), Duration::from_millis(40))
                    .timeout(Duration::from_millis(300)),
            )
            .function_error_tolerance(ErrorTolerance::DeadLetter(dead.clone()))
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        let at = |m: &MetricsSnapshot| m.partitions.first().and_then(|(_, p)| p.watermark);
        until("every record", &metrics, |m| m.produced == 3 && m.dead_lettered == 2 && at(m) == Some(5)).await;
        running.stop().await.unwrap();
        assert_eq!(*tries.lock().unwrap(), BTreeMap::from([(0, 1), (1, 3), (2, 3), (3, 3), (4, 1)]));
        assert_eq!(committed(cluster, &format!("{name}-group"), &input, 1).await[&0], Some(5));
        let header = |headers: &[(String, Option<Vec<u8>>)], key: &str| {
            headers.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.clone()).map(|v| String::from_utf8(v).unwrap())
        };
        let letters = read_all(cluster, &dead, 1, 2).await;
        assert_eq!(letters.len(), 2);
        for (_, value, headers) in &letters {
            assert_eq!(header(headers, "rill.error.stage").as_deref(), Some("function"));
            assert_eq!(header(headers, "rill.error.attempts").as_deref(), Some("3"));
            let message = header(headers, "rill.error.message").unwrap();
            match value.as_deref() {
                Some(b"r2") => assert!(message.contains("always broken"), "{message}"),
                Some(b"r3") => assert!(message.contains("did not finish within 300ms"), "{message}"),
                other => panic!("a dead letter of {other:?}"),
            }
        }

        // A plain function: one failure, retried; then one that stays.
        let tries = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = tries.clone();
        let name = unique_topic("retry-plain");
        let error = builder::<Ignore, String, String, String>(cluster, &name, &input, &output)
            .function(move |input| {
                let tried = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                match input.offset {
                    0 if tried == 1 => Err("once".to_owned()),
                    1 => Err("stays".to_owned()),
                    _ => Ok(Output::new(String::new(), input.value)),
                }
            })
            .function_retry(Retry::attempts(2).backoff(Duration::from_millis(10), Duration::from_millis(10)))
            .build()
            .unwrap()
            .run("one", std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(error, ProcessorError::Function { offset: 1, .. }), "{error}");
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 4, "0 twice, 1 twice");
        let stored = committed(cluster, &format!("{name}-group"), &input, 1).await[&0];
        assert!(stored.is_none_or(|o| o <= 1), "stored past the failed record: {stored:?}");
    })
    .await;
}

/// An output value serde that refuses values starting with `bad`.
struct Picky;

impl rill::Serde<String> for Picky {
    fn serialize(&self, value: &String) -> Result<Option<bytes::Bytes>, rill::SerdeError> {
        if value.starts_with("bad") {
            return Err(rill::SerdeError::new(format!("`{value}` is not allowed out")));
        }
        Ok(Some(bytes::Bytes::copy_from_slice(value.as_bytes())))
    }

    fn deserialize(&self, data: Option<&bytes::Bytes>) -> Result<String, rill::SerdeError> {
        String::serde().deserialize(data)
    }
}

/// The serialize and produce stages take their tolerances: an output the
/// serde refuses, and one the producer refuses (over `message.max.bytes`),
/// are skipped, or dead-lettered as their inputs with the stage named; by
/// default the serialize error stops the processor. A dead letter that
/// cannot be delivered (its input is itself too large) stops it with
/// `ProcessorError::DeadLetter` and the input not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialize_and_produce_errors_follow_their_stage_tolerance() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let input = unique_topic("stage-in");
        cluster.create_topic(&input, 1).await.unwrap();
        let values = ["ok-0", "bad-1", "huge-2", "ok-3"];
        write(cluster, &input, 1, &values.iter().map(|v| v.as_bytes().to_vec()).collect::<Vec<_>>()).await;
        let processor = |name: &str, output: &str, serialize: ErrorTolerance, produce: ErrorTolerance| {
            builder::<Ignore, String, String, String>(cluster, name, &input, output)
                .output_value_serde(Arc::new(Picky))
                .producer_property("message.max.bytes", "2000")
                .producer_property("batch.size", "2000")
                .function(|input| {
                    // `huge` grows past what the producer takes.
                    let value = if input.value.starts_with("huge") { "x".repeat(5000) } else { input.value };
                    Output::new(String::new(), value)
                })
                .error_tolerance(Stage::Serialize, serialize)
                .error_tolerance(Stage::Produce, produce)
                .build()
                .unwrap()
        };
        let done = |m: &MetricsSnapshot| {
            m.consumed == 4 && m.in_flight == 0 && m.partitions.first().and_then(|(_, p)| p.watermark) == Some(4)
        };

        // Skip: counted, the watermark passes them.
        let (output, name) = (unique_topic("stage-out"), unique_topic("stage-skip"));
        cluster.create_topic(&output, 1).await.unwrap();
        let skipping = processor(&name, &output, ErrorTolerance::Skip, ErrorTolerance::Skip);
        let metrics = skipping.metrics();
        let running = start(skipping, "one");
        until("skipped", &metrics, done).await;
        running.stop().await.unwrap();
        let snapshot = metrics.snapshot();
        assert_eq!((snapshot.produced, snapshot.skipped), (2, 2), "{snapshot:?}");
        assert_eq!(committed(cluster, &format!("{name}-group"), &input, 1).await[&0], Some(4));

        // Dead letters: the inputs, with their stage.
        let (output, dead, name) = (unique_topic("stage-out"), unique_topic("stage-dead"), unique_topic("stage-dlq"));
        cluster.create_topic(&output, 1).await.unwrap();
        cluster.create_topic(&dead, 1).await.unwrap();
        let lettering =
            processor(&name, &output, ErrorTolerance::DeadLetter(dead.clone()), ErrorTolerance::DeadLetter(dead.clone()));
        let metrics = lettering.metrics();
        let running = start(lettering, "one");
        until("dead-lettered", &metrics, |m| done(m) && m.dead_lettered == 2).await;
        running.stop().await.unwrap();
        assert_eq!(metrics.snapshot().produced, 2);
        assert_eq!(committed(cluster, &format!("{name}-group"), &input, 1).await[&0], Some(4));
        let mut letters: Vec<(String, String)> = read_all(cluster, &dead, 1, 2)
            .await
            .into_iter()
            .map(|(_, value, headers)| {
                let stage = headers.iter().find(|(k, _)| k == "rill.error.stage").and_then(|(_, v)| v.clone());
                (String::from_utf8(value.unwrap()).unwrap(), String::from_utf8(stage.unwrap()).unwrap())
            })
            .collect();
        letters.sort();
        assert_eq!(letters, [("bad-1".to_owned(), "serialize".to_owned()), ("huge-2".into(), "produce".into())]);

        // Stop, the default: the serialize error stops it.
        let (output, name) = (unique_topic("stage-out"), unique_topic("stage-stop"));
        cluster.create_topic(&output, 1).await.unwrap();
        let stopping = processor(&name, &output, ErrorTolerance::Stop, ErrorTolerance::Stop);
        let error = stopping.run("one", std::future::pending()).await.unwrap_err();
        assert!(matches!(error, ProcessorError::Serialize { offset: 1, .. }), "{error}");
        let stored = committed(cluster, &format!("{name}-group"), &input, 1).await[&0];
        assert!(stored.is_none_or(|o| o <= 1), "{stored:?}");

        // A dead letter that cannot be delivered: the input itself is over
        // the producer's limit.
        let big_input = unique_topic("stage-big-in");
        cluster.create_topic(&big_input, 1).await.unwrap();
        write(cluster, &big_input, 1, &[b"ok".to_vec(), vec![b'y'; 3000], b"ok".to_vec()]).await;
        let (output, dead, name) = (unique_topic("stage-out"), unique_topic("stage-dead"), unique_topic("stage-undl"));
        cluster.create_topic(&output, 1).await.unwrap();
        cluster.create_topic(&dead, 1).await.unwrap();
        let error = builder::<Ignore, String, String, String>(cluster, &name, &big_input, &output)
            .producer_property("message.max.bytes", "2000")
            .producer_property("batch.size", "2000")
            .function(|input| {
                if input.value.len() > 2000 { Err("too much".to_owned()) } else { Ok(Output::new(String::new(), input.value)) }
            })
            .function_error_tolerance(ErrorTolerance::DeadLetter(dead.clone()))
            .build()
            .unwrap()
            .run("one", std::future::pending())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ProcessorError::DeadLetter { offset: 1, dead_letter_topic, .. } if **dead_letter_topic == *dead),
            "{error}"
        );
        let stored = committed(cluster, &format!("{name}-group"), &big_input, 1).await[&0];
        assert!(stored.is_none_or(|o| o <= 1), "stored past the record whose dead letter failed: {stored:?}");
    })
    .await;
}

/// An output the broker refuses after it was sent (the mock answers its
/// Produce with INVALID_RECORD) takes the produce stage's tolerance too:
/// its input is dead-lettered, and the watermark passes it once the dead
/// letter is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_the_broker_refuses_is_dead_lettered_by_the_produce_tolerance() {
    use rill_testkit::mock::{RDKafkaApiKey, RDKafkaRespErr};
    common::logs();
    rill_testkit::cluster::on_mock(ClusterOptions::default(), async |cluster, mock| {
        let (input, output, dead) =
            (unique_topic("refused-in"), unique_topic("refused-out"), unique_topic("refused-dlq"));
        for topic in [&input, &output, &dead] {
            mock.create_topic(topic, 1, 1).unwrap();
        }
        write(cluster, &input, 1, &[b"one".to_vec()]).await;
        mock.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD]).unwrap();
        let name = unique_topic("refused");
        let processor = builder::<Ignore, String, String, String>(cluster, &name, &input, &output)
            .function(|input| Output::new(String::new(), input.value))
            .error_tolerance(Stage::Produce, ErrorTolerance::DeadLetter(dead.clone()))
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("dead-lettered", &metrics, |m| {
            m.dead_lettered == 1 && m.in_flight == 0 && m.partitions.first().and_then(|(_, p)| p.watermark) == Some(1)
        })
        .await;
        running.stop().await.unwrap();
        assert_eq!(metrics.snapshot().produced, 0);
        let letters = read_all(cluster, &dead, 1, 1).await;
        assert_eq!(letters[0].1.as_deref(), Some(&b"one"[..]));
        let stage = letters[0].2.iter().find(|(k, _)| k == "rill.error.stage").and_then(|(_, v)| v.clone());
        assert_eq!(stage.as_deref(), Some(&b"produce"[..]));
        assert_eq!(committed(cluster, &format!("{name}-group"), &input, 1).await[&0], Some(1));
    })
    .await;
}

/// One input fans out to two topics (`Output::to`): both receive every
/// output, and the watermark waits for the deliveries to both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_may_name_their_topic_and_every_topic_counts_for_the_watermark() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output, audit) = (unique_topic("route-in"), unique_topic("route-out"), unique_topic("route-audit"));
        cluster.create_topic(&input, 2).await.unwrap();
        cluster.create_topic(&output, 1).await.unwrap();
        cluster.create_topic(&audit, 1).await.unwrap();
        write(cluster, &input, 2, &(0..20).map(line).collect::<Vec<_>>()).await;
        let name = unique_topic("route");
        let audit_topic: Arc<str> = Arc::from(audit.as_str());
        let processor = builder::<Ignore, String, String, String>(cluster, &name, &input, &output)
            .function(move |input| {
                vec![
                    Output::new("main".to_owned(), input.value.clone()),
                    Output::to(
                        audit_topic.clone(),
                        "audit".to_owned(),
                        format!("{}@{}", input.partition, input.offset),
                    ),
                ]
            })
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("every output", &metrics, |m| m.produced == 40 && m.in_flight == 0).await;
        running.stop().await.unwrap();
        assert_eq!(
            committed(cluster, &format!("{name}-group"), &input, 2).await.values().copied().collect::<Vec<_>>(),
            [Some(10); 2]
        );
        let main = read_all(cluster, &output, 1, 20).await;
        assert!(main.iter().all(|(k, _, _)| k.as_deref() == Some("main")) && main.len() == 20);
        let mut audited: Vec<String> = read_all(cluster, &audit, 1, 20)
            .await
            .into_iter()
            .map(|(_, v, _)| String::from_utf8(v.unwrap()).unwrap())
            .collect();
        audited.sort();
        let mut expected: Vec<String> = (0..2).flat_map(|p| (0..10).map(move |o| format!("{p}@{o}"))).collect();
        expected.sort();
        assert_eq!(audited, expected);
    })
    .await;
}

/// A call that hangs (no timeout) keeps its record unfinished: once that
/// has lasted the stuck timeout, `health()` names the partition and the
/// offset, the count goes up once, and the other records go on (unordered
/// calls). When the call returns, the partition is healthy again and its
/// watermark passes the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_partition_is_reported_by_health_within_the_threshold() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output) = (unique_topic("stuck-in"), unique_topic("stuck-out"));
        cluster.create_topic(&input, 1).await.unwrap();
        cluster.create_topic(&output, 1).await.unwrap();
        write(cluster, &input, 1, &(0..6).map(line).collect::<Vec<_>>()).await;
        let release = Arc::new(tokio::sync::Semaphore::new(0));
        let hold = release.clone();
        let name = unique_topic("stuck");
        let threshold = Duration::from_secs(1);
        let processor = builder::<Ignore, String, String, String>(cluster, &name, &input, &output)
            .async_function(4, move |input| {
                let hold = hold.clone();
                async move {
                    if input.offset == 3 {
                        let _ = hold.acquire().await;
                    }
                    Output::new(String::new(), input.value)
                }
            })
            .order(rill::Order::Unordered)
            .property("processor.stuck.timeout.ms", "1000")
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("all but the held record", &metrics, |m| m.produced == 5).await;
        assert_eq!(running.0.health(), rill::Health::Healthy, "not stuck yet");
        let deadline = Instant::now() + Duration::from_secs(30);
        let stuck = loop {
            if let rill::Health::Stuck(stuck) = running.0.health() {
                break stuck;
            }
            assert!(Instant::now() < deadline, "never reported stuck: {:?}", metrics.snapshot());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert_eq!((stuck[0].partition.partition, stuck[0].offset), (0, 3));
        assert!(stuck[0].stuck_for >= threshold, "{stuck:?}");
        assert_eq!(metrics.snapshot().stuck, 1);
        release.add_permits(1);
        let at = |m: &MetricsSnapshot| m.partitions.first().and_then(|(_, p)| p.watermark);
        until("the held record done", &metrics, |m| m.produced == 6 && at(m) == Some(6)).await;
        until("healthy again", &metrics, |_| running.0.health() == rill::Health::Healthy).await;
        assert_eq!(metrics.snapshot().stuck, 1, "counted once");
        running.stop().await.unwrap();
    })
    .await;
}

/// A click, as the JSON tests write and read it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Click {
    page: String,
    ms: u32,
}

/// A click's default serde is JSON (the builder's types need one).
impl DefaultSerde for Click {
    fn serde() -> Arc<dyn rill::Serde<Self>> {
        rill::Json::serde()
    }
}

/// JSON values behind a schema id byte, as a registry-backed serde: the
/// first record of each id waits for a (slow, asynchronous) lookup in
/// `prepare`, the rest find it cached; writing, an output's schema (its
/// `ms` parity) is registered first in `prepare_serialize`, once per
/// schema. Counts lookups and registrations.
struct RegistryJson {
    known: std::sync::Mutex<std::collections::HashSet<u8>>,
    lookups: Arc<std::sync::atomic::AtomicU32>,
    known_after: Arc<std::sync::Mutex<std::collections::HashSet<u8>>>,
    registrations: Arc<std::sync::atomic::AtomicU32>,
    registered: Arc<std::sync::Mutex<std::collections::HashSet<u8>>>,
}

impl RegistryJson {
    fn new() -> Self {
        RegistryJson {
            known: Default::default(),
            lookups: Default::default(),
            known_after: Default::default(),
            registrations: Default::default(),
            registered: Default::default(),
        }
    }

    fn schema_of(value: &Click) -> u8 {
        (value.ms % 2) as u8 + 10
    }
}

impl rill::Serde<Click> for RegistryJson {
    fn serialize(&self, value: &Click) -> Result<Option<bytes::Bytes>, rill::SerdeError> {
        let id = Self::schema_of(value);
        if !self.registered.lock().unwrap().contains(&id) {
            return Err(rill::SerdeError::new(format!("schema {id} was not registered first")));
        }
        let json = rill::Json::<Click>::serde().serialize(value)?.unwrap();
        Ok(Some([&[id][..], &json].concat().into()))
    }

    fn prepare_serialize(&self, value: &Click) -> Option<rill::Preparation> {
        let id = Self::schema_of(value);
        if self.registered.lock().unwrap().contains(&id) {
            return None;
        }
        let (registrations, registered) = (self.registrations.clone(), self.registered.clone());
        Some(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            registrations.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            registered.lock().unwrap().insert(id);
            Ok(())
        }))
    }

    fn deserialize(&self, data: Option<&bytes::Bytes>) -> Result<Click, rill::SerdeError> {
        let data = data.ok_or_else(|| rill::SerdeError::new("null"))?;
        let id = data[0];
        if !self.known_after.lock().unwrap().contains(&id) {
            return Err(rill::SerdeError::new(format!("schema {id} was not looked up first")));
        }
        self.known.lock().unwrap().insert(id);
        rill::Json::<Click>::serde().deserialize(Some(&data.slice(1..)))
    }

    fn prepare(&self, data: Option<&bytes::Bytes>) -> Option<rill::Preparation> {
        let id = *data?.first()?;
        if self.known_after.lock().unwrap().contains(&id) {
            return None;
        }
        let (lookups, known) = (self.lookups.clone(), self.known_after.clone());
        Some(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            known.lock().unwrap().insert(id);
            Ok(())
        }))
    }
}

/// JSON values with serde: typed in, typed out; a value that is not a
/// click's JSON is dead-lettered at the deserialize stage. A serde that
/// looks a schema up first does it in `prepare`, once per schema, and one
/// that registers an output's schema in `prepare_serialize`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_values_are_read_and_written_with_serde() {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output, dead) = (unique_topic("json-in"), unique_topic("json-out"), unique_topic("json-dead"));
        for topic in [&input, &output, &dead] {
            cluster.create_topic(topic, 1).await.unwrap();
        }
        let mut values: Vec<Vec<u8>> =
            (0..6).map(|i| format!(r#"{{"page":"/p{i}","ms":{}}}"#, i * 10).into_bytes()).collect();
        values[4] = b"{\"page\": 4}".to_vec();
        write(cluster, &input, 1, &values).await;
        let name = unique_topic("json");
        let processor = builder::<Ignore, Click, String, Click>(cluster, &name, &input, &output)
            .input_value_serde(rill::Json::<Click>::serde())
            .output_value_serde(rill::Json::<Click>::serde())
            .consume_error_tolerance(ErrorTolerance::DeadLetter(dead.clone()))
            .function(|input| Output::new(input.value.page.clone(), Click { ms: input.value.ms + 1, ..input.value }))
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("every record", &metrics, |m| m.produced == 5 && m.dead_lettered == 1 && m.in_flight == 0).await;
        running.stop().await.unwrap();
        let got: Vec<(String, String)> = read_all(cluster, &output, 1, 5)
            .await
            .into_iter()
            .map(|(k, v, _)| (k.unwrap(), String::from_utf8(v.unwrap()).unwrap()))
            .collect();
        let expected: Vec<(String, String)> = [0, 1, 2, 3, 5]
            .iter()
            .map(|i| (format!("/p{i}"), format!(r#"{{"page":"/p{i}","ms":{}}}"#, i * 10 + 1)))
            .collect();
        assert_eq!(got, expected);
        let letters = read_all(cluster, &dead, 1, 1).await;
        let stage = letters[0].2.iter().find(|(k, _)| k == "rill.error.stage").and_then(|(_, v)| v.clone());
        assert_eq!(stage.as_deref(), Some(&b"deserialize"[..]));

        // A schema lookup first, asynchronously, once per schema.
        let input = unique_topic("json-schema-in");
        let output = unique_topic("json-schema-out");
        cluster.create_topic(&input, 1).await.unwrap();
        cluster.create_topic(&output, 1).await.unwrap();
        let framed: Vec<Vec<u8>> =
            (0..10u8).map(|i| [vec![i % 2], format!(r#"{{"page":"/s{i}","ms":{i}}}"#).into_bytes()].concat()).collect();
        write(cluster, &input, 1, &framed).await;
        let registry = Arc::new(RegistryJson::new());
        let name = unique_topic("json-schema");
        let processor = builder::<Ignore, Click, String, Click>(cluster, &name, &input, &output)
            .input_value_serde(registry.clone())
            .output_value_serde(registry.clone())
            .function(|input| Output::new(input.value.page.clone(), Click { ms: input.value.ms * 3, ..input.value }))
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        until("every record", &metrics, |m| m.produced == 10 && m.in_flight == 0).await;
        running.stop().await.unwrap();
        assert_eq!(registry.lookups.load(std::sync::atomic::Ordering::SeqCst), 2, "one lookup per schema");
        assert_eq!(registry.registrations.load(std::sync::atomic::Ordering::SeqCst), 2, "one registration per schema");
        let got: Vec<Vec<u8>> =
            read_all(cluster, &output, 1, 10).await.into_iter().map(|(_, v, _)| v.unwrap()).collect();
        let expected: Vec<Vec<u8>> = (0..10u32)
            .map(|i| {
                [vec![((i * 3) % 2) as u8 + 10], format!(r#"{{"page":"/s{i}","ms":{}}}"#, i * 3).into_bytes()].concat()
            })
            .collect();
        assert_eq!(got, expected, "each output written with its registered schema's id");
    })
    .await;
}

/// One byte budget: the output topic's leader answers slowly (the mock
/// delays broker 3 by 300 ms), so outputs pile up in flight; past the
/// budget (256 KiB) the processor pauses the input partitions holding the
/// most instead of blocking in `send`, resumes them as deliveries come
/// back, and processes everything. What it holds stays near the budget
/// (sampled; the budget is looked at every 50 ms and the consumer's
/// prefetch is apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_buffer_budget_the_processor_pauses_the_biggest_partitions() {
    common::logs();
    rill_testkit::cluster::on_mock(ClusterOptions::default(), async |cluster, mock| {
        let (input, output) = (unique_topic("budget-in"), unique_topic("budget-out"));
        mock.create_topic(&input, 3, 1).unwrap();
        mock.create_topic(&output, 1, 1).unwrap();
        for partition in 0..3 {
            mock.partition_leader(&input, partition, Some(1)).unwrap();
        }
        mock.partition_leader(&output, 0, Some(3)).unwrap();
        let values: Vec<Vec<u8>> = (0..6000).map(|i| format!("{i:>1024}").into_bytes()).collect();
        write(cluster, &input, 3, &values).await;
        let name = unique_topic("budget");
        mock.group_coordinator(&format!("{name}-group"), 1).unwrap();
        mock.round_trip_time(3, Duration::from_millis(300)).unwrap();
        let processor = builder::<Ignore, Vec<u8>, Ignore, Vec<u8>>(cluster, &name, &input, &output)
            .function(|input| Output::new(Ignore, input.value))
            .property("processor.max.buffer.bytes", "262144")
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = start(processor, "one");
        let (mut most, mut seen_paused) = (0u64, false);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let m = metrics.snapshot();
            most = most.max(m.buffered_bytes);
            seen_paused |= m.partitions.iter().any(|(_, p)| p.paused);
            if m.produced == 6000 && m.in_flight == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{m:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        running.stop().await.unwrap();
        let m = metrics.snapshot();
        assert!(m.paused >= 1 && m.resumed >= 1 && seen_paused, "{m:?}");
        // The budget, plus what was taken before a pause took effect (a
        // burst of 64 records, their outputs): before the per-burst check
        // this reached 1.07 MB.
        assert!(most <= 1 << 20, "held {most} bytes with a budget of 256 KiB");
        let committed = committed(cluster, &format!("{name}-group"), &input, 3).await;
        assert_eq!(committed.values().copied().collect::<Vec<_>>(), [Some(2000); 3]);
        eprintln!("budget 262144 B: held at most {most} B (sampled); paused {} times, resumed {}", m.paused, m.resumed);
    })
    .await;
}
