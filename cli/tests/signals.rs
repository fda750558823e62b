//! `rill consume` and `rill produce` stopped by SIGTERM, as users stop them
//! in pipelines: what `consume` commits never goes past what it wrote out
//! (checked by librdkafka reading the group's commits), and `produce`
//! delivers every line it read, says so, and exits 0; `rill broker` runs
//! a broker until stopped.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{exit_status, sigterm};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};
use rill_client::producer::{Producer, ProducerConfig, Record};
use rill_client::{Client, ClientConfig, NewTopic};
use rill_testkit::Tansu;
use rill_testkit::read::fetch_all;

/// The group's committed offsets as librdkafka reads them.
fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("librdkafka consumer");
    let mut asked = TopicPartitionList::new();
    for partition in 0..partitions {
        asked.add_partition(topic, partition);
    }
    let found = consumer.committed_offsets(asked, Duration::from_secs(10)).expect("committed offsets");
    found
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(offset) => offset,
                _ => 0,
            };
            (e.partition(), offset)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_stopped_by_sigterm_commits_only_what_it_wrote() {
    const RECORDS: u64 = 300_000;
    const PARTITIONS: i32 = 3;
    let tansu = rill_testkit::required(Tansu::start().await);
    let brokers = tansu.bootstrap();
    let topic = rill_testkit::unique_topic("sigterm-consume");
    let group = format!("{topic}-group");
    let client = Client::new(ClientConfig::new(&brokers).unwrap()).unwrap();
    client.admin().create_topics(&[NewTopic::new(&topic, PARTITIONS)]).await.unwrap();
    let producer = Producer::new(ProducerConfig::new(ClientConfig::new(&brokers).unwrap())).unwrap();
    for i in 0..RECORDS {
        let value = format!("v{i}");
        drop(producer.send(Record::to(&topic).value(&value)).await.unwrap());
    }
    producer.close(Duration::from_secs(30)).await.unwrap();

    let mut consume = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["consume", "--brokers", &brokers, "--topic", &topic, "--group", &group, "--from", "beginning"])
        .args(["--format", "%p %o\\n"])
        .args(["-X", "session.timeout.ms=6000", "-X", "auto.commit.interval.ms=20"])
        .env_remove("RILL_BROKERS")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rill runs");
    // Stop it while records flow: read the first lines, then stop reading,
    // so that the pipe fills and rill holds fetched records it cannot write
    // yet (the ones it must not commit); signal; then read the rest.
    let mut stdout = consume.stdout.take().unwrap();
    let mut text = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    while text.len() < 200_000 {
        let n = std::io::Read::read(&mut stdout, &mut chunk).unwrap();
        assert!(n > 0, "rill consume ended after {} bytes", text.len());
        text.extend_from_slice(&chunk[..n]);
    }
    sigterm(&consume);
    std::io::Read::read_to_end(&mut stdout, &mut text).unwrap();
    let status = exit_status(&mut consume, Duration::from_secs(30));
    let mut stderr = String::new();
    std::io::Read::read_to_string(consume.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "rill consume exited with {status} after SIGTERM: {stderr}");

    // What reached the pipe: per partition, offsets 0..n in order.
    let text = String::from_utf8(text).unwrap();
    let mut written: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    for line in text.lines() {
        let (partition, offset) = line.split_once(' ').unwrap_or_else(|| panic!("a whole line: {line:?}"));
        let (partition, offset): (i32, i64) = (partition.parse().unwrap(), offset.parse().unwrap());
        let next = written.get_mut(&partition).unwrap();
        assert_eq!(offset, *next, "partition {partition}: every offset once, in order");
        *next += 1;
    }
    let total: i64 = written.values().sum();
    assert!((total as u64) < RECORDS, "the signal came while records flowed ({total} written)");
    assert!(stderr.contains(&format!("consumed {total} records")), "{stderr}");

    let commits = committed(&brokers, &group, &topic, PARTITIONS);
    for partition in 0..PARTITIONS {
        assert!(
            commits[&partition] <= written[&partition],
            "partition {partition}: committed {} past the {} records written",
            commits[&partition],
            written[&partition]
        );
    }
    assert_eq!(commits, written, "a clean stop commits everything it wrote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_stopped_by_sigterm_delivers_what_it_read_and_exits_0() {
    const LINES: usize = 1_000;
    let tansu = rill_testkit::required(Tansu::start().await);
    let brokers = tansu.bootstrap();
    let topic = rill_testkit::unique_topic("sigterm-produce");
    let client = Client::new(ClientConfig::new(&brokers).unwrap()).unwrap();
    client.admin().create_topics(&[NewTopic::new(&topic, 1)]).await.unwrap();
    let mut produce = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["produce", "--brokers", &brokers, "--topic", &topic])
        .env_remove("RILL_BROKERS")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rill runs");
    // The input stays open: only the signal ends the command.
    let mut stdin = produce.stdin.take().unwrap();
    for i in 0..LINES {
        writeln!(stdin, "line-{i}").unwrap();
    }
    stdin.flush().unwrap();
    let records = fetch_all(&client, &topic, 0, LINES, Duration::from_secs(30)).await;
    assert_eq!(records.len(), LINES, "rill read and sent every line");
    sigterm(&produce);
    let status = exit_status(&mut produce, Duration::from_secs(30));
    let mut stderr = String::new();
    std::io::Read::read_to_string(produce.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "rill produce exited with {status} after SIGTERM: {stderr}");
    assert!(stderr.contains(&format!("produced {LINES} records")), "{stderr}");
    drop(stdin);
    let values: Vec<String> =
        records.iter().map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()).collect();
    assert_eq!(values, (0..LINES).map(|i| format!("line-{i}")).collect::<Vec<_>>());
}

#[test]
fn broker_serves_until_sigterm() {
    let mut broker = common::command().arg("broker").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut address = String::new();
    std::io::BufReader::new(broker.stdout.take().unwrap()).read_line(&mut address).unwrap();
    let address = address.trim().to_owned();
    assert!(address.starts_with("127.0.0.1:"), "the first line is the address: {address:?}");

    let metadata = common::rill(&["metadata", "-b", &address]);
    assert!(metadata.status.success(), "{}", String::from_utf8_lossy(&metadata.stderr));
    assert!(String::from_utf8_lossy(&metadata.stdout).contains("1 broker:"));

    sigterm(&broker);
    let status = exit_status(&mut broker, Duration::from_secs(10));
    assert!(status.success(), "rill broker exited with {status}");
    // The broker went with it.
    assert!(std::net::TcpStream::connect(&address).is_err(), "{address} still accepts connections");
}
