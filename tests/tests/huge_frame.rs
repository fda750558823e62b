//! A 2 GiB length prefix from a broker is rejected without allocating it.
//!
//! Its own test binary, so that the process's peak heap (counted by the
//! `cap` allocator) belongs to this test alone.

mod common;

use std::alloc::System;
use std::time::Duration;

use cap::Cap;
use common::fake_broker::{FakeBroker, Reply};
use kafka_protocol::messages::MetadataRequest;
use rill_client::{ClientConfig, Connection, Error};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

#[tokio::test]
async fn two_gib_length_prefix_fails_without_allocating_it() {
    let mut reply = 0x8000_0000u32.to_be_bytes().to_vec();
    reply.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    let broker = FakeBroker::start(move |_, request, _| match request {
        0 => Reply::Normal,
        _ => Reply::Raw(reply.clone()),
    })
    .await;
    let config = ClientConfig::new(&broker.address.to_string()).unwrap().request_timeout(Duration::from_secs(5));
    let connection = Connection::connect(&broker.address, &config).await.unwrap();
    let error = connection.send(&MetadataRequest::default()).await.unwrap_err();
    assert!(matches!(error, Error::ConnectionClosed { .. }), "{error:?}");
    assert!(error.to_string().contains("exceeds the 104857600-byte limit"), "{error}");

    // A prefix just above the configured limit is refused the same way.
    let mut reply = (1024 * 1024 + 1u32).to_be_bytes().to_vec();
    reply.extend_from_slice(&[0; 8]);
    let broker = FakeBroker::start(move |_, request, _| match request {
        0 => Reply::Normal,
        _ => Reply::Raw(reply.clone()),
    })
    .await;
    let small = config.clone().max_response_size(1024 * 1024).bootstrap_servers(vec![broker.address.clone()]);
    let connection = Connection::connect(&broker.address, &small).await.unwrap();
    let error = connection.send(&MetadataRequest::default()).await.unwrap_err();
    assert!(error.to_string().contains("exceeds the 1048576-byte limit"), "{error}");

    let peak = ALLOCATOR.max_allocated();
    assert!(peak < 16 * 1024 * 1024, "peak heap {peak} bytes: something sized by the prefix was allocated");
}
