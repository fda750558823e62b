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
//! - Errors: retriable ones (a coordinator loading, moved or busy,
//!   CONCURRENT_TRANSACTIONS) are retried with backoff inside a call;
//!   abortable ones (a produce failure, an unauthorized topic or group, a
//!   group generation that moved on) leave the transaction to be aborted;
//!   fatal ones (PRODUCER_FENCED, INVALID_PRODUCER_EPOCH,
//!   TRANSACTIONAL_ID_AUTHORIZATION_FAILED, INVALID_TXN_STATE, an unknown
//!   code) end the producer: nothing is sent again.
//! - UNKNOWN_PRODUCER_ID, OUT_OF_ORDER_SEQUENCE_NUMBER and
//!   INVALID_PRODUCER_ID_MAPPING are abortable with an epoch bump (KIP-360):
//!   after the abort, InitProducerId with the current id and epoch gives
//!   the next epoch and sequences restart. A broker without InitProducerId
//!   v3 cannot bump: those errors are fatal there.
//! - An answer that never came (timeout, cut connection) is retried as it
//!   was: each call is idempotent at the coordinator for the same epoch.

use std::collections::{BTreeMap, BTreeSet};
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
pub(crate) struct GroupMetadata {
    /// The group id.
    pub(crate) group_id: String,
    /// The generation (classic) or member epoch (KIP-848); -1 unknown.
    pub(crate) generation_id: i32,
    /// The member id; empty when unknown.
    pub(crate) member_id: String,
    /// The static member's instance id.
    pub(crate) group_instance_id: Option<String>,
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
    /// FindCoordinator: the coordinator's node id.
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
pub(crate) enum TxnError {
    /// The transaction cannot commit; abort it, then begin again.
    #[error("the transaction must be aborted: {0}")]
    Abortable(String),
    /// The producer can do nothing more; close it.
    #[error("the transactional producer failed: {0}")]
    Fatal(String),
    /// The operation does not fit the producer's state.
    #[error("{0}")]
    State(String),
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

/// The meaning of a transactional call's error code, as Java's handlers.
pub(crate) fn txn_action(code: ResponseError) -> TxnAction {
    use ResponseError as E;
    match code {
        E::CoordinatorNotAvailable | E::NotCoordinator => TxnAction::FindCoordinator,
        E::CoordinatorLoadInProgress
        | E::ConcurrentTransactions
        | E::UnknownTopicOrPartition
        | E::RequestTimedOut
        | E::NetworkException => TxnAction::Retry,
        E::UnknownProducerId | E::OutOfOrderSequenceNumber | E::InvalidProducerIdMapping => {
            TxnAction::Abortable { bump: true }
        }
        E::TopicAuthorizationFailed
        | E::GroupAuthorizationFailed
        | E::OperationNotAttempted
        | E::TransactionAbortable
        | E::UnknownMemberId
        | E::IllegalGeneration
        | E::FencedInstanceId
        | E::RecordListTooLarge
        | E::MessageTooLarge
        | E::InvalidRecord
        | E::CorruptMessage
        | E::NotEnoughReplicas
        | E::NotEnoughReplicasAfterAppend
        | E::NotLeaderOrFollower
        | E::LeaderNotAvailable
        | E::InvalidTimestamp => TxnAction::Abortable { bump: false },
        _ => TxnAction::Fatal,
    }
}

/// The manager's settings.
#[derive(Debug, Clone)]
pub(crate) struct TxnConfig {
    pub(crate) transactional_id: String,
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
}

#[derive(Debug)]
pub(crate) struct Transactions {
    config: TxnConfig,
    state: TxnState,
    producer: Option<(i64, i16)>,
    txn_coordinator: Option<i32>,
    group_coordinators: BTreeMap<String, i32>,
    /// Partitions in this transaction, and those still to be added.
    added: BTreeSet<TopicPartition>,
    to_add: BTreeSet<TopicPartition>,
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
            txn_coordinator: None,
            group_coordinators: BTreeMap::new(),
            added: BTreeSet::new(),
            to_add: BTreeSet::new(),
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

    pub(crate) fn transactional_id(&self) -> &str {
        &self.config.transactional_id
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
        self.added.clear();
        self.to_add.clear();
        self.offsets = None;
        self.started = false;
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

    /// Whether a batch of `partition` may be sent: it was added.
    pub(crate) fn may_send(&self, partition: &TopicPartition) -> bool {
        self.added.contains(partition)
            && matches!(self.state, TxnState::InTransaction | TxnState::Committing | TxnState::Aborting)
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
        self.offsets = Some(PendingOffsets { group, offsets, added: false });
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

    /// `abort_transaction`. Batches not yet sent are the driver's to fail.
    pub(crate) fn abort(&mut self) -> Result<(), TxnError> {
        if !matches!(self.state, TxnState::InTransaction | TxnState::AbortableError) {
            return Err(self.refuse("abort"));
        }
        self.state = TxnState::Aborting;
        self.to_add.clear();
        self.offsets = None;
        self.error = None;
        Ok(())
    }

    /// A batch of the transaction failed with `code` (or could not be
    /// written at all: `None`).
    pub(crate) fn on_produce_error(&mut self, code: Option<ResponseError>, reason: String) {
        match code.map_or(TxnAction::Abortable { bump: false }, txn_action) {
            TxnAction::Fatal => self.fail(TxnError::Fatal(reason)),
            TxnAction::Abortable { bump } => self.abortable(bump, reason),
            // The sequencer retries those; one that reaches here failed.
            TxnAction::Retry | TxnAction::FindCoordinator => self.abortable(false, reason),
        }
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
                if self.offsets.is_some() {
                    self.done.push((Done::OffsetsSent, Err(error.clone())));
                }
                self.state = TxnState::AbortableError;
                self.to_add.clear();
                self.offsets = None;
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
        if needs_txn_coordinator && self.txn_coordinator.is_none() {
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
                    if !self.group_coordinators.contains_key(&group_id) {
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

    /// The coordinator the call goes to, as known now.
    pub(crate) fn destination(&self, call: &Call) -> Option<i32> {
        match call {
            Call::FindCoordinator(_) => None,
            Call::TxnOffsetCommit { group, .. } => self.group_coordinators.get(&group.group_id).copied(),
            _ => self.txn_coordinator,
        }
    }

    /// The answer to the call in flight.
    pub(crate) fn on_answer(&mut self, now: Instant, answer: Answer) {
        let Some(call) = self.in_flight.take() else { return };
        if self.state == TxnState::Fatal {
            return;
        }
        let code = match &answer {
            Answer::Lost => {
                // Asked again as it was: idempotent for the same epoch.
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
            (Call::FindCoordinator(Coordinator::Transaction), Answer::Found(node)) => self.txn_coordinator = Some(node),
            (Call::FindCoordinator(Coordinator::Group(group)), Answer::Found(node)) => {
                self.group_coordinators.insert(group, node);
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
                            if partitions.contains(&partition) && self.to_add.remove(&partition) {
                                self.added.insert(partition);
                                self.started = true;
                            }
                        }
                        Some(TxnAction::Retry | TxnAction::FindCoordinator) => retry = true,
                        Some(TxnAction::Abortable { bump }) => {
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
                    if self.to_add.remove(&partition) {
                        self.added.insert(partition);
                    }
                }
                self.started = true;
            }
            (Call::AddOffsets { .. }, Answer::Code(None)) => {
                if let Some(pending) = &mut self.offsets {
                    pending.added = true;
                    self.started = true;
                }
            }
            (Call::TxnOffsetCommit { group, .. }, Answer::Partitions(codes)) => {
                let mut retry = false;
                for (partition, code) in codes {
                    match code.map(txn_action) {
                        None => {}
                        Some(TxnAction::Retry) => retry = true,
                        Some(TxnAction::FindCoordinator) => {
                            self.group_coordinators.remove(&group.group_id);
                            retry = true;
                        }
                        Some(TxnAction::Abortable { bump }) => {
                            return self.abortable(bump, format!("committing {partition}: {code:?}"));
                        }
                        Some(TxnAction::Fatal) => {
                            return self.fail(TxnError::Fatal(format!("committing {partition}: {code:?}")));
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
        if matches!(call, Call::InitProducerId { .. } | Call::EndTxn { .. }) {
            // Nothing to abort into: the coordinator refused the end or the
            // id itself.
            return self.fail(TxnError::Fatal(format!("{}: {code}", name(call))));
        }
        self.abortable(bump, format!("{}: {code}", name(call)));
    }

    fn forget_coordinator(&mut self, call: &Call) {
        match call {
            Call::FindCoordinator(_) => {}
            Call::TxnOffsetCommit { group, .. } => {
                self.group_coordinators.remove(&group.group_id);
            }
            _ => self.txn_coordinator = None,
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
