//! Partition assignors, run by the group leader (pure).
//!
//! - `range`: per topic, contiguous ranges over the subscribed members in
//!   member order, the first `n % members` getting one more (Java's
//!   `RangeAssignor`, librdkafka's `range`).
//! - `roundrobin`: all partitions sorted by topic then partition, dealt in
//!   member order, skipping members not subscribed to the topic.
//! - `cooperative-sticky`: keeps what members own, deals the rest to the
//!   least loaded, then moves partitions from the most to the least loaded
//!   until no single move narrows the spread; a partition moving away from
//!   its owner is left out of this round so the owner revokes it first
//!   (KIP-429), and the follow-up rebalance hands it on.
//!
//! Member order is Java's: members with a `group.instance.id` first, by
//! that id; then the rest by member id. Two clients leading the same group
//! therefore compute the same range and round-robin assignments.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use super::protocol::Subscription;
use crate::TopicPartition;
use crate::consumer::AssignmentStrategy;

/// One member as the leader sees it in the JoinGroup response.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) instance_id: Option<String>,
    pub(crate) subscription: Subscription,
}

fn member_order(a: &Member, b: &Member) -> Ordering {
    match (&a.instance_id, &b.instance_id) {
        (Some(x), Some(y)) => x.cmp(y).then_with(|| a.id.cmp(&b.id)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.id.cmp(&b.id),
    }
}

/// Member id → its partitions (every member has an entry, maybe empty).
pub(crate) type Assignment = BTreeMap<String, Vec<TopicPartition>>;

/// Assigns the partitions of the subscribed topics (`partition_counts`:
/// topic → number of partitions; topics missing from it are skipped).
pub(crate) fn assign(
    strategy: AssignmentStrategy,
    members: &[Member],
    partition_counts: &BTreeMap<String, i32>,
) -> Assignment {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| member_order(a, b));
    let mut out = match strategy {
        AssignmentStrategy::Range => range(&sorted, partition_counts),
        AssignmentStrategy::RoundRobin => round_robin(&sorted, partition_counts),
        AssignmentStrategy::CooperativeSticky => cooperative_sticky(&sorted, partition_counts),
    };
    for list in out.values_mut() {
        list.sort();
    }
    out
}

fn empty(members: &[&Member]) -> Assignment {
    members.iter().map(|m| (m.id.clone(), Vec::new())).collect()
}

fn subscribes(member: &Member, topic: &str) -> bool {
    member.subscription.topics.iter().any(|t| t == topic)
}

fn range(members: &[&Member], counts: &BTreeMap<String, i32>) -> Assignment {
    let mut out = empty(members);
    for (topic, &count) in counts {
        let consumers: Vec<&&Member> = members.iter().filter(|m| subscribes(m, topic)).collect();
        if consumers.is_empty() || count <= 0 {
            continue;
        }
        let n = consumers.len() as i32;
        let (each, extra) = (count / n, count % n);
        for (i, member) in consumers.iter().enumerate() {
            let i = i as i32;
            let start = each * i + i.min(extra);
            let length = each + i32::from(i < extra);
            let list = out.get_mut(&member.id).expect("every member has an entry");
            list.extend((start..start + length).map(|p| TopicPartition::new(topic.as_str(), p)));
        }
    }
    out
}

fn round_robin(members: &[&Member], counts: &BTreeMap<String, i32>) -> Assignment {
    let mut out = empty(members);
    let mut next = 0usize;
    for (topic, &count) in counts {
        if !members.iter().any(|m| subscribes(m, topic)) {
            continue;
        }
        for partition in 0..count {
            while !subscribes(members[next % members.len()], topic) {
                next += 1;
            }
            let member = members[next % members.len()];
            next += 1;
            out.get_mut(&member.id)
                .expect("every member has an entry")
                .push(TopicPartition::new(topic.as_str(), partition));
        }
    }
    out
}

fn cooperative_sticky(members: &[&Member], counts: &BTreeMap<String, i32>) -> Assignment {
    let all: Vec<TopicPartition> = counts
        .iter()
        .filter(|(topic, _)| members.iter().any(|m| subscribes(m, topic)))
        .flat_map(|(topic, &count)| (0..count.max(0)).map(move |p| TopicPartition::new(topic.as_str(), p)))
        .collect();
    let exists = |tp: &TopicPartition| counts.get(&tp.topic).is_some_and(|&c| tp.partition >= 0 && tp.partition < c);

    // Claims: the highest generation wins; a tie between two members
    // leaves the partition to be dealt afresh.
    let mut owner: BTreeMap<&TopicPartition, (usize, i32)> = BTreeMap::new();
    let mut contested: BTreeSet<&TopicPartition> = BTreeSet::new();
    let mut claimed_by: BTreeMap<&TopicPartition, Vec<usize>> = BTreeMap::new();
    for (index, member) in members.iter().enumerate() {
        let generation = member.subscription.generation;
        for tp in &member.subscription.owned {
            claimed_by.entry(tp).or_default().push(index);
            if !exists(tp) || !subscribes(member, &tp.topic) {
                continue;
            }
            match owner.get(tp) {
                None => {
                    owner.insert(tp, (index, generation));
                }
                Some(&(other, g)) if other != index => match generation.cmp(&g) {
                    Ordering::Greater => {
                        owner.insert(tp, (index, generation));
                    }
                    Ordering::Equal => {
                        contested.insert(tp);
                    }
                    Ordering::Less => {}
                },
                Some(_) => {}
            }
        }
    }

    let mut held: Vec<BTreeSet<TopicPartition>> = vec![BTreeSet::new(); members.len()];
    for (tp, &(index, _)) in &owner {
        if !contested.contains(tp) {
            held[index].insert((*tp).clone());
        }
    }
    let kept: Vec<BTreeSet<TopicPartition>> = held.clone();

    // Deal the rest, partitions with the fewest candidates first, each to
    // the least loaded candidate.
    let candidates = |tp: &TopicPartition| -> Vec<usize> {
        members.iter().enumerate().filter(|(_, m)| subscribes(m, &tp.topic)).map(|(i, _)| i).collect()
    };
    let taken: BTreeSet<&TopicPartition> = held.iter().flatten().collect();
    let mut rest: Vec<(usize, &TopicPartition)> =
        all.iter().filter(|tp| !taken.contains(tp)).map(|tp| (candidates(tp).len(), tp)).collect();
    rest.sort();
    drop(taken);
    for (_, tp) in rest {
        if let Some(&to) = candidates(tp).iter().min_by_key(|&&i| (held[i].len(), i)) {
            held[to].insert(tp.clone());
        }
    }

    // Balance: move from the most loaded to a less loaded candidate while
    // that narrows the spread; newly dealt partitions move before kept ones.
    loop {
        let mut by_load: Vec<usize> = (0..members.len()).collect();
        by_load.sort_by_key(|&i| (std::cmp::Reverse(held[i].len()), i));
        let mut moved = None;
        'search: for &from in &by_load {
            let load = held[from].len();
            let (fresh, old): (Vec<&TopicPartition>, Vec<&TopicPartition>) =
                held[from].iter().partition(|tp| !kept[from].contains(*tp));
            for tp in fresh.into_iter().chain(old) {
                let best = candidates(tp).into_iter().filter(|&i| i != from).min_by_key(|&i| (held[i].len(), i));
                if let Some(to) = best
                    && held[to].len() + 1 < load
                {
                    moved = Some((tp.clone(), from, to));
                    break 'search;
                }
            }
        }
        let Some((tp, from, to)) = moved else { break };
        held[from].remove(&tp);
        held[to].insert(tp);
    }

    // A partition someone else still claims is withheld this round; its
    // owner revokes it and the next rebalance hands it over.
    let mut out = empty(members);
    for (index, partitions) in held.into_iter().enumerate() {
        let list = out.get_mut(&members[index].id).expect("every member has an entry");
        list.extend(
            partitions.into_iter().filter(|tp| claimed_by.get(tp).is_none_or(|who| who.iter().all(|&w| w == index))),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(id: &str, topics: &[&str]) -> Member {
        Member {
            id: id.into(),
            instance_id: None,
            subscription: Subscription {
                topics: topics.iter().map(|t| t.to_string()).collect(),
                owned: Vec::new(),
                generation: -1,
            },
        }
    }

    fn tps(list: &[(&str, i32)]) -> Vec<TopicPartition> {
        list.iter().map(|(t, p)| TopicPartition::new(*t, *p)).collect()
    }

    fn counts(list: &[(&str, i32)]) -> BTreeMap<String, i32> {
        list.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn range_matches_java() {
        // The RangeAssignor javadoc example: C0, C1; t0, t1 with 3 partitions.
        let members = [member("C1", &["t0", "t1"]), member("C0", &["t0", "t1"])];
        let out = assign(AssignmentStrategy::Range, &members, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(out["C0"], tps(&[("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)]));
        assert_eq!(out["C1"], tps(&[("t0", 2), ("t1", 2)]));
    }

    #[test]
    fn round_robin_matches_java() {
        let members = [member("C0", &["t0", "t1"]), member("C1", &["t0", "t1"])];
        let out = assign(AssignmentStrategy::RoundRobin, &members, &counts(&[("t0", 3), ("t1", 3)]));
        assert_eq!(out["C0"], tps(&[("t0", 0), ("t0", 2), ("t1", 1)]));
        assert_eq!(out["C1"], tps(&[("t0", 1), ("t1", 0), ("t1", 2)]));
        // Unequal subscriptions (the javadoc's second example).
        let members = [member("C0", &["t0"]), member("C1", &["t0", "t1"]), member("C2", &["t0", "t1", "t2"])];
        let out = assign(AssignmentStrategy::RoundRobin, &members, &counts(&[("t0", 1), ("t1", 2), ("t2", 3)]));
        assert_eq!(out["C0"], tps(&[("t0", 0)]));
        assert_eq!(out["C1"], tps(&[("t1", 0)]));
        assert_eq!(out["C2"], tps(&[("t1", 1), ("t2", 0), ("t2", 1), ("t2", 2)]));
    }

    #[test]
    fn static_members_sort_first_by_instance_id() {
        let mut a = member("zzz", &["t"]);
        a.instance_id = Some("a".into());
        let b = member("aaa", &["t"]);
        let out = assign(AssignmentStrategy::Range, &[b, a], &counts(&[("t", 3)]));
        assert_eq!(out["zzz"], tps(&[("t", 0), ("t", 1)]));
        assert_eq!(out["aaa"], tps(&[("t", 2)]));
    }

    #[test]
    fn cooperative_withholds_moving_partitions_then_hands_them_over() {
        // C0 owned all 4; C1 joins.
        let mut c0 = member("C0", &["t"]);
        c0.subscription.owned = tps(&[("t", 0), ("t", 1), ("t", 2), ("t", 3)]);
        c0.subscription.generation = 1;
        let c1 = member("C1", &["t"]);
        let first = assign(AssignmentStrategy::CooperativeSticky, &[c0.clone(), c1.clone()], &counts(&[("t", 4)]));
        assert_eq!(first["C0"].len(), 2, "C0 keeps two: {first:?}");
        assert!(first["C1"].is_empty(), "C1 waits until C0 revoked: {first:?}");
        // C0 revoked two; the follow-up rebalance gives them to C1.
        c0.subscription.owned = first["C0"].clone();
        c0.subscription.generation = 2;
        let second = assign(AssignmentStrategy::CooperativeSticky, &[c0, c1], &counts(&[("t", 4)]));
        assert_eq!(second["C0"], first["C0"]);
        assert_eq!(second["C1"].len(), 2);
    }

    #[test]
    fn cooperative_resolves_claims_by_generation() {
        let mut old = member("old", &["t"]);
        old.subscription.owned = tps(&[("t", 0)]);
        old.subscription.generation = 3;
        let mut new = member("new", &["t"]);
        new.subscription.owned = tps(&[("t", 0)]);
        new.subscription.generation = 5;
        let out = assign(AssignmentStrategy::CooperativeSticky, &[old, new], &counts(&[("t", 2)]));
        // `new` keeps t/0 in the end; `old` must revoke it first, so this
        // round it is withheld from both.
        assert!(!out["old"].contains(&TopicPartition::new("t", 0)));
        assert!(!out["new"].contains(&TopicPartition::new("t", 0)));
        assert_eq!(out.values().flatten().count(), 1);
    }

    /// A random group: `members` members over `topics` topics.
    fn group() -> impl Strategy<Value = (Vec<Member>, BTreeMap<String, i32>, bool)> {
        (1usize..7, proptest::collection::vec(1i32..13, 1..4), any::<bool>(), any::<u64>()).prop_map(
            |(n, partitions, uniform, seed)| {
                let topics: Vec<String> = (0..partitions.len()).map(|i| format!("t{i}")).collect();
                let mut bits = seed;
                let members = (0..n)
                    .map(|i| {
                        let mut chosen: Vec<&str> = topics
                            .iter()
                            .filter(|_| {
                                bits = bits.rotate_left(1);
                                uniform || bits & 1 == 1
                            })
                            .map(String::as_str)
                            .collect();
                        if chosen.is_empty() {
                            chosen.push(&topics[i % topics.len()]);
                        }
                        member(&format!("m{i:02}"), &chosen)
                    })
                    .collect();
                let counts = topics.into_iter().zip(partitions).collect();
                (members, counts, uniform)
            },
        )
    }

    fn check_valid(members: &[Member], counts: &BTreeMap<String, i32>, out: &Assignment) -> Result<(), TestCaseError> {
        let mut seen = BTreeSet::new();
        for m in members {
            for tp in &out[&m.id] {
                prop_assert!(subscribes(m, &tp.topic), "{} got {} without subscribing", m.id, tp);
                prop_assert!(seen.insert(tp.clone()), "{} assigned twice", tp);
            }
        }
        for (topic, &count) in counts {
            if members.iter().any(|m| subscribes(m, topic)) {
                for p in 0..count {
                    prop_assert!(seen.contains(&TopicPartition::new(topic.as_str(), p)), "{topic}/{p} unassigned");
                }
            }
        }
        Ok(())
    }

    fn spread(out: &Assignment) -> usize {
        let loads: Vec<usize> = out.values().map(Vec::len).collect();
        loads.iter().max().unwrap() - loads.iter().min().unwrap()
    }

    proptest! {
        #[test]
        fn every_partition_exactly_once_to_a_subscriber((members, counts, uniform) in group()) {
            for strategy in [AssignmentStrategy::Range, AssignmentStrategy::RoundRobin, AssignmentStrategy::CooperativeSticky] {
                let out = assign(strategy, &members, &counts);
                check_valid(&members, &counts, &out)?;
                if uniform && strategy != AssignmentStrategy::Range {
                    prop_assert!(spread(&out) <= 1, "{strategy:?} unbalanced: {out:?}");
                }
            }
        }

        /// Members join and leave a balanced cooperative group: after the
        /// two rounds of an incremental rebalance everything is assigned
        /// once and balanced, and members kept what their new share allows.
        #[test]
        fn cooperative_is_sticky_and_converges((members, counts, uniform) in group(), joiners in 0usize..3, leavers in 0usize..3) {
            let strategy = AssignmentStrategy::CooperativeSticky;
            let first = assign(strategy, &members, &counts);
            let mut next: Vec<Member> = members.iter().skip(leavers.min(members.len() - 1)).cloned().collect();
            for m in &mut next {
                m.subscription.owned = first[&m.id].clone();
                m.subscription.generation = 1;
            }
            for j in 0..joiners {
                let topics: Vec<&str> = members[0].subscription.topics.iter().map(String::as_str).collect();
                next.push(member(&format!("new{j}"), &topics));
            }
            let round = assign(strategy, &next, &counts);
            // Round one: nobody gets a partition another member still owns.
            for m in &next {
                for tp in &round[&m.id] {
                    let owned_elsewhere = next.iter().any(|o| o.id != m.id && o.subscription.owned.contains(tp));
                    prop_assert!(!owned_elsewhere, "{} given {} still owned elsewhere", m.id, tp);
                }
            }
            if uniform {
                let total: usize = counts.values().map(|&c| c as usize).sum();
                let floor = total / next.len();
                for m in &next {
                    let kept = round[&m.id].iter().filter(|tp| m.subscription.owned.contains(tp)).count();
                    prop_assert!(kept >= m.subscription.owned.len().min(floor), "{} kept {} of {:?}", m.id, kept, m.subscription.owned);
                }
            }
            // Round two: owners revoked; the assignment completes.
            for m in &mut next {
                m.subscription.owned = round[&m.id].clone();
                m.subscription.generation = 2;
            }
            let settled = assign(strategy, &next, &counts);
            check_valid(&next, &counts, &settled)?;
            if uniform {
                prop_assert!(spread(&settled) <= 1, "unbalanced: {settled:?}");
            }
            for m in &next {
                for tp in &m.subscription.owned {
                    prop_assert!(settled[&m.id].contains(tp), "{} lost {} it kept in round one", m.id, tp);
                }
            }
        }
    }
}
