//! The Rill processor vs the article's loop over librdkafka, on the same
//! broker, in one run.
//!
//! `cargo bench -p rill-benches --bench process` prints two markdown tables.
//! Both sides run the web-log function (IPv4 address → country key, line
//! without the address) from a 6-partition input topic to a 6-partition
//! output topic, as a fresh group from the earliest offset.
//!
//! - Throughput: `RILL_BENCH_MESSAGES` lines (default 200,000) are written
//!   first; the clock runs from the first input record received (joining
//!   the group excluded) to the last output delivered.
//! - Latency: `RILL_BENCH_LATENCY_MESSAGES` lines (default 50,000) are
//!   written at `RILL_BENCH_RATE` per second (default 5,000, well below
//!   either side's saturation) while the processor runs; p50/p99/max of
//!   input CreateTime → output delivered, recorded for both sides in the
//!   same histogram (`rill::Latency`). Both sides fetch with
//!   `fetch.wait.max.ms=10` here (see `latency_settings`).
//!
//! The librdkafka side is the article's loop: a `BaseConsumer` with
//! `enable.auto.offset.store=false` polled record by record, a
//! `ThreadedProducer` whose delivery callback stores the input offset
//! (delivered or not, as the article does). Each run is a child process;
//! rounds alternate which client goes first; the table shows the median
//! run by CPU per record (throughput) or by p99 (latency).
//!
//! `RILL_BENCH_GUARANTEE=exactly_once` runs both sides exactly once
//! instead: Rill's processor with `processing.guarantee=exactly_once` (a
//! transaction per 100 ms), and librdkafka's transactional loop as its
//! documentation shows it (`examples/transactions.c`): a read_committed
//! consumer without auto-commit, a transactional producer, and every
//! 100 ms the consumer's positions sent to the transaction with its group
//! metadata, then commit and begin again.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::ClientContext;
use rdkafka::config::ClientConfig as RdConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rill::Latency;
use rill_cli::perf::{Meter, Report};
use rill_cli::perf::{ProcessLoad, Work, feed, process_with_rill};
use rill_client::producer::ProducerConfig;
use rill_client::{ClientConfig, NewTopic};
use rill_testkit::{Tansu, unique_topic};

use common::librdkafka::send_when_room;
use common::{MockProcess, alternate, alternate_by, env_number, extra, mock_child, print_table, run_child};

const PARTITIONS: i32 = 6;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        return child(&args[at + 1..]);
    }
    let messages = env_number("RILL_BENCH_MESSAGES", 200_000);
    let latency_messages = env_number("RILL_BENCH_LATENCY_MESSAGES", 50_000);
    let rate = env_number("RILL_BENCH_RATE", 5_000);
    let rounds = env_number("RILL_BENCH_ROUNDS", 3) as usize;
    let guarantee = std::env::var("RILL_BENCH_GUARANTEE").unwrap_or_else(|_| "at_least_once".into());
    assert!(matches!(guarantee.as_str(), "at_least_once" | "exactly_once"), "RILL_BENCH_GUARANTEE: {guarantee}");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (mut throughput, mut latency) = (Vec::new(), Vec::new());

    let tansu = runtime.block_on(Tansu::start()).expect("tansu starts");
    let bootstrap = tansu.bootstrap();
    let create = |topics: &[&str]| {
        runtime.block_on(async {
            let client = rill_client::Client::new(ClientConfig::new(&bootstrap).unwrap()).unwrap();
            let new: Vec<NewTopic> = topics.iter().map(|t| NewTopic::new(*t, PARTITIONS)).collect();
            client.admin().create_topics(&new).await.expect("topics created");
        });
    };
    let broker = Broker { bootstrap: bootstrap.clone(), create: &create, guarantee: &guarantee };
    throughput
        .extend(measure_throughput("tansu", &broker, &runtime, messages, rounds).into_iter().map(|r| ("tansu", r)));
    latency.extend(measure_latency("tansu", &broker, latency_messages, rate, rounds).into_iter().map(|r| ("tansu", r)));
    drop(tansu);

    let mock = std::cell::RefCell::new(MockProcess::start(3));
    let bootstrap = mock.borrow().bootstrap.clone();
    let create = |topics: &[&str]| {
        for topic in topics {
            mock.borrow_mut().create(topic, PARTITIONS);
        }
    };
    let broker = Broker { bootstrap, create: &create, guarantee: &guarantee };
    let label = "mock (3 brokers)";
    throughput.extend(measure_throughput("mock", &broker, &runtime, messages, rounds).into_iter().map(|r| (label, r)));
    latency.extend(measure_latency("mock", &broker, latency_messages, rate, rounds).into_iter().map(|r| (label, r)));
    drop(mock);

    print_table(
        &format!(
            "Process (throughput, {guarantee}): {messages} web-log lines, {PARTITIONS} → {PARTITIONS} partitions, \
             clock from the first input record to the last output delivered; median of {rounds} runs per client \
             by CPU."
        ),
        &throughput,
    );
    print_table(
        &format!(
            "Process (latency, {guarantee}): {latency_messages} lines written at {rate}/s while processing; input \
             CreateTime → output delivered; median of {rounds} runs per client by p99."
        ),
        &latency,
    );
}

struct Broker<'a> {
    bootstrap: String,
    create: &'a dyn Fn(&[&str]),
    /// `at_least_once` or `exactly_once`.
    guarantee: &'a str,
}

fn measure_throughput(
    name: &str,
    broker: &Broker<'_>,
    runtime: &tokio::runtime::Runtime,
    messages: u64,
    rounds: usize,
) -> Vec<Report> {
    // One input for every run (each run is a fresh group); an output each.
    let input = unique_topic("bench-process-in");
    (broker.create)(&[&input]);
    let config = ProducerConfig::new(ClientConfig::new(&broker.bootstrap).unwrap());
    runtime
        .block_on(feed(config, &input, &Work::WebLog, (0, messages), None, Some(PARTITIONS)))
        .expect("the input is loaded");
    alternate(name, rounds, |client| {
        let output = unique_topic("bench-process-out");
        (broker.create)(&[&output]);
        let mut report =
            run_child(&[client, &broker.bootstrap, &input, &output, &messages.to_string(), "0", broker.guarantee]);
        // Latency behind a pre-written backlog is queueing, not the client.
        report.extra.clear();
        report
    })
}

fn measure_latency(name: &str, broker: &Broker<'_>, messages: u64, rate: u64, rounds: usize) -> Vec<Report> {
    alternate_by(
        name,
        rounds,
        |r| extra(r, "p99_ms"),
        |client| {
            let (input, output) = (unique_topic("bench-latency-in"), unique_topic("bench-latency-out"));
            (broker.create)(&[&input, &output]);
            let (messages, rate) = (messages.to_string(), rate.to_string());
            run_child(&[client, &broker.bootstrap, &input, &output, &messages, &rate, broker.guarantee])
        },
    )
}

fn child(args: &[String]) {
    if args[0] == "mock" {
        return mock_child(&args[1]);
    }
    let (bootstrap, input, output) = (&args[1], &args[2], &args[3]);
    let (messages, rate): (u64, u64) = (args[4].parse().unwrap(), args[5].parse().unwrap());
    let rate = (rate > 0).then_some(rate);
    let exactly_once = args[6] == "exactly_once";
    let report = match args[0].as_str() {
        "rill" => {
            let load = ProcessLoad {
                bootstrap: bootstrap.clone(),
                input: input.clone(),
                output: output.clone(),
                messages,
                rate,
                consumer_properties: latency_settings(rate),
                producer_properties: Vec::new(),
                processor_properties: if exactly_once {
                    vec![("processing.guarantee".to_owned(), "exactly_once".to_owned())]
                } else {
                    Vec::new()
                },
                work: Work::WebLog,
                name: None,
            };
            let runtime = tokio::runtime::Runtime::new().unwrap();
            runtime.block_on(process_with_rill(&load)).expect("rill run")
        }
        "librdkafka" if exactly_once => transactions_with_librdkafka(bootstrap, input, output, messages, rate),
        "librdkafka" => process_with_librdkafka(bootstrap, input, output, messages, rate),
        other => panic!("unknown child {other}"),
    };
    println!("{}", report.to_json());
}

/// Both sides' consumer settings in the latency runs: neither broker
/// answers a fetch early when data arrives (each holds it for the whole
/// `fetch.wait.max.ms`, 500 ms by default), so with the defaults both sides
/// measure the broker's wait, not the client.
fn latency_settings(rate: Option<u64>) -> Vec<(String, String)> {
    match rate {
        Some(_) => vec![("fetch.wait.max.ms".to_owned(), "10".to_owned())],
        None => Vec::new(),
    }
}

/// The article's delivery handler: store the input offset (whatever the
/// outcome), and count.
struct StoreOnDelivery {
    consumer: Arc<BaseConsumer>,
    input: String,
    delivered: Arc<AtomicU64>,
    latency: Arc<Latency>,
}

impl ClientContext for StoreOnDelivery {}

impl ProducerContext for StoreOnDelivery {
    /// The input's partition, offset and timestamp.
    type DeliveryOpaque = Box<(i32, i64, i64)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (partition, offset, timestamp) = *opaque;
        // `rd_kafka_offset_store` stores offset + 1.
        let _ = self.consumer.store_offset(&self.input, partition, offset);
        if result.is_ok() {
            self.latency.record_since(timestamp, SystemTime::now());
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn process_with_librdkafka(bootstrap: &str, input: &str, output: &str, messages: u64, rate: Option<u64>) -> Report {
    let group = format!("bench-article-{}", SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos());
    let mut config = consumer_settings(bootstrap, &group, rate);
    config.set("enable.auto.offset.store", "false");
    let consumer: Arc<BaseConsumer> = Arc::new(config.create().expect("librdkafka consumer"));
    let delivered = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Latency::default());
    let context = StoreOnDelivery {
        consumer: consumer.clone(),
        input: input.to_owned(),
        delivered: delivered.clone(),
        latency: latency.clone(),
    };
    let producer: ThreadedProducer<StoreOnDelivery> = RdConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create_with_context(context)
        .expect("librdkafka producer");
    consumer.subscribe(&[input]).unwrap();
    let mut feeder = None;
    let mut meter = None;
    let mut queue_full = 0u64;
    while delivered.load(Ordering::Relaxed) < messages {
        if feeder.is_none() && consumer.assignment().is_ok_and(|a| a.count() == PARTITIONS as usize) {
            feeder = Some(rate.map(|rate| start_feeder(bootstrap, input, messages, rate)));
        }
        let Some(message) = consumer.poll(Duration::from_millis(100)) else { continue };
        let message = message.expect("librdkafka consume");
        meter.get_or_insert_with(Meter::start);
        let line = message.payload().and_then(|p| std::str::from_utf8(p).ok()).unwrap_or_default();
        let opaque = Box::new((message.partition(), message.offset(), message.timestamp().to_millis().unwrap_or(0)));
        let Some(out) = rill_cli::weblog::process(line) else {
            let _ = consumer.store_offset_from_message(&message);
            continue;
        };
        let record = BaseRecord::with_opaque_to(output, opaque).key(&out.key).payload(&out.value);
        queue_full += send_when_room(&producer, record);
    }
    let report = librdkafka_report(meter, &latency, messages, queue_full);
    producer.flush(Duration::from_secs(10)).expect("flushed");
    if let Some(Some(feeder)) = feeder {
        feeder.join().expect("the feeder finished");
    }
    report
}

/// Counts deliveries and records their latency (the transactional loop
/// commits offsets in the transaction, not per delivery).
struct CountOnDelivery {
    delivered: Arc<AtomicU64>,
    latency: Arc<Latency>,
}

impl ClientContext for CountOnDelivery {}

impl ProducerContext for CountOnDelivery {
    /// The input's timestamp.
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        if result.is_ok() {
            self.latency.record_since(*opaque, SystemTime::now());
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// librdkafka's consume-transform-produce loop with transactions, as its
/// `examples/transactions.c` writes it: commit every 100 ms.
fn transactions_with_librdkafka(
    bootstrap: &str,
    input: &str,
    output: &str,
    messages: u64,
    rate: Option<u64>,
) -> Report {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let mut config = consumer_settings(bootstrap, &format!("bench-eos-{stamp}"), rate);
    config.set("enable.auto.commit", "false").set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config.create().expect("librdkafka consumer");
    let delivered = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Latency::default());
    let context = CountOnDelivery { delivered: delivered.clone(), latency: latency.clone() };
    let producer: ThreadedProducer<CountOnDelivery> = RdConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("bench-eos-{stamp}"))
        .set("linger.ms", "5")
        .create_with_context(context)
        .expect("librdkafka producer");
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).expect("init_transactions");
    producer.begin_transaction().expect("begin_transaction");
    consumer.subscribe(&[input]).unwrap();
    let (mut feeder, mut meter, mut queue_full, mut handled) = (None, None, 0u64, 0u64);
    let mut last_commit = std::time::Instant::now();
    let mut committed = 0u64;
    // As the other loops: the clock stops at the last output delivered.
    while delivered.load(Ordering::Relaxed) < messages {
        if feeder.is_none() && consumer.assignment().is_ok_and(|a| a.count() == PARTITIONS as usize) {
            feeder = Some(rate.map(|rate| start_feeder(bootstrap, input, messages, rate)));
        }
        if let Some(message) = consumer.poll(Duration::from_millis(10)) {
            let message = message.expect("librdkafka consume");
            meter.get_or_insert_with(Meter::start);
            let line = message.payload().and_then(|p| std::str::from_utf8(p).ok()).unwrap_or_default();
            handled += 1;
            if let Some(out) = rill_cli::weblog::process(line) {
                let opaque = Box::new(message.timestamp().to_millis().unwrap_or(0));
                let record = BaseRecord::with_opaque_to(output, opaque).key(&out.key).payload(&out.value);
                queue_full += send_when_room(&producer, record);
            }
        }
        if last_commit.elapsed() >= Duration::from_millis(100) && handled > committed {
            let positions = consumer.position().expect("positions");
            let group = consumer.group_metadata().expect("group metadata");
            producer.send_offsets_to_transaction(&positions, &group, timeout).expect("send_offsets_to_transaction");
            producer.commit_transaction(timeout).expect("commit_transaction");
            producer.begin_transaction().expect("begin_transaction");
            committed = handled;
            last_commit = std::time::Instant::now();
        }
    }
    let report = librdkafka_report(meter, &latency, messages, queue_full);
    let _ = producer.commit_transaction(timeout);
    if let Some(Some(feeder)) = feeder {
        feeder.join().expect("the feeder finished");
    }
    report
}

/// Both librdkafka loops' consumer: a fresh group from the earliest offset.
fn consumer_settings(bootstrap: &str, group: &str, rate: Option<u64>) -> RdConfig {
    let mut config = RdConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        // The default (1 s) idles the loop whenever the local queue passed
        // queued.min.messages; 200,000 records trip it in about half the runs.
        .set("fetch.queue.backoff.ms", "10");
    for (key, value) in latency_settings(rate) {
        config.set(key, value);
    }
    config
}

/// The librdkafka side's report: the meter's numbers and the latency.
fn librdkafka_report(meter: Option<Meter>, latency: &Latency, messages: u64, queue_full: u64) -> Report {
    let mut report = meter.expect("records were read").finish(
        "librdkafka",
        "process",
        messages,
        rill_cli::weblog::line(0).len(),
        PARTITIONS as usize,
    );
    let snapshot = latency.snapshot();
    report.extra.extend([
        ("p50_ms".to_owned(), snapshot.p50.as_secs_f64() * 1e3),
        ("p99_ms".to_owned(), snapshot.p99.as_secs_f64() * 1e3),
        ("max_ms".to_owned(), snapshot.max.as_secs_f64() * 1e3),
    ]);
    if queue_full > 0 {
        eprintln!("librdkafka: the producer queue was full {queue_full} times");
    }
    report
}

/// The same steady writer the Rill side uses, on a thread of its own.
fn start_feeder(bootstrap: &str, input: &str, messages: u64, rate: u64) -> std::thread::JoinHandle<()> {
    let (bootstrap, input) = (bootstrap.to_owned(), input.to_owned());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let config = ProducerConfig::new(ClientConfig::new(&bootstrap).unwrap());
        let load = feed(config, &input, &Work::WebLog, (0, messages), Some(rate), Some(PARTITIONS));
        runtime.block_on(load).expect("the feeder writes");
    })
}
