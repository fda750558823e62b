//! The client's numbers, through the [`metrics`] facade: nothing is
//! recorded unless the application installs a recorder (a Prometheus
//! exporter, for instance).
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `rill_client_request_duration_seconds` | histogram | `api` |
//! | `rill_client_requests_in_flight` | gauge | |
//! | `rill_client_reconnects_total` | counter | |
//! | `rill_producer_batch_bytes` | histogram | |
//! | `rill_producer_batch_records` | histogram | |
//! | `rill_consumer_lag` | gauge (records between the fetch position and the high watermark, or the last stable offset under read_committed) | `topic`, `partition` |

use std::time::Instant;

use crate::TopicPartition;

/// The `api` label of a request key.
pub fn api_name(key: i16) -> &'static str {
    match key {
        0 => "Produce",
        1 => "Fetch",
        2 => "ListOffsets",
        3 => "Metadata",
        8 => "OffsetCommit",
        9 => "OffsetFetch",
        10 => "FindCoordinator",
        11 => "JoinGroup",
        12 => "Heartbeat",
        13 => "LeaveGroup",
        14 => "SyncGroup",
        17 => "SaslHandshake",
        18 => "ApiVersions",
        19 => "CreateTopics",
        20 => "DeleteTopics",
        22 => "InitProducerId",
        23 => "OffsetForLeaderEpoch",
        36 => "SaslAuthenticate",
        _ => "other",
    }
}

/// One request under way: counted in flight until answered or dropped;
/// its duration recorded when answered.
pub(crate) struct RequestTiming {
    api: &'static str,
    started: Instant,
}

impl RequestTiming {
    pub(crate) fn start(key: i16) -> Self {
        metrics::gauge!("rill_client_requests_in_flight").increment(1.0);
        RequestTiming { api: api_name(key), started: Instant::now() }
    }

    pub(crate) fn answered(&self) {
        metrics::histogram!("rill_client_request_duration_seconds", "api" => self.api)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for RequestTiming {
    fn drop(&mut self) {
        metrics::gauge!("rill_client_requests_in_flight").decrement(1.0);
    }
}

/// A consumer's lag on a partition, as of its last fetch.
pub(crate) fn consumer_lag(partition: &TopicPartition, lag: i64) {
    metrics::gauge!("rill_consumer_lag", "topic" => partition.topic.clone(), "partition" => partition.partition.to_string())
        .set(lag as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_keys_name_their_api() {
        assert_eq!(api_name(0), "Produce");
        assert_eq!(api_name(1), "Fetch");
        assert_eq!(api_name(999), "other");
    }
}
