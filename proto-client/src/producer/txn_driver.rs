//! The transactional producer's driver: runs the pure [`Transactions`]
//! state machine against the coordinators, one call at a time. It only
//! moves bytes and time; every decision is the state machine's.
//!
//! ```text
//!  loop:
//!    next call (lock): Transactions::next(now, produce idle)
//!    send it to the transaction coordinator (or the group's, for
//!      TxnOffsetCommit; FindCoordinator looks either up)
//!    answer (lock): Transactions::on_answer; a new producer id or epoch
//!      goes to the sequencer; finished operations to their waiters
//!    wait: an operation, a batch answered, the end of a backoff
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, EndTxnRequest, GroupId, InitProducerIdRequest, ProducerId,
    TopicName, TransactionalId, TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::StrBytes;
use tokio::time::Instant;
use tracing::debug;

use super::Shared;
use super::transaction::{Answer, Call, Coordinator, TxnState};
use crate::TopicPartition;
use crate::consumer::coordinator::GroupCoordinator;
use crate::error::{Error, Result};

fn str(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

/// A failed call as the state machine sees it: a broker's code, or no
/// answer (which may or may not have been applied).
fn answer_of(error: &Error) -> Answer {
    match error {
        Error::Broker { code, .. } => Answer::Code(Some(*code)),
        _ => Answer::Lost,
    }
}

fn code(raw: i16) -> Option<ResponseError> {
    ResponseError::try_from_code(raw)
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let Some(transactional_id) = shared.config.transactional_id.clone() else { return };
    let coordinator = GroupCoordinator::for_transactions(shared.client.clone(), transactional_id.clone());
    let mut groups: HashMap<String, GroupCoordinator> = HashMap::new();
    loop {
        let wake = shared.txn_wake.notified();
        let progress = shared.progress.notified();
        tokio::pin!(wake, progress);
        wake.as_mut().enable();
        progress.as_mut().enable();
        let (call, wake_at, busy) = {
            let mut state = shared.lock();
            let idle = state.produce_idle();
            let Some(txn) = state.transactions.as_mut() else { return };
            let call = txn.next(Instant::now().into_std(), idle);
            let wake_at = txn.wake_at();
            // An operation someone may be waiting for.
            let busy = matches!(txn.state(), TxnState::Initializing | TxnState::Committing | TxnState::Aborting);
            state.collect_txn_done();
            (call, wake_at, busy)
        };
        shared.txn_done.notify_waiters();
        if shared.closing.load(Ordering::Acquire) && !busy {
            // Closed (or dropped): an open transaction is the coordinator's
            // to time out, or the next instance's to abort.
            return;
        }
        let Some(call) = call else {
            tokio::select! {
                () = &mut wake => {}
                () = &mut progress => {}
                () = super::sender::sleep_until(wake_at.map(Instant::from_std)) => {}
            }
            continue;
        };
        let answer = perform(&shared, &coordinator, &mut groups, &transactional_id, &call).await;
        debug!(target: "rill::txn", ?call, ?answer, "transaction call");
        let finished = {
            let mut state = shared.lock();
            let Some(txn) = state.transactions.as_mut() else { return };
            let before = txn.producer();
            txn.on_answer(Instant::now().into_std(), answer);
            let after = txn.producer();
            let finished = match after {
                Some((id, epoch)) if after != before => state.sequencer.set_producer_id(id, epoch),
                _ => Vec::new(),
            };
            state.release_finished(&finished);
            state.collect_txn_done();
            finished
        };
        shared.complete(finished);
        shared.txn_done.notify_waiters();
        // Partitions added or a new epoch: batches may go now.
        shared.wake.notify_one();
    }
}

/// Sends one call and reads its answer.
async fn perform(
    shared: &Shared,
    coordinator: &GroupCoordinator,
    groups: &mut HashMap<String, GroupCoordinator>,
    transactional_id: &str,
    call: &Call,
) -> Answer {
    let timeout = shared.config.client.request_timeout;
    let txn_id = || TransactionalId(str(transactional_id));
    let result: Result<Answer> = match call {
        Call::FindCoordinator(Coordinator::Transaction) => {
            coordinator.invalidate();
            coordinator.find_node().await.map(Answer::Found)
        }
        Call::FindCoordinator(Coordinator::Group(group)) => {
            let group_coordinator = groups
                .entry(group.clone())
                .or_insert_with(|| GroupCoordinator::new(shared.client.clone(), group.clone()));
            group_coordinator.invalidate();
            group_coordinator.find_node().await.map(Answer::Found)
        }
        Call::InitProducerId { timeout_ms, current } => {
            let request = |version: i16| {
                // A bump names the current id and epoch (KIP-360, v3+);
                // before v3 the coordinator bumps a transactional id's epoch
                // on any InitProducerId.
                let (id, epoch) = current.filter(|_| version >= 3).unwrap_or((-1, -1));
                InitProducerIdRequest::default()
                    .with_transactional_id(Some(txn_id()))
                    .with_transaction_timeout_ms(*timeout_ms)
                    .with_producer_id(ProducerId(id))
                    .with_producer_epoch(epoch)
            };
            coordinator.send(request, timeout).await.map(|response| match code(response.error_code) {
                Some(code) => Answer::Code(Some(code)),
                None => Answer::Producer { id: response.producer_id.0, epoch: response.producer_epoch },
            })
        }
        Call::AddPartitions { producer, partitions } => {
            let mut topics: Vec<AddPartitionsToTxnTopic> = Vec::new();
            for tp in partitions {
                match topics.last_mut() {
                    Some(topic) if topic.name.0.as_str() == tp.topic => topic.partitions.push(tp.partition),
                    _ => topics.push(
                        AddPartitionsToTxnTopic::default()
                            .with_name(TopicName(str(&tp.topic)))
                            .with_partitions(vec![tp.partition]),
                    ),
                }
            }
            let request = |_version: i16| {
                AddPartitionsToTxnRequest::default()
                    .with_v3_and_below_transactional_id(txn_id())
                    .with_v3_and_below_producer_id(ProducerId(producer.0))
                    .with_v3_and_below_producer_epoch(producer.1)
                    .with_v3_and_below_topics(topics.clone())
            };
            coordinator.send(request, timeout).await.map(|response| {
                if let Some(code) = code(response.error_code) {
                    return Answer::Code(Some(code));
                }
                Answer::Partitions(
                    response
                        .results_by_topic_v3_and_below
                        .iter()
                        .flat_map(|topic| {
                            topic.results_by_partition.iter().map(|p| {
                                (
                                    TopicPartition::new(topic.name.0.as_str(), p.partition_index),
                                    code(p.partition_error_code),
                                )
                            })
                        })
                        .collect(),
                )
            })
        }
        Call::AddOffsets { producer, group_id } => {
            let request = |_version: i16| {
                AddOffsetsToTxnRequest::default()
                    .with_transactional_id(txn_id())
                    .with_producer_id(ProducerId(producer.0))
                    .with_producer_epoch(producer.1)
                    .with_group_id(GroupId(str(group_id)))
            };
            coordinator.send(request, timeout).await.map(|response| Answer::Code(code(response.error_code)))
        }
        Call::TxnOffsetCommit { producer, group, offsets } => {
            let group_coordinator = groups
                .entry(group.group_id.clone())
                .or_insert_with(|| GroupCoordinator::new(shared.client.clone(), group.group_id.clone()));
            let mut topics: Vec<TxnOffsetCommitRequestTopic> = Vec::new();
            for (tp, offset, leader_epoch) in offsets {
                let partition = TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(tp.partition)
                    .with_committed_offset(*offset)
                    .with_committed_leader_epoch(leader_epoch.unwrap_or(-1));
                match topics.last_mut() {
                    Some(topic) if topic.name.0.as_str() == tp.topic => topic.partitions.push(partition),
                    _ => topics.push(
                        TxnOffsetCommitRequestTopic::default()
                            .with_name(TopicName(str(&tp.topic)))
                            .with_partitions(vec![partition]),
                    ),
                }
            }
            let request = |version: i16| {
                let mut request = TxnOffsetCommitRequest::default()
                    .with_transactional_id(txn_id())
                    .with_group_id(GroupId(str(&group.group_id)))
                    .with_producer_id(ProducerId(producer.0))
                    .with_producer_epoch(producer.1)
                    .with_topics(topics.clone());
                if version >= 3 {
                    // KIP-447: the group coordinator fences a zombie by its
                    // generation.
                    request = request
                        .with_generation_id(group.generation_id)
                        .with_member_id(str(&group.member_id))
                        .with_group_instance_id(group.group_instance_id.as_deref().map(str));
                }
                request
            };
            group_coordinator.send(request, timeout).await.map(|response| {
                Answer::Partitions(
                    response
                        .topics
                        .iter()
                        .flat_map(|topic| {
                            topic.partitions.iter().map(|p| {
                                (TopicPartition::new(topic.name.0.as_str(), p.partition_index), code(p.error_code))
                            })
                        })
                        .collect(),
                )
            })
        }
        Call::EndTxn { producer, commit } => {
            let request = |_version: i16| {
                EndTxnRequest::default()
                    .with_transactional_id(txn_id())
                    .with_producer_id(ProducerId(producer.0))
                    .with_producer_epoch(producer.1)
                    .with_committed(*commit)
            };
            coordinator.send(request, timeout).await.map(|response| Answer::Code(code(response.error_code)))
        }
    };
    result.unwrap_or_else(|error| answer_of(&error))
}
