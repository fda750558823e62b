//! What the benchmarks share: the mock cluster in a child process, child
//! runs that report one JSON line, medians and the ratio table.

#![allow(dead_code, unreachable_pub, reason = "each benchmark uses a different part")]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};

use rill_cli::perf::Report;

pub mod librdkafka;

pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The median run by CPU per record.
pub fn median(reports: Vec<Report>) -> Report {
    median_by(reports, |r| r.cpu_us_per_msg)
}

/// The median run by `key`.
pub fn median_by(mut reports: Vec<Report>, key: impl Fn(&Report) -> f64) -> Report {
    reports.sort_by(|a, b| key(a).total_cmp(&key(b)));
    reports.swap_remove(reports.len() / 2)
}

/// A scenario-specific number of a report (0 when absent).
pub fn extra(report: &Report, name: &str) -> f64 {
    report.extra.iter().find(|(k, _)| k == name).map_or(0.0, |(_, v)| *v)
}

/// Runs this program again as `--child ARGS...` and reads the report it
/// prints last.
pub fn run_child(args: &[&str]) -> Report {
    let output = Command::new(std::env::current_exe().unwrap())
        .arg("--child")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("child runs");
    assert!(output.status.success(), "child {args:?} failed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().expect("a report line");
    Report::from_json(line).unwrap_or_else(|| panic!("unreadable report: {line}"))
}

/// librdkafka's mock cluster in a child process (`--child mock N`), driven
/// over its stdin.
pub struct MockProcess {
    child: Child,
    pub bootstrap: String,
    replies: BufReader<std::process::ChildStdout>,
}

impl MockProcess {
    pub fn start(brokers: i32) -> Self {
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

    pub fn create(&mut self, topic: &str, partitions: i32) {
        self.command(&format!("create {topic} {partitions}"));
    }

    /// Makes `broker` the leader of `topic`'s `partition`.
    pub fn leader(&mut self, topic: &str, partition: i32, broker: i32) {
        self.command(&format!("leader {topic} {partition} {broker}"));
    }

    /// Delays every response of `broker` by `millis`.
    pub fn round_trip_time(&mut self, broker: i32, millis: u64) {
        self.command(&format!("rtt {broker} {millis}"));
    }

    /// Makes `broker` the coordinator of `group`.
    pub fn coordinator(&mut self, group: &str, broker: i32) {
        self.command(&format!("coordinator {group} {broker}"));
    }

    fn command(&mut self, command: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        let mut line = String::new();
        self.replies.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ok", "mock: {command}");
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The child side of [`MockProcess`]: serves `create TOPIC PARTITIONS`,
/// `leader TOPIC PARTITION BROKER`, `rtt BROKER MILLIS` and `coordinator
/// GROUP BROKER` until its stdin closes.
pub fn mock_child(brokers: &str) {
    let mock = rill_testkit::mock::MockKafka::start(brokers.parse().unwrap()).expect("mock cluster");
    println!("BOOTSTRAP {}", mock.bootstrap());
    for line in std::io::stdin().lines() {
        let line = line.unwrap();
        let parts: Vec<&str> = line.split_whitespace().collect();
        let number = |text: &str| text.parse::<i32>().expect("a number");
        let done = match parts[..] {
            ["create", topic, partitions] => mock.create_topic(topic, number(partitions), 3),
            ["leader", topic, partition, broker] => {
                mock.partition_leader(topic, number(partition), Some(number(broker)))
            }
            ["rtt", broker, millis] => {
                mock.round_trip_time(number(broker), std::time::Duration::from_millis(millis.parse().unwrap()))
            }
            ["coordinator", group, broker] => mock.group_coordinator(group, number(broker)),
            _ => panic!("mock: unknown command {line}"),
        };
        done.expect("mock command");
        println!("ok");
    }
}

/// Per broker, Rill's median against librdkafka's, as a markdown table.
pub fn print_table(caption: &str, rows: &[(&str, Report)]) {
    println!();
    println!("{caption}");
    println!();
    // Scenario-specific numbers (first_record_s, …) get columns too.
    let extras: Vec<String> =
        rows.first().map(|(_, r)| r.extra.iter().map(|(k, _)| k.clone()).collect()).unwrap_or_default();
    let extra_head: String = extras.iter().map(|k| format!(" {k} |")).collect();
    let extra_rule: String = extras.iter().map(|_| "---:|").collect();
    println!("| broker | client | msgs/s | CPU µs/record | wall s | peak RSS MiB |{extra_head}");
    println!("|---|---|---:|---:|---:|---:|{extra_rule}");
    for (broker, report) in rows {
        let extra: String = report.extra.iter().map(|(_, v)| format!(" {v:.3} |")).collect();
        println!(
            "| {broker} | {} | {:.0} | {:.3} | {:.2} | {:.0} |{extra}",
            report.client,
            report.msgs_per_s,
            report.cpu_us_per_msg,
            report.wall_s,
            report.max_rss_kb as f64 / 1024.0
        );
    }
    println!();
    // Latency percentiles, where reported, get ratio columns too.
    let latencies: Vec<&str> = ["p50_ms", "p99_ms"].into_iter().filter(|k| extras.iter().any(|e| e == k)).collect();
    let latency_head: String = latencies.iter().map(|k| format!(" {k} rill/librdkafka |")).collect();
    let latency_rule: String = latencies.iter().map(|_| "---:|").collect();
    println!("| broker | throughput rill/librdkafka | CPU per record rill/librdkafka |{latency_head}");
    println!("|---|---:|---:|{latency_rule}");
    for pair in rows.chunks(2) {
        let (broker, rill) = &pair[0];
        let (_, librdkafka) = &pair[1];
        let latency: String =
            latencies.iter().map(|k| format!(" {:.2}x |", extra(rill, k) / extra(librdkafka, k))).collect();
        println!(
            "| {broker} | {:.2}x | {:.2}x |{latency}",
            rill.msgs_per_s / librdkafka.msgs_per_s,
            rill.cpu_us_per_msg / librdkafka.cpu_us_per_msg
        );
    }
}

/// Runs `run(client)` for Rill and librdkafka `rounds` times each,
/// alternating which goes first; returns the median report per client,
/// Rill first.
pub fn alternate(broker: &str, rounds: usize, run: impl FnMut(&str) -> Report) -> Vec<Report> {
    alternate_by(broker, rounds, |r| r.cpu_us_per_msg, run)
}

/// [`alternate`], with the median taken by `key`.
pub fn alternate_by(
    broker: &str,
    rounds: usize,
    key: impl Fn(&Report) -> f64,
    mut run: impl FnMut(&str) -> Report,
) -> Vec<Report> {
    let mut rill = Vec::new();
    let mut librdkafka = Vec::new();
    for round in 0..rounds {
        let order: [&str; 2] = if round % 2 == 0 { ["rill", "librdkafka"] } else { ["librdkafka", "rill"] };
        for client in order {
            let report = run(client);
            eprintln!(
                "{broker} round {round} {client}: {:.0} msgs/s, {:.3} µs CPU/record",
                report.msgs_per_s, report.cpu_us_per_msg
            );
            if client == "rill" { rill.push(report) } else { librdkafka.push(report) }
        }
    }
    vec![median_by(rill, &key), median_by(librdkafka, &key)]
}
