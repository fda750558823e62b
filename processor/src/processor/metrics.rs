//! The processor's numbers, readable while it runs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rill_client::TopicPartition;

/// Counters of a running processor.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(super) consumed: AtomicU64,
    pub(super) produced: AtomicU64,
    pub(super) filtered: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) dead_lettered: AtomicU64,
    pub(super) in_flight: AtomicU64,
    pub(super) rewound: AtomicU64,
    pub(super) stuck: AtomicU64,
    pub(super) paused: AtomicU64,
    pub(super) resumed: AtomicU64,
    pub(super) buffered_bytes: AtomicU64,
    /// The partitions stuck at the last look.
    pub(super) stuck_now: Mutex<Vec<Stuck>>,
    pub(super) partitions: Mutex<HashMap<TopicPartition, PartitionMetrics>>,
    /// Input timestamp → output delivered, per output.
    pub(super) latency: Latency,
}

/// One input partition's numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionMetrics {
    /// The stored offset: everything before it is done.
    pub watermark: Option<i64>,
    /// Records handed to the function and not yet stored.
    pub in_flight: usize,
    /// Paused by the buffer budget.
    pub paused: bool,
    /// Records between the watermark (before one: the oldest record taken,
    /// or the consumer's position) and the end of the partition, as last
    /// fetched.
    pub lag: Option<i64>,
}

/// A snapshot of [`Metrics`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Input records received.
    pub consumed: u64,
    /// Outputs delivered.
    pub produced: u64,
    /// Inputs for which the function returned nothing.
    pub filtered: u64,
    /// Inputs skipped on an error (tolerance `All`).
    pub skipped: u64,
    /// Inputs forwarded to the dead-letter topic (delivered).
    pub dead_lettered: u64,
    /// Outputs awaiting delivery.
    pub in_flight: u64,
    /// Times an input partition's records went back to an offset already
    /// taken (the consumer reset an out-of-range position to an earlier
    /// one) and its ledger started over from there.
    pub rewound: u64,
    /// Times an input record was found unfinished for longer than the
    /// stuck timeout (each such record counted once).
    pub stuck: u64,
    /// Times an input partition was paused because the processor held more
    /// than its buffer budget.
    pub paused: u64,
    /// Times the budget resumed a paused partition.
    pub resumed: u64,
    /// Bytes held at the last look: records taken and not done, outputs
    /// not delivered (the consumer's prefetch apart).
    pub buffered_bytes: u64,
    /// Per input partition.
    pub partitions: Vec<(TopicPartition, PartitionMetrics)>,
    /// End-to-end latency: input timestamp (CreateTime) → output delivered.
    pub latency: LatencySnapshot,
}

/// Whether the processor makes progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// No input record has been unfinished for longer than the stuck
    /// timeout.
    Healthy,
    /// These partitions' oldest unfinished records have been so for longer
    /// than the stuck timeout (a hung call, an output that is not
    /// delivered): their stored offsets do not move.
    Stuck(Vec<Stuck>),
}

/// A partition whose oldest unfinished input has been so too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// The input partition.
    pub partition: TopicPartition,
    /// Its oldest unfinished record.
    pub offset: i64,
    /// How long it has been unfinished, at least (the processor looks every
    /// 50 ms).
    pub stuck_for: Duration,
}

impl Metrics {
    /// Hands the numbers to the [`metrics`] facade (a no-op without a
    /// recorder), labelled with the processor's name: counters
    /// `rill_processor_{consumed,produced,filtered,skipped,dead_lettered,
    /// rewound,stuck}_total`, gauges `rill_processor_in_flight` and, per
    /// input partition, `rill_processor_lag` and
    /// `rill_processor_watermark` (labels `topic`, `partition`). The
    /// end-to-end latency is the histogram
    /// `rill_processor_latency_seconds`, recorded per output.
    pub(super) fn export(&self, name: &str) {
        let counters = [
            ("rill_processor_consumed_total", &self.consumed),
            ("rill_processor_produced_total", &self.produced),
            ("rill_processor_filtered_total", &self.filtered),
            ("rill_processor_skipped_total", &self.skipped),
            ("rill_processor_dead_lettered_total", &self.dead_lettered),
            ("rill_processor_rewound_total", &self.rewound),
            ("rill_processor_stuck_total", &self.stuck),
            ("rill_processor_paused_total", &self.paused),
            ("rill_processor_resumed_total", &self.resumed),
        ];
        for (metric, value) in counters {
            metrics::counter!(metric, "processor" => name.to_owned()).absolute(value.load(Ordering::Relaxed));
        }
        metrics::gauge!("rill_processor_in_flight", "processor" => name.to_owned())
            .set(self.in_flight.load(Ordering::Relaxed) as f64);
        metrics::gauge!("rill_processor_buffered_bytes", "processor" => name.to_owned())
            .set(self.buffered_bytes.load(Ordering::Relaxed) as f64);
        let partitions = self.partitions.lock().unwrap_or_else(|p| p.into_inner());
        for (tp, numbers) in partitions.iter() {
            let labels =
                [("processor", name.to_owned()), ("topic", tp.topic.clone()), ("partition", tp.partition.to_string())];
            if let Some(lag) = numbers.lag {
                metrics::gauge!("rill_processor_lag", &labels).set(lag as f64);
            }
            if let Some(watermark) = numbers.watermark {
                metrics::gauge!("rill_processor_watermark", &labels).set(watermark as f64);
            }
        }
    }

    /// Whether the processor makes progress, as of its last look (every
    /// 50 ms while it runs).
    pub fn health(&self) -> Health {
        let stuck = self.stuck_now.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if stuck.is_empty() { Health::Healthy } else { Health::Stuck(stuck) }
    }

    /// The numbers now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut partitions: Vec<(TopicPartition, PartitionMetrics)> =
            self.partitions.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.clone(), *v)).collect();
        partitions.sort_by(|a, b| a.0.cmp(&b.0));
        MetricsSnapshot {
            consumed: self.consumed.load(Ordering::Relaxed),
            produced: self.produced.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            rewound: self.rewound.load(Ordering::Relaxed),
            stuck: self.stuck.load(Ordering::Relaxed),
            paused: self.paused.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            buffered_bytes: self.buffered_bytes.load(Ordering::Relaxed),
            partitions,
            latency: self.latency.snapshot(),
        }
    }
}

/// Exact below 32 µs, then 16 buckets per power of two (about 6 %).
const SUB_BUCKETS: u64 = 16;
const BUCKETS: usize = 976;

/// A latency histogram (microseconds, log-linear buckets, lock-free):
/// what the processor records per delivered output, and what the
/// benchmarks record for librdkafka, so percentiles compare.
#[derive(Debug)]
pub struct Latency {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    max: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

/// Percentiles of a [`Latency`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    /// Samples recorded.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// The largest sample (exact).
    pub max: Duration,
}

fn bucket_of(micros: u64) -> usize {
    if micros < 2 * SUB_BUCKETS {
        return micros as usize;
    }
    let msb = 63 - u64::from(micros.leading_zeros());
    let shift = msb - 4;
    ((shift * SUB_BUCKETS) + (micros >> shift)) as usize
}

/// The middle of a bucket's range, in microseconds.
fn value_of(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < 2 * SUB_BUCKETS {
        return bucket;
    }
    let shift = bucket / SUB_BUCKETS - 1;
    let low = (SUB_BUCKETS + bucket % SUB_BUCKETS) << shift;
    low + ((1 << shift) - 1) / 2
}

impl Latency {
    /// Records one sample.
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(micros, Ordering::Relaxed);
    }

    /// Records the time from `timestamp` (milliseconds since the epoch, as
    /// a record's CreateTime) to `now`; zero if it lies ahead.
    pub fn record_since(&self, timestamp: i64, now: SystemTime) -> Duration {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let latency = now.saturating_sub(Duration::from_millis(u64::try_from(timestamp).unwrap_or(0)));
        self.record(latency);
        latency
    }

    /// The `q` quantile (0.0–1.0), within a bucket's width; zero when
    /// empty.
    pub fn quantile(&self, q: f64) -> Duration {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let max = self.max.load(Ordering::Relaxed);
                return Duration::from_micros(value_of(bucket).min(max));
            }
        }
        Duration::from_micros(self.max.load(Ordering::Relaxed))
    }

    /// Count, p50, p99 and max now.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            count: self.count.load(Ordering::Relaxed),
            p50: self.quantile(0.50),
            p99: self.quantile(0.99),
            max: Duration::from_micros(self.max.load(Ordering::Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_within_their_width() {
        let mut last = 0;
        for micros in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let bucket = bucket_of(micros);
            assert!(bucket < BUCKETS && bucket >= last, "{micros} -> {bucket}");
            last = bucket;
            let middle = value_of(bucket);
            assert!(middle.abs_diff(micros) <= micros / 16 + 1, "{micros} read as {middle}");
        }
    }

    #[test]
    fn percentiles_of_a_known_spread() {
        let latency = Latency::default();
        assert_eq!(latency.snapshot(), LatencySnapshot::default());
        for ms in 1..=1000u64 {
            latency.record(Duration::from_millis(ms));
        }
        let snapshot = latency.snapshot();
        assert_eq!(snapshot.count, 1000);
        assert_eq!(snapshot.max, Duration::from_millis(1000));
        let near = |got: Duration, want: f64| (got.as_secs_f64() * 1e3 - want).abs() <= want / 16.0;
        assert!(near(snapshot.p50, 500.0), "{snapshot:?}");
        assert!(near(snapshot.p99, 990.0), "{snapshot:?}");
    }

    #[test]
    fn time_since_a_timestamp_and_never_below_zero() {
        let latency = Latency::default();
        let now = UNIX_EPOCH + Duration::from_millis(1500);
        latency.record_since(1000, now);
        latency.record_since(2000, now);
        assert_eq!(latency.snapshot().max, Duration::from_millis(500));
        assert_eq!(latency.quantile(0.0), Duration::ZERO, "a timestamp ahead counts as zero");
    }
}
