//! What the consumer hands out.

use std::sync::Arc;

use bytes::Bytes;

use crate::TopicPartition;
use crate::records::RecordHeader;

/// How a record's timestamp was set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    /// By the producer.
    CreateTime,
    /// By the broker when it appended the batch.
    LogAppendTime,
}

/// A record as consumed. Key, value and header values share the fetched
/// buffer: no copy is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// Who set the timestamp.
    pub timestamp_type: TimestampType,
    /// The key.
    pub key: Option<Bytes>,
    /// The value.
    pub value: Option<Bytes>,
    /// Headers in wire order; keys may repeat.
    pub headers: Vec<RecordHeader>,
    /// The leader epoch the record was written in, when the broker says.
    pub leader_epoch: Option<i32>,
}

impl ConsumerRecord {
    /// The record's topic and partition.
    pub fn topic_partition(&self) -> TopicPartition {
        TopicPartition::new(&*self.topic, self.partition)
    }
}
