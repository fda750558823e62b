//! One byte budget for what the processor holds (pure: no IO).
//!
//! Input records taken and not yet done, and outputs sent and not yet
//! delivered, are counted per input partition. Over the budget, the
//! partition holding the most (and not paused already) is paused, so the
//! consumer stops fetching it; once the total is back under the low mark
//! (three quarters of the budget), every paused partition resumes. The
//! loop itself never waits for room: what is in flight still completes.

use std::collections::{BTreeMap, BTreeSet};

/// What the budget says to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    pub(crate) pause: Vec<i32>,
    pub(crate) resume: Vec<i32>,
}

/// The budget and the partitions it paused.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    paused: BTreeSet<i32>,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Budget { limit: limit.max(1), paused: BTreeSet::new() }
    }

    /// The bytes it allows.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The partitions it paused.
    pub(crate) fn paused(&self) -> &BTreeSet<i32> {
        &self.paused
    }

    /// Forgets a partition given up (it is paused no more by us).
    pub(crate) fn forget(&mut self, partition: i32) {
        self.paused.remove(&partition);
    }

    /// Decides on the bytes each partition holds now.
    pub(crate) fn decide(&mut self, held: &BTreeMap<i32, usize>) -> Decision {
        let total: usize = held.values().sum();
        let mut decision = Decision::default();
        if total > self.limit {
            let most = held.iter().filter(|(p, _)| !self.paused.contains(p)).max_by_key(|(p, bytes)| (**bytes, -**p));
            if let Some((&partition, &bytes)) = most
                && bytes > 0
            {
                self.paused.insert(partition);
                decision.pause.push(partition);
            }
        } else if total <= self.limit / 4 * 3 && !self.paused.is_empty() {
            decision.resume = std::mem::take(&mut self.paused).into_iter().collect();
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_budget_the_biggest_pauses_and_under_the_low_mark_all_resume() {
        let mut budget = Budget::new(1000);
        let held = |pairs: &[(i32, usize)]| pairs.iter().copied().collect::<BTreeMap<_, _>>();
        assert_eq!(budget.decide(&held(&[(0, 400), (1, 500)])), Decision::default(), "within");
        assert_eq!(budget.decide(&held(&[(0, 400), (1, 700)])), Decision { pause: vec![1], resume: vec![] });
        assert_eq!(
            budget.decide(&held(&[(0, 450), (1, 700)])),
            Decision { pause: vec![0], resume: vec![] },
            "still over: the next biggest"
        );
        assert_eq!(budget.decide(&held(&[(0, 450), (1, 700)])), Decision::default(), "nothing left to pause");
        assert_eq!(budget.decide(&held(&[(0, 300), (1, 500)])), Decision::default(), "under, not under the low mark");
        assert_eq!(budget.decide(&held(&[(0, 300), (1, 400)])), Decision { pause: vec![], resume: vec![0, 1] });
        assert!(budget.paused().is_empty());
    }

    #[test]
    fn a_partition_given_up_is_forgotten() {
        let mut budget = Budget::new(10);
        let held: BTreeMap<i32, usize> = [(3, 20)].into_iter().collect();
        assert_eq!(budget.decide(&held).pause, [3]);
        budget.forget(3);
        assert!(budget.paused().is_empty());
    }
}
