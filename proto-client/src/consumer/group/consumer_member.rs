//! A member of a KIP-848 group (`group.protocol=consumer`), as a state
//! machine: pure, no I/O, no clock of its own, like the classic
//! [`Member`](super::member::Member).
//!
//! ```text
//!  Joining ──heartbeat: epoch 0, everything──▶ Stable (epoch n) ──heartbeat──┐
//!     ▲                                          │   ▲  (interval from the   │
//!     │                                          │   │   coordinator)  ◀─────┘
//!     │                              new target ─▼   │ ack: the owned set, at once
//!     │                               reconcile: revoke (commit), then assign
//!     └── UNKNOWN_MEMBER_ID / FENCED_MEMBER_EPOCH: partitions lost, epoch 0
//!  Stable ── no poll within max.poll.interval ──▶ Stale (leave: -1, or -2 when
//!            static; partitions lost) ── polled ──▶ Joining
//!  any ── close ──▶ Closing (release owned, leave: -1, or -2 when static) ──▶ Done
//!  any ── authorization, fenced instance, unsupported, invalid ──▶ Failed
//! ```
//!
//! The coordinator assigns. Each heartbeat answer may carry the member's
//! assignment (by topic id; absent means unchanged) and its epoch, which
//! the member adopts at once: commits carry it (OffsetCommit v9). A
//! partition that moves is first dropped from its owner's assignment; the
//! owner revokes it and says so by sending the partitions it still owns,
//! and only then does the coordinator give it to the next member, so no
//! partition has two owners. Heartbeats carry only what changed since the
//! last one the coordinator answered; after any failure the next carries
//! everything.
//!
//! The driver asks [`ConsumerMember::next`] what to do and reports each
//! answer ([`ConsumerMember::heartbeat_done`], [`ConsumerMember::revoked`]).
//! It keeps the member's topic-id table current
//! ([`ConsumerMember::learn_topics`]); assigned topics it cannot name yet
//! wait, and the member asks for metadata.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{ApiKey, ConsumerGroupHeartbeatResponse};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::member::{Next, Notices};
use crate::TopicPartition;
use crate::error::Error;
use crate::net::backoff::exponential;

/// Settings the state machine needs.
pub(crate) struct ConsumerMemberConfig {
    pub(crate) instance_id: Option<String>,
    /// `max.poll.interval.ms`: how long the application may go without
    /// polling, and the rebalance timeout the coordinator gives it to
    /// revoke.
    pub(crate) max_poll_interval: Duration,
    pub(crate) server_assignor: Option<String>,
    /// The heartbeat interval until the coordinator names one.
    pub(crate) heartbeat_interval: Duration,
    pub(crate) retry_backoff: Duration,
    pub(crate) retry_backoff_max: Duration,
    /// Makes a member id (KIP-1082: the client makes its own). Called at
    /// the start and when a rejoin is fenced as the old member.
    pub(crate) new_member_id: Box<dyn FnMut() -> String + Send + Sync>,
}

impl std::fmt::Debug for ConsumerMemberConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerMemberConfig")
            .field("instance_id", &self.instance_id)
            .field("max_poll_interval", &self.max_poll_interval)
            .field("server_assignor", &self.server_assignor)
            .finish_non_exhaustive()
    }
}

/// One ConsumerGroupHeartbeat's content. `None` (and `-1` for the
/// rebalance timeout) means "unchanged since the last one".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Beat {
    pub(crate) member_id: String,
    /// 0 to join, -1 to leave, -2 for a static member leaving for now.
    pub(crate) epoch: i32,
    pub(crate) instance_id: Option<String>,
    pub(crate) rebalance_timeout_ms: i32,
    pub(crate) topics: Option<Vec<String>>,
    pub(crate) server_assignor: Option<String>,
    /// The partitions the member owns, by topic id.
    pub(crate) owned: Option<Vec<(Uuid, Vec<i32>)>>,
}

/// The epoch of a member leaving the group.
const LEAVE_EPOCH: i32 = -1;
/// The epoch of a static member leaving for now: it keeps its place
/// (and assignment) until its session times out.
const LEAVE_STATIC_EPOCH: i32 = -2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Heartbeats at epoch 0 until the coordinator hands out an epoch.
    Joining,
    Stable,
    /// Left after the application stopped polling (`leave`: the leaving
    /// heartbeat still to send).
    Stale {
        at: Instant,
        leave: bool,
    },
    Closing,
    Failed,
    Done,
}

/// One member of one KIP-848 group.
#[derive(Debug)]
pub(crate) struct ConsumerMember {
    config: ConsumerMemberConfig,
    phase: Phase,
    pub(crate) member_id: String,
    pub(crate) epoch: i32,
    topics: Vec<String>,
    /// Topic names by id, from metadata.
    names: BTreeMap<Uuid, String>,
    /// Partitions this member consumes, with their topic's id.
    owned: BTreeMap<TopicPartition, Uuid>,
    /// The coordinator's latest assignment for this member; `None` until
    /// one comes after joining.
    target: Option<BTreeMap<Uuid, BTreeSet<i32>>>,
    /// Partition changes to hand to the driver, in order.
    revoking: Vec<TopicPartition>,
    assigning: Vec<(TopicPartition, Uuid)>,
    notices: Notices,
    /// Partitions handed out in a revocation the driver has not reported
    /// done.
    in_revocation: Vec<TopicPartition>,
    /// What the next heartbeat carries besides the minimum.
    send_full: bool,
    send_topics: bool,
    send_owned: bool,
    /// Whether the coordinator has answered a heartbeat of this member
    /// (there is something to leave).
    joined_once: bool,
    interval: Duration,
    next_heartbeat: Instant,
    failures: u32,
    /// Assigned topics without a name yet: metadata is asked for, at most
    /// once per `retry_backoff_max`.
    unresolved: bool,
    refresh_at: Instant,
    /// Since when joins have been refused with UNRELEASED_INSTANCE_ID.
    unreleased_since: Option<Instant>,
    /// Times the member lost its place (fenced, failed, left): a
    /// revocation that spans one must not commit.
    pub(crate) fences: u64,
    /// A topic authorization failure was reported (once per streak).
    authorization_reported: bool,
}

impl ConsumerMember {
    pub(crate) fn new(mut config: ConsumerMemberConfig, topics: Vec<String>, now: Instant) -> Self {
        let member_id = (config.new_member_id)();
        let interval = config.heartbeat_interval;
        ConsumerMember {
            config,
            phase: Phase::Joining,
            member_id,
            epoch: 0,
            topics,
            names: BTreeMap::new(),
            owned: BTreeMap::new(),
            target: None,
            revoking: Vec::new(),
            assigning: Vec::new(),
            notices: Notices::default(),
            in_revocation: Vec::new(),
            send_full: true,
            send_topics: false,
            send_owned: false,
            joined_once: false,
            interval,
            next_heartbeat: now,
            failures: 0,
            unresolved: false,
            refresh_at: now,
            unreleased_since: None,
            fences: 0,
            authorization_reported: false,
        }
    }

    /// The partitions this member consumes.
    pub(crate) fn owned(&self) -> Vec<TopicPartition> {
        self.owned.keys().cloned().collect()
    }

    /// When the next heartbeat is due, while the member is in the group.
    pub(crate) fn heartbeat_due(&self) -> Option<Instant> {
        matches!(self.phase, Phase::Joining | Phase::Stable).then_some(self.next_heartbeat)
    }

    /// Topic ids the driver learned from metadata.
    pub(crate) fn learn_topics(&mut self, topics: impl IntoIterator<Item = (Uuid, String)>) {
        for (id, name) in topics {
            if !id.is_nil() {
                self.names.insert(id, name);
            }
        }
    }

    /// The subscription changed: the next heartbeat (sent now) carries it.
    pub(crate) fn subscribe(&mut self, topics: Vec<String>) {
        if topics != self.topics {
            self.topics = topics;
            self.send_topics = true;
        }
    }

    /// Starts closing: owned partitions are released, then the member
    /// leaves (for now, when static).
    pub(crate) fn close(&mut self) {
        if !matches!(self.phase, Phase::Failed | Phase::Done | Phase::Closing) {
            self.phase = Phase::Closing;
            // Not handed out yet: nothing to release either.
            self.assigning.clear();
        }
    }

    /// Partitions lost since the driver last asked: it drops them at once,
    /// even while a revocation waits for the application.
    pub(crate) fn take_losing(&mut self) -> Vec<TopicPartition> {
        std::mem::take(&mut self.notices.losing)
    }

    /// Whether the next heartbeat should go now: an acknowledgement or a
    /// new subscription waits for nothing.
    pub(crate) fn heartbeat_urgent(&self) -> bool {
        matches!(self.phase, Phase::Joining | Phase::Stable) && (self.send_owned || self.send_topics)
    }

    /// The next thing to do. `polled` is when the application last polled
    /// (or is polling now). Never [`Next::Join`], [`Next::Sync`],
    /// [`Next::Heartbeat`] or [`Next::Leave`]: heartbeats are
    /// [`Next::Beat`], leaving too.
    pub(crate) fn next(&mut self, now: Instant, polled: Instant) -> Next {
        if let Some(notice) = self.notices.next() {
            if matches!(notice, Next::Fail(_)) {
                self.phase = Phase::Failed;
            }
            return notice;
        }
        if !self.revoking.is_empty() {
            let partitions = std::mem::take(&mut self.revoking);
            self.in_revocation = partitions.clone();
            return if self.phase == Phase::Closing { Next::Release(partitions) } else { Next::Revoke(partitions) };
        }
        if !self.in_revocation.is_empty() {
            // The driver reports `revoked` before asking again.
            return Next::Wait(now + self.interval.max(self.config.retry_backoff));
        }
        if !self.assigning.is_empty() {
            let assigning = std::mem::take(&mut self.assigning);
            self.owned.extend(assigning.iter().cloned());
            self.send_owned = true;
            return Next::Assign(assigning.into_iter().map(|(tp, _)| tp).collect());
        }
        match self.phase {
            Phase::Failed => Next::Wait(now + self.config.retry_backoff_max),
            Phase::Done => Next::Done,
            Phase::Closing => {
                if !self.owned.is_empty() {
                    self.revoking = self.owned();
                    return self.next(now, polled);
                }
                self.phase = Phase::Done;
                if self.joined_once { Next::Beat(self.leave_beat()) } else { Next::Done }
            }
            Phase::Stale { at, leave } => {
                if leave {
                    self.phase = Phase::Stale { at, leave: false };
                    // Left: nothing to leave again when closing now.
                    self.joined_once = false;
                    return Next::Beat(self.leave_beat());
                }
                if polled > at {
                    info!(target: "rill::cgrp", member = %self.member_id, "polled again: rejoining");
                    self.rejoin(now);
                    return self.next(now, polled);
                }
                Next::AwaitPoll
            }
            Phase::Joining | Phase::Stable => {
                if self.phase == Phase::Stable {
                    if now.saturating_duration_since(polled) > self.config.max_poll_interval {
                        self.poll_expired(now);
                        return self.next(now, polled);
                    }
                    // An acknowledgement goes before the next reconciliation
                    // starts, not after it.
                    if !self.send_owned && self.reconcile() {
                        return self.next(now, polled);
                    }
                }
                if self.unresolved && now >= self.refresh_at {
                    self.refresh_at = now + self.config.retry_backoff_max;
                    return Next::RefreshMetadata;
                }
                if now >= self.next_heartbeat || self.heartbeat_urgent() {
                    return Next::Beat(self.beat(now));
                }
                let mut until = self.next_heartbeat;
                if self.phase == Phase::Stable {
                    until = until.min(polled + self.config.max_poll_interval);
                }
                if self.unresolved {
                    until = until.min(self.refresh_at);
                }
                Next::Wait(until)
            }
        }
    }

    /// The heartbeat to send now, with what changed since the last.
    pub(crate) fn beat(&mut self, now: Instant) -> Beat {
        let full = self.send_full || self.phase == Phase::Joining;
        let owned = (full || self.send_owned).then(|| {
            if self.epoch == 0 {
                // Kafka refuses a join that claims partitions.
                return Vec::new();
            }
            let mut by_topic: BTreeMap<Uuid, Vec<i32>> = BTreeMap::new();
            for (tp, id) in &self.owned {
                by_topic.entry(*id).or_default().push(tp.partition);
            }
            by_topic.into_iter().collect()
        });
        let beat = Beat {
            member_id: self.member_id.clone(),
            epoch: self.epoch,
            instance_id: self.config.instance_id.clone(),
            rebalance_timeout_ms: if full { millis(self.config.max_poll_interval) } else { -1 },
            topics: (full || self.send_topics).then(|| self.topics.clone()),
            server_assignor: if full { self.config.server_assignor.clone() } else { None },
            owned,
        };
        self.send_full = false;
        self.send_topics = false;
        self.send_owned = false;
        // None while this one is out; `heartbeat_done` sets the next.
        self.next_heartbeat = now + self.config.max_poll_interval;
        beat
    }

    fn leave_beat(&self) -> Beat {
        let epoch = if self.config.instance_id.is_some() { LEAVE_STATIC_EPOCH } else { LEAVE_EPOCH };
        Beat {
            member_id: self.member_id.clone(),
            epoch,
            instance_id: self.config.instance_id.clone(),
            rebalance_timeout_ms: -1,
            topics: None,
            server_assignor: None,
            owned: None,
        }
    }

    /// The answer to a heartbeat (or the error sending it).
    pub(crate) fn heartbeat_done(&mut self, answer: Result<ConsumerGroupHeartbeatResponse, Error>, now: Instant) {
        if !matches!(self.phase, Phase::Joining | Phase::Stable | Phase::Closing) {
            // Done, failed, or the answer to leaving: nothing to learn.
            return;
        }
        let response = match answer {
            Ok(response) => response,
            Err(error @ Error::UnsupportedApi { .. }) => return self.fail(unsupported(Some(error.to_string()))),
            Err(error) => {
                debug!(target: "rill::cgrp", member = %self.member_id, %error, "heartbeat failed");
                return self.retry(now);
            }
        };
        use ResponseError as E;
        let Some(code) = ResponseError::try_from_code(response.error_code) else {
            return self.answered(response, now);
        };
        let message = response.error_message.as_ref().map(|m| m.to_string());
        match code {
            E::UnknownMemberId | E::FencedMemberEpoch => self.fenced(code, now),
            E::CoordinatorNotAvailable
            | E::NotCoordinator
            | E::CoordinatorLoadInProgress
            | E::RequestTimedOut
            | E::NetworkException
            | E::UnknownServerError => {
                debug!(target: "rill::cgrp", member = %self.member_id, %code, "heartbeat refused; retrying");
                self.retry(now);
            }
            E::TopicAuthorizationFailed => {
                if !std::mem::replace(&mut self.authorization_reported, true) {
                    self.notices.reports.push(self.error(code, message));
                }
                self.retry(now);
            }
            E::UnreleasedInstanceId => {
                // The instance id's last member has not left: a restart
                // after a crash, before the old session ended. Wait for it
                // (as long as the application may go without polling),
                // not fail at once as Java does.
                let since = *self.unreleased_since.get_or_insert(now);
                if now.saturating_duration_since(since) > self.config.max_poll_interval {
                    return self.fail(self.error(code, message));
                }
                warn!(target: "rill::cgrp", member = %self.member_id, instance = ?self.config.instance_id,
                    "the group instance id is still held by a member that has not left; retrying");
                self.retry(now);
            }
            E::UnsupportedVersion => self.fail(unsupported(message)),
            _ => self.fail(self.error(code, message)),
        }
    }

    fn error(&self, code: ResponseError, message: Option<String>) -> Error {
        let api = ApiKey::ConsumerGroupHeartbeat;
        Error::Broker { api, code, context: format!("of group member {}", self.member_id), message }
    }

    fn answered(&mut self, response: ConsumerGroupHeartbeatResponse, now: Instant) {
        if response.member_epoch < 0 {
            // A success that names no epoch is no answer to go by (franz-go
            // ignores it too); the next heartbeat asks again.
            debug!(target: "rill::cgrp", member = %self.member_id, epoch = response.member_epoch,
                "a heartbeat answer without an epoch; ignored");
            return self.retry(now);
        }
        self.failures = 0;
        self.unreleased_since = None;
        self.authorization_reported = false;
        self.joined_once = true;
        if let Some(id) = response.member_id.as_ref().filter(|id| !id.is_empty())
            && **id != *self.member_id
        {
            // A broker before KIP-1082 names the member itself.
            self.member_id = id.to_string();
        }
        if response.member_epoch != self.epoch {
            debug!(target: "rill::cgrp", member = %self.member_id, from = self.epoch, to = response.member_epoch,
                "member epoch");
        }
        self.epoch = response.member_epoch;
        if response.heartbeat_interval_ms > 0 {
            self.interval = Duration::from_millis(response.heartbeat_interval_ms as u64);
        }
        if self.phase == Phase::Joining && self.epoch > 0 {
            info!(target: "rill::cgrp", member = %self.member_id, epoch = self.epoch, "joined");
            self.phase = Phase::Stable;
        }
        if let Some(assignment) = response.assignment {
            let mut target: BTreeMap<Uuid, BTreeSet<i32>> = BTreeMap::new();
            for topic in assignment.topic_partitions {
                target.entry(topic.topic_id).or_default().extend(topic.partitions);
            }
            self.target = Some(target);
        }
        if self.phase != Phase::Closing {
            self.next_heartbeat = now + self.interval.max(Duration::from_millis(1));
        }
    }

    /// Moves toward the latest assignment: revocations first, then
    /// additions. Whether something is to do.
    fn reconcile(&mut self) -> bool {
        let Some(target) = &self.target else { return false };
        // Names from metadata, or from partitions already owned (a topic
        // metadata no longer lists is still the one owned).
        let mut names = self.names.clone();
        for (tp, id) in &self.owned {
            names.entry(*id).or_insert_with(|| tp.topic.clone());
        }
        let mut resolved: BTreeMap<TopicPartition, Uuid> = BTreeMap::new();
        let mut unresolved = false;
        for (id, partitions) in target {
            match names.get(id) {
                Some(name) => {
                    resolved.extend(partitions.iter().map(|p| (TopicPartition::new(name.as_str(), *p), *id)));
                }
                None => unresolved = true,
            }
        }
        if unresolved && !self.unresolved {
            debug!(target: "rill::cgrp", member = %self.member_id, "assigned topics not in metadata yet");
        }
        self.unresolved = unresolved;
        let revoke: Vec<TopicPartition> = self.owned.keys().filter(|tp| !resolved.contains_key(*tp)).cloned().collect();
        let add: Vec<(TopicPartition, Uuid)> =
            resolved.into_iter().filter(|(tp, _)| !self.owned.contains_key(tp)).collect();
        if revoke.is_empty() && add.is_empty() {
            return false;
        }
        info!(target: "rill::cgrp", member = %self.member_id, epoch = self.epoch, revoked = revoke.len(),
            added = add.len(), "reconciling the assignment");
        self.revoking = revoke;
        self.assigning = add;
        true
    }

    /// The application finished with a [`Next::Revoke`] or
    /// [`Next::Release`]: the next heartbeat says so.
    pub(crate) fn revoked(&mut self, partitions: &[TopicPartition]) {
        self.in_revocation.clear();
        for tp in partitions {
            self.owned.remove(tp);
        }
        // A member that lost its place meanwhile has nothing to say.
        self.send_owned = self.phase == Phase::Stable || self.send_owned;
    }

    /// The coordinator refused a commit this member made at `epoch`
    /// (STALE_MEMBER_EPOCH, UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH): the
    /// next heartbeat goes now and brings the member's standing.
    pub(crate) fn commit_refused(&mut self, code: ResponseError, epoch: i32, now: Instant) {
        if epoch == self.epoch && matches!(self.phase, Phase::Stable) {
            debug!(target: "rill::cgrp", member = %self.member_id, %code, epoch, "a commit was refused; heartbeating now");
            self.next_heartbeat = self.next_heartbeat.min(now);
        }
    }

    fn retry(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.send_full = true;
        if self.phase != Phase::Closing {
            self.next_heartbeat = now + self.backoff();
        }
    }

    fn backoff(&self) -> Duration {
        exponential(self.config.retry_backoff, self.config.retry_backoff_max, self.failures.saturating_sub(1))
    }

    /// The coordinator no longer knows this member at its epoch: every
    /// partition is lost (someone else may have it now), and the member
    /// joins again at epoch 0.
    fn fenced(&mut self, code: ResponseError, now: Instant) {
        let joining = self.phase == Phase::Joining;
        if joining {
            warn!(target: "rill::cgrp", member = %self.member_id, %code,
                "join refused (an earlier member of this instance id has not left, or the coordinator forgot this one); \
                 joining as a new member");
        } else {
            warn!(target: "rill::cgrp", member = %self.member_id, epoch = self.epoch, %code, "fenced: partitions lost");
        }
        self.abandon();
        if self.phase == Phase::Closing {
            self.phase = Phase::Done;
            return;
        }
        if joining {
            // Fenced while joining: a broker before KAFKA-19233 still
            // holds this id at its old epoch until the session ends. A new
            // id joins as a new member.
            self.member_id = (self.config.new_member_id)();
        }
        self.failures = self.failures.saturating_add(1);
        self.rejoin(now);
        if self.failures > 1 {
            self.next_heartbeat = now + self.backoff();
        }
    }

    fn rejoin(&mut self, now: Instant) {
        self.phase = Phase::Joining;
        self.epoch = 0;
        self.target = None;
        self.unresolved = false;
        self.send_full = true;
        self.next_heartbeat = now;
    }

    /// The application stopped polling: report it, lose the partitions
    /// and leave (a static member keeps its place for its session).
    fn poll_expired(&mut self, now: Instant) {
        warn!(target: "rill::cgrp", member = %self.member_id, "max.poll.interval.ms exceeded");
        self.notices.reports.push(Error::MaxPollIntervalExceeded { interval: self.config.max_poll_interval });
        self.abandon();
        self.target = None;
        self.phase = Phase::Stale { at: now, leave: true };
        // Commits from now on are no member's.
        self.epoch = 0;
    }

    /// The member's place is gone: what it owns is lost, except what a
    /// revocation under way is handing back (the application hears of
    /// those once, as revoked), and nothing is owned any more, so a join
    /// claims nothing.
    fn abandon(&mut self) {
        self.fences += 1;
        let owned = std::mem::take(&mut self.owned);
        self.notices.losing.extend(owned.into_keys().filter(|tp| !self.in_revocation.contains(tp)));
        self.revoking.clear();
        self.assigning.clear();
    }

    fn fail(&mut self, error: Error) {
        self.abandon();
        self.notices.fatal = Some(error);
        if self.phase == Phase::Closing {
            self.phase = Phase::Done;
        }
    }
}

/// The error for a coordinator that does not speak KIP-848.
fn unsupported(detail: Option<String>) -> Error {
    let detail = detail.map(|d| format!(" ({d})")).unwrap_or_default();
    Error::Config(crate::config::ConfigError::Invalid(format!(
        "the group coordinator does not support `group.protocol=consumer` (KIP-848, ConsumerGroupHeartbeat){detail}; \
         use `group.protocol=classic`"
    )))
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::consumer_group_heartbeat_response::{Assignment, TopicPartitions};
    use kafka_protocol::protocol::StrBytes;

    const T: Uuid = Uuid::from_u128(7);
    const U: Uuid = Uuid::from_u128(8);

    fn config(instance: Option<&str>) -> ConsumerMemberConfig {
        let mut n = 0;
        ConsumerMemberConfig {
            instance_id: instance.map(str::to_owned),
            max_poll_interval: Duration::from_secs(60),
            server_assignor: Some("uniform".into()),
            heartbeat_interval: Duration::from_secs(3),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            new_member_id: Box::new(move || {
                n += 1;
                format!("m{n}")
            }),
        }
    }

    fn member(t0: Instant) -> ConsumerMember {
        let mut member = ConsumerMember::new(config(None), vec!["t".into()], t0);
        member.learn_topics([(T, "t".to_owned())]);
        member
    }

    fn tp(topic: &str, p: i32) -> TopicPartition {
        TopicPartition::new(topic, p)
    }

    fn ok(epoch: i32, assignment: Option<&[(Uuid, &[i32])]>) -> ConsumerGroupHeartbeatResponse {
        let mut response = ConsumerGroupHeartbeatResponse::default()
            .with_member_epoch(epoch)
            .with_heartbeat_interval_ms(3000)
            .with_member_id(Some(StrBytes::from_static_str("m1")));
        response.assignment = assignment.map(|topics| {
            Assignment::default().with_topic_partitions(
                topics
                    .iter()
                    .map(|(id, partitions)| {
                        TopicPartitions::default().with_topic_id(*id).with_partitions(partitions.to_vec())
                    })
                    .collect(),
            )
        });
        response
    }

    fn error(code: ResponseError) -> ConsumerGroupHeartbeatResponse {
        ConsumerGroupHeartbeatResponse::default().with_error_code(code.code())
    }

    fn beat(member: &mut ConsumerMember, now: Instant) -> Beat {
        match member.next(now, now) {
            Next::Beat(beat) => beat,
            other => panic!("expected a heartbeat, got {other:?}"),
        }
    }

    /// A member joined at `epoch` owning partitions 0 and 1 of `t`.
    fn stable(t0: Instant) -> ConsumerMember {
        let mut m = member(t0);
        beat(&mut m, t0);
        m.heartbeat_done(Ok(ok(3, Some(&[(T, &[0, 1])]))), t0);
        assert!(matches!(m.next(t0, t0), Next::Assign(p) if p == [tp("t", 0), tp("t", 1)]));
        let ack = beat(&mut m, t0);
        assert_eq!(ack.owned, Some(vec![(T, vec![0, 1])]));
        m.heartbeat_done(Ok(ok(3, None)), t0);
        m
    }

    /// A stable member (owning partitions 0 and 1) whose next heartbeat,
    /// 3 s on, got `answer`; and that moment.
    fn stable_then(answer: ConsumerGroupHeartbeatResponse) -> (ConsumerMember, Instant) {
        let t0 = Instant::now();
        let mut m = stable(t0);
        let t1 = t0 + Duration::from_secs(3);
        beat(&mut m, t1);
        m.heartbeat_done(Ok(answer), t1);
        (m, t1)
    }

    /// A stable member told to give partition 1 up (keeping 0), while the
    /// application revokes it.
    fn revoking_partition_1() -> (ConsumerMember, Instant) {
        let (mut m, t1) = stable_then(ok(4, Some(&[(T, &[0])])));
        assert!(matches!(m.next(t1, t1), Next::Revoke(p) if p == [tp("t", 1)]));
        (m, t1)
    }

    #[test]
    fn joins_with_everything_then_sends_only_what_changed() {
        let t0 = Instant::now();
        let mut m = member(t0);
        let join = beat(&mut m, t0);
        assert_eq!(join.member_id, "m1");
        assert_eq!(join.epoch, 0);
        assert_eq!(join.rebalance_timeout_ms, 60_000);
        assert_eq!(join.topics.as_deref(), Some(&["t".to_owned()][..]));
        assert_eq!(join.server_assignor.as_deref(), Some("uniform"));
        assert_eq!(join.owned, Some(vec![]), "joining owns nothing, and says so");
        // The mock answers epoch 0 without an assignment until partitions
        // are free: the member keeps joining, at the interval.
        m.heartbeat_done(Ok(ok(0, None)), t0);
        assert!(matches!(m.next(t0, t0), Next::Wait(at) if at == t0 + Duration::from_secs(3)));
        let t1 = t0 + Duration::from_secs(3);
        assert_eq!(beat(&mut m, t1).epoch, 0);
        m.heartbeat_done(Ok(ok(2, Some(&[(T, &[0, 1, 2])]))), t1);
        assert!(matches!(m.next(t1, t1), Next::Assign(p) if p.len() == 3));
        let ack = beat(&mut m, t1);
        assert_eq!((ack.epoch, ack.owned.clone()), (2, Some(vec![(T, vec![0, 1, 2])])));
        assert_eq!((ack.topics.clone(), ack.rebalance_timeout_ms, ack.server_assignor.clone()), (None, -1, None));
        m.heartbeat_done(Ok(ok(2, None)), t1);
        let t2 = t1 + Duration::from_secs(3);
        let keepalive = beat(&mut m, t2);
        assert_eq!((keepalive.owned, keepalive.topics), (None, None), "a keepalive carries nothing else");
        assert_eq!(m.heartbeat_due(), Some(t2 + Duration::from_secs(60)), "none while one is out");
        m.heartbeat_done(Ok(ok(2, None)), t2);
        assert_eq!(m.heartbeat_due(), Some(t2 + Duration::from_secs(3)));
    }

    #[test]
    fn a_moved_partition_is_revoked_before_the_ack_and_additions_follow() {
        let t0 = Instant::now();
        let mut m = stable(t0);
        // Partition 1 goes elsewhere, 2 comes: revoke first.
        let t1 = t0 + Duration::from_secs(3);
        beat(&mut m, t1);
        m.heartbeat_done(Ok(ok(4, Some(&[(T, &[0, 2])]))), t1);
        assert_eq!(m.epoch, 4, "the epoch is adopted at once");
        assert!(matches!(m.next(t1, t1), Next::Revoke(p) if p == [tp("t", 1)]));
        // While the application revokes, heartbeats go on and say nothing
        // of the partitions.
        assert!(matches!(m.next(t1, t1), Next::Wait(_)));
        let during = m.beat(t1);
        assert_eq!(during.owned, None);
        m.heartbeat_done(Ok(ok(4, None)), t1);
        m.revoked(&[tp("t", 1)]);
        assert!(matches!(m.next(t1, t1), Next::Assign(p) if p == [tp("t", 2)]));
        let ack = beat(&mut m, t1);
        assert_eq!(ack.owned, Some(vec![(T, vec![0, 2])]));
        m.heartbeat_done(Ok(ok(4, None)), t1);
        assert_eq!(m.owned(), [tp("t", 0), tp("t", 2)]);
    }

    #[test]
    fn a_revocation_alone_is_acknowledged_at_once() {
        let (mut m, t1) = stable_then(ok(3, Some(&[(T, &[0])])));
        assert!(matches!(m.next(t1, t1), Next::Revoke(p) if p == [tp("t", 1)]));
        m.revoked(&[tp("t", 1)]);
        let ack = beat(&mut m, t1);
        assert_eq!(ack.owned, Some(vec![(T, vec![0])]), "the coordinator bumps the epoch on this");
    }

    #[test]
    fn unknown_topic_ids_wait_for_metadata_and_the_rest_reconciles() {
        let (mut m, t1) = stable_then(ok(5, Some(&[(T, &[0, 1]), (U, &[0])])));
        assert!(matches!(m.next(t1, t1), Next::RefreshMetadata));
        // Asked once per backoff, not in a loop.
        assert!(matches!(m.next(t1, t1), Next::Wait(at) if at <= t1 + Duration::from_secs(1)));
        m.learn_topics([(U, "u".to_owned())]);
        assert!(matches!(m.next(t1, t1), Next::Assign(p) if p == [tp("u", 0)]));
        assert_eq!(beat(&mut m, t1).owned, Some(vec![(T, vec![0, 1]), (U, vec![0])]));
    }

    #[test]
    fn fencing_loses_everything_and_rejoins_at_epoch_zero() {
        for code in [ResponseError::FencedMemberEpoch, ResponseError::UnknownMemberId] {
            let (mut m, t1) = stable_then(error(code));
            assert!(matches!(m.next(t1, t1), Next::Lose(p) if p.len() == 2), "{code:?}");
            let rejoin = beat(&mut m, t1);
            assert_eq!((rejoin.epoch, rejoin.member_id.as_str()), (0, "m1"), "the same id, at once");
            assert_eq!(rejoin.owned, Some(vec![]));
            assert!(rejoin.topics.is_some() && rejoin.rebalance_timeout_ms > 0);
            // Fenced again while joining: the old member still holds the
            // id; a new one joins, after a backoff.
            m.heartbeat_done(Ok(error(code)), t1);
            assert!(matches!(m.next(t1, t1), Next::Wait(at) if at > t1));
            let again = beat(&mut m, t1 + Duration::from_secs(1));
            assert_eq!((again.epoch, again.member_id.as_str()), (0, "m2"));
        }
    }

    #[test]
    fn a_fence_during_a_revocation_loses_only_what_is_not_being_revoked() {
        let (mut m, t1) = revoking_partition_1();
        m.beat(t1);
        m.heartbeat_done(Ok(error(ResponseError::FencedMemberEpoch)), t1);
        // The driver drops the lost partition at once, while the
        // application still revokes the other.
        assert_eq!(m.take_losing(), [tp("t", 0)], "1 is being revoked, not lost too");
        assert!(m.owned().is_empty());
        let rejoin = m.beat(t1);
        assert_eq!((rejoin.epoch, rejoin.owned), (0, Some(vec![])), "a join claims nothing (Kafka refuses it)");
        m.revoked(&[tp("t", 1)]);
        assert!(matches!(m.next(t1, t1), Next::Wait(_)), "nothing more to lose or revoke");
    }

    #[test]
    fn a_failure_during_a_revocation_reports_each_partition_once() {
        let (mut m, t1) = revoking_partition_1();
        m.beat(t1);
        m.heartbeat_done(Ok(error(ResponseError::GroupAuthorizationFailed)), t1);
        m.revoked(&[tp("t", 1)]);
        assert!(matches!(m.next(t1, t1), Next::Lose(p) if p == [tp("t", 0)]));
        assert!(matches!(m.next(t1, t1), Next::Fail(_)));
    }

    #[test]
    fn an_acknowledgement_goes_before_the_next_revocation() {
        let (mut m, t1) = revoking_partition_1();
        // A newer assignment arrives while the application revokes.
        m.beat(t1);
        m.heartbeat_done(Ok(ok(4, Some(&[]))), t1);
        m.revoked(&[tp("t", 1)]);
        assert!(m.heartbeat_urgent());
        let ack = beat(&mut m, t1);
        assert_eq!(ack.owned, Some(vec![(T, vec![0])]), "the first revocation is acknowledged first");
        m.heartbeat_done(Ok(ok(5, None)), t1);
        assert!(matches!(m.next(t1, t1), Next::Revoke(p) if p == [tp("t", 0)]));
    }

    #[test]
    fn an_answer_without_an_epoch_is_not_taken() {
        let (mut m, t1) = stable_then(ok(-1, Some(&[])));
        assert_eq!((m.epoch, m.owned().len()), (3, 2));
        let Next::Wait(at) = m.next(t1, t1) else { panic!("backs off") };
        let again = beat(&mut m, at);
        assert_eq!(again.epoch, 3);
        assert!(again.owned.is_some(), "everything again after an answer not taken");
    }

    #[test]
    fn coordinator_and_transport_errors_keep_the_partitions_and_resend_everything() {
        let t0 = Instant::now();
        let mut m = stable(t0);
        let mut now = t0 + Duration::from_secs(3);
        for (i, answer) in [
            Err(Error::ConnectionClosed { broker: "b".into(), reason: "cut".into() }),
            Ok(error(ResponseError::NotCoordinator)),
            Ok(error(ResponseError::CoordinatorLoadInProgress)),
        ]
        .into_iter()
        .enumerate()
        {
            beat(&mut m, now);
            m.heartbeat_done(answer, now);
            let backoff = Duration::from_millis(100 << i);
            assert!(matches!(m.next(now, now), Next::Wait(at) if at == now + backoff), "attempt {i}");
            now += backoff;
        }
        let full = beat(&mut m, now);
        assert_eq!((full.epoch, full.owned.clone()), (3, Some(vec![(T, vec![0, 1])])));
        assert!(full.topics.is_some() && full.rebalance_timeout_ms > 0);
        assert_eq!(m.owned().len(), 2);
    }

    #[test]
    fn fatal_codes_fail_the_member_with_a_clear_error() {
        for code in [
            ResponseError::GroupAuthorizationFailed,
            ResponseError::FencedInstanceId,
            ResponseError::UnsupportedAssignor,
            ResponseError::InvalidRequest,
            ResponseError::GroupMaxSizeReached,
        ] {
            let (mut m, t1) = stable_then(error(code));
            assert!(matches!(m.next(t1, t1), Next::Lose(p) if p.len() == 2));
            match m.next(t1, t1) {
                Next::Fail(Error::Broker { code: c, .. }) => assert_eq!(c, code),
                other => panic!("{code:?}: {other:?}"),
            }
        }
        let t0 = Instant::now();
        let mut m = member(t0);
        beat(&mut m, t0);
        m.heartbeat_done(Ok(error(ResponseError::UnsupportedVersion)), t0);
        match m.next(t0, t0) {
            Next::Fail(error) => assert!(error.to_string().contains("group.protocol=classic"), "{error}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_instance_id_still_held_is_waited_for_up_to_the_poll_interval() {
        let t0 = Instant::now();
        let mut m = ConsumerMember::new(config(Some("i-1")), vec!["t".into()], t0);
        let mut now = t0;
        while now < t0 + Duration::from_secs(60) {
            assert_eq!(beat(&mut m, now).epoch, 0);
            m.heartbeat_done(Ok(error(ResponseError::UnreleasedInstanceId)), now);
            let Next::Wait(at) = m.next(now, now) else { panic!("retries") };
            now = at;
        }
        beat(&mut m, now);
        m.heartbeat_done(Ok(error(ResponseError::UnreleasedInstanceId)), now);
        assert!(matches!(
            m.next(now, now),
            Next::Fail(Error::Broker { code: ResponseError::UnreleasedInstanceId, .. })
        ));
    }

    #[test]
    fn a_topic_authorization_failure_is_reported_and_the_member_goes_on() {
        let (mut m, t1) = stable_then(error(ResponseError::TopicAuthorizationFailed));
        assert!(matches!(m.next(t1, t1), Next::Report(Error::Broker { .. })));
        assert!(matches!(m.next(t1, t1), Next::Wait(_)));
        assert_eq!(m.owned().len(), 2);
    }

    #[test]
    fn closing_releases_then_leaves_with_the_leave_epoch() {
        for (instance, epoch) in [(None, -1), (Some("i-1"), -2)] {
            let t0 = Instant::now();
            let mut m = ConsumerMember::new(config(instance), vec!["t".into()], t0);
            m.learn_topics([(T, "t".to_owned())]);
            beat(&mut m, t0);
            m.heartbeat_done(Ok(ok(3, Some(&[(T, &[0])]))), t0);
            assert!(matches!(m.next(t0, t0), Next::Assign(_)));
            m.close();
            assert!(matches!(m.next(t0, t0), Next::Release(p) if p == [tp("t", 0)]));
            m.revoked(&[tp("t", 0)]);
            let leave = beat(&mut m, t0);
            assert_eq!(leave.epoch, epoch);
            assert_eq!(leave.instance_id.as_deref(), instance);
            assert_eq!((leave.topics, leave.owned), (None, None), "the mock aborts on names without a regex");
            m.heartbeat_done(Ok(ok(epoch, None)), t0);
            assert!(matches!(m.next(t0, t0), Next::Done));
        }
        // Never answered: nothing to leave.
        let t0 = Instant::now();
        let mut m = member(t0);
        m.close();
        assert!(matches!(m.next(t0, t0), Next::Done));
    }

    #[test]
    fn max_poll_interval_loses_the_partitions_leaves_and_rejoins_when_polled() {
        let t0 = Instant::now();
        let mut m = stable(t0);
        let late = t0 + Duration::from_secs(61);
        assert!(matches!(m.next(late, t0), Next::Report(Error::MaxPollIntervalExceeded { .. })));
        assert!(matches!(m.next(late, t0), Next::Lose(p) if p.len() == 2));
        assert_eq!(beat(&mut m, late).epoch, -1);
        m.heartbeat_done(Ok(ok(-1, None)), late);
        assert!(matches!(m.next(late, t0), Next::AwaitPoll));
        let polled = late + Duration::from_secs(1);
        let rejoin = beat(&mut m, polled);
        assert_eq!((rejoin.epoch, rejoin.member_id.as_str(), rejoin.owned), (0, "m1", Some(vec![])));
    }

    #[test]
    fn a_subscription_change_goes_out_at_once() {
        let t0 = Instant::now();
        let mut m = stable(t0);
        m.subscribe(vec!["t".into(), "u".into()]);
        let next = beat(&mut m, t0);
        assert_eq!(next.topics, Some(vec!["t".to_owned(), "u".to_owned()]));
        assert_eq!(next.owned, None);
    }

    #[test]
    fn a_refused_commit_brings_the_next_heartbeat_forward() {
        let t0 = Instant::now();
        let mut m = stable(t0);
        assert_eq!(m.heartbeat_due(), Some(t0 + Duration::from_secs(3)));
        m.commit_refused(ResponseError::StaleMemberEpoch, 2, t0);
        assert_eq!(m.heartbeat_due(), Some(t0 + Duration::from_secs(3)), "another epoch's commit");
        m.commit_refused(ResponseError::StaleMemberEpoch, 3, t0);
        assert_eq!(m.heartbeat_due(), Some(t0));
    }
}
