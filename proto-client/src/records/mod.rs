//! Record batches (magic v2): encoding for the producer, decoding for the
//! consumer, and the compression codecs. Pure: no IO, no clock.
//!
//! `kafka-protocol`'s record encoder and decoder are not used: the encoder
//! splits records into several batches on its own (Kafka takes one batch
//! per partition per request), both lose duplicate header keys, and the
//! decoder fails a whole partition on a truncated trailing batch and
//! reserves memory for a record count read off the wire.

pub(crate) mod batch;
pub mod compression;
pub mod decode;
pub(crate) mod varint;

pub use batch::Header;
pub use compression::Compression;
pub use decode::{BatchHeader, Batches, DecodedBatch, DecodedRecord, RecordError, RecordHeader, decode_batch};
