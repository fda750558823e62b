//! The accumulator: records waiting to be sent, one open batch per
//! partition. Pure: no IO; time comes in as `now`.
//!
//! ```text
//!  append ──▶ open batch ──(batch.size, batch.num.messages)──▶ closed queue
//!                 │                                               │
//!                 └──(linger expired, flush, close)───────────────┤
//!                                                                 ▼
//!                                               drain (sender, one per partition)
//! ```
//!
//! Buffer accounting (records and bytes) covers every record from append
//! until its batch completes, wherever the batch is by then; `append`
//! refuses past the limits and the producer turns that into waiting or
//! `QueueFull`. A batch is numbered in creation order within its partition;
//! the sequencer uses those numbers to complete results in send order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::delivery::{BatchDelivery, DeliveryGuard};
use crate::error::Error;
use crate::records::Compression;
use crate::records::batch::{BATCH_HEADER_SIZE, BatchBuilder, Header, SealedBatch, payload_size, record_size};

/// The accumulator's limits, from the producer config.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) batch_size: usize,
    pub(crate) batch_records: usize,
    pub(crate) linger: Duration,
    pub(crate) buffer_bytes: usize,
    pub(crate) buffer_records: usize,
    pub(crate) max_record_bytes: usize,
}

/// Why a record was not appended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AppendError {
    /// The buffer is at its record or byte limit.
    Full,
    /// The record alone is larger than `message.max.bytes`.
    TooLarge { size: usize, max: usize },
    /// The topic's partitions are not known yet.
    UnknownTopic,
    /// The partition does not exist.
    NoSuchPartition { partitions: i32 },
}

/// A record's place after an append.
#[derive(Debug)]
pub(crate) struct AppendOutcome {
    pub(crate) delivery: Arc<BatchDelivery>,
    /// Index of the record in its batch.
    pub(crate) index: u32,
    pub(crate) partition: i32,
    /// A batch opened (its linger timer must start) or closed (it is
    /// ready): the sender should look.
    pub(crate) wake_sender: bool,
}

/// How the partition of a record is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// A partition the caller picked (explicit, or from the key).
    Partition(i32),
    /// No key: sticky partitioning (KIP-480).
    Sticky,
}

impl Target {
    /// A target that does not depend on the partition count.
    #[cfg(test)]
    pub(crate) fn fixed(self) -> impl FnOnce(i32) -> Target {
        move |_| self
    }
}

/// A record, borrowed for the time of the append.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Appended<'a> {
    pub(crate) timestamp: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) headers: &'a [Header<'a>],
}

/// The body of a batch: records being encoded, or a finished batch.
#[derive(Debug)]
pub(crate) enum Payload {
    /// Closed but not yet compressed; sealing happens outside the lock.
    Closed(BatchBuilder),
    Sealed(SealedBatch),
}

/// A batch on its way: closed, in flight, or waiting for a retry.
#[derive(Debug)]
pub(crate) struct ProducerBatch {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    /// Creation order within the partition: the batch's index times
    /// [`BATCH_SPAN`]. The parts of a batch split because it was too large
    /// share its span: the first keeps the number, the second starts half
    /// way, so that numbers still order every part of every batch.
    pub(crate) number: u64,
    /// The numbers this batch stands for, from `number` on.
    pub(crate) span: u64,
    pub(crate) payload: Payload,
    pub(crate) delivery: DeliveryGuard,
    pub(crate) created: Instant,
    pub(crate) records: i32,
    /// Bytes counted against the buffer.
    pub(crate) accounted_bytes: usize,
    /// Set by the sequencer when the batch is first (or, after an epoch
    /// bump, again) given a sequence.
    pub(crate) base_sequence: Option<i32>,
    /// Producer id and epoch the payload is stamped with.
    pub(crate) stamped: Option<(i64, i16, i32)>,
    pub(crate) attempts: u32,
    /// An attempt ended without knowing whether the broker wrote it.
    pub(crate) maybe_written: bool,
    /// What the last failed attempt ran into.
    pub(crate) last_error: Option<Arc<Error>>,
    pub(crate) retry_at: Option<Instant>,
}

/// The numbers of one batch: room for splitting a batch in halves 24 times
/// (a batch holds at most a million records).
pub(crate) const BATCH_SPAN: u64 = 1 << 24;

impl ProducerBatch {
    /// A batch just closed (the `index`th of its partition): never sent, no
    /// sequence yet.
    pub(crate) fn closed(
        topic: Arc<str>,
        partition: i32,
        index: u64,
        builder: BatchBuilder,
        mut delivery: DeliveryGuard,
        created: Instant,
        accounted_bytes: usize,
    ) -> Self {
        delivery.closed(builder.record_count() as u32);
        ProducerBatch {
            topic,
            partition,
            number: index * BATCH_SPAN,
            span: BATCH_SPAN,
            records: builder.record_count(),
            payload: Payload::Closed(builder),
            delivery,
            created,
            accounted_bytes,
            base_sequence: None,
            stamped: None,
            attempts: 0,
            maybe_written: false,
            last_error: None,
            retry_at: None,
        }
    }

    /// The batch's index in its partition (the parts of a split batch
    /// share it).
    #[cfg(test)]
    pub(crate) fn index(&self) -> u64 {
        self.number / BATCH_SPAN
    }

    /// Splits a batch of more than one record in two halves of its records
    /// (the broker refused it as too large), each with its share of the
    /// sequence numbers, the delivery and the buffer accounting, in order.
    /// The batch back for a single record, a batch split as far as it goes,
    /// or one never sealed.
    pub(crate) fn split(mut self) -> Result<(ProducerBatch, ProducerBatch), Box<ProducerBatch>> {
        let bytes = match &mut self.payload {
            Payload::Sealed(sealed) if self.records >= 2 && self.span >= 2 => sealed.bytes(),
            _ => return Err(Box::new(self)),
        };
        let Ok(decoded) = crate::records::decode_batch(bytes, usize::MAX) else { return Err(Box::new(self)) };
        let at = self.records / 2;
        let build = |records: &[crate::records::DecodedRecord]| {
            let mut builder = BatchBuilder::new(0);
            for record in records {
                let headers: Vec<crate::records::Header<'_>> = record
                    .headers
                    .iter()
                    .map(|h| crate::records::Header::new(h.key.as_str(), h.value.as_deref()))
                    .collect();
                let (key, value) = (record.key.as_deref(), record.value.as_deref());
                let payload = crate::records::batch::payload_size(key, value, &headers);
                builder.append_sized(record.timestamp, key, value, &headers, payload);
            }
            builder
        };
        let (first_records, second_records) = decoded.records.split_at(at as usize);
        let (first_builder, second_builder) = (build(first_records), build(second_records));
        let (first_delivery, second_delivery) = self.delivery.split(at as u32);
        let first_bytes = self.accounted_bytes * at as usize / self.records as usize;
        let half = self.span / 2;
        let part = |number, span, builder: BatchBuilder, delivery, accounted_bytes, base_sequence| ProducerBatch {
            topic: self.topic.clone(),
            partition: self.partition,
            number,
            span,
            records: builder.record_count(),
            payload: Payload::Closed(builder),
            delivery,
            created: self.created,
            accounted_bytes,
            base_sequence,
            stamped: None,
            attempts: self.attempts,
            maybe_written: false,
            last_error: self.last_error.clone(),
            retry_at: None,
        };
        let second_sequence = self.base_sequence.map(|s| s.wrapping_add(at) & i32::MAX);
        Ok((
            part(self.number, half, first_builder, first_delivery, first_bytes, self.base_sequence),
            part(
                self.number + half,
                self.span - half,
                second_builder,
                second_delivery,
                self.accounted_bytes - first_bytes,
                second_sequence,
            ),
        ))
    }

    /// Compresses the batch if that has not happened yet.
    pub(crate) fn seal(&mut self, compression: Compression, level: Option<u32>) -> &mut SealedBatch {
        if let Payload::Closed(builder) = &mut self.payload {
            let builder = std::mem::replace(builder, BatchBuilder::new(0));
            self.payload = Payload::Sealed(builder.seal(compression, level));
        }
        match &mut self.payload {
            Payload::Sealed(sealed) => sealed,
            Payload::Closed(_) => unreachable!("sealed just above"),
        }
    }
}

#[derive(Debug)]
struct OpenBatch {
    builder: BatchBuilder,
    delivery: DeliveryGuard,
    created: Instant,
    accounted_bytes: usize,
    number: u64,
}

#[derive(Debug, Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    closed: VecDeque<ProducerBatch>,
    next_number: u64,
    /// Bytes of the last batch closed: the next one starts with room for
    /// as much, so a steady stream never regrows (and recopies) a batch.
    last_size: usize,
}

impl PartitionQueue {
    /// Closes the open batch, if any, into the queue of closed ones.
    fn close_open(&mut self, topic: &Arc<str>, partition: i32) {
        if let Some(open) = self.open.take() {
            self.last_size = open.builder.size();
            self.closed.push_back(close(topic, partition, open));
        }
    }
}

#[derive(Debug)]
struct TopicQueues {
    name: Arc<str>,
    partitions: Vec<PartitionQueue>,
    /// Partitions with a leader, for sticky choices.
    available: Vec<i32>,
    sticky: Option<i32>,
}

/// FNV-1a, for the topic map: every append looks a topic name up, and
/// SipHash's DoS resistance buys nothing for names the application chose.
#[derive(Debug, Clone, Copy)]
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type TopicMap = HashMap<Arc<str>, TopicQueues, std::hash::BuildHasherDefault<Fnv>>;

/// Records waiting to be sent.
#[derive(Debug)]
pub(crate) struct Accumulator {
    limits: Limits,
    topics: TopicMap,
    buffered_bytes: usize,
    buffered_records: usize,
    /// Every open batch is ready now (flush or close in progress).
    flushing: bool,
}

impl Accumulator {
    pub(crate) fn new(limits: Limits) -> Self {
        Accumulator { limits, topics: TopicMap::default(), buffered_bytes: 0, buffered_records: 0, flushing: false }
    }

    /// Records and bytes held, from append to completion.
    pub(crate) fn buffered(&self) -> (usize, usize) {
        (self.buffered_records, self.buffered_bytes)
    }

    /// Learns (or updates) a topic's partitions and which have a leader.
    pub(crate) fn set_topic(&mut self, topic: &str, partitions: i32, available: Vec<i32>) {
        let queues = self.topics.entry(Arc::from(topic)).or_insert_with_key(|name| TopicQueues {
            name: name.clone(),
            partitions: Vec::new(),
            available: Vec::new(),
            sticky: None,
        });
        // Kafka never removes partitions; a shorter answer is stale.
        let partitions = partitions.max(queues.partitions.len() as i32) as usize;
        queues.partitions.resize_with(partitions, PartitionQueue::default);
        queues.available = available;
    }

    /// Topics the accumulator holds queues for.
    pub(crate) fn topics(&self) -> impl Iterator<Item = &Arc<str>> {
        self.topics.keys()
    }

    /// Appends a record. `target` picks the partition given the topic's
    /// partition count (one map lookup serves both). `now` is read only if a
    /// batch opens (most appends join an open batch and need no clock);
    /// `random` only for a sticky choice.
    pub(crate) fn append(
        &mut self,
        topic: &str,
        target: impl FnOnce(i32) -> Target,
        record: Appended<'_>,
        now: impl FnOnce() -> Instant,
        random: impl FnOnce() -> u64,
    ) -> Result<AppendOutcome, AppendError> {
        let Some(queues) = self.topics.get_mut(topic) else {
            return Err(AppendError::UnknownTopic);
        };
        let count = queues.partitions.len() as i32;
        if count == 0 {
            return Err(AppendError::UnknownTopic);
        }
        let target = target(count);
        let payload = payload_size(record.key, record.value, record.headers);
        let size = record_size(0, 0, payload);
        if BATCH_HEADER_SIZE + size > self.limits.max_record_bytes {
            return Err(AppendError::TooLarge { size: BATCH_HEADER_SIZE + size, max: self.limits.max_record_bytes });
        }
        // Deltas can make the encoding a few bytes longer than `size`; the
        // accounting uses the real size below and checks with a margin here.
        if self.buffered_records + 1 > self.limits.buffer_records
            || self.buffered_bytes + size + 16 > self.limits.buffer_bytes
        {
            return Err(AppendError::Full);
        }
        let partition = match target {
            Target::Partition(p) if (0..count).contains(&p) => p,
            Target::Partition(_) => return Err(AppendError::NoSuchPartition { partitions: count }),
            Target::Sticky => {
                let current = queues.sticky.filter(|p| queues.partitions[*p as usize].open.is_some());
                match current {
                    Some(p) => p,
                    None => {
                        let p = pick_sticky(&queues.available, count, queues.sticky, random());
                        queues.sticky = Some(p);
                        p
                    }
                }
            }
        };
        let queue = &mut queues.partitions[partition as usize];
        let limits = &self.limits;
        let mut wake_sender = false;
        // Close the open batch if this record would overflow it.
        if let Some(open) = &queue.open {
            let next = open.builder.size_of_next(record.timestamp, payload);
            if open.builder.size() + next > limits.batch_size {
                queue.close_open(&queues.name, partition);
                wake_sender = true;
            }
        }
        let last_size = queue.last_size;
        let open = queue.open.get_or_insert_with(|| {
            let number = queue.next_number;
            queue.next_number += 1;
            // Room for what the last batch held (64 KiB at first), and for
            // this record at least.
            let room = if last_size > 0 { last_size } else { 64 * 1024 };
            OpenBatch {
                builder: BatchBuilder::new(room.min(limits.batch_size).max(size)),
                delivery: DeliveryGuard::new(partition),
                created: now(),
                accounted_bytes: 0,
                number,
            }
        });
        let index = open.builder.record_count() as u32;
        let added = open.builder.append_sized(record.timestamp, record.key, record.value, record.headers, payload);
        open.accounted_bytes += added;
        let delivery = open.delivery.shared().clone();
        if open.builder.record_count() as usize >= limits.batch_records || open.builder.size() >= limits.batch_size {
            queue.close_open(&queues.name, partition);
            wake_sender = true;
        }
        self.buffered_records += 1;
        self.buffered_bytes += added;
        Ok(AppendOutcome { delivery, index, partition, wake_sender: wake_sender || index == 0 })
    }

    /// Takes the next batch of a partition if one may be sent now: a closed
    /// one, or the open one once its linger expired (or a flush is on).
    pub(crate) fn drain(&mut self, topic: &str, partition: i32, now: Instant) -> Option<ProducerBatch> {
        let flushing = self.flushing;
        let linger = self.limits.linger;
        let queues = self.topics.get_mut(topic)?;
        let queue = queues.partitions.get_mut(partition as usize)?;
        if let Some(batch) = queue.closed.pop_front() {
            return Some(batch);
        }
        let open = queue.open.as_ref()?;
        if flushing || now >= open.created + linger {
            queue.close_open(&queues.name, partition);
            return queue.closed.pop_front();
        }
        None
    }

    /// Partitions (topic, partition) with anything queued, ready or not.
    pub(crate) fn partitions_with_data(&self) -> Vec<(Arc<str>, i32)> {
        let mut out = Vec::new();
        for queues in self.topics.values() {
            for (p, queue) in queues.partitions.iter().enumerate() {
                if queue.open.is_some() || !queue.closed.is_empty() {
                    out.push((queues.name.clone(), p as i32));
                }
            }
        }
        out
    }

    /// When the earliest open batch's linger ends.
    pub(crate) fn next_linger_deadline(&self) -> Option<Instant> {
        self.topics
            .values()
            .flat_map(|t| t.partitions.iter())
            .filter_map(|q| q.open.as_ref().map(|open| open.created + self.limits.linger))
            .min()
    }

    /// Batches created so far per partition: a flush waits until that many
    /// have finished.
    pub(crate) fn batch_counts(&self) -> Vec<((Arc<str>, i32), u64)> {
        let mut out = Vec::new();
        for queues in self.topics.values() {
            for (p, queue) in queues.partitions.iter().enumerate() {
                if queue.next_number > 0 {
                    out.push(((queues.name.clone(), p as i32), queue.next_number));
                }
            }
        }
        out
    }

    /// Makes every open batch ready now, and keeps doing so until
    /// [`Self::end_flush`].
    pub(crate) fn begin_flush(&mut self) {
        self.flushing = true;
    }

    pub(crate) fn end_flush(&mut self) {
        self.flushing = false;
    }

    /// Takes every batch (open or closed) created at or before `deadline`:
    /// they have waited `delivery.timeout.ms` without ever being sent.
    pub(crate) fn expire(&mut self, created_before: Instant) -> Vec<ProducerBatch> {
        let mut out = Vec::new();
        for queues in self.topics.values_mut() {
            for (p, queue) in queues.partitions.iter_mut().enumerate() {
                while queue.closed.front().is_some_and(|b| b.created <= created_before) {
                    out.push(queue.closed.pop_front().expect("checked"));
                }
                if queue.closed.is_empty() && queue.open.as_ref().is_some_and(|o| o.created <= created_before) {
                    let open = queue.open.take().expect("checked");
                    out.push(close(&queues.name, p as i32, open));
                }
            }
        }
        out
    }

    /// Takes every batch: the producer is closing or failed.
    pub(crate) fn take_all(&mut self) -> Vec<ProducerBatch> {
        let mut out = Vec::new();
        for queues in self.topics.values_mut() {
            for (p, queue) in queues.partitions.iter_mut().enumerate() {
                out.extend(queue.closed.drain(..));
                if let Some(open) = queue.open.take() {
                    out.push(close(&queues.name, p as i32, open));
                }
            }
        }
        out
    }

    /// A batch completed (delivered or failed): its records leave the buffer.
    pub(crate) fn release(&mut self, records: i32, bytes: usize) {
        self.buffered_records -= records as usize;
        self.buffered_bytes -= bytes;
    }
}

fn close(topic: &Arc<str>, partition: i32, open: OpenBatch) -> ProducerBatch {
    ProducerBatch::closed(
        topic.clone(),
        partition,
        open.number,
        open.builder,
        open.delivery,
        open.created,
        open.accounted_bytes,
    )
}

/// A partition for keyless records: a random available one, different from
/// the previous choice when there is another.
fn pick_sticky(available: &[i32], count: i32, previous: Option<i32>, random: u64) -> i32 {
    let candidates: Vec<i32> = if available.is_empty() { (0..count).collect() } else { available.to_vec() };
    let choices: Vec<i32> = match previous {
        Some(previous) if candidates.len() > 1 => candidates.iter().copied().filter(|p| *p != previous).collect(),
        _ => candidates,
    };
    choices[(random % choices.len() as u64) as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            batch_size: 10_000,
            batch_records: 100,
            linger: Duration::from_millis(5),
            buffer_bytes: 1_000_000,
            buffer_records: 1_000,
            max_record_bytes: 5_000,
        }
    }

    fn record(value: &[u8]) -> Appended<'_> {
        Appended { timestamp: 1, key: None, value: Some(value), headers: &[] }
    }

    fn accumulator(limits: Limits) -> Accumulator {
        let mut acc = Accumulator::new(limits);
        acc.set_topic("t", 3, vec![0, 1, 2]);
        acc
    }

    #[test]
    fn linger_holds_a_batch_until_it_expires() {
        let t0 = Instant::now();
        let mut acc = accumulator(limits());
        acc.append("t", Target::Partition(1).fixed(), record(b"a"), || t0, || 0).unwrap();
        assert_eq!(acc.next_linger_deadline(), Some(t0 + Duration::from_millis(5)));
        assert!(acc.drain("t", 1, t0 + Duration::from_millis(4)).is_none());
        let batch = acc.drain("t", 1, t0 + Duration::from_millis(5)).unwrap();
        assert_eq!((batch.partition, batch.records, batch.index()), (1, 1, 0));
        assert_eq!(acc.next_linger_deadline(), None);
    }

    /// A partition's next batch starts with room for what its last one
    /// held, so it does not regrow (copying itself) record by record; the
    /// first starts at 64 KiB or the batch size, whichever is smaller.
    #[test]
    fn a_batch_starts_with_room_for_what_the_last_one_held() {
        let t0 = Instant::now();
        let mut big = limits();
        big.batch_size = 200_000;
        big.max_record_bytes = 200_000;
        let mut acc = accumulator(big);
        let value = vec![7u8; 3_000];
        let open_capacity = |acc: &Accumulator| {
            let queue = &acc.topics.get("t").unwrap().partitions[1];
            queue.open.as_ref().map(|open| open.builder.capacity())
        };
        acc.append("t", Target::Partition(1).fixed(), record(&value), || t0, || 0).unwrap();
        assert!(open_capacity(&acc).unwrap() >= 64 * 1024);
        for _ in 0..29 {
            acc.append("t", Target::Partition(1).fixed(), record(&value), || t0, || 0).unwrap();
        }
        let first = acc.drain("t", 1, t0 + Duration::from_millis(5)).unwrap();
        let held = match &first.payload {
            Payload::Closed(builder) => builder.size(),
            Payload::Sealed(_) => unreachable!("not sealed yet"),
        };
        assert!(held > 64 * 1024, "30 records of 3 KB outgrew the first room");
        acc.append("t", Target::Partition(1).fixed(), record(&value), || t0, || 0).unwrap();
        assert!(open_capacity(&acc).unwrap() >= held, "the next batch has room for as much");
    }

    #[test]
    fn batch_size_and_record_count_close_batches() {
        let t0 = Instant::now();
        let mut small = limits();
        small.batch_size = 1_000;
        let mut acc = accumulator(small);
        let value = [7u8; 100];
        for _ in 0..25 {
            acc.append("t", Target::Partition(0).fixed(), record(&value), || t0, || 0).unwrap();
        }
        // Closed batches are ready at once, linger or not.
        let mut sizes = Vec::new();
        while let Some(batch) = acc.drain("t", 0, t0) {
            let Payload::Closed(builder) = &batch.payload else { panic!() };
            assert!(builder.size() <= 1_000, "batch of {} bytes", builder.size());
            sizes.push(batch.records);
        }
        assert_eq!(sizes.iter().sum::<i32>(), 25 - acc.drain("t", 0, t0 + Duration::from_secs(1)).unwrap().records);

        let mut acc = accumulator(limits());
        for _ in 0..250 {
            acc.append("t", Target::Partition(2).fixed(), record(b"x"), || t0, || 0).unwrap();
        }
        let counts: Vec<i32> = std::iter::from_fn(|| acc.drain("t", 2, t0)).map(|b| b.records).collect();
        assert_eq!(counts, [100, 100]);
        let numbers: Vec<u64> =
            std::iter::from_fn(|| acc.drain("t", 2, t0 + Duration::from_secs(1))).map(|b| b.index()).collect();
        assert_eq!(numbers, [2]);
    }

    #[test]
    fn buffer_limits_refuse_and_release_frees() {
        let t0 = Instant::now();
        let mut tight = limits();
        tight.buffer_records = 3;
        let mut acc = accumulator(tight);
        for _ in 0..3 {
            acc.append("t", Target::Partition(0).fixed(), record(b"v"), || t0, || 0).unwrap();
        }
        assert_eq!(
            acc.append("t", Target::Partition(0).fixed(), record(b"v"), || t0, || 0).unwrap_err(),
            AppendError::Full
        );
        let batch = acc.drain("t", 0, t0 + Duration::from_secs(1)).unwrap();
        // Drained is not delivered: still counted.
        assert_eq!(
            acc.append("t", Target::Partition(0).fixed(), record(b"v"), || t0, || 0).unwrap_err(),
            AppendError::Full
        );
        acc.release(batch.records, batch.accounted_bytes);
        assert_eq!(acc.buffered(), (0, 0));
        acc.append("t", Target::Partition(0).fixed(), record(b"v"), || t0, || 0).unwrap();

        let mut bytes = limits();
        bytes.buffer_bytes = 5_100;
        let mut acc = accumulator(bytes);
        acc.append("t", Target::Partition(0).fixed(), record(&[0; 4_000]), || t0, || 0).unwrap();
        assert_eq!(
            acc.append("t", Target::Partition(0).fixed(), record(&[0; 2_000]), || t0, || 0).unwrap_err(),
            AppendError::Full
        );
    }

    #[test]
    fn oversize_records_and_bad_partitions_are_refused() {
        let t0 = Instant::now();
        let mut acc = accumulator(limits());
        let error = acc.append("t", Target::Partition(0).fixed(), record(&[0; 5_000]), || t0, || 0).unwrap_err();
        assert!(matches!(error, AppendError::TooLarge { max: 5_000, .. }), "{error:?}");
        assert_eq!(
            acc.append("t", Target::Partition(3).fixed(), record(b"v"), || t0, || 0).unwrap_err(),
            AppendError::NoSuchPartition { partitions: 3 }
        );
        assert_eq!(
            acc.append("other", Target::Sticky.fixed(), record(b"v"), || t0, || 0).unwrap_err(),
            AppendError::UnknownTopic
        );
    }

    #[test]
    fn sticky_partitioning_stays_until_the_batch_closes() {
        let t0 = Instant::now();
        let mut acc = accumulator(limits());
        let first: Vec<i32> = (0..100)
            .map(|i| acc.append("t", Target::Sticky.fixed(), record(b"v"), || t0, || i).unwrap().partition)
            .collect();
        // 100 records fill the batch (batch_records = 100): all on one partition.
        assert!(first.iter().all(|p| *p == first[0]), "{first:?}");
        let next = acc.append("t", Target::Sticky.fixed(), record(b"v"), || t0, || 0).unwrap().partition;
        assert_ne!(next, first[0], "a new batch moves to another partition");
        // Only partitions with a leader are chosen.
        acc.set_topic("t", 3, vec![2]);
        acc.drain("t", next, t0 + Duration::from_secs(1));
        assert_eq!(acc.append("t", Target::Sticky.fixed(), record(b"v"), || t0, || 7).unwrap().partition, 2);
    }

    #[test]
    fn flush_makes_open_batches_ready() {
        let t0 = Instant::now();
        let mut acc = accumulator(limits());
        acc.append("t", Target::Partition(0).fixed(), record(b"v"), || t0, || 0).unwrap();
        assert!(acc.drain("t", 0, t0).is_none());
        acc.begin_flush();
        assert!(acc.drain("t", 0, t0).is_some());
        acc.end_flush();
    }

    #[test]
    fn expiry_takes_old_batches_in_order() {
        let t0 = Instant::now();
        let mut acc = accumulator(limits());
        acc.append("t", Target::Partition(0).fixed(), record(b"old"), || t0, || 0).unwrap();
        acc.append("t", Target::Partition(1).fixed(), record(b"new"), || t0 + Duration::from_secs(10), || 0).unwrap();
        let expired = acc.expire(t0 + Duration::from_secs(1));
        assert_eq!(expired.iter().map(|b| b.partition).collect::<Vec<_>>(), [0]);
        assert_eq!(acc.partitions_with_data(), [(Arc::from("t"), 1)]);
        assert_eq!(acc.take_all().len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append { partition: Option<i32>, size: usize },
        Drain { partition: i32 },
        Tick { ms: u64 },
        Release,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (proptest::option::of(0..3i32), 0..700usize).prop_map(|(partition, size)| Op::Append { partition, size }),
            3 => (0..3i32).prop_map(|partition| Op::Drain { partition }),
            1 => (0..8u64).prop_map(|ms| Op::Tick { ms }),
            1 => Just(Op::Release),
        ]
    }

    proptest::proptest! {
        /// Random appends, drains, clock ticks and completions: every record
        /// comes out exactly once, in append order per partition, batches
        /// stay within batch.size (unless one record is larger) and
        /// batch.num.messages, and the buffer counts exactly what has not
        /// completed.
        #[test]
        fn no_record_lost_order_kept_batches_within_limits(ops in proptest::collection::vec(op(), 1..400)) {
            use crate::records::decode_batch;
            let t0 = Instant::now();
            let mut now = t0;
            let mut limits = limits();
            limits.batch_size = 2_000;
            limits.batch_records = 7;
            limits.buffer_records = 60;
            let mut acc = accumulator(limits.clone());
            let mut appended: Vec<Vec<u64>> = vec![Vec::new(); 3];
            let mut drained: Vec<Vec<u64>> = vec![Vec::new(); 3];
            let mut unreleased: Vec<ProducerBatch> = Vec::new();
            let mut counter = 0u64;
            let check = |batch: ProducerBatch, drained: &mut Vec<Vec<u64>>| -> Result<ProducerBatch, proptest::test_runner::TestCaseError> {
                let Payload::Closed(builder) = &batch.payload else { unreachable!() };
                proptest::prop_assert!(builder.record_count() as usize <= limits.batch_records);
                proptest::prop_assert!(builder.size() <= limits.batch_size || builder.record_count() == 1);
                let mut batch = batch;
                let bytes = batch.seal(Compression::None, None).bytes();
                for record in decode_batch(bytes, 1 << 20).unwrap().records {
                    let id = u64::from_be_bytes(record.value.unwrap()[..8].try_into().unwrap());
                    drained[batch.partition as usize].push(id);
                }
                Ok(batch)
            };
            for op in ops {
                match op {
                    Op::Append { partition, size } => {
                        let mut value = counter.to_be_bytes().to_vec();
                        value.resize(8 + size, b'x');
                        let target = partition.map_or(Target::Sticky, Target::Partition);
                        let record = Appended { timestamp: 1, key: None, value: Some(&value), headers: &[] };
                        match acc.append("t", target.fixed(), record, || now, || counter) {
                            Ok(outcome) => {
                                appended[outcome.partition as usize].push(counter);
                                counter += 1;
                            }
                            Err(AppendError::Full) => {}
                            Err(other) => proptest::prop_assert!(false, "{other:?}"),
                        }
                    }
                    Op::Drain { partition } => {
                        if let Some(batch) = acc.drain("t", partition, now) {
                            unreleased.push(check(batch, &mut drained)?);
                        }
                    }
                    Op::Tick { ms } => now += Duration::from_millis(ms),
                    Op::Release => {
                        if !unreleased.is_empty() {
                            let batch = unreleased.remove(0);
                            acc.release(batch.records, batch.accounted_bytes);
                        }
                    }
                }
                let held: i32 = unreleased.iter().map(|b| b.records).sum();
                let queued = appended.iter().map(Vec::len).sum::<usize>() - drained.iter().map(Vec::len).sum::<usize>();
                proptest::prop_assert_eq!(acc.buffered().0, held as usize + queued);
                proptest::prop_assert!(acc.buffered().0 <= limits.buffer_records);
            }
            acc.begin_flush();
            for partition in 0..3 {
                while let Some(batch) = acc.drain("t", partition, now) {
                    unreleased.push(check(batch, &mut drained)?);
                }
            }
            proptest::prop_assert_eq!(appended, drained);
        }
    }
}
