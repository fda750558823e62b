//! The consumer protocol's embedded messages: what a member subscribes to
//! (its metadata in JoinGroup) and what the leader assigns it (in
//! SyncGroup). Both travel as `[version: i16][message]`, the version outside
//! the struct; a newer version than we know is read as the newest we know
//! (the schema only appends fields), as Java and librdkafka do.
//!
//! Other members wrote these bytes, so they are walked for sane counts
//! before `kafka-protocol` decodes them (see `wire::shape`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedTopic;
use kafka_protocol::messages::consumer_protocol_subscription::TopicPartition as OwnedTopic;
use kafka_protocol::messages::{ConsumerProtocolAssignment, ConsumerProtocolSubscription, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::TopicPartition;
use crate::wire::{shape, shapes};

/// The subscription version written: v3 carries owned partitions (v1),
/// the generation they were owned in (v2) and a rack (v3).
const SUBSCRIPTION_VERSION: i16 = 3;
/// The assignment version written (all versions have the same fields).
const ASSIGNMENT_VERSION: i16 = 3;

/// One member's subscription, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Subscription {
    pub(crate) topics: Vec<String>,
    /// Partitions the member owns now (cooperative rebalancing).
    pub(crate) owned: Vec<TopicPartition>,
    /// The generation in which it owned them; -1 when unknown.
    pub(crate) generation: i32,
}

/// Groups partitions by topic, in order.
fn by_topic(partitions: &[TopicPartition]) -> Vec<(&str, Vec<i32>)> {
    let mut sorted: Vec<&TopicPartition> = partitions.iter().collect();
    sorted.sort();
    let mut out: Vec<(&str, Vec<i32>)> = Vec::new();
    for tp in sorted {
        match out.last_mut() {
            Some((topic, list)) if *topic == tp.topic => list.push(tp.partition),
            _ => out.push((tp.topic.as_str(), vec![tp.partition])),
        }
    }
    out
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

fn versioned<T: Encodable>(message: &T, version: i16) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_i16(version);
    // Encoding fails only on fields absent from a version; both messages
    // have every field we set in the versions written.
    message.encode(&mut out, version).expect("consumer protocol message encodes");
    out.freeze()
}

/// Splits off the version and checks the rest against the message's shape.
fn unversioned<'b>(bytes: &'b [u8], what: &str, wire: &'static shape::StructShape) -> Result<(i16, &'b [u8]), String> {
    let mut body = bytes;
    if body.len() < 2 {
        return Err(format!("{what}: {} bytes, too short for a version", bytes.len()));
    }
    let version = body.get_i16();
    if version < 0 {
        return Err(format!("{what}: negative version {version}"));
    }
    let version = version.min(wire.versions.1);
    shape::check(wire, version, body).map_err(|e| format!("{what} v{version}: {e}"))?;
    Ok((version, body))
}

/// The metadata a member sends in JoinGroup.
pub(crate) fn encode_subscription(subscription: &Subscription) -> Bytes {
    let message = ConsumerProtocolSubscription::default()
        .with_topics(subscription.topics.iter().map(|t| StrBytes::from_string(t.clone())).collect())
        .with_owned_partitions(
            by_topic(&subscription.owned)
                .into_iter()
                .map(|(topic, partitions)| OwnedTopic::default().with_topic(name(topic)).with_partitions(partitions))
                .collect(),
        )
        .with_generation_id(subscription.generation);
    versioned(&message, SUBSCRIPTION_VERSION)
}

/// Reads a member's JoinGroup metadata.
pub(crate) fn decode_subscription(bytes: &[u8]) -> Result<Subscription, String> {
    let (version, body) = unversioned(bytes, "subscription", &shapes::CONSUMER_PROTOCOL_SUBSCRIPTION)?;
    let message = ConsumerProtocolSubscription::decode(&mut Bytes::copy_from_slice(body), version)
        .map_err(|e| format!("subscription v{version}: {e}"))?;
    let owned = message
        .owned_partitions
        .iter()
        .flat_map(|t| t.partitions.iter().map(|&p| TopicPartition::new(t.topic.as_str(), p)))
        .collect();
    // Before v2 (and in some clients still) the generation rides in the
    // user data: a bare i32 (Java's cooperative-sticky) or after the
    // previous assignment (the sticky assignor's user data v1).
    let generation = if version >= 2 && message.generation_id >= 0 {
        message.generation_id
    } else {
        message.user_data.as_deref().and_then(generation_in_user_data).unwrap_or(-1)
    };
    Ok(Subscription { topics: message.topics.iter().map(|t| t.as_str().to_owned()).collect(), owned, generation })
}

/// The generation in sticky-assignor user data, when it parses exactly.
fn generation_in_user_data(mut data: &[u8]) -> Option<i32> {
    if data.len() == 4 {
        return Some(data.get_i32());
    }
    let topics = data.try_get_i32().ok()?;
    for _ in 0..topics {
        let len = usize::try_from(data.try_get_i16().ok()?).ok()?;
        data = data.get(len..)?;
        let partitions = usize::try_from(data.try_get_i32().ok()?).ok()?;
        data = data.get(partitions.checked_mul(4)?..)?;
    }
    let generation = data.try_get_i32().ok()?;
    data.is_empty().then_some(generation)
}

/// The assignment the leader sends a member in SyncGroup.
pub(crate) fn encode_assignment(partitions: &[TopicPartition]) -> Bytes {
    let message = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic(partitions)
            .into_iter()
            .map(|(topic, partitions)| AssignedTopic::default().with_topic(name(topic)).with_partitions(partitions))
            .collect(),
    );
    versioned(&message, ASSIGNMENT_VERSION)
}

/// Reads the assignment SyncGroup returned; empty bytes assign nothing.
pub(crate) fn decode_assignment(bytes: &[u8]) -> Result<Vec<TopicPartition>, String> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let (version, body) = unversioned(bytes, "assignment", &shapes::CONSUMER_PROTOCOL_ASSIGNMENT)?;
    let message = ConsumerProtocolAssignment::decode(&mut Bytes::copy_from_slice(body), version)
        .map_err(|e| format!("assignment v{version}: {e}"))?;
    let mut partitions: Vec<TopicPartition> = message
        .assigned_partitions
        .iter()
        .flat_map(|t| t.partitions.iter().map(|&p| TopicPartition::new(t.topic.as_str(), p)))
        .collect();
    partitions.sort();
    partitions.dedup();
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(topic: &str, partition: i32) -> TopicPartition {
        TopicPartition::new(topic, partition)
    }

    #[test]
    fn subscription_round_trips() {
        let subscription = Subscription {
            topics: vec!["a".into(), "b".into()],
            owned: vec![tp("b", 1), tp("a", 2), tp("a", 0)],
            generation: 7,
        };
        let decoded = decode_subscription(&encode_subscription(&subscription)).unwrap();
        assert_eq!(decoded.topics, subscription.topics);
        assert_eq!(decoded.owned, [tp("a", 0), tp("a", 2), tp("b", 1)]);
        assert_eq!(decoded.generation, 7);
    }

    #[test]
    fn assignment_round_trips_and_empty_assigns_nothing() {
        let partitions = [tp("x", 3), tp("x", 1), tp("y", 0)];
        assert_eq!(decode_assignment(&encode_assignment(&partitions)).unwrap(), [tp("x", 1), tp("x", 3), tp("y", 0)]);
        assert_eq!(decode_assignment(&[]).unwrap(), []);
    }

    #[test]
    fn newer_versions_are_read_as_the_newest_known() {
        // A v9 subscription with fields we do not know appended.
        let mut blob = BytesMut::new();
        blob.put_i16(9);
        let body = encode_subscription(&Subscription { topics: vec!["t".into()], owned: vec![], generation: 3 });
        blob.put_slice(&body[2..]);
        blob.put_slice(b"future fields");
        let decoded = decode_subscription(&blob).unwrap();
        assert_eq!((decoded.topics, decoded.generation), (vec!["t".to_owned()], 3));
    }

    #[test]
    fn v0_subscription_with_generation_in_user_data() {
        // v0: topics, then user data holding sticky-assignor data v1:
        // previous assignment [t: 0, 1], generation 12.
        let mut user = BytesMut::new();
        user.put_i32(1);
        user.put_i16(1);
        user.put_slice(b"t");
        user.put_i32(2);
        user.put_i32(0);
        user.put_i32(1);
        user.put_i32(12);
        let mut blob = BytesMut::new();
        blob.put_i16(0);
        blob.put_i32(1);
        blob.put_i16(1);
        blob.put_slice(b"t");
        blob.put_i32(user.len() as i32);
        blob.put_slice(&user);
        let decoded = decode_subscription(&blob).unwrap();
        assert_eq!(decoded.generation, 12);
        assert!(decoded.owned.is_empty());
        // A bare i32 is Java's cooperative-sticky user data.
        assert_eq!(generation_in_user_data(&5i32.to_be_bytes()), Some(5));
        // Anything else: unknown.
        assert_eq!(generation_in_user_data(b"garbage!!"), None);
    }

    #[test]
    fn hostile_counts_are_errors_not_allocations() {
        // Subscription v0 claiming 2^31-1 topics in a 10-byte blob.
        let mut blob = BytesMut::new();
        blob.put_i16(0);
        blob.put_i32(i32::MAX);
        blob.put_i32(0);
        let error = decode_subscription(&blob).unwrap_err();
        assert!(error.contains("subscription"), "{error}");
        let mut blob = BytesMut::new();
        blob.put_i16(1);
        blob.put_i32(0x7fff_fff0);
        assert!(decode_assignment(&blob).is_err());
        assert!(decode_assignment(&[0]).is_err());
        assert!(decode_subscription(&[0xff, 0xff, 0, 0]).unwrap_err().contains("negative"));
    }
}
