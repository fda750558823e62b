//! See `rill_client::fuzz::responses`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rill_client::fuzz::responses(data));
