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

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig as RdConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use rill_client::producer::ProducerConfig;
use rill_client::{ClientConfig, NewTopic};
use rill_testkit::perf::{Meter, ProduceLoad, Progress, Report, produce_with_rill};
use rill_testkit::{Tansu, unique_topic};

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

    print_table(&rows, messages, rounds);
}

/// Runs each client `rounds` times on a fresh topic; returns the median
/// report per client, Rill first.
fn measure(broker: &str, bootstrap: &str, messages: u64, rounds: usize, mut create: impl FnMut(&str)) -> Vec<Report> {
    let mut rill = Vec::new();
    let mut librdkafka = Vec::new();
    for round in 0..rounds {
        let order: [&str; 2] = if round % 2 == 0 { ["rill", "librdkafka"] } else { ["librdkafka", "rill"] };
        for client in order {
            let topic = unique_topic(&format!("bench-{client}"));
            create(&topic);
            let report = run_child(client, bootstrap, &topic, messages);
            eprintln!(
                "{broker} round {round} {client}: {:.0} msgs/s, {:.3} µs CPU/record",
                report.msgs_per_s, report.cpu_us_per_msg
            );
            if client == "rill" { rill.push(report) } else { librdkafka.push(report) }
        }
    }
    vec![median(rill), median(librdkafka)]
}

fn median(mut reports: Vec<Report>) -> Report {
    reports.sort_by(|a, b| a.cpu_us_per_msg.total_cmp(&b.cpu_us_per_msg));
    reports.swap_remove(reports.len() / 2)
}

fn run_child(client: &str, bootstrap: &str, topic: &str, messages: u64) -> Report {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--child", client, bootstrap, topic, &messages.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("child runs");
    assert!(output.status.success(), "{client} child failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().expect("a report line");
    Report::from_json(line).unwrap_or_else(|| panic!("unreadable report: {line}"))
}

fn print_table(rows: &[(&str, Report)], messages: u64, rounds: usize) {
    println!();
    println!(
        "Produce: {messages} records x {VALUE_BYTES} B, {KEYS} keys, idempotent, acks=all, linger 5 ms, \
         {PARTITIONS} partitions; median of {rounds} runs per client."
    );
    println!();
    println!("| broker | client | msgs/s | CPU µs/record | wall s | peak RSS MiB |");
    println!("|---|---|---:|---:|---:|---:|");
    for (broker, report) in rows {
        println!(
            "| {broker} | {} | {:.0} | {:.3} | {:.2} | {:.0} |",
            report.client,
            report.msgs_per_s,
            report.cpu_us_per_msg,
            report.wall_s,
            report.max_rss_kb as f64 / 1024.0
        );
    }
    println!();
    println!("| broker | throughput rill/librdkafka | CPU per record rill/librdkafka |");
    println!("|---|---:|---:|");
    for pair in rows.chunks(2) {
        let (broker, rill) = &pair[0];
        let (_, librdkafka) = &pair[1];
        println!(
            "| {broker} | {:.2}x | {:.2}x |",
            rill.msgs_per_s / librdkafka.msgs_per_s,
            rill.cpu_us_per_msg / librdkafka.cpu_us_per_msg
        );
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// librdkafka's mock cluster in a child process, driven over its stdin.
struct MockProcess {
    child: Child,
    bootstrap: String,
    replies: BufReader<std::process::ChildStdout>,
}

impl MockProcess {
    fn start(brokers: i32) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--child", "mock", &brokers.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("mock child starts");
        let mut replies = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        replies.read_line(&mut line).unwrap();
        let bootstrap = line.trim().strip_prefix("BOOTSTRAP ").expect("bootstrap line").to_owned();
        MockProcess { child, bootstrap, replies }
    }

    fn create(&mut self, topic: &str, partitions: i32) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "create {topic} {partitions}").unwrap();
        let mut line = String::new();
        self.replies.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok");
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn child(args: &[String]) {
    match args[0].as_str() {
        "mock" => {
            let mock = rill_testkit::mock::MockKafka::start(args[1].parse().unwrap()).expect("mock cluster");
            println!("BOOTSTRAP {}", mock.bootstrap());
            for line in std::io::stdin().lines() {
                let line = line.unwrap();
                let parts: Vec<&str> = line.split_whitespace().collect();
                if let ["create", topic, partitions] = parts[..] {
                    mock.create_topic(topic, partitions.parse().unwrap(), 3).unwrap();
                    println!("ok");
                }
            }
        }
        "rill" => {
            let (bootstrap, topic, messages) = (&args[1], &args[2], args[3].parse().unwrap());
            let load = ProduceLoad { topic: topic.clone(), messages, value_bytes: VALUE_BYTES, keys: KEYS };
            let config = ProducerConfig::new(ClientConfig::new(bootstrap).unwrap());
            let runtime = tokio::runtime::Runtime::new().unwrap();
            let report = runtime.block_on(produce_with_rill(config, &load)).expect("rill run");
            println!("{}", report.to_json());
        }
        "librdkafka" => {
            let (bootstrap, topic, messages) = (&args[1], &args[2], args[3].parse().unwrap());
            let load = ProduceLoad { topic: topic.clone(), messages, value_bytes: VALUE_BYTES, keys: KEYS };
            println!("{}", produce_with_librdkafka(bootstrap, &load).to_json());
        }
        other => panic!("unknown child {other}"),
    }
}

/// Counts delivery reports.
#[derive(Default)]
struct Counting {
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// The same load through librdkafka, configured like Rill's defaults.
fn produce_with_librdkafka(bootstrap: &str, load: &ProduceLoad) -> Report {
    let context = Counting::default();
    let (delivered, failed) = (context.delivered.clone(), context.failed.clone());
    let producer: BaseProducer<Counting> = RdConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(context)
        .expect("librdkafka producer");
    let keys = load.key_set();
    let value = load.value();
    // Learn the topic before measuring, as the Rill run does.
    producer.send(BaseRecord::<[u8], [u8]>::to(&load.topic).payload(&value[..])).map_err(|(e, _)| e).unwrap();
    producer.flush(Duration::from_secs(30)).unwrap();
    let before = delivered.load(Ordering::Relaxed);
    let mut progress = Progress::new(load.messages);
    let meter = Meter::start();
    for i in 0..load.messages {
        let mut record = BaseRecord::<[u8], [u8]>::to(&load.topic).payload(&value[..]);
        if !keys.is_empty() {
            record = record.key(&keys[(i % load.keys) as usize][..]);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
                Err((error, _)) => panic!("librdkafka send: {error}"),
            }
        }
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
        if i % 10_000 == 0 {
            progress.update(i);
        }
    }
    producer.flush(Duration::from_secs(120)).expect("librdkafka flush");
    let report = meter.finish("librdkafka", "produce", load.messages, load.value_bytes, PARTITIONS as usize);
    progress.finish();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "librdkafka failed deliveries");
    assert_eq!(delivered.load(Ordering::Relaxed) - before, load.messages, "librdkafka delivered them all");
    report
}
