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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use rill_client::consumer::{Consumer, ConsumerConfig};
use rill_client::kafka_protocol::protocol::StrBytes;
use rill_client::producer::{Producer, ProducerConfig};
use rill_client::records::RecordHeader;
use rill_client::{ConfigError, TopicScope};
use tracing::info;

use crate::serde::{DefaultSerde, Serde, SerdeError};

mod budget;
mod deliveries;
mod liveness;
mod metrics;
mod run;
mod schedule;
mod source;
mod trace;

pub use schedule::{Keyless, Order};

pub use metrics::{Health, Latency, LatencySnapshot, Metrics, MetricsSnapshot, PartitionMetrics, Stuck};

/// An error from the user's function.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to do with a record that cannot be processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorTolerance {
    /// Stop the processor with the error (Kafka Connect's
    /// `errors.tolerance=none`).
    Stop,
    /// Skip the record: counted and logged with its topic, partition and
    /// offset (`errors.tolerance=all`).
    Skip,
    /// Forward the raw record to this topic, with headers naming the error
    /// and the source, and go on.
    DeadLetter(String),
}

/// The stages a record goes through, each with its own
/// [`ErrorTolerance`] ([`ProcessorBuilder::error_tolerance`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Reading the input's key and value (and input that cannot be read
    /// at all: a corrupt batch, one too large to fetch).
    Deserialize,
    /// The user's function, after its retries ([`Retry`]).
    Function,
    /// Writing an output's key and value.
    Serialize,
    /// Sending an output: refused by the producer, or not delivered after
    /// the producer's retries.
    Produce,
}

impl Stage {
    /// Its name, as the `rill.error.stage` header of a dead letter says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Deserialize => "deserialize",
            Stage::Function => "function",
            Stage::Serialize => "serialize",
            Stage::Produce => "produce",
        }
    }
}

/// How often the function is tried on a record before its error goes to
/// the function stage's [`ErrorTolerance`], how long to wait between
/// tries, and how long one try may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    timeout: Option<Duration>,
}

impl Default for Retry {
    /// One attempt, no timeout.
    fn default() -> Self {
        Retry {
            attempts: 1,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            timeout: None,
        }
    }
}

impl Retry {
    /// Up to `attempts` tries (at least 1), 100 ms after the first failure,
    /// doubling up to 10 s, each spread by ±20 %.
    pub fn attempts(attempts: u32) -> Self {
        Retry { attempts: attempts.max(1), ..Retry::default() }
    }

    /// The wait after the first failure, doubling per failure up to `max`.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// A try of an async or blocking function that takes longer fails with
    /// a timeout (a blocking call's thread runs on: it cannot be stopped).
    /// A plain function is not timed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How many tries.
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait after `failures` failed tries (1 or more), with `jitter`
    /// uniform in `[0, 1)`.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        rill_client::net::backoff::delay(self.initial_backoff, self.max_backoff, failures.saturating_sub(1), jitter)
    }
}

/// A try of the function took longer than [`Retry::timeout`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("the call did not finish within {0:?}")]
pub struct TimedOut(pub Duration);

/// What a crash may cost ([`ProcessorBuilder::processing_guarantee`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// Every input's outputs are delivered before its offset is committed;
    /// after a crash some inputs are processed again (duplicates).
    #[default]
    AtLeastOnce,
    /// Outputs and input offsets commit in one transaction: read_committed
    /// readers see each input's outputs exactly once.
    ExactlyOnce,
}

/// Which input headers an output carries on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassHeaders {
    /// The W3C trace context: an input's `traceparent` is the remote
    /// parent of the record's span, and each output gets a `traceparent`
    /// naming that span, and the input's `tracestate`, unless the function
    /// set them. The default.
    #[default]
    Trace,
    /// Every input header (the trace context as for `Trace`), before the
    /// output's own.
    All,
    /// None: outputs carry only their own headers, and no trace context
    /// is read.
    None,
}

/// A record header: a key (keys may repeat within a record) and a value
/// that may be null. Input and output records carry the same type; an
/// input's headers share the fetched bytes (nothing is copied per record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    key: StrBytes,
    value: Option<Bytes>,
}

impl Header {
    /// A header with this key and value.
    pub fn new(key: impl Into<String>, value: Option<&[u8]>) -> Self {
        Header { key: StrBytes::from_string(key.into()), value: value.map(Bytes::copy_from_slice) }
    }

    /// An input record's header, sharing its bytes.
    pub(crate) fn of_record(header: &RecordHeader) -> Self {
        Header { key: header.key.clone(), value: header.value.clone() }
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The value; `None` is a null value, not an empty one.
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
}

/// An input record, typed.
#[derive(Debug, Clone)]
pub struct Input<K, V> {
    /// The key.
    pub key: K,
    /// The value.
    pub value: V,
    /// Headers in wire order; keys may repeat.
    pub headers: Vec<Header>,
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
    /// Headers, in the order they are sent.
    pub headers: Vec<Header>,
    /// A partition, instead of the partitioner's choice.
    pub partition: Option<i32>,
    /// A topic, instead of the processor's output topic: one input may
    /// fan out to several topics. Every output's delivery counts before
    /// its input's offset is stored, whichever topic it went to.
    pub topic: Option<Arc<str>>,
}

impl<K, V> Output<K, V> {
    /// An output with this key and value.
    pub fn new(key: K, value: V) -> Self {
        Output { key, value, headers: Vec::new(), partition: None, topic: None }
    }

    /// An output to `topic` rather than the output topic.
    pub fn to(topic: impl Into<Arc<str>>, key: K, value: V) -> Self {
        Output { topic: Some(topic.into()), ..Output::new(key, value) }
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: Option<&[u8]>) -> Self {
        self.headers.push(Header::new(key, value));
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

type Outputs<K, V> = Result<Vec<Output<K, V>>, BoxError>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type SyncFn<InK, InV, OutK, OutV> = dyn Fn(Input<InK, InV>) -> Outputs<OutK, OutV> + Send + Sync;
type AsyncFn<InK, InV, OutK, OutV> = dyn Fn(Input<InK, InV>) -> BoxFuture<Outputs<OutK, OutV>> + Send + Sync;
type SourceFn<OutK, OutV> = dyn Fn() -> BoxFuture<Outputs<OutK, OutV>> + Send + Sync;

/// The user's function, in one of its three forms.
enum Function<InK, InV, OutK, OutV> {
    /// Called inline, one record at a time.
    Sync(Arc<SyncFn<InK, InV, OutK, OutV>>),
    /// Up to `concurrency` calls under way, ordered by `order`.
    Async { call: Arc<AsyncFn<InK, InV, OutK, OutV>>, concurrency: usize, order: Order },
    /// No input: called again and again.
    Source(Arc<SourceFn<OutK, OutV>>),
}

impl<InK, InV, OutK, OutV> Clone for Function<InK, InV, OutK, OutV> {
    fn clone(&self) -> Self {
        match self {
            Function::Sync(f) => Function::Sync(f.clone()),
            Function::Async { call, concurrency, order } => {
                Function::Async { call: call.clone(), concurrency: *concurrency, order: order.clone() }
            }
            Function::Source(f) => Function::Source(f.clone()),
        }
    }
}

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
    /// Part of an input partition cannot be read (a corrupt batch, one
    /// larger than a fetch may take) and the consume-error tolerance is
    /// `None`.
    #[error("cannot read {topic}/{partition} from offset {offset} (to {skip_to}): {error}")]
    Unreadable {
        /// The input topic.
        topic: String,
        /// The input partition.
        partition: i32,
        /// The first offset that cannot be read.
        offset: i64,
        /// Where reading could go on.
        skip_to: i64,
        /// What is wrong.
        #[source]
        error: rill_client::Error,
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
    /// The source failed and the function tolerance is `None`.
    #[error("the source failed: {0}")]
    Source(BoxError),
    /// An output of the source could not be serialized.
    #[error("cannot write an output of the source: {0}")]
    SourceOutput(SerdeError),
    /// An output of the source was not delivered, retries included.
    #[error("an output of the source was not delivered: {0}")]
    SourceDelivery(rill_client::Error),
    /// No broker answered before the processor could start.
    #[error("no broker of {bootstrap} answered within {after:?}: {error}")]
    Unreachable {
        /// The bootstrap servers.
        bootstrap: String,
        /// How long it tried.
        after: Duration,
        /// The last error.
        error: rill_client::Error,
    },
    /// A dead letter was not delivered (or refused by the producer): its
    /// input and everything after it in that partition stay unstored.
    #[error("the dead letter of {topic}/{partition}@{offset} was not delivered to {dead_letter_topic}: {error}")]
    DeadLetter {
        /// The input topic.
        topic: Box<str>,
        /// The input partition.
        partition: i32,
        /// The input offset.
        offset: i64,
        /// Where it was sent.
        dead_letter_topic: Box<str>,
        /// The producer's error.
        error: rill_client::Error,
    },
    /// An output was not delivered, retries included, and the produce
    /// stage's tolerance is `Stop`. Its input and everything after it in
    /// that partition stay unstored.
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

/// Builds a [`Processor`].
#[must_use = "a builder does nothing until build()"]
pub struct ProcessorBuilder<InK, InV, OutK, OutV> {
    name: Option<String>,
    bootstrap: Option<String>,
    input: Option<String>,
    output: Option<String>,
    consume_tolerance: ErrorTolerance,
    function_tolerance: ErrorTolerance,
    serialize_tolerance: ErrorTolerance,
    produce_tolerance: ErrorTolerance,
    retry: Retry,
    function: Option<Function<InK, InV, OutK, OutV>>,
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
    startup_timeout: Duration,
    order: Order,
    max_buffer_bytes: usize,
    acknowledge: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    stuck_timeout: Duration,
    properties: Vec<(String, String)>,
    pass_headers: PassHeaders,
    guarantee: Guarantee,
    commit_interval: Duration,
}

impl<InK, InV, OutK, OutV> std::fmt::Debug for ProcessorBuilder<InK, InV, OutK, OutV> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorBuilder").field("name", &self.name).field("input", &self.input).finish_non_exhaustive()
    }
}

/// The number the last setting of `key` says, if it is one (a bad one is
/// the client config's to refuse).
fn last_number<T: std::str::FromStr>(properties: &[(String, String)], key: &str) -> Option<T> {
    properties.iter().rev().find(|(k, _)| k == key).and_then(|(_, value)| value.trim().parse().ok())
}

/// Whether a property is the processor's own ([`ProcessorBuilder::property`]):
/// `processor.*`, `processing.guarantee` and `commit.interval.ms` (Kafka
/// Streams' names), as opposed to a consumer's or a producer's.
pub fn is_processor_property(key: &str) -> bool {
    key.starts_with("processor.") || matches!(key, "processing.guarantee" | "commit.interval.ms")
}

/// Settings the processor owns: overriding them would break its guarantee.
const OWNED_CONSUMER_KEYS: &[&str] =
    &["enable.auto.offset.store", "enable.auto.commit", "group.id", "group.instance.id", "client.id"];
const OWNED_PRODUCER_KEYS: &[&str] = &["enable.idempotence", "client.id", "transactional.id"];

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
            consume_tolerance: ErrorTolerance::Stop,
            function_tolerance: ErrorTolerance::Stop,
            serialize_tolerance: ErrorTolerance::Stop,
            produce_tolerance: ErrorTolerance::Stop,
            retry: Retry::default(),
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
            startup_timeout: Duration::from_secs(30),
            order: Order::Input,
            max_buffer_bytes: 64 << 20,
            acknowledge: None,
            stuck_timeout: Duration::from_secs(60),
            properties: Vec::new(),
            pass_headers: PassHeaders::Trace,
            guarantee: Guarantee::AtLeastOnce,
            commit_interval: Duration::from_millis(100),
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

    /// What to do with a record that fails at `stage` (default
    /// [`ErrorTolerance::Stop`] for every stage): stop the processor with
    /// the record's input not stored, skip it (logged and counted; the
    /// input counts as done), or dead-letter it: the raw input record goes
    /// to the topic with headers naming the stage, the error, the attempts
    /// and the source (`rill.error.stage`, `rill.error.kind`,
    /// `rill.error.message`, `rill.error.attempts`, `rill.source.topic`,
    /// `.partition`, `.offset`, `.timestamp`), and the input is done once
    /// its dead letter is delivered. A dead letter that cannot be delivered
    /// stops the processor with its input not stored
    /// ([`ProcessorError::DeadLetter`]). At the produce stage each output
    /// that fails is a dead letter of its input.
    pub fn error_tolerance(mut self, stage: Stage, tolerance: ErrorTolerance) -> Self {
        *match stage {
            Stage::Deserialize => &mut self.consume_tolerance,
            Stage::Function => &mut self.function_tolerance,
            Stage::Serialize => &mut self.serialize_tolerance,
            Stage::Produce => &mut self.produce_tolerance,
        } = tolerance;
        self
    }

    /// What to do with input that cannot be deserialized: the tolerance of
    /// [`Stage::Deserialize`].
    pub fn consume_error_tolerance(self, tolerance: ErrorTolerance) -> Self {
        self.error_tolerance(Stage::Deserialize, tolerance)
    }

    /// What to do when the function returns an error (after its retries):
    /// the tolerance of [`Stage::Function`].
    pub fn function_error_tolerance(self, tolerance: ErrorTolerance) -> Self {
        self.error_tolerance(Stage::Function, tolerance)
    }

    /// Tries the function again on an error or a timeout, as `retry` says,
    /// before the function stage's tolerance applies. A plain function's
    /// retries wait on the processor's task (every partition waits); an
    /// async function's wait in its call, other calls going on.
    pub fn function_retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// The function: an input to zero, one or many outputs (see
    /// [`IntoOutputs`]). It runs on the processor's task, between records:
    /// it must not block (a file, a database driver, long CPU work). Give
    /// such a function to [`Self::blocking_function`], and one that awaits
    /// to [`Self::async_function`].
    pub fn function<R: IntoOutputs<OutK, OutV>>(
        mut self,
        function: impl Fn(Input<InK, InV>) -> R + Send + Sync + 'static,
    ) -> Self {
        self.function = Some(Function::Sync(Arc::new(move |input| function(input).into_outputs())));
        self
    }

    /// An async function, for one that calls services: up to `concurrency`
    /// calls run at once (at least 1); each input partition's outputs are
    /// still sent in input order, and an input is done only when its call
    /// and all its outputs are.
    pub fn async_function<R, Fut>(
        mut self,
        concurrency: usize,
        function: impl Fn(Input<InK, InV>) -> Fut + Send + Sync + 'static,
    ) -> Self
    where
        R: IntoOutputs<OutK, OutV> + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let call: Arc<AsyncFn<InK, InV, OutK, OutV>> =
            Arc::new(move |input| function(input).map(IntoOutputs::into_outputs).boxed());
        self.function = Some(Function::Async { call, concurrency: concurrency.max(1), order: Order::Input });
        self
    }

    /// How the calls of an async or blocking function are ordered. The default, [`Order::Input`], overlaps calls
    /// and sends each partition's outputs in input order;
    /// [`Order::Key`] runs one call at a time per key, so a slow key holds
    /// back only itself. Under `Partition` and `Key` the processor takes
    /// records while those it holds are under
    /// [`Self::max_buffer_bytes`], so that calls of other keys and
    /// partitions start while one waits (the consumer hands records out a
    /// fetched chunk at a time, one partition's, often thousands); under
    /// `Input` and `Unordered` it holds at most the concurrency. The
    /// stored offset stays the contiguous prefix of done records. No effect on [`Self::function`].
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// A plain function that may block: each call runs on tokio's
    /// blocking thread pool (`spawn_blocking`), up to `concurrency` at once
    /// (at least 1), so the runtime's worker threads stay free. Order and
    /// offsets as for [`Self::async_function`]; a call that panics is a
    /// panic of the processor's task, as it is for [`Self::function`].
    pub fn blocking_function<R>(
        self,
        concurrency: usize,
        function: impl Fn(Input<InK, InV>) -> R + Send + Sync + 'static,
    ) -> Self
    where
        R: IntoOutputs<OutK, OutV> + 'static,
    {
        let function = Arc::new(function);
        self.async_function(concurrency, move |input| {
            let function = function.clone();
            async move {
                match tokio::task::spawn_blocking(move || function(input).into_outputs()).await {
                    Ok(outputs) => outputs,
                    Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
                    // The runtime is shutting down.
                    Err(failed) => Err(Box::new(failed) as BoxError),
                }
            }
        })
    }

    /// Source mode: no input topic; the function is called again and again
    /// (one call at a time, waiting when the producer's buffer is full) and
    /// what it returns is produced. A call that returns nothing delays the
    /// next by 10 ms; a source that waits for data should await inside.
    /// The function error tolerance covers its errors (a dead letter then
    /// carries only the error headers).
    pub fn source<R, Fut>(mut self, source: impl Fn() -> Fut + Send + Sync + 'static) -> Self
    where
        R: IntoOutputs<OutK, OutV> + 'static,
        Fut: Future<Output = R> + Send + 'static,
    {
        let call: Arc<SourceFn<OutK, OutV>> = Arc::new(move || source().map(IntoOutputs::into_outputs).boxed());
        self.function = Some(Function::Source(call));
        self
    }

    /// Source mode: tells the source which of its outputs were delivered.
    /// Calls of the source are numbered from 0 in the order they are made;
    /// `acknowledge(n)` says that every output of every call before `n` was
    /// delivered (a call that returned nothing or whose error was skipped
    /// is done at once; one dead-lettered, when its dead letter is). `n`
    /// only grows, and comes from the processor's task: keep it short (a
    /// channel send, an atomic store). A source that reads from elsewhere
    /// acknowledges there what is now safe in Kafka.
    pub fn acknowledge(mut self, acknowledge: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.acknowledge = Some(Arc::new(acknowledge));
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
    /// before giving them up (default 30 s; later outcomes store nothing,
    /// and a later failure stops nothing). It must be shorter than
    /// `max.poll.interval.ms`, the longest the group waits for the member
    /// to rejoin; `build` checks.
    pub fn revoke_timeout(mut self, timeout: Duration) -> Self {
        self.revoke_timeout = timeout;
        self
    }

    /// One budget for the bytes (keys, values, headers) the processor
    /// holds (default 64 MiB): records fetched (a quarter of it is the
    /// consumer's prefetch, `queued.max.messages.kbytes`, unless set),
    /// records taken and not done, and outputs sent and not delivered
    /// (what the prefetch leaves, at least a quarter of the budget).
    /// Over it, the input partitions holding the most are paused (the
    /// consumer stops fetching them) until what is held is back under
    /// three quarters of it; the loop never blocks waiting for room (the
    /// producer's `buffer.memory` is the budget unless set). Checked every
    /// 50 ms, so it can be passed by what arrives in between. Under
    /// `Partition` and `Key` order it also bounds the records taken.
    pub fn max_buffer_bytes(mut self, bytes: usize) -> Self {
        self.max_buffer_bytes = bytes.max(1);
        self
    }

    /// A partition whose oldest unfinished input has been so for longer
    /// than this is reported by [`Processor::health`] as stuck, logged at
    /// warn and counted (default 60 s).
    pub fn stuck_timeout(mut self, timeout: Duration) -> Self {
        self.stuck_timeout = timeout;
        self
    }

    /// Which input headers outputs carry on (default
    /// [`PassHeaders::Trace`]: the W3C trace context).
    pub fn pass_headers(mut self, pass: PassHeaders) -> Self {
        self.pass_headers = pass;
        self
    }

    /// A processor setting by name, as a configuration file holds it:
    /// `processor.stuck.timeout.ms` ([`Self::stuck_timeout`]) and
    /// `processor.max.buffer.bytes` ([`Self::max_buffer_bytes`]). An
    /// unknown key or a bad value is refused at `build`.
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    /// At least once (the default: outputs are delivered, then their inputs'
    /// offsets are committed; a crash repeats some outputs), or exactly
    /// once (`processing.guarantee=exactly_once`): outputs, dead letters and
    /// the input offsets commit together in one transaction per
    /// [`Self::commit_interval`], so read_committed readers see each
    /// input's outputs once whatever crashes. Needs brokers that do
    /// transactions; the output producer's `transactional.id` is the
    /// processor's name and instance id, and its consumer reads
    /// read_committed.
    pub fn processing_guarantee(mut self, guarantee: Guarantee) -> Self {
        self.guarantee = guarantee;
        self
    }

    /// With exactly once, how often the transaction commits
    /// (`commit.interval.ms`, default 100 ms as Kafka Streams): each commit
    /// first lets every record taken finish and its outputs be written.
    pub fn commit_interval(mut self, interval: Duration) -> Self {
        self.commit_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long shutting down may take in all (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long `run` waits for a first answer from the cluster before it
    /// fails with [`ProcessorError::Unreachable`] (default 30 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Checks the settings.
    pub fn build(mut self) -> Result<Processor<InK, InV, OutK, OutV>, ConfigError> {
        for (key, value) in std::mem::take(&mut self.properties) {
            let number = || {
                value.trim().parse::<u64>().map_err(|_| ConfigError::InvalidValue {
                    key: key.clone(),
                    value: value.clone(),
                    reason: "expected a whole number".into(),
                })
            };
            match key.as_str() {
                "processor.stuck.timeout.ms" => self.stuck_timeout = Duration::from_millis(number()?),
                "processor.max.buffer.bytes" => {
                    self.max_buffer_bytes = usize::try_from(number()?).unwrap_or(usize::MAX).max(1);
                }
                "processing.guarantee" => {
                    self.guarantee = match value.trim() {
                        "at_least_once" => Guarantee::AtLeastOnce,
                        "exactly_once" | "exactly_once_v2" => Guarantee::ExactlyOnce,
                        _ => {
                            return Err(ConfigError::InvalidValue {
                                key,
                                value,
                                reason: "expected at_least_once or exactly_once".into(),
                            });
                        }
                    };
                }
                "commit.interval.ms" => self.commit_interval = Duration::from_millis(number()?.max(1)),
                _ => return Err(ConfigError::UnknownKey { key }),
            }
        }
        let missing = |what: &str| ConfigError::Invalid(format!("the processor needs {what}"));
        let name = self.name.ok_or_else(|| missing("a name"))?;
        let bootstrap = self.bootstrap.ok_or_else(|| missing("bootstrap servers"))?;
        let output = self.output.ok_or_else(|| missing("an output topic"))?;
        let mut function = self.function.ok_or_else(|| missing("a function"))?;
        if let Function::Async { order, .. } = &mut function {
            *order = self.order;
        }
        let input = match (&function, self.input) {
            (Function::Source(_), Some(topic)) => {
                return Err(ConfigError::Invalid(format!("a source has no input topic (got `{topic}`)")));
            }
            (Function::Source(_), None) => None,
            (_, None) => return Err(missing("an input topic (or a source)")),
            (_, input) => input,
        };
        if self.acknowledge.is_some() && input.is_some() {
            return Err(ConfigError::Invalid(
                "acknowledge is for a source; a processor's input is acknowledged by its committed offsets".into(),
            ));
        }
        if self.guarantee == Guarantee::ExactlyOnce && input.is_none() {
            return Err(ConfigError::Invalid(
                "exactly_once commits input offsets with the outputs; a source has no input".into(),
            ));
        }
        if let ErrorTolerance::DeadLetter(topic) = &self.consume_tolerance
            && input.is_none()
        {
            return Err(ConfigError::Invalid(format!("a source reads nothing to dead-letter to `{topic}`")));
        }
        for (key, _) in &self.consumer_properties {
            if OWNED_CONSUMER_KEYS.contains(&key.as_str())
                || (self.guarantee == Guarantee::ExactlyOnce && key == "isolation.level")
            {
                return Err(ConfigError::Invalid(format!("`{key}` is set by the processor")));
            }
        }
        // A revocation is drained before the member rejoins; the group
        // waits for the rejoin at most max.poll.interval.ms (the rebalance
        // timeout), so a longer drain would cost the member its place.
        let poll_interval = last_number(&self.consumer_properties, "max.poll.interval.ms")
            .map_or(self.max_poll_interval, Duration::from_millis);
        if self.revoke_timeout >= poll_interval {
            return Err(ConfigError::Invalid(format!(
                "revoke_timeout ({:?}) must be shorter than max.poll.interval.ms ({poll_interval:?}): the group \
                 removes a member that takes longer than that to rejoin, and a revocation is drained first",
                self.revoke_timeout
            )));
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
            serialize_tolerance: self.serialize_tolerance,
            produce_tolerance: self.produce_tolerance,
            retry: self.retry,
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
            startup_timeout: self.startup_timeout,
            max_buffer_bytes: self.max_buffer_bytes,
            acknowledge: self.acknowledge,
            stuck_timeout: self.stuck_timeout,
            pass_headers: self.pass_headers,
            guarantee: self.guarantee,
            commit_interval: self.commit_interval,
            metrics: Arc::new(Metrics::default()),
        };
        // Every setting is checked now, not at `run`.
        let _checked = processor.consumer_config("check")?;
        let _checked = processor.producer_config("check")?;
        Ok(processor)
    }
}

/// Aborts the producer when dropped armed: `run`'s future dropped before
/// it ended.
struct AbortOnDrop(Option<Producer>);

impl AbortOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(producer) = self.0.take() {
            producer.abort();
        }
    }
}

/// A processor started with [`Processor::spawn`].
///
/// Dropping it ends the processor's task at once, as [`Self::abort`] does:
/// call [`Self::stop`] for a clean end.
#[derive(Debug)]
#[must_use = "dropping a RunningProcessor aborts it: call stop() for a clean end"]
pub struct RunningProcessor {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ProcessorError>>,
    metrics: Arc<Metrics>,
}

impl RunningProcessor {
    /// Its numbers.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether it makes progress (see [`Metrics::health`]).
    pub fn health(&self) -> Health {
        self.metrics.health()
    }

    /// Whether `run` ended (on an error: [`Self::stop`] returns it).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Ends the task at once, as a crash would: the producer stops without
    /// flushing (outputs not yet delivered are lost), nothing in flight is
    /// awaited, stored or committed (the auto-commits before stay).
    pub async fn abort(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    /// Asks it to stop (drain, commit, close: within the shutdown timeout)
    /// and returns what `run` returned.
    pub async fn stop(self) -> Result<(), ProcessorError> {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// A function between an input and an output topic (see the module docs).
pub struct Processor<InK, InV, OutK, OutV> {
    name: String,
    bootstrap: String,
    input: Option<String>,
    output: String,
    consume_tolerance: ErrorTolerance,
    function_tolerance: ErrorTolerance,
    serialize_tolerance: ErrorTolerance,
    produce_tolerance: ErrorTolerance,
    retry: Retry,
    function: Function<InK, InV, OutK, OutV>,
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
    startup_timeout: Duration,
    max_buffer_bytes: usize,
    acknowledge: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    stuck_timeout: Duration,
    pass_headers: PassHeaders,
    guarantee: Guarantee,
    commit_interval: Duration,
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

    /// Whether it makes progress (see [`Metrics::health`]).
    pub fn health(&self) -> Health {
        self.metrics.health()
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
            // Fetched records count against the buffer budget: a quarter
            // of it (at least one partition's fetch) unless set.
            ("queued.max.messages.kbytes".into(), self.prefetch_kbytes().to_string()),
        ];
        if self.static_membership {
            properties.push(("group.instance.id".into(), instance.to_owned()));
        }
        if self.guarantee == Guarantee::ExactlyOnce {
            // Offsets commit inside the transactions, and only committed
            // input is read.
            properties.push(("enable.auto.commit".into(), "false".into()));
            properties.push(("isolation.level".into(), "read_committed".into()));
        }
        properties.extend(self.consumer_properties.iter().cloned());
        ConsumerConfig::from_properties(properties)
    }

    /// The consumer's prefetch: a quarter of the buffer budget, at least
    /// one partition's fetch (1 MiB unless set).
    fn prefetch_kbytes(&self) -> usize {
        let fetch = last_number(&self.consumer_properties, "max.partition.fetch.bytes").unwrap_or(1 << 20);
        (self.max_buffer_bytes / 4).max(fetch).div_ceil(1024)
    }

    /// What the buffer budget leaves for records taken and outputs in
    /// flight once the consumer's prefetch (as set, or as chosen here) has
    /// its share; at least a quarter of the budget, so that a prefetch set
    /// larger than the budget does not pause everything.
    pub(super) fn held_budget(&self) -> usize {
        let prefetch = last_number::<usize>(&self.consumer_properties, "queued.max.messages.kbytes")
            .unwrap_or_else(|| self.prefetch_kbytes())
            .saturating_mul(1024);
        self.max_buffer_bytes.saturating_sub(prefetch).max(self.max_buffer_bytes / 4).max(1)
    }

    fn producer_config(&self, instance: &str) -> Result<ProducerConfig, ConfigError> {
        let mut properties: Vec<(String, String)> = vec![
            ("bootstrap.servers".into(), self.bootstrap.clone()),
            ("client.id".into(), format!("{}-{instance}", self.name)),
            ("enable.idempotence".into(), "true".into()),
            ("linger.ms".into(), "5".into()),
            // Outputs in flight are bounded by the buffer budget (partitions
            // pause over it): the producer's own buffer must not fill first
            // and block the loop.
            ("buffer.memory".into(), self.max_buffer_bytes.max(1 << 20).to_string()),
        ];
        if self.guarantee == Guarantee::ExactlyOnce {
            // The same instance restarted fences its older self (and aborts
            // what it left open); as Kafka Streams, a transaction open
            // longer than 10 s is aborted by the coordinator.
            properties.push(("transactional.id".into(), format!("{}-{instance}", self.name)));
            properties.push(("transaction.timeout.ms".into(), "10000".into()));
        }
        properties.extend(self.producer_properties.iter().cloned());
        ProducerConfig::from_properties(properties)
    }

    /// Runs until `shutdown` completes (then drains, commits and leaves the
    /// group, unless static, within the shutdown timeout) or until an
    /// error the tolerances do not cover.
    ///
    /// Dropping the future before it ends is a crash: the producer stops at
    /// once (outputs not yet delivered are dropped) and nothing more is
    /// stored or committed.
    pub async fn run(&self, instance_id: &str, shutdown: impl Future<Output = ()>) -> Result<(), ProcessorError> {
        let producer = Producer::new(self.producer_config(instance_id)?)?;
        let crash = AbortOnDrop(Some(producer.clone()));
        let result = self.run_with(instance_id, shutdown, producer).await;
        crash.disarm();
        result
    }

    async fn run_with(
        &self,
        instance_id: &str,
        shutdown: impl Future<Output = ()>,
        producer: Producer,
    ) -> Result<(), ProcessorError> {
        let mut shutdown = std::pin::pin!(shutdown);
        // Nothing starts before a broker answers: an unreachable cluster is
        // an error now, not an endless retry.
        tokio::select! {
            biased;
            () = &mut shutdown => return producer.close(Duration::from_millis(100)).await.map_err(Into::into),
            reached = self.reach(&producer) => reached?,
        }
        if let Function::Source(source) = &self.function {
            info!(target: "rill::processor", name = %self.name, instance = instance_id, output = %self.output,
                "source starting");
            return source::run(self, source.clone(), producer, shutdown).await;
        }
        let input = self.input.as_deref().unwrap_or_default();
        if self.guarantee == Guarantee::ExactlyOnce {
            producer.init_transactions().await?;
            producer.begin_transaction()?;
        }
        let consumer = Consumer::new(self.consumer_config(instance_id)?)?;
        consumer.subscribe(&[input])?;
        info!(target: "rill::processor", name = %self.name, instance = instance_id, input,
            output = %self.output, "processor starting");
        let mut run = run::Run::new(self, consumer, producer);
        let result = run.main_loop(shutdown).await;
        let closed = run.shut_down(result.is_ok()).await;
        result.and(closed)
    }

    /// Runs in a task of its own (on the current tokio runtime) until
    /// [`RunningProcessor::stop`], or until `run` ends with an error.
    /// Dropping the [`RunningProcessor`] is a crash (see
    /// [`RunningProcessor::abort`]); keep it, and stop it.
    pub fn spawn(self, instance_id: impl Into<String>) -> RunningProcessor
    where
        InK: Sync,
        InV: Sync,
        OutK: Sync,
        OutV: Sync,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = self.metrics();
        let instance = instance_id.into();
        let task = tokio::spawn(async move {
            self.run(&instance, async {
                let _ = stopped.await;
            })
            .await
        });
        RunningProcessor { stop, task, metrics }
    }

    /// Waits until a broker answers a metadata request for the topics, up to
    /// the startup timeout.
    async fn reach(&self, producer: &Producer) -> Result<(), ProcessorError> {
        let topics: Vec<String> = self.input.iter().chain([&self.output]).cloned().collect();
        let deadline = tokio::time::Instant::now() + self.startup_timeout;
        loop {
            let attempt = producer.client().refresh_metadata(TopicScope::Named(topics.clone()));
            let error = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(error)) => error,
                Err(_) => rill_client::Error::Timeout { operation: "metadata".into(), after: self.startup_timeout },
            };
            if tokio::time::Instant::now() + Duration::from_millis(200) >= deadline {
                return Err(ProcessorError::Unreachable {
                    bootstrap: self.bootstrap.clone(),
                    after: self.startup_timeout,
                    error,
                });
            }
            tracing::debug!(target: "rill::processor", %error, "no broker answered yet");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serde::Ignore;

    fn builder() -> ProcessorBuilder<Ignore, String, String, String> {
        Processor::<Ignore, String, String, String>::builder()
            .name("p")
            .bootstrap_servers("localhost:9092")
            .input_topic("in")
            .output_topic("out")
            .function(|input| Some(Output::new(String::new(), input.value)))
    }

    fn refused(builder: ProcessorBuilder<Ignore, String, String, String>) -> String {
        builder.build().expect_err("must be refused").to_string()
    }

    #[test]
    fn the_prefetch_takes_its_share_of_the_buffer_budget() {
        let mib = 1 << 20;
        let held = |builder: ProcessorBuilder<Ignore, String, String, String>| builder.build().unwrap().held_budget();
        assert_eq!(held(builder().max_buffer_bytes(64 * mib)), 48 * mib, "a quarter is the prefetch");
        assert_eq!(held(builder().max_buffer_bytes(4 * mib)), 3 * mib, "the prefetch is one fetch at least");
        assert_eq!(
            held(builder().max_buffer_bytes(64 * mib).consumer_property("queued.max.messages.kbytes", "8192")),
            56 * mib,
            "a prefetch as set"
        );
        assert_eq!(
            held(builder().max_buffer_bytes(4 * mib).consumer_property("queued.max.messages.kbytes", "65536")),
            mib,
            "a prefetch over the budget leaves a quarter"
        );
    }

    #[test]
    fn build_checks_every_setting_without_a_broker() {
        assert!(builder().build().is_ok());
        let no_name = ProcessorBuilder::<Ignore, String, String, String>::with_serdes(
            Ignore::serde(),
            String::serde(),
            String::serde(),
            String::serde(),
        )
        .bootstrap_servers("b:1")
        .input_topic("in")
        .output_topic("out")
        .function(|_| None::<Output<String, String>>);
        assert!(refused(no_name).contains("needs a name"));
        assert!(refused(builder().consumer_property("group.id", "g")).contains("`group.id` is set by the processor"));
        assert!(
            refused(builder().producer_property("enable.idempotence", "false")).contains("is set by the processor")
        );
        assert!(refused(builder().consumer_property("linger.msec", "1")).contains("linger.msec"), "unknown keys");
        assert!(refused(builder().acknowledge(|_| {})).contains("acknowledge is for a source"));
        assert!(refused(builder().property("processor.stuck.timeout", "1")).contains("processor.stuck.timeout"));
        assert!(refused(builder().property("processor.max.buffer.bytes", "lots")).contains("whole number"));
        assert_eq!(
            builder().property("processor.stuck.timeout.ms", "1500").build().unwrap().stuck_timeout,
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn exactly_once_is_set_by_property_and_owns_its_settings() {
        for key in ["processing.guarantee", "commit.interval.ms", "processor.max.buffer.bytes"] {
            assert!(is_processor_property(key), "{key}");
        }
        assert!(!is_processor_property("isolation.level") && !is_processor_property("transactional.id"));
        let eos = builder()
            .property("processing.guarantee", "exactly_once")
            .property("commit.interval.ms", "250")
            .build()
            .unwrap();
        assert_eq!((eos.guarantee, eos.commit_interval), (Guarantee::ExactlyOnce, Duration::from_millis(250)));
        let consumer = eos.consumer_config("i").unwrap();
        assert!(format!("{consumer:?}").contains("ReadCommitted"), "{consumer:?}");
        let producer = eos.producer_config("i").unwrap();
        assert!(format!("{producer:?}").contains("transactional_id: Some("), "{producer:?}");
        assert!(refused(builder().property("processing.guarantee", "maybe")).contains("exactly_once"));
        let reads_uncommitted = builder()
            .processing_guarantee(Guarantee::ExactlyOnce)
            .consumer_property("isolation.level", "read_uncommitted");
        assert!(refused(reads_uncommitted).contains("`isolation.level` is set by the processor"));
        assert!(refused(builder().producer_property("transactional.id", "t")).contains("is set by the processor"));
    }

    #[test]
    fn an_input_header_shares_the_fetched_bytes() {
        let fetched = RecordHeader { key: StrBytes::from_string("trace".into()), value: Some(Bytes::from("abc")) };
        let header = Header::of_record(&fetched);
        assert_eq!((header.key(), header.value()), ("trace", Some(&b"abc"[..])));
        assert_eq!(header.key().as_ptr(), fetched.key.as_ptr(), "the key is not copied");
        assert_eq!(header.value().unwrap().as_ptr(), fetched.value.as_ref().unwrap().as_ptr(), "nor the value");
        assert_eq!(Header::new("k", None).value(), None);
    }

    #[test]
    fn a_revocation_drains_within_the_rebalance_timeout() {
        // Defaults: 30 s of draining inside 300 s.
        assert!(builder().build().is_ok());
        let error =
            refused(builder().revoke_timeout(Duration::from_secs(60)).max_poll_interval(Duration::from_secs(60)));
        assert!(error.contains("revoke_timeout (60s) must be shorter than max.poll.interval.ms (60s)"), "{error}");
        // The consumer property counts as well as the builder's setting.
        let error = refused(builder().consumer_property("max.poll.interval.ms", "10000"));
        assert!(error.contains("max.poll.interval.ms (10s)"), "{error}");
        assert!(
            builder()
                .consumer_property("max.poll.interval.ms", "10000")
                .revoke_timeout(Duration::from_secs(5))
                .build()
                .is_ok()
        );
    }
}
