use std::collections::BTreeMap;

use super::*;
use proptest::prelude::*;

fn config(can_bump: bool) -> TxnConfig {
    TxnConfig {
        timeout: Duration::from_secs(60),
        can_bump,
        retry_backoff: Duration::from_millis(100),
        retry_backoff_max: Duration::from_secs(1),
    }
}

fn tp(partition: i32) -> TopicPartition {
    TopicPartition::new("out", partition)
}

fn group(generation_id: i32) -> GroupMetadata {
    GroupMetadata { group_id: "g".into(), generation_id, member_id: "m".into(), group_instance_id: None }
}

/// A manager past `init_transactions`, at producer id 7, epoch 0.
fn ready(now: Instant) -> Transactions {
    let mut txn = Transactions::new(config(true));
    txn.init().unwrap();
    assert_eq!(txn.next(now, true), Some(Call::FindCoordinator(Coordinator::Transaction)));
    txn.on_answer(now, Answer::Found(1));
    assert_eq!(txn.next(now, true), Some(Call::InitProducerId { timeout_ms: 60_000, current: None }));
    txn.on_answer(now, Answer::Producer { id: 7, epoch: 0 });
    assert_eq!(txn.take_done(), [(Done::Initialized, Ok(()))]);
    assert_eq!((txn.state(), txn.producer()), (TxnState::Ready, Some((7, 0))));
    txn
}

/// A transaction begun, with partition 0 added.
fn writing_to_partition_0(now: Instant) -> Transactions {
    let mut txn = ready(now);
    txn.begin().unwrap();
    txn.record_to(&tp(0)).unwrap();
    assert_eq!(txn.next(now, false), Some(Call::AddPartitions { producer: (7, 0), partitions: vec![tp(0)] }));
    txn.on_answer(now, Answer::Partitions(vec![(tp(0), None)]));
    assert!(txn.may_send(&tp(0)));
    txn
}

#[test]
fn partitions_are_added_together_before_any_batch_goes_to_them() {
    let now = Instant::now();
    let mut txn = ready(now);
    txn.begin().unwrap();
    txn.record_to(&tp(0)).unwrap();
    txn.record_to(&tp(1)).unwrap();
    txn.record_to(&tp(0)).unwrap();
    assert!(!txn.may_send(&tp(0)));
    let call = txn.next(now, false).unwrap();
    assert_eq!(call, Call::AddPartitions { producer: (7, 0), partitions: vec![tp(0), tp(1)] });
    assert_eq!(txn.next(now, false), None, "one call at a time");
    txn.on_answer(now, Answer::Partitions(vec![(tp(0), None), (tp(1), None)]));
    assert!(txn.may_send(&tp(0)) && txn.may_send(&tp(1)));
    // An added partition is not added again.
    txn.record_to(&tp(1)).unwrap();
    assert_eq!(txn.next(now, false), None);
}

#[test]
fn commit_waits_for_every_batch_then_ends_the_transaction() {
    let now = Instant::now();
    let mut txn = writing_to_partition_0(now);
    txn.commit().unwrap();
    assert_eq!(txn.next(now, false), None, "a batch is still unanswered");
    assert_eq!(txn.next(now, true), Some(Call::EndTxn { producer: (7, 0), commit: true }));
    txn.on_answer(now, Answer::Code(None));
    assert_eq!(txn.take_done(), [(Done::Committed, Ok(()))]);
    assert_eq!(txn.state(), TxnState::Ready);
    assert!(!txn.may_send(&tp(0)), "the next transaction adds its partitions again");
}

#[test]
fn a_transaction_that_added_nothing_ends_without_a_request() {
    let now = Instant::now();
    let mut txn = ready(now);
    txn.begin().unwrap();
    txn.commit().unwrap();
    assert_eq!(txn.next(now, true), None);
    assert_eq!(txn.take_done(), [(Done::Committed, Ok(()))]);
    txn.begin().unwrap();
    txn.abort().unwrap();
    assert_eq!(txn.next(now, true), None);
    assert_eq!(txn.take_done(), [(Done::Aborted, Ok(()))]);
}

#[test]
fn offsets_go_after_the_partitions_to_the_group_coordinator() {
    let now = Instant::now();
    let mut txn = ready(now);
    txn.begin().unwrap();
    txn.record_to(&tp(0)).unwrap();
    let offsets = vec![(TopicPartition::new("in", 0), 42, Some(3))];
    txn.send_offsets(group(5), offsets.clone()).unwrap();
    assert!(txn.send_offsets(group(5), offsets.clone()).is_err(), "one set of offsets per transaction");
    assert!(matches!(txn.next(now, false), Some(Call::AddPartitions { .. })));
    txn.on_answer(now, Answer::Code(None));
    assert_eq!(txn.next(now, false), Some(Call::AddOffsets { producer: (7, 0), group_id: "g".into() }));
    txn.on_answer(now, Answer::Code(None));
    assert_eq!(txn.next(now, false), Some(Call::FindCoordinator(Coordinator::Group("g".into()))));
    txn.on_answer(now, Answer::Found(2));
    let call = txn.next(now, false).unwrap();
    assert_eq!(call, Call::TxnOffsetCommit { producer: (7, 0), group: group(5), offsets });
    txn.on_answer(now, Answer::Partitions(vec![(TopicPartition::new("in", 0), None)]));
    assert_eq!(txn.take_done(), [(Done::OffsetsSent, Ok(()))]);
}

#[test]
fn a_failed_batch_makes_the_transaction_abortable_and_commit_refused() {
    let now = Instant::now();
    let mut txn = writing_to_partition_0(now);
    txn.on_produce_error(Some(ResponseError::MessageTooLarge), "out-0: too large".into());
    assert_eq!(txn.state(), TxnState::AbortableError);
    assert!(matches!(txn.commit(), Err(TxnError::Abortable(_))));
    assert!(matches!(txn.record_to(&tp(1)), Err(TxnError::Abortable(_))));
    txn.abort().unwrap();
    assert!(!txn.may_send(&tp(0)), "nothing more goes out once aborting");
    assert_eq!(txn.next(now, false), None, "the abort waits for batches in flight");
    assert_eq!(txn.next(now, true), Some(Call::EndTxn { producer: (7, 0), commit: false }));
    txn.on_answer(now, Answer::Code(None));
    // Every failed batch bumps the epoch where the broker can: a late
    // batch of the aborted transaction is fenced.
    assert!(txn.take_done().is_empty());
    assert_eq!(txn.next(now, true), Some(Call::InitProducerId { timeout_ms: 60_000, current: Some((7, 0)) }));
    txn.on_answer(now, Answer::Producer { id: 7, epoch: 1 });
    assert_eq!(txn.take_done(), [(Done::Aborted, Ok(()))]);
    assert_eq!((txn.state(), txn.producer()), (TxnState::Ready, Some((7, 1))));
}

#[test]
fn a_failure_while_committing_fails_the_commit() {
    let now = Instant::now();
    let mut txn = writing_to_partition_0(now);
    txn.commit().unwrap();
    txn.on_produce_error(Some(ResponseError::NotEnoughReplicas), "out-0".into());
    assert!(matches!(txn.take_done()[..], [(Done::Committed, Err(TxnError::Abortable(_)))]));
    assert_eq!(txn.next(now, true), None, "no EndTxn(commit) after a failed batch");
    txn.abort().unwrap();
    assert_eq!(txn.next(now, true), Some(Call::EndTxn { producer: (7, 0), commit: false }));
}

#[test]
fn an_unknown_producer_id_aborts_then_bumps_the_epoch() {
    let now = Instant::now();
    let mut txn = writing_to_partition_0(now);
    txn.on_produce_error(Some(ResponseError::UnknownProducerId), "out-0".into());
    txn.abort().unwrap();
    assert_eq!(txn.next(now, true), Some(Call::EndTxn { producer: (7, 0), commit: false }));
    txn.on_answer(now, Answer::Code(None));
    assert!(txn.take_done().is_empty(), "aborted only once the epoch is bumped");
    assert_eq!(txn.next(now, true), Some(Call::InitProducerId { timeout_ms: 60_000, current: Some((7, 0)) }));
    txn.on_answer(now, Answer::Producer { id: 7, epoch: 1 });
    assert_eq!(txn.take_done(), [(Done::Aborted, Ok(()))]);
    assert_eq!((txn.state(), txn.producer()), (TxnState::Ready, Some((7, 1))));
}

/// A manager whose broker cannot bump epochs (InitProducerId below v3).
fn ready_without_bumps(now: Instant) -> Transactions {
    let mut txn = Transactions::new(config(false));
    txn.init().unwrap();
    txn.next(now, true);
    txn.on_answer(now, Answer::Found(1));
    txn.next(now, true);
    txn.on_answer(now, Answer::Producer { id: 7, epoch: 0 });
    assert_eq!(txn.take_done(), [(Done::Initialized, Ok(()))]);
    txn
}

#[test]
fn without_epoch_bumps_a_failed_batch_aborts_and_the_coordinators_unknown_producer_id_is_fatal() {
    let now = Instant::now();
    let mut txn = ready_without_bumps(now);
    txn.begin().unwrap();
    txn.on_produce_error(Some(ResponseError::OutOfOrderSequenceNumber), "out-0".into());
    assert_eq!(txn.state(), TxnState::AbortableError);
    txn.abort().unwrap();
    assert_eq!(txn.next(now, true), None);
    assert_eq!(txn.take_done(), [(Done::Aborted, Ok(()))], "nothing added, no EndTxn, no bump");

    txn.begin().unwrap();
    txn.record_to(&tp(0)).unwrap();
    txn.next(now, false).unwrap();
    txn.on_answer(now, Answer::Code(Some(ResponseError::UnknownProducerId)));
    assert_eq!(txn.state(), TxnState::Fatal);
    assert!(matches!(txn.error(), Some(TxnError::Fatal(reason)) if reason.contains("cannot bump")));
}

#[test]
fn a_transaction_the_coordinator_timed_out_is_abortable_not_fatal() {
    // The coordinator aborted it and bumped the epoch; the next batch is
    // refused with INVALID_PRODUCER_EPOCH (KIP-588).
    let now = Instant::now();
    let mut txn = writing_to_partition_0(now);
    txn.on_produce_error(Some(ResponseError::InvalidProducerEpoch), "out-0".into());
    assert!(matches!(txn.error(), Some(TxnError::Abortable(_))));
    // Fenced or unauthorized batches end the producer.
    txn.on_produce_error(Some(ResponseError::ProducerFenced), "out-0".into());
    assert_eq!(txn.state(), TxnState::Fatal);
}

#[test]
fn an_ending_refused_as_abortable_leaves_the_transaction_to_abort() {
    let now = Instant::now();
    let mut txn = writing_to_partition_0(now);
    txn.commit().unwrap();
    assert!(matches!(txn.next(now, true), Some(Call::EndTxn { commit: true, .. })));
    txn.on_answer(now, Answer::Code(Some(ResponseError::TransactionAbortable)));
    assert!(matches!(txn.take_done()[..], [(Done::Committed, Err(TxnError::Abortable(_)))]));
    txn.abort().unwrap();
    assert_eq!(txn.next(now, true), Some(Call::EndTxn { producer: (7, 0), commit: false }));
    // The coordinator no longer knows the producer: bump, and it is done.
    txn.on_answer(now, Answer::Code(Some(ResponseError::UnknownProducerId)));
    assert_eq!(txn.next(now, true), Some(Call::InitProducerId { timeout_ms: 60_000, current: Some((7, 0)) }));
    txn.on_answer(now, Answer::Producer { id: 7, epoch: 1 });
    assert_eq!(txn.take_done(), [(Done::Aborted, Ok(()))]);
}

#[test]
fn a_partition_whose_coordinator_moved_is_added_after_a_new_lookup() {
    let now = Instant::now();
    let mut txn = ready(now);
    txn.begin().unwrap();
    txn.record_to(&tp(0)).unwrap();
    txn.next(now, false).unwrap();
    txn.on_answer(now, Answer::Partitions(vec![(tp(0), Some(ResponseError::NotCoordinator))]));
    let later = txn.wake_at().unwrap();
    assert_eq!(txn.next(later, false), Some(Call::FindCoordinator(Coordinator::Transaction)));
}

#[test]
fn an_add_answered_after_the_abort_still_ends_the_coordinators_transaction() {
    let now = Instant::now();
    let mut txn = ready(now);
    txn.begin().unwrap();
    txn.record_to(&tp(0)).unwrap();
    txn.record_to(&tp(1)).unwrap();
    let add = txn.next(now, false).unwrap();
    txn.abort().unwrap();
    txn.on_answer(now, Answer::Partitions(vec![(tp(0), None), (tp(1), None)]));
    assert_eq!(txn.next(now, true), Some(Call::EndTxn { producer: (7, 0), commit: false }));
    txn.on_answer(now, Answer::Code(None));
    assert_eq!(txn.take_done(), [(Done::Aborted, Ok(()))]);

    // Its answer lost: sent again (the coordinator may have it), then ended.
    txn.begin().unwrap();
    txn.record_to(&tp(0)).unwrap();
    txn.record_to(&tp(1)).unwrap();
    assert_eq!(txn.next(now, false), Some(add.clone()));
    txn.abort().unwrap();
    txn.on_answer(now, Answer::Lost);
    let later = txn.wake_at().unwrap();
    assert_eq!(txn.next(later, true), Some(Call::FindCoordinator(Coordinator::Transaction)));
    txn.on_answer(later, Answer::Found(1));
    assert_eq!(txn.next(later, true), Some(add.clone()));
    txn.on_answer(later, Answer::Code(None));
    assert_eq!(txn.next(later, true), Some(Call::EndTxn { producer: (7, 0), commit: false }));
    txn.on_answer(later, Answer::Code(None));
    assert_eq!(txn.take_done(), [(Done::Aborted, Ok(()))]);

    // Refused: nothing to end.
    txn.begin().unwrap();
    txn.record_to(&tp(0)).unwrap();
    txn.next(later, false).unwrap();
    txn.abort().unwrap();
    txn.on_answer(later, Answer::Partitions(vec![(tp(0), Some(ResponseError::TopicAuthorizationFailed))]));
    assert_eq!(txn.next(later, true), None);
    assert_eq!(txn.take_done(), [(Done::Aborted, Ok(()))]);
}

#[test]
fn offsets_waiting_when_the_transaction_aborts_are_told() {
    let now = Instant::now();
    let mut txn = writing_to_partition_0(now);
    txn.send_offsets(group(5), vec![(TopicPartition::new("in", 0), 1, None)]).unwrap();
    txn.abort().unwrap();
    assert!(matches!(txn.take_done()[..], [(Done::OffsetsSent, Err(TxnError::State(_)))]));
    assert_eq!(txn.next(now, true), Some(Call::EndTxn { producer: (7, 0), commit: false }), "no offsets sent");
}

#[test]
fn a_fenced_producer_never_asks_anything_again() {
    let now = Instant::now();
    let mut txn = ready(now);
    txn.begin().unwrap();
    txn.record_to(&tp(0)).unwrap();
    txn.next(now, false).unwrap();
    txn.on_answer(now, Answer::Code(Some(ResponseError::ProducerFenced)));
    assert_eq!(txn.state(), TxnState::Fatal);
    assert!(!txn.may_send(&tp(0)));
    assert_eq!(txn.next(now + Duration::from_secs(60), true), None);
    assert!(matches!(txn.begin(), Err(TxnError::Fatal(_))));
    assert!(matches!(txn.abort(), Err(TxnError::Fatal(_))));
    txn.on_produce_error(Some(ResponseError::MessageTooLarge), "late".into());
    assert_eq!(txn.state(), TxnState::Fatal, "fatal is for good");
}

#[test]
fn a_moved_coordinator_is_found_again_and_a_lost_answer_asked_again_after_a_backoff() {
    let now = Instant::now();
    let mut txn = writing_to_partition_0(now);
    txn.commit().unwrap();
    let end = Call::EndTxn { producer: (7, 0), commit: true };
    assert_eq!(txn.next(now, true), Some(end.clone()));
    txn.on_answer(now, Answer::Code(Some(ResponseError::NotCoordinator)));
    assert_eq!(txn.next(now, true), None, "backing off");
    let later = txn.wake_at().unwrap();
    assert_eq!(txn.next(later, true), Some(Call::FindCoordinator(Coordinator::Transaction)));
    txn.on_answer(later, Answer::Found(3));
    assert_eq!(txn.next(later, true), Some(end.clone()));
    txn.on_answer(later, Answer::Lost);
    let again = txn.wake_at().unwrap();
    assert!(again > later);
    assert_eq!(txn.next(again, true), Some(Call::FindCoordinator(Coordinator::Transaction)));
    txn.on_answer(again, Answer::Found(3));
    assert_eq!(txn.next(again, true), Some(end));
    txn.on_answer(again, Answer::Code(Some(ResponseError::ConcurrentTransactions)));
    let last = txn.wake_at().unwrap();
    assert_eq!(txn.next(last, true), Some(Call::EndTxn { producer: (7, 0), commit: true }));
    txn.on_answer(last, Answer::Code(None));
    assert_eq!(txn.take_done(), [(Done::Committed, Ok(()))]);
}

#[test]
fn a_generation_that_moved_on_fails_the_offsets_and_the_transaction_aborts() {
    let now = Instant::now();
    let mut txn = ready(now);
    txn.begin().unwrap();
    txn.send_offsets(group(5), vec![(TopicPartition::new("in", 0), 1, None)]).unwrap();
    txn.next(now, false).unwrap();
    txn.on_answer(now, Answer::Code(None));
    txn.next(now, false).unwrap();
    txn.on_answer(now, Answer::Found(2));
    assert!(matches!(txn.next(now, false), Some(Call::TxnOffsetCommit { .. })));
    txn.on_answer(
        now,
        Answer::Partitions(vec![(TopicPartition::new("in", 0), Some(ResponseError::IllegalGeneration))]),
    );
    assert!(matches!(txn.take_done()[..], [(Done::OffsetsSent, Err(TxnError::Abortable(_)))]));
    assert_eq!(txn.state(), TxnState::AbortableError);
    txn.abort().unwrap();
    assert_eq!(txn.next(now, true), Some(Call::EndTxn { producer: (7, 0), commit: false }), "offsets were added");
}

#[test]
fn operations_out_of_order_are_refused_with_the_state() {
    let now = Instant::now();
    let mut txn = Transactions::new(config(true));
    assert!(matches!(txn.begin(), Err(TxnError::State(_))));
    txn.init().unwrap();
    assert!(matches!(txn.init(), Err(TxnError::State(_))));
    let mut txn = ready(now);
    assert!(matches!(txn.commit(), Err(TxnError::State(_))));
    assert!(matches!(txn.record_to(&tp(0)), Err(TxnError::State(_))));
    txn.begin().unwrap();
    assert!(matches!(txn.begin(), Err(TxnError::State(_))));
    txn.commit().unwrap();
    assert!(matches!(txn.abort(), Err(TxnError::State(_))), "a commit under way is not aborted");
}

#[test]
fn error_codes_are_classified_as_java_does() {
    use ResponseError as E;
    for code in [
        E::ProducerFenced,
        E::InvalidProducerEpoch,
        E::InvalidProducerIdMapping,
        E::TransactionalIdAuthorizationFailed,
        E::InvalidTxnState,
        E::UnknownServerError,
    ] {
        assert_eq!(txn_action(code), TxnAction::Fatal, "{code:?}");
    }
    assert_eq!(txn_action(E::UnknownProducerId), TxnAction::Abortable { bump: true });
    for code in
        [E::TopicAuthorizationFailed, E::GroupAuthorizationFailed, E::TransactionAbortable, E::IllegalGeneration]
    {
        assert_eq!(txn_action(code), TxnAction::Abortable { bump: false }, "{code:?}");
    }
    for code in [E::ConcurrentTransactions, E::CoordinatorLoadInProgress, E::NotEnoughReplicas, E::RequestTimedOut] {
        assert_eq!(txn_action(code), TxnAction::Retry, "{code:?}");
    }
    assert_eq!(txn_action(E::NotCoordinator), TxnAction::FindCoordinator);
    // A batch: fatal only when fenced or unauthorized.
    for code in [E::ProducerFenced, E::TransactionalIdAuthorizationFailed, E::ClusterAuthorizationFailed] {
        assert!(produce_is_fatal(Some(code)), "{code:?}");
    }
    for code in [Some(E::InvalidProducerEpoch), Some(E::InvalidTxnState), Some(E::UnknownServerError), None] {
        assert!(!produce_is_fatal(code), "{code:?}");
    }
}

// ---------------------------------------------------------------------------
// A model of Kafka's transaction coordinator (with the group coordinator's
// part of KIP-447 and the partition leaders' epoch checks), written from
// KIP-98, KIP-360 and KIP-447 and Java's TransactionManager. A model for
// property tests, not a broker.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Open,
    Committed,
    Aborted,
}

#[derive(Debug)]
struct Written {
    value: u32,
    status: Status,
}

#[derive(Debug, Default)]
struct Model {
    /// The transactional id's producer id and epoch; `None` before any init.
    producer: Option<(i64, i16)>,
    ongoing: bool,
    partitions: BTreeSet<TopicPartition>,
    groups: BTreeSet<String>,
    pending_offsets: BTreeMap<TopicPartition, i64>,
    committed_offsets: BTreeMap<TopicPartition, i64>,
    /// How the last transaction ended, for a retried EndTxn.
    last_end: Option<((i64, i16), bool)>,
    log: Vec<Written>,
    /// Each committed transaction's records and offset, in order.
    committed: Vec<(Vec<u32>, Option<i64>)>,
    /// The id and epoch of the last bump (KIP-360's last producer epoch).
    bumped_from: Option<(i64, i16)>,
    generation: i32,
    /// Writes to a partition not in the transaction (must never happen).
    unverified_writes: u32,
}

impl Model {
    fn end(&mut self, commit: bool) {
        let status = if commit { Status::Committed } else { Status::Aborted };
        let mut values = Vec::new();
        for written in &mut self.log {
            if written.status == Status::Open {
                written.status = status;
                values.push(written.value);
            }
        }
        let pending = std::mem::take(&mut self.pending_offsets);
        if commit {
            let offset = pending.get(&TopicPartition::new("in", 0)).copied();
            self.committed.push((values, offset));
            self.committed_offsets.extend(pending);
        }
        self.ongoing = false;
        self.partitions.clear();
        self.groups.clear();
    }

    fn current(&self, producer: (i64, i16)) -> Result<(), ResponseError> {
        match self.producer {
            Some(current) if current == producer => Ok(()),
            Some((id, epoch)) if id == producer.0 && epoch > producer.1 => Err(ResponseError::ProducerFenced),
            _ => Err(ResponseError::InvalidProducerIdMapping),
        }
    }

    fn init(&mut self, current: Option<(i64, i16)>) -> Result<(i64, i16), ResponseError> {
        if let Some(current) = current {
            // KIP-360: a resent bump of the epoch just bumped from gets the
            // same answer (the coordinator keeps the last epoch).
            if self.bumped_from == Some(current) {
                return Ok(self.producer.expect("bumped"));
            }
            self.current(current)?;
        }
        self.bumped_from = current;
        if self.ongoing {
            // A new instance (or a bump) aborts what the old epoch left open.
            self.end(false);
        }
        let next = match self.producer {
            Some((id, epoch)) => (id, epoch + 1),
            None => (1000, 0),
        };
        self.producer = Some(next);
        self.last_end = None;
        Ok(next)
    }

    fn answer(&mut self, call: &Call) -> Answer {
        let code = |result: Result<(), ResponseError>| Answer::Code(result.err());
        match call {
            Call::FindCoordinator(Coordinator::Transaction) => Answer::Found(1),
            Call::FindCoordinator(Coordinator::Group(_)) => Answer::Found(2),
            Call::InitProducerId { current, .. } => match self.init(*current) {
                Ok((id, epoch)) => Answer::Producer { id, epoch },
                Err(error) => Answer::Code(Some(error)),
            },
            Call::AddPartitions { producer, partitions } => code(self.current(*producer).map(|()| {
                self.ongoing = true;
                self.last_end = None;
                self.partitions.extend(partitions.iter().cloned());
            })),
            Call::AddOffsets { producer, group_id } => code(self.current(*producer).map(|()| {
                self.ongoing = true;
                self.last_end = None;
                self.groups.insert(group_id.clone());
            })),
            Call::TxnOffsetCommit { producer, group, offsets } => {
                let result = self.current(*producer).and_then(|()| {
                    if !self.groups.contains(&group.group_id) {
                        Err(ResponseError::InvalidTxnState)
                    } else if group.generation_id != self.generation {
                        Err(ResponseError::IllegalGeneration)
                    } else {
                        Ok(())
                    }
                });
                Answer::Partitions(
                    offsets
                        .iter()
                        .map(|(partition, offset, _)| {
                            if result.is_ok() {
                                self.pending_offsets.insert(partition.clone(), *offset);
                            }
                            (partition.clone(), result.err())
                        })
                        .collect(),
                )
            }
            Call::EndTxn { producer, commit } => {
                if let Err(error) = self.current(*producer) {
                    return Answer::Code(Some(error));
                }
                if !self.ongoing {
                    // A resend of an end already done is answered as done.
                    let again = self.last_end == Some((*producer, *commit));
                    return Answer::Code((!again).then_some(ResponseError::InvalidTxnState));
                }
                self.end(*commit);
                self.last_end = Some((*producer, *commit));
                Answer::Code(None)
            }
        }
    }

    /// A partition leader's append of a transactional batch.
    fn produce(&mut self, producer: (i64, i16), partition: &TopicPartition, value: u32) -> Result<(), ResponseError> {
        self.current(producer)?;
        if !self.partitions.contains(partition) {
            self.unverified_writes += 1;
            return Err(ResponseError::InvalidTxnState);
        }
        self.log.push(Written { value, status: Status::Open });
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Op {
    Begin,
    Send(i32),
    SendOffsets(i64),
    Commit,
    Abort,
    /// A batch of the transaction fails (abortable, with or without a bump).
    FailBatch {
        bump: bool,
    },
    /// The group rebalances: offsets of the old generation are refused.
    Rebalance,
    /// Another instance with the same transactional id starts.
    Zombie,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Begin),
        6 => (0..4i32).prop_map(Op::Send),
        2 => (0..1000i64).prop_map(Op::SendOffsets),
        3 => Just(Op::Commit),
        1 => Just(Op::Abort),
        1 => any::<bool>().prop_map(|bump| Op::FailBatch { bump }),
        1 => Just(Op::Rebalance),
        1 => Just(Op::Zombie),
    ]
}

/// A fault on a call: before it is applied, or its answer lost after.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    Before(ResponseError),
    /// Applied, and the answer lost.
    Lost,
    /// Never arrived: not applied, no answer.
    Dropped,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        8 => Just(Fault::None),
        1 => Just(Fault::Before(ResponseError::NotCoordinator)),
        1 => Just(Fault::Before(ResponseError::CoordinatorLoadInProgress)),
        1 => Just(Fault::Before(ResponseError::ConcurrentTransactions)),
        1 => Just(Fault::Lost),
        1 => Just(Fault::Dropped),
    ]
}

/// The application and driver around one manager, against the model.
struct Harness {
    txn: Transactions,
    now: Instant,
    /// Records appended and not yet sent, with their transaction number.
    unsent: Vec<(TopicPartition, u32)>,
    /// Each transaction's records, and how the application saw it end.
    transactions: Vec<(Vec<u32>, Option<Done>)>,
    offsets: Vec<Option<i64>>,
    next_value: u32,
    faults: std::vec::IntoIter<Fault>,
    coins: std::vec::IntoIter<bool>,
    /// Whether a call stays in flight across the next operation.
    holds: std::vec::IntoIter<bool>,
    held: Option<Call>,
    calls_after_fatal: u32,
    /// The client saw a transaction end while the model's was still open.
    ended_but_open: u32,
}

impl Harness {
    /// The sender: batches to added partitions go out (aborted ones are
    /// failed unsent).
    fn send(&mut self, model: &mut Model) {
        if let Some(producer) = self.txn.producer() {
            let mut still = Vec::new();
            for (partition, value) in std::mem::take(&mut self.unsent) {
                if self.txn.may_send(&partition) {
                    if let Err(code) = model.produce(producer, &partition, value) {
                        self.txn.on_produce_error(Some(code), format!("{partition}: {code:?}"));
                    }
                } else if matches!(self.txn.state(), TxnState::Aborting | TxnState::AbortableError | TxnState::Fatal) {
                    // Aborted before it was sent: failed, never written.
                } else {
                    still.push((partition, value));
                }
            }
            self.unsent = still;
        }
    }

    fn answer(&mut self, model: &mut Model, call: &Call) {
        let answer = match self.faults.next().unwrap_or(Fault::None) {
            Fault::None => model.answer(call),
            Fault::Before(code) if !matches!(call, Call::FindCoordinator(_)) => Answer::Code(Some(code)),
            Fault::Before(_) => model.answer(call),
            Fault::Lost => {
                model.answer(call);
                Answer::Lost
            }
            Fault::Dropped => Answer::Lost,
        };
        self.txn.on_answer(self.now, answer);
    }

    fn pump(&mut self, model: &mut Model) {
        if let Some(call) = self.held.take() {
            self.answer(model, &call);
        }
        for _ in 0..200 {
            // Batches are sent now, or stay in flight while the manager
            // goes on, as a coin says.
            if self.coins.next().unwrap_or(true) {
                self.send(model);
            }
            let idle = self.unsent.is_empty();
            let Some(call) = self.txn.next(self.now, idle) else {
                // Batches in flight stay there across operations, unless
                // the manager waits for them to end the transaction.
                if !self.unsent.is_empty() && matches!(self.txn.state(), TxnState::Committing | TxnState::Aborting) {
                    let before = self.unsent.len();
                    self.send(model);
                    if self.unsent.len() < before {
                        continue;
                    }
                }
                match self.txn.wake_at() {
                    Some(at) => {
                        self.now = at;
                        continue;
                    }
                    None => break,
                }
            };
            if self.txn.state() == TxnState::Fatal {
                self.calls_after_fatal += 1;
            }
            if self.holds.next().unwrap_or(false) {
                self.held = Some(call);
                break;
            }
            self.answer(model, &call);
        }
        for (done, result) in self.txn.take_done() {
            if let (Done::Committed | Done::Aborted, Ok(())) = (&done, &result)
                && model.ongoing
            {
                self.ended_but_open += 1;
            }
            if let (Done::Committed | Done::Aborted, Ok(())) = (&done, &result)
                && let Some(last) = self.transactions.last_mut()
            {
                last.1 = Some(done);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Against the model, whatever the operations and faults: the model
    /// commits exactly the transactions the application saw committed,
    /// with their offsets; nothing is written to a partition outside the
    /// transaction; a fenced producer asks nothing more.
    #[test]
    fn the_coordinator_commits_exactly_what_the_application_saw_committed(
        ops in proptest::collection::vec(op(), 1..60),
        faults in proptest::collection::vec(fault(), 0..200),
        coins in proptest::collection::vec(any::<bool>(), 0..400),
        holds in proptest::collection::vec(proptest::bool::weighted(0.2), 0..100),
        can_bump in any::<bool>(),
    ) {
        let mut model = Model::default();
        let mut harness = Harness {
            txn: Transactions::new(config(can_bump)),
            now: Instant::now(),
            unsent: Vec::new(),
            transactions: Vec::new(),
            offsets: Vec::new(),
            next_value: 0,
            faults: faults.into_iter(),
            coins: coins.into_iter(),
            holds: holds.into_iter(),
            held: None,
            calls_after_fatal: 0,
            ended_but_open: 0,
        };
        harness.txn.init().unwrap();
        while harness.txn.state() == TxnState::Initializing {
            harness.pump(&mut model);
        }
        prop_assert_eq!(harness.txn.state(), TxnState::Ready, "initialized through any fault");
        for op in ops {
            let txn = &mut harness.txn;
            match op {
                Op::Begin => {
                    if txn.begin().is_ok() {
                        harness.transactions.push((Vec::new(), None));
                        harness.offsets.push(None);
                    }
                }
                Op::Send(partition) => {
                    if txn.record_to(&tp(partition)).is_ok() {
                        let value = harness.next_value;
                        harness.next_value += 1;
                        harness.unsent.push((tp(partition), value));
                        harness.transactions.last_mut().unwrap().0.push(value);
                    }
                }
                Op::SendOffsets(offset) => {
                    let metadata = group(model.generation);
                    let offsets = vec![(TopicPartition::new("in", 0), offset, None)];
                    if txn.send_offsets(metadata, offsets).is_ok() {
                        *harness.offsets.last_mut().unwrap() = Some(offset);
                    }
                }
                Op::Commit => {
                    let _ = txn.commit();
                }
                Op::Abort => {
                    let _ = txn.abort();
                }
                Op::FailBatch { bump } => {
                    if matches!(txn.state(), TxnState::InTransaction | TxnState::Committing) {
                        let code = if bump { ResponseError::UnknownProducerId } else { ResponseError::MessageTooLarge };
                        txn.on_produce_error(Some(code), "injected".into());
                    }
                }
                Op::Rebalance => model.generation += 1,
                Op::Zombie => {
                    model.init(None).unwrap();
                }
            }
            harness.pump(&mut model);
            if harness.txn.state() == TxnState::AbortableError {
                harness.txn.abort().unwrap();
                harness.pump(&mut model);
            }
        }
        // Everything in flight is answered, and an open transaction ended.
        while harness.held.is_some() {
            harness.pump(&mut model);
        }
        match harness.txn.state() {
            TxnState::InTransaction => harness.txn.abort().unwrap(),
            TxnState::AbortableError => harness.txn.abort().unwrap(),
            _ => {}
        }
        harness.pump(&mut model);
        while harness.held.is_some() {
            harness.pump(&mut model);
        }
        prop_assert_eq!(harness.ended_but_open, 0, "a transaction seen ended was left open at the coordinator");
        if harness.txn.state() == TxnState::Ready {
            prop_assert!(!model.ongoing, "the producer is ready, its transaction still open");
        }
        prop_assert_eq!(model.unverified_writes, 0, "a batch went to a partition not in the transaction");
        prop_assert_eq!(harness.calls_after_fatal, 0);
        // What the model committed is whole transactions of the
        // application's, none it saw aborted, each with its offsets; every
        // one it saw committed is there. (A commit whose answer never came
        // before the producer was fenced may have gone either way.)
        let mut seen_committed = Vec::new();
        for (values, offset) in &model.committed {
            let found = harness
                .transactions
                .iter()
                .zip(&harness.offsets)
                .position(|((written, _), sent)| {
                    let mut written = written.clone();
                    written.sort_unstable();
                    let mut values = values.clone();
                    values.sort_unstable();
                    written == values && (sent == offset || values.is_empty() && offset.is_none())
                });
            let Some(index) = found else {
                return Err(TestCaseError::fail(format!("committed {values:?} / {offset:?}: no such transaction")));
            };
            prop_assert_ne!(harness.transactions[index].1.clone(), Some(Done::Aborted), "committed what was seen aborted");
            seen_committed.push(index);
        }
        for (index, (values, end)) in harness.transactions.iter().enumerate() {
            let sent_something = !values.is_empty() || harness.offsets[index].is_some();
            if *end == Some(Done::Committed) && sent_something {
                prop_assert!(seen_committed.contains(&index), "transaction {index} seen committed is not");
            }
        }
        // Every write of this producer is at an epoch the model knew then:
        // none after a fence (the model refuses those, and they are not in
        // the log).
        if harness.txn.state() == TxnState::Fatal {
            prop_assert!(matches!(harness.txn.error(), Some(TxnError::Fatal(_))));
        }
    }
}
