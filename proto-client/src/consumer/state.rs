//! The consumer's shared state: the assignment with each partition's
//! positions, the queue the application reads from, and the prefetch budget.
//!
//! Fetched records travel as chunks (one partition's records from one
//! fetch). A chunk remembers its partition's epoch when it was fetched;
//! anything that makes buffered data wrong for the application (seek,
//! revoke, pause, reset) bumps the epoch, and stale chunks are dropped
//! wherever they are: in the queue, or half-read by `recv`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::Event;
use super::config::{ConsumerConfig, OffsetReset};
use super::coordinator::Committer;
use super::record::ConsumerRecord;
use super::truncation::{self, Resume};
use crate::TopicPartition;
use crate::client::Client;
use crate::error::Error;

/// Budget for fetched-but-unread data, in bytes, over all partitions.
#[derive(Debug)]
pub(crate) struct Budget {
    /// Bytes buffered and reserved by fetches in flight.
    used: AtomicUsize,
    /// Of `used`, what fetches in flight reserved.
    in_flight: AtomicUsize,
    limit: usize,
    /// Bytes of chunks dropped so far: what the reader has taken.
    taken: AtomicU64,
    pub(crate) freed: Notify,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            used: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            limit,
            taken: AtomicU64::new(0),
            freed: Notify::new(),
        }
    }

    /// Bytes fetched and not yet read (fetches in flight not counted: a
    /// long poll's reservation says nothing of how far ahead the reader is).
    pub(crate) fn buffered(&self) -> usize {
        self.used().saturating_sub(self.in_flight.load(Ordering::Acquire))
    }

    /// The bound on what may be buffered.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes of chunks dropped so far (read, or dropped as stale).
    pub(crate) fn taken(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }

    /// Reserves up to `want` bytes; returns what was granted (0 when full).
    pub(crate) fn reserve(&self, want: usize) -> usize {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            let grant = want.min(self.limit.saturating_sub(used));
            if grant == 0 {
                return 0;
            }
            match self.used.compare_exchange(used, used + grant, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.in_flight.fetch_add(grant, Ordering::AcqRel);
                    return grant;
                }
                Err(now) => used = now,
            }
        }
    }

    /// Turns a grant into what the data really took (decompressed data can
    /// take more than the fetch asked for; the overshoot is bounded by one
    /// fetch per broker).
    pub(crate) fn settle(&self, granted: usize, actual: usize) {
        self.in_flight.fetch_sub(granted, Ordering::AcqRel);
        if actual >= granted {
            self.used.fetch_add(actual - granted, Ordering::AcqRel);
        } else {
            self.release(granted - actual);
        }
    }

    /// Gives back a grant whose fetch failed.
    pub(crate) fn cancel(&self, granted: usize) {
        self.in_flight.fetch_sub(granted, Ordering::AcqRel);
        self.release(granted);
    }

    pub(crate) fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }

    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// One partition's records from one fetch, waiting for the application.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) partition: TopicPartition,
    /// The partition's epoch when fetched, and the live one.
    pub(crate) fetched_epoch: u64,
    pub(crate) epoch: Arc<AtomicU64>,
    pub(crate) records: VecDeque<ConsumerRecord>,
    /// Budget bytes this chunk holds until dropped.
    pub(crate) bytes: usize,
    pub(crate) budget: Arc<Budget>,
    /// The partition's progress for this epoch: the offset after the last
    /// record handed to the application.
    pub(crate) progress: Arc<Progress>,
}

impl Chunk {
    /// Whether the chunk still belongs to the partition's current position.
    pub(crate) fn is_current(&self) -> bool {
        self.epoch.load(Ordering::Acquire) == self.fetched_epoch
    }

    /// Notes that the application was handed everything before `next`;
    /// the record before it was written in `leader_epoch`.
    pub(crate) fn returned(&self, next: i64, leader_epoch: Option<i32>) {
        self.progress.store(next, leader_epoch);
    }
}

/// How far the application read a partition within one epoch of its
/// position: the offset after the last record returned, and that record's
/// leader epoch. Written by the reader without the lock, read under it.
#[derive(Debug)]
pub(crate) struct Progress {
    next: AtomicI64,
    leader_epoch: AtomicI32,
}

impl Progress {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Progress { next: AtomicI64::new(-1), leader_epoch: AtomicI32::new(-1) })
    }

    fn store(&self, next: i64, leader_epoch: Option<i32>) {
        // The epoch first: a load that sees `next` sees this epoch or a
        // later one. A later epoch than the record's only makes a
        // validation more lenient, never a false truncation.
        self.leader_epoch.store(leader_epoch.unwrap_or(-1), Ordering::Relaxed);
        self.next.store(next, Ordering::Release);
    }

    /// The offset after the last record returned (-1: none yet) and its
    /// leader epoch.
    fn load(&self) -> (i64, Option<i32>) {
        let next = self.next.load(Ordering::Acquire);
        let epoch = self.leader_epoch.load(Ordering::Relaxed);
        (next, (epoch >= 0).then_some(epoch))
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.budget.taken.fetch_add(self.bytes as u64, Ordering::AcqRel);
        self.budget.release(self.bytes);
    }
}

/// What the application reads, in order.
#[derive(Debug)]
pub(crate) enum Item {
    Records(Chunk),
    Event(Event),
}

/// How a partition's position is being found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Known (`fetch_offset` is set).
    Done,
    /// The group's committed offset, then `auto.offset.reset`.
    Committed,
    /// ListOffsets by the reset strategy.
    Reset(OffsetReset),
}

/// One assigned partition.
#[derive(Debug)]
pub(crate) struct PartitionState {
    pub(crate) topic: Arc<str>,
    pub(crate) epoch: Arc<AtomicU64>,
    /// Where the reader is within this epoch's chunks; a new epoch gets
    /// a new one, so a stale chunk cannot move it.
    pub(crate) progress: Arc<Progress>,
    /// Next offset to fetch; `None` until the position is known.
    pub(crate) fetch_offset: Option<i64>,
    /// The leader epoch of the record before `fetch_offset`, when known:
    /// the `last_fetched_epoch` of the next fetch, and what a validation
    /// asks about.
    pub(crate) fetch_epoch: Option<i32>,
    /// Next offset the application gets, as of the last [`Self::sync`].
    pub(crate) position: Option<i64>,
    /// The leader epoch of the record before `position`, when known.
    pub(crate) position_epoch: Option<i32>,
    /// The partition leader epoch the fetch position is known good for
    /// (-1: none); a higher one in the metadata calls for a validation
    /// (KIP-320).
    pub(crate) validated_for: i32,
    /// An OffsetForLeaderEpoch validation is running.
    pub(crate) validating: bool,
    pub(crate) lookup: Lookup,
    /// A lookup is running.
    pub(crate) resolving: bool,
    pub(crate) paused: bool,
    /// A fetch for it is in flight.
    pub(crate) in_flight: bool,
    /// Offset (next to consume) stored for the next commit, and the
    /// leader epoch of the record before it when known.
    pub(crate) stored: Option<i64>,
    pub(crate) stored_epoch: Option<i32>,
    /// The lowest offset that may be stored in this assignment: where it
    /// started, raised by every store, lowered only when the consumer
    /// moves the position back (seek, truncation, reset).
    pub(crate) store_floor: Option<i64>,
    /// Last committed offset, as far as this consumer knows.
    pub(crate) committed: Option<i64>,
    pub(crate) high_watermark: i64,
    /// Where a reader of the consumer's isolation level stops: the high
    /// watermark, or under read_committed the last stable offset.
    pub(crate) readable_end: i64,
    /// EOF was reported at this offset.
    pub(crate) eof_at: Option<i64>,
    /// Fetching stopped on an error until the application seeks.
    pub(crate) failed: bool,
    /// Being revoked: no fetching, no lookups, until it is removed.
    pub(crate) revoking: bool,
}

impl PartitionState {
    pub(crate) fn new(topic: Arc<str>, lookup: Lookup) -> Self {
        PartitionState {
            topic,
            epoch: Arc::new(AtomicU64::new(0)),
            progress: Progress::new(),
            fetch_offset: None,
            fetch_epoch: None,
            position: None,
            position_epoch: None,
            validated_for: -1,
            validating: false,
            lookup,
            resolving: false,
            paused: false,
            in_flight: false,
            stored: None,
            stored_epoch: None,
            store_floor: None,
            committed: None,
            high_watermark: -1,
            readable_end: -1,
            eof_at: None,
            failed: false,
            revoking: false,
        }
    }

    /// Makes buffered data stale and starts over from `offset` (or a new
    /// lookup when `None`), which follows a record of `leader_epoch`. The
    /// leader epoch it was validated for stays: the caller knows whether
    /// the new position still needs a validation.
    pub(crate) fn restart(&mut self, offset: Option<i64>, leader_epoch: Option<i32>, lookup: Lookup) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.progress = Progress::new();
        self.fetch_offset = offset;
        self.position = offset;
        let leader_epoch = leader_epoch.filter(|_| offset.is_some());
        self.fetch_epoch = leader_epoch;
        self.position_epoch = leader_epoch;
        self.lookup = if offset.is_some() { Lookup::Done } else { lookup };
        self.eof_at = None;
        self.failed = false;
    }

    /// Takes in what the reader returned since: the position, and with
    /// automatic offset storing the stored offset.
    pub(crate) fn sync(&mut self, auto_store: bool) {
        let (next, leader_epoch) = self.progress.load();
        if next < 0 || self.position == Some(next) {
            return;
        }
        self.position = Some(next);
        self.position_epoch = leader_epoch.or(self.position_epoch);
        if auto_store {
            self.store(next, self.position_epoch);
        }
    }

    /// Stores `offset` for the next commit, with the leader epoch of the
    /// record before it: as given, else the position's when `offset` is
    /// the position. An offset below the floor is refused: it would move
    /// the next commit back.
    pub(crate) fn try_store(
        &mut self,
        tp: &TopicPartition,
        offset: i64,
        leader_epoch: Option<i32>,
    ) -> Result<(), Error> {
        if let Some(floor) = self.store_floor
            && offset < floor
        {
            return Err(Error::OffsetBehind { partition: tp.clone(), offset, floor });
        }
        self.store(offset, leader_epoch);
        Ok(())
    }

    /// The position was moved to `offset` on purpose (the assignment's
    /// start, a seek, a truncation, a reset): offsets from there on may be
    /// stored. The floor only goes down: a seek forward leaves the records
    /// before it storable.
    pub(crate) fn moved_to(&mut self, offset: i64) {
        self.store_floor = Some(self.store_floor.map_or(offset, |floor| floor.min(offset)));
    }

    fn store(&mut self, offset: i64, leader_epoch: Option<i32>) {
        self.store_floor = Some(self.store_floor.map_or(offset, |floor| floor.max(offset)));
        self.stored = Some(offset);
        self.stored_epoch = leader_epoch.or(self.position_epoch.filter(|_| self.position == Some(offset)));
    }

    /// Acts on what the leader (at `leader_epoch`) said of the fetch
    /// position's epoch (`truncation`): goes on, refetches what the
    /// application has not seen, or moves the position and returns the
    /// event that tells the application it saw records that are gone.
    pub(crate) fn judged(
        &mut self,
        tp: &TopicPartition,
        verdict: truncation::Verdict,
        leader_epoch: i32,
        config: &ConsumerConfig,
    ) -> Option<Event> {
        self.sync(config.auto_offset_store);
        let fetch_offset = self.fetch_offset?;
        let consumed =
            truncation::Consumed { offset: self.position.unwrap_or(fetch_offset), leader_epoch: self.position_epoch };
        let Some(resolution) = truncation::resolve(verdict, consumed, config.offset_reset, config.truncation_reset)
        else {
            if let truncation::Verdict::Valid { leader_epoch: fetched } = verdict {
                self.fetch_epoch = Some(fetched);
            }
            self.validated_for = self.validated_for.max(leader_epoch);
            return None;
        };
        match resolution.resume {
            Resume::At(offset) => {
                self.restart(Some(offset), resolution.leader_epoch, Lookup::Done);
                self.moved_to(offset);
                self.validated_for = leader_epoch;
                // Offsets past the divergence now hold other records: a
                // commit of one would skip them.
                if self.stored.is_some_and(|stored| stored > offset) {
                    self.store(offset, resolution.leader_epoch);
                }
            }
            Resume::Reset(reset) => self.restart(None, None, Lookup::Reset(reset)),
            Resume::Stopped => {
                self.restart(Some(consumed.offset), consumed.leader_epoch, Lookup::Done);
                self.validated_for = leader_epoch;
                self.failed = true;
            }
        }
        let divergence = resolution.report?;
        Some(Event::LogTruncated {
            partition: tp.clone(),
            error: Error::LogTruncated { partition: tp.clone(), offset: consumed.offset, divergence },
            resume: resolution.resume,
        })
    }

    /// Whether a fetch may include it now, led at `leader_epoch`.
    pub(crate) fn fetchable(&self, leader_epoch: i32) -> bool {
        self.fetch_offset.is_some()
            && !self.paused
            && !self.in_flight
            && !self.failed
            && !self.revoking
            && !self.validating
            && !truncation::needs_validation(self.fetch_epoch, self.validated_for, leader_epoch)
    }
}

/// Everything behind the consumer's lock.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) partitions: BTreeMap<TopicPartition, PartitionState>,
    /// Brokers with a fetch task running.
    pub(crate) fetchers: Vec<i32>,
    /// Who commits: the group generation and member, or nobody in
    /// particular for a consumer that assigns its own partitions.
    pub(crate) committer: Committer,
}

impl State {
    /// An assigned partition, or an error naming it.
    pub(crate) fn assigned_mut(&mut self, tp: &TopicPartition) -> Result<&mut PartitionState, Error> {
        self.partitions.get_mut(tp).ok_or_else(|| Error::UnknownTopicOrPartition(format!("{tp} is not assigned")))
    }
}

impl Default for State {
    fn default() -> Self {
        State { partitions: BTreeMap::new(), fetchers: Vec::new(), committer: Committer::standalone() }
    }
}

/// State shared by the consumer, its engine task and its fetch tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ConsumerConfig,
    pub(crate) client: Client,
    pub(crate) state: Mutex<State>,
    pub(crate) queue: Mutex<VecDeque<Item>>,
    /// Items were queued.
    pub(crate) queued: Notify,
    /// The assignment or positions changed: fetchers and the engine look again.
    pub(crate) changed: Notify,
    pub(crate) budget: Arc<Budget>,
    pub(crate) closed: AtomicBool,
    /// Calls into the consumer's read side, and whether one is waiting now:
    /// how the group driver knows the application still polls.
    pub(crate) polls: AtomicU64,
    pub(crate) polling: AtomicBool,
    /// The group driver, once subscribed.
    pub(crate) group: Mutex<Option<GroupControl>>,
    /// A JoinGroup or SyncGroup is under way. The coordinator may hold it
    /// for a long time, and answers nothing else on that connection until
    /// it answers it: commits wait (auto-commit skips its turn) instead of
    /// timing out behind it, which would close the connection and abort
    /// the join.
    pub(crate) rebalancing: tokio::sync::watch::Sender<bool>,
    /// Commits the coordinator refused because of this member's standing
    /// (code, generation), for the group driver to act on at once.
    pub(crate) refused: Mutex<Vec<(kafka_protocol::ResponseError, i32)>>,
    pub(crate) refused_notify: Notify,
}

/// The consumer's side of a running group driver.
#[derive(Debug)]
pub(crate) struct GroupControl {
    /// The subscribed topics.
    pub(crate) topics: tokio::sync::watch::Sender<Vec<String>>,
    /// Set to close: the driver releases the partitions and leaves.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
    /// Set by the driver when it stopped.
    pub(crate) done: tokio::sync::watch::Receiver<bool>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Short critical sections on plain data; a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn queue(&self) -> MutexGuard<'_, VecDeque<Item>> {
        lock(&self.queue)
    }

    /// Queues an event for the application.
    pub(crate) fn push_event(&self, event: Event) {
        self.queue().push_back(Item::Event(event));
        self.queued.notify_one();
    }

    /// Stops these partitions: buffered records are dropped (what the
    /// application was handed stays stored) and nothing more is fetched
    /// or looked up for them.
    pub(crate) fn stop_partitions(&self, partitions: &[TopicPartition]) {
        let auto_store = self.config.auto_offset_store;
        let mut state = self.lock();
        for tp in partitions {
            if let Some(ps) = state.partitions.get_mut(tp) {
                ps.sync(auto_store);
                ps.revoking = true;
                ps.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
        drop(state);
        self.purge(partitions);
    }

    /// Drops queued chunks and end-of-partition events of these partitions
    /// (they were revoked, sought or paused; their epochs are already
    /// bumped).
    pub(crate) fn purge(&self, partitions: &[TopicPartition]) {
        self.queue().retain(|item| match item {
            Item::Records(chunk) => !partitions.contains(&chunk.partition),
            // An end reached from the old position says nothing now.
            Item::Event(Event::PartitionEof { partition, .. }) => !partitions.contains(partition),
            Item::Event(_) => true,
        });
    }
}
