//! ApiVersions negotiation: the only place a request version is chosen.
//!
//! Each connection sends ApiVersions first and keeps what the broker
//! advertised; every request then goes out at the highest version both sides
//! support (`ApiRequest::SUPPORTED` ∩ the broker's range). The crate's
//! `ApiKey::valid_versions()` is not used: for three APIs it advertises
//! versions the crate cannot encode.

use std::collections::BTreeMap;

use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::protocol::VersionRange;

use super::{ApiRequest, CLIENT_APIS};

/// What one broker advertised in ApiVersions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiVersions {
    ranges: BTreeMap<i16, (i16, i16)>,
}

/// The outcome of negotiating one API with one broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// The API.
    pub api: ApiKey,
    /// The versions this client speaks.
    pub ours: (i16, i16),
    /// The versions the broker advertised, if it has the API.
    pub theirs: Option<(i16, i16)>,
    /// The version requests go out at, if the ranges overlap.
    pub chosen: Option<i16>,
}

impl ApiVersions {
    /// Reads a broker's ApiVersions answer. Keys unknown to this client
    /// (newer APIs) are kept as numbers and otherwise ignored.
    pub fn from_response(response: &ApiVersionsResponse) -> Self {
        let ranges = response.api_keys.iter().map(|api| (api.api_key, (api.min_version, api.max_version))).collect();
        ApiVersions { ranges }
    }

    /// Builds a table from `(api key, min, max)` rows.
    pub fn from_ranges(rows: impl IntoIterator<Item = (i16, i16, i16)>) -> Self {
        ApiVersions { ranges: rows.into_iter().map(|(key, min, max)| (key, (min, max))).collect() }
    }

    /// The broker's range for an API, if it has it.
    pub fn range(&self, api: ApiKey) -> Option<(i16, i16)> {
        self.ranges.get(&(api as i16)).copied()
    }

    /// The highest version in both `ours` and the broker's range.
    pub fn negotiate(&self, api: ApiKey, ours: VersionRange) -> Negotiated {
        let theirs = self.range(api);
        let chosen = theirs.and_then(|(min, max)| {
            let both = ours.intersect(&VersionRange { min, max });
            (!both.is_empty()).then_some(both.max)
        });
        Negotiated { api, ours: (ours.min, ours.max), theirs, chosen }
    }

    /// The version to send `R` at.
    pub fn version_for<R: ApiRequest>(&self) -> Result<i16, Negotiated> {
        let negotiated = self.negotiate(R::KEY, R::SUPPORTED);
        negotiated.chosen.ok_or(negotiated)
    }

    /// Negotiation results for every API this client uses.
    pub fn client_apis(&self) -> Vec<Negotiated> {
        CLIENT_APIS.iter().map(|(api, ours)| self.negotiate(*api, *ours)).collect()
    }

    /// Number of APIs the broker advertised.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether the broker advertised nothing.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

impl Negotiated {
    /// `min..max` of the broker's range, or `none`.
    pub fn theirs_display(&self) -> String {
        match self.theirs {
            Some((min, max)) => format!("{min}..{max}"),
            None => "none".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::Message;

    /// The version ranges of every message type the client sends or
    /// receives, as `kafka-protocol` 0.18.0 defines them. A crate bump that
    /// changes any of them fails here, so each change is looked at.
    #[test]
    fn crate_version_ranges_are_the_reviewed_ones() {
        fn range<M: Message>() -> (i16, i16) {
            (M::VERSIONS.min, M::VERSIONS.max)
        }
        let actual = [
            ("ApiVersionsRequest", range::<ApiVersionsRequest>()),
            ("ApiVersionsResponse", range::<ApiVersionsResponse>()),
            ("MetadataRequest", range::<MetadataRequest>()),
            ("MetadataResponse", range::<MetadataResponse>()),
            ("CreateTopicsRequest", range::<CreateTopicsRequest>()),
            ("CreateTopicsResponse", range::<CreateTopicsResponse>()),
            ("DeleteTopicsRequest", range::<DeleteTopicsRequest>()),
            ("DeleteTopicsResponse", range::<DeleteTopicsResponse>()),
            ("ListOffsetsRequest", range::<ListOffsetsRequest>()),
            ("ListOffsetsResponse", range::<ListOffsetsResponse>()),
            ("ProduceRequest", range::<ProduceRequest>()),
            ("ProduceResponse", range::<ProduceResponse>()),
            ("FetchRequest", range::<FetchRequest>()),
            ("FetchResponse", range::<FetchResponse>()),
            ("FindCoordinatorRequest", range::<FindCoordinatorRequest>()),
            ("FindCoordinatorResponse", range::<FindCoordinatorResponse>()),
            ("JoinGroupRequest", range::<JoinGroupRequest>()),
            ("JoinGroupResponse", range::<JoinGroupResponse>()),
            ("SyncGroupRequest", range::<SyncGroupRequest>()),
            ("SyncGroupResponse", range::<SyncGroupResponse>()),
            ("HeartbeatRequest", range::<HeartbeatRequest>()),
            ("HeartbeatResponse", range::<HeartbeatResponse>()),
            ("LeaveGroupRequest", range::<LeaveGroupRequest>()),
            ("LeaveGroupResponse", range::<LeaveGroupResponse>()),
            ("OffsetCommitRequest", range::<OffsetCommitRequest>()),
            ("OffsetCommitResponse", range::<OffsetCommitResponse>()),
            ("OffsetFetchRequest", range::<OffsetFetchRequest>()),
            ("OffsetFetchResponse", range::<OffsetFetchResponse>()),
            ("InitProducerIdRequest", range::<InitProducerIdRequest>()),
            ("InitProducerIdResponse", range::<InitProducerIdResponse>()),
            ("ListGroupsRequest", range::<ListGroupsRequest>()),
            ("ListGroupsResponse", range::<ListGroupsResponse>()),
            ("DescribeGroupsRequest", range::<DescribeGroupsRequest>()),
            ("DescribeGroupsResponse", range::<DescribeGroupsResponse>()),
            ("DeleteGroupsRequest", range::<DeleteGroupsRequest>()),
            ("DeleteGroupsResponse", range::<DeleteGroupsResponse>()),
            ("OffsetDeleteRequest", range::<OffsetDeleteRequest>()),
            ("OffsetDeleteResponse", range::<OffsetDeleteResponse>()),
            ("DescribeConfigsRequest", range::<DescribeConfigsRequest>()),
            ("DescribeConfigsResponse", range::<DescribeConfigsResponse>()),
            ("IncrementalAlterConfigsRequest", range::<IncrementalAlterConfigsRequest>()),
            ("IncrementalAlterConfigsResponse", range::<IncrementalAlterConfigsResponse>()),
            ("CreatePartitionsRequest", range::<CreatePartitionsRequest>()),
            ("CreatePartitionsResponse", range::<CreatePartitionsResponse>()),
            ("DeleteRecordsRequest", range::<DeleteRecordsRequest>()),
            ("DeleteRecordsResponse", range::<DeleteRecordsResponse>()),
        ];
        let reviewed = [
            ("ApiVersionsRequest", (0, 4)),
            ("ApiVersionsResponse", (0, 4)),
            ("MetadataRequest", (0, 13)),
            ("MetadataResponse", (0, 13)),
            ("CreateTopicsRequest", (2, 7)),
            ("CreateTopicsResponse", (2, 7)),
            ("DeleteTopicsRequest", (1, 6)),
            ("DeleteTopicsResponse", (1, 6)),
            ("ListOffsetsRequest", (1, 10)),
            ("ListOffsetsResponse", (1, 10)),
            ("ProduceRequest", (3, 13)),
            ("ProduceResponse", (3, 13)),
            ("FetchRequest", (4, 18)),
            ("FetchResponse", (4, 18)),
            ("FindCoordinatorRequest", (0, 6)),
            ("FindCoordinatorResponse", (0, 6)),
            ("JoinGroupRequest", (0, 9)),
            ("JoinGroupResponse", (0, 9)),
            ("SyncGroupRequest", (0, 5)),
            ("SyncGroupResponse", (0, 5)),
            ("HeartbeatRequest", (0, 4)),
            ("HeartbeatResponse", (0, 4)),
            ("LeaveGroupRequest", (0, 5)),
            ("LeaveGroupResponse", (0, 5)),
            // The crate's ApiKey table says 10; the requests stop at 9 and
            // the responses keep the unstable v10.
            ("OffsetCommitRequest", (2, 9)),
            ("OffsetCommitResponse", (2, 10)),
            ("OffsetFetchRequest", (1, 9)),
            ("OffsetFetchResponse", (1, 10)),
            ("InitProducerIdRequest", (0, 5)),
            // One more than the request: the crate drops the unstable v6
            // request but keeps the response.
            ("InitProducerIdResponse", (0, 6)),
            ("ListGroupsRequest", (0, 5)),
            ("ListGroupsResponse", (0, 5)),
            ("DescribeGroupsRequest", (0, 6)),
            ("DescribeGroupsResponse", (0, 6)),
            ("DeleteGroupsRequest", (0, 2)),
            ("DeleteGroupsResponse", (0, 2)),
            ("OffsetDeleteRequest", (0, 0)),
            ("OffsetDeleteResponse", (0, 0)),
            ("DescribeConfigsRequest", (1, 4)),
            ("DescribeConfigsResponse", (1, 4)),
            ("IncrementalAlterConfigsRequest", (0, 1)),
            ("IncrementalAlterConfigsResponse", (0, 1)),
            ("CreatePartitionsRequest", (0, 3)),
            ("CreatePartitionsResponse", (0, 3)),
            ("DeleteRecordsRequest", (0, 2)),
            ("DeleteRecordsResponse", (0, 2)),
        ];
        assert_eq!(actual, reviewed);
    }

    #[test]
    fn supported_ranges_lie_within_what_the_crate_encodes() {
        fn check<R: ApiRequest>() {
            let (ours, crate_range) = (R::SUPPORTED, R::VERSIONS);
            assert!(
                ours.min >= crate_range.min && ours.max <= crate_range.max && ours.min <= ours.max,
                "{:?}: {ours} not within {crate_range}",
                R::KEY
            );
            let response = <R::Response as Message>::VERSIONS;
            assert!(ours.min >= response.min && ours.max <= response.max, "{:?} response", R::KEY);
        }
        check::<ApiVersionsRequest>();
        check::<MetadataRequest>();
        check::<CreateTopicsRequest>();
        check::<DeleteTopicsRequest>();
        check::<ListOffsetsRequest>();
        check::<ProduceRequest>();
        check::<InitProducerIdRequest>();
        check::<FetchRequest>();
        check::<FindCoordinatorRequest>();
        check::<JoinGroupRequest>();
        check::<SyncGroupRequest>();
        check::<HeartbeatRequest>();
        check::<LeaveGroupRequest>();
        check::<OffsetCommitRequest>();
        check::<OffsetFetchRequest>();
        check::<ListGroupsRequest>();
        check::<DescribeGroupsRequest>();
        check::<DeleteGroupsRequest>();
        check::<OffsetDeleteRequest>();
        check::<DescribeConfigsRequest>();
        check::<IncrementalAlterConfigsRequest>();
        check::<CreatePartitionsRequest>();
        check::<DeleteRecordsRequest>();
    }

    #[test]
    fn negotiation_picks_the_highest_common_version() {
        // Tansu advertises Metadata 0..12, the librdkafka 2.16 mock 0..13.
        let tansu = ApiVersions::from_ranges([(3, 0, 12), (19, 0, 7)]);
        assert_eq!(tansu.version_for::<MetadataRequest>(), Ok(12));
        assert_eq!(tansu.version_for::<CreateTopicsRequest>(), Ok(7));
        let mock = ApiVersions::from_ranges([(3, 0, 13)]);
        assert_eq!(mock.version_for::<MetadataRequest>(), Ok(13));

        // The mock has no CreateTopics: the error says what is missing.
        let missing = mock.version_for::<CreateTopicsRequest>().unwrap_err();
        assert_eq!(missing.theirs, None);
        assert_eq!(missing.theirs_display(), "none");

        // A broker whose range does not overlap ours.
        let old = ApiVersions::from_ranges([(3, 0, 0)]);
        let disjoint = old.version_for::<MetadataRequest>().unwrap_err();
        assert_eq!(disjoint.theirs, Some((0, 0)));
        assert_eq!(disjoint.chosen, None);
    }

    #[test]
    fn unknown_api_keys_are_ignored() {
        let response = ApiVersionsResponse::default().with_api_keys(vec![
            ApiVersion::default().with_api_key(3).with_min_version(0).with_max_version(12),
            ApiVersion::default().with_api_key(88).with_min_version(0).with_max_version(0),
        ]);
        let table = ApiVersions::from_response(&response);
        assert_eq!(table.len(), 2);
        assert_eq!(table.version_for::<MetadataRequest>(), Ok(12));
        assert!(table.client_apis().iter().any(|n| n.api == ApiKey::Metadata && n.chosen == Some(12)));
    }
}
