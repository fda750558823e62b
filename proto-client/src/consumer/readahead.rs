//! How far a fetcher runs ahead of the application. Pure: `now` passed in.
//!
//! The prefetch budget (`queued.max.messages.kbytes`) bounds what may be
//! buffered; it is not a target. A reader is kept fed when what is
//! buffered as a fetch goes out lasts until its answer arrives, so a
//! fetcher aims at twice what the reader takes in one fetch round trip:
//!
//! ```text
//!  target = 2 × rate × round trip,   clamped to [floor, budget]
//!  ask    = target − buffered        (nothing when under floor / 2)
//! ```
//!
//! - `rate` is what the reader takes (bytes of dropped chunks per second),
//!   sampled between answers. It rises at once and decays by a quarter a
//!   sample, so a burst of reading is served at once and an idle reader
//!   lets the buffer shrink back to the floor.
//! - `round trip` is sampled on answers that held records; an empty long
//!   poll says how long the broker waited, not how long data takes.
//! - While the reader is starved, it takes all that arrives, so the
//!   target doubles each round trip until the reader, not the fetch, is
//!   the bottleneck (as TCP's slow start).
//! - The floor is one partition's fetch (`max.partition.fetch.bytes`):
//!   smaller fetches cost more requests than the memory they save.
//! - Budget bytes are what records take once decoded; a fetch's size is
//!   in bytes on the wire. Compressed data expands, so a fetch asks for
//!   what it reserved divided by the expansion last seen (rising at once,
//!   decaying by a quarter). Otherwise one fetch of zstd or lz4 data
//!   could bring many times its share.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub(crate) struct ReadAhead {
    floor: usize,
    ceiling: usize,
    /// Bytes per second the reader takes, smoothed.
    rate: f64,
    round_trip: Duration,
    /// Budget bytes per byte on the wire, smoothed (at least 1).
    expansion: f64,
    /// When the reader was last sampled, and what it had taken by then.
    last: Option<(Instant, u64)>,
}

impl ReadAhead {
    pub(crate) fn new(floor: usize, ceiling: usize) -> Self {
        let floor = floor.min(ceiling).max(1);
        ReadAhead { floor, ceiling, rate: 0.0, round_trip: Duration::ZERO, expansion: 1.0, last: None }
    }

    /// An answer arrived at `now` after `round_trip` (`None` when it held no
    /// records): `wire` bytes of record data became `decoded` budget bytes;
    /// the reader had taken `taken` bytes in all by then.
    pub(crate) fn sample(
        &mut self,
        now: Instant,
        taken: u64,
        round_trip: Option<Duration>,
        wire: usize,
        decoded: usize,
    ) {
        if wire > 0 {
            let expansion = (decoded as f64 / wire as f64).max(1.0);
            self.expansion =
                if expansion >= self.expansion { expansion } else { self.expansion * 0.75 + expansion * 0.25 };
        }
        if let Some((then, before)) = self.last {
            let elapsed = now.saturating_duration_since(then).as_secs_f64();
            if elapsed > 0.0 {
                let rate = taken.saturating_sub(before) as f64 / elapsed;
                self.rate = if rate >= self.rate { rate } else { self.rate * 0.75 + rate * 0.25 };
            }
        }
        self.last = Some((now, taken));
        if let Some(round_trip) = round_trip {
            self.round_trip =
                if round_trip >= self.round_trip { round_trip } else { (self.round_trip * 3 + round_trip) / 4 };
        }
    }

    /// The bytes worth having buffered when a fetch goes out.
    pub(crate) fn target(&self) -> usize {
        let wanted = 2.0 * self.rate * self.round_trip.as_secs_f64();
        // A float beyond usize saturates in the cast.
        (wanted as usize).clamp(self.floor, self.ceiling)
    }

    /// The budget bytes the next fetch may reserve with `buffered` bytes
    /// unread (0: wait for the reader).
    pub(crate) fn ask(&self, buffered: usize) -> usize {
        let room = self.target().saturating_sub(buffered);
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
        assert_eq!(ahead.target(), MIB);
        assert_eq!(ahead.ask(0), MIB);
        assert_eq!(ahead.ask(MIB / 2), MIB / 2);
        assert_eq!(ahead.ask(MIB / 2 + 1), 0, "too little room to be worth a request");
        assert_eq!(ahead.fetch_bytes(MIB, 4096), 4096, "never past fetch.max.bytes");
        assert_eq!(ahead.fetch_bytes(MIB, 50 * MIB), MIB, "nothing seen expand yet");
    }

    #[test]
    fn a_starved_reader_doubles_the_target_each_round_trip_up_to_the_budget() {
        // The reader takes everything each fetch brings; a fetch takes 5 ms.
        let mut ahead = ReadAhead::new(MIB, 64 * MIB);
        let start = Instant::now();
        let round_trip = Duration::from_millis(5);
        let mut taken = 0u64;
        let mut targets = Vec::new();
        for step in 0..12u32 {
            let got = ahead.ask(0);
            taken += got as u64;
            ahead.sample(start + round_trip * (step + 1), taken, Some(round_trip), 0, 0);
            targets.push(ahead.target() / MIB);
        }
        assert_eq!(targets[..8], [1, 2, 4, 8, 16, 32, 64, 64]);
        assert_eq!(*targets.last().unwrap(), 64, "the budget bounds it");
    }

    #[test]
    fn a_steady_reader_gets_two_round_trips_of_what_it_reads() {
        // 100 MB/s, answers every 10 ms: 2 × 1 MB buffered.
        let mut ahead = ReadAhead::new(64 * 1024, 64 * MIB);
        let start = Instant::now();
        for step in 0..50u32 {
            let now = start + Duration::from_millis(10) * step;
            ahead.sample(now, u64::from(step) * 1_000_000, Some(Duration::from_millis(10)), 0, 0);
        }
        assert!((1_990_000..=2_010_000).contains(&ahead.target()), "{}", ahead.target());
    }

    #[test]
    fn an_idle_reader_lets_it_shrink_to_the_floor_and_empty_polls_do_not_grow_it() {
        let mut ahead = ReadAhead::new(MIB, 64 * MIB);
        let start = Instant::now();
        let mut taken = 0;
        for step in 0..10u32 {
            taken += 40 * MIB as u64;
            ahead.sample(start + Duration::from_millis(10) * step, taken, Some(Duration::from_millis(10)), 0, 0);
        }
        assert_eq!(ahead.target(), 64 * MIB, "4 GiB/s × 10 ms × 2 is past the budget");
        // The reader stops; long polls come back empty after 500 ms.
        let mut now = start + Duration::from_millis(100);
        let mut targets = Vec::new();
        for _ in 0..20 {
            now += Duration::from_millis(500);
            ahead.sample(now, taken, None, 0, 0);
            targets.push(ahead.target());
        }
        assert!(targets.windows(2).all(|w| w[1] <= w[0]), "{targets:?}");
        assert_eq!(*targets.last().unwrap(), MIB, "{targets:?}");
    }

    #[test]
    fn a_floor_above_the_budget_is_the_budget() {
        let ahead = ReadAhead::new(8 * MIB, MIB);
        assert_eq!(ahead.target(), MIB);
        assert_eq!(ahead.ask(0), MIB);
    }

    #[test]
    fn compressed_answers_shrink_the_fetch_by_what_they_expand() {
        let mut ahead = ReadAhead::new(MIB, 64 * MIB);
        let start = Instant::now();
        // 1 MiB on the wire became 10 MiB of records.
        ahead.sample(start, 0, Some(Duration::from_millis(5)), MIB, 10 * MIB);
        assert_eq!(ahead.fetch_bytes(10 * MIB, 50 * MIB), MIB);
        // Less expansion later is believed a quarter at a time.
        ahead.sample(start + Duration::from_millis(5), 0, None, MIB, MIB);
        assert_eq!(ahead.fetch_bytes(10 * MIB, 50 * MIB), (10.0 / 7.75 * MIB as f64).ceil() as usize);
        // Data that shrinks when decoded (never below 1).
        let mut plain = ReadAhead::new(MIB, 64 * MIB);
        plain.sample(start, 0, None, 2 * MIB, MIB);
        assert_eq!(plain.fetch_bytes(MIB, 50 * MIB), MIB);
    }

    proptest! {
        /// Whatever the samples: the target stays within [floor, budget]
        /// and a fetch never asks past the target or fetch.max.bytes.
        #[test]
        fn the_target_stays_within_its_bounds(
            floor in 1usize..(4 << 20),
            ceiling in 1usize..(128 << 20),
            samples in proptest::collection::vec(
                (0u64..2_000, 0u64..(64 << 20), proptest::option::of(0u64..2_000), 0usize..(8 << 20), 0usize..(64 << 20)),
                0..40,
            ),
            buffered in 0usize..(128 << 20),
            fetch_max in 1usize..(64 << 20),
        ) {
            let mut ahead = ReadAhead::new(floor, ceiling);
            let start = Instant::now();
            let (mut at, mut taken) = (0u64, 0u64);
            for (step_ms, took, round_trip_ms, wire, decoded) in samples {
                at += step_ms;
                taken += took;
                let round_trip = round_trip_ms.map(Duration::from_millis);
                ahead.sample(start + Duration::from_millis(at), taken, round_trip, wire, decoded);
                let target = ahead.target();
                prop_assert!(target >= floor.min(ceiling).max(1) && target <= ceiling);
            }
            let ask = ahead.ask(buffered);
            prop_assert!(buffered + ask <= ahead.target().max(buffered));
            let wire = ahead.fetch_bytes(ask, fetch_max);
            prop_assert!((1..=fetch_max).contains(&wire) && (ask == 0 || wire <= ask));
        }
    }
}
