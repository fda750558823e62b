//! Measuring a client run the same way for every client: wall time,
//! process CPU (getrusage) over the measured phase, peak RSS, and one JSON
//! line at the end. `rill perf` and the benchmarks' librdkafka runs both
//! report through here, so their numbers compare.
//!
//! - [`produce_with_rill`], [`consume_with_rill`]: `rill perf produce` and
//!   `rill perf consume`.
//! - [`process_with_rill`], [`feed`]: `rill perf process`, the web-log
//!   processor between two topics.

mod process;

pub use process::{ProcessLoad, Work, feed, order_name, process_with_rill};

use std::collections::VecDeque;
use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use rill_client::consumer::{Consumer, ConsumerConfig};
use rill_client::producer::{DeliveryFuture, Producer, ProducerConfig, Record, TrySendError};
use rill_client::{TopicPartition, TopicScope};
use serde_json::Value;

/// Process CPU so far, user and system, in seconds.
fn cpu_seconds() -> (f64, f64) {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(usage) => {
            let seconds = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            (seconds(usage.user_time()), seconds(usage.system_time()))
        }
        Err(_) => (0.0, 0.0),
    }
}

/// Peak resident set size of the process, in KiB: the kernel's high-water
/// mark of this program's memory (`VmHWM`). Not `getrusage`'s `ru_maxrss`:
/// Linux carries that over `exec` from the process before, so a child
/// started by a big parent (a benchmark running each client as a child)
/// reports at least the parent's size.
#[allow(clippy::useless_conversion, reason = "c_long is i32 on 32-bit targets")]
fn max_rss_kb() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let high_water = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse().ok());
    high_water.unwrap_or_else(|| getrusage(UsageWho::RUSAGE_SELF).map_or(0, |usage| i64::from(usage.max_rss())))
}

/// A measured phase: started by [`Meter::start`], ended by [`Meter::finish`].
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    cpu: (f64, f64),
}

impl Meter {
    /// Starts measuring.
    pub fn start() -> Self {
        Meter { started: Instant::now(), cpu: cpu_seconds() }
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the phase and builds the report.
    pub fn finish(self, client: &str, scenario: &str, messages: u64, value_bytes: usize, partitions: usize) -> Report {
        let wall = self.started.elapsed().as_secs_f64();
        let (user, system) = cpu_seconds();
        let (cpu_user_s, cpu_sys_s) = (user - self.cpu.0, system - self.cpu.1);
        Report {
            client: client.to_owned(),
            scenario: scenario.to_owned(),
            messages,
            value_bytes,
            partitions,
            wall_s: wall,
            msgs_per_s: messages as f64 / wall,
            mb_per_s: messages as f64 * value_bytes as f64 / wall / 1e6,
            cpu_user_s,
            cpu_sys_s,
            cpu_us_per_msg: (cpu_user_s + cpu_sys_s) * 1e6 / messages.max(1) as f64,
            max_rss_kb: max_rss_kb(),
            extra: Vec::new(),
            labels: Vec::new(),
        }
    }
}

/// The result of a measured run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `rill` or `librdkafka`.
    pub client: String,
    /// `produce`, `consume`, ….
    pub scenario: String,
    /// Records handled.
    pub messages: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Partitions of the topic.
    pub partitions: usize,
    /// Wall time of the phase.
    pub wall_s: f64,
    /// Records per second.
    pub msgs_per_s: f64,
    /// Value megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// User CPU over the phase.
    pub cpu_user_s: f64,
    /// System CPU over the phase.
    pub cpu_sys_s: f64,
    /// CPU microseconds per record.
    pub cpu_us_per_msg: f64,
    /// Peak RSS of the process.
    pub max_rss_kb: i64,
    /// Scenario-specific numbers (`first_record_s`, …).
    pub extra: Vec<(String, f64)>,
    /// Scenario-specific words (`order`, `output_topic`, …).
    pub labels: Vec<(String, String)>,
}

/// The fields every report has, in the order they are written.
const FIELDS: [&str; 12] = [
    "client",
    "scenario",
    "messages",
    "value_bytes",
    "partitions",
    "wall_s",
    "msgs_per_s",
    "mb_per_s",
    "cpu_user_s",
    "cpu_sys_s",
    "cpu_us_per_msg",
    "max_rss_kb",
];

impl Report {
    /// One JSON object on one line: the fields, then the extra numbers.
    pub fn to_json(&self) -> String {
        let mut object = serde_json::Map::new();
        let values: [Value; 12] = [
            self.client.as_str().into(),
            self.scenario.as_str().into(),
            self.messages.into(),
            self.value_bytes.into(),
            self.partitions.into(),
            self.wall_s.into(),
            self.msgs_per_s.into(),
            self.mb_per_s.into(),
            self.cpu_user_s.into(),
            self.cpu_sys_s.into(),
            self.cpu_us_per_msg.into(),
            self.max_rss_kb.into(),
        ];
        for (key, value) in FIELDS.into_iter().zip(values) {
            object.insert(key.to_owned(), value);
        }
        for (key, value) in &self.extra {
            object.insert(key.clone(), (*value).into());
        }
        for (key, value) in &self.labels {
            object.insert(key.clone(), value.as_str().into());
        }
        Value::Object(object).to_string()
    }

    /// Parses a line written by [`Self::to_json`] (for the benchmark
    /// runner); `None` when it is not one.
    pub fn from_json(line: &str) -> Option<Report> {
        let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line.trim()) else {
            return None;
        };
        let number = |key: &str| fields.get(key).and_then(Value::as_f64);
        let whole = |key: &str| fields.get(key).and_then(Value::as_u64);
        let text = |key: &str| fields.get(key).and_then(Value::as_str).map(str::to_owned);
        let mut extra: Vec<(String, f64)> = fields
            .iter()
            .filter(|(key, _)| !FIELDS.contains(&key.as_str()))
            .filter_map(|(key, value)| Some((key.clone(), value.as_f64()?)))
            .collect();
        extra.sort_by(|a, b| a.0.cmp(&b.0));
        let mut labels: Vec<(String, String)> = fields
            .iter()
            .filter(|(key, _)| !FIELDS.contains(&key.as_str()))
            .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
            .collect();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        Some(Report {
            client: text("client")?,
            scenario: text("scenario")?,
            messages: whole("messages")?,
            value_bytes: usize::try_from(whole("value_bytes")?).ok()?,
            partitions: usize::try_from(whole("partitions")?).ok()?,
            wall_s: number("wall_s")?,
            msgs_per_s: number("msgs_per_s")?,
            mb_per_s: number("mb_per_s")?,
            cpu_user_s: number("cpu_user_s")?,
            cpu_sys_s: number("cpu_sys_s")?,
            cpu_us_per_msg: number("cpu_us_per_msg")?,
            max_rss_kb: fields.get("max_rss_kb").and_then(Value::as_i64)?,
            extra,
            labels,
        })
    }
}

/// Progress on stderr, when stderr is a terminal; silent otherwise.
#[derive(Debug)]
pub struct Progress {
    total: u64,
    started: Instant,
    last: Instant,
    enabled: bool,
}

impl Progress {
    /// Progress towards `total` records.
    pub fn new(total: u64) -> Self {
        let now = Instant::now();
        Progress { total, started: now, last: now, enabled: std::io::stderr().is_terminal() }
    }

    /// Reports `done` records, at most four times a second.
    pub fn update(&mut self, done: u64) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(250) {
            return;
        }
        self.last = Instant::now();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let percent = done as f64 * 100.0 / self.total.max(1) as f64;
        eprint!("\r{done}/{} records ({percent:.0} %), {rate:.0} records/s   ", self.total);
        let _ = std::io::stderr().flush();
    }

    /// Clears the progress line.
    pub fn finish(&self) {
        if self.enabled {
            eprint!("\r{}\r", " ".repeat(72));
            let _ = std::io::stderr().flush();
        }
    }
}

/// What a produce run sends.
#[derive(Debug, Clone)]
pub struct ProduceLoad {
    /// Topics (must exist); records go to them in turn.
    pub topics: Vec<String>,
    /// Records.
    pub messages: u64,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Distinct keys, used in turn; 0 for keyless records.
    pub keys: u64,
}

impl ProduceLoad {
    /// A load for one topic.
    pub fn one(topic: impl AsRef<str>, messages: u64, value_bytes: usize, keys: u64) -> Self {
        ProduceLoad { topics: vec![topic.as_ref().to_owned()], messages, value_bytes, keys }
    }

    /// The keys, `key-0`, `key-1`, ….
    pub fn key_set(&self) -> Vec<Vec<u8>> {
        (0..self.keys).map(|k| format!("key-{k}").into_bytes()).collect()
    }

    /// A value: semi-compressible like JSON, a pattern with some variety.
    pub fn value(&self) -> Vec<u8> {
        (0..self.value_bytes).map(|i| b"{\"user\":\"rill\",\"n\":42}"[i % 22] ^ (i / 97) as u8).collect()
    }

    /// The topic of record `i`.
    pub fn topic_of(&self, i: u64) -> &str {
        &self.topics[(i % self.topics.len() as u64) as usize]
    }
}

/// Every partition of `topics`, looked up now; an error names a topic
/// that does not exist.
async fn partitions_of(
    client: &rill_client::Client,
    topics: &[String],
) -> Result<Vec<TopicPartition>, rill_client::Error> {
    let metadata = client.refresh_metadata(TopicScope::Named(topics.to_vec())).await?;
    let mut all = Vec::new();
    for topic in topics {
        let info =
            metadata.topics.get(topic).ok_or_else(|| rill_client::Error::UnknownTopicOrPartition(topic.clone()))?;
        all.extend((0..info.partitions.len() as i32).map(|p| TopicPartition::new(topic, p)));
    }
    Ok(all)
}

/// Produces `load` with Rill as fast as the producer takes records, and
/// measures it (`rill perf produce` and the benchmarks run this). The
/// topics are looked up before the measured phase; every outcome is
/// checked.
pub async fn produce_with_rill(config: ProducerConfig, load: &ProduceLoad) -> Result<Report, rill_client::Error> {
    let producer = Producer::new(config)?;
    let partitions = partitions_of(producer.client(), &load.topics).await?.len();
    let keys = load.key_set();
    let value = load.value();
    for topic in &load.topics {
        producer.send(Record::to(topic).value(&value[..])).await?.await?;
    }
    let mut progress = Progress::new(load.messages);
    let meter = Meter::start();
    let mut pending: VecDeque<DeliveryFuture> = VecDeque::new();
    for i in 0..load.messages {
        let mut record = Record::to(load.topic_of(i)).value(&value[..]);
        if !keys.is_empty() {
            record.key = Some(&keys[(i % load.keys) as usize]);
        }
        // The non-waiting call first, as a high-volume sender would: no
        // future to build while there is room.
        let delivery = match producer.try_send(record) {
            Ok(delivery) => delivery,
            Err(TrySendError::Failed(error)) => return Err(error),
            Err(TrySendError::QueueFull | TrySendError::NotReady(_)) => producer.send(record).await?,
        };
        pending.push_back(delivery);
        // Outcomes are checked as they arrive, keeping memory flat.
        while pending.front().is_some_and(|d| d.try_result().is_some()) || pending.len() > 200_000 {
            pending.pop_front().expect("checked").await?;
        }
        if i % 10_000 == 0 {
            progress.update(i);
        }
    }
    producer.flush().await?;
    for delivery in pending {
        delivery.await?;
    }
    let report = meter.finish("rill", "produce", load.messages, load.value_bytes, partitions);
    progress.finish();
    producer.close(Duration::from_secs(10)).await?;
    Ok(report)
}

/// What a consume run reads.
#[derive(Debug, Clone)]
pub struct ConsumeLoad {
    /// Topics (must exist and hold at least `messages` records together).
    pub topics: Vec<String>,
    /// Records to read.
    pub messages: u64,
    /// Read as a member of this group (subscribe); without one, every
    /// partition is assigned and read from the start.
    pub group: Option<String>,
}

/// Reads `load` with Rill and measures it from the moment the consumer is
/// created (`rill perf consume` and the benchmarks run this). The report's
/// `first_record_s` is the time to the first record (joining the group
/// included). Values are summed over so that none is left unread.
pub async fn consume_with_rill(config: ConsumerConfig, load: &ConsumeLoad) -> Result<Report, rill_client::Error> {
    let probe = rill_client::Client::new(config.client().clone())?;
    let all = partitions_of(&probe, &load.topics).await?;
    let partitions = all.len();
    let mut progress = Progress::new(load.messages);
    let meter = Meter::start();
    let mut consumer = match &load.group {
        Some(group) => {
            let consumer = Consumer::new(config.group(group))?;
            let topics: Vec<&str> = load.topics.iter().map(String::as_str).collect();
            consumer.subscribe(&topics)?;
            consumer
        }
        None => {
            let consumer = Consumer::new(config)?;
            consumer.assign(&all);
            consumer
        }
    };
    let mut first_record = None;
    let mut value_bytes = 0usize;
    let mut read = 0u64;
    let mut checksum = 0u64;
    while read < load.messages {
        let record = consumer.recv().await?;
        first_record.get_or_insert_with(|| meter.elapsed());
        if let Some(value) = &record.value {
            value_bytes = value.len();
            checksum = checksum.wrapping_add(u64::from(value.first().copied().unwrap_or(0)));
        }
        read += 1;
        if read.is_multiple_of(10_000) {
            progress.update(read);
        }
    }
    let mut report = meter.finish("rill", "consume", read, value_bytes, partitions);
    report.extra.push(("first_record_s".into(), first_record.unwrap_or_default().as_secs_f64()));
    progress.finish();
    std::hint::black_box(checksum);
    consumer.close(Duration::from_secs(10)).await?;
    Ok(report)
}

/// Makes `count` fresh topics of `partitions` each, named
/// `{prefix}-{stamp}-{i}`, for a measured run to use and
/// [`delete_topics`] to remove.
pub async fn create_topics(
    client: &rill_client::Client,
    prefix: &str,
    count: usize,
    partitions: i32,
) -> Result<Vec<String>, rill_client::Error> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{stamp}-{i}")).collect();
    let new: Vec<rill_client::NewTopic> = names.iter().map(|n| rill_client::NewTopic::new(n, partitions)).collect();
    // In slices: a broker may cap how many topics one request creates.
    for chunk in new.chunks(50) {
        client.admin().create_topics(chunk).await?;
    }
    Ok(names)
}

/// Deletes topics [`create_topics`] made.
pub async fn delete_topics(client: &rill_client::Client, topics: &[String]) -> Result<(), rill_client::Error> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for chunk in names.chunks(50) {
        client.admin().delete_topics(chunk).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_and_measures_cpu() {
        let meter = Meter::start();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let mut report = meter.finish("rill", "produce", 1000, 100, 6);
        report.extra.push(("first_record_s".into(), 0.25));
        assert!(report.cpu_user_s + report.cpu_sys_s >= 0.0);
        assert!(report.max_rss_kb > 0);
        let line = report.to_json();
        assert!(!line.contains('\n'));
        let back = Report::from_json(&line).unwrap();
        assert_eq!((back.client.as_str(), back.scenario.as_str(), back.messages), ("rill", "produce", 1000));
        assert_eq!(back.extra, [("first_record_s".to_owned(), 0.25)]);
        assert!((back.msgs_per_s - report.msgs_per_s).abs() < 1.0);
        assert_eq!(back, report, "the whole report, exactly");

        // Names that need escaping survive; what is not a report is None.
        report.client = "a \"quoted\", comma: client".into();
        assert_eq!(Report::from_json(&report.to_json()).unwrap().client, report.client);
        for bad in ["", "{}", "[1]", "not json", r#"{"client":"rill"}"#] {
            assert_eq!(Report::from_json(bad), None, "{bad:?}");
        }
    }
}
