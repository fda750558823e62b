//! The client's error type and the one table that says what to do about each
//! Kafka error code.
//!
//! Every layer returns [`Error`]. Broker error codes arrive as
//! [`Error::Broker`] and are classified by [`classify`]: a single exhaustive
//! `match` over every code the protocol defines, so adding a code to
//! `kafka-protocol` without classifying it fails to compile.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

pub use kafka_protocol::ResponseError;
use kafka_protocol::messages::ApiKey;

use crate::config::ConfigError;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the client.
///
/// `Error` is `Clone` so one failure (a closed connection, a fatal producer
/// state) can be handed to every request that was waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration key or value was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// A TCP connection to a broker could not be established.
    #[error("cannot connect to {broker}")]
    Connect {
        /// `host:port` of the broker.
        broker: String,
        /// What the operating system said.
        #[source]
        source: Arc<io::Error>,
    },

    /// The broker could not be reached securely or refused who we are: an
    /// untrusted or expired certificate, a host name the certificate does
    /// not name, a refused client certificate, a port that does not speak
    /// the configured protocol. Trying again cannot help, so it is fatal.
    #[error("cannot connect securely to {broker}: {reason}")]
    Security {
        /// `host:port` of the broker.
        broker: String,
        /// What went wrong, in words; never a secret.
        reason: String,
    },

    /// The connection to a broker broke while a request was pending, or was
    /// closed by this side after a protocol violation or a timeout.
    #[error("connection to {broker} closed: {reason}")]
    ConnectionClosed {
        /// `host:port` of the broker.
        broker: String,
        /// Why the connection is gone.
        reason: Arc<str>,
    },

    /// No answer within the request timeout. The connection is closed after
    /// a timeout, because every later reply on it would be late too.
    #[error("{api:?} request to {broker} timed out after {timeout:?}")]
    RequestTimeout {
        /// The API of the request.
        api: ApiKey,
        /// `host:port` of the broker.
        broker: String,
        /// The timeout that expired.
        timeout: Duration,
    },

    /// The broker sent bytes that are not a valid answer: a frame size out of
    /// bounds, an unknown correlation id, a body that does not decode.
    #[error("malformed data from {broker}: {message}")]
    Protocol {
        /// `host:port` of the broker.
        broker: String,
        /// What was wrong.
        message: String,
    },

    /// The broker does not offer an API, or no version of it that this client
    /// speaks.
    #[error("broker {broker} does not support {api:?} (this client speaks versions {ours}, the broker {theirs})")]
    UnsupportedApi {
        /// `host:port` of the broker.
        broker: String,
        /// The API that is missing.
        api: ApiKey,
        /// The versions this client can use, `min..max`.
        ours: String,
        /// What the broker advertised, or `none`.
        theirs: String,
    },

    /// The broker answered with an error code.
    #[error("{api:?} {context}: {code}{}", message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Broker {
        /// The API of the request.
        api: ApiKey,
        /// The error code.
        code: ResponseError,
        /// What the request was about: a topic, a partition, a group.
        context: String,
        /// The broker's error message, when it sent one.
        message: Option<String>,
    },

    /// No broker could be reached.
    #[error("no broker reachable (tried {tried})")]
    NoBrokerAvailable {
        /// The addresses that were tried.
        tried: String,
        /// The last failure seen.
        #[source]
        last: Arc<Error>,
    },

    /// An operation did not finish within its deadline.
    #[error("{operation} did not finish within {after:?}")]
    Timeout {
        /// What was being done.
        operation: String,
        /// The deadline that passed.
        after: Duration,
    },

    /// A topic or partition is not in the cluster's metadata.
    #[error("unknown topic or partition: {0}")]
    UnknownTopicOrPartition(String),

    /// A record is larger than `message.max.bytes`.
    #[error("record of {size} bytes exceeds message.max.bytes ({max})")]
    RecordTooLarge {
        /// Encoded size, batch overhead included.
        size: usize,
        /// The limit.
        max: usize,
    },

    /// A record could not be delivered within `delivery.timeout.ms`.
    #[error("delivery timed out after {after:?}; {}", if *maybe_written {
        "the record may have been written (its last attempt's outcome is unknown)"
    } else {
        "the record was not written"
    })]
    DeliveryTimeout {
        /// The timeout.
        after: Duration,
        /// Whether an attempt may have reached the log.
        maybe_written: bool,
        /// What the last attempt ran into, if there was one.
        #[source]
        last_error: Option<Arc<Error>>,
    },

    /// The record was not sent again: its partition had to restart its
    /// sequence numbers (a batch before it failed, or the broker lost the
    /// producer's state) while an earlier attempt of this record has no
    /// known outcome. Resent under a new sequence it could be written
    /// twice, so it fails instead; the producer goes on.
    #[error(
        "{reason}; the record may have been written (an earlier attempt's outcome is unknown), so it is not sent again"
    )]
    MaybeWritten {
        /// Why the partition's sequences restarted.
        reason: Arc<str>,
        /// What the last attempt ran into.
        #[source]
        last_error: Option<Arc<Error>>,
    },

    /// The producer hit an error it cannot recover from; every pending and
    /// later record fails with it.
    #[error("producer failed: {reason}")]
    ProducerFailed {
        /// What happened.
        reason: Arc<str>,
    },

    /// A partition has no position to start from: nothing committed and
    /// `auto.offset.reset` says not to guess.
    #[error("no offset to start from: {0}")]
    NoOffset(String),

    /// The log of a partition lost records this consumer had already
    /// returned (KIP-320): the leader's log parts from what was read at
    /// `divergence` (unknown: `None`), below the consumer's position
    /// `offset`.
    #[error("the log of {partition} was truncated below offset {offset} (the consumer's position): {}",
        match divergence {
            Some(d) => format!("records from offset {d} on are no longer in the leader's log"),
            None => "the leader cannot tell where its log parts from what was read".into(),
        })]
    LogTruncated {
        /// The partition.
        partition: crate::TopicPartition,
        /// The consumer's position: records before it were returned.
        offset: i64,
        /// The first offset whose record is gone, when the leader knows.
        divergence: Option<i64>,
    },

    /// The application did not poll the consumer within
    /// `max.poll.interval.ms`: the consumer left its group and lost its
    /// partitions; it rejoins when polled again.
    #[error("max.poll.interval.ms ({interval:?}) exceeded: left the group; polling again rejoins")]
    MaxPollIntervalExceeded {
        /// The interval that passed without a poll.
        interval: Duration,
    },

    /// An offset to store is below what this assignment of the partition
    /// already stored (or started from): storing it would move the next
    /// commit backwards. Only a position the consumer moved back (a seek,
    /// a truncation, an offset reset) lowers the floor.
    #[error("offset {offset} of {partition} is below {floor}, already stored or started from in this assignment")]
    OffsetBehind {
        /// The partition.
        partition: crate::TopicPartition,
        /// The offset refused.
        offset: i64,
        /// The lowest offset that may be stored.
        floor: i64,
    },

    /// A transactional producer's operation failed: the transaction must
    /// be aborted, the producer closed, or the call did not fit its state.
    #[error(transparent)]
    Transaction(#[from] crate::producer::TxnError),

    /// The client was closed.
    #[error("client closed")]
    Closed,
}

impl Error {
    pub(crate) fn connect(broker: impl fmt::Display, source: io::Error) -> Self {
        Error::Connect { broker: broker.to_string(), source: Arc::new(source) }
    }

    pub(crate) fn protocol(broker: impl fmt::Display, message: impl Into<String>) -> Self {
        Error::Protocol { broker: broker.to_string(), message: message.into() }
    }

    pub(crate) fn broker(api: ApiKey, code: ResponseError, context: impl Into<String>) -> Self {
        Error::Broker { api, code, context: context.into(), message: None }
    }

    /// The Kafka error code, when the broker sent one.
    pub fn code(&self) -> Option<ResponseError> {
        match self {
            Error::Broker { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// What a caller should do about this error.
    ///
    /// Broker codes go through [`classify`]. Network failures are worth a
    /// retry on a fresh connection; a timeout is [`ErrorAction::Ambiguous`]
    /// because the broker may have acted on the request.
    pub fn action(&self) -> ErrorAction {
        match self {
            Error::Broker { code, .. } => classify(*code),
            Error::NoBrokerAvailable { last, .. } if matches!(**last, Error::Security { .. }) => ErrorAction::Fatal,
            Error::Connect { .. } | Error::NoBrokerAvailable { .. } => ErrorAction::RefreshMetadata,
            Error::ConnectionClosed { .. } | Error::RequestTimeout { .. } => ErrorAction::Ambiguous,
            Error::UnknownTopicOrPartition(_) => ErrorAction::RefreshMetadata,
            Error::Config(_)
            | Error::Protocol { .. }
            | Error::Security { .. }
            | Error::UnsupportedApi { .. }
            | Error::Timeout { .. }
            | Error::RecordTooLarge { .. }
            | Error::DeliveryTimeout { .. }
            | Error::MaybeWritten { .. }
            | Error::ProducerFailed { .. }
            | Error::NoOffset(_)
            | Error::LogTruncated { .. }
            | Error::OffsetBehind { .. }
            | Error::Transaction(_)
            | Error::Closed => ErrorAction::Fatal,
            Error::MaxPollIntervalExceeded { .. } => ErrorAction::Retry,
        }
    }

    /// Whether a record that failed with this error may nonetheless be in
    /// the log: its delivery timed out or it was given up after an attempt
    /// whose outcome is unknown. A record failed with any other error was
    /// not written.
    pub fn maybe_written(&self) -> bool {
        match self {
            Error::DeliveryTimeout { maybe_written, .. } => *maybe_written,
            Error::MaybeWritten { .. } => true,
            _ => false,
        }
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_retriable(&self) -> bool {
        self.action() != ErrorAction::Fatal
    }
}

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorAction {
    /// Transient: send the same request again after a backoff.
    Retry,
    /// The client's picture of the cluster is stale (leader moved, topic
    /// just created, coordinator moved): refresh metadata or find the
    /// coordinator again, then retry.
    RefreshMetadata,
    /// The request may or may not have taken effect; a produce batch may
    /// have been written. Only an idempotent request may be retried, and a
    /// record must not be reported as "not written".
    Ambiguous,
    /// Retrying the same request cannot succeed; the caller must act.
    Fatal,
}

/// Classifies every Kafka error code.
///
/// The base rule is the protocol's own `retriable` flag (Kafka's
/// `Errors.java`, mirrored by [`ResponseError::is_retriable`]), refined in
/// three ways:
/// - retriable codes that mean "you asked the wrong broker" become
///   [`ErrorAction::RefreshMetadata`];
/// - codes after which a produce may have been written become
///   [`ErrorAction::Ambiguous`];
/// - a few codes the protocol marks non-retriable are in fact transient for
///   a client (`BROKER_NOT_AVAILABLE`, `CONCURRENT_TRANSACTIONS`,
///   `REBOOTSTRAP_REQUIRED`).
///
/// Codes that drive a state machine (group membership, idempotent producer
/// sequences, fetch positions) are `Fatal` here: the state machine handles
/// them before an error ever reaches this table.
pub const fn classify(code: ResponseError) -> ErrorAction {
    use ErrorAction::*;
    use ResponseError as E;
    match code {
        E::Unknown(_) => Fatal,
        E::UnknownServerError => Fatal,
        E::OffsetOutOfRange => Fatal,
        E::CorruptMessage => Retry,
        E::UnknownTopicOrPartition => RefreshMetadata,
        E::InvalidFetchSize => Fatal,
        E::LeaderNotAvailable => RefreshMetadata,
        E::NotLeaderOrFollower => RefreshMetadata,
        E::RequestTimedOut => Ambiguous,
        E::BrokerNotAvailable => RefreshMetadata,
        E::ReplicaNotAvailable => RefreshMetadata,
        E::MessageTooLarge => Fatal,
        E::StaleControllerEpoch => Fatal,
        E::OffsetMetadataTooLarge => Fatal,
        E::NetworkException => Ambiguous,
        E::CoordinatorLoadInProgress => Retry,
        E::CoordinatorNotAvailable => RefreshMetadata,
        E::NotCoordinator => RefreshMetadata,
        E::InvalidTopicException => Fatal,
        E::RecordListTooLarge => Fatal,
        E::NotEnoughReplicas => Retry,
        E::NotEnoughReplicasAfterAppend => Ambiguous,
        E::InvalidRequiredAcks => Fatal,
        E::IllegalGeneration => Fatal,
        E::InconsistentGroupProtocol => Fatal,
        E::InvalidGroupId => Fatal,
        E::UnknownMemberId => Fatal,
        E::InvalidSessionTimeout => Fatal,
        E::RebalanceInProgress => Fatal,
        E::InvalidCommitOffsetSize => Fatal,
        E::TopicAuthorizationFailed => Fatal,
        E::GroupAuthorizationFailed => Fatal,
        E::ClusterAuthorizationFailed => Fatal,
        E::InvalidTimestamp => Fatal,
        E::UnsupportedSaslMechanism => Fatal,
        E::IllegalSaslState => Fatal,
        E::UnsupportedVersion => Fatal,
        E::TopicAlreadyExists => Fatal,
        E::InvalidPartitions => Fatal,
        E::InvalidReplicationFactor => Fatal,
        E::InvalidReplicaAssignment => Fatal,
        E::InvalidConfig => Fatal,
        E::NotController => RefreshMetadata,
        E::InvalidRequest => Fatal,
        E::UnsupportedForMessageFormat => Fatal,
        E::PolicyViolation => Fatal,
        E::OutOfOrderSequenceNumber => Fatal,
        E::DuplicateSequenceNumber => Fatal,
        E::InvalidProducerEpoch => Fatal,
        E::InvalidTxnState => Fatal,
        E::InvalidProducerIdMapping => Fatal,
        E::InvalidTransactionTimeout => Fatal,
        E::ConcurrentTransactions => Retry,
        E::TransactionCoordinatorFenced => Fatal,
        E::TransactionalIdAuthorizationFailed => Fatal,
        E::SecurityDisabled => Fatal,
        E::OperationNotAttempted => Fatal,
        E::KafkaStorageError => RefreshMetadata,
        E::LogDirNotFound => Fatal,
        E::SaslAuthenticationFailed => Fatal,
        E::UnknownProducerId => Fatal,
        E::ReassignmentInProgress => Fatal,
        E::DelegationTokenAuthDisabled => Fatal,
        E::DelegationTokenNotFound => Fatal,
        E::DelegationTokenOwnerMismatch => Fatal,
        E::DelegationTokenRequestNotAllowed => Fatal,
        E::DelegationTokenAuthorizationFailed => Fatal,
        E::DelegationTokenExpired => Fatal,
        E::InvalidPrincipalType => Fatal,
        E::NonEmptyGroup => Fatal,
        E::GroupIdNotFound => Fatal,
        E::FetchSessionIdNotFound => Retry,
        E::InvalidFetchSessionEpoch => Retry,
        E::ListenerNotFound => RefreshMetadata,
        E::TopicDeletionDisabled => Fatal,
        E::FencedLeaderEpoch => RefreshMetadata,
        E::UnknownLeaderEpoch => RefreshMetadata,
        E::UnsupportedCompressionType => Fatal,
        E::StaleBrokerEpoch => Fatal,
        E::OffsetNotAvailable => Retry,
        E::MemberIdRequired => Fatal,
        E::PreferredLeaderNotAvailable => Retry,
        E::GroupMaxSizeReached => Fatal,
        E::FencedInstanceId => Fatal,
        E::EligibleLeadersNotAvailable => Retry,
        E::ElectionNotNeeded => Retry,
        E::NoReassignmentInProgress => Fatal,
        E::GroupSubscribedToTopic => Fatal,
        E::InvalidRecord => Fatal,
        E::UnstableOffsetCommit => Retry,
        E::ThrottlingQuotaExceeded => Retry,
        E::ProducerFenced => Fatal,
        E::ResourceNotFound => Fatal,
        E::DuplicateResource => Fatal,
        E::UnacceptableCredential => Fatal,
        E::InconsistentVoterSet => Fatal,
        E::InvalidUpdateVersion => Fatal,
        E::FeatureUpdateFailed => Fatal,
        E::PrincipalDeserializationFailure => Fatal,
        E::SnapshotNotFound => Fatal,
        E::PositionOutOfRange => Fatal,
        E::UnknownTopicId => RefreshMetadata,
        E::DuplicateBrokerRegistration => Fatal,
        E::BrokerIdNotRegistered => Fatal,
        E::InconsistentTopicId => RefreshMetadata,
        E::InconsistentClusterId => Fatal,
        E::TransactionalIdNotFound => Fatal,
        E::FetchSessionTopicIdError => RefreshMetadata,
        E::IneligibleReplica => Fatal,
        E::NewLeaderElected => Fatal,
        E::OffsetMovedToTieredStorage => Fatal,
        E::FencedMemberEpoch => Fatal,
        E::UnreleasedInstanceId => Fatal,
        E::UnsupportedAssignor => Fatal,
        E::StaleMemberEpoch => Fatal,
        E::MismatchedEndpointType => Fatal,
        E::UnsupportedEndpointType => Fatal,
        E::UnknownControllerId => Fatal,
        E::UnknownSubscriptionId => Fatal,
        E::TelemetryTooLarge => Fatal,
        E::InvalidRegistration => Fatal,
        E::TransactionAbortable => Fatal,
        E::InvalidRecordState => Fatal,
        E::ShareSessionNotFound => Retry,
        E::InvalidShareSessionEpoch => Retry,
        E::FencedStateEpoch => Fatal,
        E::InvalidVoterKey => Fatal,
        E::DuplicateVoter => Fatal,
        E::VoterNotFound => Fatal,
        E::InvalidRegularExpression => Fatal,
        E::RebootstrapRequired => RefreshMetadata,
        E::StreamsInvalidTopology => Fatal,
        E::StreamsInvalidTopologyEpoch => Fatal,
        E::StreamsTopologyFenced => Fatal,
        E::ShareSessionLimitReached => Retry,
    }
}

/// Turns a response's error code into `Ok(())` or an [`Error::Broker`].
pub(crate) fn check(api: ApiKey, code: i16, context: impl FnOnce() -> String) -> Result<()> {
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(code) => Err(Error::broker(api, code, context())),
    }
}

/// Like [`check`], with the broker's error message when the response has one.
pub(crate) fn check_with_message(
    api: ApiKey,
    code: i16,
    message: Option<&str>,
    context: impl FnOnce() -> String,
) -> Result<()> {
    check(api, code, context).map_err(|mut error| {
        if let Error::Broker { message: slot, .. } = &mut error {
            *slot = message.filter(|m| !m.is_empty()).map(str::to_owned);
        }
        error
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest code `kafka-protocol` 0.18 knows. A bump that adds codes
    /// fails the exhaustive match above first; this keeps the loop honest.
    const HIGHEST_KNOWN_CODE: i16 = 133;

    /// Codes whose classification departs from the protocol's retriable flag,
    /// each for a stated reason. Everything else follows the flag.
    const NON_RETRIABLE_BUT_TRANSIENT: &[ResponseError] = &[
        // The broker is down or restarting: another broker or a fresh
        // connection will do (librdkafka and Java both retry).
        ResponseError::BrokerNotAvailable,
        // The transaction coordinator is finishing a previous transaction.
        ResponseError::ConcurrentTransactions,
        // KIP-899: the client must bootstrap again, then carry on.
        ResponseError::RebootstrapRequired,
    ];

    #[test]
    fn every_code_is_classified_consistently_with_the_protocol() {
        for raw in -1..=HIGHEST_KNOWN_CODE {
            let Some(code) = ResponseError::try_from_code(raw) else {
                assert_eq!(raw, 0, "only 0 means no error");
                continue;
            };
            assert!(
                !matches!(code, ResponseError::Unknown(_)),
                "code {raw} is unknown to kafka-protocol; update HIGHEST_KNOWN_CODE"
            );
            let action = classify(code);
            let transient = action != ErrorAction::Fatal;
            let expected = code.is_retriable() || NON_RETRIABLE_BUT_TRANSIENT.contains(&code);
            assert_eq!(
                transient,
                expected,
                "{code:?} ({raw}) classified {action:?}, protocol retriable = {}",
                code.is_retriable()
            );
        }
    }

    #[test]
    fn leadership_errors_refresh_metadata() {
        for code in [
            ResponseError::NotLeaderOrFollower,
            ResponseError::LeaderNotAvailable,
            ResponseError::UnknownTopicOrPartition,
            ResponseError::NotController,
            ResponseError::NotCoordinator,
            ResponseError::CoordinatorNotAvailable,
            ResponseError::FencedLeaderEpoch,
            ResponseError::UnknownTopicId,
        ] {
            assert_eq!(classify(code), ErrorAction::RefreshMetadata, "{code:?}");
        }
    }

    #[test]
    fn possibly_written_produce_errors_are_ambiguous() {
        for code in [
            ResponseError::RequestTimedOut,
            ResponseError::NotEnoughReplicasAfterAppend,
            ResponseError::NetworkException,
        ] {
            assert_eq!(classify(code), ErrorAction::Ambiguous, "{code:?}");
        }
        // Rejected before the append: safe to retry, never ambiguous.
        assert_eq!(classify(ResponseError::NotEnoughReplicas), ErrorAction::Retry);
    }

    #[test]
    fn codes_newer_than_the_crate_are_fatal() {
        let code = ResponseError::try_from_code(HIGHEST_KNOWN_CODE + 1000).unwrap();
        assert_eq!(classify(code), ErrorAction::Fatal);
    }

    #[test]
    fn broker_error_display_names_api_context_and_message() {
        let error = check_with_message(ApiKey::CreateTopics, 36, Some("exists"), || "topic t".into()).unwrap_err();
        assert_eq!(error.to_string(), "CreateTopics topic t: TopicAlreadyExists (exists)");
        assert_eq!(error.code(), Some(ResponseError::TopicAlreadyExists));
        assert!(!error.is_retriable());
    }
}
