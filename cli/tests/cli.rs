//! The `rill` binary end to end: topic admin and metadata against Tansu,
//! the demo on a fresh broker, and one-line errors with a non-zero exit.

mod common;

use std::process::Output;

use common::{rill, rill_with_input};

use rill_testkit::Tansu;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn tansu() -> Tansu {
    rill_testkit::required(Tansu::start().await)
}

#[tokio::test]
async fn topic_create_list_delete_and_metadata() {
    let tansu = tansu().await;
    let brokers = tansu.bootstrap();
    let topic = rill_testkit::unique_topic("cli");

    let created = rill(&[
        "topic",
        "create",
        "--brokers",
        &brokers,
        "--partitions",
        "3",
        "--config",
        "retention.ms=60000",
        &topic,
    ]);
    assert!(created.status.success(), "{}", stderr(&created));
    assert_eq!(stdout(&created).trim(), format!("created topic {topic} with 3 partitions"));

    // -X sets client properties by their librdkafka/Java names.
    let listed = rill(&["topic", "list", "-b", &brokers, "-X", "client.id=cli-test", "-X", "request.timeout.ms=5000"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(stdout(&listed).lines().any(|l| l == format!("{topic}\t3 partitions")), "{}", stdout(&listed));

    let metadata = rill(&["metadata", "--brokers", &brokers]);
    assert!(metadata.status.success(), "{}", stderr(&metadata));
    let text = stdout(&metadata);
    assert!(text.contains("1 broker:"), "{text}");
    assert!(text.contains(&format!("topic {topic} with 3 partitions")), "{text}");
    assert!(text.contains("partition 2 leader 111"), "{text}");
    assert!(text.contains("Metadata") && text.contains("-> v12"), "{text}");

    let exists = rill(&["topic", "create", "--brokers", &brokers, "--partitions", "3", &topic]);
    assert!(!exists.status.success());
    assert!(stderr(&exists).contains("TopicAlreadyExists"), "{}", stderr(&exists));

    let deleted = rill(&["topic", "delete", "--brokers", &brokers, &topic]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let listed = rill(&["topic", "list", "--brokers", &brokers]);
    assert!(!stdout(&listed).contains(&topic), "{}", stdout(&listed));
}

#[test]
fn errors_are_one_line_and_exit_non_zero() {
    let unknown = rill(&["topic", "list", "--brokers", "127.0.0.1:1", "-X", "linger.msec=5"]);
    assert!(!unknown.status.success());
    assert_eq!(stderr(&unknown).trim(), "rill: unknown configuration property `linger.msec`");

    let bad_value = rill(&["metadata", "--brokers", "127.0.0.1:1", "-X", "request.timeout.ms=soon"]);
    assert!(!bad_value.status.success());
    assert_eq!(stderr(&bad_value).lines().count(), 1, "{}", stderr(&bad_value));
    assert!(stderr(&bad_value).contains("`request.timeout.ms`"), "{}", stderr(&bad_value));

    let no_brokers = rill(&["topic", "list"]);
    assert!(!no_brokers.status.success());
    assert!(stderr(&no_brokers).contains("--brokers"), "{}", stderr(&no_brokers));

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = rill(&["metadata", "--brokers", &format!("127.0.0.1:{port}")]);
    assert!(!unreachable.status.success());
    let text = stderr(&unreachable);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("no broker reachable") && text.contains(&port.to_string()), "{text}");
}

#[tokio::test]
async fn bad_input_and_missing_things_fail_at_once_with_what_is_wrong() {
    let tansu = tansu().await;
    let brokers = tansu.bootstrap();
    let topic = rill_testkit::unique_topic("cli-bad");
    let fast = std::time::Duration::from_secs(5);

    // Partition and replica counts are checked before any broker is asked.
    for bad in ["0", "-3"] {
        let started = std::time::Instant::now();
        let created = rill(&["topic", "create", "--brokers", &brokers, &format!("--partitions={bad}"), &topic]);
        assert!(!created.status.success(), "--partitions={bad} accepted");
        assert!(stderr(&created).contains("--partitions"), "{}", stderr(&created));
        assert!(started.elapsed() < fast, "{:?}", started.elapsed());
    }
    let created = rill(&["topic", "create", "--brokers", &brokers, "--replication-factor=0", &topic]);
    assert!(!created.status.success());
    assert!(stderr(&created).contains("--replication-factor"), "{}", stderr(&created));
    let listed = rill(&["topic", "list", "--brokers", &brokers]);
    assert!(!stdout(&listed).contains(&topic), "nothing was created: {}", stdout(&listed));

    // Deleting a topic that does not exist is final, not retried.
    let started = std::time::Instant::now();
    let deleted = rill(&["topic", "delete", "--brokers", &brokers, &topic]);
    assert!(!deleted.status.success());
    assert!(stderr(&deleted).contains("does not exist"), "{}", stderr(&deleted));
    assert!(started.elapsed() < fast, "{:?}", started.elapsed());

    // Producing to a broker nobody listens on fails as every other command does.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = std::time::Instant::now();
    let produced = rill_with_input(&["produce", "--brokers", &format!("127.0.0.1:{port}"), "--topic", &topic], b"a\n");
    assert!(!produced.status.success());
    let text = stderr(&produced);
    assert!(text.contains("no broker reachable") && text.contains(&port.to_string()), "{text}");
    assert!(started.elapsed() < fast, "{:?}", started.elapsed());
}

#[test]
fn demo_runs_on_a_fresh_local_broker() {
    let demo = rill(&["demo", "--partitions", "4", "--lines", "20000"]);
    assert!(demo.status.success(), "{}", stderr(&demo));
    let text = stdout(&demo);
    assert!(text.contains("with 4 partitions"), "{text}");
    assert!(text.contains("partition 3 leader 111"), "{text}");
    assert!(!text.contains("api versions negotiated"), "only with --verbose: {text}");
    // Both instances got partitions, and every line was processed.
    assert!(text.contains("instance demo-1 reads partitions"), "{text}");
    assert!(text.contains("instance demo-2 reads partitions"), "{text}");
    assert!(text.contains("processed 20000 lines"), "{text}");
    assert!(text.contains("19600 outputs, 400 filtered"), "{text}");
    // Five outputs: a country key and the line without its address.
    let outputs: Vec<&str> = text.lines().filter(|l| l.contains("rill-demo-by-country-") && l.contains('@')).collect();
    assert_eq!(outputs.len(), 5, "{text}");
    assert!(outputs.iter().all(|l| l.contains("GET /item?id=")), "{text}");
    // The lines are spread evenly: each of the four input partitions has
    // its watermark at 5000, and each instance consumed its share.
    let watermarks: Vec<&str> =
        text.lines().filter_map(|l| l.split_once("  watermark ")?.1.split_whitespace().next()).collect();
    assert_eq!(watermarks, ["5000"; 4], "{text}");
    for instance in ["demo-1", "demo-2"] {
        let consumed = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{instance}: consumed "))?.split(',').next())
            .unwrap_or_else(|| panic!("{instance}'s numbers: {text}"));
        assert!(consumed.parse::<u64>().unwrap() >= 5000, "{instance} consumed {consumed}: {text}");
    }
}

#[tokio::test]
async fn produce_reads_stdin_and_perf_reports_one_json_line() {
    let tansu = tansu().await;
    let brokers = tansu.bootstrap();
    let topic = rill_testkit::unique_topic("cli-produce");
    assert!(rill(&["topic", "create", "-b", &brokers, "-p", "2", &topic]).status.success());

    let input = b"alpha:one\nbeta:two:with:colons\nno-delimiter\n\nlast-without-newline:x";
    let produced = rill_with_input(
        &[
            "produce",
            "-b",
            &brokers,
            "--topic",
            &topic,
            "--key-delimiter",
            ":",
            "--header",
            "source=cli",
            "-X",
            "linger.ms=1",
        ],
        input,
    );
    assert!(produced.status.success(), "{}", stderr(&produced));
    let summary = stderr(&produced);
    assert_eq!(summary.lines().count(), 1, "{summary}");
    assert!(summary.starts_with(&format!("rill: produced 5 records to {topic}")), "{summary}");
    let client = rill_client::Client::new(rill_client::ClientConfig::new(&brokers).unwrap()).unwrap();
    let mut records = Vec::new();
    for partition in 0..2 {
        records.extend(
            rill_testkit::read::fetch_all(&client, &topic, partition, 0, std::time::Duration::from_secs(5)).await,
        );
    }
    let mut pairs: Vec<(Option<String>, String)> = records
        .iter()
        .map(|r| {
            assert_eq!(r.headers.len(), 1);
            assert_eq!((r.headers[0].key.as_str(), r.headers[0].value.as_deref()), ("source", Some(&b"cli"[..])));
            let text = |b: &bytes::Bytes| String::from_utf8(b.to_vec()).unwrap();
            (r.key.as_ref().map(text), text(r.value.as_ref().unwrap()))
        })
        .collect();
    pairs.sort();
    let expected = [
        (None, ""),
        (None, "no-delimiter"),
        (Some("alpha"), "one"),
        (Some("beta"), "two:with:colons"),
        (Some("last-without-newline"), "x"),
    ];
    let expected: Vec<(Option<String>, String)> =
        expected.iter().map(|(k, v)| (k.map(str::to_owned), (*v).to_owned())).collect();
    assert_eq!(pairs, expected, "keys split at the first delimiter");

    let perf =
        rill(&["perf", "produce", "-b", &brokers, "--topic", &topic, "--messages", "20000", "--compression", "lz4"]);
    assert!(perf.status.success(), "{}", stderr(&perf));
    let out = stdout(&perf);
    assert_eq!(out.lines().count(), 1, "one JSON line: {out}");
    let report = rill_cli::perf::Report::from_json(&out).expect("parses");
    assert_eq!((report.client.as_str(), report.scenario.as_str()), ("rill", "produce"));
    assert_eq!((report.messages, report.value_bytes, report.partitions), (20_000, 100, 2));
    assert!(report.msgs_per_s > 0.0 && report.cpu_us_per_msg > 0.0 && report.max_rss_kb > 0);
    for field in ["wall_s", "mb_per_s", "cpu_user_s", "cpu_sys_s", "cpu_us_per_msg", "max_rss_kb"] {
        assert!(out.contains(&format!("\"{field}\":")), "{field} missing: {out}");
    }

    // A record that cannot be delivered: non-zero exit, the reason on stderr.
    let failed = rill_with_input(
        &["produce", "-b", &brokers, "--topic", &topic, "-X", "message.max.bytes=2000", "-X", "batch.size=2000"],
        &[b'x'; 5000],
    );
    assert!(!failed.status.success());
    assert!(stderr(&failed).contains("exceeds message.max.bytes"), "{}", stderr(&failed));
}

#[tokio::test]
async fn consume_prints_formats_json_and_resumes_a_group() {
    let tansu = tansu().await;
    let brokers = tansu.bootstrap();
    let topic = rill_testkit::unique_topic("cli-consume");
    assert!(rill(&["topic", "create", "-b", &brokers, "-p", "1", &topic]).status.success());
    // One record per batch: Tansu answers ListOffsets(latest) with the
    // newest batch's base offset + 1 (see FIXTURES.md), right only then.
    for i in 0..5 {
        let line = format!("k{i}:v{i}\n");
        let produced = rill_with_input(
            &["produce", "-b", &brokers, "-t", &topic, "-K", ":", "-H", "h=1", "-H", "h=2"],
            line.as_bytes(),
        );
        assert!(produced.status.success(), "{}", stderr(&produced));
    }

    // kcat-style format, to the end of the partition.
    let all = rill(&["consume", "-b", &brokers, "-t", &topic, "-e", "-f", "%t %p %o %k=%v [%h]\\n"]);
    assert!(all.status.success(), "{}", stderr(&all));
    let expected: String = (0..5).map(|i| format!("{topic} 0 {i} k{i}=v{i} [h=1,h=2]\n")).collect();
    assert_eq!(stdout(&all), expected);
    assert!(stderr(&all).contains("consumed 5 records"), "{}", stderr(&all));

    // JSON, from an offset, with a count.
    let json = rill(&["consume", "-b", &brokers, "-t", &topic, "--from", "3", "--count", "1", "--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let line = stdout(&json);
    assert!(
        line.starts_with(&format!("{{\"topic\":\"{topic}\",\"partition\":0,\"offset\":3,\"timestamp\":")),
        "{line}"
    );
    assert!(line.ends_with(",\"key\":\"k3\",\"value\":\"v3\",\"headers\":[[\"h\",\"1\"],[\"h\",\"2\"]]}\n"), "{line}");

    // -N: the last two.
    let tail = rill(&["consume", "-b", &brokers, "-t", &topic, "--from", "-2", "-e"]);
    assert_eq!(stdout(&tail), "v3\nv4\n", "{}", stderr(&tail));

    // A group: the first run reads three and commits; the second resumes.
    let group = rill_testkit::unique_topic("cli-group");
    let session = ["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"];
    let mut first = vec!["consume", "-b", &brokers, "-t", &topic, "-G", &group, "--count", "3"];
    first.extend(session);
    let first = rill(&first);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(stdout(&first), "v0\nv1\nv2\n");
    // Tansu holds the join for half the session timeout (3 s): rill says
    // what it waits for, then what it got.
    let said = stderr(&first);
    assert!(said.contains(&format!("waiting for group {group} to assign partitions")), "{said}");
    assert!(said.contains("rill: assigned "), "{said}");
    let mut second = vec!["consume", "-b", &brokers, "-t", &topic, "-G", &group, "--from", "stored", "-e"];
    second.extend(session);
    let second = rill(&second);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(stdout(&second), "v3\nv4\n");

    let stored_without_group = rill(&["consume", "-b", &brokers, "-t", &topic, "--from", "stored"]);
    assert!(!stored_without_group.status.success());
    assert!(stderr(&stored_without_group).contains("--group"), "{}", stderr(&stored_without_group));

    let perf = rill(&["perf", "consume", "-b", &brokers, "-t", &topic, "--messages", "5"]);
    assert!(perf.status.success(), "{}", stderr(&perf));
    let report = rill_cli::perf::Report::from_json(&stdout(&perf)).expect("one JSON line");
    assert_eq!((report.scenario.as_str(), report.messages, report.partitions), ("consume", 5, 1));
    assert!(report.extra.iter().any(|(k, v)| k == "first_record_s" && *v > 0.0), "{report:?}");
}

#[tokio::test]
async fn perf_process_reports_throughput_and_latency_in_one_json_line() {
    let tansu = tansu().await;
    let brokers = tansu.bootstrap();
    for extra in [&["--messages", "5000"][..], &["--messages", "2000", "--rate", "2000"][..]] {
        let mut args = vec!["perf", "process", "-b", &brokers];
        args.extend_from_slice(extra);
        let run = rill(&args);
        assert!(run.status.success(), "{}", stderr(&run));
        let text = stdout(&run);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let report = rill_cli::perf::Report::from_json(lines[0]).expect("a report");
        assert_eq!((report.client.as_str(), report.scenario.as_str()), ("rill", "process"));
        assert_eq!(report.messages, extra[1].parse::<u64>().unwrap());
        let field = |name: &str| report.extra.iter().find(|(k, _)| k == name).map(|(_, v)| *v).expect(name);
        let (p50, p99, max) = (field("p50_ms"), field("p99_ms"), field("max_ms"));
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{text}");
        assert!(report.msgs_per_s > 0.0, "{text}");
    }
    // Its topics were deleted.
    let listed = stdout(&rill(&["topic", "list", "-b", &brokers]));
    assert!(!listed.contains("rill-perf-"), "{listed}");
}

/// Reads every record of `topic` with librdkafka, an independent reader:
/// `(partition, key, value)` in each partition's order, until `count`
/// came and every partition reached its end after that (so a record more
/// than `count` is read too).
fn read_all_with_librdkafka(brokers: &str, topic: &str, count: u64) -> Vec<(i32, String, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "order-checker")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let timeout = std::time::Duration::from_secs(10);
    let metadata = consumer.fetch_metadata(Some(topic), timeout).unwrap();
    let partitions: Vec<i32> = metadata.topics()[0].partitions().iter().map(|p| p.id()).collect();
    assert!(!partitions.is_empty(), "{topic} exists");
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        assignment.add_partition_offset(topic, *partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::new();
    let mut at_end = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while (records.len() as u64) < count || at_end.len() < partitions.len() {
        assert!(std::time::Instant::now() < deadline, "{} of {count} outputs read", records.len());
        match consumer.poll(std::time::Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let text = |b: Option<&[u8]>| String::from_utf8(b.expect("set").to_vec()).unwrap();
                records.push((message.partition(), text(message.key()), text(message.payload())));
                at_end.remove(&message.partition());
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => panic!("reader: {error}"),
            None => {}
        }
    }
    records
}

/// `rill perf process --order key`: keyed input (`key-<k>`, `<k>:<n>`)
/// through a 5 ms async call, 64 at once; the report names the output
/// topic, which is kept, and an independent reader finds each key's
/// outputs exactly once and in input order. The same with `--order
/// partition` (one call at a time per partition; fewer records, it is
/// slower by design). Throughput is measured in the note, not here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_process_by_key_keeps_each_keys_order_and_loses_nothing() {
    let tansu = tansu().await;
    let brokers = tansu.bootstrap();
    for (order, messages) in [("key", 20_000u64), ("partition", 3_000)] {
        let count = messages.to_string();
        let args = ["perf", "process", "-b", &brokers, "--order", order, "--concurrency", "64", "--call-ms", "5"];
        let mut args = args.to_vec();
        args.extend(["--keys", "1000", "--messages", &count]);
        let run = rill(&args);
        assert!(run.status.success(), "{}", stderr(&run));
        let report = rill_cli::perf::Report::from_json(stdout(&run).trim()).expect("one JSON line");
        assert_eq!((report.scenario.as_str(), report.messages, report.partitions), ("process", messages, 6));
        let label = |name: &str| report.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(label("order").as_deref(), Some(order), "{report:?}");
        let topic = label("output_topic").expect("the report names the output topic");
        let through = brokers.clone();
        let records =
            tokio::task::spawn_blocking(move || read_all_with_librdkafka(&through, &topic, messages)).await.unwrap();
        let mut next: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        let mut partition_of: std::collections::HashMap<u64, i32> = std::collections::HashMap::new();
        for (partition, key, value) in &records {
            let (k, n) = value.split_once(':').expect("<k>:<n>");
            let (k, n): (u64, u64) = (k.parse().unwrap(), n.parse().unwrap());
            assert_eq!(key, &format!("key-{k}"), "an output keeps its input's key");
            assert_eq!(*partition_of.entry(k).or_insert(*partition), *partition, "one key, one output partition");
            let expected = next.entry(k).or_default();
            assert_eq!(n, *expected, "{order}: key-{k}'s outputs out of order or repeated");
            *expected += 1;
        }
        assert_eq!(next.len(), 1000, "every key came out");
        assert!(next.values().all(|n| *n == messages / 1000), "each key's every record, once");
    }
    // The input topics were deleted; the outputs were kept.
    let listed = stdout(&rill(&["topic", "list", "-b", &brokers]));
    assert!(!listed.contains("rill-perf-in-"), "{listed}");
    assert_eq!(listed.matches("rill-perf-out-").count(), 2, "{listed}");
}

/// A batch that arrives damaged (the Kafka-aware proxy flips a byte of the
/// first batch of a Fetch answer; Tansu's copy is intact) is reported on
/// stderr and skipped, as kcat does; the records after it are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_reports_and_skips_an_unreadable_batch() {
    let tansu = tansu().await;
    let brokers = tansu.bootstrap();
    let topic = rill_testkit::unique_topic("cli-unreadable");
    assert!(rill(&["topic", "create", "--brokers", &brokers, "--partitions", "1", &topic]).status.success());
    // Three batches of four lines: offsets 0-3, 4-7, 8-11.
    for batch in 0..3 {
        let lines: String = (0..4).map(|i| format!("line-{}\n", batch * 4 + i)).collect();
        let produced = rill_with_input(&["produce", "--brokers", &brokers, "--topic", &topic], lines.as_bytes());
        assert!(produced.status.success(), "{}", stderr(&produced));
    }
    let proxy = rill_testkit::KafkaProxy::start(&brokers, 92).await.unwrap();
    proxy.corrupt_fetched_batches(1);
    let through = proxy.bootstrap().to_owned();
    let consumed = tokio::task::spawn_blocking(move || {
        rill(&[
            "consume",
            "--brokers",
            &through,
            "--topic",
            &topic,
            "--from",
            "beginning",
            "-e",
            "--format",
            "%o %v\\n",
        ])
    })
    .await
    .unwrap();
    assert!(consumed.status.success(), "{}", stderr(&consumed));
    assert_eq!(proxy.faults_applied(), 1, "one batch was damaged");
    let expected: Vec<String> = (4..12).map(|i| format!("{i} line-{i}")).collect();
    assert_eq!(stdout(&consumed).lines().collect::<Vec<_>>(), expected);
    let text = stderr(&consumed);
    assert!(text.contains("offsets 0 to 3 cannot be read, skipped") && text.contains("CRC"), "{text}");
}

/// One scrape of `http://addr/metrics`: the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("the metrics endpoint listens");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: rill\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// `rill weblog --metrics-addr 127.0.0.1:0` serves Prometheus text that
/// parses, with the processor's numbers (the per-partition lag among them)
/// and the client's (request durations, the consumer's lag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weblog_serves_prometheus_text_with_the_lag_per_partition() {
    use std::io::BufRead;
    let tansu = tansu().await;
    let brokers = tansu.bootstrap();
    let (input, output) = (rill_testkit::unique_topic("prom-in"), rill_testkit::unique_topic("prom-out"));
    for (topic, partitions) in [(&input, "2"), (&output, "1")] {
        assert!(rill(&["topic", "create", "-b", &brokers, "--partitions", partitions, topic]).status.success());
    }
    let lines: String = (0..40).map(|i| format!("{}\n", rill_cli::weblog::line(i))).collect();
    assert!(rill_with_input(&["produce", "-b", &brokers, "-t", &input], lines.as_bytes()).status.success());
    let mut child = common::command()
        .args(["weblog", "-b", &brokers, "-i", &input, "-o", &output, "--instance", "prom-1", "--from", "earliest"])
        .args(["--metrics-addr", "127.0.0.1:0", "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut said = stderr.lines();
    let addr = loop {
        let line = said.next().expect("rill weblog says where its metrics are").unwrap();
        if let Some(url) = line.strip_prefix("rill: metrics at http://") {
            break url.trim_end_matches("/metrics").to_owned();
        }
    };
    std::thread::spawn(move || said.for_each(drop));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let metrics = loop {
        let text = scrape(&addr);
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text");
        let value = |name: &str, labels: &[(&str, &str)]| {
            parsed
                .samples
                .iter()
                .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
                .map(|s| match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => v,
                    _ => f64::NAN,
                })
        };
        let done = value("rill_processor_consumed_total", &[("processor", "weblog")]) == Some(40.0)
            && (0..2)
                .all(|p| value("rill_processor_lag", &[("topic", &input), ("partition", &p.to_string())]) == Some(0.0));
        if done {
            break parsed;
        }
        assert!(std::time::Instant::now() < deadline, "not every record processed or no lag: {text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let names: std::collections::BTreeSet<&str> = metrics.samples.iter().map(|s| s.metric.as_str()).collect();
    for name in [
        "rill_processor_produced_total",
        "rill_processor_watermark",
        "rill_processor_in_flight",
        "rill_client_request_duration_seconds",
        "rill_client_requests_in_flight",
        "rill_consumer_lag",
        "rill_producer_batch_bytes",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    common::sigterm(&child);
    assert!(common::exit_status(&mut child, std::time::Duration::from_secs(40)).success());
}
