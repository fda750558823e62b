//! See `rill_client::fuzz::record_batches`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rill_client::fuzz::record_batches(data));
