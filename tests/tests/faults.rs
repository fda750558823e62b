//! The client behind testkit's fault-injecting proxy, in front of Tansu:
//! blackholes time out and recover, truncated and cut responses fail the
//! requests in flight and the next request reconnects, and seeded random
//! faults never panic the client nor leave it broken.

use std::time::Duration;

use kafka_protocol::messages::MetadataRequest;
use rill_client::{Client, ClientConfig, Error, ErrorAction, TopicScope};
use rill_testkit::{Chaos, Fault, Proxy};

fn client(proxy: &Proxy, request_timeout: Duration) -> Client {
    let config = ClientConfig::new(&proxy.address())
        .unwrap()
        .request_timeout(request_timeout)
        .connection_setup_timeout(request_timeout)
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200));
    Client::new(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_times_out_then_the_client_recovers() {
    let (_tansu, proxy) = rill_testkit::required(rill_testkit::tansu::behind_proxy(1).await);
    let client = client(&proxy, Duration::from_millis(800));
    client.refresh_metadata(TopicScope::None).await.unwrap();

    proxy.set_fault(Fault::Blackhole);
    let error = client.refresh_metadata(TopicScope::None).await.unwrap_err();
    let Error::NoBrokerAvailable { last, .. } = &error else { panic!("{error:?}") };
    assert!(
        matches!(**last, Error::RequestTimeout { .. } | Error::Connect { .. } | Error::ConnectionClosed { .. }),
        "{last:?}"
    );

    proxy.set_fault(Fault::None);
    let metadata = client.refresh_metadata(TopicScope::None).await.unwrap();
    assert_eq!(metadata.brokers.len(), 1);
    assert!(proxy.connections_accepted() >= 2, "a new connection replaced the timed-out one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_response_fails_the_request_and_the_next_one_reconnects() {
    let (_tansu, proxy) = rill_testkit::required(rill_testkit::tansu::behind_proxy(2).await);
    let client = client(&proxy, Duration::from_secs(5));
    let request = MetadataRequest::default().with_topics(Some(vec![]));
    let connection = client.any_connection().await.unwrap();
    connection.send(&request).await.unwrap();

    proxy.set_fault(Fault::TruncateResponse(7));
    let error = connection.send(&request).await.unwrap_err();
    assert!(matches!(error, Error::ConnectionClosed { .. }), "{error:?}");
    assert!(connection.is_closed());
    // TruncateResponse resets itself after one use; the client reconnects.
    let again = client.any_connection().await.unwrap();
    again.send(&request).await.unwrap();
    assert_eq!(proxy.connections_accepted(), 2);

    // A refresh meeting a cut connection moves on to the next way in.
    proxy.cut_all();
    client.refresh_metadata(TopicScope::None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_chaos_never_breaks_the_client() {
    let seed = std::env::var("RILL_PROXY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_f00d);
    let (_tansu, proxy) = rill_testkit::required(rill_testkit::tansu::behind_proxy(seed).await);
    let client = client(&proxy, Duration::from_millis(700));
    proxy.set_chaos(Some(Chaos { delay: 0.3, max_delay: Duration::from_millis(30), cut: 0.1, truncate: 0.1 }));
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..40 {
        match client.refresh_metadata(TopicScope::None).await {
            Ok(_) => ok += 1,
            Err(error) => {
                // Faults on the wire are never reported as fatal.
                assert_ne!(error.action(), ErrorAction::Fatal, "seed {}: {error:?}", proxy.seed());
                failed += 1;
            }
        }
    }
    eprintln!("seed {}: {ok} refreshes succeeded, {failed} failed under chaos", proxy.seed());
    proxy.set_chaos(None);
    client.refresh_metadata(TopicScope::None).await.unwrap();
    assert!(ok > 0, "seed {}: refreshes succeed between faults", proxy.seed());
    assert!(
        proxy.connections_accepted() > 1,
        "seed {}: the chaos cut connections and the client came back",
        proxy.seed()
    );
}
