//! A group member's state machine (pure: no I/O, no clock of its own).
//!
//! ```text
//!            ┌──────────── rejoin (heartbeat: REBALANCE_IN_PROGRESS,
//!            ▼              cooperative revocation, topic change) ──┐
//!  Unjoined ──Join──▶ Joining ──▶ Syncing ──▶ Stable ──Heartbeat────┘
//!     ▲  (eager: revoke all           │ (leader: assign first)
//!     │   owned before joining)       ▼
//!     └── member/generation errors: partitions lost, rejoin
//!  Stable ── no poll within max.poll.interval ──▶ Left ── polled ──▶ Unjoined
//!  any ── close ──▶ Closing (release owned, LeaveGroup unless static) ──▶ Done
//!  any ── FENCED_INSTANCE_ID, authorization, protocol mismatch ──▶ Failed
//! ```
//!
//! The driver asks [`Member::next`] what to do, does it, and reports the
//! outcome (`joined`, `synced`, `heartbeat_done`, `revoked`, …). Partition
//! changes come out as [`Next::Revoke`], [`Next::Assign`] and
//! [`Next::Lose`] so the driver can tell the application in order:
//! revocations (which commit) before assignments, losses (which must not
//! commit: the partitions may already be someone else's) on their own.

use std::collections::BTreeSet;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{HeartbeatResponse, JoinGroupResponse, SyncGroupResponse};
use tokio::time::Instant;

use super::assignor::Member as Subscriber;
use super::protocol::{decode_assignment, decode_subscription};
use crate::TopicPartition;
use crate::error::Error;
use crate::net::backoff::exponential;

/// Settings the state machine needs.
#[derive(Debug, Clone)]
pub(crate) struct MemberConfig {
    pub(crate) cooperative: bool,
    pub(crate) static_member: bool,
    pub(crate) session_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) max_poll_interval: Duration,
    pub(crate) retry_backoff: Duration,
    pub(crate) retry_backoff_max: Duration,
}

/// What the driver should do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Send JoinGroup (with [`Member::member_id`] and the owned partitions).
    Join {
        reason: String,
    },
    /// Send SyncGroup; as the leader, assign first (the members and the
    /// protocol the coordinator chose).
    Sync {
        leader: Option<(String, Vec<Subscriber>)>,
    },
    Heartbeat,
    /// Tell the application these partitions go (it may commit), then
    /// report [`Member::revoked`].
    Revoke(Vec<TopicPartition>),
    /// Give up these partitions without telling the application to commit
    /// (closing: the consumer commits itself), then [`Member::revoked`].
    Release(Vec<TopicPartition>),
    /// New partitions to consume.
    Assign(Vec<TopicPartition>),
    /// These partitions are gone already: drop them without committing.
    Lose(Vec<TopicPartition>),
    /// Send LeaveGroup, then report [`Member::left`].
    Leave {
        reason: String,
    },
    /// A KIP-848 heartbeat ([`ConsumerMember`](super::consumer_member::ConsumerMember)
    /// only; leaving is one too): send it, then report
    /// `heartbeat_done`.
    Beat(super::consumer_member::Beat),
    /// Assigned topics are not in the metadata yet: refresh the
    /// subscribed topics' metadata and tell the member their ids.
    RefreshMetadata,
    /// Tell the application; the member carries on.
    Report(Error),
    /// Nothing until then (or until something changes).
    Wait(Instant),
    /// Nothing until the application polls again.
    AwaitPoll,
    /// The member failed for good: report the error and stop.
    Fail(Error),
    /// Closed.
    Done,
}

/// What a member tells the driver before anything else, in this order:
/// errors to report, partitions already lost (they must not be
/// committed), the failure that ends the member. Both protocols' members
/// keep theirs here.
#[derive(Debug, Default)]
pub(crate) struct Notices {
    pub(crate) reports: Vec<Error>,
    pub(crate) losing: Vec<TopicPartition>,
    pub(crate) fatal: Option<Error>,
}

impl Notices {
    /// The next notice, if any; after a [`Next::Fail`] the member is done.
    pub(crate) fn next(&mut self) -> Option<Next> {
        if !self.reports.is_empty() {
            return Some(Next::Report(self.reports.remove(0)));
        }
        if !self.losing.is_empty() {
            return Some(Next::Lose(std::mem::take(&mut self.losing)));
        }
        self.fatal.take().map(Next::Fail)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Unjoined,
    Joining,
    /// Joined; SyncGroup next (`leader` set when this member assigns).
    Joined {
        leader: Option<(String, Vec<Subscriber>)>,
    },
    Syncing,
    Stable,
    /// Left after the application stopped polling (`leave`: LeaveGroup
    /// still to send).
    Left {
        at: Instant,
        leave: bool,
    },
    Closing,
    Failed,
    Done,
}

impl PartialEq for Subscriber {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Subscriber {}

/// One member of one group.
#[derive(Debug)]
pub(crate) struct Member {
    config: MemberConfig,
    phase: Phase,
    pub(crate) member_id: String,
    pub(crate) generation: i32,
    /// The assignment strategy the coordinator chose for the generation.
    pub(crate) protocol: Option<String>,
    /// Partitions this member consumes.
    owned: BTreeSet<TopicPartition>,
    /// Partition changes to hand to the driver, in order.
    revoking: Vec<TopicPartition>,
    assigning: Vec<TopicPartition>,
    notices: Notices,
    /// Why the next join happens (KIP-800: JoinGroup and LeaveGroup carry it).
    rejoin_reason: Option<String>,
    not_before: Instant,
    failures: u32,
    next_heartbeat: Instant,
    last_heartbeat_ok: Instant,
    /// The driver is waiting for the application to finish revoking.
    awaiting_revocation: bool,
    /// A revocation was asked for before this join (eager protocol).
    revoked_for_join: bool,
}

/// How a response error code moves the member.
enum Outcome {
    Ok,
    /// Join again at once (new member id, rebalance in progress).
    Rejoin(String),
    /// The member's generation is over: partitions lost, join again.
    Lost {
        reset_member: bool,
        reason: String,
    },
    /// The coordinator is unreachable or moved: back off, join again.
    Retry(String),
    Fatal(Error),
}

fn classify(api: kafka_protocol::messages::ApiKey, code: i16, context: &str) -> Outcome {
    use ResponseError as E;
    let Some(error) = ResponseError::try_from_code(code) else { return Outcome::Ok };
    let text = || format!("{error:?}");
    match error {
        E::MemberIdRequired | E::RebalanceInProgress => Outcome::Rejoin(text()),
        E::UnknownMemberId => Outcome::Lost { reset_member: true, reason: text() },
        E::IllegalGeneration => Outcome::Lost { reset_member: false, reason: text() },
        E::CoordinatorNotAvailable
        | E::NotCoordinator
        | E::CoordinatorLoadInProgress
        | E::UnknownServerError
        | E::RequestTimedOut
        | E::NetworkException => Outcome::Retry(text()),
        _ => Outcome::Fatal(Error::broker(api, error, context.to_owned())),
    }
}

impl Member {
    pub(crate) fn new(config: MemberConfig, now: Instant) -> Self {
        Member {
            config,
            phase: Phase::Unjoined,
            member_id: String::new(),
            generation: -1,
            protocol: None,
            owned: BTreeSet::new(),
            revoking: Vec::new(),
            assigning: Vec::new(),
            notices: Notices::default(),
            rejoin_reason: Some("joining".into()),
            not_before: now,
            failures: 0,
            next_heartbeat: now,
            last_heartbeat_ok: now,
            awaiting_revocation: false,
            revoked_for_join: false,
        }
    }

    /// Partitions lost since the driver last asked (it drops them at
    /// once, even while a revocation waits).
    pub(crate) fn take_losing(&mut self) -> Vec<TopicPartition> {
        std::mem::take(&mut self.notices.losing)
    }

    /// The partitions this member consumes.
    pub(crate) fn owned(&self) -> Vec<TopicPartition> {
        self.owned.iter().cloned().collect()
    }

    /// Whether this member assigns the generation being joined.
    #[cfg(test)]
    pub(crate) fn is_leader(&self) -> bool {
        matches!(&self.phase, Phase::Joined { leader: Some(_) })
    }

    /// Whether the member holds a generation (heartbeats are due).
    pub(crate) fn in_group(&self) -> bool {
        self.generation >= 0 && !self.member_id.is_empty() && matches!(self.phase, Phase::Stable | Phase::Unjoined)
    }

    /// When the next heartbeat is due, if the member is in a generation.
    pub(crate) fn heartbeat_due(&self) -> Option<Instant> {
        self.in_group().then_some(self.next_heartbeat)
    }

    /// The next thing to do. `polled` is when the application last polled
    /// (or is polling now).
    pub(crate) fn next(&mut self, now: Instant, polled: Instant) -> Next {
        if let Some(notice) = self.notices.next() {
            if matches!(notice, Next::Fail(_)) {
                self.phase = Phase::Failed;
            }
            return notice;
        }
        if !self.revoking.is_empty() {
            self.awaiting_revocation = true;
            let partitions = std::mem::take(&mut self.revoking);
            return if self.phase == Phase::Closing { Next::Release(partitions) } else { Next::Revoke(partitions) };
        }
        if self.awaiting_revocation {
            // The driver reports `revoked` before asking again.
            return Next::Wait(now + self.config.heartbeat_interval);
        }
        if !self.assigning.is_empty() {
            return Next::Assign(std::mem::take(&mut self.assigning));
        }
        match &self.phase {
            Phase::Failed | Phase::Joining | Phase::Syncing => Next::Wait(now + self.config.session_timeout),
            Phase::Done => Next::Done,
            Phase::Closing => {
                if !self.owned.is_empty() {
                    self.revoking = self.owned();
                    return self.next(now, polled);
                }
                self.phase = Phase::Done;
                if !self.member_id.is_empty() && !self.config.static_member {
                    Next::Leave { reason: "the consumer is closing".into() }
                } else {
                    Next::Done
                }
            }
            Phase::Left { at, leave } => {
                if *leave {
                    self.phase = Phase::Left { at: *at, leave: false };
                    return Next::Leave { reason: "max.poll.interval.ms exceeded".into() };
                }
                if polled > *at {
                    self.phase = Phase::Unjoined;
                    self.rejoin_reason = Some("polled again after max.poll.interval.ms".into());
                    self.next(now, polled)
                } else {
                    Next::AwaitPoll
                }
            }
            Phase::Unjoined => {
                if now < self.not_before {
                    return Next::Wait(self.not_before);
                }
                if !self.config.cooperative && !self.owned.is_empty() && !self.revoked_for_join {
                    // Eager: everything goes back before joining.
                    self.revoked_for_join = true;
                    self.revoking = self.owned();
                    return self.next(now, polled);
                }
                self.revoked_for_join = false;
                self.phase = Phase::Joining;
                Next::Join { reason: self.rejoin_reason.take().unwrap_or_else(|| "rejoining".into()) }
            }
            Phase::Joined { .. } => {
                let Phase::Joined { leader } = std::mem::replace(&mut self.phase, Phase::Syncing) else {
                    unreachable!()
                };
                Next::Sync { leader }
            }
            Phase::Stable => {
                if let Some(reason) = self.rejoin_reason.clone() {
                    self.phase = Phase::Unjoined;
                    self.rejoin_reason = Some(reason);
                    return self.next(now, polled);
                }
                if now.saturating_duration_since(polled) > self.config.max_poll_interval {
                    self.poll_expired(now);
                    return self.next(now, polled);
                }
                if now.saturating_duration_since(self.last_heartbeat_ok) > self.config.session_timeout {
                    self.lose_all("no successful heartbeat within session.timeout.ms", true);
                    return self.next(now, polled);
                }
                if now >= self.next_heartbeat {
                    return Next::Heartbeat;
                }
                Next::Wait(self.next_heartbeat.min(polled + self.config.max_poll_interval))
            }
        }
    }

    /// The application stopped polling: report it, lose the partitions
    /// and leave. A dynamic member leaves so the group rebalances now; a
    /// static one keeps its place until its session times out (KIP-345).
    fn poll_expired(&mut self, now: Instant) {
        tracing::warn!(target: "rill::cgrp", member = %self.member_id, "max.poll.interval.ms exceeded");
        self.notices.reports.push(Error::MaxPollIntervalExceeded { interval: self.config.max_poll_interval });
        self.notices.losing.extend(std::mem::take(&mut self.owned));
        let leave = !self.config.static_member && !self.member_id.is_empty();
        self.phase = Phase::Left { at: now, leave };
        self.generation = -1;
    }

    /// Something requires a new rebalance (metadata or subscription change).
    pub(crate) fn request_rejoin(&mut self, reason: impl Into<String>) {
        let joining = matches!(
            self.phase,
            Phase::Stable | Phase::Unjoined | Phase::Joining | Phase::Joined { .. } | Phase::Syncing
        );
        if joining && self.rejoin_reason.is_none() {
            self.rejoin_reason = Some(reason.into());
        }
    }

    /// Starts closing: owned partitions are released, then the member
    /// leaves (unless static).
    pub(crate) fn close(&mut self) {
        if !matches!(self.phase, Phase::Failed | Phase::Done) {
            self.phase = Phase::Closing;
        }
    }

    fn lose_all(&mut self, reason: &str, reset_member: bool) {
        tracing::info!(target: "rill::cgrp", member = %self.member_id, generation = self.generation, reason, "partitions lost");
        self.notices.losing.extend(std::mem::take(&mut self.owned));
        self.generation = -1;
        if reset_member {
            self.member_id.clear();
        }
        self.phase = Phase::Unjoined;
        self.rejoin_reason = Some(reason.to_owned());
    }

    fn back_off(&mut self, now: Instant, reason: String) {
        self.failures = self.failures.saturating_add(1);
        let delay = exponential(self.config.retry_backoff, self.config.retry_backoff_max, self.failures - 1);
        self.not_before = now + delay;
        self.phase = Phase::Unjoined;
        self.rejoin_reason = Some(reason);
    }

    fn apply(&mut self, outcome: Outcome, now: Instant) -> bool {
        match outcome {
            Outcome::Ok => {
                self.failures = 0;
                return true;
            }
            Outcome::Rejoin(reason) => {
                self.phase = Phase::Unjoined;
                self.rejoin_reason = Some(reason);
            }
            Outcome::Lost { reset_member, reason } => self.lose_all(&reason, reset_member),
            Outcome::Retry(reason) => self.back_off(now, reason),
            Outcome::Fatal(error) => {
                self.notices.losing.extend(std::mem::take(&mut self.owned));
                self.notices.fatal = Some(error);
            }
        }
        false
    }

    /// A JoinGroup answer (or the error sending it).
    pub(crate) fn joined(&mut self, answer: Result<JoinGroupResponse, Error>, now: Instant) {
        if self.phase != Phase::Joining {
            return;
        }
        let response = match answer {
            Ok(response) => response,
            Err(error) => return self.back_off(now, error.to_string()),
        };
        if ResponseError::try_from_code(response.error_code) == Some(ResponseError::MemberIdRequired) {
            // KIP-394: join again with the id the coordinator handed out.
            self.member_id = response.member_id.to_string();
        }
        let api = kafka_protocol::messages::ApiKey::JoinGroup;
        if !self.apply(classify(api, response.error_code, "join"), now) {
            return;
        }
        self.member_id = response.member_id.to_string();
        self.generation = response.generation_id;
        let protocol = response.protocol_name.as_ref().map(|p| p.to_string()).unwrap_or_default();
        self.protocol = Some(protocol.clone()).filter(|p| !p.is_empty());
        let leader = (response.leader == response.member_id).then(|| {
            let members = response
                .members
                .iter()
                .map(|m| {
                    let subscription = decode_subscription(&m.metadata).unwrap_or_else(|error| {
                        tracing::warn!(target: "rill::cgrp", member = %m.member_id, %error,
                            "undecodable subscription: the member gets nothing");
                        Default::default()
                    });
                    Subscriber {
                        id: m.member_id.to_string(),
                        instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
                        subscription,
                    }
                })
                .collect();
            (protocol, members)
        });
        tracing::debug!(target: "rill::cgrp", member = %self.member_id, generation = self.generation,
            leader = %response.leader, members = response.members.len(), "joined");
        self.phase = Phase::Joined { leader };
    }

    /// A SyncGroup answer (or the error sending it).
    pub(crate) fn synced(&mut self, answer: Result<SyncGroupResponse, Error>, now: Instant) {
        if self.phase != Phase::Syncing {
            return;
        }
        let response = match answer {
            Ok(response) => response,
            Err(error) => return self.back_off(now, error.to_string()),
        };
        let api = kafka_protocol::messages::ApiKey::SyncGroup;
        if !self.apply(classify(api, response.error_code, "sync"), now) {
            return;
        }
        let assigned: BTreeSet<TopicPartition> = match decode_assignment(&response.assignment) {
            Ok(assigned) => assigned.into_iter().collect(),
            Err(error) => {
                // Unreadable: consume nothing this generation and rebalance.
                tracing::warn!(target: "rill::cgrp", %error, "undecodable assignment");
                self.notices.reports.push(Error::protocol("group coordinator", error));
                BTreeSet::new()
            }
        };
        let revoked: Vec<TopicPartition> = self.owned.difference(&assigned).cloned().collect();
        let added: Vec<TopicPartition> = assigned.difference(&self.owned).cloned().collect();
        tracing::info!(target: "rill::cgrp", member = %self.member_id, generation = self.generation,
            assigned = assigned.len(), added = added.len(), revoked = revoked.len(), "assignment received");
        for tp in &revoked {
            self.owned.remove(tp);
        }
        self.owned.extend(added.iter().cloned());
        self.revoking = revoked;
        self.assigning = added;
        self.phase = Phase::Stable;
        self.last_heartbeat_ok = now;
        self.next_heartbeat = now + self.config.heartbeat_interval;
        if !self.revoking.is_empty() && self.config.cooperative {
            // KIP-429: revoked partitions go to their new owners in a
            // follow-up rebalance.
            self.rejoin_reason = Some("partitions revoked: cooperative follow-up".into());
        }
    }

    /// A heartbeat answer (or the error sending it).
    pub(crate) fn heartbeat_done(&mut self, answer: Result<HeartbeatResponse, Error>, now: Instant) {
        if !self.in_group() {
            return;
        }
        let code = match answer {
            Ok(response) => response.error_code,
            Err(error) => {
                tracing::debug!(target: "rill::cgrp", %error, "heartbeat failed");
                self.next_heartbeat = now + self.config.retry_backoff;
                return;
            }
        };
        let api = kafka_protocol::messages::ApiKey::Heartbeat;
        match classify(api, code, "heartbeat") {
            Outcome::Ok => {
                self.last_heartbeat_ok = now;
                self.next_heartbeat = now + self.config.heartbeat_interval;
            }
            Outcome::Rejoin(reason) => {
                // The group is rebalancing: keep heartbeating until we join.
                self.last_heartbeat_ok = now;
                self.next_heartbeat = now + self.config.heartbeat_interval;
                self.request_rejoin(reason);
            }
            Outcome::Retry(_) => self.next_heartbeat = now + self.config.retry_backoff,
            outcome => {
                self.apply(outcome, now);
            }
        }
    }

    /// A JoinGroup or SyncGroup is under way (or due, after a join).
    pub(crate) fn rebalancing(&self) -> bool {
        matches!(self.phase, Phase::Joining | Phase::Joined { .. } | Phase::Syncing)
    }

    /// The coordinator refused a commit this member made in `generation`
    /// (ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, FENCED_INSTANCE_ID,
    /// REBALANCE_IN_PROGRESS): acted on now, not at the next heartbeat.
    pub(crate) fn commit_refused(&mut self, code: ResponseError, generation: i32, now: Instant) {
        if !self.in_group() || generation != self.generation {
            return;
        }
        match classify(kafka_protocol::messages::ApiKey::OffsetCommit, code.code(), "commit") {
            Outcome::Rejoin(reason) => self.request_rejoin(reason),
            outcome @ (Outcome::Lost { .. } | Outcome::Fatal(_)) => {
                self.apply(outcome, now);
            }
            Outcome::Ok | Outcome::Retry(_) => {}
        }
    }

    /// The application finished with a [`Next::Revoke`] or [`Next::Release`].
    pub(crate) fn revoked(&mut self, partitions: &[TopicPartition]) {
        self.awaiting_revocation = false;
        for tp in partitions {
            self.owned.remove(tp);
        }
    }

    /// The LeaveGroup was sent (or could not be).
    pub(crate) fn left(&mut self) {
        if !matches!(self.phase, Phase::Left { .. }) {
            self.phase = Phase::Done;
        }
        self.member_id.clear();
        self.generation = -1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::group::protocol::{Subscription, encode_assignment, encode_subscription};
    use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
    use kafka_protocol::protocol::StrBytes;

    fn config(cooperative: bool) -> MemberConfig {
        MemberConfig {
            cooperative,
            static_member: false,
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(3),
            max_poll_interval: Duration::from_secs(60),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
        }
    }

    fn s(text: &str) -> StrBytes {
        StrBytes::from_string(text.to_owned())
    }

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    fn join_ok(member: &str, leader: &str, generation: i32) -> JoinGroupResponse {
        let mut response = JoinGroupResponse::default()
            .with_member_id(s(member))
            .with_leader(s(leader))
            .with_generation_id(generation)
            .with_protocol_name(Some(s("range")));
        if member == leader {
            let metadata = encode_subscription(&Subscription { topics: vec!["t".into()], ..Default::default() });
            response.members =
                vec![JoinGroupResponseMember::default().with_member_id(s(member)).with_metadata(metadata)];
        }
        response
    }

    fn join_error(code: ResponseError, member: &str) -> JoinGroupResponse {
        JoinGroupResponse::default().with_error_code(code.code()).with_member_id(s(member))
    }

    fn sync_ok(partitions: &[i32]) -> SyncGroupResponse {
        let partitions: Vec<TopicPartition> = partitions.iter().map(|&p| tp(p)).collect();
        SyncGroupResponse::default().with_assignment(encode_assignment(&partitions))
    }

    fn heartbeat(code: Option<ResponseError>) -> HeartbeatResponse {
        HeartbeatResponse::default().with_error_code(code.map_or(0, |c| c.code()))
    }

    /// Drives a fresh member to Stable with `partitions` as a follower.
    fn stable(cooperative: bool, partitions: &[i32], t0: Instant) -> Member {
        let mut m = Member::new(config(cooperative), t0);
        assert!(matches!(m.next(t0, t0), Next::Join { .. }));
        m.joined(Ok(join_ok("me", "other", 1)), t0);
        assert!(matches!(m.next(t0, t0), Next::Sync { leader: None }));
        m.synced(Ok(sync_ok(partitions)), t0);
        match m.next(t0, t0) {
            Next::Assign(got) => assert_eq!(got.len(), partitions.len()),
            other if partitions.is_empty() => assert!(matches!(other, Next::Wait(_)), "{other:?}"),
            other => panic!("{other:?}"),
        }
        m
    }

    #[test]
    fn member_id_required_rejoins_with_the_given_id() {
        let t0 = Instant::now();
        let mut m = Member::new(config(false), t0);
        assert!(matches!(m.next(t0, t0), Next::Join { .. }));
        m.joined(Ok(join_error(ResponseError::MemberIdRequired, "given-id")), t0);
        assert_eq!(m.member_id, "given-id");
        assert!(matches!(m.next(t0, t0), Next::Join { .. }), "rejoins at once");
        m.joined(Ok(join_ok("given-id", "given-id", 4)), t0);
        assert!(m.is_leader());
        match m.next(t0, t0) {
            Next::Sync { leader: Some((protocol, members)) } => {
                assert_eq!(protocol, "range");
                assert_eq!(members[0].subscription.topics, ["t"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.generation, 4);
    }

    #[test]
    fn refused_commits_reach_the_member_at_once() {
        let t0 = Instant::now();
        // A commit of the current generation refused as ILLEGAL_GENERATION:
        // the partitions are lost (someone else may own them) and the
        // member rejoins with its id.
        let mut m = stable(false, &[0, 1], t0);
        assert!(!m.rebalancing());
        m.commit_refused(ResponseError::IllegalGeneration, 1, t0);
        assert!(matches!(m.next(t0, t0), Next::Lose(lost) if lost == [tp(0), tp(1)]));
        assert!(matches!(m.next(t0, t0), Next::Join { .. }));
        assert!(m.rebalancing(), "joining");
        assert_eq!(m.member_id, "me");

        // UNKNOWN_MEMBER_ID: lost, and the id is gone.
        let mut m = stable(false, &[0], t0);
        m.commit_refused(ResponseError::UnknownMemberId, 1, t0);
        assert!(matches!(m.next(t0, t0), Next::Lose(_)));
        assert!(m.member_id.is_empty());

        // REBALANCE_IN_PROGRESS: a rejoin, revoking first (eager).
        let mut m = stable(false, &[0], t0);
        m.commit_refused(ResponseError::RebalanceInProgress, 1, t0);
        assert!(matches!(m.next(t0, t0), Next::Revoke(_)));

        // A refusal of an older generation's commit changes nothing.
        let mut m = stable(false, &[0], t0);
        m.commit_refused(ResponseError::IllegalGeneration, 0, t0);
        assert!(matches!(m.next(t0, t0), Next::Wait(_)));
        assert_eq!(m.owned(), [tp(0)]);
    }

    #[test]
    fn heartbeats_on_schedule_and_rejoin_on_rebalance_eager_revokes_first() {
        let t0 = Instant::now();
        let mut m = stable(false, &[0, 1], t0);
        let t1 = t0 + Duration::from_secs(1);
        assert!(matches!(m.next(t1, t1), Next::Wait(at) if at == t0 + Duration::from_secs(3)));
        let t3 = t0 + Duration::from_secs(3);
        assert!(matches!(m.next(t3, t3), Next::Heartbeat));
        m.heartbeat_done(Ok(heartbeat(Some(ResponseError::RebalanceInProgress))), t3);
        // Eager: all partitions are revoked before the join.
        match m.next(t3, t3) {
            Next::Revoke(partitions) => {
                assert_eq!(partitions, [tp(0), tp(1)]);
                // Heartbeats continue while the application revokes.
                assert!(m.heartbeat_due().is_some());
                assert!(matches!(m.next(t3, t3), Next::Wait(_)));
                m.revoked(&partitions);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(m.next(t3, t3), Next::Join { .. }));
        assert!(m.owned().is_empty());
    }

    #[test]
    fn cooperative_keeps_partitions_across_a_rebalance_and_revokes_only_moved_ones() {
        let t0 = Instant::now();
        let mut m = stable(true, &[0, 1, 2], t0);
        m.heartbeat_done(Ok(heartbeat(Some(ResponseError::RebalanceInProgress))), t0);
        assert!(matches!(m.next(t0, t0), Next::Join { .. }), "no revocation before joining");
        assert_eq!(m.owned().len(), 3);
        m.joined(Ok(join_ok("me", "other", 2)), t0);
        assert!(matches!(m.next(t0, t0), Next::Sync { .. }));
        m.synced(Ok(sync_ok(&[0, 1])), t0);
        match m.next(t0, t0) {
            Next::Revoke(partitions) => {
                assert_eq!(partitions, [tp(2)]);
                m.revoked(&partitions);
            }
            other => panic!("{other:?}"),
        }
        // Then the follow-up rebalance, still owning 0 and 1.
        assert!(matches!(m.next(t0, t0), Next::Join { .. }));
        assert_eq!(m.owned(), [tp(0), tp(1)]);
        m.joined(Ok(join_ok("me", "other", 3)), t0);
        m.next(t0, t0);
        m.synced(Ok(sync_ok(&[0, 1, 5])), t0);
        assert!(matches!(m.next(t0, t0), Next::Assign(p) if p == [tp(5)]));
        assert!(matches!(m.next(t0, t0), Next::Wait(_)), "stable: no further rejoin");
    }

    #[test]
    fn generation_errors_lose_partitions_without_revoking() {
        for (code, resets) in [(ResponseError::IllegalGeneration, false), (ResponseError::UnknownMemberId, true)] {
            let t0 = Instant::now();
            let mut m = stable(true, &[0], t0);
            m.heartbeat_done(Ok(heartbeat(Some(code))), t0);
            assert!(matches!(m.next(t0, t0), Next::Lose(p) if p == [tp(0)]), "{code:?}");
            assert_eq!(m.member_id.is_empty(), resets, "{code:?}");
            assert_eq!(m.generation, -1);
            assert!(matches!(m.next(t0, t0), Next::Join { .. }));
        }
    }

    #[test]
    fn sync_errors() {
        let t0 = Instant::now();
        let mut m = Member::new(config(false), t0);
        m.next(t0, t0);
        m.joined(Ok(join_ok("me", "other", 1)), t0);
        m.next(t0, t0);
        m.synced(Ok(SyncGroupResponse::default().with_error_code(ResponseError::RebalanceInProgress.code())), t0);
        assert!(matches!(m.next(t0, t0), Next::Join { .. }));
        m.joined(Ok(join_ok("me", "other", 2)), t0);
        m.next(t0, t0);
        // A coordinator that moved: back off, then join again.
        m.synced(Ok(SyncGroupResponse::default().with_error_code(ResponseError::NotCoordinator.code())), t0);
        assert!(matches!(m.next(t0, t0), Next::Wait(at) if at == t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_millis(100);
        assert!(matches!(m.next(later, later), Next::Join { .. }));
    }

    #[test]
    fn join_backoff_grows_and_resets() {
        let t0 = Instant::now();
        let mut m = Member::new(config(false), t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for _ in 0..6 {
            assert!(matches!(m.next(now, now), Next::Join { .. }));
            m.joined(Err(Error::Closed), now);
            match m.next(now, now) {
                Next::Wait(at) => {
                    delays.push((at - now).as_millis());
                    now = at;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn fatal_errors_stop_the_member() {
        for code in [
            ResponseError::FencedInstanceId,
            ResponseError::GroupAuthorizationFailed,
            ResponseError::InconsistentGroupProtocol,
        ] {
            let t0 = Instant::now();
            let mut m = Member::new(config(false), t0);
            m.next(t0, t0);
            m.joined(Ok(join_error(code, "")), t0);
            match m.next(t0, t0) {
                Next::Fail(error) => assert_eq!(error.code(), Some(code)),
                other => panic!("{code:?}: {other:?}"),
            }
        }
        // Fenced while stable: partitions lost, then the failure.
        let t0 = Instant::now();
        let mut m = stable(false, &[0], t0);
        m.heartbeat_done(Ok(heartbeat(Some(ResponseError::FencedInstanceId))), t0);
        assert!(matches!(m.next(t0, t0), Next::Lose(p) if p == [tp(0)]));
        assert!(matches!(m.next(t0, t0), Next::Fail(_)));
    }

    #[test]
    fn session_expiry_without_heartbeats_loses_partitions() {
        let t0 = Instant::now();
        let mut m = stable(false, &[0], t0);
        let mut now = t0;
        // The coordinator is unreachable: heartbeats fail, retried quickly.
        while now < t0 + Duration::from_secs(10) {
            now += Duration::from_secs(1);
            if let Next::Heartbeat = m.next(now, now) {
                m.heartbeat_done(Err(Error::Closed), now);
            }
        }
        now += Duration::from_secs(1);
        assert!(matches!(m.next(now, now), Next::Lose(p) if p == [tp(0)]));
        assert!(matches!(m.next(now, now), Next::Join { .. }));
    }

    #[test]
    fn max_poll_interval_leaves_then_rejoins_when_polled() {
        let t0 = Instant::now();
        let mut m = stable(false, &[0, 1], t0);
        let mut now = t0;
        // Heartbeats keep the session alive; the application never polls.
        loop {
            now += Duration::from_secs(3);
            match m.next(now, t0) {
                Next::Heartbeat => m.heartbeat_done(Ok(heartbeat(None)), now),
                Next::Report(Error::MaxPollIntervalExceeded { .. }) => break,
                other => panic!("{other:?}"),
            }
        }
        assert!(now > t0 + Duration::from_secs(60));
        assert!(matches!(m.next(now, t0), Next::Lose(p) if p.len() == 2));
        assert!(matches!(m.next(now, t0), Next::Leave { .. }));
        m.left();
        assert!(m.member_id.is_empty(), "a dynamic member rejoins as new");
        assert!(matches!(m.next(now, t0), Next::AwaitPoll));
        let polled = now + Duration::from_millis(1);
        assert!(matches!(m.next(polled, polled), Next::Join { .. }));
    }

    #[test]
    fn static_members_do_not_leave() {
        let t0 = Instant::now();
        let mut cfg = config(false);
        cfg.static_member = true;
        let mut m = Member::new(cfg, t0);
        m.next(t0, t0);
        m.joined(Ok(join_ok("me", "other", 1)), t0);
        m.next(t0, t0);
        m.synced(Ok(sync_ok(&[0])), t0);
        m.next(t0, t0);
        m.close();
        match m.next(t0, t0) {
            Next::Release(p) => m.revoked(&p),
            other => panic!("{other:?}"),
        }
        assert!(matches!(m.next(t0, t0), Next::Done), "static: no LeaveGroup");
        // A dynamic member leaves.
        let mut m = stable(false, &[0], t0);
        m.close();
        if let Next::Release(p) = m.next(t0, t0) {
            m.revoked(&p);
        }
        assert!(matches!(m.next(t0, t0), Next::Leave { .. }));
        m.left();
        assert!(matches!(m.next(t0, t0), Next::Done));
    }
}
