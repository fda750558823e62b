//! Bytes ↔ `kafka-protocol` types. No sockets, no clock.
//!
//! - [`ApiRequest`]: the requests this client sends, with the versions it
//!   speaks and the response it expects.
//! - `frame`: the size prefix, request header encoding, response decoding and
//!   the incremental `frame::FrameReader`.
//! - [`versions`]: ApiVersions negotiation, the only place a version is
//!   chosen.
//! - `shape` (+ generated `shapes`): the walk that bounds every count in a
//!   response before the crate decodes it.

pub(crate) mod frame;
pub(crate) mod produce;
pub(crate) mod shape;
#[rustfmt::skip]
pub(crate) mod shapes;
pub mod versions;

use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey,
    ApiVersionsRequest, ApiVersionsResponse, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse,
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteGroupsRequest, DeleteGroupsResponse, DeleteRecordsRequest,
    DeleteRecordsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, EndTxnRequest, EndTxnResponse, FetchRequest, FetchResponse,
    FindCoordinatorRequest, FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, InitProducerIdRequest, InitProducerIdResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ProduceRequest, ProduceResponse,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse, SyncGroupRequest,
    SyncGroupResponse, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, VersionRange};

use shape::StructShape;

mod sealed {
    pub trait Sealed {}
}

/// A request this client knows how to send.
///
/// Sealed: each implementation comes with the wire shape of its response
/// (see `wire::shape`), which only this crate can provide.
pub trait ApiRequest: sealed::Sealed + Encodable + HeaderVersion + Message + Send + Sync + 'static {
    /// The API key.
    const KEY: ApiKey;
    /// The versions this client sends, a subset of [`Message::VERSIONS`].
    /// Negotiation picks the highest one the broker also supports.
    const SUPPORTED: VersionRange;
    /// The response type.
    type Response: Decodable + HeaderVersion + Message + Send + 'static;
    #[doc(hidden)]
    fn response_shape() -> &'static StructShapeHandle;
}

/// Opaque handle on a response shape.
#[doc(hidden)]
#[derive(Debug)]
pub struct StructShapeHandle(pub(crate) &'static StructShape);

macro_rules! api_requests {
    ($($request:ident => $response:ident, $key:ident, $min:literal..=$max:literal, $shape:ident;)*) => {
        $(
            impl sealed::Sealed for $request {}
            impl ApiRequest for $request {
                const KEY: ApiKey = ApiKey::$key;
                const SUPPORTED: VersionRange = VersionRange { min: $min, max: $max };
                type Response = $response;
                fn response_shape() -> &'static StructShapeHandle {
                    static HANDLE: StructShapeHandle = StructShapeHandle(&shapes::$shape);
                    &HANDLE
                }
            }
        )*

        /// Every API this client uses, with the versions it speaks.
        pub const CLIENT_APIS: &[(ApiKey, VersionRange)] = &[
            $((ApiKey::$key, VersionRange { min: $min, max: $max }),)*
        ];

        /// Decodes `frame` (header and body) as the answer to `key` at
        /// `version`, as the connection would; `None` for an API this
        /// client does not use. For the fuzz targets.
        pub(crate) fn decode_response_of(
            key: ApiKey,
            frame: bytes::Bytes,
            version: i16,
        ) -> Option<Result<(), String>> {
            $(
                if key == ApiKey::$key {
                    return Some(frame::decode_response::<$request>(frame, version).map(|_| ()));
                }
            )*
            None
        }
    };
}

api_requests! {
    // v3+ carries the client software name and version (KIP-511); v4 adds
    // nothing a client needs.
    ApiVersionsRequest => ApiVersionsResponse, ApiVersions, 0..=3, API_VERSIONS_RESPONSE;
    // v0 reads an empty topic list as "all topics"; from v1 on an empty
    // list means none and null means all, which is what this client relies on.
    MetadataRequest => MetadataResponse, Metadata, 1..=13, METADATA_RESPONSE;
    CreateTopicsRequest => CreateTopicsResponse, CreateTopics, 2..=7, CREATE_TOPICS_RESPONSE;
    DeleteTopicsRequest => DeleteTopicsResponse, DeleteTopics, 1..=6, DELETE_TOPICS_RESPONSE;
    ListOffsetsRequest => ListOffsetsResponse, ListOffsets, 1..=10, LIST_OFFSETS_RESPONSE;
    // v3 brought record batch v2 (idempotence), v7 zstd. v13 names topics
    // by id only; this client stops at v12 and names them.
    ProduceRequest => ProduceResponse, Produce, 3..=12, PRODUCE_RESPONSE;
    // Tansu answers v0-2 with UNKNOWN_SERVER_ERROR; v3+ carries the
    // producer id and epoch for an epoch bump (KIP-360).
    InitProducerIdRequest => InitProducerIdResponse, InitProducerId, 0..=5, INIT_PRODUCER_ID_RESPONSE;
    // v4 is the crate's oldest; v13 names topics by id only, so this
    // client stops at v12.
    FetchRequest => FetchResponse, Fetch, 4..=12, FETCH_RESPONSE;
    // v4+ looks up a batch of keys (`coordinator_keys`); the client speaks both.
    FindCoordinatorRequest => FindCoordinatorResponse, FindCoordinator, 0..=6, FIND_COORDINATOR_RESPONSE;
    // v1 brought the rebalance timeout, v4 MEMBER_ID_REQUIRED, v5 static members.
    JoinGroupRequest => JoinGroupResponse, JoinGroup, 1..=9, JOIN_GROUP_RESPONSE;
    SyncGroupRequest => SyncGroupResponse, SyncGroup, 0..=5, SYNC_GROUP_RESPONSE;
    HeartbeatRequest => HeartbeatResponse, Heartbeat, 0..=4, HEARTBEAT_RESPONSE;
    // v3+ leaves by `members` (with group.instance.id).
    LeaveGroupRequest => LeaveGroupResponse, LeaveGroup, 0..=5, LEAVE_GROUP_RESPONSE;
    // v9 is for KIP-848 groups (member epochs, which Kafka requires of
    // their members); a classic group's commits stop at v8.
    OffsetCommitRequest => OffsetCommitResponse, OffsetCommit, 2..=9, OFFSET_COMMIT_RESPONSE;
    // v8+ batches groups; one group per request suffices here.
    OffsetFetchRequest => OffsetFetchResponse, OffsetFetch, 1..=7, OFFSET_FETCH_RESPONSE;
    // KIP-320 position validation. v2 is the crate's oldest and all that
    // librdkafka's mock offers; v3 adds the replica id, v4 is flexible.
    OffsetForLeaderEpochRequest => OffsetForLeaderEpochResponse, OffsetForLeaderEpoch, 2..=4, OFFSET_FOR_LEADER_EPOCH_RESPONSE;
    // v0 sends the mechanism's tokens raw, outside Kafka framing; v1 wraps
    // them in SaslAuthenticate (KIP-152). This client speaks v1 only.
    SaslHandshakeRequest => SaslHandshakeResponse, SaslHandshake, 1..=1, SASL_HANDSHAKE_RESPONSE;
    // v1 brought session_lifetime_ms (KIP-368), v2 is flexible.
    SaslAuthenticateRequest => SaslAuthenticateResponse, SaslAuthenticate, 0..=2, SASL_AUTHENTICATE_RESPONSE;
    // Administration. ListGroups v4 filters by state, v5 by type (KIP-848).
    ListGroupsRequest => ListGroupsResponse, ListGroups, 0..=5, LIST_GROUPS_RESPONSE;
    // v3 reports authorized operations, v5 is flexible, v6 answers an
    // unknown group with GROUP_ID_NOT_FOUND instead of the state `Dead`.
    DescribeGroupsRequest => DescribeGroupsResponse, DescribeGroups, 0..=6, DESCRIBE_GROUPS_RESPONSE;
    DeleteGroupsRequest => DeleteGroupsResponse, DeleteGroups, 0..=2, DELETE_GROUPS_RESPONSE;
    OffsetDeleteRequest => OffsetDeleteResponse, OffsetDelete, 0..=0, OFFSET_DELETE_RESPONSE;
    // v1 returns each config's source, v3 its type and documentation.
    DescribeConfigsRequest => DescribeConfigsResponse, DescribeConfigs, 1..=4, DESCRIBE_CONFIGS_RESPONSE;
    IncrementalAlterConfigsRequest => IncrementalAlterConfigsResponse, IncrementalAlterConfigs, 0..=1, INCREMENTAL_ALTER_CONFIGS_RESPONSE;
    CreatePartitionsRequest => CreatePartitionsResponse, CreatePartitions, 0..=3, CREATE_PARTITIONS_RESPONSE;
    DeleteRecordsRequest => DeleteRecordsResponse, DeleteRecords, 0..=2, DELETE_RECORDS_RESPONSE;
    // KIP-848 groups: v1 brought the regex subscription and member ids
    // that the client makes (KIP-1082).
    ConsumerGroupHeartbeatRequest => ConsumerGroupHeartbeatResponse, ConsumerGroupHeartbeat, 0..=1, CONSUMER_GROUP_HEARTBEAT_RESPONSE;
    ConsumerGroupDescribeRequest => ConsumerGroupDescribeResponse, ConsumerGroupDescribe, 0..=1, CONSUMER_GROUP_DESCRIBE_RESPONSE;
    // Transactions (KIP-98, KIP-447). A client's AddPartitionsToTxn stops
    // at v3 (v4+ batches transactions, for brokers); TxnOffsetCommit v3
    // carries the group's generation and member (KIP-447).
    AddPartitionsToTxnRequest => AddPartitionsToTxnResponse, AddPartitionsToTxn, 0..=3, ADD_PARTITIONS_TO_TXN_RESPONSE;
    AddOffsetsToTxnRequest => AddOffsetsToTxnResponse, AddOffsetsToTxn, 0..=3, ADD_OFFSETS_TO_TXN_RESPONSE;
    EndTxnRequest => EndTxnResponse, EndTxn, 0..=3, END_TXN_RESPONSE;
    TxnOffsetCommitRequest => TxnOffsetCommitResponse, TxnOffsetCommit, 0..=3, TXN_OFFSET_COMMIT_RESPONSE;
}
