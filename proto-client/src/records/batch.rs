//! Record batch v2 encoding, record by record.
//!
//! ```text
//!  0 baseOffset i64          27 baseTimestamp i64     57 recordCount i32
//!  8 batchLength i32         35 maxTimestamp i64      61 records…
//! 12 partitionLeaderEpoch    43 producerId i64
//! 16 magic i8 (2)            51 producerEpoch i16
//! 17 crc u32 (CRC32C of 21..end)
//! 21 attributes i16          53 baseSequence i32
//! 23 lastOffsetDelta i32
//! ```
//!
//! [`BatchBuilder`] encodes each record into the batch's buffer as it is
//! appended, so a record costs its bytes and nothing else: no per-record
//! struct, no allocation. [`BatchBuilder::seal`] compresses the records and
//! writes the header; the producer id, epoch and base sequence are stamped
//! later ([`SealedBatch::stamp`]), when the batch is first sent, because
//! sequences are handed out in send order. Stamping again (after an epoch
//! bump) rewrites those fields and the CRC.
//!
//! Unlike `kafka-protocol`'s encoder, this one keeps duplicate header keys
//! and can only ever produce exactly one batch.

use bytes::{BufMut, Bytes};

use super::compression::{self, Compression};
use super::varint::{put_varint, put_varlong, varint_len, varlong_len};

/// Size of the v2 batch header.
pub(crate) const BATCH_HEADER_SIZE: usize = 61;
pub(crate) const CRC_OFFSET: usize = 17;
pub(crate) const ATTRIBUTES_OFFSET: usize = 21;
pub(crate) const PRODUCER_ID_OFFSET: usize = 43;

/// A record header: the key is a string, the value optional bytes. Keys may
/// repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    /// Header key.
    pub key: &'a str,
    /// Header value; `None` is a null value.
    pub value: Option<&'a [u8]>,
}

impl<'a> Header<'a> {
    /// A header.
    pub fn new(key: &'a str, value: Option<&'a [u8]>) -> Self {
        Header { key, value }
    }
}

/// Bytes of a record that do not depend on its place in the batch: key,
/// value and headers with their lengths. Computed once per record.
pub(crate) fn payload_size(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[Header<'_>]) -> usize {
    let headers_size: usize =
        headers.iter().map(|h| bytes_size(Some(h.key.as_bytes())) + bytes_size(h.value)).sum::<usize>();
    bytes_size(key) + bytes_size(value) + varint_len(headers.len() as i32) + headers_size
}

fn bytes_size(data: Option<&[u8]>) -> usize {
    match data {
        None => varint_len(-1),
        Some(d) => varint_len(d.len() as i32) + d.len(),
    }
}

/// Bytes after the length prefix: attributes, deltas, then the payload.
fn body_size(timestamp_delta: i64, offset_delta: i32, payload: usize) -> usize {
    1 + varlong_len(timestamp_delta) + varint_len(offset_delta) + payload
}

/// Bytes a record takes in a batch, length prefix included.
pub(crate) fn record_size(timestamp_delta: i64, offset_delta: i32, payload: usize) -> usize {
    let body = body_size(timestamp_delta, offset_delta, payload);
    varint_len(body as i32) + body
}

fn put_bytes(out: &mut Vec<u8>, data: Option<&[u8]>) {
    match data {
        None => put_varint(out, -1),
        Some(d) => {
            put_varint(out, d.len() as i32);
            out.put_slice(d);
        }
    }
}

/// An open batch receiving records.
#[derive(Debug)]
pub(crate) struct BatchBuilder {
    /// Room for the header, then the encoded records, uncompressed. An
    /// uncompressed batch is sealed in place.
    buffer: Vec<u8>,
    count: i32,
    base_timestamp: i64,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub(crate) fn new(capacity: usize) -> Self {
        let mut buffer = Vec::with_capacity(BATCH_HEADER_SIZE + capacity);
        buffer.resize(BATCH_HEADER_SIZE, 0);
        BatchBuilder { buffer, count: 0, base_timestamp: 0, max_timestamp: 0 }
    }

    pub(crate) fn record_count(&self) -> i32 {
        self.count
    }

    /// Bytes the buffer holds without growing.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.buffer.capacity()
    }

    /// Size of the batch if sealed uncompressed now.
    pub(crate) fn size(&self) -> usize {
        self.buffer.len()
    }

    /// Bytes the next record would add, given its [`payload_size`].
    pub(crate) fn size_of_next(&self, timestamp: i64, payload: usize) -> usize {
        let delta = if self.count == 0 { 0 } else { timestamp.wrapping_sub(self.base_timestamp) };
        record_size(delta, self.count, payload)
    }

    /// Encodes one record; returns the bytes it took.
    #[cfg(test)]
    pub(crate) fn append(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
    ) -> usize {
        let payload = payload_size(key, value, headers);
        self.append_sized(timestamp, key, value, headers, payload)
    }

    /// [`Self::append`] with the record's [`payload_size`] already known.
    pub(crate) fn append_sized(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header<'_>],
        payload: usize,
    ) -> usize {
        if self.count == 0 {
            self.base_timestamp = timestamp;
            self.max_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let timestamp_delta = timestamp.wrapping_sub(self.base_timestamp);
        let offset_delta = self.count;
        let body = body_size(timestamp_delta, offset_delta, payload);
        let before = self.buffer.len();
        self.buffer.reserve(varint_len(body as i32) + body);
        put_varint(&mut self.buffer, body as i32);
        self.buffer.put_u8(0); // record attributes: unused
        put_varlong(&mut self.buffer, timestamp_delta);
        put_varint(&mut self.buffer, offset_delta);
        put_bytes(&mut self.buffer, key);
        put_bytes(&mut self.buffer, value);
        put_varint(&mut self.buffer, headers.len() as i32);
        for header in headers {
            put_bytes(&mut self.buffer, Some(header.key.as_bytes()));
            put_bytes(&mut self.buffer, header.value);
        }
        self.count += 1;
        let added = self.buffer.len() - before;
        debug_assert_eq!(added, varint_len(body as i32) + body, "record_size disagrees with the encoder");
        added
    }

    /// Compresses the records and writes the header. Producer id, epoch
    /// and base sequence are left as "none" (-1) until [`SealedBatch::stamp`].
    pub(crate) fn seal(self, codec: Compression, level: Option<u32>) -> SealedBatch {
        assert!(self.count > 0, "an empty batch is never sealed");
        let mut batch = match codec {
            Compression::None => self.buffer,
            _ => {
                let mut batch = Vec::with_capacity(BATCH_HEADER_SIZE + self.buffer.len() / 2);
                batch.resize(BATCH_HEADER_SIZE, 0);
                compression::compress(codec, level, &self.buffer[BATCH_HEADER_SIZE..], &mut batch);
                batch
            }
        };
        let batch_length = (batch.len() - 12) as i32;
        let mut header = &mut batch[..BATCH_HEADER_SIZE];
        header.put_i64(0); // base offset: the broker assigns it
        header.put_i32(batch_length);
        header.put_i32(-1); // partition leader epoch: the broker sets it
        header.put_i8(2); // magic
        header.put_u32(0); // crc, written by stamp
        header.put_i16(codec.code()); // CreateTime, not transactional, not control
        header.put_i32(self.count - 1);
        header.put_i64(self.base_timestamp);
        header.put_i64(self.max_timestamp);
        header.put_i64(-1);
        header.put_i16(-1);
        header.put_i32(-1);
        header.put_i32(self.count);
        let mut sealed = SealedBatch { bytes: batch, frozen: None };
        sealed.stamp(-1, -1, -1);
        sealed
    }
}

/// A complete batch, ready to be sent once stamped.
#[derive(Debug)]
pub(crate) struct SealedBatch {
    bytes: Vec<u8>,
    frozen: Option<Bytes>,
}

impl SealedBatch {
    /// Size in bytes, header included.
    pub(crate) fn size(&self) -> usize {
        self.frozen.as_ref().map_or(self.bytes.len(), Bytes::len)
    }

    /// Writes producer id, epoch and base sequence, and the CRC over them.
    /// Marks the batch as part of a transaction (attribute bit 4); the CRC
    /// is computed by [`Self::stamp`], which must follow.
    pub(crate) fn mark_transactional(&mut self) {
        if let Some(frozen) = self.frozen.take() {
            self.bytes = frozen.to_vec();
        }
        let attributes = i16::from_be_bytes([self.bytes[ATTRIBUTES_OFFSET], self.bytes[ATTRIBUTES_OFFSET + 1]]) | 0x10;
        self.bytes[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
    }

    pub(crate) fn stamp(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        if let Some(frozen) = self.frozen.take() {
            // Restamping after an epoch bump: rare, so a copy is fine.
            self.bytes = frozen.to_vec();
        }
        let mut fields = &mut self.bytes[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 14];
        fields.put_i64(producer_id);
        fields.put_i16(producer_epoch);
        fields.put_i32(base_sequence);
        let crc = crc32c::crc32c(&self.bytes[ATTRIBUTES_OFFSET..]);
        self.bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }

    /// The batch bytes, for a request. Cheap after the first call.
    pub(crate) fn bytes(&mut self) -> Bytes {
        if self.frozen.is_none() {
            self.frozen = Some(Bytes::from(std::mem::take(&mut self.bytes)));
        }
        self.frozen.clone().expect("just set")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::RecordBatchDecoder;

    #[test]
    fn the_crate_decoder_reads_our_batches() {
        for codec in [Compression::None, Compression::Gzip, Compression::Snappy] {
            let mut builder = BatchBuilder::new(1024);
            let headers = [Header::new("trace", Some(b"abc")), Header::new("empty", None)];
            builder.append(1_700_000_000_000, Some(b"k1"), Some(b"v1"), &headers);
            builder.append(1_700_000_000_050, None, Some(b"v2"), &[]);
            builder.append(1_699_999_999_990, Some(b"k3"), None, &[]);
            let mut sealed = builder.seal(codec, None);
            sealed.stamp(42, 3, 100);
            let mut bytes = sealed.bytes();
            let set = RecordBatchDecoder::decode(&mut bytes).expect("CRC and layout valid");
            assert!(bytes.is_empty());
            let records = &set.records;
            assert_eq!(records.len(), 3, "{codec}");
            assert_eq!(records[0].producer_id, 42);
            assert_eq!(records[0].producer_epoch, 3);
            assert_eq!(records[0].sequence, 100);
            assert_eq!(records[2].sequence, 102);
            assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(records[1].key, None);
            assert_eq!(records[2].value, None);
            assert_eq!(records[1].timestamp, 1_700_000_000_050);
            assert_eq!(records[2].timestamp, 1_699_999_999_990);
            assert_eq!(records[0].headers.len(), 2);
            let empty = records[0].headers.iter().find(|(k, _)| k.as_str() == "empty").map(|(_, v)| v.clone());
            assert_eq!(empty, Some(None));
            assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1, 2]);
        }
    }

    #[test]
    fn restamping_rewrites_ids_and_crc() {
        let mut builder = BatchBuilder::new(64);
        builder.append(1, Some(b"k"), Some(b"v"), &[]);
        let mut sealed = builder.seal(Compression::None, None);
        sealed.stamp(7, 0, 0);
        let first = sealed.bytes();
        sealed.stamp(7, 1, 0);
        let second = sealed.bytes();
        assert_ne!(first, second);
        let set = RecordBatchDecoder::decode(&mut second.clone()).unwrap();
        assert_eq!(set.records[0].producer_epoch, 1);
    }

    #[test]
    fn size_accounting_matches_the_encoding() {
        let mut builder = BatchBuilder::new(0);
        let mut expected = BATCH_HEADER_SIZE;
        for i in 0..300i64 {
            let value = vec![b'x'; 12 + (i * 7 % 200) as usize];
            let headers = [Header::new("h", Some(&value[..(i as usize % 5)]))];
            let key = (i % 3 != 0).then_some(&value[..(i as usize % 11)]);
            let next = builder.size_of_next(1000 + i * 13, payload_size(key, Some(&value), &headers));
            let added = builder.append(1000 + i * 13, key, Some(&value), &headers);
            assert_eq!(next, added);
            expected += added;
            assert_eq!(builder.size(), expected);
        }
        assert_eq!(builder.record_count(), 300);
        let sealed = builder.seal(Compression::None, None);
        assert_eq!(sealed.size(), expected);
    }
}
