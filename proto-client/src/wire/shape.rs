//! A walk over a response's wire shape, run before `kafka-protocol` decodes
//! it, so that no count read off the wire reaches an allocation unchecked.
//!
//! `kafka-protocol` 0.18 turns every array count into
//! `Vec::with_capacity(count)` before it reads a single element. A broker
//! that sends `count = 2^31` in a tiny frame makes that a request for
//! hundreds of gigabytes, and a failed allocation aborts the process: no
//! error, no unwinding. The walk below visits every field the decoder will
//! visit, in the same order, and rejects a count larger than the bytes left
//! (every element takes at least one byte). A frame the walk accepts decodes
//! with allocations bounded by its real content.
//!
//! The shapes themselves are generated from the crate's decoders by
//! `scripts/gen-shapes.py` into `shapes.rs`; the property test at the end
//! of this file checks, for every response type and version we use, that
//! bytes laid out by the shape decode with the crate and leave nothing over.

/// A primitive field.
#[allow(dead_code, reason = "every wire primitive; the responses decoded so far use some")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Prim {
    Int8,
    Int16,
    Int32,
    Int64,
    UInt16,
    UInt32,
    Float64,
    Bool,
    Uuid,
    /// A string, nullable or not; compact in flexible versions.
    Str,
    /// A byte string, nullable or not; compact in flexible versions.
    Bytes,
}

/// The element type of an array.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Elem {
    Prim(Prim),
    Struct(&'static StructShape),
}

/// A field's kind.
#[allow(dead_code, reason = "nested non-array structs appear in responses not decoded yet")]
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    Prim(Prim),
    Array(Elem),
    Struct(&'static StructShape),
    /// A nullable struct: an `i8` (1: present), then the struct.
    OptionStruct(&'static StructShape),
}

/// A field present in versions `versions.0..=versions.1`.
#[derive(Debug)]
pub(crate) struct Field {
    pub(crate) name: &'static str,
    pub(crate) versions: (i16, i16),
    pub(crate) kind: Kind,
}

/// A tagged field the decoder knows by its tag. Outside `versions` the
/// decoder rejects the tag.
#[derive(Debug)]
pub(crate) struct Tagged {
    pub(crate) tag: u32,
    pub(crate) name: &'static str,
    pub(crate) versions: (i16, i16),
    pub(crate) kind: Kind,
}

/// One message struct: its fields in wire order and its known tags.
#[derive(Debug)]
pub(crate) struct StructShape {
    pub(crate) name: &'static str,
    pub(crate) versions: (i16, i16),
    pub(crate) flexible_since: i16,
    pub(crate) fields: &'static [Field],
    pub(crate) tagged: &'static [Tagged],
}

/// Why a frame does not fit its shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShapeError {
    pub(crate) path: String,
    pub(crate) problem: &'static str,
}

impl std::fmt::Display for ShapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}", self.problem, self.path)
    }
}

type Walk = Result<(), &'static str>;

/// Checks that `body` is a `shape` at `version`, as far as counts and
/// lengths go. On failure says which field broke.
pub(crate) fn check(shape: &'static StructShape, version: i16, body: &[u8]) -> Result<(), ShapeError> {
    let mut cursor = Cursor { bytes: body, path: Vec::new() };
    match cursor.walk_struct(shape, version) {
        Ok(()) => Ok(()),
        Err(problem) => Err(ShapeError { path: cursor.path.join("."), problem }),
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    /// Field names from the root to where the walk is; kept on failure.
    path: Vec<&'static str>,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Walk {
        if n > self.bytes.len() {
            return Err("length beyond the end of the frame");
        }
        self.bytes = &self.bytes[n..];
        Ok(())
    }

    fn read<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let Some((head, rest)) = self.bytes.split_first_chunk::<N>() else {
            return Err("frame ends inside a field");
        };
        self.bytes = rest;
        Ok(*head)
    }

    /// The crate's unsigned varint: at most five bytes, extra bits dropped.
    fn varint(&mut self) -> Result<u32, &'static str> {
        let mut value = 0u32;
        for i in 0..5 {
            let [b] = self.read::<1>()?;
            value |= u32::from(b & 0x7f).wrapping_shl(i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    /// A count or length; `None` means null.
    fn length(&mut self, flexible: bool, wide: bool) -> Result<Option<usize>, &'static str> {
        if flexible {
            return Ok(match self.varint()? {
                0 => None,
                n => Some(n as usize - 1),
            });
        }
        let n =
            if wide { i32::from_be_bytes(self.read::<4>()?) } else { i32::from(i16::from_be_bytes(self.read::<2>()?)) };
        match n {
            -1 => Ok(None),
            n if n < 0 => Err("negative length"),
            n => Ok(Some(n as usize)),
        }
    }

    fn walk_prim(&mut self, prim: Prim, flexible: bool) -> Walk {
        match prim {
            Prim::Int8 | Prim::Bool => self.take(1),
            Prim::Int16 | Prim::UInt16 => self.take(2),
            Prim::Int32 | Prim::UInt32 => self.take(4),
            Prim::Int64 | Prim::Float64 => self.take(8),
            Prim::Uuid => self.take(16),
            Prim::Str => match self.length(flexible, false)? {
                Some(n) => self.take(n),
                None => Ok(()),
            },
            Prim::Bytes => match self.length(flexible, true)? {
                Some(n) => self.take(n),
                None => Ok(()),
            },
        }
    }

    fn walk_kind(&mut self, kind: Kind, version: i16, flexible: bool) -> Walk {
        match kind {
            Kind::Prim(prim) => self.walk_prim(prim, flexible),
            Kind::Struct(shape) => self.walk_struct(shape, version),
            Kind::OptionStruct(shape) => {
                if self.read::<1>()?[0] == 1 {
                    self.walk_struct(shape, version)?;
                }
                Ok(())
            }
            Kind::Array(elem) => {
                let Some(count) = self.length(flexible, true)? else {
                    return Ok(());
                };
                // The guard this module exists for: the decoder allocates
                // `count` elements before reading one.
                if count > self.bytes.len() {
                    return Err("array count larger than the bytes left");
                }
                for _ in 0..count {
                    match elem {
                        Elem::Prim(prim) => self.walk_prim(prim, flexible)?,
                        Elem::Struct(shape) => self.walk_struct(shape, version)?,
                    }
                }
                Ok(())
            }
        }
    }

    fn walk_struct(&mut self, shape: &'static StructShape, version: i16) -> Walk {
        if version < shape.versions.0 || version > shape.versions.1 {
            return Err("version not supported by this message type");
        }
        self.path.push(shape.name);
        let flexible = version >= shape.flexible_since;
        for field in shape.fields {
            if version < field.versions.0 || version > field.versions.1 {
                continue;
            }
            self.path.push(field.name);
            self.walk_kind(field.kind, version, flexible)?;
            self.path.pop();
        }
        if flexible {
            let tags = self.varint()?;
            if tags as usize > self.bytes.len() {
                return Err("tagged field count larger than the bytes left");
            }
            for _ in 0..tags {
                let tag = self.varint()?;
                let size = self.varint()? as usize;
                // Like the decoder: a known tag is read from the stream by its
                // type (its size is not consulted), an unknown one is skipped.
                match shape.tagged.iter().find(|t| t.tag == tag) {
                    Some(known) if version < known.versions.0 || version > known.versions.1 => {
                        return Err("tagged field not valid in this version");
                    }
                    Some(known) => {
                        self.path.push(known.name);
                        self.walk_kind(known.kind, version, true)?;
                        self.path.pop();
                    }
                    None => self.take(size)?,
                }
            }
        }
        self.path.pop();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::shapes::*;
    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::{
        AddOffsetsToTxnResponse, AddPartitionsToTxnResponse, ApiVersionsResponse, ConsumerGroupDescribeResponse,
        ConsumerGroupHeartbeatResponse, ConsumerProtocolAssignment, ConsumerProtocolSubscription,
        CreatePartitionsResponse, CreateTopicsResponse, DeleteGroupsResponse, DeleteRecordsResponse,
        DeleteTopicsResponse, DescribeConfigsResponse, DescribeGroupsResponse, EndTxnResponse, FetchResponse,
        FindCoordinatorResponse, HeartbeatResponse, IncrementalAlterConfigsResponse, InitProducerIdResponse,
        JoinGroupResponse, LeaveGroupResponse, ListGroupsResponse, ListOffsetsResponse, MetadataResponse,
        OffsetCommitResponse, OffsetDeleteResponse, OffsetFetchResponse, OffsetForLeaderEpochResponse, ProduceResponse,
        SaslAuthenticateResponse, SaslHandshakeResponse, SyncGroupResponse, TxnOffsetCommitResponse,
    };
    use kafka_protocol::protocol::Decodable;
    use proptest::prelude::*;
    use proptest::test_runner::TestRng;

    /// Lays out random bytes that follow `shape`: arrays of 0..3 elements,
    /// ASCII strings, some nulls, some unknown tagged fields.
    struct Writer<'r> {
        out: BytesMut,
        rng: &'r mut TestRng,
    }

    impl Writer<'_> {
        fn varint(&mut self, mut v: u32) {
            while v >= 0x80 {
                self.out.put_u8((v as u8) | 0x80);
                v >>= 7;
            }
            self.out.put_u8(v as u8);
        }

        fn length(&mut self, n: Option<usize>, flexible: bool, wide: bool) {
            match (flexible, wide, n) {
                (true, _, None) => self.varint(0),
                (true, _, Some(n)) => self.varint(n as u32 + 1),
                (false, true, None) => self.out.put_i32(-1),
                (false, true, Some(n)) => self.out.put_i32(n as i32),
                (false, false, None) => self.out.put_i16(-1),
                (false, false, Some(n)) => self.out.put_i16(n as i16),
            }
        }

        fn prim(&mut self, prim: Prim, flexible: bool) {
            let r = self.rng.next_u64();
            match prim {
                Prim::Int8 => self.out.put_u8(r as u8),
                Prim::Bool => self.out.put_u8((r & 1) as u8),
                Prim::Int16 | Prim::UInt16 => self.out.put_u16(r as u16),
                Prim::Int32 | Prim::UInt32 => self.out.put_u32(r as u32),
                Prim::Int64 | Prim::Float64 => self.out.put_u64(r),
                Prim::Uuid => {
                    self.out.put_u64(r);
                    self.out.put_u64(r.rotate_left(7));
                }
                Prim::Str | Prim::Bytes => {
                    let n = (r % 6) as usize;
                    self.length(Some(n), flexible, prim == Prim::Bytes);
                    for i in 0..n {
                        self.out.put_u8(b'a' + (i as u8 % 26));
                    }
                }
            }
        }

        fn kind(&mut self, kind: Kind, version: i16, flexible: bool) {
            match kind {
                Kind::Prim(prim) => self.prim(prim, flexible),
                Kind::Struct(shape) => self.strukt(shape, version),
                Kind::OptionStruct(shape) => {
                    if self.rng.next_u32().is_multiple_of(2) {
                        self.out.put_i8(-1);
                    } else {
                        self.out.put_i8(1);
                        self.strukt(shape, version);
                    }
                }
                Kind::Array(elem) => {
                    let n = (self.rng.next_u32() % 3) as usize;
                    self.length(Some(n), flexible, true);
                    for _ in 0..n {
                        match elem {
                            Elem::Prim(prim) => self.prim(prim, flexible),
                            Elem::Struct(shape) => self.strukt(shape, version),
                        }
                    }
                }
            }
        }

        fn strukt(&mut self, shape: &'static StructShape, version: i16) {
            let flexible = version >= shape.flexible_since;
            for field in shape.fields {
                if version >= field.versions.0 && version <= field.versions.1 {
                    self.kind(field.kind, version, flexible);
                }
            }
            if flexible {
                let known: Vec<&Tagged> = shape
                    .tagged
                    .iter()
                    .filter(|t| version >= t.versions.0 && version <= t.versions.1)
                    .filter(|_| self.rng.next_u32().is_multiple_of(2))
                    .collect();
                let unknown = self.rng.next_u32() % 2;
                self.varint(known.len() as u32 + unknown);
                for tagged in known {
                    self.varint(tagged.tag);
                    let mut inner = Writer { out: BytesMut::new(), rng: self.rng };
                    inner.kind(tagged.kind, version, true);
                    let inner = inner.out;
                    self.varint(inner.len() as u32);
                    self.out.put_slice(&inner);
                }
                if unknown == 1 {
                    self.varint(10_000);
                    self.varint(3);
                    self.out.put_slice(b"xyz");
                }
            }
        }
    }

    fn layout(shape: &'static StructShape, version: i16, rng: &mut TestRng) -> Bytes {
        let mut writer = Writer { out: BytesMut::new(), rng };
        writer.strukt(shape, version);
        writer.out.freeze()
    }

    fn decodes_fully<T: Decodable>(bytes: &Bytes, version: i16) -> Result<(), String> {
        let mut buf = bytes.clone();
        T::decode(&mut buf, version).map_err(|e| e.to_string())?;
        if !buf.is_empty() {
            return Err(format!("{} bytes left over", buf.len()));
        }
        Ok(())
    }

    type Decoder = fn(&Bytes, i16) -> Result<(), String>;

    /// Every response (and embedded message) shape the client decodes, with
    /// its decoder.
    fn cases() -> Vec<(&'static StructShape, Decoder)> {
        vec![
            (&API_VERSIONS_RESPONSE, decodes_fully::<ApiVersionsResponse>),
            (&METADATA_RESPONSE, decodes_fully::<MetadataResponse>),
            (&CREATE_TOPICS_RESPONSE, decodes_fully::<CreateTopicsResponse>),
            (&DELETE_TOPICS_RESPONSE, decodes_fully::<DeleteTopicsResponse>),
            (&LIST_OFFSETS_RESPONSE, decodes_fully::<ListOffsetsResponse>),
            (&PRODUCE_RESPONSE, decodes_fully::<ProduceResponse>),
            (&INIT_PRODUCER_ID_RESPONSE, decodes_fully::<InitProducerIdResponse>),
            (&FETCH_RESPONSE, decodes_fully::<FetchResponse>),
            (&FIND_COORDINATOR_RESPONSE, decodes_fully::<FindCoordinatorResponse>),
            (&JOIN_GROUP_RESPONSE, decodes_fully::<JoinGroupResponse>),
            (&SYNC_GROUP_RESPONSE, decodes_fully::<SyncGroupResponse>),
            (&HEARTBEAT_RESPONSE, decodes_fully::<HeartbeatResponse>),
            (&LEAVE_GROUP_RESPONSE, decodes_fully::<LeaveGroupResponse>),
            (&OFFSET_COMMIT_RESPONSE, decodes_fully::<OffsetCommitResponse>),
            (&OFFSET_FETCH_RESPONSE, decodes_fully::<OffsetFetchResponse>),
            (&OFFSET_FOR_LEADER_EPOCH_RESPONSE, decodes_fully::<OffsetForLeaderEpochResponse>),
            (&SASL_HANDSHAKE_RESPONSE, decodes_fully::<SaslHandshakeResponse>),
            (&SASL_AUTHENTICATE_RESPONSE, decodes_fully::<SaslAuthenticateResponse>),
            (&LIST_GROUPS_RESPONSE, decodes_fully::<ListGroupsResponse>),
            (&DESCRIBE_GROUPS_RESPONSE, decodes_fully::<DescribeGroupsResponse>),
            (&DELETE_GROUPS_RESPONSE, decodes_fully::<DeleteGroupsResponse>),
            (&OFFSET_DELETE_RESPONSE, decodes_fully::<OffsetDeleteResponse>),
            (&DESCRIBE_CONFIGS_RESPONSE, decodes_fully::<DescribeConfigsResponse>),
            (&INCREMENTAL_ALTER_CONFIGS_RESPONSE, decodes_fully::<IncrementalAlterConfigsResponse>),
            (&CREATE_PARTITIONS_RESPONSE, decodes_fully::<CreatePartitionsResponse>),
            (&DELETE_RECORDS_RESPONSE, decodes_fully::<DeleteRecordsResponse>),
            (&CONSUMER_GROUP_HEARTBEAT_RESPONSE, decodes_fully::<ConsumerGroupHeartbeatResponse>),
            (&CONSUMER_GROUP_DESCRIBE_RESPONSE, decodes_fully::<ConsumerGroupDescribeResponse>),
            (&ADD_PARTITIONS_TO_TXN_RESPONSE, decodes_fully::<AddPartitionsToTxnResponse>),
            (&ADD_OFFSETS_TO_TXN_RESPONSE, decodes_fully::<AddOffsetsToTxnResponse>),
            (&END_TXN_RESPONSE, decodes_fully::<EndTxnResponse>),
            (&TXN_OFFSET_COMMIT_RESPONSE, decodes_fully::<TxnOffsetCommitResponse>),
            (&CONSUMER_PROTOCOL_SUBSCRIPTION, decodes_fully::<ConsumerProtocolSubscription>),
            (&CONSUMER_PROTOCOL_ASSIGNMENT, decodes_fully::<ConsumerProtocolAssignment>),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// What the shape lays out, the crate decodes, to the last byte; and
        /// the walk accepts it. Fails when a shape drifts from the crate.
        #[test]
        fn shapes_match_the_crate_decoders(seed in any::<[u8; 32]>()) {
            let mut rng = TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed);
            for (shape, decode) in cases() {
                for version in shape.versions.0..=shape.versions.1 {
                    let bytes = layout(shape, version, &mut rng);
                    prop_assert_eq!(check(shape, version, &bytes), Ok(()), "{} v{}", shape.name, version);
                    if let Err(e) = decode(&bytes, version) {
                        prop_assert!(false, "{} v{}: crate cannot decode the shape's layout: {}", shape.name, version, e);
                    }
                }
            }
        }

        /// Arbitrary bytes never make the walk panic, and whatever it
        /// accepts is safe to hand to the decoder.
        #[test]
        fn walk_survives_garbage(body in proptest::collection::vec(any::<u8>(), 0..256), pick in 0usize..17, version in 0i16..14) {
            let (shape, decode) = cases()[pick];
            let version = version.clamp(shape.versions.0, shape.versions.1);
            if check(shape, version, &body).is_ok() {
                // Bounded by the walk, so this cannot ask for a huge allocation.
                let _ = decode(&Bytes::from(body), version);
            }
        }
    }

    #[test]
    fn huge_array_count_is_rejected_before_decoding() {
        // MetadataResponse v12: throttle, then a compact broker array whose
        // count claims 2^28 elements in a 10-byte body.
        let mut body = BytesMut::new();
        body.put_i32(0);
        body.put_slice(&[0x80, 0x80, 0x80, 0x80, 0x01]);
        body.put_u8(0);
        let error = check(&METADATA_RESPONSE, 12, &body).unwrap_err();
        assert_eq!(error.problem, "array count larger than the bytes left");
        assert_eq!(error.path, "MetadataResponse.brokers");
    }

    #[test]
    fn every_struct_element_takes_at_least_one_byte() {
        // The count guard relies on it: an element of zero bytes would let
        // `count` elements fit in no bytes at all.
        fn min_size(shape: &StructShape, version: i16) -> usize {
            let flexible = usize::from(version >= shape.flexible_since);
            flexible + shape.fields.iter().filter(|f| version >= f.versions.0 && version <= f.versions.1).count()
        }
        for (shape, _) in cases() {
            for version in shape.versions.0..=shape.versions.1 {
                let mut stack = vec![shape];
                while let Some(s) = stack.pop() {
                    assert!(min_size(s, version) > 0, "{} v{version} can be empty", s.name);
                    let present = s.fields.iter().filter(|f| version >= f.versions.0 && version <= f.versions.1);
                    let tagged = s.tagged.iter().filter(|_| version >= s.flexible_since);
                    for kind in present.map(|f| f.kind).chain(tagged.map(|t| t.kind)) {
                        match kind {
                            Kind::Struct(inner) | Kind::OptionStruct(inner) | Kind::Array(Elem::Struct(inner)) => {
                                stack.push(inner)
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}
