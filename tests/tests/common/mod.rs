//! Helpers shared by integration test files.

#![allow(dead_code, unreachable_pub, reason = "each test file uses a different part")]

pub mod fake_broker;
pub mod read_back;
pub mod secured;

/// Shows the client's logs in a test's output when `RUST_LOG` is set
/// (for instance `RUST_LOG=rill::cgrp=debug`).
pub fn logs() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}

/// An error and its sources, ` / ` between them: what `rill` prints.
pub fn chain(error: &rill_client::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(" / ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Client settings through a Kafka-aware proxy: short backoffs, so that
/// a cut costs little time.
pub fn proxied(proxy: &rill_testkit::KafkaProxy, request_timeout: std::time::Duration) -> rill_client::ClientConfig {
    rill_client::ClientConfig::new(proxy.bootstrap())
        .expect("the proxy's address parses")
        .request_timeout(request_timeout)
        .connection_setup_timeout(std::time::Duration::from_secs(2))
        .retry_backoff(std::time::Duration::from_millis(20), std::time::Duration::from_millis(200))
        .reconnect_backoff(std::time::Duration::from_millis(10), std::time::Duration::from_millis(100))
}
