//! Consumer groups against real brokers: members sharing partitions,
//! rebalances as members come and go, with an ownership checker.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rill_client::TopicPartition;
use rill_client::consumer::{AssignmentStrategy, Consumer, ConsumerConfig, Event, OffsetReset};
use rill_testkit::{BrokerKind, ClusterOptions, TestCluster, each_broker, unique_topic};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Writes `per_partition` records to each of `partitions` partitions,
/// values `p:i`, with librdkafka.
async fn fill(cluster: &TestCluster, topic: &str, partitions: i32, from: usize, per_partition: usize) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut pending = Vec::new();
    for partition in 0..partitions {
        for i in from..from + per_partition {
            let value = format!("{partition}:{i}");
            let record = FutureRecord::<(), String>::to(topic).partition(partition).payload(&value);
            pending.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
}

/// What every member saw, checked as it happens: a partition has at most
/// one owner at a time; a member receives records only of partitions it
/// owns; each partition's records arrive in order, none twice, none
/// skipped, across owners (revocations commit what was returned).
#[derive(Default)]
struct Checker {
    owners: BTreeMap<TopicPartition, String>,
    /// (partition, offset) → times delivered.
    seen: BTreeMap<(i32, i64), u32>,
    /// Partition → the next offset expected.
    next: BTreeMap<i32, i64>,
    /// Partitions assigned and not read from since.
    fresh: BTreeSet<i32>,
    /// A new owner may start before where the last one stopped (when the
    /// broker refused the commit on revoke).
    rewind_on_handover: bool,
    assignments: BTreeMap<String, BTreeSet<TopicPartition>>,
    violations: Vec<String>,
    revocations: BTreeMap<String, Vec<Vec<TopicPartition>>>,
}

impl Checker {
    fn assigned(&mut self, member: &str, partitions: &[TopicPartition]) {
        for tp in partitions {
            if let Some(other) = self.owners.insert(tp.clone(), member.to_owned()) {
                self.violations.push(format!("{member} assigned {tp} still owned by {other}"));
            }
            self.fresh.insert(tp.partition);
            self.assignments.entry(member.to_owned()).or_default().insert(tp.clone());
        }
    }

    fn gone(&mut self, member: &str, partitions: &[TopicPartition], revoked: bool) {
        for tp in partitions {
            if self.owners.get(tp).map(String::as_str) == Some(member) {
                self.owners.remove(tp);
            } else {
                self.violations.push(format!("{member} gave up {tp} it did not own"));
            }
            self.assignments.entry(member.to_owned()).or_default().remove(tp);
        }
        if revoked {
            self.revocations.entry(member.to_owned()).or_default().push(partitions.to_vec());
        }
    }

    fn record(&mut self, member: &str, partition: i32, offset: i64, topic: &str) {
        let tp = TopicPartition::new(topic, partition);
        if self.owners.get(&tp).map(String::as_str) != Some(member) {
            self.violations.push(format!("{member} got {tp}@{offset} without owning it"));
        }
        *self.seen.entry((partition, offset)).or_default() += 1;
        let expected = self.next.entry(partition).or_insert(0);
        let handover = self.fresh.remove(&partition);
        if offset != *expected && !(handover && self.rewind_on_handover && offset < *expected) {
            self.violations.push(format!("{member} got {tp}@{offset}, expected @{expected}"));
        }
        *expected = offset + 1;
    }

    /// Every revocation since `from` (per member, an index into its list)
    /// left out the partitions the member holds now.
    fn kept_never_revoked(&self, from: &BTreeMap<String, usize>) -> Result<(), String> {
        for (member, revocations) in &self.revocations {
            let held = self.assignments.get(member).cloned().unwrap_or_default();
            for revoked in &revocations[from.get(member).copied().unwrap_or(0)..] {
                if let Some(tp) = revoked.iter().find(|tp| held.contains(*tp)) {
                    return Err(format!("{member} had to revoke {tp}, which it kept: {revoked:?}"));
                }
            }
        }
        Ok(())
    }

    fn revocation_marks(&self) -> BTreeMap<String, usize> {
        self.revocations.iter().map(|(m, r)| (m.clone(), r.len())).collect()
    }

    fn complete(&self, partitions: i32, per_partition: i64) -> bool {
        (0..partitions).all(|p| (0..per_partition).all(|o| self.seen.contains_key(&(p, o))))
    }

    fn shares(&self) -> Vec<usize> {
        let mut shares: Vec<usize> = self.assignments.values().map(BTreeSet::len).filter(|&n| n > 0).collect();
        shares.sort();
        shares
    }
}

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// A member: consumes and reports to the checker until told to stop, then
/// closes (committing and leaving the group).
fn member(name: &str, config: ConsumerConfig, topic: &str, checker: Arc<Mutex<Checker>>) -> Running {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let name = name.to_owned();
    let topic = topic.to_owned();
    let task = tokio::spawn(async move {
        let mut consumer = Consumer::new(config).unwrap();
        consumer.subscribe(&[&topic]).unwrap();
        loop {
            let event = tokio::select! {
                event = consumer.next_event() => event.unwrap(),
                _ = stopped.wait_for(|s| *s) => break,
            };
            let mut checker = checker.lock().unwrap();
            match event {
                Event::Record(record) => checker.record(&name, record.partition, record.offset, &topic),
                Event::Assigned(partitions) => checker.assigned(&name, &partitions),
                Event::Revoked(revocation) => checker.gone(&name, revocation.partitions(), true),
                Event::Lost(partitions) => checker.gone(&name, &partitions, false),
                Event::Error { error, .. } => panic!("{name}: {error}"),
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
        let owned: Vec<TopicPartition> =
            checker.lock().unwrap().assignments.get(&name).cloned().unwrap_or_default().into_iter().collect();
        checker.lock().unwrap().gone(&name, &owned, false);
        consumer.close(Duration::from_secs(10)).await.unwrap();
    });
    Running { stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(20), self.task).await.expect("member closes").unwrap();
    }
}

fn group_config(cluster: &TestCluster, group: &str, strategy: AssignmentStrategy) -> ConsumerConfig {
    ConsumerConfig::new(cluster.client_config())
        .group(group)
        .offset_reset(OffsetReset::Earliest)
        // Tansu holds every JoinGroup for session.timeout.ms / 2.
        .session(Duration::from_secs(6), Duration::from_millis(500))
        .auto_commit(true, Duration::from_millis(500))
        .strategies(vec![strategy])
        .fetch_wait(1, Duration::from_millis(100))
}

async fn until(what: &str, deadline: Duration, checker: &Arc<Mutex<Checker>>, done: impl Fn(&Checker) -> bool) {
    let end = Instant::now() + deadline;
    loop {
        {
            let checker = checker.lock().unwrap();
            assert!(checker.violations.is_empty(), "violations: {:#?}", checker.violations);
            if done(&checker) {
                return;
            }
            if Instant::now() > end {
                panic!("{what}: not within {deadline:?}; shares {:?}, owners {:?}", checker.shares(), checker.owners);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn three_members_share_six_partitions(strategy: AssignmentStrategy) {
    common::logs();
    each_broker(ClusterOptions::default(), async |cluster| {
        let topic = unique_topic("group");
        let group = unique_topic("group-g");
        cluster.create_topic(&topic, 6).await.unwrap();
        fill(cluster, &topic, 6, 0, 200).await;
        // The mock refuses commits while a group prepares a rebalance
        // (Kafka takes them): an eager member's commit on revoke fails
        // there, and the next owner re-reads from the last auto-commit.
        let rewind = cluster.kind() == BrokerKind::Mock && !strategy.is_cooperative();
        let checker = Arc::new(Mutex::new(Checker { rewind_on_handover: rewind, ..Checker::default() }));
        let config = group_config(cluster, &group, strategy);

        let a = member("a", config.clone(), &topic, checker.clone());
        until("a gets all six", Duration::from_secs(30), &checker, |c| c.shares() == [6]).await;
        let marks = checker.lock().unwrap().revocation_marks();
        let b = member("b", config.clone(), &topic, checker.clone());
        let c = member("c", config.clone(), &topic, checker.clone());
        until("three members, two each", Duration::from_secs(60), &checker, |c| c.shares() == [2, 2, 2]).await;
        if strategy.is_cooperative() {
            // Incremental: `a` gave up only the four partitions that moved.
            checker.lock().unwrap().kept_never_revoked(&marks).unwrap();
        }
        until("every record", Duration::from_secs(30), &checker, |c| c.complete(6, 200)).await;

        // c leaves: a and b split its partitions, and read what is new.
        let marks = checker.lock().unwrap().revocation_marks();
        c.stop().await;
        fill(cluster, &topic, 6, 200, 100).await;
        until("two members, three each", Duration::from_secs(60), &checker, |c| c.shares() == [3, 3]).await;
        if strategy.is_cooperative() {
            checker.lock().unwrap().kept_never_revoked(&marks).unwrap();
        }
        until("every new record", Duration::from_secs(30), &checker, |c| c.complete(6, 300)).await;
        a.stop().await;
        b.stop().await;

        let checker = checker.lock().unwrap();
        assert!(checker.violations.is_empty(), "{:#?}", checker.violations);
        if !rewind {
            assert!(checker.seen.values().all(|&n| n == 1), "a record was delivered twice");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_members_share_and_rebalance() {
    three_members_share_six_partitions(AssignmentStrategy::Range).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooperative_members_share_and_rebalance() {
    three_members_share_six_partitions(AssignmentStrategy::CooperativeSticky).await;
}
