//! Record batch v2 decoding.
//!
//! [`Batches`] walks the record bytes of a fetched partition batch by batch
//! and stops quietly at a partial batch at the end (brokers cut the data at
//! a byte limit; Java and librdkafka ignore the partial tail, and so do we).
//! [`decode_batch`] checks the CRC, decompresses within a limit and parses
//! every record, keeping duplicate header keys. For LogAppendTime batches
//! every record gets the batch's max timestamp, as the Java client reports.

use bytes::Bytes;
use kafka_protocol::protocol::StrBytes;

use super::batch::{ATTRIBUTES_OFFSET, BATCH_HEADER_SIZE, CRC_OFFSET};
use super::compression::{self, CodecError, Compression};
use super::varint::{get_varint, get_varlong};

/// Why a batch cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes do not form a valid batch.
    #[error("corrupt record batch at offset {base_offset}: {reason}")]
    Corrupt {
        /// The batch's base offset (-1 when unreadable).
        base_offset: i64,
        /// What is wrong.
        reason: String,
    },
    /// The CRC does not match the contents.
    #[error("record batch at offset {base_offset} fails its CRC: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// The batch's base offset.
        base_offset: i64,
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the contents.
        computed: u32,
    },
    /// A message format older than v2 (magic 0 or 1).
    #[error("record batch at offset {base_offset} has magic {magic}; only v2 is supported")]
    UnsupportedMagic {
        /// The batch's base offset.
        base_offset: i64,
        /// The magic byte.
        magic: i8,
    },
    /// The records do not decompress.
    #[error("record batch at offset {base_offset}")]
    Codec {
        /// The batch's base offset.
        base_offset: i64,
        /// The codec's complaint.
        #[source]
        source: CodecError,
    },
}

/// The fixed fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Partition leader epoch when written.
    pub partition_leader_epoch: i32,
    /// Attribute bits (codec, timestamp type, transactional, control).
    pub attributes: i16,
    /// Offset of the last record, relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Highest timestamp in the batch.
    pub max_timestamp: i64,
    /// Producer id, -1 if none.
    pub producer_id: i64,
    /// Producer epoch.
    pub producer_epoch: i16,
    /// Sequence of the first record, -1 if none.
    pub base_sequence: i32,
    /// Number of records.
    pub record_count: i32,
}

impl BatchHeader {
    /// The codec, if known.
    pub fn compression(&self) -> Option<Compression> {
        Compression::from_code(self.attributes)
    }
    /// Whether timestamps are LogAppendTime (set by the broker).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & 0x08 != 0
    }
    /// Whether the batch belongs to a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
    /// Whether this is a control batch (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
}

/// A record header as read: duplicates keep their order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// Header key.
    pub key: StrBytes,
    /// Header value; `None` for null.
    pub value: Option<Bytes>,
}

/// A record as read from a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedRecord {
    /// Absolute offset.
    pub offset: i64,
    /// Timestamp (CreateTime, or the batch's LogAppendTime).
    pub timestamp: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value.
    pub value: Option<Bytes>,
    /// Headers in wire order, duplicates included.
    pub headers: Vec<RecordHeader>,
}

/// A decoded batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBatch {
    /// The header fields.
    pub header: BatchHeader,
    /// The records.
    pub records: Vec<DecodedRecord>,
}

/// Iterates over the complete batches in a partition's record bytes.
#[derive(Debug, Clone)]
pub struct Batches {
    rest: Bytes,
}

impl Batches {
    /// Walks `records` (the `records` field of a fetch response partition).
    pub fn new(records: Bytes) -> Self {
        Batches { rest: records }
    }

    /// Bytes of a partial batch left at the end, if any.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// The whole size of the partial batch left at the end, as its header
    /// says, when the header is there.
    pub fn partial_size(&self) -> Option<usize> {
        let length = i32::from_be_bytes(self.rest.get(8..12)?.try_into().ok()?);
        usize::try_from(length).ok().map(|length| 12 + length)
    }
}

impl Iterator for Batches {
    type Item = Result<Bytes, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Base offset and length are enough to know the batch's extent.
        let length = i32::from_be_bytes(self.rest.get(8..12)?.try_into().ok()?);
        let base_offset = i64::from_be_bytes(self.rest[..8].try_into().ok()?);
        if length < (BATCH_HEADER_SIZE - 12) as i32 {
            self.rest.clear();
            return Some(Err(RecordError::Corrupt { base_offset, reason: format!("batch length {length}") }));
        }
        let total = 12 + length as usize;
        if self.rest.len() < total {
            // A partial batch at the end: the broker stopped at its byte
            // limit. Not an error.
            return None;
        }
        Some(Ok(self.rest.split_to(total)))
    }
}

fn read_header(batch: &[u8]) -> BatchHeader {
    let i64_at = |at: usize| i64::from_be_bytes(batch[at..at + 8].try_into().expect("8 bytes"));
    let i32_at = |at: usize| i32::from_be_bytes(batch[at..at + 4].try_into().expect("4 bytes"));
    let i16_at = |at: usize| i16::from_be_bytes(batch[at..at + 2].try_into().expect("2 bytes"));
    BatchHeader {
        base_offset: i64_at(0),
        partition_leader_epoch: i32_at(12),
        attributes: i16_at(21),
        last_offset_delta: i32_at(23),
        base_timestamp: i64_at(27),
        max_timestamp: i64_at(35),
        producer_id: i64_at(43),
        producer_epoch: i16_at(51),
        base_sequence: i32_at(53),
        record_count: i32_at(57),
    }
}

/// Decodes one complete batch (as [`Batches`] yields them). Decompressed
/// records may take at most `max_uncompressed` bytes.
pub fn decode_batch(batch: Bytes, max_uncompressed: usize) -> Result<DecodedBatch, RecordError> {
    let (header, body) = open_batch(batch, max_uncompressed)?;
    let count = usize::try_from(header.record_count).unwrap_or(0);
    // Every record takes at least 7 bytes: bound the reservation by the data.
    let mut records = Vec::with_capacity(count.min(body.len() / 7));
    for_each_record(&header, &body, |record| records.push(record))?;
    Ok(DecodedBatch { header, records })
}

/// Checks a complete batch (magic, CRC, codec) and returns its header and
/// its records' bytes, decompressed.
pub(crate) fn open_batch(batch: Bytes, max_uncompressed: usize) -> Result<(BatchHeader, Bytes), RecordError> {
    let base_offset = batch.get(..8).map_or(-1, |b| i64::from_be_bytes(b.try_into().expect("8 bytes")));
    let corrupt = |reason: &str| RecordError::Corrupt { base_offset, reason: reason.to_owned() };
    if batch.len() < BATCH_HEADER_SIZE {
        return Err(corrupt("shorter than a batch header"));
    }
    let magic = batch[16] as i8;
    if magic != 2 {
        return Err(RecordError::UnsupportedMagic { base_offset, magic });
    }
    let stored = u32::from_be_bytes(batch[CRC_OFFSET..CRC_OFFSET + 4].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    if stored != computed {
        return Err(RecordError::Crc { base_offset, stored, computed });
    }
    let header = read_header(&batch);
    let codec = header.compression().ok_or_else(|| corrupt("unknown compression codec"))?;
    let body = match codec {
        Compression::None => batch.slice(BATCH_HEADER_SIZE..),
        _ => Bytes::from(
            compression::decompress(codec, &batch[BATCH_HEADER_SIZE..], max_uncompressed)
                .map_err(|source| RecordError::Codec { base_offset, source })?,
        ),
    };
    if header.record_count < 0 {
        return Err(corrupt("negative record count"));
    }
    // Offsets must fit: every record's offset, and the one after the last.
    if header.base_offset < 0
        || header.last_offset_delta < 0
        || header.base_offset.checked_add(i64::from(header.last_offset_delta) + 1).is_none()
    {
        return Err(corrupt("offsets out of range"));
    }
    Ok((header, body))
}

/// Parses the records of an opened batch, handing each to `each` as it is
/// read (no intermediate list). On an error, records already handed over
/// belong to a batch that is corrupt: the caller drops them.
pub(crate) fn for_each_record(
    header: &BatchHeader,
    body: &Bytes,
    mut each: impl FnMut(DecodedRecord),
) -> Result<(), RecordError> {
    let corrupt = |reason: &str| RecordError::Corrupt { base_offset: header.base_offset, reason: reason.to_owned() };
    let mut cursor: &[u8] = body;
    for _ in 0..header.record_count {
        each(parse_record(body, &mut cursor, header).map_err(corrupt)?);
    }
    if !cursor.is_empty() {
        return Err(corrupt("bytes after the last record"));
    }
    Ok(())
}

/// Parses one record from `cursor` (a suffix of `body`), slicing key, value
/// and header values out of `body` without copying.
fn parse_record(body: &Bytes, cursor: &mut &[u8], header: &BatchHeader) -> Result<DecodedRecord, &'static str> {
    let length = usize::try_from(get_varint(cursor)?).map_err(|_| "negative record length")?;
    if length > cursor.len() {
        return Err("record runs past the end of the batch");
    }
    let (mut record, rest) = cursor.split_at(length);
    *cursor = rest;
    let slice = |part: &[u8]| body.slice_ref(part);
    let take = |input: &mut &[u8]| -> Result<Option<Bytes>, &'static str> {
        match get_varint(input)? {
            -1 => Ok(None),
            n if n < 0 => Err("negative length"),
            n if n as usize > input.len() => Err("field runs past the end of the record"),
            n => {
                let (data, rest) = input.split_at(n as usize);
                *input = rest;
                Ok(Some(slice(data)))
            }
        }
    };
    let [_attributes] = *record.split_first_chunk::<1>().ok_or("empty record")?.0;
    record = &record[1..];
    let timestamp_delta = get_varlong(&mut record)?;
    let offset_delta = get_varint(&mut record)?;
    let key = take(&mut record)?;
    let value = take(&mut record)?;
    let header_count = usize::try_from(get_varint(&mut record)?).map_err(|_| "negative header count")?;
    let mut headers = Vec::with_capacity(header_count.min(record.len() / 2));
    for _ in 0..header_count {
        let key = take(&mut record)?.ok_or("null header key")?;
        let key = StrBytes::from_utf8(key).map_err(|_| "header key is not UTF-8")?;
        let value = take(&mut record)?;
        headers.push(RecordHeader { key, value });
    }
    if !record.is_empty() {
        return Err("bytes after the record's headers");
    }
    let timestamp = if header.is_log_append_time() {
        header.max_timestamp
    } else {
        header.base_timestamp.wrapping_add(timestamp_delta)
    };
    // Within the batch's range (checked when it was opened), so no overflow.
    if offset_delta < 0 || offset_delta > header.last_offset_delta {
        return Err("record offset outside its batch");
    }
    Ok(DecodedRecord { offset: header.base_offset + i64::from(offset_delta), timestamp, key, value, headers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::batch::{BatchBuilder, Header};
    use proptest::prelude::*;

    fn batch(codec: Compression, records: usize) -> Bytes {
        let mut builder = BatchBuilder::new(0);
        for i in 0..records {
            let value = format!("value-{i}");
            let headers = [Header::new("dup", Some(b"a")), Header::new("dup", Some(b"b")), Header::new("n", None)];
            builder.append(1000 + i as i64, Some(format!("k{i}").as_bytes()), Some(value.as_bytes()), &headers);
        }
        let mut sealed = builder.seal(codec, None);
        sealed.stamp(9, 0, 0);
        sealed.bytes()
    }

    #[test]
    fn round_trip_with_duplicate_headers_for_every_codec() {
        for codec in [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
            let decoded = decode_batch(batch(codec, 50), 1 << 20).unwrap();
            assert_eq!(decoded.header.compression(), Some(codec));
            assert_eq!(decoded.header.record_count, 50);
            assert_eq!(decoded.records.len(), 50);
            let r = &decoded.records[49];
            assert_eq!(r.offset, 49);
            assert_eq!(r.timestamp, 1049);
            assert_eq!(r.key.as_deref(), Some(&b"k49"[..]));
            assert_eq!(r.value.as_deref(), Some(&b"value-49"[..]));
            let headers: Vec<(&str, Option<&[u8]>)> =
                r.headers.iter().map(|h| (h.key.as_str(), h.value.as_deref())).collect();
            assert_eq!(headers, [("dup", Some(&b"a"[..])), ("dup", Some(&b"b"[..])), ("n", None)]);
        }
    }

    #[test]
    fn batches_stop_at_a_partial_tail() {
        let one = batch(Compression::None, 3);
        let two = batch(Compression::Lz4, 4);
        let mut stream = one.to_vec();
        stream.extend_from_slice(&two);
        for cut in 0..=stream.len() {
            let mut batches = Batches::new(Bytes::copy_from_slice(&stream[..cut]));
            let complete: Vec<Bytes> = batches.by_ref().map(Result::unwrap).collect();
            let expected = usize::from(cut >= one.len()) + usize::from(cut == stream.len());
            assert_eq!(complete.len(), expected, "cut at {cut}");
            for b in complete {
                decode_batch(b, 1 << 20).unwrap();
            }
        }
    }

    #[test]
    fn corruption_is_detected() {
        let mut bytes = batch(Compression::None, 2).to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(matches!(decode_batch(Bytes::from(bytes), 1 << 20), Err(RecordError::Crc { .. })));
        let mut old = batch(Compression::None, 1).to_vec();
        old[16] = 1;
        assert!(matches!(decode_batch(Bytes::from(old), 1 << 20), Err(RecordError::UnsupportedMagic { magic: 1, .. })));
    }

    #[test]
    fn decompression_is_bounded() {
        let error = decode_batch(batch(Compression::Gzip, 200), 100).unwrap_err();
        assert!(matches!(error, RecordError::Codec { source: CodecError::TooLarge { .. }, .. }), "{error:?}");
    }

    #[test]
    fn log_append_time_uses_the_batch_max_timestamp() {
        let mut bytes = batch(Compression::None, 3).to_vec();
        bytes[22] |= 0x08;
        let crc = crc32c::crc32c(&bytes[21..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        let decoded = decode_batch(Bytes::from(bytes), 1 << 20).unwrap();
        assert!(decoded.records.iter().all(|r| r.timestamp == 1002));
    }

    proptest! {
        /// Garbage with a valid CRC reaches the record parser: errors only.
        #[test]
        fn garbage_records_never_panic(records in proptest::collection::vec(any::<u8>(), 0..300), count in any::<i32>()) {
            let mut bytes = batch(Compression::None, 1)[..BATCH_HEADER_SIZE].to_vec();
            bytes.extend_from_slice(&records);
            let length = (bytes.len() - 12) as i32;
            bytes[8..12].copy_from_slice(&length.to_be_bytes());
            bytes[57..61].copy_from_slice(&count.to_be_bytes());
            let crc = crc32c::crc32c(&bytes[21..]);
            bytes[17..21].copy_from_slice(&crc.to_be_bytes());
            let _ = decode_batch(Bytes::from(bytes), 4096);
        }

        #[test]
        fn walking_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for batch in Batches::new(Bytes::from(bytes)).flatten() {
                let _ = decode_batch(batch, 4096);
            }
        }
    }
}
