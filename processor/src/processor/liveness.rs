//! Whether a partition is stuck: the same oldest unfinished input seen for
//! longer than a threshold (pure: the caller passes the time).
//!
//! The run loop looks at each partition's lowest undone offset at every
//! store tick. While it stays the same, that record has been unfinished at
//! least since it was first seen there; a record that finishes moves it.
//! The age is a lower bound, short by at most one tick.

use std::time::Duration;

use tokio::time::Instant;

/// One partition's oldest unfinished input, and since when it is.
#[derive(Debug, Clone, Default)]
pub(crate) struct Liveness {
    oldest: Option<(i64, Instant)>,
    /// The oldest was reported stuck already.
    reported: bool,
}

/// What a look found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Nothing unfinished, or not for long.
    Live,
    /// `offset` has been unfinished for `age`, past the threshold; `new`
    /// the first time this offset is found so.
    Stuck { offset: i64, age: Duration, new: bool },
}

impl Liveness {
    /// Looks at the partition's lowest undone offset now.
    pub(crate) fn observe(&mut self, lowest_undone: Option<i64>, now: Instant, threshold: Duration) -> Seen {
        let Some(offset) = lowest_undone else {
            *self = Liveness::default();
            return Seen::Live;
        };
        let since = match self.oldest {
            Some((seen, since)) if seen == offset => since,
            _ => {
                *self = Liveness { oldest: Some((offset, now)), reported: false };
                now
            }
        };
        let age = now.saturating_duration_since(since);
        if age < threshold {
            return Seen::Live;
        }
        let new = !self.reported;
        self.reported = true;
        Seen::Stuck { offset, age, new }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_oldest_offset_past_the_threshold_is_stuck_once_then_still() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let threshold = Duration::from_millis(1000);
        let mut l = Liveness::default();
        assert_eq!(l.observe(Some(7), at(0), threshold), Seen::Live);
        assert_eq!(l.observe(Some(7), at(999), threshold), Seen::Live);
        assert_eq!(
            l.observe(Some(7), at(1000), threshold),
            Seen::Stuck { offset: 7, age: Duration::from_millis(1000), new: true }
        );
        assert_eq!(
            l.observe(Some(7), at(1500), threshold),
            Seen::Stuck { offset: 7, age: Duration::from_millis(1500), new: false },
            "reported once, still stuck"
        );
        assert_eq!(l.observe(Some(8), at(1600), threshold), Seen::Live, "7 finished: 8's clock starts now");
        assert_eq!(l.observe(None, at(3000), threshold), Seen::Live, "nothing unfinished");
        assert_eq!(l.observe(Some(8), at(3100), threshold), Seen::Live, "8 again, but seen anew");
    }
}
