//! The run loops: records in, outputs out, offsets stored behind them; and
//! the source loop, outputs with no input.
//!
//! One task runs the loop: it takes the next event from the consumer, the
//! next finished call of an async function, or the next delivery outcome,
//! whichever comes first. Calls of an async function are started and
//! emitted as the [`Scheduler`] says (by the [`Order`](super::Order)); every
//! record is begun in its partition's tracker when it is taken, so the
//! stored offset stays the contiguous done prefix whatever order calls
//! finish in. Records are taken from the consumer only while the scheduler
//! has room.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rill_client::TopicPartition;
use rill_client::consumer::{Consumer, ConsumerHandle, ConsumerRecord, Event, Resume};
use rill_client::producer::{DeliveryFuture, Header, Producer, Record, TxnError};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use super::budget::Budget;
use super::deliveries::{Deliveries, Origin, Outcome};
use super::liveness::{Liveness, Seen};
use super::metrics::Stuck;
use super::schedule::{Admit, Held, Id, Order, Scheduler};
use super::trace::{self, TraceParent};
use super::{
    AsyncFn, BoxError, ErrorTolerance, Function, Guarantee, Input, Metrics, Output, PartitionMetrics, PassHeaders,
    Processor, ProcessorError, Retry, Stage, TimedOut,
};
use crate::serde::SerdeError;
use crate::tracker::OffsetTracker;

/// Why a record produced no outputs.
enum Failure {
    Deserialize {
        what: &'static str,
        error: SerdeError,
    },
    Function {
        error: BoxError,
        /// Tries made.
        attempts: u32,
    },
    /// Not a record: offsets from the record's up to `skip_to` could not
    /// be read at all.
    Unreadable {
        error: rill_client::Error,
        skip_to: i64,
    },
}

type Called<OutK, OutV> = Result<Vec<Output<OutK, OutV>>, Failure>;

/// A call of an async function that finished.
struct Finished<OutK, OutV> {
    id: Id,
    result: Called<OutK, OutV>,
}

type Call<OutK, OutV> = Pin<Box<dyn Future<Output = Finished<OutK, OutV>> + Send>>;

/// What a call starts from: the input, and the raw record again when the
/// function may be retried (each try reads it anew).
type Start<InK, InV> = (Input<InK, InV>, Option<ConsumerRecord>, tracing::Span);

/// A record taken, and the trace context its outputs carry on.
type Taken = (ConsumerRecord, Option<Trace>);

/// The trace an input named, and this hop's span in it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Trace {
    parent: TraceParent,
    span_id: [u8; 8],
}

pub(super) struct Run<'p, InK, InV, OutK, OutV> {
    pub(super) processor: &'p Processor<InK, InV, OutK, OutV>,
    pub(super) consumer: Consumer,
    pub(super) handle: ConsumerHandle,
    pub(super) producer: Producer,
    /// The input topic: trackers and queues are keyed by its partitions.
    topic: String,
    /// Input partition → its tracker. A new assignment gets a new
    /// generation, so outcomes of an older one are recognised and ignored.
    trackers: HashMap<i32, Tracked>,
    generation: u64,
    pending: Deliveries,
    /// Async form: which calls run and which results leave.
    schedule: Scheduler<Taken, Start<InK, InV>, Called<OutK, OutV>>,
    calls: FuturesUnordered<Call<OutK, OutV>>,
    /// The end-to-end latency, for the metrics facade.
    latency: metrics::Histogram,
    budget: Budget,
    /// Bytes of outputs sent and not settled, in all partitions.
    out_total: usize,
}

/// One input partition's tracker, and what of it was last stored and
/// published.
struct Tracked {
    generation: u64,
    tracker: OffsetTracker,
    stored: Option<i64>,
    /// Exactly once: the offset last committed in a transaction.
    committed: Option<i64>,
    liveness: Liveness,
    /// Bytes of its outputs sent and not yet settled.
    out_bytes: usize,
}

/// How often watermarks are stored in the consumer and the per-partition
/// numbers published: storing on every delivery would take the consumer's
/// lock per record. Revocations and shutdown store at once.
const STORE_INTERVAL: Duration = Duration::from_millis(50);

/// Records taken at once from what was already fetched.
const BURST: usize = 64;

impl<'p, InK, InV, OutK, OutV> Run<'p, InK, InV, OutK, OutV>
where
    InK: Send + 'static,
    InV: Send + 'static,
    OutK: Send + 'static,
    OutV: Send + 'static,
{
    pub(super) fn new(processor: &'p Processor<InK, InV, OutK, OutV>, consumer: Consumer, producer: Producer) -> Self {
        let schedule = match &processor.function {
            Function::Async { concurrency, order, .. } => {
                // Under per-partition or per-key order, records of other
                // lanes are taken while a lane waits. The consumer hands
                // records out a fetched chunk at a time (one partition's,
                // often thousands): the window must reach past a chunk for
                // the next partition's records to be seen.
                let records = match order {
                    Order::Partition | Order::Key(_) => usize::MAX,
                    _ => *concurrency,
                };
                Scheduler::new(order.clone(), *concurrency, Held { records, bytes: processor.held_budget() })
            }
            _ => Scheduler::new(Order::Input, 1, Held { records: 1, bytes: usize::MAX }),
        };
        Run {
            processor,
            handle: consumer.handle(),
            consumer,
            producer,
            topic: processor.input.clone().unwrap_or_default(),
            trackers: HashMap::new(),
            generation: 0,
            pending: Deliveries::default(),
            schedule,
            calls: FuturesUnordered::new(),
            latency: metrics::histogram!("rill_processor_latency_seconds", "processor" => processor.name.clone()),
            budget: Budget::new(processor.held_budget()),
            out_total: 0,
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.processor.metrics
    }

    /// Whether the loop may take another record.
    fn has_room(&self) -> bool {
        match &self.processor.function {
            Function::Async { .. } => self.schedule.has_room(),
            _ => true,
        }
    }

    pub(super) async fn main_loop(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), ProcessorError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(STORE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let exactly_once = self.processor.guarantee == Guarantee::ExactlyOnce;
        let mut commit = tokio::time::interval(self.processor.commit_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    info!(target: "rill::processor", "shutdown requested");
                    return Ok(());
                }
                _ = commit.tick(), if exactly_once => self.commit_transaction().await?,
                _ = tick.tick() => self.store_and_publish(),
                Some(outcome) = self.pending.next(), if !self.pending.is_empty() => self.settle(outcome).await?,
                Some(finished) = self.calls.next(), if !self.calls.is_empty() => self.finished(finished).await?,
                event = self.consumer.next_event(), if self.has_room() => {
                    self.handle_event(event?).await?;
                    // What was fetched with it is taken in a burst, without
                    // a turn through the select per record.
                    for _ in 0..BURST {
                        if !self.has_room() {
                            break;
                        }
                        let Some(record) = self.consumer.try_next_record() else { break };
                        self.record(record).await?;
                    }
                    // Over the budget: pause now, not at the next tick.
                    if self.out_total + self.schedule.held().bytes > self.budget.limit() {
                        self.keep_to_budget();
                    }
                }
            }
        }
    }

    /// One record, in its span: a messaging `process` span (OpenTelemetry
    /// conventions) whose remote parent is the input's `traceparent`.
    async fn record(&mut self, record: ConsumerRecord) -> Result<(), ProcessorError> {
        let span = tracing::debug_span!(target: "rill::processor", "record",
            messaging.system = "kafka", messaging.operation.type = "process",
            messaging.destination.name = %record.topic, messaging.destination.partition.id = record.partition,
            messaging.kafka.offset = record.offset, trace_id = tracing::field::Empty,
            parent_id = tracing::field::Empty, span_id = tracing::field::Empty);
        let trace = match self.processor.pass_headers {
            PassHeaders::None => None,
            _ => record
                .headers
                .iter()
                .rev()
                .find(|h| h.key.as_str() == trace::TRACEPARENT)
                .and_then(|h| TraceParent::parse(h.value.as_deref()?))
                .map(|parent| Trace { parent, span_id: trace::new_span_id() }),
        };
        if let Some(trace) = &trace {
            span.record("trace_id", trace.parent.trace_id_hex());
            span.record("parent_id", trace.parent.parent_id_hex());
            span.record("span_id", trace::span_id_hex(trace.span_id));
        }
        self.process(record, trace).instrument(span).await
    }

    /// The input partitions among `partitions`.
    fn ours(&self, partitions: &[TopicPartition]) -> Vec<i32> {
        partitions.iter().filter(|tp| tp.topic == self.topic).map(|tp| tp.partition).collect()
    }

    async fn handle_event(&mut self, event: Event) -> Result<(), ProcessorError> {
        match event {
            Event::Record(record) => self.record(record).await?,
            Event::Assigned(partitions) => {
                for partition in self.ours(&partitions) {
                    self.new_ledger(partition);
                }
                self.store_and_publish();
            }
            Event::Revoked(revocation) => {
                let partitions = self.ours(revocation.partitions());
                if self.processor.guarantee == Guarantee::ExactlyOnce {
                    // The open transaction commits, with every partition's
                    // offsets, before the partitions go to another member.
                    self.commit_transaction().await?;
                } else {
                    self.drain(&partitions, self.processor.revoke_timeout).await?;
                }
                self.release(&partitions, true);
                // Dropping the revocation lets the consumer commit what was
                // stored and give the partitions up.
                drop(revocation);
            }
            Event::Lost(partitions) => {
                let partitions = self.ours(&partitions);
                if self.processor.guarantee == Guarantee::ExactlyOnce && !partitions.is_empty() {
                    // Outputs of the lost partitions' inputs are in the open
                    // transaction, and their offsets can no longer commit:
                    // it aborts, and the processor stops (a restart reads
                    // on from the committed offsets).
                    let _ = self.producer.abort_transaction().await;
                    return Err(ProcessorError::Client(rill_client::Error::Transaction(TxnError::Abortable(format!(
                        "partitions {partitions:?} of {} were lost (the group moved on without this member); \
                         the open transaction was aborted",
                        self.topic
                    )))));
                }
                self.release(&partitions, false);
            }
            Event::Unreadable { partition, offset, skip_to, error } if partition.topic == self.topic => {
                self.unreadable(partition, offset, skip_to, error).await?;
            }
            Event::LogTruncated { partition, error, resume } if partition.topic == self.topic => {
                self.truncated(partition, error, resume).await?;
            }
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

    /// The input log lost records already processed (KIP-320), and the
    /// consumer moved the partition's position back (or by
    /// `auto.offset.reset`): what is in flight settles, the partition's
    /// ledger starts over from the new position, and the offset stored
    /// for it is the new position until records from there are done.
    /// The records that replaced the lost ones are processed; outputs of
    /// the lost ones stay where they went. A partition the consumer
    /// stopped (`auto.offset.reset=error`) stops the processor.
    async fn truncated(
        &mut self,
        tp: TopicPartition,
        error: rill_client::Error,
        resume: Resume,
    ) -> Result<(), ProcessorError> {
        warn!(target: "rill::processor", partition = %tp, %error, ?resume, "input log truncated");
        if resume == Resume::Stopped {
            return Err(error.into());
        }
        if !self.trackers.contains_key(&tp.partition) {
            return Ok(());
        }
        if self.processor.guarantee == Guarantee::ExactlyOnce {
            // Outputs of the records read again may be in the open
            // transaction already.
            return self.abort_and_stop(&format!("the input log of {tp} was truncated")).await;
        }
        self.drain(&[tp.partition], self.processor.revoke_timeout).await?;
        self.release(&[tp.partition], false);
        if let Resume::At(offset) = resume {
            self.store(&[(tp.clone(), offset)]);
        }
        self.new_ledger(tp.partition);
        Ok(())
    }

    /// Starts a new ledger for an input partition, under a new generation
    /// (outcomes of an older one move nothing); returns the generation.
    fn new_ledger(&mut self, partition: i32) -> u64 {
        self.generation += 1;
        let tracked = Tracked {
            generation: self.generation,
            tracker: OffsetTracker::new(),
            stored: None,
            committed: None,
            liveness: Liveness::default(),
            out_bytes: 0,
        };
        if let Some(old) = self.trackers.insert(partition, tracked) {
            self.out_total = self.out_total.saturating_sub(old.out_bytes);
        }
        self.schedule.assign(partition, self.generation);
        self.generation
    }

    /// Part of a partition cannot be read: the consume-error tolerance
    /// decides, as for a record that cannot be deserialized, in offset
    /// order with the records before it. Unless that stops the processor,
    /// reading goes on after the unreadable part, and the range counts as
    /// done once its dead letter (if any) is delivered.
    async fn unreadable(
        &mut self,
        tp: TopicPartition,
        offset: i64,
        skip_to: i64,
        error: rill_client::Error,
    ) -> Result<(), ProcessorError> {
        let Some(generation) = self.trackers.get(&tp.partition).map(|t| t.generation) else { return Ok(()) };
        warn!(target: "rill::processor", partition = %tp, offset, skip_to, %error, "unreadable input");
        let record = placeholder(&tp.topic, tp.partition, offset);
        let failure = Err(Failure::Unreadable { error, skip_to });
        // The range is tracked as one record, by its last offset: done, the
        // watermark passes it.
        let id = Id { partition: tp.partition, generation, offset: skip_to - 1 };
        self.begin(id);
        match &self.processor.function {
            Function::Async { .. } => {
                self.schedule.admit(id, None, 0, (record, None), Admit::Done(failure));
                self.pump().await?;
            }
            _ => self.emit(id, (record, None), failure).await?,
        }
        self.handle.seek(&tp, skip_to)?;
        Ok(())
    }

    /// One input record: read and handed to the function; its outputs are
    /// emitted now (plain function) or when its call and every call before
    /// it in its partition are done (async function).
    async fn process(&mut self, record: ConsumerRecord, trace: Option<Trace>) -> Result<(), ProcessorError> {
        self.metrics().consumed.fetch_add(1, Ordering::Relaxed);
        let partition = record.partition;
        let generation = match self.trackers.get(&partition) {
            // The consumer went back without a truncation event: an
            // out-of-range position reset to an earlier offset (a topic
            // recreated, `auto.offset.reset=earliest`). What it gives from
            // here on is what is processed and stored: the ledger starts
            // over at this offset. What the old one had in flight settles
            // into nothing; its records come again.
            Some(tracked) if tracked.tracker.last_begun().is_some_and(|last| record.offset <= last) => {
                warn!(target: "rill::processor", topic = %self.topic, partition, offset = record.offset,
                    last = tracked.tracker.last_begun(), "the input went back (an offset reset); the partition \
                    starts over from there");
                self.metrics().rewound.fetch_add(1, Ordering::Relaxed);
                if self.processor.guarantee == Guarantee::ExactlyOnce {
                    // Outputs of the records read again may be in the open
                    // transaction already.
                    let reason = format!("the input {}/{partition} went back (an offset reset)", self.topic);
                    return self.abort_and_stop(&reason).await;
                }
                self.release(&[partition], false);
                self.store(&[(TopicPartition::new(&self.topic, partition), record.offset)]);
                self.new_ledger(partition)
            }
            Some(tracked) => tracked.generation,
            None => {
                // Records come only after their assignment; be safe anyway.
                self.new_ledger(partition)
            }
        };
        let processor = self.processor;
        let id = Id { partition, generation, offset: record.offset };
        self.begin(id);
        let input = match prepare(processor, &record).await {
            Ok(()) => read(processor, &record),
            Err(failure) => Err(failure),
        };
        match &processor.function {
            Function::Sync(function) => {
                let result = match input {
                    Err(failure) => Err(failure),
                    Ok(input) => call_plain(processor, function.as_ref(), &record, input).await,
                };
                self.emit(id, (record, trace), result).await
            }
            Function::Async { .. } => {
                let key = record.key.clone();
                let bytes = size(&record);
                let again = (processor.retry.max_attempts() > 1).then(|| record.clone());
                let admit = match input {
                    Err(failure) => Admit::Done(Err(failure)),
                    Ok(input) => Admit::Call((input, again, tracing::Span::current())),
                };
                self.schedule.admit(id, key.as_ref(), bytes, (record, trace), admit);
                self.pump().await
            }
            Function::Source(_) => unreachable!("a source has no input"),
        }
    }

    /// Emits what the scheduler let finish, then starts the calls it lets
    /// run: a key's next call starts only after the outputs of the one
    /// before were handed to the producer.
    async fn pump(&mut self) -> Result<(), ProcessorError> {
        while let Some((id, record, result)) = self.schedule.next_emit() {
            self.emit(id, record, result).await?;
        }
        let processor = self.processor;
        let Function::Async { call, .. } = &processor.function else { return Ok(()) };
        while let Some((id, (input, again, span))) = self.schedule.next_start() {
            let again = again.map(|record| (Reader::of(processor), record));
            let future = call_async(call.clone(), processor.retry.clone(), input, again).instrument(span);
            self.calls.push(Box::pin(async move { Finished { id, result: future.await } }));
        }
        Ok(())
    }

    /// An async call finished: emit what it lets leave, start what it lets
    /// run.
    async fn finished(&mut self, finished: Finished<OutK, OutV>) -> Result<(), ProcessorError> {
        self.schedule.finished(finished.id, finished.result);
        self.pump().await
    }

    /// Begins a record in its partition's tracker (when it is taken).
    fn begin(&mut self, id: Id) {
        let Some(tracked) = self.trackers.get_mut(&id.partition) else { return };
        if tracked.generation != id.generation {
            return;
        }
        if let Err(error) = tracked.tracker.begin(id.offset) {
            warn!(target: "rill::processor", partition = id.partition, %error, "offset tracking");
        }
    }

    /// Sends a record's outputs and tracks its offset, or applies the
    /// tolerance of its failure. `id` is how the record is tracked.
    async fn emit(&mut self, id: Id, taken: Taken, result: Called<OutK, OutV>) -> Result<(), ProcessorError> {
        let (record, trace) = taken;
        let processor = self.processor;
        let Id { partition, generation, offset: mark } = id;
        let offset = record.offset;
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(Failure::Deserialize { what, error }) => {
                let message = format!("{what}: {error}");
                let topic = record.topic.to_string();
                let failed = Failed { stage: Stage::Deserialize, kind: "deserialization", message, attempts: 1 };
                return self
                    .tolerate(&processor.consume_tolerance, record, id, failed, || ProcessorError::Deserialize {
                        what,
                        topic,
                        partition,
                        offset,
                        error,
                    })
                    .await;
            }
            Err(Failure::Function { error, attempts }) => {
                let message = error.to_string();
                let topic = record.topic.to_string();
                let failed = Failed { stage: Stage::Function, kind: "function", message, attempts };
                return self
                    .tolerate(&processor.function_tolerance, record, id, failed, || ProcessorError::Function {
                        topic,
                        partition,
                        offset,
                        error,
                    })
                    .await;
            }
            Err(Failure::Unreadable { error, skip_to }) => {
                let message = format!("offsets {offset} to {} cannot be read: {error}", skip_to - 1);
                let topic = record.topic.to_string();
                let failed = Failed { stage: Stage::Deserialize, kind: "unreadable", message, attempts: 1 };
                return self
                    .tolerate(&processor.consume_tolerance, record, id, failed, || ProcessorError::Unreadable {
                        topic,
                        partition,
                        offset,
                        skip_to,
                        error,
                    })
                    .await;
            }
        };
        if outputs.is_empty() {
            self.metrics().filtered.fetch_add(1, Ordering::Relaxed);
        }
        let serialized = match prepare_outputs(processor, &outputs).await.and_then(|()| serialize(processor, &outputs))
        {
            Ok(serialized) => serialized,
            Err(error) => {
                let topic = record.topic.to_string();
                let failed =
                    Failed { stage: Stage::Serialize, kind: "serialization", message: error.to_string(), attempts: 1 };
                return self
                    .tolerate(&processor.serialize_tolerance, record, id, failed, || ProcessorError::Serialize {
                        topic,
                        partition,
                        offset,
                        error,
                    })
                    .await;
            }
        };
        let count = serialized.len() as u32;
        // Tracked before the sends: an output may be delivered before the
        // last one is even queued.
        self.track(id, count);
        let keep = matches!(processor.produce_tolerance, ErrorTolerance::DeadLetter(_));
        let child = trace.map(|trace| trace.parent.child(trace.span_id));
        for ((key, value), output) in serialized.iter().zip(&outputs) {
            let mut headers = header_views(output);
            inherit(&mut headers, &record, processor.pass_headers, child.as_deref());
            let sent = self.producer.send(output_record(&processor.output, key, value, output, &headers)).await;
            match sent {
                Ok(delivery) => {
                    let input = keep.then(|| Box::new(record.clone()));
                    let bytes = key.as_ref().map_or(0, Bytes::len)
                        + value.as_ref().map_or(0, Bytes::len)
                        + output
                            .headers
                            .iter()
                            .map(|h| h.key().len() + h.value().map_or(0, <[u8]>::len))
                            .sum::<usize>();
                    if let Some(tracked) = self.trackers.get_mut(&partition)
                        && tracked.generation == generation
                    {
                        tracked.out_bytes += bytes;
                        self.out_total += bytes;
                    }
                    let origin = Origin {
                        partition,
                        generation,
                        offset: mark,
                        timestamp: record.timestamp,
                        dead_letter: None,
                        input,
                        bytes,
                    };
                    self.await_delivery(delivery, origin);
                }
                // The producer refused this output (too large): the
                // produce stage's tolerance decides, as for one not
                // delivered.
                Err(error @ rill_client::Error::RecordTooLarge { .. }) => {
                    self.failed_output(id, &record, error).await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }

    /// Applies a stage's error tolerance to a record that cannot be
    /// processed (its outputs are not known yet).
    async fn tolerate(
        &mut self,
        tolerance: &ErrorTolerance,
        record: ConsumerRecord,
        id: Id,
        failed: Failed,
        stop: impl FnOnce() -> ProcessorError,
    ) -> Result<(), ProcessorError> {
        match tolerance {
            ErrorTolerance::Stop => Err(stop()),
            ErrorTolerance::Skip => {
                self.skipped(&record, &failed);
                self.track(id, 0);
                Ok(())
            }
            ErrorTolerance::DeadLetter(topic) => {
                // One output to wait for: the dead letter.
                self.track(id, 1);
                self.dead_letter(topic, &record, id, &failed).await
            }
        }
    }

    fn skipped(&self, record: &ConsumerRecord, failed: &Failed) {
        warn!(target: "rill::processor", topic = %record.topic, partition = record.partition, offset = record.offset,
            stage = failed.stage.as_str(), attempts = failed.attempts, error = %failed.message, "record skipped");
        self.metrics().skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends the raw input `record` to `topic` with headers naming the
    /// failure and the source; `id`'s tracker counts its delivery as one
    /// of the record's outputs.
    async fn dead_letter(
        &mut self,
        topic: &str,
        record: &ConsumerRecord,
        id: Id,
        failed: &Failed,
    ) -> Result<(), ProcessorError> {
        let (partition, offset) = (record.partition, record.offset);
        debug!(target: "rill::processor", topic = %record.topic, partition, offset, stage = failed.stage.as_str(),
            error = %failed.message, "record dead-lettered");
        let partition_text = partition.to_string();
        let offset_text = offset.to_string();
        let timestamp = record.timestamp.to_string();
        let attempts = failed.attempts.to_string();
        let mut headers: Vec<Header<'_>> =
            record.headers.iter().map(|h| Header::new(&h.key, h.value.as_deref())).collect();
        headers.extend([
            Header::new("rill.error.stage", Some(failed.stage.as_str().as_bytes())),
            Header::new("rill.error.kind", Some(failed.kind.as_bytes())),
            Header::new("rill.error.message", Some(failed.message.as_bytes())),
            Header::new("rill.error.attempts", Some(attempts.as_bytes())),
            Header::new("rill.source.topic", Some(record.topic.as_bytes())),
            Header::new("rill.source.partition", Some(partition_text.as_bytes())),
            Header::new("rill.source.offset", Some(offset_text.as_bytes())),
            Header::new("rill.source.timestamp", Some(timestamp.as_bytes())),
        ]);
        let mut out = Record::to(topic).headers(&headers);
        out.key = record.key.as_deref();
        out.value = record.value.as_deref();
        let delivery = self.producer.send(out).await.map_err(|error| ProcessorError::DeadLetter {
            topic: Box::from(&*record.topic),
            partition,
            offset,
            dead_letter_topic: topic.into(),
            error,
        })?;
        let origin = Origin {
            partition,
            generation: id.generation,
            offset: id.offset,
            timestamp: record.timestamp,
            dead_letter: Some(Arc::from(topic)),
            input: None,
            bytes: 0,
        };
        self.await_delivery(delivery, origin);
        Ok(())
    }

    /// An output of `record` (tracked under `id`) was refused or not
    /// delivered: the produce stage's tolerance decides. Skipped, it counts
    /// as delivered; dead-lettered, its dead letter's delivery counts.
    async fn failed_output(
        &mut self,
        id: Id,
        record: &ConsumerRecord,
        error: rill_client::Error,
    ) -> Result<(), ProcessorError> {
        let failed = Failed { stage: Stage::Produce, kind: "produce", message: error.to_string(), attempts: 1 };
        match &self.processor.produce_tolerance {
            ErrorTolerance::Stop => Err(ProcessorError::Delivery {
                topic: record.topic.to_string(),
                partition: record.partition,
                offset: record.offset,
                error,
            }),
            ErrorTolerance::Skip => {
                self.skipped(record, &failed);
                self.delivered(id);
                Ok(())
            }
            ErrorTolerance::DeadLetter(topic) => {
                let topic = topic.clone();
                self.dead_letter(&topic, record, id, &failed).await
            }
        }
    }

    /// One output of `id` is done.
    fn delivered(&mut self, id: Id) {
        let Some(tracked) = self.trackers.get_mut(&id.partition) else { return };
        if tracked.generation != id.generation {
            return;
        }
        if let Err(error) = tracked.tracker.delivered(id.offset) {
            warn!(target: "rill::processor", partition = id.partition, %error, "offset tracking");
        }
    }

    /// A begun record's outputs are known: `outputs` to wait for.
    fn track(&mut self, id: Id, outputs: u32) {
        let Some(tracked) = self.trackers.get_mut(&id.partition) else { return };
        if tracked.generation != id.generation {
            return;
        }
        if let Err(error) = tracked.tracker.emitted(id.offset, outputs) {
            warn!(target: "rill::processor", partition = id.partition, %error, "offset tracking");
        }
    }

    fn await_delivery(&mut self, delivery: DeliveryFuture, origin: Origin) {
        self.metrics().in_flight.fetch_add(1, Ordering::Relaxed);
        self.pending.push(delivery, origin);
    }

    /// A delivery outcome: the input's tracker moves, the produce stage's
    /// tolerance takes a failed output, or the processor stops.
    async fn settle(&mut self, outcome: Outcome) -> Result<(), ProcessorError> {
        self.metrics().in_flight.fetch_sub(1, Ordering::Relaxed);
        let Outcome {
            origin: Origin { partition, generation, offset, timestamp, dead_letter, input, bytes },
            result,
            at,
        } = outcome;
        let current = self.trackers.get(&partition).is_some_and(|tracked| tracked.generation == generation);
        if current && let Some(tracked) = self.trackers.get_mut(&partition) {
            tracked.out_bytes = tracked.out_bytes.saturating_sub(bytes);
            self.out_total = self.out_total.saturating_sub(bytes);
        }
        match result {
            // The partition was given up (revoked, lost, truncated) while
            // this output was in flight: its input was not stored past it,
            // so the next owner processes it again. Nothing to stop for.
            Err(error) if !current => {
                warn!(target: "rill::processor", topic = %self.topic, partition, offset, %error,
                    "an output of a partition given up meanwhile failed; its input will be processed again");
                return Ok(());
            }
            Err(error) => {
                let topic = self.topic.clone();
                if let Some(dead_letter_topic) = dead_letter {
                    let dead_letter_topic = Box::from(&*dead_letter_topic);
                    let topic = topic.into_boxed_str();
                    return Err(ProcessorError::DeadLetter { topic, partition, offset, dead_letter_topic, error });
                }
                let id = Id { partition, generation, offset };
                return match input {
                    Some(record) => self.failed_output(id, &record, error).await,
                    None if self.processor.produce_tolerance == ErrorTolerance::Skip => {
                        let record = placeholder(&topic, partition, offset);
                        self.failed_output(id, &record, error).await
                    }
                    None => Err(ProcessorError::Delivery { topic, partition, offset, error }),
                };
            }
            Ok(_) => {}
        }
        if dead_letter.is_some() {
            self.metrics().dead_lettered.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics().produced.fetch_add(1, Ordering::Relaxed);
            let latency = self.metrics().latency.record_since(timestamp, at);
            self.latency.record(latency.as_secs_f64());
        }
        if !current {
            return Ok(()); // an outcome of a partition we gave up meanwhile
        }
        self.delivered(Id { partition, generation, offset });
        Ok(())
    }

    /// Stores every watermark that moved since it was last stored, looks
    /// for partitions stuck, and publishes the per-partition numbers.
    fn store_and_publish(&mut self) {
        let mut moved = Vec::new();
        let mut stuck = Vec::new();
        let now = Instant::now();
        let threshold = self.processor.stuck_timeout;
        for (&partition, tracked) in &mut self.trackers {
            if let Some(watermark) = tracked.tracker.watermark()
                && tracked.stored != Some(watermark)
            {
                tracked.stored = Some(watermark);
                moved.push((TopicPartition::new(&self.topic, partition), watermark));
            }
            if let Seen::Stuck { offset, age, new } =
                tracked.liveness.observe(tracked.tracker.lowest_undone(), now, threshold)
            {
                if new {
                    warn!(target: "rill::processor", topic = %self.topic, partition, offset, unfinished_for = ?age,
                        "stuck: the oldest unfinished input of the partition has not finished");
                    self.processor.metrics.stuck.fetch_add(1, Ordering::Relaxed);
                }
                stuck.push(Stuck { partition: TopicPartition::new(&self.topic, partition), offset, stuck_for: age });
            }
        }
        stuck.sort_by(|a, b| a.partition.cmp(&b.partition));
        self.keep_to_budget();
        *self.processor.metrics.stuck_now.lock().unwrap_or_else(|p| p.into_inner()) = stuck;
        self.store(&moved);
        let mut published = self.metrics().partitions.lock().unwrap_or_else(|p| p.into_inner());
        published.clear();
        for (&partition, tracked) in &self.trackers {
            let tp = TopicPartition::new(&self.topic, partition);
            let watermark = tracked.tracker.watermark();
            // Before anything is stored: from the oldest record taken, or
            // the consumer's position when none is.
            let done_to = watermark.or_else(|| tracked.tracker.lowest_undone()).or_else(|| self.consumer.position(&tp));
            let lag = self.handle.readable_end(&tp).zip(done_to).map(|(end, mark)| (end - mark).max(0));
            let paused = self.budget.paused().contains(&partition);
            published.insert(tp, PartitionMetrics { watermark, in_flight: tracked.tracker.in_flight(), lag, paused });
        }
        drop(published);
        self.metrics().export(&self.processor.name);
    }

    /// Pauses the partitions holding the most while the processor holds
    /// more than its budget; resumes them once it holds less.
    fn keep_to_budget(&mut self) {
        let held: std::collections::BTreeMap<i32, usize> = self
            .trackers
            .iter()
            .map(|(&partition, tracked)| (partition, self.schedule.held_in(partition).bytes + tracked.out_bytes))
            .collect();
        self.metrics().buffered_bytes.store(held.values().sum::<usize>() as u64, Ordering::Relaxed);
        let decision = self.budget.decide(&held);
        let tps = |partitions: &[i32]| -> Vec<TopicPartition> {
            partitions.iter().map(|&p| TopicPartition::new(&self.topic, p)).collect()
        };
        if !decision.pause.is_empty() {
            debug!(target: "rill::processor", partitions = ?decision.pause, held = ?held, "over the buffer budget: pausing");
            self.handle.pause(&tps(&decision.pause));
            self.metrics().paused.fetch_add(decision.pause.len() as u64, Ordering::Relaxed);
        }
        if !decision.resume.is_empty() {
            debug!(target: "rill::processor", partitions = ?decision.resume, "under the buffer budget: resuming");
            self.handle.resume(&tps(&decision.resume));
            self.metrics().resumed.fetch_add(decision.resume.len() as u64, Ordering::Relaxed);
        }
    }

    fn store(&self, offsets: &[(TopicPartition, i64)]) {
        if offsets.is_empty() {
            return;
        }
        // One call for all; on an error (a partition no longer assigned)
        // each alone, so the others are still stored.
        if self.handle.store_offsets(offsets).is_err() {
            for offset in offsets {
                if let Err(error) = self.handle.store_offsets(std::slice::from_ref(offset)) {
                    debug!(target: "rill::processor", partition = %offset.0, %error, "offset not stored");
                }
            }
        }
    }

    /// Waits (up to `timeout`) until `partitions` have no call and no output
    /// in flight, settling everything that finishes meanwhile.
    async fn drain(&mut self, partitions: &[i32], timeout: Duration) -> Result<(), ProcessorError> {
        let deadline = Instant::now() + timeout;
        let busy = |run: &Self| {
            partitions.iter().any(|p| {
                run.schedule.held_in(*p).records > 0
                    || run.trackers.get(p).is_some_and(|t| t.tracker.outputs_awaited() > 0)
            })
        };
        while busy(self) && !(self.pending.is_empty() && self.calls.is_empty()) {
            tokio::select! {
                Some(outcome) = self.pending.next(), if !self.pending.is_empty() => self.settle(outcome).await?,
                Some(finished) = self.calls.next(), if !self.calls.is_empty() => self.finished(finished).await?,
                () = tokio::time::sleep_until(deadline) => {
                    warn!(target: "rill::processor", topic = %self.topic, ?partitions,
                        "outputs still in flight at the deadline; their inputs will be processed again by the \
                         next owner");
                    break;
                }
            }
        }
        Ok(())
    }

    /// Exactly once: lets every record taken finish and its outputs be
    /// written, then commits the transaction with every partition's offset
    /// (the consumer's group metadata fences a zombie), and begins the
    /// next. An abortable failure aborts the transaction and stops the
    /// processor: a restart reads on from the offsets last committed.
    async fn commit_transaction(&mut self) -> Result<(), ProcessorError> {
        let deadline = Instant::now() + self.processor.revoke_timeout;
        let flushed = self.finish_all(deadline).await?.map_err(|_| rill_client::Error::Timeout {
            operation: "writing a transaction's outputs".into(),
            after: self.processor.revoke_timeout,
        });
        let mut offsets = Vec::new();
        for (&partition, tracked) in &mut self.trackers {
            if tracked.tracker.in_flight() > 0 || tracked.tracker.outputs_awaited() > 0 {
                return self.abort_and_stop("records of the transaction still in flight at the deadline").await;
            }
            if let Some(watermark) = tracked.tracker.watermark()
                && tracked.committed != Some(watermark)
            {
                offsets.push((TopicPartition::new(&self.topic, partition), watermark, None));
                tracked.committed = Some(watermark);
            }
        }
        let result = async {
            flushed??;
            if !offsets.is_empty() {
                let group = self.consumer.group_metadata().expect("the processor's consumer has a group");
                self.producer.send_offsets_to_transaction(&offsets, &group).await?;
            }
            self.producer.commit_transaction().await?;
            self.producer.begin_transaction()
        }
        .await;
        match result {
            Ok(()) => {
                self.store_and_publish();
                Ok(())
            }
            Err(rill_client::Error::Transaction(TxnError::Abortable(reason))) => self.abort_and_stop(&reason).await,
            Err(error) => Err(error.into()),
        }
    }

    async fn abort_and_stop(&mut self, reason: &str) -> Result<(), ProcessorError> {
        warn!(target: "rill::processor", reason, "aborting the transaction");
        let aborted = self.producer.abort_transaction().await;
        Err(ProcessorError::Client(rill_client::Error::Transaction(TxnError::Abortable(format!(
            "{reason}; the transaction was {}",
            if aborted.is_ok() { "aborted" } else { "left to the coordinator's timeout" }
        )))))
    }

    /// Forgets partitions; with `store`, their watermarks are stored first.
    fn release(&mut self, partitions: &[i32], store: bool) {
        let mut last = Vec::new();
        for partition in partitions {
            self.schedule.remove(*partition);
            if self.budget.paused().contains(partition) {
                // Still assigned after a truncation: not paused any more.
                self.budget.forget(*partition);
                self.handle.resume(&[TopicPartition::new(&self.topic, *partition)]);
            }
            let Some(tracked) = self.trackers.remove(partition) else { continue };
            // Its outputs' outcomes no longer count (another generation).
            self.out_total = self.out_total.saturating_sub(tracked.out_bytes);
            if store && let Some(watermark) = tracked.tracker.watermark() {
                last.push((TopicPartition::new(&self.topic, *partition), watermark));
            }
        }
        self.store(&last);
        self.store_and_publish();
    }

    /// Drains what is in flight, stores, commits and closes, within the
    /// shutdown timeout. After an error nothing more is awaited: only what
    /// already completed is stored.
    pub(super) async fn shut_down(mut self, clean: bool) -> Result<(), ProcessorError> {
        let deadline = Instant::now() + self.processor.shutdown_timeout;
        let left = |now: Instant| deadline.saturating_duration_since(now);
        let exactly_once = self.processor.guarantee == Guarantee::ExactlyOnce;
        let mut committed = Ok(());
        if clean && exactly_once {
            committed = self.commit_transaction().await;
        } else if clean {
            // Whatever the flush says, outcomes settle as they come.
            let _ = self.finish_all(deadline).await?;
        } else {
            while let Some(Some(outcome)) = self.pending.next().now_or_never() {
                if self.settle(outcome).await.is_err() {
                    break;
                }
            }
        }
        if exactly_once && (!clean || committed.is_err()) {
            // An open transaction holds read_committed readers back until
            // the coordinator's timeout: end it now (a failed one may have
            // been aborted already).
            let _ = tokio::time::timeout(left(Instant::now()), self.producer.abort_transaction()).await;
        }
        self.store_and_publish();
        let consumer = self.consumer;
        let closed = consumer.close(left(Instant::now()).max(Duration::from_millis(100))).await;
        let producer_closed = self.producer.close(left(Instant::now()).max(Duration::from_millis(100))).await;
        info!(target: "rill::processor", name = %self.processor.name, "processor stopped");
        committed?;
        closed?;
        producer_closed?;
        Ok(())
    }

    /// Lets everything taken finish by `deadline`: calls first (their
    /// outputs are sent as they finish), then the outputs waiting in the
    /// producer's buffer, then every outcome. The inner result is the
    /// flush's (`Err` when it did not end by the deadline).
    async fn finish_all(
        &mut self,
        deadline: Instant,
    ) -> Result<Result<rill_client::Result<()>, tokio::time::error::Elapsed>, ProcessorError> {
        let all: Vec<i32> = self.trackers.keys().copied().collect();
        self.drain_calls(deadline).await?;
        let flushed =
            tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), self.producer.flush()).await;
        self.drain(&all, deadline.saturating_duration_since(Instant::now())).await?;
        Ok(flushed)
    }

    /// Lets every call under way finish (until `deadline`), settling
    /// deliveries meanwhile.
    async fn drain_calls(&mut self, deadline: Instant) -> Result<(), ProcessorError> {
        while !self.calls.is_empty() {
            tokio::select! {
                Some(outcome) = self.pending.next(), if !self.pending.is_empty() => self.settle(outcome).await?,
                Some(finished) = self.calls.next() => self.finished(finished).await?,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        Ok(())
    }
}

/// The bytes a record holds: key, value and headers.
fn size(record: &ConsumerRecord) -> usize {
    let field = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
    let headers: usize = record.headers.iter().map(|h| h.key.len() + field(&h.value)).sum();
    field(&record.key) + field(&record.value) + headers
}

/// A record with nothing but its place: what stands for input that cannot
/// be read, or whose outputs were not kept.
fn placeholder(topic: &str, partition: i32, offset: i64) -> ConsumerRecord {
    ConsumerRecord {
        topic: Arc::from(topic),
        partition,
        offset,
        timestamp: -1,
        timestamp_type: rill_client::consumer::TimestampType::CreateTime,
        key: None,
        value: None,
        headers: Vec::new(),
        leader_epoch: None,
    }
}

/// How a record failed, for the log and its dead letter.
struct Failed {
    stage: Stage,
    kind: &'static str,
    message: String,
    attempts: u32,
}

/// Calls a plain function on `input`, tried again as the processor's
/// [`Retry`] says (each try reads the record anew). Not timed: it runs on
/// the processor's task and cannot be interrupted.
async fn call_plain<InK, InV, OutK, OutV>(
    processor: &Processor<InK, InV, OutK, OutV>,
    function: &super::SyncFn<InK, InV, OutK, OutV>,
    record: &ConsumerRecord,
    input: Input<InK, InV>,
) -> Called<OutK, OutV> {
    let retry = &processor.retry;
    let mut input = Some(input);
    let mut attempt = 1;
    loop {
        let this = match input.take() {
            Some(input) => input,
            None => read(processor, record)?,
        };
        match function(this) {
            Ok(outputs) => return Ok(outputs),
            Err(error) if attempt < retry.max_attempts() => {
                debug!(target: "rill::processor", partition = record.partition, offset = record.offset, attempt,
                    %error, "the function failed; trying again");
                tokio::time::sleep(retry.delay(attempt, rill_client::net::backoff::jitter())).await;
                attempt += 1;
            }
            Err(error) => return Err(Failure::Function { error, attempts: attempt }),
        }
    }
}

/// The serdes that read an input record, for a call that reads it again.
struct Reader<InK, InV> {
    key: Arc<dyn crate::serde::Serde<InK>>,
    value: Arc<dyn crate::serde::Serde<InV>>,
}

impl<InK, InV> Reader<InK, InV> {
    fn of<OutK, OutV>(processor: &Processor<InK, InV, OutK, OutV>) -> Self {
        Reader { key: processor.in_key.clone(), value: processor.in_value.clone() }
    }
}

/// A call of an async function, each try bounded by the retry's timeout,
/// tried again as it says; `again` reads the record for a later try.
async fn call_async<InK, InV, OutK, OutV>(
    call: Arc<AsyncFn<InK, InV, OutK, OutV>>,
    retry: Retry,
    input: Input<InK, InV>,
    again: Option<(Reader<InK, InV>, ConsumerRecord)>,
) -> Called<OutK, OutV> {
    {
        let mut input = Some(input);
        let mut attempt = 1;
        loop {
            let this = match (input.take(), &again) {
                (Some(input), _) => input,
                (None, Some((reader, record))) => read_with(&*reader.key, &*reader.value, record)?,
                (None, None) => unreachable!("a retried call keeps its record"),
            };
            let result = match retry.timeout {
                Some(limit) => tokio::time::timeout(limit, call(this))
                    .await
                    .unwrap_or_else(|_| Err(Box::new(TimedOut(limit)) as BoxError)),
                None => call(this).await,
            };
            match result {
                Ok(outputs) => return Ok(outputs),
                Err(error) if attempt < retry.max_attempts() => {
                    debug!(target: "rill::processor", attempt, %error, "the call failed; trying again");
                    tokio::time::sleep(retry.delay(attempt, rill_client::net::backoff::jitter())).await;
                    attempt += 1;
                }
                Err(error) => return Err(Failure::Function { error, attempts: attempt }),
            }
        }
    }
}

/// Awaits what the input serdes want done before they read `record` (a
/// schema lookup); most want nothing.
async fn prepare<InK, InV, OutK, OutV>(
    processor: &Processor<InK, InV, OutK, OutV>,
    record: &ConsumerRecord,
) -> Result<(), Failure> {
    if let Some(preparation) = processor.in_key.prepare(record.key.as_ref()) {
        preparation.await.map_err(|error| Failure::Deserialize { what: "key", error })?;
    }
    if let Some(preparation) = processor.in_value.prepare(record.value.as_ref()) {
        preparation.await.map_err(|error| Failure::Deserialize { what: "value", error })?;
    }
    Ok(())
}

/// Deserializes a record's key and value and builds the function's input.
fn read<InK, InV, OutK, OutV>(
    processor: &Processor<InK, InV, OutK, OutV>,
    record: &ConsumerRecord,
) -> Result<Input<InK, InV>, Failure> {
    read_with(&*processor.in_key, &*processor.in_value, record)
}

fn read_with<InK, InV>(
    key: &dyn crate::serde::Serde<InK>,
    value: &dyn crate::serde::Serde<InV>,
    record: &ConsumerRecord,
) -> Result<Input<InK, InV>, Failure> {
    let key = key.deserialize(record.key.as_ref()).map_err(|error| Failure::Deserialize { what: "key", error })?;
    let value =
        value.deserialize(record.value.as_ref()).map_err(|error| Failure::Deserialize { what: "value", error })?;
    Ok(Input {
        key,
        value,
        headers: record.headers.iter().map(super::Header::of_record).collect(),
        timestamp: record.timestamp,
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
    })
}

pub(super) type Serialized = (Option<Bytes>, Option<Bytes>);

/// Awaits what the output serdes want done before they write `outputs`
/// (a schema registration); most want nothing.
pub(super) async fn prepare_outputs<InK, InV, OutK, OutV>(
    processor: &Processor<InK, InV, OutK, OutV>,
    outputs: &[Output<OutK, OutV>],
) -> Result<(), SerdeError> {
    for output in outputs {
        if let Some(preparation) = processor.out_key.prepare_serialize(&output.key) {
            preparation.await?;
        }
        if let Some(preparation) = processor.out_value.prepare_serialize(&output.value) {
            preparation.await?;
        }
    }
    Ok(())
}

/// Serializes every output first: a record whose outputs cannot all be
/// written sends none.
pub(super) fn serialize<InK, InV, OutK, OutV>(
    processor: &Processor<InK, InV, OutK, OutV>,
    outputs: &[Output<OutK, OutV>],
) -> Result<Vec<Serialized>, SerdeError> {
    outputs
        .iter()
        .map(|output| Ok((processor.out_key.serialize(&output.key)?, processor.out_value.serialize(&output.value)?)))
        .collect()
}

/// Adds to an output's headers what it carries on from its input, as
/// `pass` says: the trace context (this hop's `traceparent`, the input's
/// `tracestate`) unless the output set its own, and under
/// [`PassHeaders::All`] every other input header first.
fn inherit<'a>(headers: &mut Vec<Header<'a>>, input: &'a ConsumerRecord, pass: PassHeaders, child: Option<&'a str>) {
    if pass == PassHeaders::None {
        return;
    }
    let has = |headers: &[Header<'_>], key: &str| headers.iter().any(|h| h.key == key);
    let is_trace = |key: &str| key == trace::TRACEPARENT || key == trace::TRACESTATE;
    if pass == PassHeaders::All {
        headers.extend(
            input.headers.iter().filter(|h| !is_trace(&h.key)).map(|h| Header::new(&h.key, h.value.as_deref())),
        );
    }
    if let Some(child) = child
        && !has(headers, trace::TRACEPARENT)
    {
        headers.push(Header::new(trace::TRACEPARENT, Some(child.as_bytes())));
        if !has(headers, trace::TRACESTATE)
            && let Some(state) = input.headers.iter().rev().find(|h| h.key.as_str() == trace::TRACESTATE)
        {
            headers.push(Header::new(trace::TRACESTATE, state.value.as_deref()));
        }
    }
}

/// Header views of an output, for its producer record.
pub(super) fn header_views<K, V>(output: &Output<K, V>) -> Vec<Header<'_>> {
    output.headers.iter().map(|h| Header::new(h.key(), h.value())).collect()
}

/// The producer record of one serialized output.
pub(super) fn output_record<'a, K, V>(
    topic: &'a str,
    key: &'a Option<Bytes>,
    value: &'a Option<Bytes>,
    output: &'a Output<K, V>,
    headers: &'a [Header<'a>],
) -> Record<'a> {
    let topic = output.topic.as_deref().unwrap_or(topic);
    let mut record = Record::to(topic).headers(headers);
    record.key = key.as_deref();
    record.value = value.as_deref();
    record.partition = output.partition;
    record
}
