//! The fetcher: one task per broker that leads assigned partitions. It keeps
//! the application's queue filled within the prefetch budget.
//!
//! ```text
//!  loop:
//!    plan (lock): partitions led by this broker with a position, not paused,
//!                 not in flight; reserve budget bytes, as many as keep the
//!                 reader fed for two round trips (`readahead`), within the
//!                 budget
//!    fetch:       session request (KIP-227), long poll up to fetch.wait.max.ms
//!    decode:      outside the lock, in this task (brokers decode in parallel)
//!    apply (lock): drop what went stale (epoch moved), queue chunks, advance
//!                  fetch offsets, handle partition errors
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tracing::{debug, warn};

use super::Event;
use super::config::IsolationLevel;
use super::fetched::{Aborted, Decoded, Rules, decode_partition};
use super::readahead::ReadAhead;
use super::session::{FetchSession, FetchState};
use super::state::{Chunk, Item, Lookup, Shared};
use super::truncation::{self, EpochPosition};
use crate::TopicPartition;
use crate::error::{Error, ErrorAction, classify};
use crate::net::backoff::{delay, jitter};

/// A partition in this fetch: where it was fetched from and at what epoch.
struct Fetching {
    topic: Arc<str>,
    offset: i64,
    /// The leader epoch of the record before `offset` (-1: unknown), as
    /// named in the request.
    last_fetched_epoch: i32,
    /// The partition's leader epoch in the metadata the fetch was planned on.
    leader_epoch: i32,
    epoch: u64,
}

enum Plan {
    /// Nothing this broker leads can be fetched now.
    Nothing,
    /// The prefetch budget is spent.
    NoBudget,
    Fetch {
        partitions: BTreeMap<TopicPartition, Fetching>,
        wanted: BTreeMap<TopicPartition, FetchState>,
        /// Budget bytes reserved.
        granted: usize,
        /// What the fetch asks for on the wire.
        fetch_bytes: usize,
    },
}

pub(crate) async fn run(shared: Arc<Shared>, broker: i32) {
    let mut session = FetchSession::default();
    let mut failures = 0u32;
    let mut rotation = 0usize;
    let config = &shared.config;
    let mut ahead = ReadAhead::new(config.max_partition_fetch_bytes as usize, shared.budget.limit());
    debug!(target: "rill::fetch", broker, "fetcher started");
    while !shared.closed.load(Ordering::Acquire) {
        // Register for wake-ups before looking, so a change in between is seen.
        let changed = shared.changed.notified();
        let freed = shared.budget.freed.notified();
        tokio::pin!(changed, freed);
        changed.as_mut().enable();
        freed.as_mut().enable();
        let (partitions, wanted, granted, fetch_bytes) = match plan(&shared, broker, &ahead) {
            Plan::Nothing => {
                // Leadership may move here without an assignment change.
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Plan::NoBudget => {
                tokio::select! {
                    () = freed => {}
                    () = changed => {}
                }
                continue;
            }
            Plan::Fetch { partitions, wanted, granted, fetch_bytes } => (partitions, wanted, granted, fetch_bytes),
        };
        rotation = rotation.wrapping_add(1);
        let sent = Instant::now();
        match fetch(&shared, broker, &mut session, &wanted, fetch_bytes, rotation).await {
            Ok(response) => {
                failures = 0;
                let answered = Instant::now();
                let (wire, decoded) = apply(&shared, &partitions, response, granted);
                let round_trip = (decoded > 0).then(|| answered - sent);
                ahead.sample(answered, shared.budget.taken(), round_trip, wire, decoded);
            }
            Err(error) => {
                session.on_failure();
                unmark(&shared, &partitions);
                shared.budget.cancel(granted);
                let wait = delay(config.client.retry_backoff, config.client.retry_backoff_max, failures, jitter());
                failures += 1;
                debug!(target: "rill::fetch", broker, %error, retry_in = ?wait, "fetch failed");
                shared.client.cluster().request_refresh();
                tokio::time::sleep(wait).await;
            }
        }
    }
}

fn plan(shared: &Shared, broker: i32, ahead: &ReadAhead) -> Plan {
    let metadata = shared.client.cluster().metadata();
    let mut state = shared.lock();
    let mut partitions = BTreeMap::new();
    let mut wanted = BTreeMap::new();
    for (tp, ps) in state.partitions.iter_mut() {
        let Some(leader_epoch) = metadata.leader(&tp.topic, tp.partition).filter(|(b, _)| b.id == broker).map(|l| l.1)
        else {
            continue;
        };
        if ps.fetch_epoch.is_none() {
            // Nothing to validate yet; the first records fetched are of
            // this leader's log.
            ps.validated_for = ps.validated_for.max(leader_epoch);
        }
        if !ps.fetchable(leader_epoch) {
            continue;
        }
        let offset = ps.fetch_offset.expect("fetchable");
        let last_fetched_epoch = ps.fetch_epoch.unwrap_or(-1);
        wanted.insert(
            tp.clone(),
            FetchState {
                offset,
                max_bytes: shared.config.max_partition_fetch_bytes,
                current_leader_epoch: leader_epoch,
                last_fetched_epoch,
            },
        );
        partitions.insert(
            tp.clone(),
            Fetching {
                topic: ps.topic.clone(),
                offset,
                last_fetched_epoch,
                leader_epoch,
                epoch: ps.epoch.load(Ordering::Acquire),
            },
        );
    }
    if partitions.is_empty() {
        return Plan::Nothing;
    }
    let ask = ahead.ask(shared.budget.buffered());
    let granted = if ask == 0 { 0 } else { shared.budget.reserve(ask) };
    if granted == 0 {
        return Plan::NoBudget;
    }
    let fetch_bytes = ahead.fetch_bytes(granted, shared.config.fetch_max_bytes as usize);
    for tp in partitions.keys() {
        state.partitions.get_mut(tp).expect("listed above").in_flight = true;
    }
    Plan::Fetch { partitions, wanted, granted, fetch_bytes }
}

/// The partitions of a fetch in the order they go out: the broker fills
/// its answer in request order until `max_bytes`, so a fixed order would
/// starve the last partitions whenever the first ones have plenty. The
/// topics take turns leading, and within each topic the partitions do;
/// a topic's partitions stay together (one entry per topic).
fn rotated<T>(partitions: &[(TopicPartition, T)], rotation: usize) -> Vec<&(TopicPartition, T)> {
    let mut topics: Vec<Vec<&(TopicPartition, T)>> = Vec::new();
    for entry in partitions {
        match topics.last_mut() {
            Some(topic) if topic[0].0.topic == entry.0.topic => topic.push(entry),
            _ => topics.push(vec![entry]),
        }
    }
    if topics.is_empty() {
        return Vec::new();
    }
    let lead = rotation % topics.len();
    topics.rotate_left(lead);
    for topic in &mut topics {
        let len = topic.len();
        topic.rotate_left(rotation % len);
    }
    topics.into_iter().flatten().collect()
}

async fn fetch(
    shared: &Shared,
    broker: i32,
    session: &mut FetchSession,
    wanted: &BTreeMap<TopicPartition, FetchState>,
    fetch_bytes: usize,
    rotation: usize,
) -> Result<FetchResponse, Error> {
    let config = &shared.config;
    let link = shared
        .client
        .cluster()
        .link(broker)
        .ok_or_else(|| Error::UnknownTopicOrPartition(format!("broker {broker} left the cluster")))?;
    let connection = link.connection().await?;
    let version = connection.version_for::<FetchRequest>()?;
    let planned = session.plan(wanted);
    let mut topics: Vec<(&str, Vec<FetchPartition>)> = Vec::new();
    for (tp, state) in rotated(&planned.partitions, rotation) {
        let partition = FetchPartition::default()
            .with_partition(tp.partition)
            .with_fetch_offset(state.offset)
            // A batch larger than this comes whole when its partition is
            // the first with data (KIP-74), cut otherwise; a cut batch
            // within max.partition.fetch.bytes is fetched again, not an
            // error (`decode_partition`).
            .with_partition_max_bytes(state.max_bytes.min(fetch_bytes as i32))
            .with_current_leader_epoch(if version >= 9 { state.current_leader_epoch } else { -1 })
            // The broker checks its log agrees with what was read (KIP-320).
            .with_last_fetched_epoch(if version >= 12 { state.last_fetched_epoch } else { -1 });
        match topics.last_mut() {
            Some((topic, partitions)) if *topic == tp.topic.as_str() => partitions.push(partition),
            _ => topics.push((tp.topic.as_str(), vec![partition])),
        }
    }
    let mut forgotten: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in &planned.forgotten {
        forgotten.entry(tp.topic.as_str()).or_default().push(tp.partition);
    }
    let name = |topic: &str| TopicName(StrBytes::from_string(topic.to_owned()));
    let mut request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(config.fetch_max_wait.as_millis() as i32)
        .with_min_bytes(config.fetch_min_bytes)
        .with_max_bytes(fetch_bytes as i32)
        .with_isolation_level(match config.isolation {
            IsolationLevel::ReadUncommitted => 0,
            IsolationLevel::ReadCommitted => 1,
        })
        .with_topics(
            topics
                .into_iter()
                .map(|(topic, partitions)| FetchTopic::default().with_topic(name(topic)).with_partitions(partitions))
                .collect(),
        );
    if version >= 7 {
        request = request
            .with_session_id(planned.session_id)
            .with_session_epoch(planned.session_epoch)
            .with_forgotten_topics_data(
                forgotten
                    .into_iter()
                    .map(|(topic, partitions)| {
                        ForgottenTopic::default().with_topic(name(topic)).with_partitions(partitions)
                    })
                    .collect(),
            );
    }
    let timeout = config.client.request_timeout + config.fetch_max_wait;
    let response = connection.send_at(&request, version, timeout).await?;
    session.on_response(response.session_id, response.error_code);
    if let Some(code) = ResponseError::try_from_code(response.error_code) {
        return Err(Error::broker(kafka_protocol::messages::ApiKey::Fetch, code, format!("broker {broker}")));
    }
    Ok(response)
}

/// Clears the in-flight marks after a failed fetch.
fn unmark(shared: &Shared, partitions: &BTreeMap<TopicPartition, Fetching>) {
    let mut state = shared.lock();
    for tp in partitions.keys() {
        if let Some(ps) = state.partitions.get_mut(tp) {
            ps.in_flight = false;
        }
    }
    drop(state);
    shared.changed.notify_waiters();
}

/// One partition's answer, decoded.
struct Answer {
    error: Option<ResponseError>,
    high_watermark: i64,
    /// The end a consumer of this isolation level reads to.
    end: i64,
    /// The leader's (epoch, end offset) where its log parts from the
    /// last fetched epoch (Fetch v12+), instead of records.
    diverging: Option<(i32, i64)>,
    decoded: Decoded,
}

/// Where a partition ends for the consumer: the high watermark, or under
/// read_committed the last stable offset (records of open transactions
/// are not readable yet), when the broker sent one (Fetch v4+).
fn readable_end(read_committed: bool, high_watermark: i64, last_stable_offset: i64) -> i64 {
    if read_committed && last_stable_offset >= 0 { last_stable_offset.min(high_watermark) } else { high_watermark }
}

/// Applies an answer; returns the bytes of record data it decoded, and
/// the budget bytes of the records they held.
fn apply(
    shared: &Shared,
    partitions: &BTreeMap<TopicPartition, Fetching>,
    response: FetchResponse,
    granted: usize,
) -> (usize, usize) {
    let config = &shared.config;
    let read_committed = config.isolation == IsolationLevel::ReadCommitted;
    // Decode outside the lock. Partitions absent from an incremental
    // answer had nothing new.
    let mut answers: BTreeMap<TopicPartition, Answer> = BTreeMap::new();
    let mut wire = 0;
    // Decode no more than was reserved (and one batch more).
    let mut allowance = granted;
    for topic in response.responses {
        for data in topic.partitions {
            let tp = TopicPartition::new(topic.topic.0.as_str(), data.partition_index);
            let Some(fetching) = partitions.get(&tp) else { continue };
            let error = ResponseError::try_from_code(data.error_code);
            let diverging = &data.diverging_epoch;
            let diverging =
                (diverging.epoch >= 0 || diverging.end_offset >= 0).then_some((diverging.epoch, diverging.end_offset));
            let decoded = match (error, data.records) {
                (None, Some(records)) if !records.is_empty() && diverging.is_none() => {
                    let aborted: Vec<Aborted> = data
                        .aborted_transactions
                        .unwrap_or_default()
                        .iter()
                        .map(|a| Aborted { producer_id: a.producer_id.0, first_offset: a.first_offset })
                        .collect();
                    // Decompressed data may take up to the prefetch budget.
                    decode_partition(
                        &fetching.topic,
                        tp.partition,
                        fetching.offset,
                        records,
                        &aborted,
                        Rules {
                            read_committed,
                            max_uncompressed: config.queued_max_bytes,
                            partition_max: config.max_partition_fetch_bytes as usize,
                        },
                        &mut allowance,
                    )
                }
                _ => Decoded::default(),
            };
            wire += decoded.wire;
            let end = readable_end(read_committed, data.high_watermark, data.last_stable_offset);
            answers.insert(tp, Answer { error, high_watermark: data.high_watermark, end, diverging, decoded });
        }
    }
    let mut chunks = Vec::new();
    let mut events = Vec::new();
    let mut refresh = false;
    let mut total = 0;
    {
        let mut state = shared.lock();
        for (tp, fetching) in partitions {
            let Some(ps) = state.partitions.get_mut(tp) else { continue };
            ps.in_flight = false;
            let answer = answers.remove(tp);
            if ps.epoch.load(Ordering::Acquire) != fetching.epoch {
                continue; // sought, revoked or reset meanwhile
            }
            let Some(Answer { error, high_watermark, end, diverging, decoded }) = answer else { continue };
            if let (None, Some((leader_epoch, end_offset))) = (error, diverging) {
                let position = EpochPosition { offset: fetching.offset, leader_epoch: fetching.last_fetched_epoch };
                let verdict = truncation::judge(position, leader_epoch, end_offset);
                debug!(target: "rill::fetch", partition = %tp, offset = fetching.offset,
                        last_fetched_epoch = fetching.last_fetched_epoch, leader_epoch, end_offset, ?verdict,
                        "diverging epoch");
                if let Some(event) = ps.judged(tp, verdict, fetching.leader_epoch, config) {
                    warn!(target: "rill::fetch", partition = %tp, ?event, "log truncated");
                    events.push(event);
                }
                continue;
            }
            match error {
                None => {
                    ps.high_watermark = high_watermark;
                    ps.readable_end = end;
                    if let Some(next) = decoded.next_offset {
                        ps.fetch_offset = Some(next);
                    }
                    if let Some(next) = ps.fetch_offset {
                        // Under read_committed, against the last stable offset.
                        crate::telemetry::consumer_lag(tp, (end - next).max(0));
                    }
                    if !decoded.records.is_empty() {
                        total += decoded.bytes;
                        if let Some(last) = decoded.records.back() {
                            ps.fetch_epoch = last.leader_epoch.or(ps.fetch_epoch);
                        }
                        chunks.push(Chunk {
                            partition: tp.clone(),
                            fetched_epoch: fetching.epoch,
                            epoch: ps.epoch.clone(),
                            records: decoded.records,
                            bytes: decoded.bytes,
                            budget: shared.budget.clone(),
                            progress: ps.progress.clone(),
                        });
                    }
                    // Where reading stopped: after the last batch returned.
                    let stopped = ps.fetch_offset.unwrap_or(fetching.offset);
                    let unreadable = |error: Error, skip_to: Option<i64>| Event::Unreadable {
                        partition: tp.clone(),
                        offset: stopped,
                        skip_to: skip_to.unwrap_or(stopped + 1).max(stopped + 1),
                        error,
                    };
                    if let Some(error) = decoded.error {
                        ps.failed = true;
                        warn!(target: "rill::fetch", partition = %tp, offset = stopped, %error, "unreadable batch");
                        events.push(unreadable(Error::protocol(tp, error.to_string()), decoded.skip_to));
                    } else if decoded.too_small {
                        ps.failed = true;
                        let message = format!(
                            "a batch of {tp} at offset {stopped} is larger than max.partition.fetch.bytes ({})",
                            config.max_partition_fetch_bytes
                        );
                        warn!(target: "rill::fetch", partition = %tp, offset = stopped, "batch larger than the fetch");
                        events.push(unreadable(Error::protocol(tp, message), None));
                    } else if config.partition_eof {
                        let offset = ps.fetch_offset.unwrap_or(fetching.offset);
                        if offset >= end && ps.eof_at != Some(offset) {
                            ps.eof_at = Some(offset);
                            events.push(Event::PartitionEof { partition: tp.clone(), offset });
                        }
                    }
                }
                Some(ResponseError::OffsetOutOfRange) => {
                    debug!(target: "rill::fetch", partition = %tp, offset = fetching.offset, "offset out of range; resetting");
                    ps.restart(None, None, Lookup::Reset(config.offset_reset));
                }
                Some(code) => match classify(code) {
                    ErrorAction::Fatal => {
                        ps.failed = true;
                        let error =
                            Error::broker(kafka_protocol::messages::ApiKey::Fetch, code, format!("partition {tp}"));
                        events.push(Event::Error { partition: Some(tp.clone()), error });
                    }
                    _ => {
                        debug!(target: "rill::fetch", partition = %tp, %code, "fetch error; refreshing metadata");
                        refresh = true;
                    }
                },
            }
        }
    }
    shared.budget.settle(granted, total);
    if refresh {
        shared.client.cluster().request_refresh();
    }
    if !chunks.is_empty() || !events.is_empty() {
        let mut queue = shared.queue();
        queue.extend(chunks.into_iter().map(Item::Records));
        queue.extend(events.into_iter().map(Item::Event));
        drop(queue);
        shared.queued.notify_one();
    }
    // Offsets reset or partitions freed: the engine and other fetchers look.
    shared.changed.notify_waiters();
    if shared.budget.used() > config.queued_max_bytes {
        warn!(target: "rill::fetch", used = shared.budget.used(), "prefetch over budget after decompression");
    }
    (wire, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_committed_ends_at_the_last_stable_offset() {
        assert_eq!(readable_end(true, 100, 80), 80, "an open transaction from 80 on");
        assert_eq!(readable_end(false, 100, 80), 100);
        assert_eq!(readable_end(true, 100, -1), 100, "no LSO before Fetch v4");
        assert_eq!(readable_end(true, 100, 120), 100, "never past the high watermark");
    }

    #[test]
    fn every_partition_leads_a_fetch_in_turn_and_topics_stay_together() {
        let partitions: Vec<(TopicPartition, ())> = [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
            .iter()
            .map(|&(t, p)| (TopicPartition::new(t, p), ()))
            .collect();
        let order = |rotation| -> Vec<String> {
            rotated(&partitions, rotation).iter().map(|(tp, _)| format!("{}{}", tp.topic, tp.partition)).collect()
        };
        assert_eq!(order(0), ["a0", "a1", "a2", "b0", "b1"]);
        assert_eq!(order(1), ["b1", "b0", "a1", "a2", "a0"]);
        assert_eq!(order(2), ["a2", "a0", "a1", "b0", "b1"]);
        let mut first_of_topic: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for rotation in 0..12 {
            let got = order(rotation);
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(sorted, order(0), "each partition once");
            let runs = got.windows(2).filter(|w| w[0][..1] != w[1][..1]).count() + 1;
            assert_eq!(runs, 2, "one entry per topic: {got:?}");
            first_of_topic.insert(got[0].clone());
            first_of_topic.insert(got.iter().find(|p| p[..1] != got[0][..1]).unwrap().clone());
        }
        assert_eq!(first_of_topic.len(), 5, "every partition leads its topic in turn: {first_of_topic:?}");
        assert!(rotated::<()>(&[], 7).is_empty());
    }
}
