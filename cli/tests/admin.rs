//! `rill group`, `rill cluster` and `rill topic describe` against Tansu,
//! on a group of a `rill consume` member and a librdkafka member.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::{command, exit_status, rill, sigterm};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
use rill_testkit::Tansu;
use serde_json::Value;

const PARTITIONS: i32 = 4;

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "{}", stderr(output));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

/// `per_partition` records to each partition, one per request: Tansu's
/// ListOffsets(latest) counts batches (FIXTURES.md), right only then.
fn fill(brokers: &str, topic: &str, from: i64, per_partition: i64) {
    let producer: BaseProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    for partition in 0..PARTITIONS {
        for i in from..from + per_partition {
            let value = format!("{partition}:{i}");
            producer.send(BaseRecord::<(), String>::to(topic).partition(partition).payload(&value)).unwrap();
            producer.flush(Duration::from_secs(10)).unwrap();
        }
    }
}

/// A librdkafka member polling on a thread of its own until told to stop
/// reading; it stays in the group (heartbeating) until dropped.
struct RdMember {
    read: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    reading: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl RdMember {
    fn start(brokers: &str, group: &str, topic: &str) -> RdMember {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", group)
            .set("client.id", "rd-member")
            .set("partition.assignment.strategy", "range")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("auto.offset.reset", "earliest")
            .set("auto.commit.interval.ms", "200")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let read = std::sync::Arc::new(AtomicUsize::new(0));
        let reading = std::sync::Arc::new(AtomicBool::new(true));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (r, g, s) = (read.clone(), reading.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut paused = false;
            while !s.load(Ordering::SeqCst) {
                if !paused && !g.load(Ordering::SeqCst) {
                    // Stop reading, stay in the group: pause what it owns.
                    consumer.pause(&consumer.assignment().unwrap()).unwrap();
                    paused = true;
                }
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(_)) => {
                        r.fetch_add(1, Ordering::SeqCst);
                    }
                    // librdkafka reports transient states (AllBrokersDown when
                    // its connections cycle) as errors it recovers from itself.
                    Some(Err(e)) => eprintln!("rd-member: {e}"),
                    None => {}
                }
            }
            consumer.unsubscribe();
        });
        RdMember { read, reading, stop, thread }
    }

    fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap();
        self.read.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn rill_member(brokers: &str, group: &str, topic: &str) -> Child {
    command()
        .args(["consume", "-b", brokers, "-t", topic, "-G", group])
        .args(["-X", "client.id=rill-member", "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"])
        .args(["-X", "partition.assignment.strategy=range", "-X", "auto.commit.interval.ms=200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Stops a `rill consume` member by SIGTERM; the number of records it wrote.
fn stop_rill(mut child: Child) -> usize {
    sigterm(&child);
    assert!(exit_status(&mut child, Duration::from_secs(30)).success());
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).lines().count()
}

fn describe(brokers: &str, group: &str) -> Value {
    json(&rill(&["group", "describe", "-b", brokers, group, "--json"]))
}

/// Waits until the group's description satisfies `done`; on timeout the
/// last description is in the message.
fn until(what: &str, brokers: &str, group: &str, mut done: impl FnMut(&Value) -> bool) {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let described = describe(brokers, group);
        if done(&described) {
            return;
        }
        assert!(Instant::now() < end, "{what}: not within 60 s; last seen {described}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Per (topic partition): committed, log end, lag, member client id prefix.
fn offsets(described: &Value) -> BTreeMap<i64, (Value, i64, Value)> {
    described["offsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["partition"].as_i64().unwrap(),
                (o["committed"].clone(), o["log_end"].as_i64().unwrap(), o["lag"].clone()),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_describe_shows_both_members_and_the_lag_and_seek_rewinds_them() {
    let tansu = rill_testkit::required(Tansu::start().await);
    let brokers = tansu.bootstrap();
    let topic = rill_testkit::unique_topic("cli-admin");
    let group = rill_testkit::unique_topic("cli-admin-g");
    assert!(rill(&["topic", "create", "-b", &brokers, "-p", &PARTITIONS.to_string(), &topic]).status.success());
    fill(&brokers, &topic, 0, 10);

    let rd = RdMember::start(&brokers, &group, &topic);
    let member = rill_member(&brokers, &group, &topic);
    until("both members in, every record committed", &brokers, &group, |d| {
        d["members"].as_array().is_some_and(|m| m.len() == 2)
            && offsets(d).values().filter(|(c, _, _)| c.as_i64() == Some(10)).count() == PARTITIONS as usize
    });
    // librdkafka stops reading (and so committing); rill reads on.
    rd.reading.store(false, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    fill(&brokers, &topic, 10, 3);
    until("rill's partitions caught up", &brokers, &group, |d| {
        offsets(d).values().filter(|(c, _, _)| c.as_i64() == Some(13)).count() >= 1
    });
    std::thread::sleep(Duration::from_millis(1000));
    let described = describe(&brokers, &group);
    assert_eq!(described["group"], group.as_str());
    assert_eq!(described["state"], "Stable");
    let members = described["members"].as_array().unwrap();
    let mut ids: Vec<&str> = members.iter().map(|m| m["member_id"].as_str().unwrap()).collect();
    ids.sort();
    assert!(ids[0].starts_with("rd-member-") && ids[1].starts_with("rill-member-"), "{described}");
    // Tansu names members without their assignments (a gap, FIXTURES.md):
    // which partitions lag tells who owns them. Range gives each two.
    let table = offsets(&described);
    assert_eq!(table.len(), PARTITIONS as usize, "{described}");
    let mut lags = Vec::new();
    for (partition, (committed, log_end, lag)) in &table {
        assert_eq!(*log_end, 13, "partition {partition}: {described}");
        let committed = committed.as_i64().unwrap();
        assert!(committed == 10 || committed == 13, "partition {partition}: {described}");
        assert_eq!(lag.as_i64(), Some(13 - committed), "partition {partition}: {described}");
        lags.push(13 - committed);
    }
    lags.sort();
    assert_eq!(lags, [0, 0, 3, 3], "rill's two partitions caught up, librdkafka's two lag by 3: {described}");
    assert_eq!(described["total_lag"], 6);

    // The text form: aligned tables with the same figures.
    let text = rill(&["group", "describe", "-b", &brokers, &group]);
    assert!(text.status.success(), "{}", stderr(&text));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("TOTAL-LAG   6") && text.contains("STATE       Stable"), "{text}");
    let header = text.lines().find(|l| l.starts_with("TOPIC")).unwrap();
    let lag_column = header.find("LAG ").unwrap();
    let row = text.lines().find(|l| l.starts_with(&topic)).unwrap();
    assert!(row.len() > lag_column, "{text}");

    let listed = json(&rill(&["group", "list", "-b", &brokers, "--json"]));
    let ours = listed.as_array().unwrap().iter().find(|g| g["group"] == group.as_str()).expect("the group listed");
    assert_eq!(ours["protocol_type"], "consumer", "{listed}");
    // Tansu's ListGroups says "Unknown" for every state (a gap); Kafka's
    // says "Stable" here.
    assert!(matches!(ours["state"].as_str(), Some("Stable" | "Unknown")), "{listed}");

    // Refused while it has members.
    let refused = rill(&["group", "seek", "-b", &brokers, &group, "--to", "earliest"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("NonEmptyGroup") || stderr(&refused).contains("member"), "{}", stderr(&refused));

    // Stop both; rewind the stopped group; both re-read from the start.
    // librdkafka leaves first; rill takes its partitions and reads what it
    // left. Only then rill leaves: Tansu keeps a leader that leaves during a
    // rebalance as the group's leader, and every later generation waits for
    // its SyncGroup (FIXTURES.md), so the last member leaves a stable group.
    let rd_read = rd.stop();
    until("rill alone, everything committed", &brokers, &group, |d| {
        d["members"].as_array().is_some_and(|m| m.len() == 1)
            && d["state"] == "Stable"
            && offsets(d).values().all(|(c, _, _)| c.as_i64() == Some(13))
    });
    let first_read = stop_rill(member) + rd_read;
    assert_eq!(first_read, 4 * 13, "every record once across the two members");
    until("the group empty", &brokers, &group, |d| d["members"].as_array().is_some_and(|m| m.is_empty()));
    let dry = json(&rill(&["group", "seek", "-b", &brokers, &group, "--to", "earliest", "--dry-run", "--json"]));
    assert_eq!(dry.as_array().unwrap().len(), PARTITIONS as usize);
    assert!(dry.as_array().unwrap().iter().all(|p| p["new"] == 0), "{dry}");
    assert_eq!(offsets(&describe(&brokers, &group)).values().filter(|(c, _, _)| c.as_i64() == Some(0)).count(), 0);
    let seek = json(&rill(&["group", "seek", "-b", &brokers, &group, "--to", "earliest", "--json"]));
    assert!(seek.as_array().unwrap().iter().all(|p| p["new"] == 0), "{seek}");
    assert!(offsets(&describe(&brokers, &group)).values().all(|(c, _, _)| c.as_i64() == Some(0)));

    let rd = RdMember::start(&brokers, &group, &topic);
    let member = rill_member(&brokers, &group, &topic);
    until("everything read again", &brokers, &group, |d| {
        offsets(d).values().filter(|(c, _, _)| c.as_i64() == Some(13)).count() == PARTITIONS as usize
    });
    let again = stop_rill(member) + rd.stop();
    assert_eq!(again, 4 * 13, "both members re-read every partition from the start");

    // -N and a named partition.
    let back = json(&rill(&[
        "group",
        "seek",
        "-b",
        &brokers,
        &group,
        "--to",
        "-5",
        "--topic",
        &format!("{topic}:1"),
        "--json",
    ]));
    assert_eq!(back, serde_json::json!([{"topic": topic, "partition": 1, "committed": 13, "new": 8}]));
    let bad = rill(&["group", "seek", "-b", &brokers, &group, "--to", "yesterday"]);
    assert!(!bad.status.success() && stderr(&bad).contains("expected earliest, latest"), "{}", stderr(&bad));

    let deleted = rill(&["group", "delete", "-b", &brokers, &group]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let listed = json(&rill(&["group", "list", "-b", &brokers, "--json"]));
    assert!(!listed.as_array().unwrap().iter().any(|g| g["group"] == group.as_str()), "{listed}");

    let cluster = json(&rill(&["cluster", "info", "-b", &brokers, "--json"]));
    assert_eq!(cluster["brokers"].as_array().unwrap().len(), 1, "{cluster}");
    assert_eq!(cluster["controller"], cluster["brokers"][0]["id"], "{cluster}");
    let topic_json = json(&rill(&["topic", "describe", "-b", &brokers, &topic, "--json"]));
    assert_eq!(topic_json["partitions"].as_array().unwrap().len(), PARTITIONS as usize, "{topic_json}");
    assert_eq!(topic_json["partitions"][3]["leader"], cluster["controller"], "{topic_json}");
}
