//! Frames: `[size: i32][header][body]`, both directions.
//!
//! Encoding writes a whole request frame, size prefix included, so the
//! connection task only moves bytes. Decoding is split in two: the
//! connection task cuts frames off the socket with a [`FrameReader`] (size
//! checks, nothing else), and the caller's task decodes the body with
//! [`decode_response`] (header, shape walk, `kafka-protocol` decode, no
//! leftover bytes).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use super::ApiRequest;
use super::shape;

/// Encodes one request frame, size prefix included.
///
/// Fails only when the request cannot be expressed at `version` (a field
/// set that the version cannot carry), which is a bug in the caller.
pub(crate) fn encode_request<R: ApiRequest>(
    request: &R,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
) -> Result<Bytes, String> {
    let header_version = R::header_version(version);
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()));
    let size = header
        .compute_size(header_version)
        .and_then(|h| Ok(h + request.compute_size(version)?))
        .map_err(|e| format!("cannot size {:?} v{version}: {e}", R::KEY))?;
    let size_prefix = i32::try_from(size).map_err(|_| format!("{:?} request of {size} bytes is too large", R::KEY))?;
    let mut out = BytesMut::with_capacity(4 + size);
    out.put_i32(size_prefix);
    header
        .encode(&mut out, header_version)
        .and_then(|()| request.encode(&mut out, version))
        .map_err(|e| format!("cannot encode {:?} v{version}: {e}", R::KEY))?;
    debug_assert_eq!(out.len(), 4 + size, "compute_size disagrees with encode");
    Ok(out.freeze())
}

/// Decodes a response frame (without its size prefix) for a request sent at
/// `version`.
///
/// The body's shape is checked before `kafka-protocol` sees it (see
/// `wire::shape`). Bytes left over after the body are logged and ignored,
/// as the Java client and librdkafka do.
pub(crate) fn decode_response<R: ApiRequest>(mut frame: Bytes, version: i16) -> Result<R::Response, String> {
    let header_version = <R::Response as HeaderVersion>::header_version(version);
    ResponseHeader::decode(&mut frame, header_version).map_err(|e| format!("bad response header: {e}"))?;
    decode_body::<R>(frame, version)
}

/// Decodes a response body (the bytes after the response header).
pub(crate) fn decode_body<R: ApiRequest>(mut body: Bytes, version: i16) -> Result<R::Response, String> {
    let shape = R::response_shape().0;
    shape::check(shape, version, &body).map_err(|e| format!("{:?} v{version} response: {e}", R::KEY))?;
    let response =
        R::Response::decode(&mut body, version).map_err(|e| format!("{:?} v{version} response: {e}", R::KEY))?;
    if body.has_remaining() {
        // Java and librdkafka ignore bytes after the body, and brokers rely
        // on it: librdkafka's mock appends a 0x00 to Metadata v12 answers.
        // Everything before them decoded, so they are reported, not fatal.
        tracing::debug!(target: "rill::protocol", api = ?R::KEY, version, bytes = body.remaining(), "bytes after the response body ignored");
    }
    Ok(response)
}

/// Why the byte stream from a broker cannot be framed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("frame of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: u32, max: usize },
    #[error("frame of {0} bytes is too short to hold a correlation id")]
    TooShort(i32),
    /// A TLS record header where a frame size belongs.
    #[error("the broker answered with a TLS record: it is a TLS listener")]
    TlsRecord,
}

/// Cuts response frames off a byte stream.
///
/// The size prefix is checked against the limit before any buffer of that
/// size is reserved, so a corrupt or hostile prefix costs nothing.
#[derive(Debug)]
pub(crate) struct FrameReader {
    buffer: BytesMut,
    max_frame: usize,
}

/// How much to ask the socket for when no frame size is known yet.
const READ_CHUNK: usize = 64 * 1024;

impl FrameReader {
    pub(crate) fn new(max_frame: usize) -> Self {
        FrameReader { buffer: BytesMut::with_capacity(READ_CHUNK), max_frame }
    }

    /// The buffer to read socket bytes into, with room reserved: the rest of
    /// the frame being received when its size is known and valid, else a
    /// chunk.
    pub(crate) fn read_buffer(&mut self) -> &mut BytesMut {
        let wanted = match self.declared_size() {
            Some(size) if (size as usize) <= self.max_frame => (4 + size as usize).saturating_sub(self.buffer.len()),
            _ => READ_CHUNK,
        };
        self.buffer.reserve(wanted.max(READ_CHUNK));
        &mut self.buffer
    }

    /// Appends bytes (for callers that do not read from a socket).
    #[cfg(test)]
    pub(crate) fn extend(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    fn declared_size(&self) -> Option<u32> {
        let prefix: [u8; 4] = self.buffer.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(prefix))
    }

    /// The next complete frame, without its size prefix; `None` until one
    /// has fully arrived.
    pub(crate) fn next_frame(&mut self) -> Result<Option<Bytes>, FrameError> {
        let Some(size) = self.declared_size() else {
            return Ok(None);
        };
        // A negative i32 reads as a u32 above i32::MAX: too large either way.
        if size as usize > self.max_frame || size > i32::MAX as u32 {
            if starts_a_tls_record(&size.to_be_bytes()) {
                return Err(FrameError::TlsRecord);
            }
            return Err(FrameError::TooLarge { size, max: self.max_frame });
        }
        if size < 4 {
            return Err(FrameError::TooShort(size as i32));
        }
        if self.buffer.len() < 4 + size as usize {
            return Ok(None);
        }
        self.buffer.advance(4);
        Ok(Some(self.buffer.split_to(size as usize).freeze()))
    }

    /// Bytes received but not yet returned as frames.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buffer.len()
    }
}

/// Whether `bytes` begin an alert (0x15) or handshake (0x16) record of TLS
/// 1.0 to 1.3: what a TLS server sends first, and never the start of a
/// Kafka frame (its size would be over 350 MB).
pub(crate) fn starts_a_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, minor, ..] if *minor <= 4)
}

/// The correlation id at the start of every response header version.
pub(crate) fn correlation_id(frame: &[u8]) -> i32 {
    let id: [u8; 4] = frame[..4].try_into().expect("FrameReader yields frames of at least 4 bytes");
    i32::from_be_bytes(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{
        ApiVersionsRequest, CreateTopicsRequest, DeleteTopicsRequest, FetchRequest, FindCoordinatorRequest,
        HeartbeatRequest, InitProducerIdRequest, JoinGroupRequest, LeaveGroupRequest, ListOffsetsRequest,
        MetadataRequest, OffsetCommitRequest, OffsetFetchRequest, ProduceRequest, SyncGroupRequest,
    };
    use proptest::prelude::*;

    #[test]
    fn api_versions_v3_frame_matches_the_reference_bytes() {
        // The Java-compatible encoding (cross-checked against kafka-python in
        // KAFKA-PROTOCOL.md §2.2).
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("kp-guide"))
            .with_client_software_version(StrBytes::from_static_str("0.1.0"));
        let frame = encode_request(&request, 3, 1, &StrBytes::from_static_str("kp-guide")).unwrap();
        let expected = "00000023001200030000000100086b702d677569646500096b702d67756964650\
                        6302e312e3000";
        let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn frames_split_at_any_boundary() {
        let mut stream = Vec::new();
        for (i, len) in [4usize, 10, 300].iter().enumerate() {
            stream.extend_from_slice(&(*len as u32).to_be_bytes());
            stream.extend(std::iter::repeat_n(i as u8, *len));
        }
        for chunk in 1..stream.len() {
            let mut reader = FrameReader::new(1024);
            let mut frames = Vec::new();
            for piece in stream.chunks(chunk) {
                reader.extend(piece);
                while let Some(frame) = reader.next_frame().unwrap() {
                    frames.push(frame);
                }
            }
            let lengths: Vec<usize> = frames.iter().map(|f| f.len()).collect();
            assert_eq!(lengths, [4, 10, 300], "chunk size {chunk}");
            assert_eq!(reader.buffered(), 0);
        }
    }

    #[test]
    fn oversized_prefix_is_rejected_without_reserving_it() {
        let mut reader = FrameReader::new(100 * 1024 * 1024);
        reader.extend(&0x8000_0000u32.to_be_bytes());
        assert_eq!(reader.next_frame(), Err(FrameError::TooLarge { size: 0x8000_0000, max: 100 * 1024 * 1024 }));
        // The read buffer stays a chunk, not 2 GiB.
        assert!(reader.read_buffer().capacity() < 1024 * 1024);

        let mut reader = FrameReader::new(1000);
        reader.extend(&1001u32.to_be_bytes());
        assert!(matches!(reader.next_frame(), Err(FrameError::TooLarge { size: 1001, .. })));
        let mut reader = FrameReader::new(1000);
        reader.extend(&3u32.to_be_bytes());
        assert_eq!(reader.next_frame(), Err(FrameError::TooShort(3)));

        // A TLS alert where a size belongs: a TLS listener.
        let mut reader = FrameReader::new(100 * 1024 * 1024);
        reader.extend(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]);
        assert_eq!(reader.next_frame(), Err(FrameError::TlsRecord));
    }

    #[test]
    fn trailing_bytes_after_a_body_are_ignored() {
        let mut frame = BytesMut::new();
        frame.put_i32(7); // correlation id, header v0
        frame.put_i32(0); // throttle
        frame.put_i32(0); // no brokers
        frame.put_i16(-1); // cluster id
        frame.put_i32(1); // controller
        frame.put_i32(0); // no topics
        frame.put_u8(0xff); // junk
        let response = decode_response::<MetadataRequest>(frame.freeze(), 3).unwrap();
        assert_eq!(response.controller_id.0, 1);
    }

    /// Decodes `frame` as the answer to every request type this client
    /// sends, at every version it speaks.
    fn decode_as_everything(frame: &Bytes) {
        fn all_versions<R: ApiRequest>(frame: &Bytes) {
            for version in R::SUPPORTED.min..=R::SUPPORTED.max {
                let _ = decode_response::<R>(frame.clone(), version);
            }
        }
        all_versions::<ApiVersionsRequest>(frame);
        all_versions::<MetadataRequest>(frame);
        all_versions::<CreateTopicsRequest>(frame);
        all_versions::<DeleteTopicsRequest>(frame);
        all_versions::<ListOffsetsRequest>(frame);
        all_versions::<ProduceRequest>(frame);
        all_versions::<InitProducerIdRequest>(frame);
        all_versions::<FetchRequest>(frame);
        all_versions::<FindCoordinatorRequest>(frame);
        all_versions::<JoinGroupRequest>(frame);
        all_versions::<SyncGroupRequest>(frame);
        all_versions::<HeartbeatRequest>(frame);
        all_versions::<LeaveGroupRequest>(frame);
        all_versions::<OffsetCommitRequest>(frame);
        all_versions::<OffsetFetchRequest>(frame);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The whole client-side decode path, fed arbitrary bytes: framing,
        /// then response header and body for every response type and
        /// version. Errors are fine; panics and aborts are not.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 4usize..2048) {
            let mut reader = FrameReader::new(max);
            reader.extend(&bytes);
            while let Ok(Some(frame)) = reader.next_frame() {
                prop_assert!(frame.len() >= 4 && frame.len() <= max);
                decode_as_everything(&frame);
            }
        }

        /// Same, with a valid size prefix in front, so that every input
        /// reaches the body decoders; and bytes that start like a real
        /// answer (a small count where arrays begin) to get deeper.
        #[test]
        fn arbitrary_bodies_never_panic(
            body in proptest::collection::vec(any::<u8>(), 4..512),
            prefix in proptest::collection::vec(0u8..4, 0..24),
        ) {
            let mut joined = prefix;
            joined.extend_from_slice(&body);
            let mut reader = FrameReader::new(4096);
            reader.extend(&(joined.len() as u32).to_be_bytes());
            reader.extend(&joined);
            let frame = reader.next_frame().unwrap().unwrap();
            decode_as_everything(&frame);
        }
    }
}
