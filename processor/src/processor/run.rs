//! The run loops: records in, outputs out, offsets stored behind them; and
//! the source loop, outputs with no input.
//!
//! One task runs the loop: it takes the next event from the consumer, the
//! next finished call of an async function, or the next delivery outcome,
//! whichever comes first. Calls of an async function finish in any order;
//! each input partition keeps a queue of its calls in offset order and
//! only its finished head is emitted, so outputs leave (and offsets are
//! tracked) in input order. Records are taken from the consumer only while
//! fewer than `concurrency` calls are queued.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rill_client::TopicPartition;
use rill_client::consumer::{Consumer, ConsumerHandle, ConsumerRecord, Event};
use rill_client::producer::{DeliveryFuture, Header, Producer, Record, RecordMetadata};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, warn};

use super::{BoxError, ErrorTolerance, Function, Input, Metrics, Output, PartitionMetrics, Processor, ProcessorError};
use crate::serde::SerdeError;
use crate::tracker::OffsetTracker;

/// An output on its way: which input it belongs to, and its outcome.
type Pending = Pin<Box<dyn Future<Output = Outcome> + Send>>;

struct Outcome {
    partition: TopicPartition,
    generation: u64,
    offset: i64,
    dead_letter: bool,
    result: Result<RecordMetadata, rill_client::Error>,
}

/// Why a record produced no outputs.
enum Failure {
    Deserialize { what: &'static str, error: SerdeError },
    Function(BoxError),
}

type Called<OutK, OutV> = Result<Vec<Output<OutK, OutV>>, Failure>;

/// A call of an async function that finished.
struct Finished<OutK, OutV> {
    partition: TopicPartition,
    generation: u64,
    offset: i64,
    result: Called<OutK, OutV>,
}

type Call<OutK, OutV> = Pin<Box<dyn Future<Output = Finished<OutK, OutV>> + Send>>;

/// A record whose call is under way or finished but not yet emitted.
struct Slot<OutK, OutV> {
    generation: u64,
    record: ConsumerRecord,
    result: Option<Called<OutK, OutV>>,
}

pub(super) struct Run<'p, InK, InV, OutK, OutV> {
    pub(super) processor: &'p Processor<InK, InV, OutK, OutV>,
    pub(super) consumer: Consumer,
    pub(super) handle: ConsumerHandle,
    pub(super) producer: Producer,
    /// Input partition → (generation, tracker). A new assignment gets a new
    /// generation, so outcomes of an older one are recognised and ignored.
    trackers: HashMap<TopicPartition, (u64, OffsetTracker)>,
    generation: u64,
    pending: FuturesUnordered<Pending>,
    /// Async form: each partition's records in call order.
    queues: HashMap<TopicPartition, VecDeque<Slot<OutK, OutV>>>,
    calls: FuturesUnordered<Call<OutK, OutV>>,
    queued: usize,
}

impl<'p, InK, InV, OutK, OutV> Run<'p, InK, InV, OutK, OutV>
where
    InK: Send + 'static,
    InV: Send + 'static,
    OutK: Send + 'static,
    OutV: Send + 'static,
{
    pub(super) fn new(processor: &'p Processor<InK, InV, OutK, OutV>, consumer: Consumer, producer: Producer) -> Self {
        Run {
            processor,
            handle: consumer.handle(),
            consumer,
            producer,
            trackers: HashMap::new(),
            generation: 0,
            pending: FuturesUnordered::new(),
            queues: HashMap::new(),
            calls: FuturesUnordered::new(),
            queued: 0,
        }
    }

    fn metrics(&self) -> &Metrics {
        &self.processor.metrics
    }

    /// How many records may wait in calls before the loop stops taking more.
    fn concurrency(&self) -> usize {
        match &self.processor.function {
            Function::Async { concurrency, .. } => *concurrency,
            _ => usize::MAX,
        }
    }

    pub(super) async fn main_loop(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), ProcessorError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let concurrency = self.concurrency();
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    info!(target: "rill::processor", "shutdown requested");
                    return Ok(());
                }
                Some(outcome) = self.pending.next(), if !self.pending.is_empty() => self.settle(outcome)?,
                Some(finished) = self.calls.next(), if !self.calls.is_empty() => self.finished(finished).await?,
                event = self.consumer.next_event(), if self.queued < concurrency => self.handle_event(event?).await?,
            }
        }
    }

    async fn handle_event(&mut self, event: Event) -> Result<(), ProcessorError> {
        match event {
            Event::Record(record) => {
                let span = tracing::debug_span!(target: "rill::processor", "record", topic = %record.topic,
                    partition = record.partition, offset = record.offset);
                self.process(record).instrument(span).await?;
            }
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

    /// One input record: read and handed to the function; its outputs are
    /// emitted now (plain function) or when its call and every call before
    /// it in its partition are done (async function).
    async fn process(&mut self, record: ConsumerRecord) -> Result<(), ProcessorError> {
        self.metrics().consumed.fetch_add(1, Ordering::Relaxed);
        let tp = record.topic_partition();
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
        let input = read(processor, &record);
        match &processor.function {
            Function::Sync(function) => {
                let result = input.and_then(|input| function(input).map_err(Failure::Function));
                self.emit(record, generation, result).await
            }
            Function::Async { call, .. } => {
                let offset = record.offset;
                let queue = self.queues.entry(tp.clone()).or_default();
                self.queued += 1;
                match input {
                    Err(failure) => queue.push_back(Slot { generation, record, result: Some(Err(failure)) }),
                    Ok(input) => {
                        queue.push_back(Slot { generation, record, result: None });
                        let future = call(input);
                        let partition = tp.clone();
                        self.calls.push(Box::pin(async move {
                            let result = future.await.map_err(Failure::Function);
                            Finished { partition, generation, offset, result }
                        }));
                    }
                }
                self.emit_ready(&tp).await
            }
            Function::Source(_) => unreachable!("a source has no input"),
        }
    }

    /// An async call finished: emit what is ready in its partition.
    async fn finished(&mut self, finished: Finished<OutK, OutV>) -> Result<(), ProcessorError> {
        let Finished { partition, generation, offset, result } = finished;
        let Some(queue) = self.queues.get_mut(&partition) else { return Ok(()) };
        let Some(slot) = queue.iter_mut().find(|s| s.generation == generation && s.record.offset == offset) else {
            return Ok(()); // its partition was given up meanwhile
        };
        slot.result = Some(result);
        self.emit_ready(&partition).await
    }

    /// Emits the finished head of a partition's queue, in offset order.
    async fn emit_ready(&mut self, tp: &TopicPartition) -> Result<(), ProcessorError> {
        loop {
            let Some(queue) = self.queues.get_mut(tp) else { return Ok(()) };
            if queue.front().is_none_or(|slot| slot.result.is_none()) {
                return Ok(());
            }
            let Some(Slot { generation, record, result: Some(result) }) = queue.pop_front() else { return Ok(()) };
            self.queued -= 1;
            self.emit(record, generation, result).await?;
        }
    }

    /// Sends a record's outputs and tracks its offset, or applies the
    /// tolerance of its failure.
    async fn emit(
        &mut self,
        record: ConsumerRecord,
        generation: u64,
        result: Called<OutK, OutV>,
    ) -> Result<(), ProcessorError> {
        let processor = self.processor;
        let (topic, partition, offset) = (record.topic.to_string(), record.partition, record.offset);
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(Failure::Deserialize { what, error }) => {
                let message = format!("{what}: {error}");
                return self
                    .tolerate(&processor.consume_tolerance, record, generation, "deserialization", &message, || {
                        ProcessorError::Deserialize { what, topic, partition, offset, error }
                    })
                    .await;
            }
            Err(Failure::Function(error)) => {
                let message = error.to_string();
                return self
                    .tolerate(&processor.function_tolerance, record, generation, "function", &message, || {
                        ProcessorError::Function { topic, partition, offset, error }
                    })
                    .await;
            }
        };
        if outputs.is_empty() {
            self.metrics().filtered.fetch_add(1, Ordering::Relaxed);
        }
        let serialized = serialize(processor, &outputs).map_err(|error| ProcessorError::Serialize {
            topic: topic.clone(),
            partition,
            offset,
            error,
        })?;
        let mut deliveries = Vec::with_capacity(serialized.len());
        for ((key, value), output) in serialized.iter().zip(&outputs) {
            let headers: Vec<Header<'_>> = output.headers.iter().map(|(k, v)| Header::new(k, v.as_deref())).collect();
            let mut out = Record::to(&processor.output).headers(&headers);
            out.key = key.as_deref();
            out.value = value.as_deref();
            out.partition = output.partition;
            deliveries.push(self.producer.send(out).await?);
        }
        let tp = record.topic_partition();
        self.track(&tp, generation, offset, deliveries.len() as u32);
        for delivery in deliveries {
            self.await_delivery(tp.clone(), generation, offset, delivery, false);
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
                self.track(&tp, generation, record.offset, 0);
                Ok(())
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
                self.track(&tp, generation, record.offset, 1);
                self.await_delivery(tp, generation, record.offset, delivery, true);
                Ok(())
            }
        }
    }

    fn track(&mut self, tp: &TopicPartition, generation: u64, offset: i64, outputs: u32) {
        let Some((current, tracker)) = self.trackers.get_mut(tp) else { return };
        if *current != generation {
            return;
        }
        match tracker.start(offset, outputs) {
            Ok(Some(watermark)) => self.store(tp, watermark),
            Ok(None) => {}
            Err(error) => warn!(target: "rill::processor", partition = %tp, %error, "offset tracking"),
        }
        self.note_partition(tp);
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
        let queued = self.queues.get(tp).map_or(0, VecDeque::len);
        let lag = self.handle.high_watermark(tp).zip(tracker.watermark()).map(|(end, mark)| (end - mark).max(0));
        let mut partitions = self.metrics().partitions.lock().unwrap_or_else(|p| p.into_inner());
        partitions.insert(
            tp.clone(),
            PartitionMetrics { watermark: tracker.watermark(), in_flight: tracker.in_flight() + queued, lag },
        );
    }

    /// Waits (up to `timeout`) until `partitions` have no call and no output
    /// in flight, settling everything that finishes meanwhile.
    async fn drain(&mut self, partitions: &[TopicPartition], timeout: Duration) -> Result<(), ProcessorError> {
        let deadline = Instant::now() + timeout;
        let busy = |run: &Self| {
            partitions.iter().any(|tp| {
                run.queues.get(tp).is_some_and(|q| !q.is_empty())
                    || run.trackers.get(tp).is_some_and(|(_, t)| t.outputs_awaited() > 0)
            })
        };
        while busy(self) && !(self.pending.is_empty() && self.calls.is_empty()) {
            tokio::select! {
                Some(outcome) = self.pending.next(), if !self.pending.is_empty() => self.settle(outcome)?,
                Some(finished) = self.calls.next(), if !self.calls.is_empty() => self.finished(finished).await?,
                () = tokio::time::sleep_until(deadline) => {
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
            if let Some(queue) = self.queues.remove(tp) {
                self.queued -= queue.len();
            }
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
    pub(super) async fn shut_down(mut self, clean: bool) -> Result<(), ProcessorError> {
        let deadline = Instant::now() + self.processor.shutdown_timeout;
        let all: Vec<TopicPartition> = self.trackers.keys().cloned().collect();
        let left = |now: Instant| deadline.saturating_duration_since(now);
        if clean {
            // Calls first (their outputs are sent as they finish), then the
            // outputs waiting in the producer's buffer.
            self.drain_calls(deadline).await?;
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

    /// Lets every call under way finish (until `deadline`), settling
    /// deliveries meanwhile.
    async fn drain_calls(&mut self, deadline: Instant) -> Result<(), ProcessorError> {
        while !self.calls.is_empty() {
            tokio::select! {
                Some(outcome) = self.pending.next(), if !self.pending.is_empty() => self.settle(outcome)?,
                Some(finished) = self.calls.next() => self.finished(finished).await?,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        Ok(())
    }
}

/// Deserializes a record's key and value and builds the function's input.
fn read<InK, InV, OutK, OutV>(
    processor: &Processor<InK, InV, OutK, OutV>,
    record: &ConsumerRecord,
) -> Result<Input<InK, InV>, Failure> {
    let key = processor
        .in_key
        .deserialize(record.key.as_ref())
        .map_err(|error| Failure::Deserialize { what: "key", error })?;
    let value = processor
        .in_value
        .deserialize(record.value.as_ref())
        .map_err(|error| Failure::Deserialize { what: "value", error })?;
    Ok(Input {
        key,
        value,
        headers: record.headers.clone(),
        timestamp: record.timestamp,
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
    })
}

pub(super) type Serialized = (Option<Bytes>, Option<Bytes>);

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
