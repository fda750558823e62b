//! Helpers shared by integration test files.

#![allow(dead_code, unreachable_pub, reason = "each test file uses a different part")]

pub mod fake_broker;
pub mod read_back;

/// Shows the client's logs in a test's output when `RUST_LOG` is set
/// (for instance `RUST_LOG=rill::cgrp=debug`).
pub fn logs() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}
