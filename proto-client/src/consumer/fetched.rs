//! From a fetch response's partition data to records for the application.
//! Pure: no IO.
//!
//! - Batches are walked with [`Batches`]: a partial batch at the end (the
//!   broker's byte limit) is left for the next fetch.
//! - Records before the fetch offset are skipped: a compressed batch comes
//!   whole, records before the position asked for included. Offsets only
//!   move forward: a batch behind an earlier one is skipped too.
//! - Control batches (transaction markers) are never returned.
//! - Under read_committed, records of aborted transactions are dropped:
//!   `aborted_transactions` says from which offset a producer's records are
//!   aborted, up to its ABORT marker.
//! - A batch that fails its CRC or does not parse stops the partition there:
//!   records before it are returned, then the error.
//! - Decoding stops once the answer's `allowance` of budget bytes is spent
//!   (a batch is decoded whole, so by at most one batch past it): what is
//!   left is fetched again. Compressed data can expand many times over, and
//!   what arrived is only decompressed as far as the budget allows.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::record::{ConsumerRecord, TimestampType};
use crate::records::decode::{for_each_record, open_batch};
use crate::records::{Batches, RecordError};

/// An aborted transaction range from the fetch response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Aborted {
    pub(crate) producer_id: i64,
    pub(crate) first_offset: i64,
}

/// What one partition's data decoded to.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    pub(crate) records: VecDeque<ConsumerRecord>,
    /// Where the next fetch starts: after the last complete batch (even one
    /// whose records were all skipped), or `None` if nothing advanced.
    pub(crate) next_offset: Option<i64>,
    /// Budget bytes of the records (key, value and 64 each).
    pub(crate) bytes: usize,
    /// Bytes of the data that were walked (decoded or passed over).
    pub(crate) wire: usize,
    /// The batch that could not be read, if any; decoding stopped there.
    pub(crate) error: Option<RecordError>,
    /// Whether the data held only a partial batch larger than the
    /// partition's fetch size (`partition_max`); KIP-74 says the broker
    /// should have sent it whole. A partial batch that fits was cut by the
    /// fetch's total size and comes whole in a later fetch.
    pub(crate) too_small: bool,
    /// With `error`: the offset after the batch that could not be read, as
    /// far as its header tells (a damaged header: none).
    pub(crate) skip_to: Option<i64>,
}

/// How a partition's data is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// Records of aborted transactions are dropped.
    pub(crate) read_committed: bool,
    /// How far one batch may expand when decompressed.
    pub(crate) max_uncompressed: usize,
    /// The partition's fetch size (`max.partition.fetch.bytes`): a lone
    /// partial batch larger than it is [`Decoded::too_small`].
    pub(crate) partition_max: usize,
}

/// The offset after a batch, read from its header alone (base offset and
/// last offset delta), whatever its CRC says; `None` when the header is
/// cut short or makes no sense.
fn batch_end(bytes: &[u8]) -> Option<i64> {
    let base = i64::from_be_bytes(bytes.get(0..8)?.try_into().ok()?);
    let delta = i32::from_be_bytes(bytes.get(23..27)?.try_into().ok()?);
    (base >= 0 && delta >= 0).then(|| base.saturating_add(i64::from(delta)).saturating_add(1))
}

/// Decodes the `records` bytes of one partition fetched from `fetch_offset`.
pub(crate) fn decode_partition(
    topic: &Arc<str>,
    partition: i32,
    fetch_offset: i64,
    records: Bytes,
    aborted: &[Aborted],
    rules: Rules,
    allowance: &mut usize,
) -> Decoded {
    let Rules { read_committed, max_uncompressed, partition_max } = rules;
    let mut out = Decoded::default();
    let total = records.len();
    let mut batches = Batches::new(records);
    let mut pending_aborts: VecDeque<Aborted> = {
        let mut list = aborted.to_vec();
        list.sort_by_key(|a| a.first_offset);
        list.into()
    };
    let mut aborting: BTreeSet<i64> = BTreeSet::new();
    for batch in batches.by_ref() {
        let end = batch.as_ref().ok().and_then(|bytes| batch_end(bytes));
        // A batch wholly before the position (the one a fetch starts in,
        // or one an application sought past because it cannot be read) is
        // passed over unopened, as Java's consumer does.
        if end.is_some_and(|end| end <= out.next_offset.unwrap_or(fetch_offset)) {
            continue;
        }
        if *allowance == 0 {
            // The rest is fetched again; not a batch too large.
            out.wire = total - batches.remaining() - batch.as_ref().map_or(0, Bytes::len);
            return out;
        }
        let (header, body) = match batch.and_then(|bytes| open_batch(bytes, max_uncompressed)) {
            Ok(opened) => opened,
            Err(error) => {
                out.error = Some(error);
                out.skip_to = end;
                return out;
            }
        };
        // Records before the position (asked for, or already returned from
        // an earlier batch) are skipped: offsets only move forward, even
        // when a base offset (outside the CRC) is damaged.
        let position = out.next_offset.unwrap_or(fetch_offset);
        let next_offset = Some(position.max(header.last_offset() + 1));
        if read_committed {
            while pending_aborts.front().is_some_and(|a| a.first_offset <= header.last_offset()) {
                let started = pending_aborts.pop_front().expect("checked");
                aborting.insert(started.producer_id);
            }
        }
        if header.is_control() {
            // A transaction marker; an ABORT (type 0) ends that producer's
            // aborted range.
            let mut abort = false;
            let mut first = true;
            if let Err(error) = for_each_record(&header, &body, |marker| {
                if std::mem::take(&mut first) {
                    abort = marker.key.as_ref().is_some_and(|k| k.len() >= 4 && k[2..4] == [0, 0]);
                }
            }) {
                out.error = Some(error);
                out.skip_to = Some(header.last_offset() + 1);
                return out;
            }
            if abort {
                aborting.remove(&header.producer_id);
            }
            out.next_offset = next_offset;
            continue;
        }
        if read_committed && header.is_transactional() && aborting.contains(&header.producer_id) {
            out.next_offset = next_offset;
            continue;
        }
        let timestamp_type =
            if header.is_log_append_time() { TimestampType::LogAppendTime } else { TimestampType::CreateTime };
        let leader_epoch = (header.partition_leader_epoch >= 0).then_some(header.partition_leader_epoch);
        // Straight into the output: a corrupt record drops the whole batch.
        // Room is reserved once, for as many records as the data holds at
        // this batch's density (every record takes at least 7 bytes).
        let count = (header.record_count.max(0) as usize).min(body.len() / 7);
        if out.records.capacity() == 0 && count > 0 {
            let per_record = (12 + body.len()).div_ceil(count).max(7);
            out.records.reserve(total / per_record + count);
        } else {
            out.records.reserve(count);
        }
        let before = out.records.len();
        let mut bytes = 0;
        let parsed = for_each_record(&header, &body, |record| {
            if record.offset < position {
                return;
            }
            bytes += record.key.as_ref().map_or(0, Bytes::len) + record.value.as_ref().map_or(0, Bytes::len) + 64;
            out.records.push_back(ConsumerRecord {
                topic: topic.clone(),
                partition,
                offset: record.offset,
                timestamp: record.timestamp,
                timestamp_type,
                key: record.key,
                value: record.value,
                headers: record.headers,
                leader_epoch,
            });
        });
        if let Err(error) = parsed {
            out.records.truncate(before);
            out.error = Some(error);
            out.skip_to = Some(header.last_offset() + 1);
            return out;
        }
        out.bytes += bytes;
        *allowance = allowance.saturating_sub(bytes);
        out.next_offset = next_offset;
    }
    out.wire = total - batches.remaining();
    out.too_small = out.next_offset.is_none()
        && batches.remaining() == total
        && total > 0
        && batches.partial_size().is_none_or(|size| size > partition_max);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::Compression;
    use crate::records::batch::BatchBuilder;

    fn batch(base_offset: i64, values: &[&str], attributes: i16, producer_id: i64, codec: Compression) -> Vec<u8> {
        let mut builder = BatchBuilder::new(0);
        for value in values {
            builder.append(1000, None, Some(value.as_bytes()), &[]);
        }
        let mut sealed = builder.seal(codec, None);
        sealed.stamp(producer_id, 0, 0);
        let mut bytes = sealed.bytes().to_vec();
        bytes[..8].copy_from_slice(&base_offset.to_be_bytes());
        let attrs = i16::from_be_bytes([bytes[21], bytes[22]]) | attributes;
        bytes[21..23].copy_from_slice(&attrs.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// A control batch holding one transaction marker (0 = abort, 1 = commit).
    fn marker(offset: i64, producer_id: i64, kind: i16) -> Vec<u8> {
        let mut builder = BatchBuilder::new(0);
        let key = [0u8, 0, 0, kind as u8];
        builder.append(1000, Some(&key), Some(&[0, 0, 0, 0, 0, 0]), &[]);
        let mut sealed = builder.seal(Compression::None, None);
        sealed.stamp(producer_id, 0, 0);
        let mut bytes = sealed.bytes().to_vec();
        bytes[..8].copy_from_slice(&offset.to_be_bytes());
        let attrs = i16::from_be_bytes([bytes[21], bytes[22]]) | 0x30;
        bytes[21..23].copy_from_slice(&attrs.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    fn values(decoded: &Decoded) -> Vec<(i64, String)> {
        decoded
            .records
            .iter()
            .map(|r| (r.offset, String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap()))
            .collect()
    }

    fn topic() -> Arc<str> {
        Arc::from("t")
    }

    fn unlimited() -> usize {
        usize::MAX
    }

    impl Rules {
        fn test(read_committed: bool, max_uncompressed: usize) -> Self {
            Rules { read_committed, max_uncompressed, partition_max: 1 << 20 }
        }
    }

    #[test]
    fn skips_records_before_the_fetch_offset_and_advances_past_the_batch() {
        let data = batch(10, &["a", "b", "c", "d"], 0, -1, Compression::Lz4);
        let decoded =
            decode_partition(&topic(), 0, 12, Bytes::from(data), &[], Rules::test(false, 1 << 20), &mut unlimited());
        assert_eq!(values(&decoded), [(12, "c".into()), (13, "d".into())]);
        assert_eq!(decoded.next_offset, Some(14));
        assert!(decoded.error.is_none());
    }

    #[test]
    fn a_partial_last_batch_is_left_for_the_next_fetch() {
        let mut data = batch(0, &["a", "b"], 0, -1, Compression::None);
        let second = batch(2, &["c"], 0, -1, Compression::None);
        data.extend_from_slice(&second[..second.len() - 3]);
        let decoded =
            decode_partition(&topic(), 0, 0, Bytes::from(data), &[], Rules::test(false, 1 << 20), &mut unlimited());
        assert_eq!(values(&decoded), [(0, "a".into()), (1, "b".into())]);
        assert_eq!(decoded.next_offset, Some(2));
        assert!(!decoded.too_small);

        // Only part of a batch that fits the partition's fetch size: the
        // fetch's total cut it; no error, the next fetch gets it.
        let only_partial = batch(0, &["x"], 0, -1, Compression::None);
        let cut = Bytes::copy_from_slice(&only_partial[..20]);
        let decoded = decode_partition(&topic(), 0, 0, cut.clone(), &[], Rules::test(false, 1 << 20), &mut unlimited());
        assert!(decoded.records.is_empty() && !decoded.too_small && decoded.error.is_none());
        // One larger than the partition's fetch size: the broker should
        // have sent it whole (KIP-74).
        let decoded = decode_partition(
            &topic(),
            0,
            0,
            cut,
            &[],
            Rules { partition_max: 40, ..Rules::test(false, 1 << 20) },
            &mut unlimited(),
        );
        assert!(decoded.records.is_empty() && decoded.too_small);
    }

    #[test]
    fn control_batches_are_hidden_and_aborted_transactions_filtered() {
        // Producer 7 writes two records in a transaction it aborts; producer 8
        // commits one; a plain record follows.
        let mut data = batch(0, &["aborted-1", "aborted-2"], 0x10, 7, Compression::None);
        data.extend(batch(2, &["committed"], 0x10, 8, Compression::None));
        data.extend(marker(3, 7, 0));
        data.extend(marker(4, 8, 1));
        data.extend(batch(5, &["plain"], 0, -1, Compression::None));
        let aborted = [Aborted { producer_id: 7, first_offset: 0 }];
        let committed = decode_partition(
            &topic(),
            0,
            0,
            Bytes::from(data.clone()),
            &aborted,
            Rules::test(true, 1 << 20),
            &mut unlimited(),
        );
        assert_eq!(values(&committed), [(2, "committed".into()), (5, "plain".into())]);
        assert_eq!(committed.next_offset, Some(6));
        let uncommitted = decode_partition(
            &topic(),
            0,
            0,
            Bytes::from(data),
            &aborted,
            Rules::test(false, 1 << 20),
            &mut unlimited(),
        );
        assert_eq!(uncommitted.records.len(), 4, "read_uncommitted sees aborted records, never markers");
    }

    #[test]
    fn decoding_stops_past_the_allowance_and_leaves_the_rest_for_the_next_fetch() {
        let mut data = batch(0, &["a", "b"], 0, -1, Compression::Lz4);
        data.extend(batch(2, &["c"], 0, -1, Compression::Lz4));
        data.extend(batch(3, &["d"], 0, -1, Compression::Lz4));
        // Each record counts 65 bytes: the first batch spends 130 of 150,
        // the second (decoded whole) the rest, the third waits.
        let mut allowance = 150;
        let decoded = decode_partition(
            &topic(),
            0,
            0,
            Bytes::from(data.clone()),
            &[],
            Rules::test(false, 1 << 20),
            &mut allowance,
        );
        assert_eq!(values(&decoded), [(0, "a".into()), (1, "b".into()), (2, "c".into())]);
        assert_eq!((decoded.next_offset, allowance), (Some(3), 0));
        assert_eq!(decoded.wire, data.len() - batch(3, &["d"], 0, -1, Compression::Lz4).len());
        assert!(!decoded.too_small && decoded.error.is_none());
        // A spent allowance decodes nothing, and that is no error either.
        let decoded = decode_partition(&topic(), 0, 3, Bytes::from(data), &[], Rules::test(false, 1 << 20), &mut 0);
        assert!(decoded.records.is_empty() && decoded.next_offset.is_none() && !decoded.too_small);
    }

    #[test]
    fn a_corrupt_batch_stops_decoding_after_the_good_ones() {
        let mut data = batch(0, &["good"], 0, -1, Compression::None);
        let mut bad = batch(1, &["bad"], 0, -1, Compression::None);
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        data.extend(bad);
        let decoded =
            decode_partition(&topic(), 0, 0, Bytes::from(data), &[], Rules::test(false, 1 << 20), &mut unlimited());
        assert_eq!(values(&decoded), [(0, "good".into())]);
        assert!(matches!(decoded.error, Some(RecordError::Crc { base_offset: 1, .. })), "{:?}", decoded.error);
        assert_eq!(decoded.next_offset, Some(1), "the position stays at the bad batch");
    }

    #[test]
    fn a_record_count_larger_than_the_batch_is_an_error() {
        let mut data = batch(0, &["a"], 0, -1, Compression::None);
        data[57..61].copy_from_slice(&1_000_000i32.to_be_bytes());
        let crc = crc32c::crc32c(&data[21..]);
        data[17..21].copy_from_slice(&crc.to_be_bytes());
        let decoded =
            decode_partition(&topic(), 0, 0, Bytes::from(data), &[], Rules::test(false, 1 << 20), &mut unlimited());
        assert!(matches!(decoded.error, Some(RecordError::Corrupt { .. })), "{:?}", decoded.error);
        assert!(decoded.records.is_empty());
    }

    /// The fetch-response decoder's fuzz target, run by proptest in CI:
    /// a whole Fetch response frame of arbitrary bytes, and valid record
    /// data with arbitrary bytes flipped, truncated or appended.
    mod fuzz {
        use super::*;
        use crate::wire::frame::decode_body;
        use kafka_protocol::messages::FetchRequest;
        use proptest::prelude::*;

        fn data() -> Vec<u8> {
            let mut data = batch(0, &["a", "bb", "ccc"], 0, -1, Compression::None);
            data.extend(batch(3, &["dddd", "e"], 0, -1, Compression::Lz4));
            data.extend(batch(5, &["f"], 7, 3, Compression::Gzip));
            data.extend(marker(6, 7, 0));
            data
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2048))]

            #[test]
            fn garbage_frames_are_errors(body in proptest::collection::vec(any::<u8>(), 0..512), version in 4i16..=12) {
                if let Ok(response) = decode_body::<FetchRequest>(Bytes::from(body), version) {
                    for topic in &response.responses {
                        for p in &topic.partitions {
                            let records = p.records.clone().unwrap_or_default();
                            let _ = decode_partition(&super::topic(), p.partition_index, 0, records, &[], Rules::test(true, 1 << 16), &mut unlimited());
                        }
                    }
                }
            }

            /// Damaged record data: never a panic; what comes out was
            /// written, in order. (A batch's base offset and length are
            /// outside its CRC: a flipped base offset moves its records.)
            #[test]
            fn damaged_record_data(
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
                cut in any::<usize>(),
                tail in proptest::collection::vec(any::<u8>(), 0..64),
                from in 0i64..7,
            ) {
                let clean = data();
                let mut bytes = clean.clone();
                for (at, mask) in flips {
                    let at = at % bytes.len();
                    bytes[at] ^= mask;
                }
                bytes.truncate(cut % (bytes.len() + 1));
                bytes.extend(tail);
                let aborted = [Aborted { producer_id: 7, first_offset: 5 }];
                let decoded = decode_partition(&topic(), 0, from, Bytes::from(bytes), &aborted, Rules::test(true, 1 << 16), &mut unlimited());
                let written = ["a", "bb", "ccc", "dddd", "e"];
                let mut rest = written.iter();
                let mut last = i64::MIN;
                for record in &decoded.records {
                    let value = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default()).into_owned();
                    prop_assert!(rest.any(|w| *w == value), "{value} out of order or never written");
                    prop_assert!(record.offset > last && record.offset >= from, "offset {} after {last}", record.offset);
                    last = record.offset;
                }
            }
        }
    }
}
