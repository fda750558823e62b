//! Rill vs librdkafka consuming from the same broker, in one run.
//!
//! `cargo bench -p rill-benches --bench consume` prints a markdown table.
//! A 6-partition topic is filled once per broker with 100-byte records
//! (1000 keys); then each client reads `RILL_BENCH_MESSAGES` records
//! (default 1,000,000) from the beginning of every partition, assigned
//! (no group), counting from the moment the consumer is created. The mock
//! cluster keeps only 5 MiB per partition, so there the load is capped at
//! 200,000 records.
//!
//! As in the produce benchmark, every client and the mock cluster run in a
//! process of their own, rounds alternate which client goes first, and the
//! table shows the median run by CPU per record.

mod common;

use std::time::Duration;

use rdkafka::config::ClientConfig as RdConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Message, Offset, TopicPartitionList};
use rill_client::consumer::{ConsumerConfig, OffsetReset};
use rill_client::producer::ProducerConfig;
use rill_client::{ClientConfig, NewTopic};
use rill_testkit::perf::{ConsumeLoad, Meter, ProduceLoad, Progress, Report, consume_with_rill, produce_with_rill};
use rill_testkit::{Tansu, unique_topic};

use common::{MockProcess, alternate, env_number, mock_child, print_table, run_child};

const PARTITIONS: i32 = 6;
const VALUE_BYTES: usize = 100;
/// What the mock cluster's 5 MiB per partition holds with room to spare.
const MOCK_MESSAGES: u64 = 200_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        return child(&args[at + 1..]);
    }
    let messages = env_number("RILL_BENCH_MESSAGES", 1_000_000);
    let rounds = env_number("RILL_BENCH_ROUNDS", 3) as usize;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows = Vec::new();

    let tansu = runtime.block_on(Tansu::start()).expect("tansu starts");
    let bootstrap = tansu.bootstrap();
    let topic = unique_topic("bench-consume");
    runtime.block_on(async {
        let client = rill_client::Client::new(ClientConfig::new(&bootstrap).unwrap()).unwrap();
        client.admin().create_topics(&[NewTopic::new(&topic, PARTITIONS)]).await.expect("topic created");
        fill(&bootstrap, &topic, messages).await;
    });
    for report in measure("tansu", &bootstrap, &topic, messages, rounds) {
        rows.push(("tansu", report));
    }
    drop(tansu);

    let mut mock = MockProcess::start(3);
    let mock_messages = messages.min(MOCK_MESSAGES);
    let topic = unique_topic("bench-consume");
    mock.create(&topic, PARTITIONS);
    runtime.block_on(fill(&mock.bootstrap, &topic, mock_messages));
    for report in measure("mock", &mock.bootstrap.clone(), &topic, mock_messages, rounds) {
        rows.push(("mock (3 brokers)", report));
    }
    drop(mock);

    let caption = format!(
        "Consume: {messages} records x {VALUE_BYTES} B ({mock_messages} on the mock), {PARTITIONS} partitions, \
         assigned, from the beginning; median of {rounds} runs per client."
    );
    print_table(&caption, &rows);
}

/// Writes the records every run reads (not measured).
async fn fill(bootstrap: &str, topic: &str, messages: u64) {
    let load = ProduceLoad { topic: topic.to_owned(), messages, value_bytes: VALUE_BYTES, keys: 1000 };
    let config = ProducerConfig::new(ClientConfig::new(bootstrap).unwrap());
    produce_with_rill(config, &load).await.expect("the topic is filled");
}

fn measure(broker: &str, bootstrap: &str, topic: &str, messages: u64, rounds: usize) -> Vec<Report> {
    alternate(broker, rounds, |client| run_child(&[client, bootstrap, topic, &messages.to_string()]))
}

fn child(args: &[String]) {
    match args[0].as_str() {
        "mock" => mock_child(&args[1]),
        "rill" => {
            let (bootstrap, topic, messages) = (&args[1], &args[2], args[3].parse().unwrap());
            let load = ConsumeLoad { topic: topic.clone(), messages, group: None };
            let config = ConsumerConfig::new(ClientConfig::new(bootstrap).unwrap()).offset_reset(OffsetReset::Earliest);
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let report = runtime.block_on(consume_with_rill(config, &load)).expect("rill run");
            println!("{}", report.to_json());
        }
        "librdkafka" => {
            let (bootstrap, topic, messages) = (&args[1], &args[2], args[3].parse().unwrap());
            println!("{}", consume_with_librdkafka(bootstrap, topic, messages).to_json());
        }
        other => panic!("unknown child {other}"),
    }
}

/// The same reads through librdkafka: a `BaseConsumer` assigned every
/// partition from the beginning, polled record by record.
fn consume_with_librdkafka(bootstrap: &str, topic: &str, messages: u64) -> Report {
    let mut progress = Progress::new(messages);
    let meter = Meter::start();
    let consumer: BaseConsumer = RdConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "unused-assigned-only")
        .set("enable.auto.commit", "false")
        .create()
        .expect("librdkafka consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut read = 0u64;
    let mut first_record = None;
    let mut checksum = 0u64;
    let mut value_bytes = 0;
    while read < messages {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                first_record.get_or_insert_with(|| meter.elapsed());
                if let Some(value) = message.payload() {
                    value_bytes = value.len();
                    checksum = checksum.wrapping_add(u64::from(value.first().copied().unwrap_or(0)));
                }
                read += 1;
                if read.is_multiple_of(10_000) {
                    progress.update(read);
                }
            }
            Some(Err(error)) => panic!("librdkafka consume: {error}"),
        }
    }
    let mut report = meter.finish("librdkafka", "consume", read, value_bytes, PARTITIONS as usize);
    report.extra.push(("first_record_s".into(), first_record.unwrap_or_default().as_secs_f64()));
    progress.finish();
    std::hint::black_box(checksum);
    report
}
