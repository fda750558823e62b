//! The record-batch codecs, all pure Rust: gzip (flate2 on zlib-rs), snappy
//! with the xerial framing the Java client writes (`snap`), LZ4 frames with
//! 64 KiB independent blocks and no checksums as Java writes them
//! (`lz4_flex`), and zstd (`ruzstd`, about zstd level 1).
//!
//! Decompression is bounded: a batch may not expand past a caller-given
//! limit, so a small hostile batch cannot make the client allocate
//! gigabytes.

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;

/// A record-batch compression codec (attribute bits 0–2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// No compression.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy (xerial framing on produce; raw or xerial on consume).
    Snappy,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard (needs Produce v7+).
    Zstd,
}

impl Compression {
    /// The attribute bits.
    pub fn code(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// The codec of attribute bits, if known.
    pub fn from_code(code: i16) -> Option<Self> {
        Some(match code & 0x07 {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            _ => return None,
        })
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "none" | "uncompressed" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "snappy" => Ok(Compression::Snappy),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            _ => Err("expected none, gzip, snappy, lz4 or zstd".into()),
        }
    }
}

/// What went wrong compressing or decompressing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The data does not decode with the codec.
    #[error("{codec} data is corrupt: {reason}")]
    Corrupt {
        /// The codec.
        codec: Compression,
        /// What the decoder said.
        reason: String,
    },
    /// The data expands past the allowed size.
    #[error("{codec} data expands past {limit} bytes")]
    TooLarge {
        /// The codec.
        codec: Compression,
        /// The limit.
        limit: usize,
    },
}

/// The xerial snappy stream header the Java client writes.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_BLOCK: usize = 32 * 1024;

/// Appends `input` compressed with `codec` to `out`. `level` applies to
/// gzip (1–9; `None` is 6, as Java and librdkafka default).
pub fn compress(codec: Compression, level: Option<u32>, input: &[u8], out: &mut Vec<u8>) {
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            let level = flate2::Compression::new(level.unwrap_or(6).clamp(1, 9));
            let mut encoder = flate2::write::GzEncoder::new(out, level);
            encoder.write_all(input).expect("writing to a Vec cannot fail");
            encoder.finish().expect("writing to a Vec cannot fail");
        }
        Compression::Snappy => {
            out.extend_from_slice(&XERIAL_MAGIC);
            out.extend_from_slice(&1i32.to_be_bytes()); // version
            out.extend_from_slice(&1i32.to_be_bytes()); // compatible version
            let mut encoder = snap::raw::Encoder::new();
            for block in input.chunks(XERIAL_BLOCK) {
                let start = out.len();
                out.extend_from_slice(&[0; 4]);
                out.resize(start + 4 + snap::raw::max_compress_len(block.len()), 0);
                let written =
                    encoder.compress(block, &mut out[start + 4..]).expect("the output is sized by max_compress_len");
                out.truncate(start + 4 + written);
                out[start..start + 4].copy_from_slice(&(written as i32).to_be_bytes());
            }
        }
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, out);
            encoder.write_all(input).expect("writing to a Vec cannot fail");
            encoder.finish().expect("writing to a Vec cannot fail");
        }
        Compression::Zstd => {
            ruzstd::encoding::compress(input, out, ruzstd::encoding::CompressionLevel::Fastest);
        }
    }
}

/// Decompresses `input`, refusing to produce more than `limit` bytes.
pub fn decompress(codec: Compression, input: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let corrupt = |reason: &dyn fmt::Display| CodecError::Corrupt { codec, reason: reason.to_string() };
    match codec {
        Compression::None => {
            if input.len() > limit {
                return Err(CodecError::TooLarge { codec, limit });
            }
            Ok(input.to_vec())
        }
        Compression::Gzip => read_bounded(codec, flate2::read::GzDecoder::new(input), input.len(), limit),
        Compression::Lz4 => read_bounded(codec, lz4_flex::frame::FrameDecoder::new(input), input.len(), limit),
        Compression::Zstd => {
            let decoder = ruzstd::decoding::StreamingDecoder::new(input).map_err(|e| corrupt(&e))?;
            read_bounded(codec, decoder, input.len(), limit)
        }
        Compression::Snappy => {
            if input.len() >= 16 && input[..8] == XERIAL_MAGIC {
                let mut out = Vec::new();
                let mut rest = &input[16..];
                while !rest.is_empty() {
                    let Some((length, tail)) = rest.split_first_chunk::<4>() else {
                        return Err(corrupt(&"truncated xerial block length"));
                    };
                    let length = i32::from_be_bytes(*length);
                    let block = usize::try_from(length)
                        .ok()
                        .and_then(|n| tail.get(..n))
                        .ok_or_else(|| corrupt(&format!("xerial block of {length} bytes runs past the end")))?;
                    snappy_block(block, limit, &mut out).map_err(|e| e.with(codec))?;
                    rest = &tail[block.len()..];
                }
                trim(&mut out);
                Ok(out)
            } else {
                let mut out = Vec::new();
                snappy_block(input, limit, &mut out).map_err(|e| e.with(codec))?;
                Ok(out)
            }
        }
    }
}

enum BlockError {
    Corrupt(String),
    TooLarge(usize),
}

impl BlockError {
    fn with(self, codec: Compression) -> CodecError {
        match self {
            BlockError::Corrupt(reason) => CodecError::Corrupt { codec, reason },
            BlockError::TooLarge(limit) => CodecError::TooLarge { codec, limit },
        }
    }
}

/// Appends one raw snappy block, its declared length checked first.
fn snappy_block(block: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), BlockError> {
    let length = snap::raw::decompress_len(block).map_err(|e| BlockError::Corrupt(e.to_string()))?;
    if out.len() + length > limit {
        return Err(BlockError::TooLarge(limit));
    }
    let start = out.len();
    out.resize(start + length, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| BlockError::Corrupt(e.to_string()))?;
    out.truncate(start + written);
    Ok(())
}

/// Reads a decoder to its end, at most `limit` bytes. The output starts
/// with room for four times the compressed size, and is trimmed to what
/// it holds: the fetched records are slices of it and keep all of it
/// alive until the last is dropped, so growth's slack (up to half of it)
/// would be held, uncounted, for as long as the records are.
fn read_bounded(codec: Compression, reader: impl Read, compressed: usize, limit: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(compressed.saturating_mul(4).min(limit));
    let read = reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| CodecError::Corrupt { codec, reason: e.to_string() })?;
    if read > limit {
        return Err(CodecError::TooLarge { codec, limit });
    }
    trim(&mut out);
    Ok(out)
}

/// Gives back a buffer's spare room when it is more than an eighth.
fn trim(out: &mut Vec<u8>) {
    if out.capacity() - out.len() > out.len() / 8 {
        out.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| b"{\"user\":\"rill\",\"n\":"[i % 19] ^ (i / 97) as u8).collect()
    }

    #[test]
    fn every_codec_round_trips_large_inputs() {
        for codec in ALL {
            for len in [0, 1, 100, 70_000, 300_000] {
                let input = sample(len);
                let mut packed = Vec::new();
                compress(codec, None, &input, &mut packed);
                assert_eq!(decompress(codec, &packed, len).unwrap(), input, "{codec} {len}");
                if len > 1000 && codec != Compression::None {
                    assert!(packed.len() < len / 2, "{codec} barely compressed: {} of {len}", packed.len());
                }
            }
        }
    }

    #[test]
    fn the_crate_decodes_what_we_compress() {
        // kafka-protocol's decoders (flate2, snap with xerial detection)
        // stand in for the Java ones here; librdkafka interop is tested
        // against a broker.
        use kafka_protocol::compression::{Decompressor, Gzip, Snappy};
        let input = sample(100_000);
        for codec in [Compression::Gzip, Compression::Snappy] {
            let mut packed = Vec::new();
            compress(codec, None, &input, &mut packed);
            let mut buf = bytes::Bytes::from(packed);
            let out = match codec {
                Compression::Gzip => Gzip::decompress(&mut buf, |b| Ok(b.to_vec())),
                _ => Snappy::decompress(&mut buf, |b| Ok(b.to_vec())),
            }
            .unwrap();
            assert_eq!(out, input, "{codec}");
        }
    }

    #[test]
    fn decompression_stops_at_the_limit() {
        let input = vec![0u8; 1 << 20];
        for codec in ALL {
            let mut packed = Vec::new();
            compress(codec, None, &input, &mut packed);
            assert_eq!(decompress(codec, &packed, 1000), Err(CodecError::TooLarge { codec, limit: 1000 }), "{codec}");
        }
    }

    #[test]
    fn raw_snappy_without_xerial_framing_is_read() {
        // librdkafka writes raw snappy blocks.
        let input = sample(5000);
        let packed = snap::raw::Encoder::new().compress_vec(&input).unwrap();
        assert_eq!(decompress(Compression::Snappy, &packed, 10_000).unwrap(), input);
    }

    #[test]
    fn names_parse() {
        for codec in ALL {
            assert_eq!(codec.to_string().parse::<Compression>(), Ok(codec));
            assert_eq!(Compression::from_code(codec.code()), Some(codec));
        }
        assert!("brotli".parse::<Compression>().is_err());
        assert_eq!(Compression::from_code(5), None);
    }

    proptest! {
        #[test]
        fn garbage_is_an_error_never_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), pick in 0usize..5) {
            let _ = decompress(ALL[pick], &bytes, 4096);
        }
    }
}
