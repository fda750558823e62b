//! The processor's memory budget against librdkafka's buffer settings, when
//! the output topic's leader is slow, in one run.
//!
//! `cargo bench -p rill-benches --bench budget` prints a markdown table.
//! On librdkafka's mock cluster (3 brokers, in a child process): a
//! 48-partition input led by broker 1 holds `RILL_BENCH_MESSAGES` records
//! (default 10,000) of `RILL_BENCH_VALUE_BYTES` (default 10,240); the
//! output topic has one partition, led by broker 3, which answers every
//! request `RILL_BENCH_RTT_MS` late (default 500). Input is read far faster
//! than output can leave, so whatever a client buffers fills up.
//!
//! For each budget in `RILL_BENCH_BUDGETS_MIB` (default `4,16,64`):
//! - Rill: the processor copying each record, with
//!   `processor.max.buffer.bytes` = the budget (which also sets the
//!   producer's buffer, and a quarter of it as the consumer's prefetch,
//!   the rest bounding what is taken and in flight);
//! - librdkafka: the article's loop copying each record, with the same
//!   budget as `queue.buffering.max.kbytes` (its producer queue) and a
//!   quarter as `queued.max.messages.kbytes` (its consumer prefetch).
//!
//! Each run is a child process; its peak RSS (`VmHWM`) is the whole
//! process's. "RSS − budget" is what each client holds beyond its setting:
//! for Rill it should stay flat as the budget grows (a fixed overhead).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig as RdConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rill::Order;
use rill_cli::perf::{Meter, ProcessLoad, Report, Work, feed, process_with_rill};
use rill_client::ClientConfig;
use rill_client::producer::ProducerConfig;
use rill_testkit::unique_topic;

use common::librdkafka::send_when_room;
use common::{MockProcess, env_number, extra, mock_child, run_child};

/// Input partitions: the mock cluster keeps about 5 MiB a partition and
/// drops older records, so 100 MB of input needs this many.
const PARTITIONS: i32 = 48;
const INPUT_LEADER: i32 = 1;
const SLOW_LEADER: i32 = 3;
/// Both producers' batch size (both clients' default, set so that neither
/// changes under us): about a hundred records a request.
const BATCH_BYTES: usize = 1_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        return child(&args[at + 1..]);
    }
    let messages = env_number("RILL_BENCH_MESSAGES", 10_000);
    let value_bytes = env_number("RILL_BENCH_VALUE_BYTES", 10_240) as usize;
    let rtt_ms = env_number("RILL_BENCH_RTT_MS", 500);
    let budgets: Vec<u64> = std::env::var("RILL_BENCH_BUDGETS_MIB")
        .unwrap_or_else(|_| "4,16,64".to_owned())
        .split(',')
        .map(|b| b.trim().parse().expect("RILL_BENCH_BUDGETS_MIB: MiB, comma-separated"))
        .collect();

    let mut mock = MockProcess::start(3);
    let bootstrap = mock.bootstrap.clone();
    let input = unique_topic("bench-budget-in");
    mock.create(&input, PARTITIONS);
    for partition in 0..PARTITIONS {
        mock.leader(&input, partition, INPUT_LEADER);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let config = ProducerConfig::new(ClientConfig::new(&bootstrap).unwrap());
    runtime
        .block_on(feed(config, &input, &work(value_bytes), (0, messages), None, Some(PARTITIONS)))
        .expect("the input is loaded");
    drop(runtime);
    all_kept(&bootstrap, &input, messages);
    mock.round_trip_time(SLOW_LEADER, rtt_ms);

    let mut rows = Vec::new();
    for &budget_mib in &budgets {
        let budget = budget_mib << 20;
        for client in ["rill", "librdkafka"] {
            let output = unique_topic("bench-budget-out");
            mock.create(&output, 1);
            mock.leader(&output, 0, SLOW_LEADER);
            // The group's coordinator is a fast broker: only the output is slow.
            let name = unique_topic("bench-budget");
            mock.coordinator(&format!("{name}-group"), INPUT_LEADER);
            let report = run_child(&[
                client,
                &bootstrap,
                &input,
                &output,
                &messages.to_string(),
                &value_bytes.to_string(),
                &budget.to_string(),
                &name,
            ]);
            eprintln!(
                "budget {budget_mib} MiB {client}: {:.0} msgs/s, peak RSS {:.1} MiB",
                report.msgs_per_s,
                report.max_rss_kb as f64 / 1024.0
            );
            rows.push((budget_mib, report));
        }
    }
    drop(mock);

    println!();
    println!(
        "Memory with a slow output leader (mock cluster, broker {SLOW_LEADER} answers {rtt_ms} ms late): \
         {messages} records of {value_bytes} B, {PARTITIONS} input partitions → 1 output partition; peak RSS \
         of the whole process."
    );
    println!();
    println!("| budget MiB | client | peak RSS MiB | RSS − budget MiB | msgs/s | paused | resumed |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for (budget_mib, report) in &rows {
        let rss_mib = report.max_rss_kb as f64 / 1024.0;
        let (paused, resumed) = if report.client == "rill" {
            (format!("{:.0}", extra(report, "paused")), format!("{:.0}", extra(report, "resumed")))
        } else {
            ("–".to_owned(), "–".to_owned())
        };
        println!(
            "| {budget_mib} | {} | {rss_mib:.1} | {:.1} | {:.0} | {paused} | {resumed} |",
            report.client,
            rss_mib - *budget_mib as f64,
            report.msgs_per_s
        );
    }
    println!();
    println!("| budget MiB | peak RSS rill/librdkafka | throughput rill/librdkafka |");
    println!("|---:|---:|---:|");
    for pair in rows.chunks(2) {
        let ((budget_mib, rill), (_, librdkafka)) = (&pair[0], &pair[1]);
        println!(
            "| {budget_mib} | {:.2}x | {:.2}x |",
            rill.max_rss_kb as f64 / librdkafka.max_rss_kb as f64,
            rill.msgs_per_s / librdkafka.msgs_per_s
        );
    }
}

/// Fails unless the mock cluster still holds every input record: one it
/// dropped would leave both clients waiting for it.
fn all_kept(bootstrap: &str, input: &str, messages: u64) {
    let consumer: BaseConsumer = RdConfig::new().set("bootstrap.servers", bootstrap).create().expect("consumer");
    let mut kept = 0;
    for partition in 0..PARTITIONS {
        let (low, high) = consumer.fetch_watermarks(input, partition, Duration::from_secs(10)).expect("watermarks");
        assert_eq!(low, 0, "the mock cluster dropped records of partition {partition}: use fewer or smaller");
        kept += high;
    }
    assert_eq!(kept as u64, messages, "every input record is in the input topic");
}

/// Keyed records padded to `value_bytes`, copied input to output.
fn work(value_bytes: usize) -> Work {
    Work::Keyed { order: Order::Input, concurrency: 64, call: Duration::ZERO, keys: 1000, value_bytes }
}

fn child(args: &[String]) {
    if args[0] == "mock" {
        return mock_child(&args[1]);
    }
    let (bootstrap, input, output, name) = (&args[1], &args[2], &args[3], &args[7]);
    let messages: u64 = args[4].parse().unwrap();
    let value_bytes: usize = args[5].parse().unwrap();
    let budget: u64 = args[6].parse().unwrap();
    let report = match args[0].as_str() {
        "rill" => {
            let load = ProcessLoad {
                bootstrap: bootstrap.clone(),
                input: input.clone(),
                output: output.clone(),
                messages,
                rate: None,
                consumer_properties: Vec::new(),
                producer_properties: vec![("batch.size".to_owned(), BATCH_BYTES.to_string())],
                processor_properties: vec![("processor.max.buffer.bytes".to_owned(), budget.to_string())],
                work: work(value_bytes),
                name: Some(name.clone()),
            };
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(process_with_rill(&load)).expect("rill run")
        }
        "librdkafka" => copy_with_librdkafka(bootstrap, input, output, messages, value_bytes, budget, name),
        other => panic!("unknown child {other}"),
    };
    println!("{}", report.to_json());
}

/// The article's delivery handler: store the input offset, count.
struct StoreOnDelivery {
    consumer: Arc<BaseConsumer>,
    input: String,
    delivered: Arc<AtomicU64>,
}

impl ClientContext for StoreOnDelivery {}

impl ProducerContext for StoreOnDelivery {
    /// The input's partition and offset.
    type DeliveryOpaque = Box<(i32, i64)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (partition, offset) = *opaque;
        let _ = self.consumer.store_offset(&self.input, partition, offset);
        if result.is_ok() {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The article's loop, copying each record, with the budget as its
/// producer queue and a quarter of it as its consumer's prefetch.
fn copy_with_librdkafka(
    bootstrap: &str,
    input: &str,
    output: &str,
    messages: u64,
    value_bytes: usize,
    budget: u64,
    name: &str,
) -> Report {
    let mut config = RdConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{name}-group"))
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("fetch.queue.backoff.ms", "10")
        .set("queued.max.messages.kbytes", (budget / 4 / 1024).max(1).to_string());
    let consumer: Arc<BaseConsumer> = Arc::new(config.create().expect("librdkafka consumer"));
    let delivered = Arc::new(AtomicU64::new(0));
    let context = StoreOnDelivery { consumer: consumer.clone(), input: input.to_owned(), delivered: delivered.clone() };
    let producer: ThreadedProducer<StoreOnDelivery> = RdConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.size", BATCH_BYTES.to_string())
        .set("queue.buffering.max.kbytes", (budget / 1024).max(1).to_string())
        .create_with_context(context)
        .expect("librdkafka producer");
    consumer.subscribe(&[input]).unwrap();
    let mut meter = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while delivered.load(Ordering::Relaxed) < messages {
        assert!(std::time::Instant::now() < deadline, "librdkafka copied {delivered:?} of {messages} in 300 s");
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message.expect("librdkafka consume");
        meter.get_or_insert_with(Meter::start);
        let opaque = Box::new((message.partition(), message.offset()));
        let mut record = BaseRecord::with_opaque_to(output, opaque).payload(message.payload().unwrap_or_default());
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        send_when_room(&producer, record);
    }
    let report =
        meter.expect("records were read").finish("librdkafka", "process", messages, value_bytes, PARTITIONS as usize);
    producer.flush(Duration::from_secs(30)).expect("flushed");
    report
}
