//! Exponential backoff with jitter. Pure: the caller supplies randomness.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Delays that start at `initial`, double per failure up to `max`, and are
/// spread by ±20 % so that clients which failed together do not retry
/// together.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff { initial, max: max.max(initial), failures: 0 }
    }

    /// The delay after one more failure. `jitter` is uniform in `[0, 1)`.
    pub(crate) fn next_delay(&mut self, jitter: f64) -> Duration {
        let delay = delay(self.initial, self.max, self.failures, jitter);
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// Forget past failures.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    #[cfg(test)]
    fn failures(&self) -> u32 {
        self.failures
    }
}

/// The delay after `failures` earlier failures: `initial × 2^failures`,
/// capped at `max`, spread by ±20 % (`jitter` uniform in `[0, 1)`).
pub fn delay(initial: Duration, max: Duration, failures: u32, jitter: f64) -> Duration {
    exponential(initial, max, failures).mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)).min(max)
}

/// `initial × 2^failures`, capped at `max`: the delay before jitter.
pub fn exponential(initial: Duration, max: Duration, failures: u32) -> Duration {
    initial.saturating_mul(1u32 << failures.min(31)).min(max)
}

thread_local! {
    static STATE: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish() | 1);
}

/// A uniform value in `[0, 1)` from a per-thread xorshift generator, seeded
/// from the standard library's per-process random keys. Jitter needs no more.
pub fn jitter() -> f64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let middle: Vec<u128> = (0..6).map(|_| backoff.next_delay(0.5).as_millis()).collect();
        assert_eq!(middle, [100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(0.0), Duration::from_millis(80));
        assert_eq!(backoff.next_delay(0.999_999).as_micros(), 239_999);
        // Jitter never pushes past the cap.
        let mut capped = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        assert_eq!(capped.next_delay(0.999), Duration::from_secs(1));
    }

    #[test]
    fn survives_many_failures() {
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_secs(10));
        for _ in 0..200 {
            assert!(backoff.next_delay(0.3) <= Duration::from_secs(10));
        }
        assert_eq!(backoff.failures(), 200);
    }

    #[test]
    fn jitter_is_in_range_and_varies() {
        let values: Vec<f64> = (0..1000).map(|_| jitter()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }
}
