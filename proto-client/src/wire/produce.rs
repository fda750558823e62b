//! A Produce request frame in segments, so that record batches reach the
//! socket without being copied into the frame.
//!
//! `kafka-protocol` encodes a request into one buffer, copying every
//! batch's bytes into it: for large values that is a second copy of every
//! byte produced (the first builds the batch). Here the frame is the same
//! bytes, field for field (the field encoders are the crate's), but each
//! batch of at least [`SHARED_AT`] bytes is a segment of its own: the
//! `Bytes` the batch already lives in. The connection writes the segments
//! vectored. The header is the crate's; the body's few primitive fields
//! are written here (the crate keeps its field encoders private). A test
//! checks, for every version, that the segments joined are exactly the
//! crate's encoding.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader};
use kafka_protocol::protocol::{Encodable, HeaderVersion, StrBytes};

/// Batches smaller than this are copied into the frame: a segment of its
/// own costs more than the copy.
pub(crate) const SHARED_AT: usize = 4096;

/// The versions this encoder lays out (topics by name: v13 names them by
/// id, and this client stops at v12).
const VERSIONS: std::ops::RangeInclusive<i16> = 3..=12;

/// The frame of `request` at `version`, size prefix first, as segments;
/// `None` when this encoder does not cover the request (a version it
/// does not lay out, or tagged fields it does not write), for the caller
/// to encode it whole.
pub(crate) fn encode_produce(
    request: &ProduceRequest,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
) -> Option<Result<Vec<Bytes>, String>> {
    let tagged = !request.unknown_tagged_fields.is_empty()
        || request.topic_data.iter().any(|t| {
            !t.unknown_tagged_fields.is_empty() || t.partition_data.iter().any(|p| !p.unknown_tagged_fields.is_empty())
        });
    if !VERSIONS.contains(&version) || tagged {
        return None;
    }
    Some(
        segments(request, version, correlation_id, client_id)
            .map_err(|e| format!("cannot encode Produce v{version}: {e}")),
    )
}

/// A field encoder's result, its error as text (the crate's error type is
/// not this crate's to name).
macro_rules! put {
    ($e:expr) => {
        $e.map_err(|e| e.to_string())?
    };
}

fn segments(
    request: &ProduceRequest,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
) -> Result<Vec<Bytes>, String> {
    let flexible = version >= 9;
    let header_version = ProduceRequest::header_version(version);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()));
    let size = put!(header.compute_size(header_version)) + put!(request.compute_size(version));
    let size = i32::try_from(size).map_err(|_| format!("a request of {size} bytes"))?;

    let mut out = Vec::new();
    // Everything but the shared batches: a little per partition.
    let small: usize = request
        .topic_data
        .iter()
        .flat_map(|t| t.partition_data.iter())
        .map(|p| 16 + p.records.as_ref().filter(|r| r.len() < SHARED_AT).map_or(0, Bytes::len))
        .sum();
    let mut buf = BytesMut::with_capacity(64 + client_id.len() + small + request.topic_data.len() * 64);
    buf.put_i32(size);
    put!(header.encode(&mut buf, header_version));
    string(&mut buf, flexible, request.transactional_id.as_ref().map(|t| t.0.as_bytes()));
    buf.put_i16(request.acks);
    buf.put_i32(request.timeout_ms);
    length(&mut buf, flexible, Some(request.topic_data.len()));
    for topic in &request.topic_data {
        string(&mut buf, flexible, Some(topic.name.0.as_bytes()));
        length(&mut buf, flexible, Some(topic.partition_data.len()));
        for partition in &topic.partition_data {
            buf.put_i32(partition.index);
            let records = partition.records.as_ref();
            length(&mut buf, flexible, records.map(Bytes::len));
            match records {
                // The batch's own bytes as a segment.
                Some(records) if records.len() >= SHARED_AT => {
                    out.push(buf.split().freeze());
                    out.push(records.clone());
                }
                Some(records) => buf.put_slice(records),
                None => {}
            }
            if flexible {
                buf.put_u8(0); // no tagged fields
            }
        }
        if flexible {
            buf.put_u8(0);
        }
    }
    if flexible {
        buf.put_u8(0);
    }
    if !buf.is_empty() {
        out.push(buf.freeze());
    }
    Ok(out)
}

/// An array's or a byte string's length (`None`: null): a varint of
/// length + 1 in flexible versions, else an `i32` (-1 for null).
fn length(buf: &mut BytesMut, flexible: bool, len: Option<usize>) {
    if flexible {
        varint(buf, len.map_or(0, |n| n as u32 + 1));
    } else {
        buf.put_i32(len.map_or(-1, |n| n as i32));
    }
}

/// A nullable string: compact in flexible versions, else an `i16` length.
fn string(buf: &mut BytesMut, flexible: bool, text: Option<&[u8]>) {
    if flexible {
        varint(buf, text.map_or(0, |t| t.len() as u32 + 1));
    } else {
        buf.put_i16(text.map_or(-1, |t| t.len() as i16));
    }
    if let Some(text) = text {
        buf.put_slice(text);
    }
}

/// An unsigned varint, seven bits a byte, low first.
fn varint(buf: &mut BytesMut, mut value: u32) {
    while value >= 0x80 {
        buf.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};

    fn request(sizes: &[&[usize]]) -> ProduceRequest {
        let topics = sizes
            .iter()
            .enumerate()
            .map(|(t, partitions)| {
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_string(format!("topic-{t}"))))
                    .with_partition_data(
                        partitions
                            .iter()
                            .enumerate()
                            .map(|(p, &size)| {
                                let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + p) as u8).collect();
                                PartitionProduceData::default().with_index(p as i32).with_records(Some(bytes.into()))
                            })
                            .collect(),
                    )
            })
            .collect();
        ProduceRequest::default().with_acks(-1).with_timeout_ms(30_000).with_topic_data(topics)
    }

    /// For every version: the segments joined are the crate's own frame,
    /// and every batch of at least `SHARED_AT` bytes is its own segment,
    /// the very bytes of the batch (no copy).
    #[test]
    fn the_segments_are_the_crates_frame_and_large_batches_are_not_copied() {
        let client = StrBytes::from_static_str("rill-test");
        for version in VERSIONS {
            for shape in [&[][..], &[&[0usize][..]], &[&[10, 5000, 3][..], &[70_000, 4096, 4095]]] {
                let request = request(shape);
                let whole = crate::wire::frame::encode_request(&request, version, 42, &client).unwrap();
                let parts = encode_produce(&request, version, 42, &client).unwrap().unwrap();
                assert_eq!(parts.concat(), whole.to_vec(), "v{version}, {shape:?}");
                for partition in request.topic_data.iter().flat_map(|t| t.partition_data.iter()) {
                    let records = partition.records.as_ref().unwrap();
                    let shared = parts.iter().any(|p| p.as_ptr() == records.as_ptr() && p.len() == records.len());
                    assert_eq!(shared, records.len() >= SHARED_AT, "v{version}: a {} byte batch", records.len());
                }
            }
        }
        // Null records and a transactional id come out the same too.
        let mut request = request(&[&[5000]]);
        request.transactional_id = Some(kafka_protocol::messages::TransactionalId(StrBytes::from_static_str("tx")));
        request.topic_data[0].partition_data.push(PartitionProduceData::default().with_index(9));
        for version in VERSIONS {
            let whole = crate::wire::frame::encode_request(&request, version, 7, &client).unwrap();
            assert_eq!(encode_produce(&request, version, 7, &client).unwrap().unwrap().concat(), whole.to_vec());
        }
    }

    #[test]
    fn what_it_does_not_lay_out_is_left_to_the_crate() {
        let client = StrBytes::from_static_str("c");
        assert!(encode_produce(&request(&[&[1]]), 13, 1, &client).is_none());
        let mut tagged = request(&[&[1]]);
        tagged.unknown_tagged_fields.insert(5, Bytes::from_static(b"x"));
        assert!(encode_produce(&tagged, 9, 1, &client).is_none());
    }
}
