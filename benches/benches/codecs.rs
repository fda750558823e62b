//! Rill's pure-Rust codecs against `kafka-protocol`'s built-in ones (gzip
//! and snappy are Rust there too; lz4 and zstd are the C libraries), on the
//! records of a typical producer batch.
//!
//! `cargo bench -p rill-benches --bench codecs` prints a markdown table:
//! encode and decode speed in MB/s of uncompressed record bytes, and the
//! compressed size. Input: 100 batches' worth of records, 1000 records each
//! (100-byte JSON-like values, short keys), about 110 KB per batch, each
//! compressed on its own as the producer does. Best of 5 passes.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};
use rill_cli::perf::ProduceLoad;
use rill_client::records::Compression;
use rill_client::records::compression::{compress, decompress};

fn batches() -> Vec<Vec<u8>> {
    let load = ProduceLoad::one("", 0, 100, 1000);
    let keys = load.key_set();
    let value = load.value();
    (0..100)
        .map(|b| {
            let mut batch = Vec::with_capacity(120_000);
            for r in 0..1000usize {
                // Roughly a v2 record: length, attributes, deltas, key, value.
                batch.extend_from_slice(&[0xdc, 0x01, 0, (r % 128) as u8, (r / 128) as u8, 0x0e]);
                batch.extend_from_slice(&keys[(b * 1000 + r) % keys.len()]);
                batch.push(0xc8);
                let mut v = value.clone();
                let at = (r * 7) % v.len();
                v[at] ^= r as u8;
                batch.extend_from_slice(&v);
                batch.push(0);
            }
            batch
        })
        .collect()
}

/// Best of five passes over all batches, in MB/s of `input` bytes.
fn best(input_bytes: usize, mut pass: impl FnMut()) -> f64 {
    let mut fastest = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        pass();
        fastest = fastest.min(started.elapsed());
    }
    input_bytes as f64 / fastest.as_secs_f64() / 1e6
}

struct Row {
    codec: Compression,
    implementation: &'static str,
    encode: f64,
    decode: f64,
    ratio: f64,
}

fn ours(codec: Compression, input: &[Vec<u8>], total: usize) -> Row {
    let packed: Vec<Vec<u8>> = input
        .iter()
        .map(|b| {
            let mut out = Vec::new();
            compress(codec, None, b, &mut out);
            out
        })
        .collect();
    let encode = best(total, || {
        for b in input {
            let mut out = Vec::with_capacity(b.len() / 2);
            compress(codec, None, b, &mut out);
            std::hint::black_box(out);
        }
    });
    let decode = best(total, || {
        for p in &packed {
            std::hint::black_box(decompress(codec, p, 1 << 20).unwrap());
        }
    });
    let size: usize = packed.iter().map(Vec::len).sum();
    Row { codec, implementation: "rill (pure Rust)", encode, decode, ratio: size as f64 / total as f64 }
}

fn builtin<C>(codec: Compression, implementation: &'static str, input: &[Vec<u8>], total: usize) -> Row
where
    C: Compressor<BytesMut, BufMut = BytesMut> + Decompressor<Bytes>,
    <C as Decompressor<Bytes>>::Buf: AsRef<[u8]>,
{
    let pack = |b: &Vec<u8>| {
        let mut out = BytesMut::new();
        C::compress(&mut out, |raw: &mut BytesMut| {
            raw.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        out.freeze()
    };
    let packed: Vec<Bytes> = input.iter().map(pack).collect();
    let encode = best(total, || {
        for b in input {
            std::hint::black_box(pack(b));
        }
    });
    let decode = best(total, || {
        for p in &packed {
            let mut p = p.clone();
            std::hint::black_box(C::decompress(&mut p, |out| Ok(out.as_ref().len())).unwrap());
        }
    });
    let size: usize = packed.iter().map(Bytes::len).sum();
    Row { codec, implementation, encode, decode, ratio: size as f64 / total as f64 }
}

fn main() {
    let input = batches();
    let total: usize = input.iter().map(Vec::len).sum();
    let rows = vec![
        ours(Compression::Gzip, &input, total),
        builtin::<Gzip>(Compression::Gzip, "kafka-protocol (flate2)", &input, total),
        ours(Compression::Snappy, &input, total),
        builtin::<Snappy>(Compression::Snappy, "kafka-protocol (snap)", &input, total),
        ours(Compression::Lz4, &input, total),
        builtin::<Lz4>(Compression::Lz4, "kafka-protocol (lz4-sys, C)", &input, total),
        ours(Compression::Zstd, &input, total),
        builtin::<Zstd>(Compression::Zstd, "kafka-protocol (zstd-sys, C)", &input, total),
    ];
    println!();
    println!(
        "Codecs: {} batches of 1000 records, {:.1} MB uncompressed; best of 5 passes.",
        input.len(),
        total as f64 / 1e6
    );
    println!();
    println!("| codec | implementation | encode MB/s | decode MB/s | compressed / raw |");
    println!("|---|---|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.3} |",
            row.codec, row.implementation, row.encode, row.decode, row.ratio
        );
    }
}
