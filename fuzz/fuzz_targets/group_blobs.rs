//! See `rill_client::fuzz::group_blobs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rill_client::fuzz::group_blobs(data));
