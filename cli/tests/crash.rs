//! The web-log processor (`rill weblog`, a child process) killed and
//! restarted while input keeps arriving; an independent librdkafka
//! consumer then checks that every input id reached the output.
//!
//! - SIGKILL at random moments, six times: nothing lost; duplicates are
//!   possible (outputs delivered but not yet committed) and counted.
//! - SIGTERM instead, five times: nothing lost and no duplicate (the
//!   processor drains and commits before it exits).
//!
//! Against Tansu with the classic group protocol, and against librdkafka's
//! mock cluster with KIP-848's (`group.protocol=consumer`; Tansu lacks it).
//! The seed of the random moments is printed; set `RILL_CRASH_SEED` to
//! replay it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Message, Offset, TopicPartitionList};
use rill_cli::weblog;
use rill_client::producer::{Producer, ProducerConfig, Record};
use rill_client::{ClientConfig, NewTopic};
use rill_testkit::Tansu;
use rill_testkit::mock::MockKafka;

const INPUT_PARTITIONS: i32 = 4;
const OUTPUT_PARTITIONS: i32 = 3;

/// The broker and group protocol of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Tansu, classic protocol, 6 s sessions.
    Classic,
    /// The mock cluster, KIP-848, 6 s sessions set on the broker.
    Kip848,
    /// Classic on Tansu, `--exactly-once`.
    ClassicExactlyOnce,
    /// KIP-848 on the mock, `--exactly-once`.
    Kip848ExactlyOnce,
    /// A real Kafka or Redpanda (`KAFKA_BOOTSTRAP`), classic, `--exactly-once`,
    /// read back read_committed.
    ExternalExactlyOnce,
}

impl Setup {
    fn group_settings(self) -> &'static [&'static str] {
        match self {
            Setup::Classic => &["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"],
            Setup::Kip848 => &["-X", "group.protocol=consumer"],
            Setup::ClassicExactlyOnce | Setup::ExternalExactlyOnce => {
                &["-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500", "--exactly-once"]
            }
            Setup::Kip848ExactlyOnce => &["-X", "group.protocol=consumer", "--exactly-once"],
        }
    }

    fn kip848(self) -> bool {
        matches!(self, Setup::Kip848 | Setup::Kip848ExactlyOnce)
    }

    fn exactly_once(self) -> bool {
        matches!(self, Setup::ClassicExactlyOnce | Setup::Kip848ExactlyOnce | Setup::ExternalExactlyOnce)
    }
}

fn spawn_weblog(setup: Setup, brokers: &str, input: &str, output: &str, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["weblog", "--brokers", brokers, "--input", input, "--output", output, "--instance", "crash-1"])
        .args(["--from", "earliest"])
        .args(setup.group_settings())
        .args(["-X", "auto.commit.interval.ms=500"])
        .env("RUST_LOG", "rill::processor=info,rill::cgrp=info")
        .env_remove("RILL_BROKERS")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("rill runs")
}

fn terminate(child: &mut Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "rill weblog exited with {status} after SIGTERM");
            return;
        }
        assert!(Instant::now() < deadline, "rill weblog did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Assignments the processors logged so far (the consumer's "assigned"
/// line at info level).
fn assignments(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).map_or(0, |text| text.matches("rill::cgrp: assigned group=").count())
}

/// A small xorshift: reproducible moments from a printed seed.
struct Moments(u64);

impl Moments {
    fn next(&mut self, from: Duration, to: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        from + (to - from).mul_f64((self.0 % 10_000) as f64 / 10_000.0)
    }
}

fn seed() -> u64 {
    std::env::var("RILL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1)
}

/// Writes lines `0..count` at about `rate` per second.
async fn feed(brokers: String, topic: String, count: u64, rate: u64) {
    let producer = Producer::new(ProducerConfig::new(ClientConfig::new(&brokers).unwrap())).unwrap();
    let started = tokio::time::Instant::now();
    let mut pending = Vec::new();
    for id in 0..count {
        let line = weblog::line(id);
        pending.push(producer.send(Record::to(&topic).value(&line)).await.unwrap());
        if id % 100 == 99 {
            tokio::time::sleep_until(started + Duration::from_secs_f64((id + 1) as f64 / rate as f64)).await;
        }
    }
    for delivery in pending {
        delivery.await.unwrap();
    }
    producer.close(Duration::from_secs(10)).await.unwrap();
}

/// Reads the output with librdkafka until every id `0..count` is seen (or
/// the deadline); returns how often each id came.
fn read_ids(brokers: &str, topic: &str, count: u64, deadline: Duration, committed_only: bool) -> HashMap<u64, u32> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "crash-checker")
        .set("enable.auto.commit", "false")
        .set("isolation.level", if committed_only { "read_committed" } else { "read_uncommitted" })
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..OUTPUT_PARTITIONS {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut seen: HashMap<u64, u32> = HashMap::new();
    let end = Instant::now() + deadline;
    let mut quiet_since = Instant::now();
    while Instant::now() < end {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let value = std::str::from_utf8(message.payload().unwrap()).unwrap();
                *seen.entry(weblog::id_of(value).expect("an id in every output")).or_default() += 1;
                quiet_since = Instant::now();
            }
            Some(Err(error)) => panic!("checker: {error}"),
            None => {
                // Everything seen, and nothing more for a while.
                if seen.len() as u64 == count && quiet_since.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
        }
    }
    seen
}

enum Broker {
    Tansu(Tansu),
    Mock(MockKafka),
    External(String),
}

async fn run_with_restarts(setup: Setup, kill: bool, restarts: usize, count: u64) -> u64 {
    let (input, output) = (rill_testkit::unique_topic("crash-in"), rill_testkit::unique_topic("crash-out"));
    let broker = match setup {
        Setup::Classic | Setup::ClassicExactlyOnce => Broker::Tansu(rill_testkit::required(Tansu::start().await)),
        Setup::ExternalExactlyOnce => Broker::External(rill_testkit::required(
            std::env::var("KAFKA_BOOTSTRAP").map_err(|_| "KAFKA_BOOTSTRAP is not set (a real Kafka or Redpanda)"),
        )),
        Setup::Kip848 | Setup::Kip848ExactlyOnce => {
            let mock = rill_testkit::required(MockKafka::start(3));
            mock.consumer_group_times(Duration::from_secs(6), Duration::from_millis(500)).unwrap();
            // The mock has no CreateTopics.
            mock.create_topic(&input, INPUT_PARTITIONS, 1).unwrap();
            mock.create_topic(&output, OUTPUT_PARTITIONS, 1).unwrap();
            Broker::Mock(mock)
        }
    };
    let brokers = match &broker {
        Broker::Tansu(tansu) => tansu.bootstrap(),
        Broker::Mock(mock) => mock.bootstrap().to_owned(),
        Broker::External(bootstrap) => bootstrap.clone(),
    };
    if !matches!(broker, Broker::Mock(_)) {
        let client = rill_client::Client::new(ClientConfig::new(&brokers).unwrap()).unwrap();
        client
            .admin()
            .create_topics(&[NewTopic::new(&input, INPUT_PARTITIONS), NewTopic::new(&output, OUTPUT_PARTITIONS)])
            .await
            .unwrap();
    }
    let log = std::env::temp_dir().join(format!("{input}.log"));
    let seed = seed();
    eprintln!("seed {seed} (RILL_CRASH_SEED replays it); processor log {}", log.display());
    let mut moments = Moments(seed);
    // Input keeps arriving while the processor dies and comes back.
    let feeder = tokio::spawn(feed(brokers.clone(), input.clone(), count, 1_200));
    for round in 0..restarts {
        let assigned_before = assignments(&log);
        let mut child = spawn_weblog(setup, &brokers, &input, &output, &log);
        // Die at a random moment after the group handed this instance its
        // partitions, while records flow.
        let deadline = Instant::now() + Duration::from_secs(60);
        while assignments(&log) == assigned_before {
            assert!(Instant::now() < deadline, "round {round}: no assignment within 60 s; log {}", log.display());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let life = moments.next(Duration::from_millis(200), Duration::from_millis(2_500));
        tokio::time::sleep(life).await;
        if kill {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        } else {
            terminate(&mut child);
        }
        eprintln!("round {round}: {} {life:?} after the assignment", if kill { "SIGKILL" } else { "SIGTERM" });
    }
    feeder.await.unwrap();
    let mut last = spawn_weblog(setup, &brokers, &input, &output, &log);
    let (brokers2, output2) = (brokers.clone(), output.clone());
    let committed_only = setup == Setup::ExternalExactlyOnce;
    let seen = tokio::task::spawn_blocking(move || {
        read_ids(&brokers2, &output2, count, Duration::from_secs(180), committed_only)
    })
    .await
    .unwrap();
    terminate(&mut last);
    let missing: Vec<u64> = (0..count).filter(|id| !seen.contains_key(id)).take(10).collect();
    assert!(
        missing.is_empty(),
        "{} of {count} ids never reached the output (first: {missing:?}); log {}",
        count - seen.len() as u64,
        log.display()
    );
    if setup.exactly_once() {
        check_transactional_output(&broker, &brokers, &output).await;
    }
    if setup.kip848() {
        // The processors were KIP-848 members (the classic member logs no
        // epoch), and were fenced or waited for the instance id as they
        // came back.
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("rill::cgrp: joined member="), "no KIP-848 join in {}", log.display());
    }
    let duplicates: u64 = seen.values().map(|&n| u64::from(n - 1)).sum();
    eprintln!(
        "{count} ids, all delivered; {duplicates} duplicates after {restarts} {}",
        if kill { "SIGKILLs" } else { "SIGTERMs" }
    );
    duplicates
}

/// Every output batch of an exactly-once run is transactional, under the
/// ids of the processor's transactional producers (each restart fences
/// the last); on Tansu each output partition ends with a marker. The mock
/// writes no markers.
async fn check_transactional_output(broker: &Broker, brokers: &str, output: &str) {
    let client = rill_client::Client::new(ClientConfig::new(brokers).unwrap()).unwrap();
    let mut markers = 0;
    for partition in 0..OUTPUT_PARTITIONS {
        let batches = rill_testkit::read::fetch_batches(
            &client,
            output,
            partition,
            |_, offset, high_watermark| offset >= high_watermark,
            Duration::from_secs(60),
        )
        .await;
        assert!(!batches.is_empty(), "output partition {partition} is empty");
        for batch in &batches {
            assert!(batch.header.is_transactional(), "partition {partition}: {:?}", batch.header);
            markers += usize::from(batch.header.is_control());
        }
        if !matches!(broker, Broker::Mock(_)) {
            assert!(batches.iter().any(|b| b.header.is_control()), "partition {partition}: no transaction marker");
        }
    }
    eprintln!("output: transactional batches, {markers} markers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing() {
    run_with_restarts(Setup::Classic, true, 6, 50_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_nothing_and_duplicates_nothing() {
    let duplicates = run_with_restarts(Setup::Classic, false, 5, 30_000).await;
    assert_eq!(duplicates, 0, "a clean stop drains and commits before it exits");
}

/// The same with KIP-848: a killed static member's partitions wait for
/// its session (6 s) to end, its restart waits for the instance id to be
/// released, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_with_the_consumer_group_protocol() {
    run_with_restarts(Setup::Kip848, true, 6, 30_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_loses_nothing_and_duplicates_nothing_with_the_consumer_group_protocol() {
    let duplicates = run_with_restarts(Setup::Kip848, false, 3, 20_000).await;
    assert_eq!(duplicates, 0, "a clean stop drains and commits before it exits");
}

/// `rill weblog --exactly-once` killed six times while input arrives, then
/// run to the end: every input has an output (read_uncommitted: Tansu
/// stores no TxnOffsetCommit, so each restart reads from the start again
/// and duplicates are expected), and the output is transactional with
/// transaction markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_exactly_once() {
    run_with_restarts(Setup::ClassicExactlyOnce, true, 6, 20_000).await;
}

/// The same on the mock cluster with KIP-848 (its commits carry the member
/// epoch as the generation); the mock writes no markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_exactly_once_on_the_mock() {
    run_with_restarts(Setup::Kip848ExactlyOnce, true, 6, 20_000).await;
}

/// Exactly once end to end, against a real Kafka or Redpanda
/// (`KAFKA_BOOTSTRAP`; left out by the default nextest filter, so reported
/// skipped without one): six SIGKILLs while input arrives, then a
/// read_committed reader finds every input's output exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_duplicates_nothing_exactly_once_against_kafka() {
    let duplicates = run_with_restarts(Setup::ExternalExactlyOnce, true, 6, 20_000).await;
    assert_eq!(duplicates, 0, "a read_committed reader sees each input's outputs once");
}
