//! The transaction manager of a transactional producer (`transactional.id`):
//! what to ask the transaction and group coordinators next, and what each
//! answer means. Pure: no IO; time comes in as an argument.
//!
//! ```text
//!  Uninitialized ─init─▶ Initializing ─InitProducerId─▶ Ready ◀──────────────┐
//!                                                        │ begin             │
//!                                                        ▼                   │
//!                     abortable error  ┌──────────── InTransaction           │
//!                   (produce, add,     ▼                 │ commit            │
//!                    offsets)    AbortableError          ▼                   │
//!                                  │ abort          Committing ─EndTxn(1)────┤
//!                                  ▼                                         │
//!          InTransaction ─abort─▶ Aborting ─EndTxn(0)─▶ (InitProducerId     │
//!                                                        bump when needed)───┘
//!  any ─ fenced, unauthorized, invalid state ─▶ Fatal (terminal)
//! ```
//!
//! Rules, as Java's `TransactionManager` and KIP-98 / KIP-360 / KIP-447 have them:
//! - One request to a coordinator at a time, in this order: FindCoordinator,
//!   InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit,
//!   EndTxn.
//! - A partition is added (AddPartitionsToTxn, every partition waiting at
//!   once) before any batch goes to it: the sender asks [`Self::may_send`].
//! - EndTxn goes only when every batch of the transaction was answered
//!   (`produce_idle`) and every add and offset commit was answered. A
//!   transaction that added nothing ends without a request.
//! - Coordinator errors ([`txn_action`]): retriable ones (a coordinator
//!   loading, moved or busy, CONCURRENT_TRANSACTIONS, any retriable code)
//!   are retried with backoff inside a call; abortable ones (an
//!   unauthorized topic or group, a group generation that moved on,
//!   TRANSACTION_ABORTABLE) leave the transaction to be aborted; fatal ones
//!   (PRODUCER_FENCED, INVALID_PRODUCER_EPOCH, INVALID_PRODUCER_ID_MAPPING,
//!   TRANSACTIONAL_ID_AUTHORIZATION_FAILED, INVALID_TXN_STATE, an unknown
//!   code) end the producer: nothing is sent again.
//! - A failed batch ([`produce_is_fatal`]) is fatal only when the producer is
//!   fenced or unauthorized; anything else (INVALID_PRODUCER_EPOCH from a
//!   transaction the coordinator timed out included) is abortable, with an
//!   epoch bump (KIP-360) where the broker can bump and the transaction is
//!   not already ending: after the abort, InitProducerId with the current
//!   id and epoch gives the next epoch, and late batches of the aborted
//!   transaction are fenced.
//! - UNKNOWN_PRODUCER_ID from the coordinator is abortable with a bump
//!   (fatal where the broker cannot bump); on EndTxn(abort) the bump
//!   follows at once.
//! - An answer that never came (timeout, cut connection) is retried as it
//!   was: each call is idempotent at the coordinator for the same epoch. An
//!   add whose answer was lost, or still in flight, when the transaction is
//!   aborted is sent again before EndTxn(abort): the coordinator may have
//!   started the transaction, and one left open is aborted at
//!   `transaction.timeout.ms` with the epoch bumped (fencing this producer).
//! - Once aborting, no batch goes out that was not already in flight (the
//!   driver fails the rest unsent).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;

use crate::TopicPartition;
use crate::net::backoff;

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnState {
    Uninitialized,
    Initializing,
    Ready,
    InTransaction,
    Committing,
    Aborting,
    AbortableError,
    Fatal,
}

/// The consumer group a transaction commits offsets for, as the consumer
/// knows it (KIP-447): the coordinator fences a zombie by its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetadata {
    /// The group id.
    pub group_id: String,
    /// The generation (classic) or member epoch (KIP-848); -1 unknown.
    pub generation_id: i32,
    /// The member id; empty when unknown.
    pub member_id: String,
    /// The static member's instance id.
    pub group_instance_id: Option<String>,
}

/// Which coordinator a lookup is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Coordinator {
    Transaction,
    Group(String),
}

/// A request the driver should send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    FindCoordinator(Coordinator),
    /// With `current`, a bump of that id and epoch (KIP-360).
    InitProducerId {
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    },
    AddPartitions {
        producer: (i64, i16),
        partitions: Vec<TopicPartition>,
    },
    AddOffsets {
        producer: (i64, i16),
        group_id: String,
    },
    TxnOffsetCommit {
        producer: (i64, i16),
        group: GroupMetadata,
        offsets: Vec<(TopicPartition, i64, Option<i32>)>,
    },
    EndTxn {
        producer: (i64, i16),
        commit: bool,
    },
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Answer {
    /// FindCoordinator: the coordinator's node id (for the log).
    Found(i32),
    /// InitProducerId: the id and epoch.
    Producer { id: i64, epoch: i16 },
    /// AddPartitionsToTxn / TxnOffsetCommit: a code for each partition.
    Partitions(Vec<(TopicPartition, Option<ResponseError>)>),
    /// Any call: one code for all (`None`: success).
    Code(Option<ResponseError>),
    /// No answer came (timeout, connection cut): it may or may not have
    /// been applied.
    Lost,
}

/// Something the application waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Done {
    Initialized,
    OffsetsSent,
    Committed,
    Aborted,
}

/// Why a call or an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    /// The transaction cannot commit; abort it, then begin again.
    #[error("the transaction must be aborted: {0}")]
    Abortable(String),
    /// The producer can do nothing more; close it.
    #[error("the transactional producer failed: {0}")]
    Fatal(String),
    /// The operation does not fit the producer's state.
    #[error("{0}")]
    State(String),
    /// The record was not sent: its transaction was aborted first.
    #[error("the transaction was aborted before the record was sent")]
    Aborted,
}

/// What an error code means to a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnAction {
    /// Try the call again after a backoff.
    Retry,
    /// The coordinator moved: look it up, then try again.
    FindCoordinator,
    /// Abort the transaction; `bump`: then bump the epoch (KIP-360).
    Abortable {
        bump: bool,
    },
    Fatal,
}

/// The meaning of a coordinator's error code, as Java's handlers.
pub(crate) fn txn_action(code: ResponseError) -> TxnAction {
    use ResponseError as E;
    match code {
        E::CoordinatorNotAvailable | E::NotCoordinator => TxnAction::FindCoordinator,
        E::UnknownProducerId => TxnAction::Abortable { bump: true },
        E::ProducerFenced
        | E::InvalidProducerEpoch
        | E::InvalidProducerIdMapping
        | E::TransactionalIdAuthorizationFailed
        | E::ClusterAuthorizationFailed
        | E::InvalidTxnState
        | E::UnsupportedVersion => TxnAction::Fatal,
        E::TopicAuthorizationFailed
        | E::GroupAuthorizationFailed
        | E::OperationNotAttempted
        | E::TransactionAbortable
        | E::UnknownMemberId
        | E::IllegalGeneration
        | E::FencedInstanceId => TxnAction::Abortable { bump: false },
        code if code.is_retriable() => TxnAction::Retry,
        E::ConcurrentTransactions | E::CoordinatorLoadInProgress | E::UnknownTopicOrPartition => TxnAction::Retry,
        _ => TxnAction::Fatal,
    }
}

/// Whether a failed batch (`None`: failed without an answer, as a delivery
/// timeout) ends the producer (`true`) or only its transaction, as Java's
/// `maybeTransitionToErrorState`.
pub(crate) fn produce_is_fatal(code: Option<ResponseError>) -> bool {
    use ResponseError as E;
    matches!(
        code,
        Some(
            E::ProducerFenced
                | E::TransactionalIdAuthorizationFailed
                | E::ClusterAuthorizationFailed
                | E::UnsupportedVersion
                | E::InvalidProducerIdMapping
        )
    )
}

/// The manager's settings.
#[derive(Debug, Clone)]
pub(crate) struct TxnConfig {
    pub(crate) timeout: Duration,
    /// The broker has InitProducerId v3+ (KIP-360 epoch bumps).
    pub(crate) can_bump: bool,
    pub(crate) retry_backoff: Duration,
    pub(crate) retry_backoff_max: Duration,
}

/// Offsets to commit in the transaction, and how far they got.
#[derive(Debug, Clone)]
struct PendingOffsets {
    group: GroupMetadata,
    offsets: Vec<(TopicPartition, i64, Option<i32>)>,
    /// AddOffsetsToTxn was answered.
    added: bool,
    /// AddOffsetsToTxn was sent and its answer lost: the coordinator may
    /// have the group in the transaction.
    in_doubt: bool,
    /// The offsets are still to be committed (false once the transaction
    /// aborts: only an add in doubt is sent again).
    commit: bool,
}

#[derive(Debug)]
pub(crate) struct Transactions {
    config: TxnConfig,
    state: TxnState,
    producer: Option<(i64, i16)>,
    /// The transaction coordinator was found (the driver keeps its link).
    txn_coordinator: bool,
    /// Groups whose coordinator was found.
    group_coordinators: BTreeSet<String>,
    /// Partitions in this transaction, those still to be added, and those
    /// sent in an AddPartitionsToTxn whose answer was lost.
    added: BTreeSet<TopicPartition>,
    to_add: BTreeSet<TopicPartition>,
    in_doubt: BTreeSet<TopicPartition>,
    offsets: Option<PendingOffsets>,
    /// Anything was added to the coordinator's transaction (partitions or
    /// offsets): ending it takes an EndTxn.
    started: bool,
    bump_required: bool,
    /// The call in flight, if any.
    in_flight: Option<Call>,
    /// Not before this instant, after a failure.
    retry_at: Option<Instant>,
    failures: u32,
    error: Option<TxnError>,
    /// Operations that ended, for their waiters. When the state is
    /// `Fatal`, every waiter fails with [`Self::error`] instead.
    done: Vec<(Done, Result<(), TxnError>)>,
}

impl Transactions {
    pub(crate) fn new(config: TxnConfig) -> Self {
        Transactions {
            config,
            state: TxnState::Uninitialized,
            producer: None,
            txn_coordinator: false,
            group_coordinators: BTreeSet::new(),
            added: BTreeSet::new(),
            to_add: BTreeSet::new(),
            in_doubt: BTreeSet::new(),
            offsets: None,
            started: false,
            bump_required: false,
            in_flight: None,
            retry_at: None,
            failures: 0,
            error: None,
            done: Vec::new(),
        }
    }

    pub(crate) fn state(&self) -> TxnState {
        self.state
    }

    /// The id and epoch batches are stamped with, once initialized.
    pub(crate) fn producer(&self) -> Option<(i64, i16)> {
        self.producer.filter(|_| !matches!(self.state, TxnState::Uninitialized | TxnState::Initializing))
    }

    /// The error that ended the producer or the transaction, if any.
    pub(crate) fn error(&self) -> Option<&TxnError> {
        self.error.as_ref()
    }

    /// What finished since the last call (for the waiting application).
    pub(crate) fn take_done(&mut self) -> Vec<(Done, Result<(), TxnError>)> {
        std::mem::take(&mut self.done)
    }

    fn refuse(&self, what: &str) -> TxnError {
        match (&self.state, &self.error) {
            (TxnState::Fatal, Some(error)) => error.clone(),
            (TxnState::AbortableError, Some(error)) => error.clone(),
            _ => TxnError::State(format!("cannot {what}: the producer is {:?}", self.state)),
        }
    }

    /// `init_transactions`: get the producer id and epoch (fencing any
    /// older producer of this transactional id).
    pub(crate) fn init(&mut self) -> Result<(), TxnError> {
        if self.state != TxnState::Uninitialized {
            return Err(self.refuse("initialize transactions"));
        }
        self.state = TxnState::Initializing;
        Ok(())
    }

    /// `begin_transaction`.
    pub(crate) fn begin(&mut self) -> Result<(), TxnError> {
        if self.state != TxnState::Ready {
            return Err(self.refuse("begin a transaction"));
        }
        self.state = TxnState::InTransaction;
        Ok(())
    }

    /// A record is appended for `partition`: it joins the transaction.
    pub(crate) fn record_to(&mut self, partition: &TopicPartition) -> Result<(), TxnError> {
        if self.state != TxnState::InTransaction {
            return Err(self.refuse("send outside a transaction"));
        }
        if !self.added.contains(partition) {
            self.to_add.insert(partition.clone());
        }
        Ok(())
    }

    /// Whether a batch of `partition` may be sent: it was added, and the
    /// transaction is not aborting.
    pub(crate) fn may_send(&self, partition: &TopicPartition) -> bool {
        self.added.contains(partition) && matches!(self.state, TxnState::InTransaction | TxnState::Committing)
    }

    /// `send_offsets_to_transaction`: the consumer's offsets commit with
    /// the transaction.
    pub(crate) fn send_offsets(
        &mut self,
        group: GroupMetadata,
        offsets: Vec<(TopicPartition, i64, Option<i32>)>,
    ) -> Result<(), TxnError> {
        if self.state != TxnState::InTransaction {
            return Err(self.refuse("send offsets outside a transaction"));
        }
        if self.offsets.is_some() {
            return Err(TxnError::State("offsets are already being sent in this transaction".into()));
        }
        self.offsets = Some(PendingOffsets { group, offsets, added: false, in_doubt: false, commit: true });
        Ok(())
    }

    /// `commit_transaction`: ends once everything sent is answered.
    pub(crate) fn commit(&mut self) -> Result<(), TxnError> {
        if self.state != TxnState::InTransaction {
            return Err(self.refuse("commit"));
        }
        self.state = TxnState::Committing;
        Ok(())
    }

    /// `abort_transaction`. Batches not yet sent are the driver's to fail;
    /// those in flight are waited for.
    pub(crate) fn abort(&mut self) -> Result<(), TxnError> {
        if !matches!(self.state, TxnState::InTransaction | TxnState::AbortableError) {
            return Err(self.refuse("abort"));
        }
        if self.state == TxnState::InTransaction {
            self.notify_offsets(TxnError::State("the transaction was aborted".into()));
        }
        self.state = TxnState::Aborting;
        self.error = None;
        // Only what the coordinator may have without our knowing is sent
        // again: the adds in flight or lost.
        let in_flight: BTreeSet<TopicPartition> = match &self.in_flight {
            Some(Call::AddPartitions { partitions, .. }) => partitions.iter().cloned().collect(),
            _ => BTreeSet::new(),
        };
        let offsets_in_flight = matches!(self.in_flight, Some(Call::AddOffsets { .. }));
        self.to_add.retain(|p| in_flight.contains(p) || self.in_doubt.contains(p));
        if let Some(pending) = &mut self.offsets {
            pending.commit = false;
            if pending.added || !(pending.in_doubt || offsets_in_flight) {
                self.offsets = None;
            }
        }
        Ok(())
    }

    /// Fails the waiter of offsets not yet committed.
    fn notify_offsets(&mut self, error: TxnError) {
        if self.offsets.as_ref().is_some_and(|o| o.commit) {
            self.done.push((Done::OffsetsSent, Err(error)));
        }
    }

    /// A batch of the transaction failed with `code` (or could not be
    /// written at all: `None`).
    pub(crate) fn on_produce_error(&mut self, code: Option<ResponseError>, reason: String) {
        if produce_is_fatal(code) {
            return self.fail(TxnError::Fatal(reason));
        }
        // A bump fences this transaction's late batches; not when it is
        // already ending (as Java).
        let bump = self.config.can_bump && !matches!(self.state, TxnState::Committing | TxnState::Aborting);
        self.abortable(bump, reason);
    }

    /// The producer cannot go on (the sequencer failed it: fenced or
    /// unauthorized).
    pub(crate) fn fail_for_good(&mut self, reason: String) {
        self.fail(TxnError::Fatal(reason));
    }

    fn fail(&mut self, error: TxnError) {
        if self.state == TxnState::Fatal {
            return;
        }
        self.state = TxnState::Fatal;
        self.in_flight = None;
        self.error = Some(error);
    }

    fn abortable(&mut self, bump: bool, reason: String) {
        if bump && !self.config.can_bump {
            return self.fail(TxnError::Fatal(format!("{reason} (the broker cannot bump the epoch)")));
        }
        self.bump_required |= bump;
        match self.state {
            TxnState::InTransaction | TxnState::Committing => {
                let error = TxnError::Abortable(reason);
                if self.state == TxnState::Committing {
                    self.done.push((Done::Committed, Err(error.clone())));
                }
                self.notify_offsets(error.clone());
                if let Some(pending) = &mut self.offsets {
                    pending.commit = false;
                }
                self.state = TxnState::AbortableError;
                self.error = Some(error);
            }
            // Aborting anyway; a failure while initializing is fatal.
            TxnState::Aborting | TxnState::AbortableError => {}
            TxnState::Initializing => self.fail(TxnError::Fatal(reason)),
            _ => {}
        }
    }

    /// The next call to send, if one may go now. `produce_idle`: no batch of
    /// the transaction is unanswered or waiting to be sent.
    pub(crate) fn next(&mut self, now: Instant, produce_idle: bool) -> Option<Call> {
        if self.in_flight.is_some() || self.state == TxnState::Fatal {
            return None;
        }
        if self.retry_at.is_some_and(|at| now < at) {
            return None;
        }
        let call = self.wanted(produce_idle)?;
        self.in_flight = Some(call.clone());
        Some(call)
    }

    /// When [`Self::next`] may have something again without an answer or
    /// an operation: the end of a backoff.
    pub(crate) fn wake_at(&self) -> Option<Instant> {
        self.retry_at.filter(|_| self.in_flight.is_none())
    }

    fn wanted(&mut self, produce_idle: bool) -> Option<Call> {
        let needs_txn_coordinator = match self.state {
            TxnState::Initializing => true,
            TxnState::InTransaction => !self.to_add.is_empty() || self.offsets.as_ref().is_some_and(|o| !o.added),
            TxnState::Committing | TxnState::Aborting => true,
            _ => false,
        };
        if needs_txn_coordinator && !self.txn_coordinator {
            return Some(Call::FindCoordinator(Coordinator::Transaction));
        }
        let timeout_ms = i32::try_from(self.config.timeout.as_millis()).unwrap_or(i32::MAX);
        match self.state {
            TxnState::Initializing => Some(Call::InitProducerId { timeout_ms, current: None }),
            TxnState::InTransaction | TxnState::Committing => {
                let producer = self.producer?;
                if !self.to_add.is_empty() {
                    let partitions = self.to_add.iter().cloned().collect();
                    return Some(Call::AddPartitions { producer, partitions });
                }
                if let Some(pending) = &self.offsets {
                    if !pending.added {
                        return Some(Call::AddOffsets { producer, group_id: pending.group.group_id.clone() });
                    }
                    let group_id = pending.group.group_id.clone();
                    if !self.group_coordinators.contains(&group_id) {
                        return Some(Call::FindCoordinator(Coordinator::Group(group_id)));
                    }
                    return Some(Call::TxnOffsetCommit {
                        producer,
                        group: pending.group.clone(),
                        offsets: pending.offsets.clone(),
                    });
                }
                if self.state == TxnState::Committing && produce_idle {
                    if self.started {
                        return Some(Call::EndTxn { producer, commit: true });
                    }
                    self.finish(Done::Committed);
                }
                None
            }
            TxnState::Aborting => {
                let producer = self.producer?;
                // Adds the coordinator may have applied unseen, again.
                if !self.to_add.is_empty() {
                    let partitions = self.to_add.iter().cloned().collect();
                    return Some(Call::AddPartitions { producer, partitions });
                }
                if let Some(pending) = &self.offsets {
                    return Some(Call::AddOffsets { producer, group_id: pending.group.group_id.clone() });
                }
                if !produce_idle {
                    return None;
                }
                if self.started {
                    return Some(Call::EndTxn { producer, commit: false });
                }
                if self.bump_required {
                    return Some(Call::InitProducerId { timeout_ms, current: Some(producer) });
                }
                self.finish(Done::Aborted);
                None
            }
            _ => None,
        }
    }

    fn finish(&mut self, done: Done) {
        self.state = TxnState::Ready;
        self.added.clear();
        self.to_add.clear();
        self.in_doubt.clear();
        self.offsets = None;
        self.started = false;
        self.error = None;
        self.done.push((done, Ok(())));
    }

    fn backoff(&mut self, now: Instant) {
        let wait = backoff::exponential(self.config.retry_backoff, self.config.retry_backoff_max, self.failures);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now + wait);
    }

    /// The answer to the call in flight.
    pub(crate) fn on_answer(&mut self, now: Instant, answer: Answer) {
        let Some(call) = self.in_flight.take() else { return };
        if self.state == TxnState::Fatal {
            return;
        }
        let code = match &answer {
            Answer::Lost => {
                // Asked again as it was: idempotent for the same epoch. An
                // add may have been applied.
                match &call {
                    Call::AddPartitions { partitions, .. } => self.in_doubt.extend(partitions.iter().cloned()),
                    Call::AddOffsets { .. } => {
                        if let Some(pending) = &mut self.offsets {
                            pending.in_doubt = true;
                        }
                    }
                    _ => {}
                }
                self.forget_coordinator(&call);
                self.backoff(now);
                return;
            }
            Answer::Code(code) => *code,
            _ => None,
        };
        if let Some(code) = code {
            match txn_action(code) {
                TxnAction::Retry => return self.backoff(now),
                TxnAction::FindCoordinator => {
                    self.forget_coordinator(&call);
                    return self.backoff(now);
                }
                TxnAction::Abortable { bump } => {
                    self.retry_at = None;
                    self.failures = 0;
                    return self.call_abortable(&call, bump, code);
                }
                TxnAction::Fatal => return self.fail(TxnError::Fatal(format!("{}: {code}", name(&call)))),
            }
        }
        self.retry_at = None;
        self.failures = 0;
        match (call, answer) {
            (Call::FindCoordinator(Coordinator::Transaction), Answer::Found(_)) => self.txn_coordinator = true,
            (Call::FindCoordinator(Coordinator::Group(group)), Answer::Found(_)) => {
                self.group_coordinators.insert(group);
            }
            (Call::InitProducerId { current, .. }, Answer::Producer { id, epoch }) => {
                self.producer = Some((id, epoch));
                self.bump_required = false;
                if current.is_some() {
                    // The bump after an abort.
                    self.finish(Done::Aborted);
                } else {
                    self.state = TxnState::Ready;
                    self.done.push((Done::Initialized, Ok(())));
                }
            }
            (Call::AddPartitions { partitions, .. }, Answer::Partitions(codes)) => {
                let mut retry = false;
                for (partition, code) in codes {
                    match code.map(txn_action) {
                        None => {
                            if partitions.contains(&partition) {
                                self.confirm_added(partition);
                            }
                        }
                        Some(TxnAction::Retry) => retry = true,
                        Some(TxnAction::FindCoordinator) => {
                            self.txn_coordinator = false;
                            retry = true;
                        }
                        Some(TxnAction::Abortable { bump }) => {
                            self.refused(&partition);
                            return self.abortable(bump, format!("adding {partition}: {code:?}"));
                        }
                        Some(TxnAction::Fatal) => {
                            return self.fail(TxnError::Fatal(format!("adding {partition}: {code:?}")));
                        }
                    }
                }
                if retry {
                    self.backoff(now);
                }
            }
            (Call::AddPartitions { partitions, .. }, Answer::Code(None)) => {
                for partition in partitions {
                    self.confirm_added(partition);
                }
            }
            (Call::AddOffsets { .. }, Answer::Code(None)) => {
                // The coordinator has the group in its transaction, whatever
                // happened here meanwhile.
                self.started = true;
                if let Some(pending) = &mut self.offsets {
                    pending.added = true;
                    pending.in_doubt = false;
                    if !pending.commit {
                        self.offsets = None;
                    }
                }
            }
            (Call::TxnOffsetCommit { .. }, _) if !self.offsets.as_ref().is_some_and(|o| o.commit) => {
                // The transaction ended meanwhile; its waiter was told.
            }
            (Call::TxnOffsetCommit { group, .. }, Answer::Partitions(codes)) => {
                let mut retry = false;
                for (partition, code) in codes {
                    match code.map(|code| (code, txn_action(code))) {
                        None => {}
                        Some((ResponseError::RequestTimedOut, _) | (_, TxnAction::FindCoordinator)) => {
                            self.group_coordinators.remove(&group.group_id);
                            retry = true;
                        }
                        Some((_, TxnAction::Retry)) => retry = true,
                        Some((code, TxnAction::Abortable { bump })) => {
                            return self.abortable(bump, format!("committing {partition}: {code}"));
                        }
                        Some((code, TxnAction::Fatal)) => {
                            return self.fail(TxnError::Fatal(format!("committing {partition}: {code}")));
                        }
                    }
                }
                if retry {
                    self.backoff(now);
                } else {
                    self.offsets = None;
                    self.done.push((Done::OffsetsSent, Ok(())));
                }
            }
            (Call::TxnOffsetCommit { .. }, Answer::Code(None)) => {
                self.offsets = None;
                self.done.push((Done::OffsetsSent, Ok(())));
            }
            (Call::EndTxn { commit, .. }, Answer::Code(None)) => {
                self.started = false;
                if commit {
                    self.finish(Done::Committed);
                } else if !self.bump_required {
                    self.finish(Done::Aborted);
                }
                // else: the bump comes next (`wanted`).
            }
            (call, answer) => {
                self.fail(TxnError::Fatal(format!("{} answered with {answer:?}", name(&call))));
            }
        }
    }

    fn call_abortable(&mut self, call: &Call, bump: bool, code: ResponseError) {
        let reason = format!("{}: {code}", name(call));
        match call {
            // Nothing to abort into: the coordinator refused the id itself.
            Call::InitProducerId { .. } => self.fail(TxnError::Fatal(reason)),
            Call::EndTxn { commit: false, .. } => {
                if bump && self.config.can_bump {
                    // The coordinator does not know this producer's
                    // transaction any more: bump, and the abort is done.
                    self.started = false;
                    self.bump_required = true;
                } else if bump {
                    self.fail(TxnError::Fatal(format!("{reason} (the broker cannot bump the epoch)")));
                } else {
                    let error = TxnError::Abortable(reason);
                    self.done.push((Done::Aborted, Err(error.clone())));
                    self.state = TxnState::AbortableError;
                    self.error = Some(error);
                }
            }
            Call::AddPartitions { partitions, .. } => {
                for partition in partitions {
                    self.refused(partition);
                }
                self.abortable(bump, reason);
            }
            Call::AddOffsets { .. } => {
                if self.state == TxnState::Aborting {
                    // Refused: the coordinator does not have the group.
                    self.offsets = None;
                }
                self.abortable(bump, reason);
            }
            _ => self.abortable(bump, reason),
        }
    }

    /// The coordinator refused to add `partition`: nothing to send again.
    fn refused(&mut self, partition: &TopicPartition) {
        if self.state == TxnState::Aborting {
            self.to_add.remove(partition);
        }
        self.in_doubt.remove(partition);
    }

    /// `partition` is in the coordinator's transaction.
    fn confirm_added(&mut self, partition: TopicPartition) {
        self.started = true;
        self.in_doubt.remove(&partition);
        self.to_add.remove(&partition);
        if matches!(self.state, TxnState::InTransaction | TxnState::Committing) {
            self.added.insert(partition);
        }
    }

    fn forget_coordinator(&mut self, call: &Call) {
        match call {
            Call::FindCoordinator(_) => {}
            Call::TxnOffsetCommit { group, .. } => {
                self.group_coordinators.remove(&group.group_id);
            }
            _ => self.txn_coordinator = false,
        }
    }
}

fn name(call: &Call) -> &'static str {
    match call {
        Call::FindCoordinator(_) => "FindCoordinator",
        Call::InitProducerId { .. } => "InitProducerId",
        Call::AddPartitions { .. } => "AddPartitionsToTxn",
        Call::AddOffsets { .. } => "AddOffsetsToTxn",
        Call::TxnOffsetCommit { .. } => "TxnOffsetCommit",
        Call::EndTxn { .. } => "EndTxn",
    }
}

#[cfg(test)]
mod tests;
