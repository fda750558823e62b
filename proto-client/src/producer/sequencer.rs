//! The sequencer: what may be sent next for each partition, and what each
//! produce answer means. Idempotence lives here. Pure: no IO, time and
//! randomness come in as arguments.
//!
//! Per partition (idempotent producer):
//!
//! ```text
//!             assign(seq)          Written / DUPLICATE
//!  closed ───────────────▶ in flight ───────────────────▶ finished (in order)
//!                            │  ▲
//!          retriable error   │  │ resend, same sequence,
//!          or OUT_OF_ORDER   ▼  │ once nothing earlier is in flight
//!          behind a failure  retry ──── delivery timeout ──▶ finished (error)
//!                            │
//!   OUT_OF_ORDER on the first unresolved batch, UNKNOWN_PRODUCER_ID,
//!   or a batch failed for good (its sequence is lost):
//!                            ▼
//!                     needs reset ── epoch bump (KIP-360) ──▶ sequences
//!                                                            restart at 0
//! ```
//!
//! Rules that keep records exactly once and in order:
//! - a retry keeps its sequence and bytes; retries go out only after every
//!   earlier batch of the partition has answered, and new batches only
//!   after every retry;
//! - until the broker has acknowledged one batch of a partition under the
//!   current producer id and epoch, that partition has one batch in flight:
//!   Kafka takes the first batch of a producer id it does not know at any
//!   sequence, so a second batch could land before a first one that failed
//!   (franz-go's rule);
//! - a partition's in-flight batches are all at one broker: after a leader
//!   move nothing goes to the new leader until the old one has answered;
//! - an answer we did not get (timeout, broken connection), or
//!   NOT_LEADER_OR_FOLLOWER with acks=all (the old leader may have appended
//!   before it lost leadership), makes a batch `maybe_written`, and nothing
//!   clears that; it is only ever resent with the same sequence, so the
//!   broker can deduplicate it, and no new batch follows it until that
//!   resend is answered (Kafka recognises a duplicate only among the last
//!   five batches of a producer);
//! - OUT_OF_ORDER_SEQUENCE_NUMBER on a batch behind an unresolved one is a
//!   retry; on the first unresolved batch it means the broker lost records,
//!   and the partition's sequences restart;
//! - an epoch bump (or a new producer id, where the broker cannot bump)
//!   waits until nothing is in flight and every retry that can still be
//!   resolved under the old epoch is resolved; a batch that may have been
//!   written and would have to be re-sequenced fails alone with
//!   [`Error::MaybeWritten`] (a resend could write it twice), and every
//!   other partition goes on;
//! - results of a partition complete in batch creation order, whatever the
//!   order answers arrive in.
//!
//! Only a fenced or unauthorized producer fails as a whole.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;

use super::accumulator::{BATCH_SPAN, ProducerBatch};
use super::delivery::{Acked, DeliveryGuard};
use crate::error::{Error, ErrorAction, classify};
use crate::net::backoff;

/// How one batch of a produce request ended.
#[derive(Debug, Clone)]
pub(crate) enum BatchResult {
    /// Written at this base offset (`None` with acks=0).
    Written { base_offset: Option<i64>, log_append_time: Option<i64> },
    /// The broker answered with an error code for the partition.
    Rejected { code: ResponseError, message: Option<String> },
    /// No answer: the request may or may not have reached the log.
    Lost(Error),
    /// The request never left (no connection): certainly not written.
    NotSent(Error),
}

/// A batch's final outcome, ready to be handed to its records.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) delivery: DeliveryGuard,
    pub(crate) outcome: Result<Acked, Error>,
    pub(crate) records: i32,
    pub(crate) bytes: usize,
    /// The batch numbers it completes (see [`ProducerBatch::span`]).
    span: u64,
}

/// What the sender should do after a result, besides completing records.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Followup {
    /// Leadership may have moved: refresh metadata.
    pub(crate) refresh_metadata: bool,
}

/// The producer id and epoch batches are stamped with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProducerId {
    /// Not known yet (idempotent producer before InitProducerId).
    Unknown,
    /// In use.
    Ready { id: i64, epoch: i16 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bump {
    None,
    /// Sequences must restart; waiting for in-flight batches to drain.
    Wanted,
}

#[derive(Debug, Default)]
struct PartitionState {
    next_sequence: i32,
    in_flight: usize,
    /// The broker every in-flight batch went to.
    in_flight_at: Option<i32>,
    /// The broker acknowledged a batch under the current producer id and
    /// epoch; until then one batch at a time.
    confirmed: bool,
    /// Batches in flight again after an attempt with no known outcome.
    /// No new batch follows them until they are answered: a broker
    /// recognises a resend only among the last five batches it wrote.
    resent_in_doubt: BTreeSet<u64>,
    /// Numbers of batches holding a sequence, not yet finished.
    unresolved: BTreeSet<u64>,
    retry: BTreeMap<u64, ProducerBatch>,
    /// Resending the retry queue: further retries may follow in flight.
    resending: bool,
    needs_reset: bool,
    next_to_complete: u64,
    /// Finished out of order, held until the earlier batches finish.
    held: BTreeMap<u64, Finished>,
}

/// The sequencer's settings.
#[derive(Debug, Clone)]
pub(crate) struct SequencerConfig {
    pub(crate) idempotent: bool,
    /// A transactional producer: a lost sequence or epoch fails its batch
    /// (the transaction aborts, and its manager bumps the epoch) instead of
    /// being repaired here.
    pub(crate) transactional: bool,
    /// acks=all: a leader may append, then answer NOT_LEADER_OR_FOLLOWER.
    pub(crate) acks_all: bool,
    pub(crate) max_in_flight: usize,
    pub(crate) delivery_timeout: Duration,
    pub(crate) retry_backoff: Duration,
    pub(crate) retry_backoff_max: Duration,
}

/// A broker's rejection of one batch, as an error.
fn rejected(batch: &ProducerBatch, code: ResponseError, message: Option<String>) -> Error {
    let context = format!("topic {} partition {}", batch.topic, batch.partition);
    Error::Broker { api: ApiKey::Produce, code, context, message }
}

/// Per-partition send order, retries and idempotence.
#[derive(Debug)]
pub(crate) struct Sequencer {
    config: SequencerConfig,
    producer: ProducerId,
    partitions: HashMap<(Arc<str>, i32), PartitionState>,
    bump: Bump,
    fatal: Option<Error>,
}

impl Sequencer {
    pub(crate) fn new(config: SequencerConfig) -> Self {
        let producer = if config.idempotent { ProducerId::Unknown } else { ProducerId::Ready { id: -1, epoch: -1 } };
        Sequencer { config, producer, partitions: HashMap::new(), bump: Bump::None, fatal: None }
    }

    fn state(&mut self, topic: &Arc<str>, partition: i32) -> &mut PartitionState {
        self.partitions.entry((topic.clone(), partition)).or_default()
    }

    pub(crate) fn fatal(&self) -> Option<&Error> {
        self.fatal.as_ref()
    }

    /// Whether InitProducerId must be sent now: the first time, or for an
    /// epoch bump once nothing stands in its way.
    pub(crate) fn wants_producer_id(&self) -> bool {
        if self.fatal.is_some() || !self.config.idempotent {
            return false;
        }
        match (self.producer, self.bump) {
            (ProducerId::Unknown, _) => true,
            (ProducerId::Ready { .. }, Bump::None) => false,
            (ProducerId::Ready { .. }, Bump::Wanted) => {
                self.partitions.values().all(|p| p.in_flight == 0 && (p.needs_reset || p.retry.is_empty()))
            }
        }
    }

    /// The producer id to bump from, when bumping.
    pub(crate) fn bumping_from(&self) -> Option<(i64, i16)> {
        match (self.producer, self.bump) {
            (ProducerId::Ready { id, epoch }, Bump::Wanted) => Some((id, epoch)),
            _ => None,
        }
    }

    /// A new producer id or epoch is in use: every partition starts again
    /// at sequence 0 and must be acknowledged once before it sends more
    /// than one batch at a time. Waiting retries get new sequences, except
    /// those that may have been written: resent under a new sequence they
    /// could be written twice, so they fail with [`Error::MaybeWritten`]
    /// (returned, in completion order).
    pub(crate) fn set_producer_id(&mut self, id: i64, epoch: i16) -> Vec<Finished> {
        let reason: Arc<str> = match self.producer {
            ProducerId::Ready { id: old, .. } if old == id => format!("producer epoch bumped to {epoch}"),
            ProducerId::Ready { .. } => format!("the broker could not bump the epoch; new producer id {id}"),
            ProducerId::Unknown => String::new(),
        }
        .into();
        self.producer = ProducerId::Ready { id, epoch };
        self.bump = Bump::None;
        let mut abandoned = Vec::new();
        for state in self.partitions.values_mut() {
            state.next_sequence = 0;
            state.needs_reset = false;
            state.unresolved.clear();
            state.resending = false;
            state.confirmed = false;
            let maybe_written: Vec<u64> = state.retry.values().filter(|b| b.maybe_written).map(|b| b.number).collect();
            abandoned.extend(maybe_written.into_iter().filter_map(|number| state.retry.remove(&number)));
            for batch in state.retry.values_mut() {
                batch.base_sequence = None;
                batch.retry_at = None;
            }
        }
        let mut finished = Vec::new();
        for batch in abandoned {
            let error = Error::MaybeWritten { reason: reason.clone(), last_error: batch.last_error.clone() };
            finished.extend(self.finish(batch, Err(error)));
        }
        finished
    }

    /// Fails the producer: nothing more is sent. Returns the batches held
    /// for retry, for the caller to finish with the error.
    pub(crate) fn fail(&mut self, error: Error) -> Vec<ProducerBatch> {
        if self.fatal.is_none() {
            self.fatal = Some(error);
        }
        self.partitions.values_mut().flat_map(|p| std::mem::take(&mut p.retry).into_values()).collect()
    }

    /// Whether one more batch of the partition may be in flight at
    /// `broker` (its leader now): below the in-flight limit (one until the
    /// broker has acknowledged the producer id), and nothing in flight at
    /// another broker.
    fn room_at(config: &SequencerConfig, state: &PartitionState, broker: i32) -> bool {
        let limit = if config.idempotent && !state.confirmed { 1 } else { config.max_in_flight };
        state.in_flight < limit && (state.in_flight == 0 || state.in_flight_at == Some(broker))
    }

    /// Whether a new batch of this partition may go out now to `broker`.
    pub(crate) fn can_send_new(&mut self, topic: &Arc<str>, partition: i32, broker: i32) -> bool {
        if self.fatal.is_some() || self.producer == ProducerId::Unknown || self.bump != Bump::None {
            return false;
        }
        let state = self.partitions.entry((topic.clone(), partition)).or_default();
        !state.needs_reset
            && state.retry.is_empty()
            && state.resent_in_doubt.is_empty()
            && Self::room_at(&self.config, state, broker)
    }

    /// Takes the partition's next retry if it may go out now to `broker`.
    pub(crate) fn next_retry(
        &mut self,
        topic: &Arc<str>,
        partition: i32,
        broker: i32,
        now: Instant,
    ) -> Option<ProducerBatch> {
        if self.fatal.is_some() || self.producer == ProducerId::Unknown {
            return None;
        }
        let bumping = self.bump != Bump::None;
        let state = self.partitions.get_mut(&(topic.clone(), partition))?;
        if state.needs_reset && bumping {
            return None;
        }
        // Resend only once every earlier attempt has answered; then the
        // whole queue may follow in order.
        if !(state.in_flight == 0 || state.resending) || !Self::room_at(&self.config, state, broker) {
            return None;
        }
        let (&number, first) = state.retry.first_key_value()?;
        if first.retry_at.is_some_and(|at| at > now) {
            return None;
        }
        state.resending = true;
        let batch = state.retry.remove(&number).expect("first key");
        if state.retry.is_empty() {
            state.resending = false;
        }
        Some(batch)
    }

    /// When the earliest retry may go out.
    pub(crate) fn next_retry_at(&self) -> Option<Instant> {
        self.partitions.values().filter_map(|p| p.retry.values().next().and_then(|b| b.retry_at)).min()
    }

    /// Partitions holding retries.
    pub(crate) fn partitions_with_retries(&self) -> Vec<(Arc<str>, i32)> {
        self.partitions.iter().filter(|(_, p)| !p.retry.is_empty()).map(|(k, _)| k.clone()).collect()
    }

    /// Gives a batch its sequence (first send, or first send after a bump)
    /// and counts it in flight at `broker`. Returns the (id, epoch, base
    /// sequence) the payload must carry.
    pub(crate) fn assign(&mut self, batch: &mut ProducerBatch, broker: i32) -> (i64, i16, i32) {
        let ProducerId::Ready { id, epoch } = self.producer else {
            panic!("assign before the producer id is known");
        };
        let idempotent = self.config.idempotent;
        let state = self.state(&batch.topic, batch.partition);
        state.in_flight += 1;
        state.in_flight_at = Some(broker);
        if !idempotent {
            return (-1, -1, -1);
        }
        let sequence = match batch.base_sequence {
            Some(sequence) => sequence,
            None => {
                let sequence = state.next_sequence;
                // Sequences wrap from i32::MAX to 0, as the broker expects.
                state.next_sequence = sequence.wrapping_add(batch.records) & i32::MAX;
                batch.base_sequence = Some(sequence);
                sequence
            }
        };
        state.unresolved.insert(batch.number);
        if batch.maybe_written {
            state.resent_in_doubt.insert(batch.number);
        }
        batch.attempts += 1;
        (id, epoch, sequence)
    }

    /// Handles the outcome of one batch of a produce request.
    pub(crate) fn on_result(
        &mut self,
        mut batch: ProducerBatch,
        result: BatchResult,
        now: Instant,
        jitter: f64,
    ) -> (Vec<Finished>, Followup) {
        /// What the answer means for the batch.
        enum Decision {
            Finish(Result<Acked, Error>),
            /// Try again; the error is kept for a timeout's report.
            Retry(Error),
            /// Too large for the broker: send its halves, at once.
            Split(Error),
            FailProducer(Error),
        }
        let mut followup = Followup::default();
        let idempotent = self.config.idempotent;
        let (first_unresolved, partition_reset) = {
            let state = self.state(&batch.topic, batch.partition);
            state.in_flight = state.in_flight.saturating_sub(1);
            if state.in_flight == 0 {
                state.in_flight_at = None;
            }
            state.resent_in_doubt.remove(&batch.number);
            (state.unresolved.first().copied(), state.needs_reset)
        };
        // Whether the partition's sequences must restart (epoch bump).
        let mut reset = false;
        let decision = match result {
            BatchResult::Written { base_offset, log_append_time } => {
                self.state(&batch.topic, batch.partition).confirmed = true;
                Decision::Finish(Ok(Acked { base_offset, log_append_time }))
            }
            BatchResult::Rejected { code: ResponseError::DuplicateSequenceNumber, .. } if idempotent => {
                // Written by an earlier attempt whose answer we missed.
                self.state(&batch.topic, batch.partition).confirmed = true;
                Decision::Finish(Ok(Acked { base_offset: None, log_append_time: None }))
            }
            _ if self.fatal.is_some() => Decision::Finish(Err(self.fatal.clone().expect("checked"))),
            BatchResult::Rejected {
                code:
                    code @ (ResponseError::OutOfOrderSequenceNumber
                    | ResponseError::UnknownProducerId
                    | ResponseError::InvalidProducerEpoch),
                message,
            } if self.config.transactional => {
                // The transaction cannot commit: it aborts, and the bump
                // after it restarts the sequences (as Java). An epoch the
                // coordinator moved on (it timed the transaction out) is
                // abortable too (KIP-588).
                Decision::Finish(Err(rejected(&batch, code, message)))
            }
            BatchResult::Rejected { code: ResponseError::OutOfOrderSequenceNumber, .. } if idempotent => {
                // This attempt was not written. Behind an earlier failure
                // that is normal (the earlier batch is resent first); on
                // the first unresolved batch it means the broker lost
                // records we thought written. An earlier attempt of this
                // batch may still be in the log: Kafka answers this too for
                // a resend older than its five-batch window, so whether the
                // batch may be written stays as it was.
                reset = partition_reset || first_unresolved == Some(batch.number);
                Decision::Retry(rejected(&batch, ResponseError::OutOfOrderSequenceNumber, None))
            }
            BatchResult::Rejected { code: ResponseError::UnknownProducerId, .. } if idempotent => {
                // The broker forgot this producer (its records aged out).
                reset = true;
                Decision::Retry(rejected(&batch, ResponseError::UnknownProducerId, None))
            }
            BatchResult::Rejected {
                code:
                    code @ (ResponseError::InvalidProducerEpoch
                    | ResponseError::ProducerFenced
                    | ResponseError::InvalidProducerIdMapping
                    | ResponseError::TransactionalIdAuthorizationFailed
                    | ResponseError::ClusterAuthorizationFailed),
                message,
            } => {
                let detail = message.map(|m| format!(" ({m})")).unwrap_or_default();
                let reason = format!("{code} on {}/{}{detail}", batch.topic, batch.partition);
                Decision::FailProducer(Error::ProducerFailed { reason: reason.into() })
            }
            BatchResult::Rejected {
                code: code @ (ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge),
                message,
            } if batch.records > 1 => Decision::Split(rejected(&batch, code, message)),
            BatchResult::Rejected { code: code @ ResponseError::NotLeaderOrFollower, message } => {
                // With acks=all the leader appends, then waits for its
                // replicas; one that loses leadership meanwhile answers
                // this after the append.
                batch.maybe_written |= self.config.acks_all;
                followup.refresh_metadata = true;
                Decision::Retry(rejected(&batch, code, message))
            }
            BatchResult::Rejected { code, message } => {
                let error = rejected(&batch, code, message);
                match classify(code) {
                    ErrorAction::Retry => Decision::Retry(error),
                    ErrorAction::RefreshMetadata => {
                        followup.refresh_metadata = true;
                        Decision::Retry(error)
                    }
                    ErrorAction::Ambiguous => {
                        batch.maybe_written = true;
                        Decision::Retry(error)
                    }
                    ErrorAction::Fatal => {
                        // The batch's sequences will never be written: the
                        // partition's next ones would be out of order.
                        reset = idempotent && batch.base_sequence.is_some();
                        Decision::Finish(Err(error))
                    }
                }
            }
            BatchResult::Lost(error) => {
                batch.maybe_written = true;
                followup.refresh_metadata = true;
                Decision::Retry(error)
            }
            BatchResult::NotSent(error) => {
                followup.refresh_metadata = true;
                Decision::Retry(error)
            }
        };
        if reset {
            self.state(&batch.topic, batch.partition).needs_reset = true;
            self.bump = Bump::Wanted;
        }
        let finished = match decision {
            Decision::Finish(outcome) => self.finish(batch, outcome),
            Decision::Retry(error) => {
                batch.last_error = Some(Arc::new(error));
                self.retry(batch, now, jitter)
            }
            Decision::Split(error) => match batch.split() {
                Ok((first, second)) => {
                    // Not written: the halves share the batch's sequence
                    // numbers, and go again before anything later.
                    let state = self.state(&first.topic, first.partition);
                    if idempotent && first.base_sequence.is_some() {
                        state.unresolved.insert(second.number);
                    }
                    state.resending = false;
                    state.retry.insert(first.number, first);
                    state.retry.insert(second.number, second);
                    Vec::new()
                }
                Err(batch) => {
                    let batch = *batch;
                    // It cannot be split: it fails, and its sequences are lost.
                    if idempotent && batch.base_sequence.is_some() {
                        self.state(&batch.topic, batch.partition).needs_reset = true;
                        self.bump = Bump::Wanted;
                    }
                    self.finish(batch, Err(error))
                }
            },
            Decision::FailProducer(error) => {
                let mut finished = Vec::new();
                for held in self.fail(error.clone()) {
                    finished.extend(self.finish(held, Err(error.clone())));
                }
                finished.extend(self.finish(batch, Err(error)));
                finished
            }
        };
        (finished, followup)
    }

    /// Queues a batch for a retry, or ends it if its time is up.
    fn retry(&mut self, mut batch: ProducerBatch, now: Instant, jitter: f64) -> Vec<Finished> {
        if now >= batch.created + self.config.delivery_timeout {
            return self.expire_batch(batch);
        }
        let (initial, max) = (self.config.retry_backoff, self.config.retry_backoff_max);
        batch.retry_at = Some(now + backoff::delay(initial, max, batch.attempts.saturating_sub(1), jitter));
        let state = self.state(&batch.topic, batch.partition);
        // A batch came back while the queue was being resent: wait for the
        // rest of the attempts to answer before resending again.
        state.resending = false;
        state.retry.insert(batch.number, batch);
        Vec::new()
    }

    fn expire_batch(&mut self, batch: ProducerBatch) -> Vec<Finished> {
        let error = Error::DeliveryTimeout {
            after: self.config.delivery_timeout,
            maybe_written: batch.maybe_written,
            last_error: batch.last_error.clone(),
        };
        if self.config.idempotent && batch.base_sequence.is_some() {
            // Its sequence is abandoned: what follows must be re-sequenced.
            let state = self.state(&batch.topic, batch.partition);
            state.needs_reset = true;
            self.bump = Bump::Wanted;
        }
        self.finish(batch, Err(error))
    }

    /// Ends retries that have waited past the delivery timeout.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<Finished> {
        let timeout = self.config.delivery_timeout;
        let mut expired = Vec::new();
        for state in self.partitions.values_mut() {
            let numbers: Vec<u64> =
                state.retry.iter().filter(|(_, b)| now >= b.created + timeout).map(|(n, _)| *n).collect();
            for number in numbers {
                expired.push(state.retry.remove(&number).expect("listed"));
            }
            if state.retry.is_empty() {
                state.resending = false;
            }
        }
        expired.into_iter().flat_map(|batch| self.expire_batch(batch)).collect()
    }

    /// Ends a batch and releases every result that is now in order.
    pub(crate) fn finish(&mut self, batch: ProducerBatch, outcome: Result<Acked, Error>) -> Vec<Finished> {
        let state = self.state(&batch.topic, batch.partition);
        state.unresolved.remove(&batch.number);
        state.held.insert(
            batch.number,
            Finished {
                delivery: batch.delivery,
                outcome,
                records: batch.records,
                bytes: batch.accounted_bytes,
                span: batch.span,
            },
        );
        let mut ready = Vec::new();
        while let Some(finished) = state.held.remove(&state.next_to_complete) {
            state.next_to_complete += finished.span;
            ready.push(finished);
        }
        ready
    }

    /// Batches of a partition finished so far, whole (they finish in order).
    pub(crate) fn completed(&self, topic: &Arc<str>, partition: i32) -> u64 {
        self.partitions.get(&(topic.clone(), partition)).map_or(0, |p| p.next_to_complete / BATCH_SPAN)
    }

    /// Batches in flight, over all partitions.
    pub(crate) fn in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.in_flight).sum()
    }

    /// Takes every retry (closing).
    pub(crate) fn take_retries(&mut self) -> Vec<ProducerBatch> {
        self.partitions.values_mut().flat_map(|p| std::mem::take(&mut p.retry).into_values()).collect()
    }
}

#[cfg(test)]
mod tests;
