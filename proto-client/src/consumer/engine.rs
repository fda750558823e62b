//! The consumer's background task: it finds positions for new partitions
//! (committed offset, else `auto.offset.reset`), keeps a fetch task running
//! for every broker that leads an assigned partition, and commits stored
//! offsets every `auto.commit.interval.ms`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::config::OffsetReset;
use super::coordinator::{CommitOffset, GroupCoordinator};
use super::state::{Lookup, Shared};
use super::truncation::{self, EpochPosition};
use super::{Event, fetcher};
use crate::TopicPartition;
use crate::admin::OffsetSpec;
use crate::error::{Error, ErrorAction, classify};
use kafka_protocol::messages::ApiKey;

pub(crate) async fn run(shared: Arc<Shared>, coordinator: Option<Arc<GroupCoordinator>>) {
    let mut metadata = shared.client.cluster().watch();
    let interval = shared.config.auto_commit_interval;
    let mut next_commit = Instant::now() + interval;
    // One auto-commit at a time: a coordinator busy with a rebalance holds
    // requests, and commits must not pile up behind it.
    let mut committing: Option<tokio::task::JoinHandle<()>> = None;
    while !shared.closed.load(Ordering::Acquire) {
        let changed = shared.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        ensure_fetchers(&shared);
        start_lookups(&shared, &coordinator);
        start_validations(&shared);
        if Instant::now() >= next_commit {
            next_commit = Instant::now() + interval;
            // Not while a join or sync is held at the coordinator: the
            // commit would wait behind it (the next turn commits).
            if shared.config.auto_commit
                && !*shared.rebalancing.borrow()
                && let Some(coordinator) = &coordinator
                && committing.as_ref().is_none_or(|c| c.is_finished())
            {
                let shared = shared.clone();
                let coordinator = coordinator.clone();
                committing = Some(tokio::spawn(async move {
                    if let Err(error) = commit_stored(&shared, &coordinator, None).await {
                        warn!(target: "rill::cgrp", %error, "auto-commit failed");
                    }
                }));
            }
        }
        tokio::select! {
            () = changed => {}
            result = metadata.changed() => {
                if result.is_err() {
                    return;
                }
                metadata.borrow_and_update();
                // Leaders may have moved: fetchers look again.
                shared.changed.notify_waiters();
            }
            () = tokio::time::sleep_until(next_commit) => {}
        }
    }
}

/// Starts a fetch task for every broker leading an assigned partition.
fn ensure_fetchers(shared: &Arc<Shared>) {
    let cluster = shared.client.cluster();
    let metadata = cluster.metadata();
    let mut state = shared.lock();
    let topics: Vec<String> = state.partitions.keys().map(|tp| tp.topic.clone()).collect();
    cluster.want_topics(topics.iter().map(String::as_str));
    let mut leaderless = false;
    let mut leaders: Vec<i32> = Vec::new();
    for tp in state.partitions.keys() {
        match metadata.leader(&tp.topic, tp.partition) {
            Some((broker, _)) => leaders.push(broker.id),
            None => leaderless = true,
        }
    }
    for broker in leaders {
        if !state.fetchers.contains(&broker) {
            state.fetchers.push(broker);
            tokio::spawn(fetcher::run(shared.clone(), broker));
        }
    }
    drop(state);
    if leaderless {
        cluster.request_refresh();
    }
}

/// Starts position lookups for partitions that need one.
fn start_lookups(shared: &Arc<Shared>, coordinator: &Option<Arc<GroupCoordinator>>) {
    let mut committed = Vec::new();
    let mut resets: BTreeMap<OffsetReset, Vec<(TopicPartition, u64)>> = BTreeMap::new();
    {
        let mut state = shared.lock();
        for (tp, ps) in state.partitions.iter_mut() {
            if ps.fetch_offset.is_some() || ps.resolving || ps.failed || ps.paused || ps.revoking {
                continue;
            }
            let epoch = ps.epoch.load(Ordering::Acquire);
            match (ps.lookup, coordinator) {
                (Lookup::Committed, Some(_)) => committed.push((tp.clone(), epoch)),
                (Lookup::Committed, None) => {
                    resets.entry(shared.config.offset_reset).or_default().push((tp.clone(), epoch))
                }
                (Lookup::Reset(reset), _) => resets.entry(reset).or_default().push((tp.clone(), epoch)),
                (Lookup::Done, _) => continue,
            }
            ps.resolving = true;
        }
    }
    if !committed.is_empty() {
        let shared = shared.clone();
        let coordinator = coordinator.clone().expect("committed lookups need a group");
        tokio::spawn(async move { lookup_committed(&shared, &coordinator, committed).await });
    }
    for (reset, partitions) in resets {
        let shared = shared.clone();
        tokio::spawn(async move { lookup_reset(&shared, reset, partitions).await });
    }
}

/// A fetch position to validate at its leader (KIP-320).
struct Validation {
    partition: TopicPartition,
    /// The partition's epoch (of its position) when the validation started.
    epoch: u64,
    position: EpochPosition,
    /// The partition's leader epoch in the metadata.
    leader_epoch: i32,
}

/// Starts an OffsetForLeaderEpoch validation for every partition whose
/// leader epoch moved past the one its position was known good for (the
/// fetcher holds such partitions back meanwhile). Not while a fetch of the
/// partition is in flight: its answer moves the position.
fn start_validations(shared: &Arc<Shared>) {
    let metadata = shared.client.cluster().metadata();
    let mut by_leader: BTreeMap<i32, Vec<Validation>> = BTreeMap::new();
    {
        let mut state = shared.lock();
        for (tp, ps) in state.partitions.iter_mut() {
            let (Some((leader, leader_epoch)), Some(offset), Some(fetch_epoch)) =
                (metadata.leader(&tp.topic, tp.partition), ps.fetch_offset, ps.fetch_epoch)
            else {
                continue;
            };
            if ps.validating || ps.in_flight || ps.failed || ps.paused || ps.revoking {
                continue;
            }
            if !truncation::needs_validation(ps.fetch_epoch, ps.validated_for, leader_epoch) {
                continue;
            }
            ps.validating = true;
            by_leader.entry(leader.id).or_default().push(Validation {
                partition: tp.clone(),
                epoch: ps.epoch.load(Ordering::Acquire),
                position: EpochPosition { offset, leader_epoch: fetch_epoch },
                leader_epoch,
            });
        }
    }
    for (broker, validations) in by_leader {
        let shared = shared.clone();
        tokio::spawn(async move { validate(&shared, broker, validations).await });
    }
}

/// Asks `broker` where the epochs of these positions end, and acts on the
/// answers. A broker without OffsetForLeaderEpoch (Tansu) cannot be asked:
/// its positions count as valid, as in Java. Errors that a fresh look at
/// the metadata or a later try may mend are retried after a backoff.
async fn validate(shared: &Shared, broker: i32, validations: Vec<Validation>) {
    let answers = match offsets_for_leader_epochs(shared, broker, &validations).await {
        Ok(answers) => answers,
        Err(Error::UnsupportedApi { .. }) => {
            debug!(target: "rill::fetch", broker, "no OffsetForLeaderEpoch: positions not validated");
            let mut state = shared.lock();
            for v in &validations {
                if let Some(ps) = state.partitions.get_mut(&v.partition) {
                    ps.validating = false;
                    ps.validated_for = ps.validated_for.max(v.leader_epoch);
                }
            }
            drop(state);
            shared.changed.notify_waiters();
            return;
        }
        Err(error) => {
            // Every partition is retried below.
            debug!(target: "rill::fetch", broker, %error, "validating positions failed; retrying");
            BTreeMap::new()
        }
    };
    let mut events = Vec::new();
    let mut retry = Vec::new();
    {
        let mut state = shared.lock();
        for validation in &validations {
            let Some(ps) = state.partitions.get_mut(&validation.partition) else { continue };
            if ps.epoch.load(Ordering::Acquire) != validation.epoch
                || ps.fetch_offset != Some(validation.position.offset)
            {
                ps.validating = false; // the position moved: looked at again
                continue;
            }
            match answers.get(&validation.partition) {
                Some(Ok((leader_epoch, end_offset))) => {
                    ps.validating = false;
                    let verdict = truncation::judge(validation.position, *leader_epoch, *end_offset);
                    debug!(target: "rill::fetch", partition = %validation.partition,
                        offset = validation.position.offset, position_epoch = validation.position.leader_epoch,
                        leader_epoch, end_offset, ?verdict, "position validated");
                    if let Some(event) =
                        ps.judged(&validation.partition, verdict, validation.leader_epoch, &shared.config)
                    {
                        warn!(target: "rill::fetch", partition = %validation.partition, ?event, "log truncated");
                        events.push(event);
                    }
                }
                Some(Err(code)) if classify(*code) == ErrorAction::Fatal => {
                    ps.validating = false;
                    ps.failed = true;
                    let context = format!("partition {}", validation.partition);
                    let error = Error::broker(ApiKey::OffsetForLeaderEpoch, *code, context);
                    events.push(Event::Error { partition: Some(validation.partition.clone()), error });
                }
                // Retriable (FENCED_LEADER_EPOCH: our metadata is behind;
                // UNKNOWN_LEADER_EPOCH: the broker is), or no answer.
                _ => retry.push(validation.partition.clone()),
            }
        }
    }
    for event in events {
        shared.push_event(event);
    }
    shared.changed.notify_waiters();
    if !retry.is_empty() {
        shared.client.cluster().request_refresh();
        tokio::time::sleep(shared.config.client.retry_backoff_max).await;
        let mut state = shared.lock();
        for tp in &retry {
            if let Some(ps) = state.partitions.get_mut(tp) {
                ps.validating = false;
            }
        }
        drop(state);
        shared.changed.notify_waiters();
    }
}

/// One OffsetForLeaderEpoch request: per partition, the leader's
/// (epoch, end offset) for the position's epoch, or its error code.
async fn offsets_for_leader_epochs(
    shared: &Shared,
    broker: i32,
    validations: &[Validation],
) -> Result<BTreeMap<TopicPartition, Result<(i32, i64), kafka_protocol::ResponseError>>, Error> {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{OffsetForLeaderPartition, OffsetForLeaderTopic};
    use kafka_protocol::messages::{BrokerId, OffsetForLeaderEpochRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let connection = shared.client.cluster().connection_to(broker).await?;
    let version = connection.version_for::<OffsetForLeaderEpochRequest>()?;
    let mut topics: BTreeMap<&str, Vec<OffsetForLeaderPartition>> = BTreeMap::new();
    for v in validations {
        topics.entry(v.partition.topic.as_str()).or_default().push(
            OffsetForLeaderPartition::default()
                .with_partition(v.partition.partition)
                .with_current_leader_epoch(v.leader_epoch)
                .with_leader_epoch(v.position.leader_epoch),
        );
    }
    let mut request = OffsetForLeaderEpochRequest::default().with_topics(
        topics
            .into_iter()
            .map(|(topic, partitions)| {
                OffsetForLeaderTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(partitions)
            })
            .collect(),
    );
    if version >= 3 {
        request = request.with_replica_id(BrokerId(-1)); // a consumer
    }
    let response = connection.send_at(&request, version, shared.config.client.request_timeout).await?;
    let mut answers = BTreeMap::new();
    for topic in response.topics {
        for p in topic.partitions {
            let tp = TopicPartition::new(topic.topic.0.as_str(), p.partition);
            let answer = match kafka_protocol::ResponseError::try_from_code(p.error_code) {
                None => Ok((p.leader_epoch, p.end_offset)),
                Some(code) => Err(code),
            };
            answers.insert(tp, answer);
        }
    }
    Ok(answers)
}

/// Applies a found position, unless the partition moved on meanwhile.
/// A position comes with the leader epoch of the record before it when
/// known (a committed offset's); such a position is validated before it is
/// fetched from.
fn resolved(
    shared: &Shared,
    tp: &TopicPartition,
    epoch: u64,
    outcome: Result<Option<(i64, Option<i32>)>, Error>,
    next: Lookup,
) {
    let mut state = shared.lock();
    let Some(ps) = state.partitions.get_mut(tp) else { return };
    if ps.epoch.load(Ordering::Acquire) != epoch {
        ps.resolving = false;
        return;
    }
    ps.resolving = false;
    match outcome {
        Ok(Some((offset, leader_epoch))) => {
            ps.fetch_offset = Some(offset);
            ps.position = Some(offset);
            ps.moved_to(offset);
            ps.fetch_epoch = leader_epoch;
            ps.position_epoch = leader_epoch;
            ps.validated_for = -1;
            ps.lookup = Lookup::Done;
        }
        Ok(None) => ps.lookup = next,
        Err(error) => {
            ps.failed = true;
            drop(state);
            shared.push_event(Event::Error { partition: Some(tp.clone()), error });
            return;
        }
    }
    drop(state);
    shared.changed.notify_waiters();
}

async fn lookup_committed(shared: &Shared, coordinator: &GroupCoordinator, partitions: Vec<(TopicPartition, u64)>) {
    let tps: Vec<TopicPartition> = partitions.iter().map(|(tp, _)| tp.clone()).collect();
    let timeout = shared.config.client.request_timeout.max(Duration::from_secs(30));
    match coordinator.fetch_offsets(&tps, timeout).await {
        Ok(found) => {
            for (tp, epoch) in partitions {
                let committed = found.get(&tp).copied().flatten();
                if let Some(offset) = committed {
                    debug!(target: "rill::cgrp", partition = %tp, offset = offset.offset, "starting at the committed offset");
                    if let Some(ps) = shared.lock().partitions.get_mut(&tp) {
                        ps.committed = Some(offset.offset);
                    }
                }
                let next = Lookup::Reset(shared.config.offset_reset);
                resolved(shared, &tp, epoch, Ok(committed.map(|c| (c.offset, c.leader_epoch))), next);
            }
        }
        Err(error) => {
            warn!(target: "rill::cgrp", %error, "fetching committed offsets failed; retrying");
            retry_later(shared, &partitions).await;
        }
    }
}

/// After a failed lookup: waits out the backoff, then lets the engine
/// start the lookups again.
async fn retry_later(shared: &Shared, partitions: &[(TopicPartition, u64)]) {
    tokio::time::sleep(shared.config.client.retry_backoff_max).await;
    let mut state = shared.lock();
    for (tp, _) in partitions {
        if let Some(ps) = state.partitions.get_mut(tp) {
            ps.resolving = false;
        }
    }
    drop(state);
    shared.changed.notify_waiters();
}

async fn lookup_reset(shared: &Shared, reset: OffsetReset, partitions: Vec<(TopicPartition, u64)>) {
    let spec = match reset {
        OffsetReset::Earliest => OffsetSpec::Earliest,
        OffsetReset::Latest => OffsetSpec::Latest,
        OffsetReset::Error => {
            for (tp, epoch) in partitions {
                let error = Error::NoOffset(format!("{tp} has no committed offset and auto.offset.reset is error"));
                resolved(shared, &tp, epoch, Err(error), Lookup::Done);
            }
            return;
        }
    };
    let requests: Vec<(TopicPartition, OffsetSpec)> = partitions.iter().map(|(tp, _)| (tp.clone(), spec)).collect();
    // Each round within the request timeout; failed rounds are retried for
    // as long as the partitions are assigned.
    let admin = shared.client.admin().timeout(shared.config.client.request_timeout);
    match admin.list_offsets_isolated(&requests, shared.config.isolation).await {
        Ok(found) => {
            for (tp, epoch) in partitions {
                let offset = found.get(&tp).map(|o| o.offset);
                debug!(target: "rill::fetch", partition = %tp, ?offset, ?reset, "position reset");
                // The leader just named it: nothing to validate.
                resolved(shared, &tp, epoch, Ok(offset.map(|o| (o, None))), Lookup::Reset(reset));
            }
        }
        Err(error) if needs_the_application(&error) => {
            for (tp, epoch) in partitions {
                resolved(shared, &tp, epoch, Err(error.clone()), Lookup::Done);
            }
        }
        Err(error) => {
            // As long as the partition is assigned: a broker that is down
            // or slow now answers later.
            warn!(target: "rill::fetch", %error, "resetting positions failed; retrying");
            retry_later(shared, &partitions).await;
        }
    }
}

/// Whether a failed position lookup is for the application to act on
/// (it is not authorized, the broker cannot answer such a request, the
/// settings are wrong) rather than one to retry for as long as the
/// partition is assigned. Running out of time is not: the lookup goes on.
fn needs_the_application(error: &Error) -> bool {
    use kafka_protocol::ResponseError as E;
    match error {
        Error::Timeout { .. } => false,
        Error::Broker { code: E::TopicAuthorizationFailed | E::ClusterAuthorizationFailed, .. } => true,
        Error::Config(_) | Error::UnsupportedApi { .. } => true,
        _ => false,
    }
}

/// Commits the stored offsets that moved since the last commit (of
/// `only` partitions, when given). Waits for a join or sync under way to
/// finish first (within the request timeout). A refusal that says this
/// member is out of date goes to the group driver at once.
pub(crate) async fn commit_stored(
    shared: &Shared,
    coordinator: &GroupCoordinator,
    only: Option<&[TopicPartition]>,
) -> Result<(), Error> {
    let timeout = shared.config.client.request_timeout;
    let mut rebalancing = shared.rebalancing.subscribe();
    if tokio::time::timeout(timeout, rebalancing.wait_for(|r| !*r)).await.is_err() {
        return Err(Error::Timeout { operation: "committing offsets during a rebalance".into(), after: timeout });
    }
    let (mut offsets, mut committer) = {
        let mut state = shared.lock();
        let auto_store = shared.config.auto_offset_store;
        let offsets: BTreeMap<TopicPartition, CommitOffset> = state
            .partitions
            .iter_mut()
            .filter(|(tp, _)| only.is_none_or(|only| only.contains(tp)))
            .filter_map(|(tp, ps)| {
                ps.sync(auto_store);
                let stored = ps.stored?;
                (ps.committed != Some(stored))
                    .then(|| (tp.clone(), CommitOffset { offset: stored, leader_epoch: ps.stored_epoch }))
            })
            .collect();
        (offsets, state.committer.clone())
    };
    if offsets.is_empty() {
        return Ok(());
    }
    loop {
        let Err(error) = coordinator.commit(&offsets, &committer, timeout).await else { break };
        use kafka_protocol::ResponseError as E;
        let code = error.code();
        if code == Some(E::StaleMemberEpoch) {
            // KIP-848: the member's epoch moved while the commit was out;
            // with the new one it goes through, as long as the member
            // still owns the partitions (else the epoch says so).
            let state = shared.lock();
            let now = state.committer.clone();
            if now != committer && now.generation >= 0 {
                debug!(target: "rill::cgrp", from = committer.generation, to = now.generation,
                    "commit refused as stale; again with the member's new epoch");
                // Only what the member still owns.
                offsets.retain(|tp, _| state.partitions.contains_key(tp));
                drop(state);
                committer = now;
                if offsets.is_empty() {
                    return Ok(());
                }
                continue;
            }
        }
        if let Some(
            code @ (E::IllegalGeneration
            | E::UnknownMemberId
            | E::FencedInstanceId
            | E::RebalanceInProgress
            | E::StaleMemberEpoch
            | E::FencedMemberEpoch),
        ) = code
            && committer.generation >= 0
        {
            shared.refused.lock().unwrap_or_else(|p| p.into_inner()).push((code, committer.generation));
            shared.refused_notify.notify_one();
        }
        return Err(error);
    }
    let mut state = shared.lock();
    for (tp, offset) in &offsets {
        if let Some(ps) = state.partitions.get_mut(tp) {
            ps.committed = Some(offset.offset);
        }
    }
    debug!(target: "rill::cgrp", partitions = offsets.len(), "offsets committed");
    Ok(())
}
