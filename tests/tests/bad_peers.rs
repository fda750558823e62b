//! The connection layer against peers that misbehave: nothing listening,
//! silence, a peer that closes mid-response, replies under unknown
//! correlation ids, garbage, hostile array counts, and brokers that reject
//! our ApiVersions version. Each case must end in a clear error, never a
//! panic or a hang, and the client must recover on the next request.

mod common;

use std::time::{Duration, Instant};

use common::chain;
use common::fake_broker::{FakeBroker, Reply, frame, serve_stream};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse, MetadataRequest};
use rill_client::{BrokerAddress, Client, ClientConfig, Connection, Error, TopicScope};

fn config(address: &BrokerAddress) -> ClientConfig {
    ClientConfig::new(&address.to_string())
        .unwrap()
        .connection_setup_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_millis(500))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50))
        .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = BrokerAddress::new("127.0.0.1", port);
    let started = Instant::now();
    let error = Connection::connect(&address, &config(&address)).await.unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
    assert!(chain(&error).contains(&format!("127.0.0.1:{port}")), "{}", chain(&error));
}

#[tokio::test]
async fn silent_peer_fails_the_handshake_within_the_setup_timeout() {
    let broker = FakeBroker::start(|_, _, _| Reply::Silence).await;
    let started = Instant::now();
    let error = Connection::connect(&broker.address, &config(&broker.address)).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(error, Error::RequestTimeout { api: ApiKey::ApiVersions, .. }), "{error:?}");
    assert!(elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(3), "took {elapsed:?}");
}

#[tokio::test]
async fn peer_closing_mid_response_fails_every_pending_request_and_the_next_one_reconnects() {
    // First connection: a proper ApiVersions, then half a Metadata answer.
    let broker = FakeBroker::start(|connection, request, _| match (connection, request) {
        (0, 0) => Reply::Normal,
        (0, _) => Reply::HalfThenClose,
        _ => Reply::Normal,
    })
    .await;
    let config = config(&broker.address);
    let connection = Connection::connect(&broker.address, &config).await.unwrap();
    let request = MetadataRequest::default().with_topics(Some(vec![]));
    let (a, b, c) = tokio::join!(connection.send(&request), connection.send(&request), connection.send(&request));
    for result in [a, b, c] {
        let error = result.unwrap_err();
        assert!(matches!(error, Error::ConnectionClosed { .. }), "{error:?}");
    }
    assert!(connection.is_closed());

    // Through a client: the request meets the broken connection and is sent
    // again on a new one (metadata is safe to repeat).
    let broker = FakeBroker::start(|connection, request, _| match (connection, request) {
        (0, 0) => Reply::Normal,
        (0, _) => Reply::HalfThenClose,
        _ => Reply::Normal,
    })
    .await;
    let client = Client::new(config.clone().bootstrap_servers(vec![broker.address.clone()])).unwrap();
    let metadata = client.refresh_metadata(TopicScope::None).await.unwrap();
    assert_eq!(metadata.brokers.len(), 1);
    assert_eq!(broker.connections(), 2);
    // Both ways in (the bootstrap entry and broker 1, the same fake) broken
    // on every connection: the error says why.
    let broken = FakeBroker::start(|_, request, _| match request {
        0 => Reply::Normal,
        _ => Reply::HalfThenClose,
    })
    .await;
    let client = Client::new(config.clone().bootstrap_servers(vec![broken.address.clone()])).unwrap();
    let error = client.refresh_metadata(TopicScope::None).await.unwrap_err();
    assert!(matches!(error, Error::NoBrokerAvailable { .. }), "{error:?}");
    assert!(chain(&error).contains("closed by the broker"), "{}", chain(&error));
}

#[tokio::test]
async fn reply_under_an_unknown_correlation_id_resets_the_connection() {
    let broker = FakeBroker::start(|_, request, _| match request {
        0 => Reply::Normal,
        _ => Reply::WrongCorrelationId,
    })
    .await;
    let connection = Connection::connect(&broker.address, &config(&broker.address)).await.unwrap();
    let error = connection.send(&MetadataRequest::default()).await.unwrap_err();
    assert!(matches!(error, Error::ConnectionClosed { .. }), "{error:?}");
    assert!(error.to_string().contains("unknown correlation id"), "{error}");
    assert!(connection.is_closed());
    assert!(connection.close_reason().unwrap().contains("unknown correlation id"));
}

#[tokio::test]
async fn request_timeout_fails_the_request_and_closes_the_connection() {
    let broker = FakeBroker::start(|_, request, _| match request {
        0 => Reply::Normal,
        _ => Reply::Silence,
    })
    .await;
    let connection = Connection::connect(&broker.address, &config(&broker.address)).await.unwrap();
    let started = Instant::now();
    let error = connection.send(&MetadataRequest::default()).await.unwrap_err();
    assert!(matches!(error, Error::RequestTimeout { api: ApiKey::Metadata, .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(connection.is_closed());
}

/// splitmix64, for reproducible garbage.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

#[tokio::test]
async fn garbage_is_an_error_never_a_panic() {
    for seed in 0..40u64 {
        // Even seeds: raw garbage (a random size prefix, random correlation
        // id). Odd seeds: a valid prefix and our correlation id, then a random
        // body, so that the body decoders see it.
        let broker = FakeBroker::start(move |_, request, _| match request {
            0 => Reply::Normal,
            _ if seed % 2 == 0 => Reply::Raw(garbage(seed, 64)),
            _ => Reply::Body(garbage(seed, 1 + (seed as usize * 7) % 200)),
        })
        .await;
        let connection = Connection::connect(&broker.address, &config(&broker.address)).await.unwrap();
        let request = MetadataRequest::default().with_topics(Some(vec![]));
        match connection.send(&request).await {
            Err(Error::Protocol { .. } | Error::ConnectionClosed { .. } | Error::RequestTimeout { .. }) => {}
            other => panic!("seed {seed}: garbage gave {other:?}"),
        }
    }
}

#[tokio::test]
async fn hostile_array_count_is_rejected_not_allocated() {
    // Metadata v12 body: throttle, then a broker array claiming 2^32 - 2
    // entries. kafka-protocol alone would reserve hundreds of gigabytes and
    // abort the process.
    let mut body = vec![0, 0, 0, 0];
    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]);
    let broker = FakeBroker::start(move |_, request, _| match request {
        0 => Reply::Normal,
        _ => Reply::Body({
            // Response header v1 (flexible): no tagged fields.
            let mut b = vec![0];
            b.extend_from_slice(&body);
            b
        }),
    })
    .await;
    let connection = Connection::connect(&broker.address, &config(&broker.address)).await.unwrap();
    let error = connection.send(&MetadataRequest::default()).await.unwrap_err();
    assert!(matches!(error, Error::Protocol { .. }), "{error:?}");
    assert!(error.to_string().contains("array count larger than the bytes left"), "{error}");
    // The connection itself is still in step: the frame was complete.
    assert!(!connection.is_closed());
}

#[tokio::test]
async fn api_versions_v3_rejected_with_a_v0_body_retries_at_the_advertised_version() {
    let broker = FakeBroker::start(|_, _, header| {
        let api = ApiKey::try_from(header.request_api_key).unwrap();
        if api == ApiKey::ApiVersions && header.request_api_version == 3 {
            // KIP-511: error 35 with a v0 body listing ApiVersions 0..2.
            let body = ApiVersionsResponse::default().with_error_code(35).with_api_keys(vec![
                ApiVersion::default().with_api_key(ApiKey::ApiVersions as i16).with_max_version(2),
            ]);
            Reply::Raw(frame(ApiKey::ApiVersions, 0, header.correlation_id, &body))
        } else {
            Reply::Normal
        }
    })
    .await;
    let connection = Connection::connect(&broker.address, &config(&broker.address)).await.unwrap();
    assert_eq!(broker.requests()[..2], [(18, 3), (18, 2)]);
    assert_eq!(connection.api_versions().range(ApiKey::Metadata), Some((0, 12)));
    connection.send(&MetadataRequest::default().with_topics(Some(vec![]))).await.unwrap();
}

#[tokio::test]
async fn api_versions_v3_rejected_with_an_unreadable_body_retries_at_v0() {
    // librdkafka's mock cluster answers this way: error 35, then a body in
    // the requested version that a v0 reader cannot parse.
    let broker = FakeBroker::start(|_, _, header| {
        if header.request_api_key == 18 && header.request_api_version == 3 {
            Reply::Body(vec![0x00, 0x23, 0x01, 0x00, 0x12, 0x00])
        } else {
            Reply::Normal
        }
    })
    .await;
    let connection = Connection::connect(&broker.address, &config(&broker.address)).await.unwrap();
    assert_eq!(broker.requests()[..2], [(18, 3), (18, 0)]);
    assert_eq!(connection.api_versions().range(ApiKey::ApiVersions), Some((0, 3)));
}

#[tokio::test]
async fn reconnects_back_off_exponentially() {
    // Accepts and hangs up at once: every attempt fails in the handshake.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = BrokerAddress::new("127.0.0.1", listener.local_addr().unwrap().port());
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(socket);
        }
    });
    let config = config(&address).reconnect_backoff(Duration::from_millis(100), Duration::from_secs(10));
    let client = Client::new(config).unwrap();
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        assert!(client.any_connection().await.is_err());
    }
    // Backoff 100, 200, 400, 800 ms (±20 %): four or five attempts in 1.5 s
    // and the one the last call waits for, not the hundreds a tight loop
    // would make; plus one connection at the first failure that asks
    // whether the port speaks TLS.
    let made = attempts.load(std::sync::atomic::Ordering::SeqCst);
    assert!((5..=7).contains(&made), "{made} connections in 1.5 s");
}

#[tokio::test]
async fn a_connection_runs_over_any_byte_stream() {
    // The driver is generic over its stream (TLS is one): over an in-memory
    // pipe it negotiates, pipelines and reports a peer that goes away.
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let address = BrokerAddress::new("in-memory", 9092);
    let broker = serve_stream(theirs, 9092, |_, _, _| Reply::Normal);
    let connection = Connection::connect_over(ours, &address, &config(&address)).await.unwrap();
    assert!(!connection.api_versions().is_empty(), "ApiVersions negotiated over the pipe");
    let metadata = connection.send(&MetadataRequest::default().with_topics(Some(Vec::new()))).await.unwrap();
    assert_eq!(metadata.brokers.len(), 1);
    broker.abort();
    let error = connection.send(&MetadataRequest::default().with_topics(Some(Vec::new()))).await.unwrap_err();
    assert!(matches!(error, Error::ConnectionClosed { .. }), "{error:?}");
}
