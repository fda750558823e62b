//! [`ProducerConfig`]: producer settings on top of [`ClientConfig`].

use std::sync::Arc;
use std::time::Duration;

use super::partitioner::{Partitioner, PartitionerKind};
use crate::config::{ClientConfig, ConfigError, apply_properties, parse};
use crate::records::Compression;

/// How many replicas must have a batch before the broker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No answer at all; a record counts as delivered once written to the
    /// socket.
    None,
    /// The leader has it.
    Leader,
    /// Every in-sync replica has it. Required by idempotence.
    All,
}

impl Acks {
    pub(crate) fn wire(self) -> i16 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }
}

/// Producer settings.
///
/// The defaults favour correctness first (idempotence on, `acks=all`) and
/// throughput second (5 ms linger, batches up to 10,000 records or 1 MB).
#[derive(Debug, Clone)]
#[must_use = "settings take effect only when given to a producer"]
pub struct ProducerConfig {
    pub(crate) client: ClientConfig,
    pub(crate) acks: Acks,
    pub(crate) idempotence: bool,
    pub(crate) linger: Duration,
    pub(crate) batch_size: usize,
    pub(crate) batch_records: usize,
    pub(crate) compression: Compression,
    pub(crate) compression_level: Option<u32>,
    pub(crate) max_in_flight: usize,
    pub(crate) delivery_timeout: Duration,
    pub(crate) buffer_records: usize,
    pub(crate) buffer_bytes: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) partitioner: PartitionerKind,
    pub(crate) transactional_id: Option<String>,
    pub(crate) transaction_timeout: Duration,
}

impl ProducerConfig {
    /// Producer settings for a cluster, all at their defaults.
    pub fn new(client: ClientConfig) -> Self {
        ProducerConfig {
            client,
            acks: Acks::All,
            idempotence: true,
            linger: Duration::from_millis(5),
            batch_size: 1_000_000,
            batch_records: 10_000,
            compression: Compression::None,
            compression_level: None,
            max_in_flight: 5,
            delivery_timeout: Duration::from_secs(120),
            buffer_records: 100_000,
            buffer_bytes: 64 * 1024 * 1024,
            max_message_bytes: 1_000_000,
            partitioner: PartitionerKind::Murmur2,
            transactional_id: None,
            transaction_timeout: Duration::from_secs(60),
        }
    }

    /// Builds settings from librdkafka/Java property names: the producer
    /// keys below, then every [`ClientConfig::set_property`] key.
    ///
    /// | key | setting |
    /// |---|---|
    /// | `acks`, `request.required.acks` | [`Self::acks`]: `all`/`-1`, `1`, `0` |
    /// | `enable.idempotence` | [`Self::idempotence`] |
    /// | `linger.ms`, `queue.buffering.max.ms` | [`Self::linger`] |
    /// | `batch.size` | [`Self::batch_size`] |
    /// | `batch.num.messages` | [`Self::batch_records`] |
    /// | `compression.type`, `compression.codec` | [`Self::compression`] |
    /// | `compression.level` | gzip level 1–9 |
    /// | `max.in.flight.requests.per.connection`, `max.in.flight` | [`Self::max_in_flight`] |
    /// | `delivery.timeout.ms`, `message.timeout.ms` | [`Self::delivery_timeout`] |
    /// | `queue.buffering.max.messages` | [`Self::buffer_limits`] (records) |
    /// | `queue.buffering.max.kbytes`, `buffer.memory` (bytes) | [`Self::buffer_limits`] (bytes) |
    /// | `message.max.bytes`, `max.request.size` | [`Self::max_message_bytes`] |
    /// | `partitioner` | `murmur2` or `consistent_random` |
    /// | `transactional.id` | [`Self::transactional`] (the id) |
    /// | `transaction.timeout.ms` | [`Self::transactional`] (the timeout) |
    pub fn from_properties<K: AsRef<str>, V: AsRef<str>>(
        properties: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let mut config = ProducerConfig::new(ClientConfig::default());
        apply_properties(properties, |key, value| config.set_property(key, value))?;
        config.validate()?;
        Ok(config)
    }

    /// Applies one property; `Ok(false)` if no producer or client key
    /// matches.
    pub fn set_property(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        let invalid = |reason: &str| ConfigError::invalid_value(key, value, reason);
        match key {
            "acks" | "request.required.acks" => {
                self.acks = match value.trim() {
                    "all" | "-1" => Acks::All,
                    "1" => Acks::Leader,
                    "0" => Acks::None,
                    _ => return Err(invalid("expected all, -1, 1 or 0")),
                };
            }
            "enable.idempotence" => self.idempotence = parse::boolean(key, value)?,
            "linger.ms" | "queue.buffering.max.ms" => self.linger = parse::millis(key, value)?,
            "batch.size" => self.batch_size = parse::number(key, value, 1024usize, 100 * 1024 * 1024)?,
            "batch.num.messages" => self.batch_records = parse::number(key, value, 1usize, 1_000_000)?,
            "compression.type" | "compression.codec" => {
                self.compression = value.parse().map_err(|e: String| invalid(&e))?
            }
            "compression.level" => {
                let level: i32 = parse::number(key, value, -1, 12)?;
                self.compression_level = u32::try_from(level).ok();
            }
            "max.in.flight.requests.per.connection" | "max.in.flight" => {
                self.max_in_flight = parse::number(key, value, 1usize, 1_000_000)?;
            }
            "delivery.timeout.ms" | "message.timeout.ms" => self.delivery_timeout = parse::positive_millis(key, value)?,
            "queue.buffering.max.messages" => self.buffer_records = parse::number(key, value, 1usize, usize::MAX)?,
            "queue.buffering.max.kbytes" => {
                self.buffer_bytes = parse::number(key, value, 1usize, usize::MAX / 1024)? * 1024;
            }
            "buffer.memory" => self.buffer_bytes = parse::number(key, value, 1024usize, usize::MAX)?,
            "message.max.bytes" | "max.request.size" => {
                self.max_message_bytes = parse::number(key, value, 1000usize, 1_000_000_000)?;
            }
            "partitioner" => self.partitioner = value.parse().map_err(|e: String| invalid(&e))?,
            "transactional.id" => {
                let id = value.trim();
                self.transactional_id = (!id.is_empty()).then(|| id.to_owned());
            }
            "transaction.timeout.ms" => self.transaction_timeout = parse::positive_millis(key, value)?,
            _ => return self.client.set_property(key, value),
        }
        Ok(true)
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.client.validate()?;
        if self.transactional_id.is_some() && !self.idempotence {
            return Err(ConfigError::Invalid("`transactional.id` requires `enable.idempotence`".into()));
        }
        if self.idempotence && self.acks != Acks::All {
            return Err(ConfigError::Invalid("`enable.idempotence` requires `acks=all`".into()));
        }
        if self.idempotence && self.max_in_flight > 5 {
            return Err(ConfigError::Invalid(
                "`enable.idempotence` allows at most 5 `max.in.flight.requests.per.connection`".into(),
            ));
        }
        if self.batch_size > self.max_message_bytes {
            return Err(ConfigError::Invalid(format!(
                "`batch.size` ({}) must not exceed `message.max.bytes` ({})",
                self.batch_size, self.max_message_bytes
            )));
        }
        if self.delivery_timeout < self.linger + self.client.request_timeout {
            return Err(ConfigError::Invalid(
                "`delivery.timeout.ms` must be at least `linger.ms` + `request.timeout.ms`".into(),
            ));
        }
        if self.buffer_bytes < self.max_message_bytes {
            return Err(ConfigError::Invalid(
                "the buffer (`queue.buffering.max.kbytes`) must hold at least one `message.max.bytes` record".into(),
            ));
        }
        Ok(())
    }

    /// The client settings.
    pub fn client(&self) -> &ClientConfig {
        &self.client
    }

    /// Replaces the client settings.
    pub fn with_client(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }

    /// Acknowledgements to wait for. Default [`Acks::All`].
    pub fn acks(mut self, acks: Acks) -> Self {
        self.acks = acks;
        self
    }

    /// Idempotence: a producer id and per-partition sequence numbers, so
    /// that retries never duplicate or reorder records. Default on; needs
    /// `acks=all` and at most 5 requests in flight.
    pub fn idempotence(mut self, enabled: bool) -> Self {
        self.idempotence = enabled;
        self
    }

    /// How long a batch may wait for more records before it is sent.
    /// Default 5 ms: a little latency buys far fewer, fuller requests.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// A batch closes at this many bytes (uncompressed). Default 1,000,000.
    /// A single record larger than this gets a batch of its own.
    pub fn batch_size(mut self, bytes: usize) -> Self {
        self.batch_size = bytes;
        self
    }

    /// A batch closes at this many records. Default 10,000.
    pub fn batch_records(mut self, records: usize) -> Self {
        self.batch_records = records;
        self
    }

    /// The codec batches are compressed with. Default none.
    pub fn compression(mut self, codec: Compression) -> Self {
        self.compression = codec;
        self
    }

    /// Produce requests in flight per broker connection. Default 5.
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests;
        self
    }

    /// The longest a record may take from `send` to its result, retries
    /// included. Default 120 s.
    pub fn delivery_timeout(mut self, timeout: Duration) -> Self {
        self.delivery_timeout = timeout;
        self
    }

    /// Makes the producer transactional (`transactional.id`): records are
    /// sent inside transactions ([`crate::producer::Producer::begin_transaction`]),
    /// and a newer producer with the same id fences this one. The
    /// coordinator aborts a transaction open longer than `timeout`
    /// (`transaction.timeout.ms`, default 60 s). Requires idempotence.
    pub fn transactional(mut self, id: impl Into<String>, timeout: Duration) -> Self {
        self.transactional_id = Some(id.into());
        self.transaction_timeout = timeout;
        self
    }

    /// Records and bytes the producer holds before `send` waits and
    /// `try_send` returns `QueueFull`. Defaults 100,000 records and 64 MiB,
    /// whatever the partition count; besides, about 2-4 KiB per partition
    /// written to (metadata and the partition's queue).
    pub fn buffer_limits(mut self, records: usize, bytes: usize) -> Self {
        self.buffer_records = records;
        self.buffer_bytes = bytes;
        self
    }

    /// The largest record, and the largest produce request. Default
    /// 1,000,000 bytes.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// The partitioner for keyed records. Default Java's murmur2.
    pub fn partitioner(mut self, partitioner: PartitionerKind) -> Self {
        self.partitioner = partitioner;
        self
    }

    /// An application partitioner for keyed records.
    pub fn custom_partitioner(self, partitioner: impl Partitioner + 'static) -> Self {
        self.partitioner(PartitionerKind::Custom(Arc::new(partitioner)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_keys() {
        let config = ProducerConfig::from_properties([
            ("bootstrap.servers", "b:1"),
            ("client.id", "p"),
            ("acks", "all"),
            ("linger.ms", "20"),
            ("batch.size", "65536"),
            ("batch.num.messages", "500"),
            ("compression.type", "lz4"),
            ("max.in.flight.requests.per.connection", "3"),
            ("message.timeout.ms", "60000"),
            ("queue.buffering.max.messages", "1000"),
            ("queue.buffering.max.kbytes", "4096"),
            ("message.max.bytes", "100000"),
            ("partitioner", "consistent_random"),
            ("retry.backoff.ms", "50"),
        ])
        .unwrap();
        assert_eq!(config.linger, Duration::from_millis(20));
        assert_eq!((config.batch_size, config.batch_records), (65536, 500));
        assert_eq!(config.compression, Compression::Lz4);
        assert_eq!(config.max_in_flight, 3);
        assert_eq!(config.delivery_timeout, Duration::from_secs(60));
        assert_eq!((config.buffer_records, config.buffer_bytes), (1000, 4096 * 1024));
        assert!(matches!(config.partitioner, PartitionerKind::ConsistentRandom));
        assert_eq!(config.client.retry_backoff, Duration::from_millis(50));
        assert_eq!(config.client.client_id, "p");
    }

    #[test]
    fn defaults_are_safe() {
        let config = ProducerConfig::from_properties([("bootstrap.servers", "b:1")]).unwrap();
        assert!(config.idempotence);
        assert_eq!(config.acks, Acks::All);
        assert_eq!(config.linger, Duration::from_millis(5));
        assert_eq!(config.max_in_flight, 5);
    }

    #[test]
    fn contradictions_and_bad_values_are_named() {
        let bad = |props: &[(&str, &str)]| {
            let mut all = vec![("bootstrap.servers", "b:1")];
            all.extend_from_slice(props);
            ProducerConfig::from_properties(all).unwrap_err().to_string()
        };
        assert!(bad(&[("acks", "1")]).contains("idempotence"));
        assert!(bad(&[("max.in.flight", "6")]).contains("at most 5"));
        assert!(bad(&[("compression.type", "brotli")]).contains("`compression.type`"));
        assert!(bad(&[("acks", "some")]).contains("`acks`"));
        assert!(bad(&[("linger.msec", "1")]).contains("linger.msec"));
        assert!(bad(&[("batch.size", "2000000")]).contains("batch.size"));
        assert!(bad(&[("message.timeout.ms", "10")]).contains("delivery.timeout.ms"));
        // Without idempotence, acks=1 is fine.
        let _fine = ProducerConfig::from_properties([
            ("bootstrap.servers", "b:1"),
            ("enable.idempotence", "false"),
            ("acks", "1"),
        ])
        .unwrap();
    }
}
