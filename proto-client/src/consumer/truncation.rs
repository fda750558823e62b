//! Log truncation detection (KIP-320), pure: what a leader's answer about
//! the epoch a partition was read in means for the consumer's position.
//!
//! Every record carries the epoch of the leader that appended it. When
//! leadership moves, the new leader's log may end an epoch earlier than the
//! old leader's did (an unclean election, or records that only the old
//! leader had): records the consumer already read are gone, and the offsets
//! after the divergence fill with other records. The consumer finds out in
//! two ways, and both end in a leader's (epoch, end offset): the largest
//! epoch it knows up to the one asked about, and where that epoch ends in
//! its log.
//! - **Validation**: after a leader change (or from a committed offset or a
//!   seek that carries an epoch), OffsetForLeaderEpoch asks the leader where
//!   the epoch of the fetch position ends.
//! - **Divergence**: from Fetch v12 on, each fetch names the epoch of the
//!   last record fetched (`last_fetched_epoch`); a leader whose log parts
//!   from it answers with `diverging_epoch` instead of records.
//!
//! [`judge`] reads such an answer against the fetch position; [`resolve`]
//! decides where the consumer goes on and whether the application must be
//! told (only when it was handed records that are no longer in the log).

use super::config::{OffsetReset, TruncationReset};

/// Where fetching stands in a partition: the next offset, and the leader
/// epoch of the record before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EpochPosition {
    pub(crate) offset: i64,
    pub(crate) leader_epoch: i32,
}

/// What a leader's (epoch, end offset) says of a fetch position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The leader's log holds everything before the position. Fetching
    /// goes on, naming `leader_epoch` as the last fetched epoch (the
    /// leader's, where it knows only an older one than ours: naming ours
    /// again would be answered with the same divergence).
    Valid { leader_epoch: i32 },
    /// The leader's log ends the position's epoch at `end_offset`, below
    /// the position: what was read from there on is gone.
    Truncated { end_offset: i64, leader_epoch: i32 },
    /// The leader knows no epoch up to the position's: where the logs part
    /// cannot be told.
    Unknown,
}

/// Reads a leader's answer (from OffsetForLeaderEpoch or a fetch's
/// diverging epoch) against the position it was asked about. As Java's
/// consumer: truncated exactly when the epoch ends below the position.
pub(crate) fn judge(position: EpochPosition, leader_epoch: i32, end_offset: i64) -> Verdict {
    if leader_epoch < 0 || end_offset < 0 {
        return Verdict::Unknown;
    }
    if end_offset < position.offset {
        Verdict::Truncated { end_offset, leader_epoch }
    } else {
        Verdict::Valid { leader_epoch: leader_epoch.min(position.leader_epoch) }
    }
}

/// Where the consumer goes on after a truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// At this offset (the divergence point, or the application's position
    /// when it was handed nothing that is gone).
    At(i64),
    /// Where `auto.offset.reset` says.
    Reset(OffsetReset),
    /// Nowhere until the application seeks the partition
    /// (`auto.offset.reset=error`).
    Stopped,
}

/// What to do about a verdict that is not [`Verdict::Valid`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Resolution {
    pub(crate) resume: Resume,
    /// The leader epoch of the record before the new position, when known.
    pub(crate) leader_epoch: Option<i32>,
    /// Whether the application was handed records that are gone, and must
    /// be told; the first offset gone (`None`: not known).
    pub(crate) report: Option<Option<i64>>,
}

/// Decides where to go on after a truncation of the log below the fetch
/// position. `consumed` is the application's position (the next offset it
/// gets, with the epoch of the record before it): records between it and
/// the fetch position were fetched but not yet handed out.
///
/// - A divergence at or above `consumed` took only records the application
///   never saw: fetching restarts at `consumed`, and nobody is told.
/// - Below it, the application saw records that are gone: it is told, and
///   the position moves to the divergence point (Java's consumer does this
///   whenever a reset policy is set), or to where `auto.offset.reset` says
///   with [`TruncationReset::AutoOffsetReset`]; with
///   `auto.offset.reset=error` the partition stops until the application
///   seeks (Java raises `LogTruncationException`).
/// - An unknown divergence goes by `auto.offset.reset`, as in Java.
pub(crate) fn resolve(
    verdict: Verdict,
    consumed: Consumed,
    reset: OffsetReset,
    policy: TruncationReset,
) -> Option<Resolution> {
    let by_policy = |report: Option<i64>, divergence: Option<(i64, i32)>| {
        let (resume, leader_epoch) = match (reset, policy, divergence) {
            (OffsetReset::Error, _, _) => (Resume::Stopped, None),
            (_, TruncationReset::Divergence, Some((offset, epoch))) => (Resume::At(offset), Some(epoch)),
            (reset, _, _) => (Resume::Reset(reset), None),
        };
        Resolution { resume, leader_epoch, report: Some(report) }
    };
    match verdict {
        Verdict::Valid { .. } => None,
        Verdict::Truncated { end_offset, .. } if end_offset >= consumed.offset => {
            Some(Resolution { resume: Resume::At(consumed.offset), leader_epoch: consumed.leader_epoch, report: None })
        }
        Verdict::Truncated { end_offset, leader_epoch } => {
            Some(by_policy(Some(end_offset), Some((end_offset, leader_epoch))))
        }
        Verdict::Unknown => Some(by_policy(None, None)),
    }
}

/// The application's position: the next offset it gets, and the leader
/// epoch of the record before it when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Consumed {
    pub(crate) offset: i64,
    pub(crate) leader_epoch: Option<i32>,
}

/// Whether a fetch position must be validated before fetching goes on:
/// its epoch is known and the partition's leader epoch moved past the one
/// it was last known good for. Without an epoch there is nothing to ask
/// about; without a leader epoch (Metadata before v7) nothing to compare.
pub(crate) fn needs_validation(fetch_epoch: Option<i32>, validated_for: i32, leader_epoch: i32) -> bool {
    fetch_epoch.is_some() && leader_epoch >= 0 && leader_epoch > validated_for
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT_15_EPOCH_0: EpochPosition = EpochPosition { offset: 15, leader_epoch: 0 };

    fn consumed(offset: i64) -> Consumed {
        Consumed { offset, leader_epoch: Some(0) }
    }

    #[test]
    fn an_epoch_that_ends_below_the_position_is_a_truncation() {
        assert_eq!(judge(AT_15_EPOCH_0, 0, 10), Verdict::Truncated { end_offset: 10, leader_epoch: 0 });
        assert_eq!(judge(AT_15_EPOCH_0, 0, 15), Verdict::Valid { leader_epoch: 0 }, "ends exactly at it");
        assert_eq!(judge(AT_15_EPOCH_0, 0, 40), Verdict::Valid { leader_epoch: 0 }, "the epoch goes on");
    }

    #[test]
    fn an_older_epoch_that_reaches_the_position_is_fetched_under_the_leaders_epoch() {
        let at_15_epoch_4 = EpochPosition { offset: 15, leader_epoch: 4 };
        // The leader never had epoch 4; its epoch 2 runs past 15.
        assert_eq!(judge(at_15_epoch_4, 2, 30), Verdict::Valid { leader_epoch: 2 });
        assert_eq!(judge(at_15_epoch_4, 2, 12), Verdict::Truncated { end_offset: 12, leader_epoch: 2 });
    }

    #[test]
    fn an_undefined_answer_is_unknown() {
        assert_eq!(judge(AT_15_EPOCH_0, -1, -1), Verdict::Unknown);
        assert_eq!(judge(AT_15_EPOCH_0, 0, -1), Verdict::Unknown);
        assert_eq!(judge(AT_15_EPOCH_0, -1, 20), Verdict::Unknown);
    }

    #[test]
    fn records_the_application_saw_that_are_gone_are_reported_and_it_goes_on_at_the_divergence() {
        let truncated = Verdict::Truncated { end_offset: 10, leader_epoch: 0 };
        let resolution = resolve(truncated, consumed(15), OffsetReset::Latest, TruncationReset::Divergence).unwrap();
        assert_eq!(resolution, Resolution { resume: Resume::At(10), leader_epoch: Some(0), report: Some(Some(10)) });
        let by_reset = resolve(truncated, consumed(15), OffsetReset::Earliest, TruncationReset::AutoOffsetReset);
        assert_eq!(
            by_reset.unwrap(),
            Resolution { resume: Resume::Reset(OffsetReset::Earliest), leader_epoch: None, report: Some(Some(10)) }
        );
    }

    #[test]
    fn without_a_reset_policy_the_partition_stops() {
        let truncated = Verdict::Truncated { end_offset: 10, leader_epoch: 0 };
        for policy in [TruncationReset::Divergence, TruncationReset::AutoOffsetReset] {
            let resolution = resolve(truncated, consumed(15), OffsetReset::Error, policy).unwrap();
            assert_eq!(resolution.resume, Resume::Stopped);
            assert_eq!(resolution.report, Some(Some(10)));
        }
    }

    #[test]
    fn a_divergence_among_records_not_yet_handed_out_refetches_them_silently() {
        // Fetched up to 15, the application is at 12, the leader's log ends at 13.
        let truncated = Verdict::Truncated { end_offset: 13, leader_epoch: 0 };
        for reset in [OffsetReset::Earliest, OffsetReset::Latest, OffsetReset::Error] {
            let resolution = resolve(truncated, consumed(12), reset, TruncationReset::Divergence).unwrap();
            assert_eq!(resolution, Resolution { resume: Resume::At(12), leader_epoch: Some(0), report: None });
        }
        let at_the_point = resolve(truncated, consumed(13), OffsetReset::Latest, TruncationReset::Divergence);
        assert_eq!(at_the_point.unwrap().report, None, "the application saw nothing from 13 on");
    }

    #[test]
    fn an_unknown_divergence_goes_by_auto_offset_reset() {
        let resolution = resolve(Verdict::Unknown, consumed(15), OffsetReset::Earliest, TruncationReset::Divergence);
        assert_eq!(
            resolution.unwrap(),
            Resolution { resume: Resume::Reset(OffsetReset::Earliest), leader_epoch: None, report: Some(None) }
        );
        let stopped = resolve(Verdict::Unknown, consumed(15), OffsetReset::Error, TruncationReset::Divergence);
        assert_eq!(stopped.unwrap().resume, Resume::Stopped);
        assert_eq!(
            resolve(Verdict::Valid { leader_epoch: 0 }, consumed(15), OffsetReset::Error, TruncationReset::Divergence),
            None
        );
    }

    #[test]
    fn validation_follows_leader_epoch_changes_of_positions_with_an_epoch() {
        assert!(needs_validation(Some(0), -1, 0), "a committed offset's epoch, never validated");
        assert!(needs_validation(Some(3), 3, 4), "the leader moved");
        assert!(!needs_validation(Some(3), 4, 4), "validated for this leader");
        assert!(!needs_validation(None, -1, 4), "no epoch to ask about");
        assert!(!needs_validation(Some(3), -1, -1), "the broker reports no leader epochs");
    }
}
