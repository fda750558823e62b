//! Which input offsets of one partition are done, and how far the done
//! prefix reaches (pure: no IO).
//!
//! An input record is done when every output it produced was delivered
//! (or it produced none: filtered, skipped, or its dead letter was
//! delivered). Outputs go to several output partitions and complete in any
//! order, so offset 11 may be done while 9 is not; storing 12 then would
//! lose 9 on a crash. The tracker stores only the contiguous done prefix:
//! its watermark is the offset after the last record of that prefix, the
//! offset a restart resumes from.
//!
//! Records are begun in offset order (the consumer returns them so), when
//! they are taken; their outputs are known only when their call is done,
//! and calls may finish in any order (per-key or unordered processing).
//! Offsets the consumer never returns (transaction markers, compacted
//! records) are gaps the watermark steps over.

use std::collections::VecDeque;

/// The done-state of one input partition's records in flight.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    /// Begun records not yet retired, in offset order, with the number of
    /// outputs each still waits for (0: done, waiting for the ones before;
    /// [`RUNNING`]: its outputs are not known yet).
    pending: VecDeque<(i64, u32)>,
    /// The offset after the last record retired: what may be stored.
    watermark: Option<i64>,
    /// The highest offset started.
    last_started: Option<i64>,
}

/// A tracker was asked about an offset it does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// Offsets must be started in increasing order.
    #[error("offset {offset} started after {last}")]
    OutOfOrder {
        /// The offset started.
        offset: i64,
        /// The highest offset started before.
        last: i64,
    },
    /// A completion for an offset not in flight (or with no outputs left).
    #[error("offset {0} is not waiting for an output")]
    NotInFlight(i64),
    /// Outputs given for an offset not begun, or given twice.
    #[error("offset {0} is not running")]
    NotRunning(i64),
}

/// The count of a record begun whose outputs are not known yet.
const RUNNING: u32 = u32::MAX;

impl OffsetTracker {
    /// A tracker for a partition with nothing in flight.
    pub fn new() -> Self {
        OffsetTracker::default()
    }

    /// Records that `offset` was handed to the function and produced
    /// `outputs` outputs to wait for (0: done at once). Returns the new
    /// watermark when it moved.
    pub fn start(&mut self, offset: i64, outputs: u32) -> Result<Option<i64>, TrackerError> {
        self.begin(offset)?;
        self.emitted(offset, outputs)
    }

    /// Records that `offset` was taken: it holds the watermark back until
    /// [`Self::emitted`] gives its outputs and they are delivered.
    pub fn begin(&mut self, offset: i64) -> Result<(), TrackerError> {
        if let Some(last) = self.last_started
            && offset <= last
        {
            return Err(TrackerError::OutOfOrder { offset, last });
        }
        self.last_started = Some(offset);
        self.pending.push_back((offset, RUNNING));
        Ok(())
    }

    /// The call of a begun `offset` is done and produced `outputs` outputs
    /// to wait for (0: done now). Returns the new watermark when it moved.
    pub fn emitted(&mut self, offset: i64, outputs: u32) -> Result<Option<i64>, TrackerError> {
        let index = self.index(offset).ok_or(TrackerError::NotRunning(offset))?;
        let remaining = &mut self.pending[index].1;
        if *remaining != RUNNING {
            return Err(TrackerError::NotRunning(offset));
        }
        *remaining = outputs.min(RUNNING - 1);
        Ok(if index == 0 { self.retire() } else { None })
    }

    /// Where `offset` is among the pending records.
    fn index(&self, offset: i64) -> Option<usize> {
        // Mostly the oldest record (outputs delivered in order) or the
        // newest (a plain function's record, just begun).
        if self.pending.front().is_some_and(|(o, _)| *o == offset) {
            return Some(0);
        }
        if self.pending.back().is_some_and(|(o, _)| *o == offset) {
            return Some(self.pending.len() - 1);
        }
        self.pending.binary_search_by_key(&offset, |(o, _)| *o).ok()
    }

    /// One output of `offset` was delivered. Returns the new watermark when
    /// it moved.
    pub fn delivered(&mut self, offset: i64) -> Result<Option<i64>, TrackerError> {
        let index = self.index(offset).ok_or(TrackerError::NotInFlight(offset))?;
        let remaining = &mut self.pending[index].1;
        if *remaining == 0 || *remaining == RUNNING {
            return Err(TrackerError::NotInFlight(offset));
        }
        *remaining -= 1;
        Ok(if index == 0 { self.retire() } else { None })
    }

    /// Retires the done prefix; the new watermark if it moved.
    fn retire(&mut self) -> Option<i64> {
        let mut moved = None;
        while let Some(&(offset, 0)) = self.pending.front() {
            self.pending.pop_front();
            moved = Some(offset + 1);
        }
        if moved.is_some() {
            self.watermark = moved;
        }
        moved
    }

    /// The offset to store: after the last record of the done prefix.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// The highest offset begun.
    pub fn last_begun(&self) -> Option<i64> {
        self.last_started
    }

    /// Records begun and not retired (done or not).
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Outputs still awaited (of records whose call is done).
    pub fn outputs_awaited(&self) -> u64 {
        self.pending.iter().filter(|(_, n)| *n != RUNNING).map(|(_, n)| u64::from(*n)).sum()
    }

    /// Records begun whose outputs are not known yet.
    pub fn running(&self) -> usize {
        self.pending.iter().filter(|(_, n)| *n == RUNNING).count()
    }

    /// The lowest offset not done, if any.
    pub fn lowest_undone(&self) -> Option<i64> {
        self.pending.iter().find(|(_, n)| *n > 0).map(|(o, _)| *o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_completion_waits_for_the_earlier_offset() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.start(9, 1), Ok(None));
        assert_eq!(t.start(10, 0), Ok(None), "filtered, but 9 is still in flight");
        assert_eq!(t.start(11, 2), Ok(None));
        assert_eq!(t.delivered(11), Ok(None));
        assert_eq!(t.delivered(11), Ok(None), "11 is done; 9 is not");
        assert_eq!(t.watermark(), None);
        assert_eq!(t.lowest_undone(), Some(9));
        assert_eq!(t.delivered(9), Ok(Some(12)), "9 done: 9, 10 and 11 retire together");
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn gaps_are_stepped_over_and_misuse_is_an_error() {
        let mut t = OffsetTracker::new();
        assert_eq!(t.start(100, 0), Ok(Some(101)));
        assert_eq!(t.start(105, 0), Ok(Some(106)), "101..105 were never returned (markers, compaction)");
        assert_eq!(t.start(104, 1), Err(TrackerError::OutOfOrder { offset: 104, last: 105 }));
        assert_eq!(t.delivered(106), Err(TrackerError::NotInFlight(106)));
        t.start(107, 1).unwrap();
        t.start(108, 1).unwrap();
        t.delivered(108).unwrap();
        assert_eq!(t.delivered(108), Err(TrackerError::NotInFlight(108)), "only one output awaited");
        assert_eq!(t.outputs_awaited(), 1);
    }

    #[test]
    fn a_record_begun_holds_the_watermark_until_its_outputs_are_known_and_delivered() {
        let mut t = OffsetTracker::new();
        t.begin(0).unwrap();
        t.begin(1).unwrap();
        t.begin(2).unwrap();
        assert_eq!(t.delivered(1), Err(TrackerError::NotInFlight(1)), "1's outputs are not known yet");
        assert_eq!(t.emitted(2, 0), Ok(None), "2 finished first (another key)");
        assert_eq!(t.emitted(1, 1), Ok(None));
        assert_eq!(t.emitted(1, 1), Err(TrackerError::NotRunning(1)), "outputs given twice");
        assert_eq!(t.emitted(7, 1), Err(TrackerError::NotRunning(7)));
        assert_eq!((t.running(), t.outputs_awaited()), (1, 1));
        assert_eq!(t.emitted(0, 0), Ok(Some(1)), "0 done; 1 waits for its output");
        assert_eq!(t.delivered(1), Ok(Some(3)), "1 and 2 retire together");
        assert_eq!(t.in_flight(), 0);
    }

    proptest! {
        /// Random outputs per record, completed in a random order: the
        /// watermark never passes an undone offset, never goes back, and
        /// reaches the end once everything is delivered.
        #[test]
        fn watermark_is_the_done_prefix(
            records in proptest::collection::vec((1i64..4, 0u32..4), 1..60),
            order in proptest::collection::vec(any::<u32>(), 0..300),
        ) {
            let mut t = OffsetTracker::new();
            let mut offset = 0;
            let mut awaiting: Vec<i64> = Vec::new();
            let mut last_mark = None;
            for (step, outputs) in &records {
                offset += step;
                if let Some(mark) = t.start(offset, *outputs).unwrap() {
                    prop_assert!(Some(mark) > last_mark);
                    last_mark = Some(mark);
                }
                awaiting.extend(std::iter::repeat_n(offset, *outputs as usize));
            }
            let mut pick = order.into_iter();
            while !awaiting.is_empty() {
                let at = pick.next().unwrap_or(0) as usize % awaiting.len();
                let done = awaiting.swap_remove(at);
                if let Some(mark) = t.delivered(done).unwrap() {
                    prop_assert!(Some(mark) > last_mark, "the watermark went back");
                    last_mark = Some(mark);
                }
                if let (Some(mark), Some(undone)) = (t.watermark(), awaiting.iter().min()) {
                    prop_assert!(mark <= *undone, "watermark {} passed undone offset {}", mark, undone);
                }
            }
            prop_assert_eq!(t.watermark(), Some(offset + 1), "every done prefix is stored in the end");
            prop_assert_eq!(t.in_flight(), 0);
        }
    }
}
