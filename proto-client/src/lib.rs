#![warn(missing_docs)]
#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! Bottom up; each layer only uses the ones above it in this list.
//!
//! - [`error`]: the [`Error`] type and the one table ([`error::classify`])
//!   that says what to do about each Kafka error code.
//! - [`config`]: [`ClientConfig`], typed settings with documented defaults,
//!   and `from_properties` for librdkafka/Java property names.
//! - [`wire`]: bytes ↔ messages, no IO: framing, version negotiation, and a
//!   shape walk that bounds every count before the crate decodes it.
//! - [`net`]: tokio starts here. [`Connection`] (one socket, pipelined
//!   requests matched by correlation id, timeouts, frame cap), broker links
//!   with reconnect backoff.
//! - [`records`]: record batches v2 and the compression codecs (pure).
//! - [`cluster`]: [`Metadata`] snapshots and their refresh.
//! - [`client`]: [`Client`], the shared handle everything else builds on.
//! - [`admin`]: [`Admin`]: topics, offsets, groups, configs and the cluster.
//! - [`producer`]: the idempotent, batching producer.
//! - [`consumer`]: the consumer: fetching, positions, offsets.
//!
//! # Logging
//!
//! `tracing` with one target per debug context, so that
//! `RUST_LOG=rill::metadata=debug` is the equivalent of librdkafka's
//! `debug=metadata`: `rill::broker` (connections), `rill::protocol`
//! (every request and reply), `rill::metadata`, `rill::admin`.

pub mod admin;
pub mod client;
pub mod cluster;
pub mod config;
pub mod consumer;
pub mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod net;
pub mod producer;
pub mod records;
pub(crate) mod retry;
pub mod telemetry;
pub mod wire;

use std::fmt;

/// The message schemas, at the exact version this client speaks: for raw
/// requests through [`Connection::send`].
pub use kafka_protocol;

pub use admin::{
    Admin, AlterConfig, ClusterDescription, CommittedOffset, ConfigEntry, ConfigResource, ConfigSource,
    GroupDescription, GroupListing, GroupMember, GroupState, ListedOffset, NewTopic, OffsetSpec,
};
pub use client::Client;
pub use cluster::{BrokerInfo, Metadata, PartitionInfo, TopicInfo, TopicScope};
pub use config::{ClientConfig, ConfigError};
pub use error::{Error, ErrorAction, ResponseError, Result};
pub use net::sasl::{OAuthBearerToken, OAuthBearerTokenProvider, SaslMechanism, TokenError};
pub use net::{BrokerAddress, Connection, Secret, SecurityProtocol};

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: i32,
}

impl TopicPartition {
    /// A topic partition.
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition { topic: topic.into(), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}
