//! The measured processing run behind `rill perf process` and the
//! processing benchmark: generated web-log lines in, the web-log processor
//! between the topics, throughput and end-to-end latency out; or keyed
//! records through an async call that takes a set time, under an
//! [`Order`].

use std::sync::Arc;
use std::time::Duration;

use super::{Meter, Report};
use rill_client::producer::{DeliveryFuture, Producer, ProducerConfig, Record};
use rill_client::{ClientConfig, TopicScope};
use tokio::time::Instant;

use crate::weblog;
use rill::{Order, Output, Processor, ProcessorError};

/// What the processor does.
#[derive(Debug, Clone)]
pub enum Work {
    /// The web-log processor (a plain function) over generated log lines.
    WebLog,
    /// One async call per record to a service that answers after `call`
    /// (as a remote lookup would), up to `concurrency` at once, ordered by
    /// `order`.
    /// Input record `i` has the key `key-<k>` and the value `<k>:<n>`,
    /// with `k = i % keys` and `n = i / keys` (that key's count from 0),
    /// padded with `.` to `value_bytes`; each output keeps its input's key
    /// and value. The output topic is kept, for a reader to check.
    Keyed {
        /// How calls are ordered.
        order: Order,
        /// Calls at once.
        concurrency: usize,
        /// How long each call takes.
        call: Duration,
        /// Distinct keys.
        keys: u64,
        /// Values are padded to this many bytes (never cut).
        value_bytes: usize,
    },
}

impl Work {
    /// The key and value of generated record `id`.
    pub fn record(&self, id: u64) -> (Option<String>, String) {
        match self {
            Work::WebLog => (None, weblog::line(id)),
            Work::Keyed { keys, value_bytes, .. } => {
                let keys = (*keys).max(1);
                let (k, n) = (id % keys, id / keys);
                let mut value = format!("{k}:{n}");
                let padding = value_bytes.saturating_sub(value.len());
                value.extend(std::iter::repeat_n('.', padding));
                (Some(format!("key-{k}")), value)
            }
        }
    }
}

/// What a processing run does.
#[derive(Debug, Clone)]
pub struct ProcessLoad {
    /// Bootstrap servers.
    pub bootstrap: String,
    /// The input topic (must exist).
    pub input: String,
    /// The output topic (must exist).
    pub output: String,
    /// Input lines to process (ids `0..messages`).
    pub messages: u64,
    /// With a rate, the lines are written at that many per second while the
    /// processor runs (latency at a steady load); without one, they must be
    /// in the input topic already (throughput).
    pub rate: Option<u64>,
    /// Extra consumer settings.
    pub consumer_properties: Vec<(String, String)>,
    /// Extra producer settings.
    pub producer_properties: Vec<(String, String)>,
    /// Processor settings (`processor.*`).
    pub processor_properties: Vec<(String, String)>,
    /// What the processor does.
    pub work: Work,
    /// The processor's name (its group is `<name>-group`); a fresh one
    /// when `None`.
    pub name: Option<String>,
}

/// Writes generated records of `work` with ids `from..from + count` to
/// `topic`, as fast as the producer takes them or at `rate` per second, and
/// waits for every delivery. With `partitions`, keyless record `id` goes to
/// partition `id % partitions` (even spread; the sticky partitioner can
/// fill one partition with several times its share, more than the mock
/// cluster keeps); keyed records go by their key's hash.
pub async fn feed(
    config: ProducerConfig,
    topic: &str,
    work: &Work,
    (from, count): (u64, u64),
    rate: Option<u64>,
    partitions: Option<i32>,
) -> Result<(), rill_client::Error> {
    let producer = Producer::new(config)?;
    let started = Instant::now();
    let mut pending: std::collections::VecDeque<DeliveryFuture> = std::collections::VecDeque::new();
    for (n, id) in (from..from + count).enumerate() {
        if let Some(rate) = rate {
            // Keep to the schedule: line n leaves at n / rate seconds.
            let due = started + Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
            tokio::time::sleep_until(due).await;
        }
        let (key, value) = work.record(id);
        let mut record = Record::to(topic).value(&value);
        match &key {
            Some(key) => record = record.key(key),
            None => record.partition = partitions.map(|n| (id % n.max(1) as u64) as i32),
        }
        pending.push_back(producer.send(record).await?);
        while pending.front().is_some_and(|d| d.try_result().is_some()) {
            pending.pop_front().expect("checked").await?;
        }
    }
    producer.flush().await?;
    for delivery in pending {
        delivery.await?;
    }
    producer.close(Duration::from_secs(10)).await
}

/// Runs the web-log processor over `load` and measures it from the first
/// input record it receives (joining the group excluded) to the last
/// output delivered. The report's extra fields: `p50_ms`, `p99_ms`,
/// `max_ms` (input CreateTime → output delivered).
pub async fn process_with_rill(load: &ProcessLoad) -> Result<Report, ProcessorError> {
    let client = rill_client::Client::new(ClientConfig::new(&load.bootstrap)?)?;
    let metadata = client.refresh_metadata(TopicScope::Named(vec![load.input.clone()])).await?;
    let partitions = metadata
        .topics
        .get(&load.input)
        .map(|t| t.partitions.len())
        .ok_or_else(|| rill_client::Error::UnknownTopicOrPartition(load.input.clone()))?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let calls = Arc::new(CallTimes::default());
    let builder = Processor::<Option<String>, String, Option<String>, String>::builder()
        .name(load.name.clone().unwrap_or_else(|| format!("rill-perf-{stamp}")))
        .bootstrap_servers(&load.bootstrap)
        .input_topic(&load.input)
        .output_topic(&load.output)
        .auto_offset_reset("earliest")
        .static_membership(false)
        .consumer_property("session.timeout.ms", "6000")
        .consumer_property("heartbeat.interval.ms", "500");
    let mut builder = match &load.work {
        Work::WebLog => builder.function(|input| {
            let output = weblog::process(&input.value)?;
            Some(Output { key: Some(output.key), ..Output::new(None, output.value) })
        }),
        Work::Keyed { order, concurrency, call, .. } => {
            let (call, calls, service) = (*call, calls.clone(), RemoteService::start());
            builder
                .async_function(*concurrency, move |input| {
                    let (calls, service) = (calls.clone(), service.clone());
                    async move {
                        let started = Instant::now();
                        service.call(call).await;
                        calls.took(started.elapsed());
                        Output::new(input.key, input.value)
                    }
                })
                .order(order.clone())
        }
    };
    builder = crate::with_properties(
        builder,
        &load.consumer_properties,
        &load.producer_properties,
        &load.processor_properties,
    );
    let processor = Arc::new(builder.build()?);
    let metrics = processor.metrics();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = processor.clone();
    let mut task = tokio::spawn(async move {
        running
            .run("perf", async {
                let _ = stopped.await;
            })
            .await
    });
    // Wait for a state, or for the processor to stop (with its error).
    macro_rules! wait_for {
        ($what:literal, $done:expr) => {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let snapshot = metrics.snapshot();
                if $done(&snapshot) {
                    break;
                }
                if task.is_finished() {
                    let stopped = joined((&mut task).await);
                    let early = rill_client::Error::Timeout {
                        operation: concat!("the processor stopped while ", $what).into(),
                        after: Duration::ZERO,
                    };
                    return Err(stopped.err().unwrap_or(early.into()));
                }
                if Instant::now() > deadline {
                    let _ = stop.send(());
                    return Err(rill_client::Error::Timeout {
                        operation: $what.into(),
                        after: Duration::from_secs(120),
                    }
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
    }
    wait_for!("waiting for the partitions", |m: &rill::MetricsSnapshot| m.partitions.len() == partitions);
    let feeder = load.rate.map(|rate| {
        let config = rill_client::producer::ProducerConfig::new(ClientConfig::new(&load.bootstrap).expect("checked"));
        let (topic, messages, work) = (load.input.clone(), load.messages, load.work.clone());
        let partitions = i32::try_from(partitions).ok();
        tokio::spawn(async move { feed(config, &topic, &work, (0, messages), Some(rate), partitions).await })
    });
    wait_for!("waiting for the first record", |m: &rill::MetricsSnapshot| m.consumed > 0);
    let meter = Meter::start();
    wait_for!("processing", |m: &rill::MetricsSnapshot| m.produced >= load.messages);
    let value_bytes = load.work.record(load.messages.saturating_sub(1)).1.len();
    let mut report = meter.finish("rill", "process", load.messages, value_bytes, partitions);
    if let Work::Keyed { order, concurrency, call, keys, .. } = &load.work {
        let snapshot = metrics.snapshot();
        report.labels.extend([
            ("order".to_owned(), order_name(order).to_owned()),
            ("output_topic".to_owned(), load.output.clone()),
        ]);
        report.extra.extend([
            ("concurrency".to_owned(), *concurrency as f64),
            ("call_ms".to_owned(), call.as_secs_f64() * 1e3),
            ("keys".to_owned(), *keys as f64),
            // What a call really took (its answer's time plus waking the
            // task) bounds the throughput at concurrency / this.
            ("call_actual_ms".to_owned(), calls.mean().as_secs_f64() * 1e3),
            // Input partitions paused over processor.max.buffer.bytes.
            ("paused".to_owned(), snapshot.paused as f64),
            ("resumed".to_owned(), snapshot.resumed as f64),
        ]);
    }
    let latency = metrics.snapshot().latency;
    report.extra.extend([
        ("p50_ms".to_owned(), latency.p50.as_secs_f64() * 1e3),
        ("p99_ms".to_owned(), latency.p99.as_secs_f64() * 1e3),
        ("max_ms".to_owned(), latency.max.as_secs_f64() * 1e3),
    ]);
    let _ = stop.send(());
    joined(task.await)?;
    if let Some(feeder) = feeder {
        feeder.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    }
    Ok(report)
}

/// A stand-in for the remote service a lookup calls: it answers each call
/// once its time has passed, on a thread of its own, the way a reply from
/// the network wakes its task as soon as it arrives. `tokio::time::sleep`
/// would not do: its timer wheel fires on whole-millisecond ticks and
/// rounds every deadline up to the next one, so a 5 ms sleep takes about
/// 6.3 ms, which no remote service adds.
struct RemoteService {
    calls: std::sync::mpsc::Sender<Pending>,
}

/// A call waiting for its answer.
struct Pending {
    due: std::time::Instant,
    answer: tokio::sync::oneshot::Sender<()>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    /// The earliest due first (a max-heap pops the greatest).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.due.cmp(&self.due)
    }
}

impl RemoteService {
    /// Starts the service's thread; it ends once every handle is dropped
    /// and every call has been answered.
    fn start() -> Arc<RemoteService> {
        let (calls, requests) = std::sync::mpsc::channel::<Pending>();
        std::thread::Builder::new()
            .name("rill-perf-remote".into())
            .spawn(move || {
                use std::sync::mpsc::RecvTimeoutError;
                let mut waiting = std::collections::BinaryHeap::<Pending>::new();
                let mut open = true;
                while open || !waiting.is_empty() {
                    let now = std::time::Instant::now();
                    while waiting.peek().is_some_and(|p| p.due <= now) {
                        // A caller that gave up (timeout, shutdown) is fine.
                        let _ = waiting.pop().expect("peeked").answer.send(());
                    }
                    let next = match waiting.peek() {
                        Some(first) => requests.recv_timeout(first.due.saturating_duration_since(now)),
                        None if open => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
                        None => break,
                    };
                    match next {
                        Ok(pending) => waiting.push(pending),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => {
                            open = false;
                            if let Some(first) = waiting.peek() {
                                std::thread::sleep(first.due.saturating_duration_since(std::time::Instant::now()));
                            }
                        }
                    }
                }
            })
            .expect("a thread for the remote service");
        Arc::new(RemoteService { calls })
    }

    /// A call, answered `took` after it is made.
    async fn call(&self, took: Duration) {
        let (answer, answered) = tokio::sync::oneshot::channel();
        if self.calls.send(Pending { due: std::time::Instant::now() + took, answer }).is_ok() {
            let _ = answered.await;
        }
    }
}

/// How long calls took, summed.
#[derive(Debug, Default)]
struct CallTimes {
    micros: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
}

impl CallTimes {
    fn took(&self, elapsed: Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        self.micros.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn mean(&self) -> Duration {
        use std::sync::atomic::Ordering::Relaxed;
        Duration::from_micros(self.micros.load(Relaxed) / self.count.load(Relaxed).max(1))
    }
}

/// The name of an order, as `rill perf process --order` takes it.
pub fn order_name(order: &Order) -> &'static str {
    match order {
        Order::Partition => "partition",
        Order::Key(rill::Keyless::Partition) => "key",
        Order::Key(rill::Keyless::Unordered) => "key-unordered-keyless",
        Order::Unordered => "unordered",
        _ => "input",
    }
}

/// A task's own result, or its panic carried on.
fn joined<T>(result: Result<T, tokio::task::JoinError>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}
