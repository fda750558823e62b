//! Entry points for the coverage-guided fuzz targets in `fuzz/` (cargo-fuzz
//! and libFuzzer, on stable Rust with `--sanitizer none`): every decoder
//! that reads bytes from a broker or from another group member. Each takes
//! arbitrary bytes and must return without panicking, aborting or
//! allocating without bound; what the decoders say is ignored.
//!
//! The targets are compiled with the crate as usual, so lints and tests
//! keep them honest, and the unit test below runs every file of the corpus
//! and every past crash (`fuzz/corpus/*`, `fuzz/regressions/*`) through
//! them: the normal test suite replays them all.

use std::sync::Arc;

use bytes::Bytes;

use crate::consumer::fetched::{Aborted, Rules, decode_partition};
use crate::consumer::group::protocol::{decode_assignment, decode_subscription};
use crate::records::{Batches, decode_batch};
use crate::wire::frame::FrameReader;
use crate::wire::{CLIENT_APIS, decode_response_of};

/// The largest frame the targets accept: small, so that the fuzzer spends
/// its time in decoders rather than in buffers.
const MAX_FRAME: usize = 256 * 1024;

/// A byte stream from a broker's socket: the frame reader cuts frames (in
/// pieces of a size the input picks, as reads from a socket come); the
/// first two bytes of each frame pick an API this client speaks and one of
/// its versions, and the rest is decoded as that response: header, shape
/// check, then `kafka-protocol`.
pub fn responses(data: &[u8]) {
    let Some((&step, data)) = data.split_first() else { return };
    let step = usize::from(step).max(1);
    let mut reader = FrameReader::new(MAX_FRAME);
    for piece in data.chunks(step) {
        reader.read_buffer().extend_from_slice(piece);
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => response(frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn response(frame: Bytes) {
    let (Some(&api), Some(&version)) = (frame.first(), frame.get(1)) else { return };
    let (key, range) = CLIENT_APIS[usize::from(api) % CLIENT_APIS.len()];
    let version = range.min + i16::from(version) % (range.max - range.min + 1);
    let decoded = decode_response_of(key, frame.slice(2..), version);
    assert!(decoded.is_some(), "every API of CLIENT_APIS decodes: {key:?}");
}

/// The `records` of a fetched partition: every batch on its own, then the
/// whole as the consumer reads it (from an offset and with an isolation
/// level the first byte picks, aborted transactions from the next eight).
pub fn record_batches(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else { return };
    let (aborted_at, data) = match data.split_first_chunk::<8>() {
        Some((aborted, rest)) => (i64::from_be_bytes(*aborted), rest),
        None => (0, data),
    };
    let records = Bytes::copy_from_slice(data);
    for batch in Batches::new(records.clone()).flatten() {
        let _ = decode_batch(batch, MAX_FRAME);
    }
    let aborted = [Aborted { producer_id: i64::from(flags >> 4), first_offset: aborted_at }];
    let topic: Arc<str> = Arc::from("fuzz");
    let fetch_offset = i64::from(flags & 0x07);
    let _ = decode_partition(
        &topic,
        0,
        fetch_offset,
        records,
        &aborted,
        Rules { read_committed: flags & 0x08 != 0, max_uncompressed: MAX_FRAME, partition_max: MAX_FRAME },
        &mut { usize::MAX },
    );
}

/// A group member's JoinGroup metadata and a leader's assignment, as
/// another member (of any client) may send them.
pub fn group_blobs(data: &[u8]) {
    let _ = decode_subscription(data);
    let _ = decode_assignment(data);
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Every file under `fuzz/{corpus,regressions}/{target}`.
    fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut out = Vec::new();
        for kind in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
        out
    }

    #[test]
    fn the_corpus_and_every_past_crash_decode_without_panicking() {
        type Target = fn(&[u8]);
        let targets: [(&str, Target); 3] =
            [("responses", responses), ("record_batches", record_batches), ("group_blobs", group_blobs)];
        for (target, run) in targets {
            let inputs = inputs(target);
            assert!(inputs.len() >= 3, "fuzz/corpus/{target} holds its seeds");
            for (name, data) in inputs {
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{name} panics in {target}");
            }
        }
    }
}
