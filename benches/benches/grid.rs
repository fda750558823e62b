//! The cost grid: Rill against librdkafka as the work grows, on the same
//! broker (Tansu), in one run.
//!
//! `cargo bench -p rill-benches --bench grid` (or `scripts/grid.sh`) runs
//! every cell of
//!
//! - shapes: one topic of 6, 100 or 1,000 partitions, and 100 topics of 10;
//! - values: 10 B, 1 KiB, 100 KiB, 1 MiB (1,000 keys);
//! - compression: none, lz4, zstd;
//!
//! and for each, on a fresh Tansu, both clients produce into fresh topics,
//! then both read what Rill produced from the beginning (assigned, no
//! group). Each run is
//! a child process of its own, so `getrusage` and the peak RSS count one
//! client; rounds alternate which client goes first. A cell moves
//! `RILL_GRID_BYTES` of values (default 64 MiB), at most
//! `RILL_GRID_MAX_MESSAGES` records (default 200,000) and at least 64.
//! Both clients get the same buffers: a 64 MiB, 100,000-record producer
//! queue, `message.max.bytes` 4 MiB, a 64 MiB consumer prefetch, 1 MiB per
//! partition and 50 MiB per fetch; linger 5 ms, idempotent, acks=all; both
//! check the CRC of what they fetch (librdkafka's `check.crcs=true`).
//!
//! Writes `target/grid/grid.md` (the table) and `target/grid/grid.json`
//! (every report), and prints the table. Knobs: `RILL_GRID_SHAPES`
//! (`6,100,1000,100x10`), `RILL_GRID_VALUES` (`10,1024,102400,1048576`),
//! `RILL_GRID_CODECS` (`none,lz4,zstd`), `RILL_GRID_BYTES`,
//! `RILL_GRID_MAX_MESSAGES`, `RILL_BENCH_ROUNDS` (default 1).
//!
//! The mock cluster is not in the grid: it keeps only 5 MiB per partition.

mod common;

use std::fmt::Write as _;

use rill_cli::perf::produce_with_rill;
use rill_cli::perf::{ConsumeLoad, ProduceLoad, Report, consume_with_rill, create_topics, delete_topics};
use rill_client::ClientConfig;
use rill_client::consumer::{ConsumerConfig, OffsetReset};
use rill_client::producer::ProducerConfig;
use rill_testkit::Tansu;
use serde_json::json;

use common::librdkafka::{consume_topics_with_librdkafka, produce_with_librdkafka};
use common::{alternate, env_number, run_child};

const KEYS: u64 = 1000;

/// Settings both clients get, by their shared librdkafka names.
const PRODUCER: [(&str, &str); 4] = [
    ("queue.buffering.max.kbytes", "65536"),
    ("queue.buffering.max.messages", "100000"),
    ("message.max.bytes", "4194304"),
    ("linger.ms", "5"),
];
const CONSUMER: [(&str, &str); 3] = [
    ("queued.max.messages.kbytes", "65536"),
    ("max.partition.fetch.bytes", "1048576"),
    ("fetch.max.bytes", "52428800"),
];
/// librdkafka skips the CRC of fetched batches by default; Rill (like
/// Java) always checks it. The grid has both check.
const LIBRDKAFKA_CONSUMER: [(&str, &str); 1] = [("check.crcs", "true")];

#[derive(Debug, Clone)]
struct Shape {
    label: String,
    topics: usize,
    partitions: i32,
}

impl Shape {
    fn parse(text: &str) -> Shape {
        match text.split_once('x') {
            Some((topics, partitions)) => Shape {
                label: format!("{topics} topics x {partitions}"),
                topics: topics.parse().expect("topics"),
                partitions: partitions.parse().expect("partitions"),
            },
            None => {
                Shape { label: format!("1 topic x {text}"), topics: 1, partitions: text.parse().expect("partitions") }
            }
        }
    }
}

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name).unwrap_or_else(|_| default.to_owned()).split(',').map(|s| s.trim().to_owned()).collect()
}

fn size_label(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

struct Cell {
    shape: Shape,
    value_bytes: usize,
    codec: String,
    messages: u64,
    produce: Vec<Report>,
    consume: Vec<Report>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        return child(&args[at + 1..]);
    }
    let shapes: Vec<Shape> = list("RILL_GRID_SHAPES", "6,100,1000,100x10").iter().map(|s| Shape::parse(s)).collect();
    let values: Vec<usize> =
        list("RILL_GRID_VALUES", "10,1024,102400,1048576").iter().map(|v| v.parse().expect("a size")).collect();
    let codecs = list("RILL_GRID_CODECS", "none,lz4,zstd");
    let bytes = env_number("RILL_GRID_BYTES", 64 << 20);
    let max_messages = env_number("RILL_GRID_MAX_MESSAGES", 200_000);
    let rounds = env_number("RILL_BENCH_ROUNDS", 1) as usize;

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _runtime = runtime.enter();
    let mut cells = Vec::new();
    for shape in &shapes {
        for &value_bytes in &values {
            for codec in &codecs {
                let messages = (bytes / value_bytes as u64).clamp(64, max_messages);
                eprintln!("== {}, {}, {codec}: {messages} records", shape.label, size_label(value_bytes));
                // A fresh broker per cell: Tansu keeps its memory storage
                // after topics are deleted and slows down as it grows.
                let tansu = runtime.block_on(Tansu::start()).expect("tansu starts");
                let bootstrap = tansu.bootstrap();
                let client = rill_client::Client::new(ClientConfig::new(&bootstrap).unwrap()).unwrap();
                let (produce, consume) =
                    run_cell(&runtime, &client, &bootstrap, shape, value_bytes, codec, messages, rounds);
                cells.push(Cell {
                    shape: shape.clone(),
                    value_bytes,
                    codec: codec.clone(),
                    messages,
                    produce,
                    consume,
                });
                drop(client);
                drop(tansu);
            }
        }
    }

    let table = table(&cells, bytes, rounds);
    println!("{table}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/grid");
    std::fs::create_dir_all(&dir).expect("target/grid");
    std::fs::write(dir.join("grid.md"), &table).expect("grid.md");
    let cells_json: Vec<serde_json::Value> = cells
        .iter()
        .map(|c| {
            json!({
                "shape": c.shape.label, "topics": c.shape.topics, "partitions": c.shape.partitions,
                "value_bytes": c.value_bytes, "compression": c.codec, "messages": c.messages,
                "produce": c.produce.iter().map(report_json).collect::<Vec<_>>(),
                "consume": c.consume.iter().map(report_json).collect::<Vec<_>>(),
            })
        })
        .collect();
    std::fs::write(dir.join("grid.json"), serde_json::to_string_pretty(&cells_json).unwrap()).expect("grid.json");
    eprintln!("wrote {}", dir.display());
}

fn report_json(report: &Report) -> serde_json::Value {
    serde_json::from_str(&report.to_json()).expect("a report is JSON")
}

/// One cell: both clients produce into fresh topics; both read Rill's.
#[allow(clippy::too_many_arguments, reason = "one cell's coordinates")]
fn run_cell(
    runtime: &tokio::runtime::Runtime,
    client: &rill_client::Client,
    bootstrap: &str,
    shape: &Shape,
    value_bytes: usize,
    codec: &str,
    messages: u64,
    rounds: usize,
) -> (Vec<Report>, Vec<Report>) {
    let mut rill_topics = Vec::new();
    let produce = alternate("produce", rounds, |who| {
        let topics = runtime
            .block_on(create_topics(client, &format!("grid-{who}"), shape.topics, shape.partitions))
            .expect("topics created");
        let report = run_child(&[
            "produce",
            who,
            bootstrap,
            &value_bytes.to_string(),
            &messages.to_string(),
            codec,
            &topics.join(","),
            &(shape.topics as i32 * shape.partitions).to_string(),
        ]);
        if who == "rill" {
            rill_topics.push(topics);
        } else {
            runtime.block_on(delete_topics(client, &topics)).expect("topics deleted");
        }
        report
    });
    // Every Rill run wrote `messages` records; the last one is read.
    let read = rill_topics.pop().expect("a Rill run");
    let spec: Vec<String> = read.iter().map(|t| format!("{t}:{}", shape.partitions)).collect();
    let consume = alternate("consume", rounds, |who| {
        run_child(&["consume", who, bootstrap, &messages.to_string(), &spec.join(",")])
    });
    for topics in rill_topics.into_iter().chain([read]) {
        runtime.block_on(delete_topics(client, &topics)).expect("topics deleted");
    }
    (produce, consume)
}

fn child(args: &[String]) {
    let properties = |set: &[(&str, &str)]| -> Vec<(String, String)> {
        set.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    };
    match (args[0].as_str(), args[1].as_str()) {
        ("produce", who) => {
            let bootstrap = &args[2];
            let value_bytes: usize = args[3].parse().unwrap();
            let messages: u64 = args[4].parse().unwrap();
            let codec = &args[5];
            let topics: Vec<String> = args[6].split(',').map(str::to_owned).collect();
            let load = ProduceLoad { topics, messages, value_bytes, keys: KEYS };
            let mut settings = properties(&PRODUCER);
            settings.push(("compression.type".into(), codec.clone()));
            let report = if who == "rill" {
                let mut all = settings.clone();
                all.push(("bootstrap.servers".into(), bootstrap.clone()));
                let config = ProducerConfig::from_properties(all).expect("producer settings");
                let runtime = tokio::runtime::Runtime::new().unwrap();
                runtime.block_on(produce_with_rill(config, &load)).expect("rill run")
            } else {
                let partitions: usize = args[7].parse().unwrap();
                produce_with_librdkafka(bootstrap, &settings, &load, partitions)
            };
            println!("{}", report.to_json());
        }
        ("consume", who) => {
            let bootstrap = &args[2];
            let messages: u64 = args[3].parse().unwrap();
            let topics: Vec<(String, i32)> = args[4]
                .split(',')
                .map(|spec| {
                    let (topic, partitions) = spec.rsplit_once(':').expect("topic:partitions");
                    (topic.to_owned(), partitions.parse().expect("partitions"))
                })
                .collect();
            let settings = properties(&CONSUMER);
            let report = if who == "rill" {
                let mut all = settings.clone();
                all.push(("bootstrap.servers".into(), bootstrap.clone()));
                let config = ConsumerConfig::from_properties(all)
                    .expect("consumer settings")
                    .offset_reset(OffsetReset::Earliest);
                let load =
                    ConsumeLoad { topics: topics.iter().map(|(t, _)| t.clone()).collect(), messages, group: None };
                let runtime = tokio::runtime::Runtime::new().unwrap();
                runtime.block_on(consume_with_rill(config, &load)).expect("rill run")
            } else {
                let mut settings = settings;
                settings.extend(properties(&LIBRDKAFKA_CONSUMER));
                consume_topics_with_librdkafka(bootstrap, &settings, &topics, messages)
            };
            println!("{}", report.to_json());
        }
        other => panic!("unknown child {other:?}"),
    }
}

/// The markdown table: per cell and operation, Rill's numbers and its
/// ratios to librdkafka's from the same run.
fn table(cells: &[Cell], bytes: u64, rounds: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Grid on Tansu: {} MiB of values per cell (at most the record cap), 1,000 keys, median of {rounds} run(s) \
         per client. Ratios are Rill / librdkafka from the same run: throughput (want ≥ 1), CPU per record \
         (want ≤ 0.5), peak RSS (want ≤ 1).\n",
        bytes >> 20
    );
    let _ = writeln!(
        out,
        "| shape | value | codec | op | records | rill msgs/s | rill MB/s | rill CPU µs/rec | rill CPU ms/MB | rill RSS MiB | \
         librdkafka msgs/s | librdkafka CPU µs/rec | librdkafka RSS MiB | throughput × | CPU/rec × | RSS × | first record s rill / librdkafka |"
    );
    let _ = writeln!(out, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for cell in cells {
        for (op, reports) in [("produce", &cell.produce), ("consume", &cell.consume)] {
            let (rill, librdkafka) = (&reports[0], &reports[1]);
            let first = |r: &Report| common::extra(r, "first_record_s");
            let first_record = if op == "consume" {
                format!("{:.2} / {:.2}", first(rill), first(librdkafka))
            } else {
                "–".to_owned()
            };
            let cpu_ms_per_mb = rill.cpu_us_per_msg / 1000.0 / (cell.value_bytes as f64 / 1e6);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {op} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {first_record} |",
                cell.shape.label,
                size_label(cell.value_bytes),
                cell.codec,
                cell.messages,
                rill.msgs_per_s,
                rill.mb_per_s,
                rill.cpu_us_per_msg,
                cpu_ms_per_mb,
                rill.max_rss_kb as f64 / 1024.0,
                librdkafka.msgs_per_s,
                librdkafka.cpu_us_per_msg,
                librdkafka.max_rss_kb as f64 / 1024.0,
                rill.msgs_per_s / librdkafka.msgs_per_s,
                rill.cpu_us_per_msg / librdkafka.cpu_us_per_msg,
                rill.max_rss_kb as f64 / librdkafka.max_rss_kb as f64,
            );
        }
    }
    out
}
