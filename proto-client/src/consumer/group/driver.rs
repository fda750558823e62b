//! The group driver: the task that runs a member against the group
//! coordinator and applies its partition changes to the consumer: a
//! classic [`Member`] (JoinGroup, SyncGroup, Heartbeat) or a KIP-848
//! [`ConsumerMember`] (ConsumerGroupHeartbeat), by `group.protocol`.
//!
//! It does what the member asks (`next`), one thing at a time,
//! except that heartbeats go on while the application handles a
//! revocation. Revocations reach the application as
//! [`Event::Revoked`](crate::consumer::Event::Revoked) in the record queue,
//! after the records it already holds; the driver waits for the
//! [`Revocation`] to be dropped, commits the stored offsets of those
//! partitions (with auto-commit), and only then gives them up.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, GroupId, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, SyncGroupRequest, SyncGroupResponse, TopicName,
    join_group_request::JoinGroupRequestProtocol,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::assignor::{self, Member as Subscriber};
use super::consumer_member::{Beat, ConsumerMember, ConsumerMemberConfig};
use super::member::{Member, MemberConfig, Next};
use super::protocol::{Subscription, encode_assignment, encode_subscription};
use crate::TopicPartition;
use crate::cluster::TopicScope;
use crate::consumer::coordinator::{Committer, GroupCoordinator};
use crate::consumer::engine::commit_stored;
use crate::consumer::state::{Lookup, PartitionState, Shared};
use crate::consumer::{AssignmentStrategy, Event, GroupProtocol, Revocation};
use crate::error::{Error, Result};

fn str(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

/// Notices whether the application still polls: a call into the read
/// side since the last look, or one waiting now, counts as polling now.
struct PollClock {
    seen: u64,
    at: Instant,
}

impl PollClock {
    fn last_poll(&mut self, shared: &Shared, now: Instant) -> Instant {
        let polls = shared.polls.load(Ordering::Relaxed);
        if polls != self.seen || shared.polling.load(Ordering::Acquire) {
            self.seen = polls;
            self.at = now;
        }
        self.at
    }
}

/// The member of either protocol.
#[derive(Debug)]
enum Membership {
    Classic(Member),
    Consumer(ConsumerMember),
}

impl Membership {
    fn next(&mut self, now: Instant, polled: Instant) -> Next {
        match self {
            Membership::Classic(m) => m.next(now, polled),
            Membership::Consumer(m) => m.next(now, polled),
        }
    }

    fn close(&mut self) {
        match self {
            Membership::Classic(m) => m.close(),
            Membership::Consumer(m) => m.close(),
        }
    }

    /// A JoinGroup or SyncGroup is under way: commits wait. Never for
    /// KIP-848, which holds no request.
    fn rebalancing(&self) -> bool {
        matches!(self, Membership::Classic(m) if m.rebalancing())
    }

    fn heartbeat_due(&self) -> Option<Instant> {
        match self {
            Membership::Classic(m) => m.heartbeat_due(),
            Membership::Consumer(m) => m.heartbeat_due(),
        }
    }

    fn revoked(&mut self, partitions: &[TopicPartition]) {
        match self {
            Membership::Classic(m) => m.revoked(partitions),
            Membership::Consumer(m) => m.revoked(partitions),
        }
    }

    fn commit_refused(&mut self, code: ResponseError, generation: i32, now: Instant) {
        match self {
            Membership::Classic(m) => m.commit_refused(code, generation, now),
            Membership::Consumer(m) => m.commit_refused(code, generation, now),
        }
    }

    fn owned(&self) -> Vec<TopicPartition> {
        match self {
            Membership::Classic(m) => m.owned(),
            Membership::Consumer(m) => m.owned(),
        }
    }

    /// Changes only when the member loses its place: a classic member's
    /// generation (a new one cannot come while it revokes, since it only
    /// heartbeats then; a lost one is -1), a KIP-848 member's fence count.
    fn place(&self) -> i64 {
        match self {
            Membership::Classic(m) => i64::from(m.generation),
            Membership::Consumer(m) => m.fences as i64,
        }
    }

    fn take_losing(&mut self) -> Vec<TopicPartition> {
        match self {
            Membership::Classic(m) => m.take_losing(),
            Membership::Consumer(m) => m.take_losing(),
        }
    }

    /// A heartbeat should go at once (a KIP-848 acknowledgement).
    fn heartbeat_urgent(&self) -> bool {
        matches!(self, Membership::Consumer(m) if m.heartbeat_urgent())
    }

    /// Who commits now: the member's generation (classic) or epoch
    /// (KIP-848, committed at OffsetCommit v9), or nobody outside a group.
    fn committer(&self, instance_id: Option<String>) -> Committer {
        let (generation, member_id, member_epoch) = match self {
            Membership::Classic(m) => (m.generation, &m.member_id, false),
            Membership::Consumer(m) => (if m.epoch > 0 { m.epoch } else { -1 }, &m.member_id, true),
        };
        if generation < 0 {
            return Committer::standalone();
        }
        Committer { generation, member_id: member_id.clone(), instance_id, member_epoch }
    }

    fn classic(&self) -> &Member {
        match self {
            Membership::Classic(m) => m,
            Membership::Consumer(_) => unreachable!("a classic request asked of a KIP-848 member"),
        }
    }

    fn classic_mut(&mut self) -> &mut Member {
        match self {
            Membership::Classic(m) => m,
            Membership::Consumer(_) => unreachable!("a classic request asked of a KIP-848 member"),
        }
    }

    fn consumer_mut(&mut self) -> &mut ConsumerMember {
        match self {
            Membership::Consumer(m) => m,
            Membership::Classic(_) => unreachable!("a KIP-848 heartbeat asked of a classic member"),
        }
    }
}

struct Driver {
    shared: Arc<Shared>,
    coordinator: Arc<GroupCoordinator>,
    member: Membership,
    topics: watch::Receiver<Vec<String>>,
    closing: watch::Receiver<bool>,
    metadata: watch::Receiver<Arc<crate::cluster::Metadata>>,
    /// As the leader: partition counts the assignment was computed from.
    assigned_counts: Option<BTreeMap<String, i32>>,
    /// Metadata refreshes for unknown assigned topic ids (KIP-848).
    id_refreshes: u64,
    poll: PollClock,
}

/// Runs the member until it closes or fails; `done` is set at the end.
pub(crate) async fn run(
    shared: Arc<Shared>,
    coordinator: Arc<GroupCoordinator>,
    topics: watch::Receiver<Vec<String>>,
    closing: watch::Receiver<bool>,
    done: watch::Sender<bool>,
) {
    let config = &shared.config;
    let now = Instant::now();
    let member = match config.group_protocol {
        GroupProtocol::Classic => {
            let strategies = &config.strategies;
            Membership::Classic(Member::new(
                MemberConfig {
                    // Cooperative only when every offered strategy is (as Java decides).
                    cooperative: strategies.iter().all(|s| s.is_cooperative()),
                    static_member: config.group_instance_id.is_some(),
                    session_timeout: config.session_timeout,
                    heartbeat_interval: config.heartbeat_interval,
                    max_poll_interval: config.max_poll_interval,
                    retry_backoff: config.client.retry_backoff,
                    retry_backoff_max: config.client.retry_backoff_max,
                },
                now,
            ))
        }
        GroupProtocol::Consumer => {
            let subscribed = topics.borrow().clone();
            shared.client.cluster().want_topics(subscribed.iter().map(String::as_str));
            let mut member = ConsumerMember::new(
                ConsumerMemberConfig {
                    instance_id: config.group_instance_id.clone(),
                    max_poll_interval: config.max_poll_interval,
                    server_assignor: config.remote_assignor.clone(),
                    heartbeat_interval: config.heartbeat_interval,
                    retry_backoff: config.client.retry_backoff,
                    retry_backoff_max: config.client.retry_backoff_max,
                    new_member_id: Box::new(new_member_id),
                },
                subscribed,
                now,
            );
            member.learn_topics(topic_ids(&shared.client.cluster().metadata()));
            Membership::Consumer(member)
        }
    };
    let metadata = shared.client.cluster().watch();
    let mut driver = Driver {
        member,
        shared: shared.clone(),
        coordinator,
        topics,
        closing,
        metadata,
        assigned_counts: None,
        id_refreshes: 0,
        poll: PollClock { seen: 0, at: now },
    };
    driver.run().await;
    shared.rebalancing.send_replace(false);
    shared.lock().committer = Committer::standalone();
    let _ = done.send(true);
}

impl Driver {
    fn group(&self) -> &str {
        self.shared.config.group_id.as_deref().unwrap_or_default()
    }

    async fn run(&mut self) {
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                // Dropped without `close`: the session times out.
                return;
            }
            if *self.closing.borrow() {
                self.member.close();
            }
            let now = Instant::now();
            self.take_refusals(now);
            let polled = self.poll.last_poll(&self.shared, now);
            let next = self.member.next(now, polled);
            self.shared.rebalancing.send_if_modified(|r| std::mem::replace(r, self.member.rebalancing()) != *r);
            match next {
                Next::Join { reason } => {
                    let closing = self.closing.clone();
                    let answer = tokio::select! {
                        answer = self.join(reason) => answer,
                        () = closed(closing) => continue,
                    };
                    self.member.classic_mut().joined(answer, Instant::now());
                }
                Next::Sync { leader } => {
                    let assignments = match leader {
                        Some((protocol, members)) => self.assign(&protocol, &members).await,
                        None => Vec::new(),
                    };
                    let answer = self.sync(assignments).await;
                    self.member.classic_mut().synced(answer, Instant::now());
                    self.set_committer();
                }
                Next::Heartbeat => self.heartbeat_now().await,
                Next::Beat(beat) => self.send_beat(beat).await,
                Next::RefreshMetadata => self.refresh_topic_ids().await,
                Next::Revoke(partitions) => self.revoke(partitions, true).await,
                Next::Release(partitions) => self.revoke(partitions, false).await,
                Next::Assign(partitions) => self.add(partitions),
                Next::Lose(partitions) => {
                    self.set_committer();
                    self.lose(partitions);
                }
                Next::Leave { reason } => {
                    self.leave(&reason).await;
                    self.member.classic_mut().left();
                    self.set_committer();
                }
                Next::Report(error) => self.shared.push_event(Event::Error { partition: None, error }),
                Next::Wait(until) => self.wait(Some(until)).await,
                Next::AwaitPoll => self.wait(Some(Instant::now() + Duration::from_millis(100))).await,
                Next::Fail(error) => {
                    warn!(target: "rill::cgrp", group = self.group(), %error, "group membership failed");
                    self.shared.push_event(Event::Error { partition: None, error });
                    return;
                }
                Next::Done => return,
            }
        }
    }

    /// Sleeps until `until`, or until the subscription, the metadata or
    /// the closing flag changes.
    async fn wait(&mut self, until: Option<Instant>) {
        let sleep = async {
            match until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep => {}
            changed = self.topics.changed() => {
                if changed.is_ok() {
                    let topics = self.topics.borrow_and_update().clone();
                    match &mut self.member {
                        Membership::Classic(member) => member.request_rejoin("subscription changed"),
                        Membership::Consumer(member) => {
                            self.shared.client.cluster().want_topics(topics.iter().map(String::as_str));
                            member.subscribe(topics);
                        }
                    }
                }
            }
            changed = self.closing.changed() => {
                if changed.is_err() {
                    self.member.close();
                }
            }
            changed = self.metadata.changed() => {
                if changed.is_ok() {
                    let metadata = self.metadata.borrow_and_update().clone();
                    match &mut self.member {
                        Membership::Classic(_) => self.check_partition_counts(&metadata),
                        Membership::Consumer(member) => member.learn_topics(topic_ids(&metadata)),
                    }
                }
            }
            () = self.shared.refused_notify.notified() => self.take_refusals(Instant::now()),
        }
    }

    /// Commits refused because the group moved on: the member acts now.
    fn take_refusals(&mut self, now: Instant) {
        let refused = std::mem::take(&mut *self.shared.refused.lock().unwrap_or_else(|p| p.into_inner()));
        for (code, generation) in refused {
            info!(target: "rill::cgrp", group = self.group(), %code, generation, "a commit was refused");
            self.member.commit_refused(code, generation, now);
        }
    }

    /// As the leader: a subscribed topic appeared, vanished or grew, so
    /// the assignment is stale.
    fn check_partition_counts(&mut self, metadata: &crate::cluster::Metadata) {
        let Some(counts) = &self.assigned_counts else { return };
        let changed = counts
            .iter()
            .any(|(topic, &count)| metadata.topics.get(topic).map_or(0, |t| t.partitions.len() as i32) != count);
        if changed {
            info!(target: "rill::cgrp", group = self.group(), "subscribed topics changed partitions: rebalancing");
            self.assigned_counts = None;
            self.member.classic_mut().request_rejoin("partition count changed");
        }
    }

    fn subscription(&self) -> Subscription {
        let cooperative = self.shared.config.strategies.iter().all(|s| s.is_cooperative());
        Subscription {
            topics: self.topics.borrow().clone(),
            owned: if cooperative { self.member.owned() } else { Vec::new() },
            generation: self.member.classic().generation,
        }
    }

    async fn join(&self, reason: String) -> Result<JoinGroupResponse> {
        let config = &self.shared.config;
        let metadata = encode_subscription(&self.subscription());
        let protocols: Vec<JoinGroupRequestProtocol> = config
            .strategies
            .iter()
            .map(|s| JoinGroupRequestProtocol::default().with_name(str(s.name())).with_metadata(metadata.clone()))
            .collect();
        let rebalance_timeout = config.max_poll_interval;
        debug!(target: "rill::cgrp", group = self.group(), member = %self.member.classic().member_id, %reason, "joining");
        let group = self.group().to_owned();
        let member_id = self.member.classic().member_id.clone();
        let response = self
            .coordinator
            .send(
                |version| {
                    let mut request = JoinGroupRequest::default()
                        .with_group_id(GroupId(str(&group)))
                        .with_session_timeout_ms(millis(config.session_timeout))
                        .with_member_id(str(&member_id))
                        .with_protocol_type(str("consumer"))
                        .with_protocols(protocols.clone());
                    if version >= 1 {
                        request.rebalance_timeout_ms = millis(rebalance_timeout);
                    }
                    if version >= 5 {
                        request.group_instance_id = config.group_instance_id.as_deref().map(str);
                    }
                    if version >= 8 {
                        request.reason = Some(str(&reason));
                    }
                    request
                },
                // The coordinator holds a JoinGroup until the rebalance ends.
                rebalance_timeout + Duration::from_secs(5),
            )
            .await?;
        self.coordinator.check_coordinator(response.error_code);
        Ok(response)
    }

    /// As the leader: the assignment of every member.
    async fn assign(&mut self, protocol: &str, members: &[Subscriber]) -> Vec<SyncGroupRequestAssignment> {
        let strategy = self.shared.config.strategies.iter().copied().find(|s| s.name() == protocol);
        let Some(strategy) = strategy.or_else(|| AssignmentStrategy::parse(protocol)) else {
            warn!(target: "rill::cgrp", protocol, "the coordinator chose a strategy this client lacks");
            return Vec::new();
        };
        let mut topics: Vec<String> = members.iter().flat_map(|m| m.subscription.topics.iter().cloned()).collect();
        topics.sort();
        topics.dedup();
        let cluster = self.shared.client.cluster();
        cluster.want_topics(topics.iter().map(String::as_str));
        let metadata = match cluster.refresh(TopicScope::Named(topics.clone())).await {
            Ok((metadata, _)) => metadata,
            Err(error) => {
                warn!(target: "rill::cgrp", %error, "metadata for the assignment failed; using what is known");
                cluster.metadata()
            }
        };
        let counts: BTreeMap<String, i32> = topics
            .iter()
            .map(|t| (t.clone(), metadata.topics.get(t).map_or(0, |info| info.partitions.len() as i32)))
            .collect();
        let assignment = assignor::assign(strategy, members, &counts);
        info!(target: "rill::cgrp", group = self.group(), strategy = strategy.name(), members = members.len(),
            partitions = counts.values().sum::<i32>(), "assigned as leader");
        self.assigned_counts = Some(counts);
        assignment
            .iter()
            .map(|(member, partitions)| {
                SyncGroupRequestAssignment::default()
                    .with_member_id(str(member))
                    .with_assignment(encode_assignment(partitions))
            })
            .collect()
    }

    async fn sync(&self, assignments: Vec<SyncGroupRequestAssignment>) -> Result<SyncGroupResponse> {
        let config = &self.shared.config;
        let protocol = self.protocol_name();
        let response = self
            .coordinator
            .send(
                |version| {
                    let member = self.member.classic();
                    let mut request = SyncGroupRequest::default()
                        .with_group_id(GroupId(str(self.group())))
                        .with_generation_id(member.generation)
                        .with_member_id(str(&member.member_id))
                        .with_assignments(assignments.clone());
                    if version >= 3 {
                        request.group_instance_id = config.group_instance_id.as_deref().map(str);
                    }
                    if version >= 5 {
                        request.protocol_type = Some(str("consumer"));
                        request.protocol_name = protocol.as_deref().map(str);
                    }
                    request
                },
                config.client.request_timeout.max(config.max_poll_interval),
            )
            .await?;
        self.coordinator.check_coordinator(response.error_code);
        Ok(response)
    }

    fn protocol_name(&self) -> Option<String> {
        self.member.classic().protocol.clone()
    }

    async fn heartbeat(&self) -> Result<HeartbeatResponse> {
        let config = &self.shared.config;
        let response = self
            .coordinator
            .send(
                |version| {
                    let member = self.member.classic();
                    let mut request = HeartbeatRequest::default()
                        .with_group_id(GroupId(str(self.group())))
                        .with_generation_id(member.generation)
                        .with_member_id(str(&member.member_id));
                    if version >= 3 {
                        request.group_instance_id = config.group_instance_id.as_deref().map(str);
                    }
                    request
                },
                config.client.request_timeout.min(config.session_timeout),
            )
            .await?;
        self.coordinator.check_coordinator(response.error_code);
        Ok(response)
    }

    async fn leave(&self, reason: &str) {
        let member_id = self.member.classic().member_id.clone();
        if member_id.is_empty() {
            return;
        }
        let config = &self.shared.config;
        info!(target: "rill::cgrp", group = self.group(), member = %member_id, reason, "leaving the group");
        let result = self
            .coordinator
            .send(
                |version| {
                    let mut request = LeaveGroupRequest::default().with_group_id(GroupId(str(self.group())));
                    if version >= 3 {
                        let mut identity = MemberIdentity::default().with_member_id(str(&member_id));
                        identity.group_instance_id = config.group_instance_id.as_deref().map(str);
                        if version >= 5 {
                            identity.reason = Some(str(reason));
                        }
                        request.members = vec![identity];
                    } else {
                        request.member_id = str(&member_id);
                    }
                    request
                },
                config.client.request_timeout,
            )
            .await;
        if let Err(error) = result {
            debug!(target: "rill::cgrp", %error, "LeaveGroup failed; the session will time out");
        }
    }

    fn set_committer(&self) {
        let committer = self.member.committer(self.shared.config.group_instance_id.clone());
        self.shared.lock().committer = committer;
    }

    /// A heartbeat of either protocol, now, with its answer reported.
    async fn heartbeat_now(&mut self) {
        match &mut self.member {
            Membership::Classic(_) => {
                let answer = self.heartbeat().await;
                self.member.classic_mut().heartbeat_done(answer, Instant::now());
            }
            Membership::Consumer(member) => {
                let beat = member.beat(Instant::now());
                self.send_beat(beat).await;
            }
        }
    }

    /// Sends a KIP-848 heartbeat, reports its answer, and commits from
    /// then on with the epoch it brought.
    async fn send_beat(&mut self, beat: Beat) {
        let answer = self.beat(&beat).await;
        self.member.consumer_mut().heartbeat_done(answer, Instant::now());
        self.set_committer();
    }

    /// One ConsumerGroupHeartbeat (KIP-848).
    async fn beat(&self, beat: &Beat) -> Result<ConsumerGroupHeartbeatResponse> {
        let config = &self.shared.config;
        let topics = beat.topics.as_ref().map(|topics| topics.iter().map(|t| TopicName(str(t))).collect::<Vec<_>>());
        let owned = beat.owned.as_ref().map(|owned| {
            owned
                .iter()
                .map(|(id, partitions)| {
                    TopicPartitions::default().with_topic_id(*id).with_partitions(partitions.clone())
                })
                .collect::<Vec<_>>()
        });
        let response = self
            .coordinator
            .send(
                |version| {
                    let mut request = ConsumerGroupHeartbeatRequest::default()
                        .with_group_id(GroupId(str(self.group())))
                        .with_member_id(str(&beat.member_id))
                        .with_member_epoch(beat.epoch)
                        .with_instance_id(beat.instance_id.as_deref().map(str))
                        .with_rebalance_timeout_ms(beat.rebalance_timeout_ms)
                        .with_subscribed_topic_names(topics.clone())
                        .with_server_assignor(beat.server_assignor.as_deref().map(str))
                        .with_topic_partitions(owned.clone());
                    if version == 0 && beat.epoch == 0 {
                        // Before KIP-1082 (v1) the coordinator names a
                        // joining member.
                        request.member_id = StrBytes::new();
                    }
                    if version >= 1 {
                        // Names and a regex go together (librdkafka's mock
                        // aborts on one without the other); "" is none.
                        request.subscribed_topic_regex = topics.as_ref().map(|_| StrBytes::new());
                    }
                    request
                },
                config.client.request_timeout,
            )
            .await?;
        self.coordinator.check_coordinator(response.error_code);
        Ok(response)
    }

    /// Assigned topic ids the member cannot name: the subscribed topics'
    /// metadata, fetched now; every third time all topics' (an assigned
    /// topic may be one the subscription does not name any more).
    async fn refresh_topic_ids(&mut self) {
        let topics = self.topics.borrow().clone();
        let cluster = self.shared.client.cluster();
        cluster.want_topics(topics.iter().map(String::as_str));
        self.id_refreshes += 1;
        let scope = if self.id_refreshes.is_multiple_of(3) {
            warn!(target: "rill::cgrp", group = self.group(), "assigned topic ids still unknown; asking for all topics");
            TopicScope::All
        } else {
            TopicScope::Named(topics)
        };
        let metadata = match cluster.refresh(scope).await {
            Ok((metadata, _)) => metadata,
            Err(error) => {
                debug!(target: "rill::cgrp", %error, "metadata for the assignment failed");
                return;
            }
        };
        self.member.consumer_mut().learn_topics(topic_ids(&metadata));
    }

    /// New partitions: each starts at its committed offset.
    fn add(&self, partitions: Vec<TopicPartition>) {
        let mut state = self.shared.lock();
        for tp in &partitions {
            state
                .partitions
                .entry(tp.clone())
                .or_insert_with(|| PartitionState::new(Arc::from(tp.topic.as_str()), Lookup::Committed));
        }
        drop(state);
        info!(target: "rill::cgrp", group = self.group(), partitions = ?partitions, "assigned");
        self.shared.push_event(Event::Assigned(partitions));
        self.shared.changed.notify_waiters();
    }

    fn remove(&self, partitions: &[TopicPartition]) {
        let mut state = self.shared.lock();
        for tp in partitions {
            if let Some(ps) = state.partitions.remove(tp) {
                ps.epoch.fetch_add(1, Ordering::AcqRel);
            }
        }
        drop(state);
        self.shared.purge(partitions);
        self.shared.changed.notify_waiters();
    }

    fn lose(&self, partitions: Vec<TopicPartition>) {
        warn!(target: "rill::cgrp", group = self.group(), partitions = ?partitions, "partitions lost");
        self.remove(&partitions);
        self.shared.push_event(Event::Lost(partitions));
    }

    /// Stops the partitions, lets the application finish with them (when
    /// `tell`), commits what it stored, and gives them up. Heartbeats go on
    /// meanwhile.
    async fn revoke(&mut self, partitions: Vec<TopicPartition>, tell: bool) {
        self.shared.stop_partitions(&partitions);
        let place = self.member.place();
        if tell {
            let (done, acknowledged) = oneshot::channel();
            self.shared.push_event(Event::Revoked(Revocation::new(partitions.clone(), done)));
            let deadline = Instant::now() + self.shared.config.max_poll_interval;
            tokio::pin!(acknowledged);
            let mut closing = self.closing.clone();
            let mut closing_seen = false;
            loop {
                if self.shared.closed.load(Ordering::Acquire) {
                    // Dropped without `close`: nobody will acknowledge.
                    break;
                }
                let mut heartbeat = self.member.heartbeat_due().unwrap_or(deadline).min(deadline);
                if self.member.heartbeat_urgent() {
                    heartbeat = Instant::now();
                }
                tokio::select! {
                    _ = &mut acknowledged => break,
                    changed = closing.changed(), if !closing_seen => {
                        if changed.is_err() || *closing.borrow_and_update() {
                            // A fence from now on ends the member; it does
                            // not rejoin in the middle of closing.
                            closing_seen = true;
                            self.member.close();
                        }
                    }
                    () = tokio::time::sleep_until(heartbeat) => {
                        if Instant::now() >= deadline {
                            warn!(target: "rill::cgrp", "the application did not finish revoking within max.poll.interval.ms");
                            break;
                        }
                        self.heartbeat_now().await;
                        // Partitions lost meanwhile (fenced) go now: they
                        // must not be read or committed while this
                        // revocation waits.
                        let lost = self.member.take_losing();
                        if !lost.is_empty() {
                            self.set_committer();
                            self.lose(lost);
                        }
                    }
                }
            }
        }
        if self.member.place() != place {
            // The member lost its place while the application revoked: the
            // partitions may be someone else's already, and a commit in a
            // new generation or epoch would move their offsets back.
            warn!(target: "rill::cgrp", group = self.group(), partitions = ?partitions,
                "the member was fenced during the revocation; not committing it");
        } else if self.shared.config.auto_commit {
            let mut result = commit_stored(&self.shared, &self.coordinator, Some(&partitions)).await;
            if result.as_ref().err().and_then(Error::code) == Some(ResponseError::StaleMemberEpoch) {
                // The epoch moved on the broker (an answer this member did
                // not see): learn it, then commit once more if still the
                // same member.
                self.heartbeat_now().await;
                if self.member.place() == place {
                    result = commit_stored(&self.shared, &self.coordinator, Some(&partitions)).await;
                }
            }
            if let Err(error) = result {
                warn!(target: "rill::cgrp", %error, "committing revoked partitions failed");
            }
        }
        info!(target: "rill::cgrp", group = self.group(), partitions = ?partitions, "revoked");
        self.remove(&partitions);
        self.member.revoked(&partitions);
    }
}

/// Topic ids and names of a metadata snapshot.
fn topic_ids(metadata: &crate::cluster::Metadata) -> Vec<(uuid::Uuid, String)> {
    metadata.topics.values().map(|t| (t.id, t.name.clone())).collect()
}

/// A member id of 16 random bytes, URL-safe base64 (22 characters), as
/// Java and librdkafka make them (KIP-1082).
fn new_member_id() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::net::random_bytes::<16>())
}

async fn closed(mut closing: watch::Receiver<bool>) {
    let _ = closing.wait_for(|c| *c).await;
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}
