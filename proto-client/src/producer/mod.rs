//! The producer: idempotent, batching, ordered per partition.
//!
//! ```text
//!  send(record) ─▶ partitioner ─▶ Accumulator ──(ready batches)──▶ sender task
//!      │             (murmur2,      one open batch      │            │ per leader: one
//!      │              sticky)       per partition       │            │ Produce request,
//!      ▼                                                │            │ ≤ max in flight
//!  DeliveryFuture ◀── outcome, in send order ◀── Sequencer ◀─ answers ┘
//!                                               (sequences, retries, epoch bumps)
//! ```
//!
//! - `config`: [`ProducerConfig`].
//! - `partitioner`: murmur2, CRC32, sticky, or the application's own.
//! - `accumulator` (pure): records waiting in per-partition batches.
//! - `sequencer` (pure): send order, retries, idempotence, epoch bumps.
//! - `sender`: the task that turns batches into requests.
//! - `delivery`: the futures records resolve through.
//! - `transaction` (pure): a transactional producer's state machine.
//! - `txn_driver`: the task that runs it against the coordinators.

pub(crate) mod accumulator;
pub mod config;
pub mod delivery;
pub mod partitioner;
pub(crate) mod sender;
pub(crate) mod sequencer;
pub(crate) mod transaction;
pub(crate) mod txn_driver;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::time::Instant;

use accumulator::{Accumulator, AppendError, Appended, Limits, Target};
use sequencer::{Sequencer, SequencerConfig};
use transaction::{Done, Transactions, TxnConfig, TxnState};

pub use config::{Acks, ProducerConfig};
pub use delivery::{DeliveryFuture, RecordMetadata};
pub use partitioner::{Partitioner, PartitionerKind, murmur2, murmur2_partition};
pub use transaction::{GroupMetadata, TxnError};

use crate::client::Client;
use crate::cluster::TopicScope;
use crate::error::{Error, ErrorAction, Result};
use crate::net::backoff::{delay, jitter};
pub use crate::records::Header;

/// A record to send. It borrows its data: `send` copies key, value and
/// headers into a batch before it returns, so nothing is allocated per
/// record.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The topic.
    pub topic: &'a str,
    /// A partition chosen by the caller; otherwise the partitioner picks.
    pub partition: Option<i32>,
    /// The key; `None` is a null key.
    pub key: Option<&'a [u8]>,
    /// The value; `None` is a null value (a tombstone on compacted topics).
    pub value: Option<&'a [u8]>,
    /// Headers; keys may repeat.
    pub headers: &'a [Header<'a>],
    /// CreateTime in milliseconds since the epoch; `None` is now.
    pub timestamp: Option<i64>,
}

impl<'a> Record<'a> {
    /// A record for `topic` with no key, value or headers.
    pub fn to(topic: &'a str) -> Self {
        Record { topic, partition: None, key: None, value: None, headers: &[], timestamp: None }
    }

    /// Sets the key.
    pub fn key(mut self, key: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        self.key = Some(key.as_ref());
        self
    }

    /// Sets the value.
    pub fn value(mut self, value: &'a (impl AsRef<[u8]> + ?Sized)) -> Self {
        self.value = Some(value.as_ref());
        self
    }

    /// Sets the partition.
    pub fn partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the headers.
    pub fn headers(mut self, headers: &'a [Header<'a>]) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the timestamp (ms since the epoch).
    pub fn timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }
}

/// Why [`Producer::try_send`] did not take a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrySendError {
    /// The buffer is at `queue.buffering.max.messages` or `.kbytes`.
    #[error("the producer's buffer is full")]
    QueueFull,
    /// The topic's partitions are being looked up; try again shortly (or
    /// use `send`, which waits).
    #[error("metadata for topic {0} is not known yet")]
    NotReady(String),
    /// The record cannot be sent.
    #[error(transparent)]
    Failed(#[from] Error),
}

/// The producer's shared state: the accumulator and sequencer behind one
/// lock, and the signals between senders, the sender task and flushes.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ProducerConfig,
    pub(crate) client: Client,
    pub(crate) state: Mutex<State>,
    /// Wakes the sender task: a batch opened or closed, a flush, a close.
    pub(crate) wake: Notify,
    /// Batches finished: buffer space freed, flushes may be done.
    pub(crate) progress: Notify,
    pub(crate) closing: AtomicBool,
    /// Wakes the transaction driver: an operation or a partition to add.
    pub(crate) txn_wake: Notify,
    /// A transactional operation finished (see `State::txn_results`).
    pub(crate) txn_done: Notify,
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) accumulator: Accumulator,
    pub(crate) sequencer: Sequencer,
    flushes: usize,
    /// The close deadline passed: fail what is left.
    pub(crate) abort: bool,
    /// A transactional producer's state machine.
    pub(crate) transactions: Option<Transactions>,
    /// Transactional operations finished, for their waiters.
    txn_results: Vec<(Done, std::result::Result<(), TxnError>)>,
}

impl State {
    /// No record of the transaction is waiting or unanswered.
    pub(crate) fn produce_idle(&self) -> bool {
        self.accumulator.buffered() == (0, 0)
            && self.sequencer.in_flight() == 0
            && self.sequencer.partitions_with_retries().is_empty()
    }

    /// Releases finished batches' buffer space and, for a transactional
    /// producer, tells the transaction what became of them, under the same
    /// lock: a commit never sees the batches done before it knows one
    /// failed. A producer the sequencer failed for good (fenced) fails the
    /// transaction for good too.
    pub(crate) fn release_finished(&mut self, finished: &[sequencer::Finished]) {
        for f in finished {
            self.accumulator.release(f.records, f.bytes);
        }
        let Some(txn) = &mut self.transactions else { return };
        if let Some(fatal) = self.sequencer.fatal() {
            txn.fail_for_good(fatal.to_string());
        }
        for f in finished {
            match &f.outcome {
                Ok(_) | Err(Error::Transaction(TxnError::Aborted)) => {}
                Err(error) => {
                    let code = match error {
                        Error::Broker { code, .. } => Some(*code),
                        _ => None,
                    };
                    txn.on_produce_error(code, error.to_string());
                }
            }
        }
        self.collect_txn_done();
    }

    /// Moves what the state machine finished to the waiters' list.
    pub(crate) fn collect_txn_done(&mut self) {
        if let Some(txn) = &mut self.transactions {
            self.txn_results.extend(txn.take_done());
        }
    }

    /// The transaction manager, or an error for a producer without one.
    fn transactions(&mut self) -> Result<&mut Transactions> {
        self.transactions
            .as_mut()
            .ok_or_else(|| Error::Transaction(TxnError::State("the producer has no `transactional.id`".into())))
    }
}

impl Shared {
    /// Hands finished batches' outcomes to their records (their space was
    /// released, and a transaction told, by `State::release_finished`), and
    /// wakes whoever waits on progress: flushes, full buffers, and for a
    /// transactional producer its waiters and driver.
    pub(crate) fn complete(&self, finished: Vec<sequencer::Finished>) {
        if finished.is_empty() {
            return;
        }
        if self.config.transactional_id.is_some() {
            self.txn_done.notify_waiters();
            self.txn_wake.notify_one();
        }
        for f in finished {
            if let Err(error) = &f.outcome {
                tracing::debug!(target: "rill::producer", %error, records = f.records, "batch failed");
            }
            f.delivery.complete(f.outcome);
        }
        self.progress.notify_waiters();
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before anything
        // that could panic; a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An idempotent, batching Kafka producer.
///
/// Cheap to clone; clones share the buffer and the sender task. Dropping
/// the last clone stops accepting records; those already sent are still
/// delivered. Use [`Producer::close`] to wait for them.
#[derive(Debug, Clone)]
pub struct Producer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        self.shared.txn_wake.notify_one();
    }
}

impl Producer {
    /// Creates a producer (and its own client). Must be called inside a
    /// tokio runtime.
    pub fn new(config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let client = Client::new(config.client.clone())?;
        let limits = Limits {
            batch_size: config.batch_size,
            batch_records: config.batch_records,
            linger: config.linger,
            buffer_bytes: config.buffer_bytes,
            buffer_records: config.buffer_records,
            max_record_bytes: config.max_message_bytes,
        };
        let sequencer = Sequencer::new(SequencerConfig {
            transactional: config.transactional_id.is_some(),
            idempotent: config.idempotence,
            acks_all: config.acks == Acks::All,
            max_in_flight: config.max_in_flight,
            delivery_timeout: config.delivery_timeout,
            retry_backoff: config.client.retry_backoff,
            retry_backoff_max: config.client.retry_backoff_max,
        });
        let transactions = config.transactional_id.as_ref().map(|_| {
            Transactions::new(TxnConfig {
                timeout: config.transaction_timeout,
                // A coordinator below InitProducerId v3 takes the bump as
                // a new initialization: the epoch moves on either way.
                can_bump: true,
                retry_backoff: config.client.retry_backoff,
                retry_backoff_max: config.client.retry_backoff_max,
            })
        });
        let transactional = transactions.is_some();
        let shared = Arc::new(Shared {
            config,
            client,
            state: Mutex::new(State {
                accumulator: Accumulator::new(limits),
                sequencer,
                flushes: 0,
                abort: false,
                transactions,
                txn_results: Vec::new(),
            }),
            wake: Notify::new(),
            progress: Notify::new(),
            closing: AtomicBool::new(false),
            txn_wake: Notify::new(),
            txn_done: Notify::new(),
        });
        tokio::spawn(sender::Sender::new(shared.clone()).run());
        if transactional {
            tokio::spawn(txn_driver::run(shared.clone()));
        }
        Ok(Producer { inner: Arc::new(Inner { shared }) })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The client underneath (metadata, admin).
    pub fn client(&self) -> &Client {
        &self.shared().client
    }

    /// Queues a record and returns the future of its delivery. Waits only
    /// while the buffer is full, or, for a topic not seen before, for its
    /// metadata.
    pub async fn send(&self, record: Record<'_>) -> Result<DeliveryFuture> {
        loop {
            match self.append(&record) {
                Ok(future) => return Ok(future),
                Err(TrySendError::QueueFull) => {
                    // Register for "space freed", then try once more: room
                    // freed between the first attempt and the registration
                    // would otherwise be missed.
                    let space = self.shared().progress.notified();
                    tokio::pin!(space);
                    space.as_mut().enable();
                    match self.append(&record) {
                        Ok(future) => return Ok(future),
                        Err(TrySendError::QueueFull) => space.await,
                        Err(TrySendError::NotReady(topic)) => self.learn_topic(&topic).await?,
                        Err(TrySendError::Failed(error)) => return Err(error),
                    }
                }
                Err(TrySendError::NotReady(topic)) => self.learn_topic(&topic).await?,
                Err(TrySendError::Failed(error)) => return Err(error),
            }
        }
    }

    /// Queues a record if there is room now; never waits.
    pub fn try_send(&self, record: Record<'_>) -> Result<DeliveryFuture, TrySendError> {
        let result = self.append(&record);
        if let Err(TrySendError::NotReady(topic)) = &result {
            // Start the lookup so that a later attempt finds the topic.
            let producer = self.clone();
            let topic = topic.clone();
            tokio::spawn(async move {
                let _ = producer.learn_topic(&topic).await;
            });
        }
        result
    }

    fn append(&self, record: &Record<'_>) -> Result<DeliveryFuture, TrySendError> {
        let shared = self.shared();
        if shared.closing.load(Ordering::Acquire) {
            return Err(TrySendError::Failed(Error::Closed));
        }
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        let mut state = shared.lock();
        if let Some(error) = state.sequencer.fatal() {
            return Err(TrySendError::Failed(error.clone()));
        }
        if let Some(txn) = &state.transactions
            && txn.state() != TxnState::InTransaction
        {
            let error = txn.error().cloned().unwrap_or_else(|| {
                TxnError::State("a transactional producer sends inside a transaction (begin_transaction)".into())
            });
            return Err(TrySendError::Failed(Error::Transaction(error)));
        }
        let target = |partitions| match (record.partition, record.key) {
            (Some(partition), _) => Target::Partition(partition),
            (None, Some(key)) => Target::Partition(shared.config.partitioner.keyed(record.topic, key, partitions)),
            (None, None) => Target::Sticky,
        };
        let appended = Appended { timestamp, key: record.key, value: record.value, headers: record.headers };
        let now = || Instant::now().into_std();
        let random = || (jitter() * u32::MAX as f64) as u64;
        match state.accumulator.append(record.topic, target, appended, now, random) {
            Ok(outcome) => {
                // A batch's first record puts its partition in the
                // transaction (checked above); added before the batch goes
                // out. Once per batch, not per record: a batch never spans
                // transactions (a commit sends every batch first, an abort
                // fails the unsent ones).
                if outcome.index == 0
                    && let Some(txn) = &mut state.transactions
                {
                    let _ = txn.record_to(&crate::TopicPartition::new(record.topic, outcome.partition));
                    shared.txn_wake.notify_one();
                }
                drop(state);
                if outcome.wake_sender {
                    shared.wake.notify_one();
                }
                Ok(DeliveryFuture::new(outcome.delivery, outcome.index, timestamp))
            }
            Err(AppendError::Full) => Err(TrySendError::QueueFull),
            Err(AppendError::UnknownTopic) => Err(TrySendError::NotReady(record.topic.to_owned())),
            Err(AppendError::TooLarge { size, max }) => Err(TrySendError::Failed(Error::RecordTooLarge { size, max })),
            Err(AppendError::NoSuchPartition { partitions }) => {
                Err(TrySendError::Failed(Error::UnknownTopicOrPartition(format!(
                    "{}/{} (the topic has {partitions} partitions)",
                    record.topic,
                    record.partition.unwrap_or(-1)
                ))))
            }
        }
    }

    /// Looks a topic up until its partitions are known, it is known not to
    /// exist, or `delivery.timeout.ms` passes.
    async fn learn_topic(&self, topic: &str) -> Result<()> {
        let shared = self.shared();
        let cluster = shared.client.cluster();
        cluster.want_topics([topic]);
        let config = &shared.config;
        let deadline = Instant::now() + config.delivery_timeout;
        let mut failures = 0;
        loop {
            let error = match cluster.refresh(TopicScope::Named(vec![topic.to_owned()])).await {
                Ok((metadata, report)) => {
                    if report.unknown_topics.iter().any(|t| t == topic) {
                        return Err(Error::UnknownTopicOrPartition(topic.to_owned()));
                    }
                    match metadata.topics.get(topic) {
                        Some(info) if !info.partitions.is_empty() => {
                            let available =
                                info.partitions.iter().filter(|p| p.leader.is_some()).map(|p| p.partition).collect();
                            shared.lock().accumulator.set_topic(topic, info.partitions.len() as i32, available);
                            return Ok(());
                        }
                        _ => match report.topic_errors.iter().find(|(t, _)| t == topic) {
                            Some((_, code)) => Error::broker(
                                kafka_protocol::messages::ApiKey::Metadata,
                                *code,
                                format!("topic {topic}"),
                            ),
                            None => Error::UnknownTopicOrPartition(topic.to_owned()),
                        },
                    }
                }
                Err(error) => error,
            };
            if error.action() == ErrorAction::Fatal {
                return Err(error);
            }
            let wait = delay(config.client.retry_backoff, config.client.retry_backoff_max, failures, jitter());
            failures += 1;
            if Instant::now() + wait >= deadline {
                return Err(Error::Timeout {
                    operation: format!("looking up topic {topic} ({error})"),
                    after: config.delivery_timeout,
                });
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Initializes a transactional producer (`transactional.id`): gets its
    /// producer id and epoch from the transaction coordinator, which
    /// fences any older producer of the same id and aborts what it left
    /// open. Call once, before the first transaction.
    pub async fn init_transactions(&self) -> Result<()> {
        self.transact(Done::Initialized, Transactions::init).await
    }

    /// Begins a transaction: records sent from now on commit or abort
    /// together.
    pub fn begin_transaction(&self) -> Result<()> {
        let mut state = self.shared().lock();
        state.transactions()?.begin().map_err(Error::Transaction)
    }

    /// Commits a consumer's offsets inside the transaction (KIP-447):
    /// they count only if the transaction commits. `group` is the
    /// consumer's [`GroupMetadata`], so that a consumer of an older
    /// generation (a zombie) is fenced. Offsets are the next ones to read,
    /// with the leader epoch of the record before, when known.
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: &[(crate::TopicPartition, i64, Option<i32>)],
        group: &GroupMetadata,
    ) -> Result<()> {
        let offsets = offsets.to_vec();
        let group = group.clone();
        self.transact(Done::OffsetsSent, move |txn| txn.send_offsets(group, offsets)).await
    }

    /// Commits the transaction: sends what is queued, waits until every
    /// record of it is written, then ends it. An abortable error (a record
    /// that failed) leaves the transaction to abort.
    pub async fn commit_transaction(&self) -> Result<()> {
        self.start(Transactions::commit)?;
        // What is queued goes without waiting for linger; the records' own
        // failures are the transaction's (the commit then fails as
        // abortable).
        let _ = self.flush().await;
        self.finished(Done::Committed).await
    }

    /// Aborts the transaction: records not yet sent fail
    /// ([`TxnError::Aborted`]), those in flight are waited for, and the
    /// coordinator writes abort markers. After a failed batch the epoch is
    /// bumped, so late writes of the aborted transaction are fenced.
    pub async fn abort_transaction(&self) -> Result<()> {
        self.transact(Done::Aborted, Transactions::abort).await
    }

    /// Runs a transactional operation and waits for it to finish.
    async fn transact(
        &self,
        done: Done,
        operation: impl FnOnce(&mut Transactions) -> std::result::Result<(), TxnError>,
    ) -> Result<()> {
        self.start(operation)?;
        self.finished(done).await
    }

    /// Starts a transactional operation: the state machine takes it, and
    /// the driver and sender look.
    fn start(&self, operation: impl FnOnce(&mut Transactions) -> std::result::Result<(), TxnError>) -> Result<()> {
        let shared = self.shared();
        {
            let mut state = shared.lock();
            operation(state.transactions()?).map_err(Error::Transaction)?;
            state.collect_txn_done();
        }
        shared.txn_wake.notify_one();
        shared.wake.notify_one();
        Ok(())
    }

    /// Waits for a transactional operation's outcome (or the producer's
    /// fatal error).
    async fn finished(&self, done: Done) -> Result<()> {
        let shared = self.shared();
        loop {
            let finished = shared.txn_done.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            {
                let mut state = shared.lock();
                state.collect_txn_done();
                if let Some(at) = state.txn_results.iter().position(|(kind, _)| *kind == done) {
                    return state.txn_results.remove(at).1.map_err(Error::Transaction);
                }
                let txn = state.transactions()?;
                if txn.state() == TxnState::Fatal {
                    let error = txn.error().cloned().unwrap_or_else(|| TxnError::Fatal("the producer failed".into()));
                    return Err(Error::Transaction(error));
                }
            }
            finished.await;
        }
    }

    /// Records and bytes held: queued, in flight or waiting for a retry.
    pub fn buffered(&self) -> (usize, usize) {
        self.shared().lock().accumulator.buffered()
    }

    /// Sends every record queued so far without waiting for linger, and
    /// waits until each has an outcome.
    pub async fn flush(&self) -> Result<()> {
        self.flush_within(None).await
    }

    /// [`Self::flush`], giving up after `timeout` (the records stay queued).
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<()> {
        self.flush_within(Some(timeout)).await
    }

    async fn flush_within(&self, timeout: Option<Duration>) -> Result<()> {
        let shared = self.shared();
        let targets = {
            let mut state = shared.lock();
            state.flushes += 1;
            state.accumulator.begin_flush();
            state.accumulator.batch_counts()
        };
        shared.wake.notify_one();
        let wait = async {
            loop {
                let progress = shared.progress.notified();
                tokio::pin!(progress);
                progress.as_mut().enable();
                let done = {
                    let state = shared.lock();
                    targets
                        .iter()
                        .all(|((topic, partition), count)| state.sequencer.completed(topic, *partition) >= *count)
                };
                if done {
                    return;
                }
                progress.await;
            }
        };
        let result = match timeout {
            None => {
                wait.await;
                Ok(())
            }
            Some(timeout) => tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| Error::Timeout { operation: "flushing the producer".into(), after: timeout }),
        };
        let mut state = shared.lock();
        state.flushes -= 1;
        if state.flushes == 0 {
            state.accumulator.end_flush();
        }
        result
    }

    /// Stops accepting records, delivers what is queued, and returns within
    /// `timeout` whether or not brokers answer. Records not delivered by
    /// then fail (saying whether they may have been written).
    pub async fn close(&self, timeout: Duration) -> Result<()> {
        let shared = self.shared();
        shared.closing.store(true, Ordering::Release);
        shared.txn_wake.notify_one();
        let result = self.flush_timeout(timeout).await;
        if result.is_err() {
            self.abort();
        }
        result
    }

    /// Stops at once, as a crash would, without waiting for anything:
    /// records not yet sent fail as not written, records waiting for a
    /// retry fail (saying whether an attempt may have been written), and
    /// requests already on the wire get whatever answer they get. Nothing
    /// more is sent, by this handle or any clone of it.
    pub fn abort(&self) {
        let shared = self.shared();
        shared.closing.store(true, Ordering::Release);
        shared.lock().abort = true;
        shared.wake.notify_one();
        shared.txn_wake.notify_one();
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
