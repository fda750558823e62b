//! The consumer.
//!
//! ```text
//!  fetch task per broker ──chunks──▶ queue ──▶ Consumer::recv / next_event
//!     (prefetch within a byte budget     (records, then events:
//!      over all partitions)               EOF, errors, rebalances)
//!  engine task: positions (committed offset, else reset), fetch tasks,
//!               auto-commit
//! ```
//!
//! - `config`: [`ConsumerConfig`].
//! - `record`: [`ConsumerRecord`].
//! - `state`: the assignment, positions, queue and budget, shared.
//! - `fetched` (pure): a partition's fetched bytes to records.
//! - `session` (pure): fetch sessions (KIP-227).
//! - `readahead` (pure): how far ahead of the reader a fetcher runs.
//! - `fetcher`: the per-broker fetch task.
//! - `coordinator`: the group coordinator; committed offsets.
//! - `engine`: the background task.

pub mod config;
pub(crate) mod coordinator;
pub(crate) mod engine;
pub(crate) mod fetched;
pub(crate) mod fetcher;
pub(crate) mod group;
pub(crate) mod readahead;
pub mod record;
pub(crate) mod session;
pub(crate) mod state;
pub(crate) mod truncation;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

pub use config::{AssignmentStrategy, ConsumerConfig, GroupProtocol, IsolationLevel, OffsetReset, TruncationReset};
pub use record::{ConsumerRecord, TimestampType};

pub use crate::producer::GroupMetadata;
pub use truncation::Resume;

use coordinator::{CommitOffset, GroupCoordinator};
use state::{Budget, Chunk, Item, Lookup, PartitionState, Shared, State};

use crate::TopicPartition;
use crate::client::Client;
use crate::error::{Error, Result};

/// What [`Consumer::next_event`] returns.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A record.
    Record(ConsumerRecord),
    /// The consumer reached the end of a partition (the high watermark);
    /// only with [`ConsumerConfig::partition_eof`]. Reported once per end.
    PartitionEof {
        /// The partition.
        partition: TopicPartition,
        /// The end offset reached.
        offset: i64,
    },
    /// Part of a partition cannot be read: a batch is corrupt (a CRC or
    /// framing error, a codec that fails) or larger than the fetch may
    /// take. Fetching the partition stopped at `offset` until the
    /// application seeks it: to `skip_to` to go on without the records
    /// in between (Java's "seek past the record"), or anywhere else.
    Unreadable {
        /// The partition.
        partition: TopicPartition,
        /// The first offset that could not be read (everything before it
        /// was returned).
        offset: i64,
        /// The offset after the unreadable batch, as far as its header
        /// says; at least `offset + 1`.
        skip_to: i64,
        /// What is wrong.
        error: Error,
    },
    /// Records this consumer returned are no longer in the partition's log
    /// (KIP-320: an unclean leader election, or records only the old
    /// leader had): found by validating the position after a leader
    /// change, or by a fetch the leader answered with a diverging epoch.
    /// Records the application never saw are fetched again silently; this
    /// event means it saw some that are gone. Where the consumer goes on
    /// is in `resume` ([`ConsumerConfig::truncation_reset`]).
    LogTruncated {
        /// The partition.
        partition: TopicPartition,
        /// What happened: the position and the divergence point.
        error: Error,
        /// Where reading goes on; [`Resume::Stopped`] until the application
        /// seeks.
        resume: Resume,
    },
    /// Something the application should know; fetching of the partition (if
    /// one is named) stopped until the application seeks it.
    Error {
        /// The partition concerned, if one.
        partition: Option<TopicPartition>,
        /// What happened.
        error: Error,
    },
    /// The group gave this consumer these partitions (in addition to those
    /// it has, with cooperative rebalancing). Each starts at the group's
    /// committed offset.
    Assigned(Vec<TopicPartition>),
    /// These partitions go to another member. Records of them not yet
    /// returned are dropped; the application finishes what it holds,
    /// stores offsets, then drops the [`Revocation`]: the consumer commits
    /// (with auto-commit) and gives the partitions up. The rebalance waits
    /// for it, up to `max.poll.interval.ms`.
    Revoked(Revocation),
    /// These partitions were lost (the group moved on without this member:
    /// session timeout, fencing, `max.poll.interval.ms`): they may already
    /// be someone else's, so nothing of them is committed.
    Lost(Vec<TopicPartition>),
}

/// Partitions being revoked; dropping it lets the rebalance go on.
#[derive(Debug)]
pub struct Revocation {
    partitions: Vec<TopicPartition>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Revocation {
    pub(crate) fn new(partitions: Vec<TopicPartition>, done: tokio::sync::oneshot::Sender<()>) -> Self {
        Revocation { partitions, done: Some(done) }
    }

    /// The partitions revoked.
    pub fn partitions(&self) -> &[TopicPartition] {
        &self.partitions
    }
}

impl Drop for Revocation {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

/// A Kafka consumer.
///
/// One reader: [`Consumer::recv`] and friends take `&mut self`. Everything
/// else (storing offsets, committing, seeking, pausing) is also on
/// [`ConsumerHandle`], which can be cloned into other tasks.
#[derive(Debug)]
pub struct Consumer {
    handle: ConsumerHandle,
    /// The chunk being read.
    current: Option<Chunk>,
}

/// The shareable side of a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerHandle {
    shared: Arc<Shared>,
    coordinator: Option<Arc<GroupCoordinator>>,
}

impl Consumer {
    /// Creates a consumer (and its own client). Must be called inside a
    /// tokio runtime.
    pub fn new(config: ConsumerConfig) -> Result<Consumer> {
        config.validate()?;
        let client = Client::new(config.client.clone())?;
        let coordinator =
            config.group_id.as_ref().map(|group| Arc::new(GroupCoordinator::new(client.clone(), group.clone())));
        let shared = Arc::new(Shared {
            budget: Arc::new(Budget::new(config.queued_max_bytes)),
            config,
            client,
            state: Mutex::new(State::default()),
            queue: Mutex::new(VecDeque::new()),
            queued: Notify::new(),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
            polls: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            group: Mutex::new(None),
            rebalancing: tokio::sync::watch::Sender::new(false),
            refused: Mutex::new(Vec::new()),
            refused_notify: Notify::new(),
        });
        tokio::spawn(engine::run(shared.clone(), coordinator.clone()));
        Ok(Consumer { handle: ConsumerHandle { shared, coordinator }, current: None })
    }

    /// The shareable handle.
    pub fn handle(&self) -> ConsumerHandle {
        self.handle.clone()
    }

    /// [`ConsumerHandle::group_metadata`].
    pub fn group_metadata(&self) -> Option<GroupMetadata> {
        self.handle.group_metadata()
    }

    /// Joins the consumer's group (`group.id`) and consumes the partitions
    /// the group assigns it of these topics. Calling it again changes the
    /// subscription (and rebalances). Topics that do not exist yet are
    /// picked up when they appear.
    pub fn subscribe(&self, topics: &[&str]) -> Result<()> {
        let Some(coordinator) = self.handle.coordinator.clone() else {
            return Err(Error::Config(crate::config::ConfigError::Invalid("subscribing needs a `group.id`".into())));
        };
        let shared = &self.handle.shared;
        let mut topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        topics.sort();
        topics.dedup();
        let mut group = shared.group.lock().unwrap_or_else(|p| p.into_inner());
        match group.as_ref() {
            Some(control) => {
                control.topics.send_if_modified(|current| {
                    let changed = *current != topics;
                    *current = topics;
                    changed
                });
            }
            None => {
                if !shared.lock().partitions.is_empty() {
                    return Err(Error::Config(crate::config::ConfigError::Invalid(
                        "subscribe after assign: a consumer either assigns or subscribes".into(),
                    )));
                }
                let (topics_tx, topics_rx) = tokio::sync::watch::channel(topics);
                let (closing_tx, closing_rx) = tokio::sync::watch::channel(false);
                let (done_tx, done_rx) = tokio::sync::watch::channel(false);
                tokio::spawn(group::driver::run(shared.clone(), coordinator, topics_rx, closing_rx, done_tx));
                *group = Some(state::GroupControl { topics: topics_tx, closing: closing_tx, done: done_rx });
            }
        }
        Ok(())
    }

    /// Consumes exactly these partitions (replacing any earlier
    /// assignment). Each starts at the group's committed offset when the
    /// consumer has a group and one exists, else by `auto.offset.reset`.
    pub fn assign(&self, partitions: &[TopicPartition]) {
        self.handle.set_assignment(partitions);
    }

    /// The next record. Events other than records are handled: EOF is
    /// skipped; an error is returned.
    pub async fn recv(&mut self) -> Result<ConsumerRecord> {
        loop {
            match self.next_event().await? {
                Event::Record(record) => return Ok(record),
                Event::Error { error, .. }
                | Event::Unreadable { error, .. }
                | Event::LogTruncated { error, resume: Resume::Stopped, .. } => return Err(error),
                Event::LogTruncated { partition, error, resume } => {
                    tracing::warn!(target: "rill::fetch", %partition, %error, ?resume, "log truncated; reading on");
                }
                // Dropping a revocation lets the rebalance go on.
                Event::PartitionEof { .. } | Event::Assigned(_) | Event::Revoked(_) | Event::Lost(_) => {}
            }
        }
    }

    /// Up to `max` records of one partition at once (at least one; waits
    /// for the first). Cheaper per record than [`Self::recv`].
    pub async fn recv_batch(&mut self, max: usize) -> Result<Vec<ConsumerRecord>> {
        let first = self.recv().await?;
        let mut out = Vec::with_capacity(max.min(1024));
        out.push(first);
        if let Some(chunk) = self.current.as_mut().filter(|c| c.is_current()) {
            let take = (max.saturating_sub(1)).min(chunk.records.len());
            out.extend(chunk.records.drain(..take));
            if let Some(last) = out.last() {
                chunk.returned(last.offset + 1, last.leader_epoch);
            }
        }
        Ok(out)
    }

    /// The next record of the batch being read, if one is there now: no
    /// waiting and no events (those come from [`Self::next_event`]). For a
    /// loop that takes what was fetched in bursts.
    pub fn try_next_record(&mut self) -> Option<ConsumerRecord> {
        let chunk = self.current.as_mut().filter(|c| c.is_current())?;
        let record = chunk.records.pop_front()?;
        chunk.returned(record.offset + 1, record.leader_epoch);
        self.handle.shared.polls.fetch_add(1, Ordering::Relaxed);
        Some(record)
    }

    /// The next record or event.
    pub async fn next_event(&mut self) -> Result<Event> {
        self.handle.shared.polls.fetch_add(1, Ordering::Relaxed);
        loop {
            if let Some(chunk) = &mut self.current {
                if chunk.is_current()
                    && let Some(record) = chunk.records.pop_front()
                {
                    chunk.returned(record.offset + 1, record.leader_epoch);
                    return Ok(Event::Record(record));
                }
                self.current = None;
            }
            let shared = &self.handle.shared;
            let queued = shared.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            let item = shared.queue().pop_front();
            match item {
                Some(Item::Records(chunk)) => {
                    if chunk.is_current() {
                        self.current = Some(chunk);
                    }
                }
                Some(Item::Event(event)) => return Ok(event),
                None => {
                    if shared.closed.load(Ordering::Acquire) {
                        return Err(Error::Closed);
                    }
                    let _polling = Polling::start(shared);
                    queued.await;
                }
            }
        }
    }

    /// The offset of the next record `recv` returns for a partition.
    pub fn position(&self, partition: &TopicPartition) -> Option<i64> {
        if let Some(chunk) = self.current.as_ref().filter(|c| c.partition == *partition && c.is_current())
            && let Some(next) = chunk.records.front()
        {
            return Some(next.offset);
        }
        let auto_store = self.handle.shared.config.auto_offset_store;
        let mut state = self.handle.shared.lock();
        let ps = state.partitions.get_mut(partition)?;
        ps.sync(auto_store);
        ps.position
    }

    /// Commits the stored offsets and waits for the answer.
    pub async fn commit(&mut self) -> Result<()> {
        self.handle.commit().await
    }

    /// Stops consuming: commits stored offsets (with auto-commit on) and
    /// returns within `timeout`, whether or not brokers answer. A member the
    /// group already dropped cannot commit: that is logged, not returned
    /// (its partitions' next owner re-reads from the last commit).
    pub async fn close(self, timeout: Duration) -> Result<()> {
        self.handle.close(timeout).await
    }
}

impl ConsumerHandle {
    fn set_assignment(&self, partitions: &[TopicPartition]) {
        let lookup = Lookup::Committed;
        let mut state = self.shared.lock();
        let removed: Vec<TopicPartition> =
            state.partitions.keys().filter(|tp| !partitions.contains(tp)).cloned().collect();
        for tp in &removed {
            if let Some(ps) = state.partitions.remove(tp) {
                ps.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
        for tp in partitions {
            state
                .partitions
                .entry(tp.clone())
                .or_insert_with(|| PartitionState::new(Arc::from(tp.topic.as_str()), lookup));
        }
        drop(state);
        self.shared.purge(&removed);
        self.shared.changed.notify_waiters();
    }

    /// The end of a partition (its high watermark) as last fetched.
    pub fn high_watermark(&self, partition: &TopicPartition) -> Option<i64> {
        self.shared.lock().partitions.get(partition).map(|ps| ps.high_watermark).filter(|&hw| hw >= 0)
    }

    /// Where this consumer stops reading a partition, as last fetched: the
    /// high watermark, or with `isolation.level=read_committed` the last
    /// stable offset (records of open transactions are not readable yet).
    /// Lag is counted against it.
    pub fn readable_end(&self, partition: &TopicPartition) -> Option<i64> {
        self.shared.lock().partitions.get(partition).map(|ps| ps.readable_end).filter(|&end| end >= 0)
    }

    /// The consumer's settings.
    pub fn config(&self) -> &ConsumerConfig {
        &self.shared.config
    }

    /// The partitions consumed.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.shared.lock().partitions.keys().cloned().collect()
    }

    /// Stores the offset after `record` for the next commit. Use with
    /// `enable.auto.offset.store=false` once a record is fully processed.
    pub fn store_offset(&self, record: &ConsumerRecord) -> Result<()> {
        let mut state = self.shared.lock();
        let ps = state.assigned_mut(&record.topic_partition())?;
        ps.sync(self.shared.config.auto_offset_store);
        ps.try_store(&record.topic_partition(), record.offset + 1, record.leader_epoch)
    }

    /// Stores offsets (the next offset to consume) for the next commit,
    /// in order; the first that fails stops the call. A partition not
    /// assigned is an error, and so is an offset below what this
    /// assignment of the partition already stored or started from
    /// ([`Error::OffsetBehind`]): within an assignment the stored offset
    /// never goes back, unless the consumer moved the position back (a
    /// seek, a truncation, an offset reset). That keeps a late store (of
    /// a partition lost and assigned again meanwhile) from moving the
    /// next commit below what the group already committed.
    pub fn store_offsets(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let mut state = self.shared.lock();
        for (tp, offset) in offsets {
            let ps = state.assigned_mut(tp)?;
            ps.sync(self.shared.config.auto_offset_store);
            ps.try_store(tp, *offset, None)?;
        }
        Ok(())
    }

    /// Commits the stored offsets and waits.
    pub async fn commit(&self) -> Result<()> {
        let coordinator = self.group_coordinator()?;
        engine::commit_stored(&self.shared, coordinator, None).await
    }

    /// Commits the stored offsets without waiting; failures are logged.
    pub fn commit_async(&self) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.commit().await {
                tracing::warn!(target: "rill::cgrp", %error, "asynchronous commit failed");
            }
        });
    }

    /// The consumer's group as a transactional producer sends it with the
    /// offsets it commits in a transaction
    /// ([`crate::producer::Producer::send_offsets_to_transaction`], KIP-447):
    /// the group id, the generation (the member epoch with
    /// `group.protocol=consumer`), the member id and the instance id, as of
    /// now. A member of an older generation is then fenced by the group
    /// coordinator. `None` without a `group.id`.
    pub fn group_metadata(&self) -> Option<GroupMetadata> {
        let group_id = self.shared.config.group_id.clone()?;
        let committer = self.shared.lock().committer.clone();
        Some(GroupMetadata {
            group_id,
            generation_id: committer.generation,
            member_id: committer.member_id,
            group_instance_id: committer.instance_id,
        })
    }

    /// Commits these offsets (the next offset to consume per partition).
    pub async fn commit_offsets(&self, offsets: &[(TopicPartition, i64)]) -> Result<()> {
        let coordinator = self.group_coordinator()?;
        let map: BTreeMap<TopicPartition, CommitOffset> = offsets
            .iter()
            .map(|(tp, offset)| (tp.clone(), CommitOffset { offset: *offset, leader_epoch: None }))
            .collect();
        let committer = self.shared.lock().committer.clone();
        coordinator.commit(&map, &committer, self.shared.config.client.request_timeout).await?;
        let mut state = self.shared.lock();
        for (tp, offset) in offsets {
            if let Some(ps) = state.partitions.get_mut(tp) {
                ps.committed = Some(*offset);
            }
        }
        Ok(())
    }

    /// The group's committed offsets for these partitions.
    pub async fn committed(&self, partitions: &[TopicPartition]) -> Result<BTreeMap<TopicPartition, Option<i64>>> {
        let coordinator = self.group_coordinator()?;
        let found = coordinator.fetch_offsets(partitions, self.shared.config.client.request_timeout).await?;
        Ok(found.into_iter().map(|(tp, c)| (tp, c.map(|c| c.offset))).collect())
    }

    fn group_coordinator(&self) -> Result<&GroupCoordinator> {
        self.coordinator.as_deref().ok_or_else(|| {
            Error::Config(crate::config::ConfigError::Invalid("committing offsets needs a `group.id`".into()))
        })
    }

    /// Continues a partition from `offset`; records already fetched are
    /// dropped.
    pub fn seek(&self, partition: &TopicPartition, offset: i64) -> Result<()> {
        self.seek_with_epoch(partition, offset, None)
    }

    /// Continues a partition from `offset`, known to follow a record of
    /// leader epoch `leader_epoch` (as a committed offset or a record's
    /// [`ConsumerRecord::leader_epoch`] says): before fetching, the
    /// position is validated against the leader's log (KIP-320), and a log
    /// truncated below it is reported as [`Event::LogTruncated`].
    pub fn seek_with_epoch(&self, partition: &TopicPartition, offset: i64, leader_epoch: Option<i32>) -> Result<()> {
        let mut state = self.shared.lock();
        let ps = state.assigned_mut(partition)?;
        ps.sync(self.shared.config.auto_offset_store);
        ps.restart(Some(offset), leader_epoch, Lookup::Done);
        ps.moved_to(offset);
        // A position from elsewhere: validated before it is fetched from
        // (`restart` keeps the epoch the old position was validated for).
        ps.validated_for = -1;
        drop(state);
        self.shared.purge(std::slice::from_ref(partition));
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Stops fetching these partitions; records already fetched for them
    /// are dropped and fetched again after [`Self::resume`].
    pub fn pause(&self, partitions: &[TopicPartition]) {
        let mut state = self.shared.lock();
        for tp in partitions {
            if let Some(ps) = state.partitions.get_mut(tp)
                && !ps.paused
            {
                ps.sync(self.shared.config.auto_offset_store);
                ps.paused = true;
                let (position, leader_epoch) = match ps.position {
                    Some(position) => (Some(position), ps.position_epoch),
                    None => (ps.fetch_offset, ps.fetch_epoch),
                };
                let lookup = ps.lookup;
                ps.restart(position, leader_epoch, lookup);
            }
        }
        drop(state);
        self.shared.purge(partitions);
    }

    /// Fetches paused partitions again.
    pub fn resume(&self, partitions: &[TopicPartition]) {
        let mut state = self.shared.lock();
        for tp in partitions {
            if let Some(ps) = state.partitions.get_mut(tp) {
                ps.paused = false;
            }
        }
        drop(state);
        self.shared.changed.notify_waiters();
    }

    /// The paused partitions.
    pub fn paused(&self) -> Vec<TopicPartition> {
        self.shared.lock().partitions.iter().filter(|(_, ps)| ps.paused).map(|(tp, _)| tp.clone()).collect()
    }

    /// Stops the consumer: commits stored offsets (with auto-commit on),
    /// within `timeout`.
    pub async fn close(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        // Closing counts as polling: the group must not give up on us now.
        let _polling = Polling::start(&self.shared);
        let in_group = self.shared.group.lock().unwrap_or_else(|p| p.into_inner()).is_some();
        let commit = async {
            let (Some(coordinator), true) = (&self.coordinator, self.shared.config.auto_commit) else {
                return Ok(());
            };
            loop {
                // Nothing queued will be read any more; dropping a pending
                // revocation lets a rebalance under way finish.
                self.shared.queue().clear();
                let committer = self.shared.lock().committer.clone();
                let error = match engine::commit_stored(&self.shared, coordinator, None).await {
                    Err(error) if in_group && error.code().is_some_and(rebalancing) => error,
                    Err(error) if in_group && error.code().is_some_and(out_of_group) => {
                        gave_up_commit(&error);
                        return Ok(());
                    }
                    other => return other,
                };
                // The group is rebalancing: commit in the generation that
                // follows, unless the member drops out of the group.
                tracing::debug!(target: "rill::cgrp", %error, "rebalance under way; committing after it");
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    // A revocation queued meanwhile must not hold the
                    // rebalance up either.
                    self.shared.queue().clear();
                    let now = self.shared.lock().committer.clone();
                    if now.generation < 0 {
                        gave_up_commit(&error);
                        return Ok(());
                    }
                    if now != committer {
                        break;
                    }
                }
            }
        };
        let result = tokio::time::timeout_at(deadline, commit)
            .await
            .unwrap_or_else(|_| Err(Error::Timeout { operation: "committing on close".into(), after: timeout }));
        // A group member then gives its partitions up and leaves.
        let done = {
            let group = self.shared.group.lock().unwrap_or_else(|p| p.into_inner());
            group.as_ref().map(|control| {
                let _ = control.closing.send(true);
                control.done.clone()
            })
        };
        if let Some(mut done) = done
            && tokio::time::timeout_at(deadline, done.wait_for(|d| *d)).await.is_err()
        {
            tracing::warn!(target: "rill::cgrp", "leaving the group did not finish within the close timeout");
        }
        self.shared.closed.store(true, Ordering::Release);
        self.shared.changed.notify_waiters();
        self.shared.queued.notify_one();
        result
    }
}

/// Commit errors that mean "the group is between generations".
fn rebalancing(code: kafka_protocol::ResponseError) -> bool {
    use kafka_protocol::ResponseError as E;
    // STALE_MEMBER_EPOCH: a KIP-848 member's epoch moved; its next
    // heartbeat brings the new one.
    matches!(code, E::RebalanceInProgress | E::IllegalGeneration | E::StaleMemberEpoch)
}

/// Commit errors that mean "the group no longer knows this member".
fn out_of_group(code: kafka_protocol::ResponseError) -> bool {
    use kafka_protocol::ResponseError as E;
    matches!(code, E::UnknownMemberId | E::FencedInstanceId | E::FencedMemberEpoch)
}

/// Closing a member the group dropped: its offsets cannot be committed any
/// more, and that is no error of the close (as in the Java client). The
/// partitions' next owner reads from the last commit: records again, never
/// records lost.
fn gave_up_commit(error: &Error) {
    tracing::warn!(target: "rill::cgrp", %error,
        "the group dropped this member before its last commit; the next owner re-reads from the previous one");
}

/// Marks the application as waiting in the consumer (so polling) while
/// alive.
struct Polling<'a>(&'a Shared);

impl<'a> Polling<'a> {
    fn start(shared: &'a Shared) -> Self {
        shared.polling.store(true, Ordering::Release);
        Polling(shared)
    }
}

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.polls.fetch_add(1, Ordering::Relaxed);
        self.0.polling.store(false, Ordering::Release);
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // The tasks stop; nothing is committed (use close for that).
        self.handle.shared.closed.store(true, Ordering::Release);
        self.handle.shared.changed.notify_waiters();
    }
}
