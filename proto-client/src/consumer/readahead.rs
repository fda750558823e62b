//! How far a fetcher runs ahead of the application. Pure.
//!
//! The prefetch budget (`queued.max.messages.kbytes`) bounds what may be
//! buffered; it is not a target. What is worth buffering is what keeps the
//! reader from waiting, and the reader says when that was too little: it
//! counts the times it found nothing to read. So a fetcher keeps a target
//! of buffered bytes and, at each answer:
//!
//! ```text
//!  the reader waited since the last answer, and records came:  target × 2
//!  the reader did not wait:                                     target − 1/16
//!  (nothing came: the reader waits for the log, not for us)     unchanged
//!  within [floor, budget]; a fetch asks for target − buffered, or waits
//!  while that is under floor / 2
//! ```
//!
//! The target settles where the reader only now and then waits, whatever
//! the partition count, the broker's pace or the record size: a rate ×
//! round trip estimate overshoots when a bigger fetch takes longer (a
//! fetch of a thousand partitions from a slow broker), and grows the
//! buffer it measures.
//!
//! - The floor is one partition's fetch (`max.partition.fetch.bytes`):
//!   smaller fetches cost more requests than the memory they save.
//! - Budget bytes are what records take once decoded; a fetch's size is
//!   in bytes on the wire. Compressed data expands, so a fetch asks for
//!   what it reserved divided by the expansion last seen (rising at once,
//!   decaying by a quarter). Otherwise one fetch of zstd or lz4 data
//!   could bring many times its share.

#[derive(Debug, Clone)]
pub(crate) struct ReadAhead {
    floor: usize,
    ceiling: usize,
    target: usize,
    /// Budget bytes per byte on the wire, smoothed (at least 1).
    expansion: f64,
    /// The reader's wait count at the last answer.
    waits: u64,
}

impl ReadAhead {
    pub(crate) fn new(floor: usize, ceiling: usize) -> Self {
        let floor = floor.min(ceiling).max(1);
        ReadAhead { floor, ceiling, target: floor, expansion: 1.0, waits: 0 }
    }

    /// An answer arrived: `wire` bytes of record data became `decoded`
    /// budget bytes; the reader has waited `waits` times in all.
    pub(crate) fn sample(&mut self, waits: u64, wire: usize, decoded: usize) {
        if wire > 0 {
            let expansion = (decoded as f64 / wire as f64).max(1.0);
            self.expansion =
                if expansion >= self.expansion { expansion } else { self.expansion * 0.75 + expansion * 0.25 };
        }
        let waited = waits != self.waits;
        self.waits = waits;
        if waited && decoded > 0 {
            self.target = self.target.saturating_mul(2).min(self.ceiling);
        } else if !waited {
            self.target = (self.target - self.target / 16).max(self.floor);
        }
    }

    /// The budget bytes the next fetch may reserve with `buffered` bytes
    /// unread (0: wait for the reader).
    pub(crate) fn ask(&self, buffered: usize) -> usize {
        let room = self.target.saturating_sub(buffered);
        if room < self.floor / 2 { 0 } else { room }
    }

    /// The fetch size on the wire for `reserved` budget bytes, at most
    /// `fetch_max` (`fetch.max.bytes`), at least 1.
    pub(crate) fn fetch_bytes(&self, reserved: usize, fetch_max: usize) -> usize {
        ((reserved as f64 / self.expansion).ceil() as usize).clamp(1, fetch_max.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn it_starts_at_the_floor_and_asks_nothing_while_half_a_floor_is_buffered() {
        let ahead = ReadAhead::new(MIB, 64 * MIB);
        assert_eq!(ahead.target, MIB);
        assert_eq!(ahead.ask(0), MIB);
        assert_eq!(ahead.ask(MIB / 2), MIB / 2);
        assert_eq!(ahead.ask(MIB / 2 + 1), 0, "too little room to be worth a request");
        assert_eq!(ahead.fetch_bytes(MIB, 4096), 4096, "never past fetch.max.bytes");
        assert_eq!(ahead.fetch_bytes(MIB, 50 * MIB), MIB, "nothing seen expand yet");
    }

    #[test]
    fn a_reader_that_waits_doubles_the_target_up_to_the_budget() {
        let mut ahead = ReadAhead::new(MIB, 64 * MIB);
        let mut targets = Vec::new();
        for waits in 1..=8 {
            ahead.sample(waits, MIB, MIB);
            targets.push(ahead.target / MIB);
        }
        assert_eq!(targets, [2, 4, 8, 16, 32, 64, 64, 64]);
    }

    #[test]
    fn a_reader_that_never_waits_lets_it_shrink_to_the_floor() {
        let mut ahead = ReadAhead::new(MIB, 64 * MIB);
        for waits in 1..=6 {
            ahead.sample(waits, MIB, MIB);
        }
        assert_eq!(ahead.target, 64 * MIB);
        let mut targets = Vec::new();
        for _ in 0..80 {
            ahead.sample(6, MIB, MIB);
            targets.push(ahead.target);
        }
        assert!(targets.windows(2).all(|w| w[1] <= w[0]), "{targets:?}");
        assert_eq!(targets[0], 60 * MIB);
        assert_eq!(*targets.last().unwrap(), MIB);
    }

    #[test]
    fn waiting_for_a_log_with_nothing_new_changes_nothing() {
        let mut ahead = ReadAhead::new(MIB, 64 * MIB);
        ahead.sample(1, MIB, MIB);
        assert_eq!(ahead.target, 2 * MIB);
        for waits in 2..20 {
            ahead.sample(waits, 0, 0);
        }
        assert_eq!(ahead.target, 2 * MIB, "empty long polls while the reader waits");
    }

    #[test]
    fn compressed_answers_shrink_the_fetch_by_what_they_expand() {
        let mut ahead = ReadAhead::new(MIB, 64 * MIB);
        // 1 MiB on the wire became 10 MiB of records.
        ahead.sample(0, MIB, 10 * MIB);
        assert_eq!(ahead.fetch_bytes(10 * MIB, 50 * MIB), MIB);
        // Less expansion later is believed a quarter at a time.
        ahead.sample(0, MIB, MIB);
        assert_eq!(ahead.fetch_bytes(10 * MIB, 50 * MIB), (10.0 / 7.75 * MIB as f64).ceil() as usize);
        // Data that shrinks when decoded (never below 1).
        let mut plain = ReadAhead::new(MIB, 64 * MIB);
        plain.sample(0, 2 * MIB, MIB);
        assert_eq!(plain.fetch_bytes(MIB, 50 * MIB), MIB);
    }

    #[test]
    fn a_floor_above_the_budget_is_the_budget() {
        let ahead = ReadAhead::new(8 * MIB, MIB);
        assert_eq!(ahead.target, MIB);
        assert_eq!(ahead.ask(0), MIB);
    }

    proptest! {
        /// Whatever the answers: the target stays within [floor, budget]
        /// and a fetch never asks past the target or fetch.max.bytes.
        #[test]
        fn the_target_stays_within_its_bounds(
            floor in 1usize..(4 << 20),
            ceiling in 1usize..(128 << 20),
            samples in proptest::collection::vec((any::<bool>(), 0usize..(8 << 20), 0usize..(64 << 20)), 0..60),
            buffered in 0usize..(128 << 20),
            fetch_max in 1usize..(64 << 20),
        ) {
            let mut ahead = ReadAhead::new(floor, ceiling);
            let mut waits = 0;
            for (waited, wire, decoded) in samples {
                waits += u64::from(waited);
                ahead.sample(waits, wire, decoded);
                let target = ahead.target;
                prop_assert!(target >= floor.min(ceiling).max(1) && target <= ceiling);
            }
            let ask = ahead.ask(buffered);
            prop_assert!(buffered + ask <= ahead.target.max(buffered));
            let wire = ahead.fetch_bytes(ask, fetch_max);
            prop_assert!((1..=fetch_max).contains(&wire) && (ask == 0 || wire <= ask));
        }
    }
}
