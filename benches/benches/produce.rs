//! Rill vs librdkafka producing to the same broker, in one run.
//!
//! `cargo bench -p rill-benches --bench produce` prints a markdown table.
//! Load (both clients alike): 1,000,000 records (`RILL_BENCH_MESSAGES`) of
//! 100-byte values over 1000 keys, idempotent, acks=all, linger 5 ms, into
//! 6 partitions, on Tansu and on librdkafka's mock cluster (3 brokers).
//!
//! Every client and the mock cluster run in a process of their own (this
//! program re-runs itself with `--child`), so each client's `getrusage`
//! counts that client alone and never the broker. Each client gets
//! `RILL_BENCH_ROUNDS` runs (default 3), alternating which goes first, on a
//! fresh topic each time; the table shows the median.

mod common;

use rill_cli::perf::{ProduceLoad, Report, produce_with_rill};
use rill_client::producer::ProducerConfig;
use rill_client::{ClientConfig, NewTopic};
use rill_testkit::{Tansu, unique_topic};

use common::librdkafka::produce_with_librdkafka;
use common::{MockProcess, alternate, env_number, mock_child, print_table, run_child};

const PARTITIONS: i32 = 6;
const VALUE_BYTES: usize = 100;
const KEYS: u64 = 1000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        return child(&args[at + 1..]);
    }
    let messages = env_number("RILL_BENCH_MESSAGES", 1_000_000);
    let rounds = env_number("RILL_BENCH_ROUNDS", 3) as usize;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows = Vec::new();

    // Tansu: a broker process of its own.
    let tansu = runtime.block_on(Tansu::start()).expect("tansu starts");
    let bootstrap = tansu.bootstrap();
    let create = |topic: &str| {
        runtime.block_on(async {
            let client = rill_client::Client::new(ClientConfig::new(&bootstrap).unwrap()).unwrap();
            client.admin().create_topics(&[NewTopic::new(topic, PARTITIONS)]).await.expect("topic created");
        });
    };
    for report in measure("tansu", &bootstrap, messages, rounds, create) {
        rows.push(("tansu", report));
    }
    drop(tansu);

    // The mock cluster, in its own process too.
    let mut mock = MockProcess::start(3);
    let mock_bootstrap = mock.bootstrap.clone();
    for report in measure("mock", &mock_bootstrap, messages, rounds, |topic| mock.create(topic, PARTITIONS)) {
        rows.push(("mock (3 brokers)", report));
    }
    drop(mock);

    let caption = format!(
        "Produce: {messages} records x {VALUE_BYTES} B, {KEYS} keys, idempotent, acks=all, linger 5 ms, \
         {PARTITIONS} partitions; median of {rounds} runs per client."
    );
    print_table(&caption, &rows);
}

/// Runs each client `rounds` times, each on a fresh topic; returns the
/// median report per client, Rill first.
fn measure(broker: &str, bootstrap: &str, messages: u64, rounds: usize, mut create: impl FnMut(&str)) -> Vec<Report> {
    alternate(broker, rounds, |client| {
        let topic = unique_topic(&format!("bench-{client}"));
        create(&topic);
        run_child(&[client, bootstrap, &topic, &messages.to_string()])
    })
}

fn child(args: &[String]) {
    match args[0].as_str() {
        "mock" => mock_child(&args[1]),
        "rill" => {
            let (bootstrap, topic, messages) = (&args[1], &args[2], args[3].parse().unwrap());
            let load = ProduceLoad::one(topic, messages, VALUE_BYTES, KEYS);
            let config = ProducerConfig::new(ClientConfig::new(bootstrap).unwrap());
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let report = runtime.block_on(produce_with_rill(config, &load)).expect("rill run");
            println!("{}", report.to_json());
        }
        "librdkafka" => {
            let (bootstrap, topic, messages) = (&args[1], &args[2], args[3].parse().unwrap());
            let load = ProduceLoad::one(topic, messages, VALUE_BYTES, KEYS);
            println!("{}", produce_with_librdkafka(bootstrap, &[], &load, PARTITIONS as usize).to_json());
        }
        other => panic!("unknown child {other}"),
    }
}
