//! What TLS costs: Rill and librdkafka producing and consuming over
//! plaintext (Tansu directly) and over TLS (stunnel, OpenSSL, in front of
//! Tansu, with test certificates), in one run.
//!
//! `cargo bench -p rill-benches --bench tls` prints two markdown tables
//! (produce, consume). Load: `RILL_BENCH_MESSAGES` records (default
//! 500,000) of 100-byte values over 1000 keys, idempotent, acks=all, linger
//! 5 ms, 6 partitions; consume reads them all back, assigned, from the
//! beginning. Each client runs in a process of its own (this program re-runs
//! itself with `--child`), so `getrusage` counts the client's TLS work and
//! not stunnel's or the broker's. `RILL_BENCH_ROUNDS` runs each (default 3),
//! alternating which client goes first; the table shows the median by CPU
//! per record.

mod common;

use rill_cli::perf::{ConsumeLoad, ProduceLoad, Report, consume_with_rill, produce_with_rill};
use rill_client::consumer::{ConsumerConfig, OffsetReset};
use rill_client::producer::ProducerConfig;
use rill_client::{ClientConfig, NewTopic};
use rill_testkit::tls::{Listener, TestCertificates, TlsTansu};
use rill_testkit::{Tansu, unique_topic};

use common::librdkafka::{consume_with_librdkafka, produce_with_librdkafka};
use common::{alternate, env_number, print_table, run_child};

const PARTITIONS: i32 = 6;
const VALUE_BYTES: usize = 100;
const KEYS: u64 = 1000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        return child(&args[at + 1..]);
    }
    let messages = env_number("RILL_BENCH_MESSAGES", 500_000);
    let rounds = env_number("RILL_BENCH_ROUNDS", 3) as usize;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");

    let certificates = TestCertificates::generate().expect("certificates");
    let plain = runtime.block_on(Tansu::start()).expect("tansu starts");
    let tls = runtime.block_on(TlsTansu::start(&certificates, Listener::Tls)).expect("stunnel in front of tansu");
    let ca = certificates.ca.to_str().unwrap().to_owned();
    let modes: [(&str, String, Vec<String>); 2] = [
        ("plaintext", plain.bootstrap(), Vec::new()),
        ("tls", tls.bootstrap_by_name(), vec!["security.protocol=ssl".into(), format!("ssl.ca.location={ca}")]),
    ];

    let mut produced = Vec::new();
    let mut consumed = Vec::new();
    for (mode, bootstrap, properties) in &modes {
        let config = rill_config(bootstrap, properties);
        let create = |topic: &str| {
            runtime.block_on(async {
                let client = rill_client::Client::new(config.clone()).unwrap();
                client.admin().create_topics(&[NewTopic::new(topic, PARTITIONS)]).await.expect("topic created");
            })
        };
        let reports = alternate(mode, rounds, |client| {
            let topic = unique_topic(&format!("bench-tls-{client}"));
            create(&topic);
            let args = child_args("produce", client, bootstrap, &topic, messages, properties);
            run_child(&args.iter().map(String::as_str).collect::<Vec<_>>())
        });
        produced.extend(reports.into_iter().map(|r| (*mode, r)));

        // One filled topic per mode, read by every consume run.
        let topic = unique_topic("bench-tls-consume");
        create(&topic);
        let load = ProduceLoad::one(&topic, messages, VALUE_BYTES, KEYS);
        runtime.block_on(produce_with_rill(ProducerConfig::new(config.clone()), &load)).expect("topic filled");
        let reports = alternate(mode, rounds, |client| {
            let args = child_args("consume", client, bootstrap, &topic, messages, properties);
            run_child(&args.iter().map(String::as_str).collect::<Vec<_>>())
        });
        consumed.extend(reports.into_iter().map(|r| (*mode, r)));
    }
    drop(tls);
    drop(plain);

    print_table(
        &format!(
            "Produce over plaintext and TLS (stunnel in front of Tansu): {messages} records x {VALUE_BYTES} B, \
             {KEYS} keys, idempotent, acks=all, linger 5 ms, {PARTITIONS} partitions; median of {rounds} runs."
        ),
        &produced,
    );
    print_table(
        &format!(
            "Consume over plaintext and TLS: {messages} records x {VALUE_BYTES} B, {PARTITIONS} partitions, \
             assigned, from the beginning; median of {rounds} runs."
        ),
        &consumed,
    );
    println!();
    print_tls_cost("produce", &produced);
    print_tls_cost("consume", &consumed);
}

/// CPU per record over TLS against plaintext, per client.
fn print_tls_cost(what: &str, rows: &[(&str, Report)]) {
    let cpu = |mode: &str, client: &str| {
        rows.iter().find(|(m, r)| *m == mode && r.client == client).map(|(_, r)| r.cpu_us_per_msg).unwrap_or(f64::NAN)
    };
    println!("| {what} | client | CPU µs/record plaintext | TLS | TLS costs (µs/record) | TLS/plaintext |");
    println!("|---|---|---:|---:|---:|---:|");
    for client in ["rill", "librdkafka"] {
        let (plain, tls) = (cpu("plaintext", client), cpu("tls", client));
        println!("| {what} | {client} | {plain:.3} | {tls:.3} | {:.3} | {:.2}x |", tls - plain, tls / plain);
    }
    println!();
}

fn child_args<'a>(
    op: &'a str,
    client: &'a str,
    bootstrap: &'a str,
    topic: &'a str,
    messages: u64,
    properties: &'a [String],
) -> Vec<String> {
    let mut args: Vec<String> =
        [op, client, bootstrap, topic, &messages.to_string()].iter().map(|s| s.to_string()).collect();
    args.extend(properties.iter().cloned());
    args
}

fn key_values(properties: &[String]) -> Vec<(String, String)> {
    properties
        .iter()
        .map(|p| {
            let (k, v) = p.split_once('=').expect("key=value");
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn rill_config(bootstrap: &str, properties: &[String]) -> ClientConfig {
    let mut all = vec![("bootstrap.servers".to_owned(), bootstrap.to_owned())];
    all.extend(key_values(properties));
    ClientConfig::from_properties(all).expect("valid properties")
}

fn child(args: &[String]) {
    let (op, client, bootstrap, topic) = (&args[0], &args[1], &args[2], &args[3]);
    let messages: u64 = args[4].parse().unwrap();
    let properties = &args[5..];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = match (op.as_str(), client.as_str()) {
        ("produce", "rill") => {
            let load = ProduceLoad::one(topic, messages, VALUE_BYTES, KEYS);
            let config = ProducerConfig::new(rill_config(bootstrap, properties));
            runtime.block_on(produce_with_rill(config, &load)).expect("rill run")
        }
        ("produce", "librdkafka") => {
            let load = ProduceLoad::one(topic, messages, VALUE_BYTES, KEYS);
            produce_with_librdkafka(bootstrap, &key_values(properties), &load, PARTITIONS as usize)
        }
        ("consume", "rill") => {
            let load = ConsumeLoad { topics: vec![topic.clone()], messages, group: None };
            let config = ConsumerConfig::new(rill_config(bootstrap, properties)).offset_reset(OffsetReset::Earliest);
            runtime.block_on(consume_with_rill(config, &load)).expect("rill run")
        }
        ("consume", "librdkafka") => {
            consume_with_librdkafka(bootstrap, &key_values(properties), topic, messages, PARTITIONS)
        }
        other => panic!("unknown child {other:?}"),
    };
    println!("{}", report.to_json());
}
