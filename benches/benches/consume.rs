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

use rill_cli::perf::{ConsumeLoad, ProduceLoad, Report, consume_with_rill, produce_with_rill};
use rill_client::consumer::{ConsumerConfig, OffsetReset};
use rill_client::producer::ProducerConfig;
use rill_client::{ClientConfig, NewTopic};
use rill_testkit::{Tansu, unique_topic};

use common::librdkafka::consume_with_librdkafka;
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
    let load = ProduceLoad::one(topic, messages, VALUE_BYTES, 1000);
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
            let load = ConsumeLoad { topics: vec![topic.clone()], messages, group: None };
            let config = ConsumerConfig::new(ClientConfig::new(bootstrap).unwrap()).offset_reset(OffsetReset::Earliest);
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let report = runtime.block_on(consume_with_rill(config, &load)).expect("rill run");
            println!("{}", report.to_json());
        }
        "librdkafka" => {
            let (bootstrap, topic, messages) = (&args[1], &args[2], args[3].parse().unwrap());
            println!("{}", consume_with_librdkafka(bootstrap, &[], topic, messages, PARTITIONS).to_json());
        }
        other => panic!("unknown child {other}"),
    }
}
