//! The processor: a function between an input and an output topic, with
//! input offsets stored only once every output they caused is delivered.
//!
//! ```text
//!  consumer ──records──▶ deserialize ─▶ function ─▶ serialize ─▶ producer.send
//!     ▲                      │ error: tolerance       │ error: tolerance  │
//!     │                      ▼ (skip / dead letter)   ▼                   ▼
//!     │              OffsetTracker per input partition ◀── delivered ── DeliveryFuture
//!     └── store_offsets(watermark) ◀── contiguous done prefix
//! ```
//!
//! One task runs the loop: it takes the next event from the consumer or
//! the next delivery outcome, whichever comes first. A revocation drains
//! the revoked partitions' outputs (bounded), stores their watermarks and
//! only then lets the rebalance go on (the consumer commits them). A lost
//! partition's state is dropped without storing. Outcomes that arrive for
//! a partition the processor no longer tracks (its tracker was dropped,
//! or replaced after a new assignment) are ignored.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rill_client::consumer::{Consumer, ConsumerConfig, ConsumerHandle, ConsumerRecord, Event};
use rill_client::producer::{DeliveryFuture, Header, Producer, ProducerConfig, Record, RecordMetadata};
use rill_client::records::RecordHeader;
use rill_client::{ConfigError, TopicPartition};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::serde::{DefaultSerde, Serde, SerdeError};
use crate::tracker::OffsetTracker;

/// An error from the user's function.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to do with a record that cannot be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorTolerance {
    /// Stop the processor with the error.
    None,
    /// Skip the record: counted and logged with its topic, partition and
    /// offset.
    All,
    /// Forward the raw record to this topic, with headers naming the error
    /// and the source, and go on.
    DeadLetter(String),
}

/// An input record, typed.
#[derive(Debug, Clone)]
pub struct Input<K, V> {
    /// The key.
    pub key: K,
    /// The value.
    pub value: V,
    /// Headers in wire order; keys may repeat.
    pub headers: Vec<RecordHeader>,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// Where it came from.
    pub topic: Arc<str>,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
}

/// An output record, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Output<K, V> {
    /// The key.
    pub key: K,
    /// The value.
    pub value: V,
    /// Headers.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// A partition, instead of the partitioner's choice.
    pub partition: Option<i32>,
}

impl<K, V> Output<K, V> {
    /// An output with this key and value.
    pub fn new(key: K, value: V) -> Self {
        Output { key, value, headers: Vec::new(), partition: None }
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: Option<&[u8]>) -> Self {
        self.headers.push((key.into(), value.map(Bytes::copy_from_slice)));
        self
    }

    /// Sends it to this partition.
    pub fn to_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }
}

/// What a function may return: nothing (the record is filtered), one
/// output, several, or an error.
pub trait IntoOutputs<K, V> {
    /// The outputs, or the function's error.
    fn into_outputs(self) -> Result<Vec<Output<K, V>>, BoxError>;
}

impl<K, V> IntoOutputs<K, V> for Output<K, V> {
    fn into_outputs(self) -> Result<Vec<Output<K, V>>, BoxError> {
        Ok(vec![self])
    }
}

impl<K, V> IntoOutputs<K, V> for Option<Output<K, V>> {
    fn into_outputs(self) -> Result<Vec<Output<K, V>>, BoxError> {
        Ok(self.into_iter().collect())
    }
}

impl<K, V> IntoOutputs<K, V> for Vec<Output<K, V>> {
    fn into_outputs(self) -> Result<Vec<Output<K, V>>, BoxError> {
        Ok(self)
    }
}

impl<K, V, T: IntoOutputs<K, V>, E: Into<BoxError>> IntoOutputs<K, V> for Result<T, E> {
    fn into_outputs(self) -> Result<Vec<Output<K, V>>, BoxError> {
        self.map_err(Into::into)?.into_outputs()
    }
}

type Function<InK, InV, OutK, OutV> =
    dyn Fn(Input<InK, InV>) -> Result<Vec<Output<OutK, OutV>>, BoxError> + Send + Sync;

/// Why [`Processor::run`] stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessorError {
    /// The settings were rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The Kafka client failed (consumer or producer).
    #[error(transparent)]
    Client(#[from] rill_client::Error),
    /// An input record could not be read and the tolerance is `None`.
    #[error("cannot read {what} of {topic}/{partition}@{offset}: {error}")]
    Deserialize {
        /// `key` or `value`.
        what: &'static str,
        /// The input topic.
        topic: String,
        /// The input partition.
        partition: i32,
        /// The input offset.
        offset: i64,
        /// What was wrong.
        error: SerdeError,
    },
    /// The function failed on a record and the tolerance is `None`.
    #[error("the function failed on {topic}/{partition}@{offset}: {error}")]
    Function {
        /// The input topic.
        topic: String,
        /// The input partition.
        partition: i32,
        /// The input offset.
        offset: i64,
        /// The function's error.
        error: BoxError,
    },
    /// An output could not be serialized.
    #[error("cannot write an output of {topic}/{partition}@{offset}: {error}")]
    Serialize {
        /// The input topic.
        topic: String,
        /// The input partition.
        partition: i32,
        /// The input offset.
        offset: i64,
        /// What was wrong.
        error: SerdeError,
    },
    /// An output (or dead letter) was not delivered, retries included.
    /// Its input and everything after it in that partition stay unstored.
    #[error("an output of {topic}/{partition}@{offset} was not delivered: {error}")]
    Delivery {
        /// The input topic.
        topic: String,
        /// The input partition.
        partition: i32,
        /// The input offset.
        offset: i64,
        /// The producer's error.
        error: rill_client::Error,
    },
}

/// Counters of a running processor.
#[derive(Debug, Default)]
pub struct Metrics {
    consumed: AtomicU64,
    produced: AtomicU64,
    filtered: AtomicU64,
    skipped: AtomicU64,
    dead_lettered: AtomicU64,
    in_flight: AtomicU64,
    partitions: Mutex<HashMap<TopicPartition, PartitionMetrics>>,
}

/// One input partition's numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionMetrics {
    /// The stored offset: everything before it is done.
    pub watermark: Option<i64>,
    /// Records handed to the function and not yet stored.
    pub in_flight: usize,
    /// Records between the watermark and the end of the partition, as
    /// last fetched.
    pub lag: Option<i64>,
}

/// A snapshot of [`Metrics`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Input records received.
    pub consumed: u64,
    /// Outputs delivered.
    pub produced: u64,
    /// Inputs for which the function returned nothing.
    pub filtered: u64,
    /// Inputs skipped on an error (tolerance `All`).
    pub skipped: u64,
    /// Inputs forwarded to the dead-letter topic (delivered).
    pub dead_lettered: u64,
    /// Outputs awaiting delivery.
    pub in_flight: u64,
    /// Per input partition.
    pub partitions: Vec<(TopicPartition, PartitionMetrics)>,
}

impl Metrics {
    /// The numbers now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut partitions: Vec<(TopicPartition, PartitionMetrics)> =
            self.partitions.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect();
        partitions.sort_by(|a, b| a.0.cmp(&b.0));
        MetricsSnapshot {
            consumed: self.consumed.load(Ordering::Relaxed),
            produced: self.produced.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            partitions,
        }
    }
}

/// Builds a [`Processor`].
pub struct ProcessorBuilder<InK, InV, OutK, OutV> {
    name: Option<String>,
    bootstrap: Option<String>,
    input: Option<String>,
    output: Option<String>,
    consume_tolerance: ErrorTolerance,
    function_tolerance: ErrorTolerance,
    function: Option<Arc<Function<InK, InV, OutK, OutV>>>,
    in_key: Arc<dyn Serde<InK>>,
    in_value: Arc<dyn Serde<InV>>,
    out_key: Arc<dyn Serde<OutK>>,
    out_value: Arc<dyn Serde<OutV>>,
    consumer_properties: Vec<(String, String)>,
    producer_properties: Vec<(String, String)>,
    max_poll_interval: Duration,
    offset_reset: String,
    static_membership: bool,
    revoke_timeout: Duration,
    shutdown_timeout: Duration,
}

impl<InK, InV, OutK, OutV> std::fmt::Debug for ProcessorBuilder<InK, InV, OutK, OutV> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorBuilder").field("name", &self.name).field("input", &self.input).finish_non_exhaustive()
    }
}

/// Settings the processor owns: overriding them would break its guarantee.
const OWNED_CONSUMER_KEYS: &[&str] =
    &["enable.auto.offset.store", "enable.auto.commit", "group.id", "group.instance.id", "client.id"];
const OWNED_PRODUCER_KEYS: &[&str] = &["enable.idempotence", "client.id"];

impl<InK, InV, OutK, OutV> ProcessorBuilder<InK, InV, OutK, OutV>
where
    InK: Send + 'static,
    InV: Send + 'static,
    OutK: Send + 'static,
    OutV: Send + 'static,
{
    fn with_serdes(
        in_key: Arc<dyn Serde<InK>>,
        in_value: Arc<dyn Serde<InV>>,
        out_key: Arc<dyn Serde<OutK>>,
        out_value: Arc<dyn Serde<OutV>>,
    ) -> Self {
        ProcessorBuilder {
            name: None,
            bootstrap: None,
            input: None,
            output: None,
            consume_tolerance: ErrorTolerance::None,
            function_tolerance: ErrorTolerance::None,
            function: None,
            in_key,
            in_value,
            out_key,
            out_value,
            consumer_properties: Vec::new(),
            producer_properties: Vec::new(),
            max_poll_interval: Duration::from_secs(300),
            offset_reset: "latest".into(),
            static_membership: true,
            revoke_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// The processor's name: group `{name}-group`, client id
    /// `{name}-{instance}`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub fn bootstrap_servers(mut self, servers: impl Into<String>) -> Self {
        self.bootstrap = Some(servers.into());
        self
    }

    /// The topic to read.
    pub fn input_topic(mut self, topic: impl Into<String>) -> Self {
        self.input = Some(topic.into());
        self
    }

    /// The topic to write.
    pub fn output_topic(mut self, topic: impl Into<String>) -> Self {
        self.output = Some(topic.into());
        self
    }

    /// What to do with input that cannot be deserialized. Default `None`.
    pub fn consume_error_tolerance(mut self, tolerance: ErrorTolerance) -> Self {
        self.consume_tolerance = tolerance;
        self
    }

    /// What to do when the function returns an error. Default `None`.
    pub fn function_error_tolerance(mut self, tolerance: ErrorTolerance) -> Self {
        self.function_tolerance = tolerance;
        self
    }

    /// The function: an input to zero, one or many outputs (see
    /// [`IntoOutputs`]).
    pub fn function<R: IntoOutputs<OutK, OutV>>(
        mut self,
        function: impl Fn(Input<InK, InV>) -> R + Send + Sync + 'static,
    ) -> Self {
        self.function = Some(Arc::new(move |input| function(input).into_outputs()));
        self
    }

    /// Reads input keys with this serde instead of the type's default.
    pub fn input_key_serde(mut self, serde: Arc<dyn Serde<InK>>) -> Self {
        self.in_key = serde;
        self
    }

    /// Reads input values with this serde.
    pub fn input_value_serde(mut self, serde: Arc<dyn Serde<InV>>) -> Self {
        self.in_value = serde;
        self
    }

    /// Writes output keys with this serde.
    pub fn output_key_serde(mut self, serde: Arc<dyn Serde<OutK>>) -> Self {
        self.out_key = serde;
        self
    }

    /// Writes output values with this serde.
    pub fn output_value_serde(mut self, serde: Arc<dyn Serde<OutV>>) -> Self {
        self.out_value = serde;
        self
    }

    /// An extra consumer setting by its librdkafka/Java name. Settings the
    /// processor owns (offset storing and committing, group and client
    /// ids) are rejected at `build`.
    pub fn consumer_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.consumer_properties.push((key.into(), value.into()));
        self
    }

    /// An extra producer setting; `enable.idempotence` and `client.id` are
    /// the processor's.
    pub fn producer_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.producer_properties.push((key.into(), value.into()));
        self
    }

    /// `max.poll.interval.ms`: the longest one record may take. Default 5
    /// minutes.
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.max_poll_interval = interval;
        self
    }

    /// Where to start without a committed offset: `earliest` or `latest`
    /// (default).
    pub fn auto_offset_reset(mut self, reset: impl Into<String>) -> Self {
        self.offset_reset = reset.into();
        self
    }

    /// Whether the instance id is the group's `group.instance.id` (static
    /// membership, default on): a restart within the session timeout
    /// keeps the partitions without a rebalance.
    pub fn static_membership(mut self, enabled: bool) -> Self {
        self.static_membership = enabled;
        self
    }

    /// How long a revocation waits for the revoked partitions' outputs
    /// before giving them up (default 30 s; later outcomes store nothing).
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.revoke_timeout = timeout;
        self
    }

    /// How long shutting down may take in all (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<Processor<InK, InV, OutK, OutV>, ConfigError> {
        let missing = |what: &str| ConfigError::Invalid(format!("the processor needs {what}"));
        let name = self.name.ok_or_else(|| missing("a name"))?;
        let bootstrap = self.bootstrap.ok_or_else(|| missing("bootstrap servers"))?;
        let input = self.input.ok_or_else(|| missing("an input topic"))?;
        let output = self.output.ok_or_else(|| missing("an output topic"))?;
        let function = self.function.ok_or_else(|| missing("a function"))?;
        for (key, _) in &self.consumer_properties {
            if OWNED_CONSUMER_KEYS.contains(&key.as_str()) {
                return Err(ConfigError::Invalid(format!("`{key}` is set by the processor")));
            }
        }
        for (key, _) in &self.producer_properties {
            if OWNED_PRODUCER_KEYS.contains(&key.as_str()) {
                return Err(ConfigError::Invalid(format!("`{key}` is set by the processor")));
            }
        }
        let processor = Processor {
            name,
            bootstrap,
            input,
            output,
            consume_tolerance: self.consume_tolerance,
            function_tolerance: self.function_tolerance,
            function,
            in_key: self.in_key,
            in_value: self.in_value,
            out_key: self.out_key,
            out_value: self.out_value,
            consumer_properties: self.consumer_properties,
            producer_properties: self.producer_properties,
            max_poll_interval: self.max_poll_interval,
            offset_reset: self.offset_reset,
            static_membership: self.static_membership,
            revoke_timeout: self.revoke_timeout,
            shutdown_timeout: self.shutdown_timeout,
            metrics: Arc::new(Metrics::default()),
        };
        // Every setting is checked now, not at `run`.
        processor.consumer_config("check")?;
        processor.producer_config("check")?;
        Ok(processor)
    }
}

/// A function between an input and an output topic (see the module docs).
pub struct Processor<InK, InV, OutK, OutV> {
    name: String,
    bootstrap: String,
    input: String,
    output: String,
    consume_tolerance: ErrorTolerance,
    function_tolerance: ErrorTolerance,
    function: Arc<Function<InK, InV, OutK, OutV>>,
    in_key: Arc<dyn Serde<InK>>,
    in_value: Arc<dyn Serde<InV>>,
    out_key: Arc<dyn Serde<OutK>>,
    out_value: Arc<dyn Serde<OutV>>,
    consumer_properties: Vec<(String, String)>,
    producer_properties: Vec<(String, String)>,
    max_poll_interval: Duration,
    offset_reset: String,
    static_membership: bool,
    revoke_timeout: Duration,
    shutdown_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl<InK, InV, OutK, OutV> std::fmt::Debug for Processor<InK, InV, OutK, OutV> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("name", &self.name)
            .field("input", &self.input)
            .field("output", &self.output)
            .finish_non_exhaustive()
    }
}

impl<InK, InV, OutK, OutV> Processor<InK, InV, OutK, OutV>
where
    InK: DefaultSerde,
    InV: DefaultSerde,
    OutK: DefaultSerde,
    OutV: DefaultSerde,
{
    /// A builder using the types' default serdes.
    pub fn builder() -> ProcessorBuilder<InK, InV, OutK, OutV> {
        ProcessorBuilder::with_serdes(InK::serde(), InV::serde(), OutK::serde(), OutV::serde())
    }
}

impl<InK, InV, OutK, OutV> Processor<InK, InV, OutK, OutV>
where
    InK: Send + 'static,
    InV: Send + 'static,
    OutK: Send + 'static,
    OutV: Send + 'static,
{
    /// A builder for types without a default serde.
    pub fn builder_with_serdes(
        in_key: Arc<dyn Serde<InK>>,
        in_value: Arc<dyn Serde<InV>>,
        out_key: Arc<dyn Serde<OutK>>,
        out_value: Arc<dyn Serde<OutV>>,
    ) -> ProcessorBuilder<InK, InV, OutK, OutV> {
        ProcessorBuilder::with_serdes(in_key, in_value, out_key, out_value)
    }

    /// The running numbers (shared: read them while `run` runs).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    fn consumer_config(&self, instance: &str) -> Result<ConsumerConfig, ConfigError> {
        let mut properties: Vec<(String, String)> = vec![
            ("bootstrap.servers".into(), self.bootstrap.clone()),
            ("client.id".into(), format!("{}-{instance}", self.name)),
            ("group.id".into(), format!("{}-group", self.name)),
            ("enable.auto.commit".into(), "true".into()),
            ("enable.auto.offset.store".into(), "false".into()),
            ("auto.offset.reset".into(), self.offset_reset.clone()),
            ("max.poll.interval.ms".into(), self.max_poll_interval.as_millis().to_string()),
        ];
        if self.static_membership {
            properties.push(("group.instance.id".into(), instance.to_owned()));
        }
        properties.extend(self.consumer_properties.iter().cloned());
        ConsumerConfig::from_properties(properties)
    }

    fn producer_config(&self, instance: &str) -> Result<ProducerConfig, ConfigError> {
        let mut properties: Vec<(String, String)> = vec![
            ("bootstrap.servers".into(), self.bootstrap.clone()),
            ("client.id".into(), format!("{}-{instance}", self.name)),
            ("enable.idempotence".into(), "true".into()),
            ("linger.ms".into(), "5".into()),
        ];
        properties.extend(self.producer_properties.iter().cloned());
        ProducerConfig::from_properties(properties)
    }

    /// Runs until `shutdown` completes (then drains, commits and leaves the
    /// group, unless static, within the shutdown timeout) or until an
    /// error the tolerances do not cover.
    pub async fn run(&self, instance_id: &str, shutdown: impl Future<Output = ()>) -> Result<(), ProcessorError> {
        let consumer = Consumer::new(self.consumer_config(instance_id)?)?;
        let producer = Producer::new(self.producer_config(instance_id)?)?;
        consumer.subscribe(&[&self.input])?;
        info!(target: "rill::processor", name = %self.name, instance = instance_id, input = %self.input,
            output = %self.output, "processor starting");
        let mut run = Run {
            processor: self,
            handle: consumer.handle(),
            consumer,
            producer,
            trackers: HashMap::new(),
            generation: 0,
            pending: FuturesUnordered::new(),
        };
        let result = run.main_loop(shutdown).await;
        let closed = run.shut_down(result.is_ok()).await;
        result.and(closed)
    }
}

/// An output on its way: which input it belongs to, and its outcome.
type Pending = Pin<Box<dyn Future<Output = Outcome> + Send>>;

struct Outcome {
    partition: TopicPartition,
    generation: u64,
    offset: i64,
    dead_letter: bool,
    result: Result<RecordMetadata, rill_client::Error>,
}

struct Run<'p, InK, InV, OutK, OutV> {
    processor: &'p Processor<InK, InV, OutK, OutV>,
    consumer: Consumer,
    handle: ConsumerHandle,
    producer: Producer,
    /// Input partition → (generation, tracker). A new assignment gets a new
    /// generation, so outcomes of an older one are recognised and ignored.
    trackers: HashMap<TopicPartition, (u64, OffsetTracker)>,
    generation: u64,
    pending: FuturesUnordered<Pending>,
}

impl<InK, InV, OutK, OutV> Run<'_, InK, InV, OutK, OutV>
where
    InK: Send + 'static,
    InV: Send + 'static,
    OutK: Send + 'static,
    OutV: Send + 'static,
{
    fn metrics(&self) -> &Metrics {
        &self.processor.metrics
    }

    async fn main_loop(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), ProcessorError> {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    info!(target: "rill::processor", "shutdown requested");
                    return Ok(());
                }
                Some(outcome) = self.pending.next(), if !self.pending.is_empty() => self.settle(outcome)?,
                event = self.consumer.next_event() => self.handle_event(event?).await?,
            }
        }
    }

    async fn handle_event(&mut self, event: Event) -> Result<(), ProcessorError> {
        match event {
            Event::Record(record) => self.process(record).await?,
            Event::Assigned(partitions) => {
                for tp in partitions {
                    self.generation += 1;
                    self.trackers.insert(tp, (self.generation, OffsetTracker::new()));
                }
            }
            Event::Revoked(revocation) => {
                let partitions = revocation.partitions().to_vec();
                self.drain(&partitions, self.processor.revoke_timeout).await?;
                self.release(&partitions, true);
                // Dropping the revocation lets the consumer commit what was
                // stored and give the partitions up.
                drop(revocation);
            }
            Event::Lost(partitions) => self.release(&partitions, false),
            Event::Error { partition, error } => {
                if partition.is_none() && !error.is_retriable() {
                    return Err(error.into());
                }
                warn!(target: "rill::processor", ?partition, %error, "consumer error");
            }
            _ => {}
        }
        Ok(())
    }

    /// One input record: read, transform, send; its offset is tracked.
    async fn process(&mut self, record: ConsumerRecord) -> Result<(), ProcessorError> {
        self.metrics().consumed.fetch_add(1, Ordering::Relaxed);
        let tp = record.topic_partition();
        let offset = record.offset;
        let generation = match self.trackers.get(&tp) {
            Some(&(generation, _)) => generation,
            None => {
                // Records come only after their assignment; be safe anyway.
                self.generation += 1;
                self.trackers.insert(tp.clone(), (self.generation, OffsetTracker::new()));
                self.generation
            }
        };
        let processor = self.processor;
        let read = processor.in_key.deserialize(record.key.as_ref()).map_err(|e| ("key", e)).and_then(|key| {
            Ok((key, processor.in_value.deserialize(record.value.as_ref()).map_err(|e| ("value", e))?))
        });
        let (key, value) = match read {
            Ok(read) => read,
            Err((what, error)) => {
                let tolerance = processor.consume_tolerance.clone();
                let message = format!("{what}: {error}");
                return self
                    .tolerate(&tolerance, record, generation, "deserialization", &message, || {
                        ProcessorError::Deserialize {
                            what,
                            topic: tp.topic.clone(),
                            partition: tp.partition,
                            offset,
                            error,
                        }
                    })
                    .await;
            }
        };
        let input = Input {
            key,
            value,
            headers: record.headers.clone(),
            timestamp: record.timestamp,
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
        };
        let outputs = match (processor.function)(input) {
            Ok(outputs) => outputs,
            Err(error) => {
                let tolerance = processor.function_tolerance.clone();
                let message = error.to_string();
                return self
                    .tolerate(&tolerance, record, generation, "function", &message, || ProcessorError::Function {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        offset,
                        error,
                    })
                    .await;
            }
        };
        if outputs.is_empty() {
            self.metrics().filtered.fetch_add(1, Ordering::Relaxed);
        }
        // Serialize everything first: a record whose outputs cannot all be
        // written sends none.
        let mut serialized = Vec::with_capacity(outputs.len());
        for output in &outputs {
            let key = processor.out_key.serialize(&output.key);
            let value = processor.out_value.serialize(&output.value);
            match (key, value) {
                (Ok(key), Ok(value)) => serialized.push((key, value, output)),
                (Err(error), _) | (_, Err(error)) => {
                    return Err(ProcessorError::Serialize {
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        offset: record.offset,
                        error,
                    });
                }
            }
        }
        let count = serialized.len() as u32;
        let mut deliveries = Vec::with_capacity(serialized.len());
        for (key, value, output) in &serialized {
            let headers: Vec<Header<'_>> = output.headers.iter().map(|(k, v)| Header::new(k, v.as_deref())).collect();
            let mut out = Record::to(&processor.output).headers(&headers);
            out.key = key.as_deref();
            out.value = value.as_deref();
            out.partition = output.partition;
            deliveries.push(self.producer.send(out).await?);
        }
        self.track(&tp, generation, record.offset, count)?;
        for delivery in deliveries {
            self.await_delivery(tp.clone(), generation, record.offset, delivery, false);
        }
        Ok(())
    }

    /// Applies an error tolerance to a record that cannot be processed.
    async fn tolerate(
        &mut self,
        tolerance: &ErrorTolerance,
        record: ConsumerRecord,
        generation: u64,
        kind: &str,
        message: &str,
        stop: impl FnOnce() -> ProcessorError,
    ) -> Result<(), ProcessorError> {
        let tp = record.topic_partition();
        match tolerance {
            ErrorTolerance::None => Err(stop()),
            ErrorTolerance::All => {
                warn!(target: "rill::processor", partition = %tp, offset = record.offset, kind, error = message,
                    "record skipped");
                self.metrics().skipped.fetch_add(1, Ordering::Relaxed);
                self.track(&tp, generation, record.offset, 0)
            }
            ErrorTolerance::DeadLetter(topic) => {
                debug!(target: "rill::processor", partition = %tp, offset = record.offset, kind, error = message,
                    "record dead-lettered");
                let partition = record.partition.to_string();
                let offset = record.offset.to_string();
                let timestamp = record.timestamp.to_string();
                let mut headers: Vec<Header<'_>> =
                    record.headers.iter().map(|h| Header::new(&h.key, h.value.as_deref())).collect();
                headers.extend([
                    Header::new("rill.error.kind", Some(kind.as_bytes())),
                    Header::new("rill.error.message", Some(message.as_bytes())),
                    Header::new("rill.source.topic", Some(record.topic.as_bytes())),
                    Header::new("rill.source.partition", Some(partition.as_bytes())),
                    Header::new("rill.source.offset", Some(offset.as_bytes())),
                    Header::new("rill.source.timestamp", Some(timestamp.as_bytes())),
                ]);
                let mut out = Record::to(topic).headers(&headers);
                out.key = record.key.as_deref();
                out.value = record.value.as_deref();
                let delivery = self.producer.send(out).await?;
                self.track(&tp, generation, record.offset, 1)?;
                self.await_delivery(tp, generation, record.offset, delivery, true);
                Ok(())
            }
        }
    }

    fn track(&mut self, tp: &TopicPartition, generation: u64, offset: i64, outputs: u32) -> Result<(), ProcessorError> {
        let Some((current, tracker)) = self.trackers.get_mut(tp) else { return Ok(()) };
        if *current != generation {
            return Ok(());
        }
        match tracker.start(offset, outputs) {
            Ok(Some(watermark)) => self.store(tp, watermark),
            Ok(None) => {}
            Err(error) => warn!(target: "rill::processor", partition = %tp, %error, "offset tracking"),
        }
        self.note_partition(tp);
        Ok(())
    }

    fn await_delivery(
        &mut self,
        partition: TopicPartition,
        generation: u64,
        offset: i64,
        delivery: DeliveryFuture,
        dead_letter: bool,
    ) {
        self.metrics().in_flight.fetch_add(1, Ordering::Relaxed);
        self.pending.push(Box::pin(async move {
            let result = delivery.await;
            Outcome { partition, generation, offset, dead_letter, result }
        }));
    }

    /// A delivery outcome: the input's tracker moves, or the processor stops.
    fn settle(&mut self, outcome: Outcome) -> Result<(), ProcessorError> {
        self.metrics().in_flight.fetch_sub(1, Ordering::Relaxed);
        let Outcome { partition, generation, offset, dead_letter, result } = outcome;
        if let Err(error) = result {
            return Err(ProcessorError::Delivery {
                topic: partition.topic.clone(),
                partition: partition.partition,
                offset,
                error,
            });
        }
        let counter = if dead_letter { &self.metrics().dead_lettered } else { &self.metrics().produced };
        counter.fetch_add(1, Ordering::Relaxed);
        let Some((current, tracker)) = self.trackers.get_mut(&partition) else { return Ok(()) };
        if *current != generation {
            return Ok(()); // an outcome of a partition we gave up meanwhile
        }
        match tracker.delivered(offset) {
            Ok(Some(watermark)) => self.store(&partition, watermark),
            Ok(None) => {}
            Err(error) => warn!(target: "rill::processor", %partition, %error, "offset tracking"),
        }
        self.note_partition(&partition);
        Ok(())
    }

    fn store(&self, tp: &TopicPartition, watermark: i64) {
        if let Err(error) = self.handle.store_offsets(&[(tp.clone(), watermark)]) {
            debug!(target: "rill::processor", partition = %tp, %error, "offset not stored");
        }
    }

    fn note_partition(&self, tp: &TopicPartition) {
        let Some((_, tracker)) = self.trackers.get(tp) else { return };
        let lag = self.handle.high_watermark(tp).zip(tracker.watermark()).map(|(end, mark)| (end - mark).max(0));
        let mut partitions = self.metrics().partitions.lock().unwrap_or_else(|p| p.into_inner());
        partitions.insert(
            tp.clone(),
            PartitionMetrics { watermark: tracker.watermark(), in_flight: tracker.in_flight(), lag },
        );
    }

    /// Waits (up to `timeout`) until `partitions` have no outputs in flight,
    /// settling every outcome that arrives meanwhile.
    async fn drain(&mut self, partitions: &[TopicPartition], timeout: Duration) -> Result<(), ProcessorError> {
        let deadline = Instant::now() + timeout;
        let busy =
            |run: &Self| partitions.iter().any(|tp| run.trackers.get(tp).is_some_and(|(_, t)| t.outputs_awaited() > 0));
        while busy(self) && !self.pending.is_empty() {
            match tokio::time::timeout_at(deadline, self.pending.next()).await {
                Ok(Some(outcome)) => self.settle(outcome)?,
                Ok(None) => break,
                Err(_) => {
                    warn!(target: "rill::processor", ?partitions, "outputs still in flight at the deadline; \
                        their inputs will be processed again by the next owner");
                    break;
                }
            }
        }
        Ok(())
    }

    /// Forgets partitions; with `store`, their watermarks are stored first.
    fn release(&mut self, partitions: &[TopicPartition], store: bool) {
        let processor = self.processor;
        let mut metrics = processor.metrics.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for tp in partitions {
            if let Some((_, tracker)) = self.trackers.remove(tp)
                && store
                && let Some(watermark) = tracker.watermark()
            {
                self.store(tp, watermark);
            }
            metrics.remove(tp);
        }
    }

    /// Drains what is in flight, stores, commits and closes, within the
    /// shutdown timeout. After an error nothing more is awaited: only what
    /// already completed is stored.
    async fn shut_down(mut self, clean: bool) -> Result<(), ProcessorError> {
        let deadline = Instant::now() + self.processor.shutdown_timeout;
        let all: Vec<TopicPartition> = self.trackers.keys().cloned().collect();
        let left = |now: Instant| deadline.saturating_duration_since(now);
        if clean {
            // Flush first: outputs waiting in the producer's buffer are sent.
            let _ = tokio::time::timeout(left(Instant::now()), self.producer.flush()).await;
            self.drain(&all, left(Instant::now())).await?;
        } else {
            while let Some(Some(outcome)) = self.pending.next().now_or_never() {
                if self.settle(outcome).is_err() {
                    break;
                }
            }
        }
        for (tp, (_, tracker)) in &self.trackers {
            if let Some(watermark) = tracker.watermark() {
                self.store(tp, watermark);
            }
        }
        let consumer = self.consumer;
        let closed = consumer.close(left(Instant::now()).max(Duration::from_millis(100))).await;
        let producer_closed = self.producer.close(left(Instant::now()).max(Duration::from_millis(100))).await;
        info!(target: "rill::processor", name = %self.processor.name, "processor stopped");
        closed?;
        producer_closed?;
        Ok(())
    }
}
