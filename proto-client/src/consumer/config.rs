//! [`ConsumerConfig`]: consumer settings on top of [`ClientConfig`].

use std::time::Duration;

use crate::config::{ClientConfig, ConfigError, apply_properties, parse};

/// Where to start when a partition has no committed offset (or the
/// committed one is out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OffsetReset {
    /// The log start.
    Earliest,
    /// The end: only records written from now on.
    Latest,
    /// Fail with an error instead of guessing.
    Error,
}

/// Where a consumer goes on after the log was truncated below the records
/// it had already returned (KIP-320; see [`super::Event::LogTruncated`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TruncationReset {
    /// At the divergence point: the first offset where the leader's log
    /// differs from what was read, so the records that replaced the lost
    /// ones are read. Java's consumer does this. Default.
    Divergence,
    /// Where `auto.offset.reset` says.
    AutoOffsetReset,
}

/// Which records a consumer sees of transactional producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationLevel {
    /// Everything, aborted transactions included.
    ReadUncommitted,
    /// Only committed transactions, up to the last stable offset.
    ReadCommitted,
}

/// A partition assignment strategy, by the name the group protocol uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AssignmentStrategy {
    /// Contiguous partition ranges per topic (Java's and librdkafka's default).
    Range,
    /// Partitions dealt round-robin over all members.
    RoundRobin,
    /// Sticky, with incremental rebalances (KIP-429): only moving
    /// partitions are revoked.
    CooperativeSticky,
}

impl AssignmentStrategy {
    /// The protocol name in JoinGroup.
    pub fn name(self) -> &'static str {
        match self {
            AssignmentStrategy::Range => "range",
            AssignmentStrategy::RoundRobin => "roundrobin",
            AssignmentStrategy::CooperativeSticky => "cooperative-sticky",
        }
    }

    /// Whether the strategy rebalances incrementally.
    pub fn is_cooperative(self) -> bool {
        self == AssignmentStrategy::CooperativeSticky
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Some(match name.trim() {
            "range" => AssignmentStrategy::Range,
            "roundrobin" => AssignmentStrategy::RoundRobin,
            "cooperative-sticky" => AssignmentStrategy::CooperativeSticky,
            // Java class names, as the Java client takes them.
            "org.apache.kafka.clients.consumer.RangeAssignor" => AssignmentStrategy::Range,
            "org.apache.kafka.clients.consumer.RoundRobinAssignor" => AssignmentStrategy::RoundRobin,
            "org.apache.kafka.clients.consumer.CooperativeStickyAssignor" => AssignmentStrategy::CooperativeSticky,
            _ => return None,
        })
    }
}

/// How a consumer takes part in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupProtocol {
    /// JoinGroup / SyncGroup / Heartbeat: one member (the leader) assigns
    /// the partitions of every member, and each rebalance goes through a
    /// barrier. Every broker has it. Default.
    Classic,
    /// KIP-848 (Kafka 4.0's default): the coordinator assigns, each member
    /// reconciles on its own through ConsumerGroupHeartbeat, and there is
    /// no group-wide barrier. The session timeout, heartbeat interval and
    /// assignor are the broker's settings (`group.remote.assignor` names a
    /// server-side assignor).
    Consumer,
}

/// Consumer settings.
///
/// Defaults follow librdkafka where Java differs only in name: auto-commit
/// every 5 s of offsets stored automatically as records are returned,
/// `auto.offset.reset=latest`, a 45 s session, 5 minutes between polls.
#[derive(Debug, Clone)]
#[must_use = "settings take effect only when given to a consumer"]
pub struct ConsumerConfig {
    pub(crate) client: ClientConfig,
    pub(crate) group_id: Option<String>,
    pub(crate) group_instance_id: Option<String>,
    pub(crate) offset_reset: OffsetReset,
    pub(crate) auto_commit: bool,
    pub(crate) auto_commit_interval: Duration,
    pub(crate) auto_offset_store: bool,
    pub(crate) session_timeout: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) max_poll_interval: Duration,
    pub(crate) strategies: Vec<AssignmentStrategy>,
    pub(crate) group_protocol: GroupProtocol,
    pub(crate) remote_assignor: Option<String>,
    /// Classic-only settings given explicitly, by key: refused with the
    /// consumer protocol, as Java and librdkafka do.
    pub(crate) classic_settings: Vec<&'static str>,
    pub(crate) fetch_min_bytes: i32,
    pub(crate) fetch_max_wait: Duration,
    pub(crate) max_partition_fetch_bytes: i32,
    pub(crate) fetch_max_bytes: i32,
    pub(crate) queued_max_bytes: usize,
    pub(crate) isolation: IsolationLevel,
    pub(crate) partition_eof: bool,
    pub(crate) truncation_reset: TruncationReset,
}

impl ConsumerConfig {
    /// Consumer settings for a cluster, all at their defaults (no group).
    pub fn new(client: ClientConfig) -> Self {
        ConsumerConfig {
            client,
            group_id: None,
            group_instance_id: None,
            offset_reset: OffsetReset::Latest,
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            auto_offset_store: true,
            session_timeout: Duration::from_secs(45),
            heartbeat_interval: Duration::from_secs(3),
            max_poll_interval: Duration::from_secs(300),
            strategies: vec![AssignmentStrategy::Range, AssignmentStrategy::RoundRobin],
            group_protocol: GroupProtocol::Classic,
            remote_assignor: None,
            classic_settings: Vec::new(),
            fetch_min_bytes: 1,
            fetch_max_wait: Duration::from_millis(500),
            max_partition_fetch_bytes: 1024 * 1024,
            fetch_max_bytes: 50 * 1024 * 1024,
            queued_max_bytes: 64 * 1024 * 1024,
            isolation: IsolationLevel::ReadUncommitted,
            partition_eof: false,
            truncation_reset: TruncationReset::Divergence,
        }
    }

    /// Builds settings from librdkafka/Java property names: the consumer
    /// keys below, then every [`ClientConfig::set_property`] key.
    ///
    /// | key | setting |
    /// |---|---|
    /// | `group.id` | [`Self::group`] |
    /// | `group.instance.id` | [`Self::static_member`] |
    /// | `auto.offset.reset` | `earliest`/`smallest`/`beginning`, `latest`/`largest`/`end`, `error`/`none` |
    /// | `enable.auto.commit`, `auto.commit.interval.ms` | [`Self::auto_commit`] |
    /// | `enable.auto.offset.store` | [`Self::auto_offset_store`] |
    /// | `session.timeout.ms`, `heartbeat.interval.ms` | [`Self::session`] |
    /// | `max.poll.interval.ms` | [`Self::max_poll_interval`] |
    /// | `partition.assignment.strategy` | comma-separated `range`, `roundrobin`, `cooperative-sticky` |
    /// | `group.protocol` | `classic` or `consumer` ([`Self::group_protocol`]) |
    /// | `group.remote.assignor` | a server-side assignor (`uniform`, `range`), with `group.protocol=consumer` |
    /// | `fetch.min.bytes`, `fetch.wait.max.ms`/`fetch.max.wait.ms` | [`Self::fetch_wait`] |
    /// | `max.partition.fetch.bytes`, `fetch.max.bytes` | [`Self::fetch_sizes`] |
    /// | `queued.max.messages.kbytes` | [`Self::prefetch_bytes`] |
    /// | `isolation.level` | `read_uncommitted` or `read_committed` |
    /// | `enable.partition.eof` | [`Self::partition_eof`] |
    /// | `log.truncation.reset` | `divergence` or `auto.offset.reset` ([`Self::truncation_reset`]; Rill's own key) |
    pub fn from_properties<K: AsRef<str>, V: AsRef<str>>(
        properties: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let mut config = ConsumerConfig::new(ClientConfig::default());
        apply_properties(properties, |key, value| config.set_property(key, value))?;
        config.validate()?;
        Ok(config)
    }

    /// Applies one property; `Ok(false)` if no consumer or client key
    /// matches.
    pub fn set_property(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        let invalid = |reason: &str| ConfigError::invalid_value(key, value, reason);
        match key {
            "group.id" => self.group_id = Some(value.to_owned()).filter(|g| !g.is_empty()),
            "group.instance.id" => self.group_instance_id = Some(value.to_owned()).filter(|g| !g.is_empty()),
            "auto.offset.reset" => {
                self.offset_reset = match value.trim() {
                    "earliest" | "smallest" | "beginning" => OffsetReset::Earliest,
                    "latest" | "largest" | "end" => OffsetReset::Latest,
                    "error" | "none" => OffsetReset::Error,
                    _ => return Err(invalid("expected earliest, latest or error")),
                }
            }
            "enable.auto.commit" => self.auto_commit = parse::boolean(key, value)?,
            "auto.commit.interval.ms" => self.auto_commit_interval = parse::positive_millis(key, value)?,
            "enable.auto.offset.store" => self.auto_offset_store = parse::boolean(key, value)?,
            "session.timeout.ms" => {
                self.session_timeout = parse::positive_millis(key, value)?;
                self.classic_setting("session.timeout.ms");
            }
            "heartbeat.interval.ms" => {
                self.heartbeat_interval = parse::positive_millis(key, value)?;
                self.classic_setting("heartbeat.interval.ms");
            }
            "max.poll.interval.ms" => self.max_poll_interval = parse::positive_millis(key, value)?,
            "partition.assignment.strategy" => {
                let strategies: Option<Vec<_>> = value.split(',').map(AssignmentStrategy::parse).collect();
                match strategies {
                    Some(s) if !s.is_empty() => self.strategies = s,
                    _ => return Err(invalid("expected a list of range, roundrobin, cooperative-sticky")),
                }
                self.classic_setting("partition.assignment.strategy");
            }
            "group.protocol" => {
                self.group_protocol = match value.trim().to_ascii_lowercase().as_str() {
                    "classic" => GroupProtocol::Classic,
                    "consumer" => GroupProtocol::Consumer,
                    _ => return Err(invalid("expected classic or consumer")),
                }
            }
            "group.remote.assignor" => self.remote_assignor = Some(value.trim().to_owned()).filter(|a| !a.is_empty()),
            "fetch.min.bytes" => self.fetch_min_bytes = parse::number(key, value, 1, i32::MAX)?,
            "fetch.wait.max.ms" | "fetch.max.wait.ms" => self.fetch_max_wait = parse::millis(key, value)?,
            "max.partition.fetch.bytes" | "fetch.message.max.bytes" => {
                self.max_partition_fetch_bytes = parse::number(key, value, 1024, i32::MAX)?;
            }
            "fetch.max.bytes" => self.fetch_max_bytes = parse::number(key, value, 1024, i32::MAX)?,
            "queued.max.messages.kbytes" => {
                self.queued_max_bytes = parse::number(key, value, 1usize, 2_097_151)? * 1024;
            }
            "isolation.level" => {
                self.isolation = match value.trim() {
                    "read_uncommitted" => IsolationLevel::ReadUncommitted,
                    "read_committed" => IsolationLevel::ReadCommitted,
                    _ => return Err(invalid("expected read_uncommitted or read_committed")),
                }
            }
            "enable.partition.eof" => self.partition_eof = parse::boolean(key, value)?,
            "log.truncation.reset" => {
                self.truncation_reset = match value.trim() {
                    "divergence" => TruncationReset::Divergence,
                    "auto.offset.reset" => TruncationReset::AutoOffsetReset,
                    _ => return Err(invalid("expected divergence or auto.offset.reset")),
                }
            }
            _ => return self.client.set_property(key, value),
        }
        Ok(true)
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.client.validate()?;
        if self.group_instance_id.is_some() && self.group_id.is_none() {
            return Err(ConfigError::Invalid("`group.instance.id` needs a `group.id`".into()));
        }
        if self.heartbeat_interval >= self.session_timeout {
            return Err(ConfigError::Invalid("`heartbeat.interval.ms` must be below `session.timeout.ms`".into()));
        }
        if self.queued_max_bytes < self.max_partition_fetch_bytes as usize {
            return Err(ConfigError::Invalid(
                "`queued.max.messages.kbytes` must hold at least one `max.partition.fetch.bytes`".into(),
            ));
        }
        match self.group_protocol {
            GroupProtocol::Consumer => {
                if let Some(key) = self.classic_settings.first() {
                    return Err(ConfigError::Invalid(format!(
                        "`{key}` cannot be set with `group.protocol=consumer`: the broker sets it for the group"
                    )));
                }
            }
            GroupProtocol::Classic => {
                if self.remote_assignor.is_some() {
                    return Err(ConfigError::Invalid("`group.remote.assignor` needs `group.protocol=consumer`".into()));
                }
            }
        }
        // Mixing eager and cooperative strategies is allowed, as in Java, for
        // upgrades: the group runs whichever every member supports.
        Ok(())
    }

    fn classic_setting(&mut self, key: &'static str) {
        if !self.classic_settings.contains(&key) {
            self.classic_settings.push(key);
        }
    }

    /// The client settings.
    pub fn client(&self) -> &ClientConfig {
        &self.client
    }

    /// The same settings with other client settings.
    pub fn with_client(mut self, client: ClientConfig) -> Self {
        self.client = client;
        self
    }

    /// Joins consumer group `id`: partitions are shared with its members and
    /// offsets committed under it.
    pub fn group(mut self, id: impl Into<String>) -> Self {
        self.group_id = Some(id.into());
        self
    }

    /// Static membership (KIP-345): a member that restarts with the same id
    /// within the session timeout gets its partitions back without a
    /// rebalance, and closing does not leave the group.
    pub fn static_member(mut self, instance_id: impl Into<String>) -> Self {
        self.group_instance_id = Some(instance_id.into());
        self
    }

    /// Where to start without a committed offset. Default latest.
    pub fn offset_reset(mut self, reset: OffsetReset) -> Self {
        self.offset_reset = reset;
        self
    }

    /// Auto-commit of stored offsets every `interval` (and on revoke and
    /// close). Default on, every 5 s.
    pub fn auto_commit(mut self, enabled: bool, interval: Duration) -> Self {
        self.auto_commit = enabled;
        self.auto_commit_interval = interval;
        self
    }

    /// Whether returning a record stores its offset for the next commit.
    /// Turn off to store offsets yourself once a record is processed.
    /// Default on.
    pub fn auto_offset_store(mut self, enabled: bool) -> Self {
        self.auto_offset_store = enabled;
        self
    }

    /// Session timeout and heartbeat interval. Defaults 45 s and 3 s.
    /// Classic protocol only: with [`GroupProtocol::Consumer`] the broker
    /// sets both.
    pub fn session(mut self, timeout: Duration, heartbeat: Duration) -> Self {
        self.session_timeout = timeout;
        self.heartbeat_interval = heartbeat;
        self.classic_setting("session.timeout.ms");
        self
    }

    /// The longest the application may go without calling `recv` before
    /// the consumer leaves the group. Default 5 minutes.
    pub fn max_poll_interval(mut self, interval: Duration) -> Self {
        self.max_poll_interval = interval;
        self
    }

    /// Assignment strategies, preferred first. Default range, roundrobin.
    /// Classic protocol only: with [`GroupProtocol::Consumer`] the broker
    /// assigns.
    pub fn strategies(mut self, strategies: Vec<AssignmentStrategy>) -> Self {
        self.strategies = strategies;
        self.classic_setting("partition.assignment.strategy");
        self
    }

    /// The group protocol. Default [`GroupProtocol::Classic`].
    pub fn group_protocol(mut self, protocol: GroupProtocol) -> Self {
        self.group_protocol = protocol;
        self
    }

    /// With [`GroupProtocol::Consumer`]: the server-side assignor the
    /// group should use (`uniform` or `range` on Kafka); by default the
    /// broker's first.
    pub fn remote_assignor(mut self, assignor: impl Into<String>) -> Self {
        self.remote_assignor = Some(assignor.into());
        self
    }

    /// `fetch.min.bytes` and `fetch.wait.max.ms`: a fetch waits on the
    /// broker for this much data or this long. Defaults 1 byte, 500 ms.
    pub fn fetch_wait(mut self, min_bytes: i32, max_wait: Duration) -> Self {
        self.fetch_min_bytes = min_bytes;
        self.fetch_max_wait = max_wait;
        self
    }

    /// Bytes per partition and per fetch. Defaults 1 MiB and 50 MiB.
    pub fn fetch_sizes(mut self, per_partition: i32, per_fetch: i32) -> Self {
        self.max_partition_fetch_bytes = per_partition;
        self.fetch_max_bytes = per_fetch;
        self
    }

    /// Fetched records held before the application takes them, in bytes,
    /// over all partitions together. Default 64 MiB. A bound, not a
    /// target: the fetchers keep about two fetch round trips of what the
    /// application reads (at least one `max.partition.fetch.bytes`), and
    /// compressed data counts as it decompresses. Records count their key,
    /// value and 64 bytes. Fixed cost besides: about 3.5 KiB per assigned
    /// partition.
    pub fn prefetch_bytes(mut self, bytes: usize) -> Self {
        self.queued_max_bytes = bytes;
        self
    }

    /// Read committed or uncommitted. Default uncommitted.
    pub fn isolation(mut self, isolation: IsolationLevel) -> Self {
        self.isolation = isolation;
        self
    }

    /// Whether reaching the end of a partition is reported as an event.
    /// Default off.
    pub fn partition_eof(mut self, enabled: bool) -> Self {
        self.partition_eof = enabled;
        self
    }

    /// Where to go on when the log was truncated below records already
    /// returned. Default [`TruncationReset::Divergence`]. With
    /// `auto.offset.reset=error` the partition stops instead, until the
    /// application seeks it.
    pub fn truncation_reset(mut self, reset: TruncationReset) -> Self {
        self.truncation_reset = reset;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn familiar_keys() {
        let config = ConsumerConfig::from_properties([
            ("bootstrap.servers", "b:1"),
            ("group.id", "g"),
            ("group.instance.id", "i-1"),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("session.timeout.ms", "6000"),
            ("heartbeat.interval.ms", "500"),
            ("max.poll.interval.ms", "10000"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("fetch.min.bytes", "10"),
            ("fetch.wait.max.ms", "100"),
            ("max.partition.fetch.bytes", "2048"),
            ("fetch.max.bytes", "4096"),
            ("queued.max.messages.kbytes", "1024"),
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
            ("log.truncation.reset", "auto.offset.reset"),
        ])
        .unwrap();
        assert_eq!(config.group_id.as_deref(), Some("g"));
        assert_eq!(config.group_instance_id.as_deref(), Some("i-1"));
        assert_eq!(config.offset_reset, OffsetReset::Earliest);
        assert!(!config.auto_commit && !config.auto_offset_store);
        assert_eq!(config.session_timeout, Duration::from_secs(6));
        assert_eq!(config.strategies, [AssignmentStrategy::CooperativeSticky]);
        assert_eq!(config.fetch_max_wait, Duration::from_millis(100));
        assert_eq!(config.queued_max_bytes, 1024 * 1024);
        assert_eq!(config.isolation, IsolationLevel::ReadCommitted);
        assert!(config.partition_eof);
        assert_eq!(config.truncation_reset, TruncationReset::AutoOffsetReset);
    }

    #[test]
    fn bad_values_and_contradictions_are_named() {
        let bad = |props: &[(&str, &str)]| {
            let mut all = vec![("bootstrap.servers", "b:1")];
            all.extend_from_slice(props);
            ConsumerConfig::from_properties(all).unwrap_err().to_string()
        };
        assert!(bad(&[("auto.offset.reset", "sometimes")]).contains("`auto.offset.reset`"));
        assert!(bad(&[("partition.assignment.strategy", "sticky-ish")]).contains("partition.assignment.strategy"));
        assert!(bad(&[("group.instance.id", "x")]).contains("group.id"));
        assert!(bad(&[("session.timeout.ms", "1000"), ("heartbeat.interval.ms", "2000")]).contains("heartbeat"));
        assert!(bad(&[("enable.auto.comit", "true")]).contains("enable.auto.comit"));
        assert!(bad(&[("log.truncation.reset", "latest")]).contains("log.truncation.reset"));
        let config = ConsumerConfig::from_properties([
            ("bootstrap.servers", "b:1"),
            ("partition.assignment.strategy", "range,org.apache.kafka.clients.consumer.RoundRobinAssignor"),
        ])
        .unwrap();
        assert_eq!(config.strategies, [AssignmentStrategy::Range, AssignmentStrategy::RoundRobin]);
    }

    #[test]
    fn the_consumer_protocol_refuses_what_the_broker_sets() {
        let config = |props: &[(&str, &str)]| {
            let mut all = vec![("bootstrap.servers", "b:1"), ("group.id", "g")];
            all.extend_from_slice(props);
            ConsumerConfig::from_properties(all)
        };
        let consumer = config(&[("group.protocol", "consumer"), ("group.remote.assignor", "uniform")]).unwrap();
        assert_eq!(consumer.group_protocol, GroupProtocol::Consumer);
        assert_eq!(consumer.remote_assignor.as_deref(), Some("uniform"));
        for key in ["session.timeout.ms", "heartbeat.interval.ms"] {
            let error = config(&[("group.protocol", "consumer"), (key, "6000")]).unwrap_err().to_string();
            assert!(error.contains(key) && error.contains("group.protocol=consumer"), "{error}");
        }
        let error = config(&[("partition.assignment.strategy", "range"), ("group.protocol", "consumer")]);
        assert!(error.unwrap_err().to_string().contains("partition.assignment.strategy"));
        let error = config(&[("group.remote.assignor", "uniform")]).unwrap_err().to_string();
        assert!(error.contains("group.remote.assignor"), "{error}");
        assert!(config(&[("group.protocol", "new")]).unwrap_err().to_string().contains("group.protocol"));
        // The builder's classic setters count as set.
        let built = ConsumerConfig::new(ClientConfig::new("b:1").unwrap())
            .group("g")
            .session(Duration::from_secs(6), Duration::from_secs(1))
            .group_protocol(GroupProtocol::Consumer);
        assert!(built.validate().unwrap_err().to_string().contains("session.timeout.ms"));
    }
}
