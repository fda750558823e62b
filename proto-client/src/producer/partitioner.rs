//! Choosing a partition for a record.
//!
//! - Keyed records: Java's murmur2 (`Utils.murmur2` then `toPositive`, modulo
//!   the partition count) by default, so Rill and Java producers put a key
//!   on the same partition; or librdkafka's `consistent_random` (CRC32 of
//!   the key), for teams migrating from librdkafka's default.
//! - Records without a key: sticky (KIP-480): all go to one partition until
//!   its batch closes, then another partition is picked at random, so that
//!   keyless traffic makes full batches instead of many small ones.
//! - A [`Partitioner`] of the application's own.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Java's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in chunks.by_ref() {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Java's default partitioner picks for a key:
/// `toPositive(murmur2(key)) % partitions`.
pub fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// The partition librdkafka's `consistent` partitioners pick for a key:
/// `crc32(key) % partitions`.
pub fn crc32_partition(key: &[u8], partitions: i32) -> i32 {
    (crc32fast::hash(key) % partitions as u32) as i32
}

/// An application's own partitioner, for keyed records. Records without a
/// key still go through sticky partitioning.
pub trait Partitioner: Send + Sync {
    /// The partition, in `0..partitions`, for a record with this key.
    fn partition(&self, topic: &str, key: &[u8], partitions: i32) -> i32;
}

/// Which partitioner keyed records go through.
#[derive(Clone, Default)]
pub enum PartitionerKind {
    /// Java-compatible murmur2 (the default).
    #[default]
    Murmur2,
    /// librdkafka's `consistent_random`: CRC32 of the key.
    ConsistentRandom,
    /// The application's own.
    Custom(Arc<dyn Partitioner>),
}

impl fmt::Debug for PartitionerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartitionerKind::Murmur2 => "murmur2",
            PartitionerKind::ConsistentRandom => "consistent_random",
            PartitionerKind::Custom(_) => "custom",
        })
    }
}

impl FromStr for PartitionerKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "murmur2" | "murmur2_random" | "default" => Ok(PartitionerKind::Murmur2),
            "consistent_random" | "consistent" => Ok(PartitionerKind::ConsistentRandom),
            _ => Err("expected murmur2 or consistent_random".into()),
        }
    }
}

impl PartitionerKind {
    /// The partition for a keyed record.
    pub(crate) fn keyed(&self, topic: &str, key: &[u8], partitions: i32) -> i32 {
        match self {
            PartitionerKind::Murmur2 => murmur2_partition(key, partitions),
            PartitionerKind::ConsistentRandom => crc32_partition(key, partitions),
            PartitionerKind::Custom(custom) => custom.partition(topic, key, partitions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Kafka's UtilsTest.testMurmur2 and the values other ports check.
        let vectors: [(&[u8], i32); 11] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
            (b"1", -1_993_445_489),
            (b"12", 126_087_238),
            (b"123", -267_702_483),
            (b"1234", -1_614_185_708),
            (b"12345", -1_188_365_604),
        ];
        for (key, expected) in vectors {
            assert_eq!(murmur2(key), expected, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partitions_are_in_range_and_positive() {
        for i in 0..10_000u32 {
            let key = i.to_be_bytes();
            for n in [1, 3, 6, 7, 100] {
                assert!((0..n).contains(&murmur2_partition(&key, n)));
                assert!((0..n).contains(&crc32_partition(&key, n)));
            }
        }
        // toPositive masks the sign bit (it is not abs()).
        assert_eq!(murmur2_partition(b"21", 6), (-973_932_308i32 & 0x7fff_ffff) % 6);
    }

    #[test]
    fn crc32_is_zlib_crc32() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32_partition(b"123456789", 1000), (0xcbf4_3926u32 % 1000) as i32);
    }

    #[test]
    fn names_parse() {
        assert!(matches!("murmur2".parse(), Ok(PartitionerKind::Murmur2)));
        assert!(matches!("consistent_random".parse(), Ok(PartitionerKind::ConsistentRandom)));
        assert!("random".parse::<PartitionerKind>().is_err());
    }
}
