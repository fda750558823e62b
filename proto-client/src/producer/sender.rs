//! The sender: one task per producer that drains ready batches into
//! Produce requests, one request per leader at a time up to
//! `max.in.flight.requests.per.connection`, and feeds the answers to the
//! sequencer. It owns no state of its own beyond counters: the accumulator
//! and the sequencer sit behind the producer's lock, which it takes briefly
//! to decide and releases before any IO, compression or completion.
//!
//! ```text
//!  loop:
//!    apply answers  ─▶ sequencer.on_result ─▶ complete records (in order)
//!    expire, fail, get a producer id or bump the epoch when the sequencer asks
//!    plan: per leader, one batch per partition (retries first)
//!    send: seal, stamp, enqueue in plan order; a task awaits each reply
//!    wait: wake-up, answer, next deadline, metadata change
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{InitProducerIdRequest, ProduceRequest, ProduceResponse, TopicName, TransactionalId};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::accumulator::ProducerBatch;
use super::config::Acks;
use super::sequencer::{BatchResult, Finished};
use super::transaction::TxnState;
use super::{Shared, State, TxnError};
use crate::TopicPartition;
use crate::cluster::{Metadata, TopicScope};
use crate::error::{Error, ErrorAction, Result};
use crate::net::Connection;
use crate::net::backoff::{delay, jitter};
use crate::records::Compression;

/// What comes back to the sender from the tasks it spawned.
#[derive(Debug)]
enum Event {
    Produced { broker: i32, batches: Vec<ProducerBatch>, outcome: Result<ProduceResponse>, sent: bool },
    Connected { broker: i32 },
    ProducerId(Result<(i64, i16)>),
}

/// A request to make: batches for one leader, with their stamps.
struct Planned {
    broker: i32,
    connection: Connection,
    batches: Vec<(ProducerBatch, (i64, i16, i32))>,
}

pub(crate) struct Sender {
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<Event>,
    inbox: mpsc::UnboundedReceiver<Event>,
    requests_in_flight: HashMap<i32, usize>,
    connecting: HashSet<i32>,
    producer_id_pending: bool,
    producer_id_failures: u32,
    producer_id_retry_at: Option<Instant>,
    /// Rotates the partition order per request, so that no partition
    /// always comes last when requests fill up.
    rotation: usize,
}

/// How often expiry is checked while records are buffered.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

impl Sender {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let (events, inbox) = mpsc::unbounded_channel();
        Sender {
            shared,
            events,
            inbox,
            requests_in_flight: HashMap::new(),
            connecting: HashSet::new(),
            producer_id_pending: false,
            producer_id_failures: 0,
            producer_id_retry_at: None,
            rotation: 0,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut metadata = self.shared.client.cluster().watch();
        self.sync_metadata(&metadata.borrow_and_update().clone());
        loop {
            let now = Instant::now();
            while let Ok(event) = self.inbox.try_recv() {
                self.handle(event, now);
            }
            let (plan, finished) = {
                let shared = self.shared.clone();
                let mut state = shared.lock();
                let finished = self.housekeeping(&mut state, now);
                (self.plan(&mut state, now), finished)
            };
            self.shared.complete(finished);
            let sent_any = !plan.is_empty();
            for planned in plan {
                self.dispatch(planned).await;
            }
            let (done, deadline) = {
                let state = self.shared.lock();
                let closing = self.shared.closing.load(Ordering::Acquire);
                let done = closing && state.accumulator.buffered() == (0, 0) && self.inbox.is_empty();
                (done, self.next_deadline(&state, now))
            };
            if done {
                debug!(target: "rill::producer", "sender stopped: closed and nothing left");
                return;
            }
            if sent_any {
                // More may be ready, up to the in-flight limits.
                continue;
            }
            tokio::select! {
                () = self.shared.wake.notified() => {}
                Some(event) = self.inbox.recv() => self.handle(event, Instant::now()),
                () = sleep_until(deadline) => {}
                changed = metadata.changed() => {
                    if changed.is_ok() {
                        let snapshot = metadata.borrow_and_update().clone();
                        self.sync_metadata(&snapshot);
                    }
                }
            }
        }
    }

    /// Tells the accumulator the partitions of the topics it holds, and
    /// which have a leader (sticky partitioning avoids the others).
    fn sync_metadata(&self, metadata: &Metadata) {
        let mut state = self.shared.lock();
        let topics: Vec<Arc<str>> = state.accumulator.topics().cloned().collect();
        for topic in topics {
            if let Some(info) = metadata.topics.get(&*topic) {
                let available = info.partitions.iter().filter(|p| p.leader.is_some()).map(|p| p.partition).collect();
                state.accumulator.set_topic(&topic, info.partitions.len() as i32, available);
            }
        }
    }

    /// Expiry, failure, producer id, close deadline. Returns the batches
    /// finished (their accounting already released).
    fn housekeeping(&mut self, state: &mut State, now: Instant) -> Vec<Finished> {
        let config = &self.shared.config;
        let mut finished = Vec::new();
        let std_now = now.into_std();
        if let Some(created_before) = std_now.checked_sub(config.delivery_timeout) {
            for batch in state.accumulator.expire(created_before) {
                let error =
                    Error::DeliveryTimeout { after: config.delivery_timeout, maybe_written: false, last_error: None };
                finished.extend(state.sequencer.finish(batch, Err(error)));
            }
        }
        finished.extend(state.sequencer.expire(std_now));
        if state.abort || state.sequencer.fatal().is_some() {
            let error = state.sequencer.fatal().cloned().unwrap_or_else(|| Error::ProducerFailed {
                reason: "the producer was closed before the record was delivered".into(),
            });
            for batch in state.accumulator.take_all() {
                finished.extend(state.sequencer.finish(batch, Err(error.clone())));
            }
            for batch in state.sequencer.take_retries() {
                let error = if batch.maybe_written {
                    Error::MaybeWritten { reason: error.to_string().into(), last_error: batch.last_error.clone() }
                } else {
                    error.clone()
                };
                finished.extend(state.sequencer.finish(batch, Err(error)));
            }
        }
        if state
            .transactions
            .as_ref()
            .is_some_and(|txn| matches!(txn.state(), TxnState::Aborting | TxnState::AbortableError | TxnState::Fatal))
        {
            // Their transaction cannot commit: failed unsent, never written
            // (as Java's abortUndrainedBatches).
            for batch in state.accumulator.take_all() {
                finished.extend(state.sequencer.finish(batch, Err(Error::Transaction(TxnError::Aborted))));
            }
        }
        // A transactional producer's id and epoch come from its transaction
        // coordinator (the transaction driver).
        if state.transactions.is_none()
            && state.sequencer.wants_producer_id()
            && !self.producer_id_pending
            && self.producer_id_retry_at.is_none_or(|at| at <= now)
        {
            self.producer_id_pending = true;
            let bump_from = state.sequencer.bumping_from();
            let client = self.shared.client.clone();
            let events = self.events.clone();
            tokio::spawn(async move {
                let result = init_producer_id(&client, bump_from).await;
                let _ = events.send(Event::ProducerId(result));
            });
        }
        state.release_finished(&finished);
        finished
    }

    /// Picks what to send: per leader with room for a request, one batch
    /// per partition (a retry if one is due, else a ready new batch), up to
    /// `message.max.bytes`.
    fn plan(&mut self, state: &mut State, now: Instant) -> Vec<Planned> {
        let config = &self.shared.config;
        let cluster = self.shared.client.cluster();
        let metadata = cluster.metadata();
        let std_now = now.into_std();
        let mut partitions = state.accumulator.partitions_with_data();
        for retry in state.sequencer.partitions_with_retries() {
            if !partitions.contains(&retry) {
                partitions.push(retry);
            }
        }
        let mut by_leader: BTreeMap<i32, Vec<(Arc<str>, i32)>> = BTreeMap::new();
        let mut leaderless = false;
        for (topic, partition) in partitions {
            match metadata.leader(&topic, partition) {
                Some((broker, _)) => by_leader.entry(broker.id).or_default().push((topic, partition)),
                None => leaderless = true,
            }
        }
        if leaderless {
            cluster.request_refresh();
        }
        self.rotation = self.rotation.wrapping_add(1);
        let mut plan = Vec::new();
        for (broker, mut partitions) in by_leader {
            if self.requests_in_flight.get(&broker).copied().unwrap_or(0) >= config.max_in_flight {
                continue;
            }
            let Some(link) = cluster.link(broker) else { continue };
            let Some(connection) = link.connected() else {
                if self.connecting.insert(broker) {
                    let events = self.events.clone();
                    tokio::spawn(async move {
                        // Failures are logged by the link and retried with its
                        // backoff on the next attempt.
                        let _ = link.connection().await;
                        let _ = events.send(Event::Connected { broker });
                    });
                }
                continue;
            };
            let len = partitions.len();
            partitions.rotate_left(self.rotation % len);
            let mut batches = Vec::new();
            let mut bytes = 0;
            for (topic, partition) in partitions {
                // A transaction's partition takes batches once added to it.
                let added = |state: &State| {
                    state.transactions.as_ref().is_none_or(|txn| txn.may_send(&TopicPartition::new(&*topic, partition)))
                };
                let batch = match state.sequencer.next_retry(&topic, partition, broker, std_now) {
                    Some(batch) => Some(batch),
                    None if state.sequencer.can_send_new(&topic, partition, broker) && added(state) => {
                        state.accumulator.drain(&topic, partition, std_now)
                    }
                    None => None,
                };
                let Some(mut batch) = batch else { continue };
                let stamp = state.sequencer.assign(&mut batch, broker);
                bytes += batch_size_estimate(&batch);
                batches.push((batch, stamp));
                if bytes >= config.max_message_bytes {
                    break;
                }
            }
            if !batches.is_empty() {
                *self.requests_in_flight.entry(broker).or_default() += 1;
                plan.push(Planned { broker, connection, batches });
            }
        }
        plan
    }

    /// Seals, stamps and sends one planned request; a task waits for its
    /// answer. Sending happens here, in plan order, so that requests reach
    /// each socket in sequence order.
    async fn dispatch(&mut self, planned: Planned) {
        let Planned { broker, connection, mut batches } = planned;
        let config = &self.shared.config;
        for (batch, stamp) in &mut batches {
            let restamp = batch.stamped != Some(*stamp);
            let sealed = batch.seal(config.compression, config.compression_level);
            if restamp {
                if config.transactional_id.is_some() {
                    sealed.mark_transactional();
                }
                sealed.stamp(stamp.0, stamp.1, stamp.2);
            }
            batch.stamped = Some(*stamp);
        }
        let mut batches: Vec<ProducerBatch> = batches.into_iter().map(|(batch, _)| batch).collect();
        // Produce v12 tells Kafka 4 the producer runs transactions v2
        // (KIP-890), which this one does not: a transactional producer stays
        // at v11, as Java's.
        let max = if config.transactional_id.is_some() { 11 } else { i16::MAX };
        let version = match connection.version_for::<ProduceRequest>().map(|v| v.min(max)) {
            Ok(version) if config.compression == Compression::Zstd && version < 7 => {
                let error = Error::UnsupportedApi {
                    broker: connection.broker().to_owned(),
                    api: kafka_protocol::messages::ApiKey::Produce,
                    ours: "7..12 (for zstd)".to_owned(),
                    theirs: format!("..{version}"),
                };
                return self.fail_producer(batches, error);
            }
            Ok(version) => version,
            Err(error) => return self.fail_producer(batches, error),
        };
        let request = produce_request(config, &mut batches);
        let events = self.events.clone();
        if config.acks == Acks::None {
            let outcome = match connection.enqueue_without_reply(&request, version).await {
                Ok(()) => Ok(ProduceResponse::default()),
                Err(error) => Err(error),
            };
            let sent = outcome.is_ok();
            let _ = events.send(Event::Produced { broker, batches, outcome, sent });
            return;
        }
        // The broker waits up to `timeout_ms` for replicas; the connection
        // gives it a second more to answer before calling the request lost.
        let timeout = config.client.request_timeout + Duration::from_secs(1);
        match connection.enqueue(&request, version, timeout).await {
            Ok(reply) => {
                tokio::spawn(async move {
                    let outcome = reply.await;
                    let _ = events.send(Event::Produced { broker, batches, outcome, sent: true });
                });
            }
            Err(error) => {
                let _ = events.send(Event::Produced { broker, batches, outcome: Err(error), sent: false });
            }
        }
    }

    /// The broker cannot take what this producer sends: fail for good.
    fn fail_producer(&mut self, batches: Vec<ProducerBatch>, error: Error) {
        warn!(target: "rill::producer", %error, "producer failed");
        let reason: Arc<str> = error.to_string().into();
        let fatal = Error::ProducerFailed { reason };
        let mut state = self.shared.lock();
        let mut finished = Vec::new();
        for batch in batches {
            let (done, _) =
                state.sequencer.on_result(batch, BatchResult::NotSent(fatal.clone()), Instant::now().into_std(), 0.5);
            finished.extend(done);
        }
        for batch in state.sequencer.fail(fatal.clone()) {
            finished.extend(state.sequencer.finish(batch, Err(fatal.clone())));
        }
        state.release_finished(&finished);
        drop(state);
        self.shared.complete(finished);
        self.shared.wake.notify_one();
    }

    fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Connected { broker } => {
                self.connecting.remove(&broker);
            }
            Event::ProducerId(result) => self.on_producer_id(result, now),
            Event::Produced { broker, batches, outcome, sent } => {
                if let Some(count) = self.requests_in_flight.get_mut(&broker) {
                    *count = count.saturating_sub(1);
                }
                let results = match outcome {
                    Ok(response) => match_results(&self.shared.config, batches, &response),
                    Err(error) => {
                        debug!(target: "rill::producer", broker, %error, sent, "produce request failed");
                        batches
                            .into_iter()
                            .map(|b| {
                                (
                                    b,
                                    if sent {
                                        BatchResult::Lost(error.clone())
                                    } else {
                                        BatchResult::NotSent(error.clone())
                                    },
                                )
                            })
                            .collect()
                    }
                };
                let mut refresh = false;
                let mut finished = Vec::new();
                {
                    let mut state = self.shared.lock();
                    for (batch, result) in results {
                        let (done, followup) = state.sequencer.on_result(batch, result, now.into_std(), jitter());
                        refresh |= followup.refresh_metadata;
                        state.release_finished(&done);
                        finished.extend(done);
                    }
                }
                if refresh {
                    self.shared.client.cluster().request_refresh();
                }
                self.shared.complete(finished);
            }
        }
    }

    fn on_producer_id(&mut self, result: Result<(i64, i16)>, now: Instant) {
        self.producer_id_pending = false;
        let failure = match result {
            Ok((id, epoch)) => {
                self.producer_id_failures = 0;
                self.producer_id_retry_at = None;
                debug!(target: "rill::producer", id, epoch, "producer id");
                let finished = {
                    let mut state = self.shared.lock();
                    let finished = state.sequencer.set_producer_id(id, epoch);
                    state.release_finished(&finished);
                    finished
                };
                if !finished.is_empty() {
                    let records: i32 = finished.iter().map(|f| f.records).sum();
                    warn!(target: "rill::producer", records, "records that may have been written are not resent under new sequences");
                }
                self.shared.complete(finished);
                return;
            }
            Err(error) if error.action() == ErrorAction::Fatal => error,
            Err(error) => {
                let config = &self.shared.config.client;
                let wait = delay(config.retry_backoff, config.retry_backoff_max, self.producer_id_failures, jitter());
                self.producer_id_failures += 1;
                self.producer_id_retry_at = Some(now + wait);
                warn!(target: "rill::producer", %error, retry_in = ?wait, "InitProducerId failed");
                return;
            }
        };
        self.fail_producer(Vec::new(), failure);
    }

    /// Hands outcomes to the records' futures and wakes waiting senders.
    /// The next time something may need doing without an event.
    fn next_deadline(&self, state: &State, now: Instant) -> Option<Instant> {
        let std_now = now.into_std();
        let future = |at: std::time::Instant| (at > std_now).then(|| Instant::from_std(at));
        let mut deadlines = vec![
            state.accumulator.next_linger_deadline().and_then(future),
            state.sequencer.next_retry_at().and_then(future),
            self.producer_id_retry_at.filter(|at| *at > now),
        ];
        if state.accumulator.buffered().0 > 0 {
            deadlines.push(Some(now + EXPIRY_TICK));
        }
        deadlines.into_iter().flatten().min()
    }
}

pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn batch_size_estimate(batch: &ProducerBatch) -> usize {
    match &batch.payload {
        super::accumulator::Payload::Closed(builder) => builder.size(),
        super::accumulator::Payload::Sealed(sealed) => sealed.size(),
    }
}

/// One Produce request for sealed, stamped batches, grouped by topic.
fn produce_request(config: &super::ProducerConfig, batches: &mut [ProducerBatch]) -> ProduceRequest {
    let mut topics: BTreeMap<Arc<str>, Vec<PartitionProduceData>> = BTreeMap::new();
    for batch in batches.iter_mut() {
        let records = match &mut batch.payload {
            super::accumulator::Payload::Sealed(sealed) => sealed.bytes(),
            super::accumulator::Payload::Closed(_) => unreachable!("dispatch seals every batch first"),
        };
        metrics::histogram!("rill_producer_batch_bytes").record(records.len() as f64);
        metrics::histogram!("rill_producer_batch_records").record(f64::from(batch.records));
        topics
            .entry(batch.topic.clone())
            .or_default()
            .push(PartitionProduceData::default().with_index(batch.partition).with_records(Some(records)));
    }
    ProduceRequest::default()
        .with_transactional_id(
            config.transactional_id.as_deref().map(|id| TransactionalId(StrBytes::from_string(id.to_owned()))),
        )
        .with_acks(config.acks.wire())
        .with_timeout_ms(config.client.request_timeout.as_millis().min(i32::MAX as u128) as i32)
        .with_topic_data(
            topics
                .into_iter()
                .map(|(topic, partitions)| {
                    TopicProduceData::default()
                        .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                        .with_partition_data(partitions)
                })
                .collect(),
        )
}

/// Pairs each batch with its partition's answer.
fn match_results(
    config: &super::ProducerConfig,
    batches: Vec<ProducerBatch>,
    response: &ProduceResponse,
) -> Vec<(ProducerBatch, BatchResult)> {
    if config.acks == Acks::None {
        return batches
            .into_iter()
            .map(|b| (b, BatchResult::Written { base_offset: None, log_append_time: None }))
            .collect();
    }
    let mut answers = HashMap::new();
    for topic in &response.responses {
        for partition in &topic.partition_responses {
            answers.insert((topic.name.0.as_str(), partition.index), partition);
        }
    }
    batches
        .into_iter()
        .map(|batch| {
            let result = match answers.get(&(&*batch.topic, batch.partition)) {
                None => BatchResult::Lost(Error::protocol(
                    "broker",
                    format!("Produce response has no answer for {}/{}", batch.topic, batch.partition),
                )),
                Some(answer) => match ResponseError::try_from_code(answer.error_code) {
                    None => BatchResult::Written {
                        base_offset: Some(answer.base_offset),
                        log_append_time: (answer.log_append_time_ms >= 0).then_some(answer.log_append_time_ms),
                    },
                    Some(code) => {
                        BatchResult::Rejected { code, message: answer.error_message.as_ref().map(|m| m.to_string()) }
                    }
                },
            };
            (batch, result)
        })
        .collect()
}

/// InitProducerId: a fresh id, or (KIP-360) the next epoch of the current
/// one. Brokers that cannot bump (before v3, or Tansu, which answers
/// UNKNOWN_SERVER_ERROR) get a fresh id instead; sequences restart either way.
async fn init_producer_id(client: &crate::Client, bump_from: Option<(i64, i16)>) -> Result<(i64, i16)> {
    let cluster = client.cluster();
    let connection = cluster.any_connection().await?;
    let version = connection.version_for::<InitProducerIdRequest>()?;
    let request = |from: Option<(i64, i16)>| {
        let mut request = InitProducerIdRequest::default()
            .with_transactional_id(None)
            // As the Java client: a non-transactional producer has no
            // transaction timeout to speak of.
            .with_transaction_timeout_ms(i32::MAX);
        if let Some((id, epoch)) = from.filter(|_| version >= 3) {
            request = request.with_producer_id(kafka_protocol::messages::ProducerId(id)).with_producer_epoch(epoch);
        }
        request
    };
    if bump_from.is_some() && version >= 3 {
        let response = connection.send_at(&request(bump_from), version, client.config().request_timeout).await?;
        match ResponseError::try_from_code(response.error_code) {
            None => return Ok((response.producer_id.0, response.producer_epoch)),
            Some(code) => {
                debug!(target: "rill::producer", %code, "epoch bump refused; getting a new producer id");
            }
        }
    }
    let response = connection.send_at(&request(None), version, client.config().request_timeout).await?;
    crate::error::check(kafka_protocol::messages::ApiKey::InitProducerId, response.error_code, || {
        "idempotent producer".to_owned()
    })?;
    // Make sure the metadata the sender routes by exists.
    if cluster.metadata().brokers.is_empty() {
        cluster.refresh(TopicScope::None).await?;
    }
    Ok((response.producer_id.0, response.producer_epoch))
}
