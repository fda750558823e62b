//! TLS against a terminator nobody here wrote: stunnel (OpenSSL) in front
//! of Tansu, with certificates each test makes. librdkafka reads what Rill
//! wrote through the same listener.

mod common;

use std::time::{Duration, Instant};

use common::secured::{SETUP, assert_fatal_security_error, config, connect, connect_error, round_trip};
use rill_client::producer::{Producer, ProducerConfig, Record};
use rill_client::{Client, TopicScope};
use rill_testkit::mock::MockKafka;
use rill_testkit::required;
use rill_testkit::tls::{Listener, TestCertificates, TlsTansu};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_over_tls_and_librdkafka_reads_it() {
    common::logs();
    let certificates = required(TestCertificates::generate());
    let listener = required(TlsTansu::start(&certificates, Listener::Tls).await);
    let ca = certificates.ca.to_str().unwrap();
    let rill = config(&listener.bootstrap_by_name(), &[("security.protocol", "SSL"), ("ssl.ca.location", ca)]);
    round_trip(&listener.bootstrap_by_name(), rill, &[("security.protocol", "ssl"), ("ssl.ca.location", ca)], 2_000)
        .await;

    // The CA given inline (`ssl.ca.pem`) works the same.
    let pem = std::fs::read_to_string(&certificates.ca).unwrap();
    let inline = config(&listener.bootstrap_by_name(), &[("security.protocol", "ssl"), ("ssl.ca.pem", &pem)]);
    let metadata = Client::new(inline).unwrap().refresh_metadata(TopicScope::None).await.unwrap();
    assert!(!metadata.brokers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_over_mutual_tls() {
    common::logs();
    let certificates = required(TestCertificates::generate());
    let listener = required(TlsTansu::start(&certificates, Listener::Mutual).await);
    let (ca, cert, key) = (
        certificates.ca.to_str().unwrap(),
        certificates.client_cert.to_str().unwrap(),
        certificates.client_key.to_str().unwrap(),
    );
    let tls = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca),
        ("ssl.certificate.location", cert),
        ("ssl.key.location", key),
    ];
    round_trip(&listener.bootstrap_by_name(), config(&listener.bootstrap_by_name(), &tls), &tls, 500).await;

    // The key encrypted by openssl (PBKDF2 and scrypt), opened with
    // ssl.key.password; a wrong password is a configuration error that
    // names the key and never shows the password.
    for scrypt in [false, true] {
        let encrypted = required(certificates.encrypted_client_key("key secret", scrypt));
        let encrypted = encrypted.to_str().unwrap();
        let mut properties = tls.to_vec();
        properties.retain(|(k, _)| *k != "ssl.key.location");
        properties.extend([("ssl.key.location", encrypted), ("ssl.key.password", "key secret")]);
        let client = Client::new(config(&listener.bootstrap_by_name(), &properties)).unwrap();
        client.refresh_metadata(TopicScope::None).await.expect("mTLS with a decrypted key");
        properties.pop();
        properties.push(("ssl.key.password", "wrong secret"));
        let mut all = vec![("bootstrap.servers", listener.bootstrap_by_name())];
        all.extend(properties.iter().map(|(k, v)| (*k, v.to_string())));
        let error = rill_client::ClientConfig::from_properties(all).unwrap_err().to_string();
        assert!(error.contains("ssl.key.password") && error.contains("cannot decrypt"), "{error}");
        assert!(!error.contains("wrong secret"), "{error}");
    }

    // Inline certificate and key (`*.pem`) work the same.
    let (cert_pem, key_pem) = (std::fs::read_to_string(cert).unwrap(), std::fs::read_to_string(key).unwrap());
    let inline = config(
        &listener.bootstrap_by_name(),
        &[
            ("security.protocol", "ssl"),
            ("ssl.ca.location", ca),
            ("ssl.certificate.pem", &cert_pem),
            ("ssl.key.pem", &key_pem),
        ],
    );
    Client::new(inline).unwrap().refresh_metadata(TopicScope::None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificate_problem_is_one_clear_fatal_error() {
    common::logs();
    let certificates = required(TestCertificates::generate());
    let ca = certificates.ca.to_str().unwrap();
    let other_ca = certificates.other_ca.to_str().unwrap();
    let good = required(TlsTansu::start(&certificates, Listener::Tls).await);

    // A CA the broker's certificate does not chain to (also the default
    // roots: a private CA is in none of them).
    let (error, elapsed) =
        connect_error(&good.bootstrap_by_name(), &[("security.protocol", "ssl"), ("ssl.ca.location", other_ca)]).await;
    assert_fatal_security_error(&error, elapsed, "certificate is not trusted");
    let (error, elapsed) = connect_error(&good.bootstrap_by_name(), &[("security.protocol", "ssl")]).await;
    assert_fatal_security_error(&error, elapsed, "set ssl.ca.location");

    // By IP address: the certificate names 127.0.0.1 too, so this passes;
    // the wrong-name listener below is the mismatch.
    connect(&good.bootstrap(), &[("security.protocol", "ssl"), ("ssl.ca.location", ca)])
        .await
        .expect("the certificate names 127.0.0.1");

    let wrong_name = required(TlsTansu::start(&certificates, Listener::WrongName).await);
    let tls = [("security.protocol", "ssl"), ("ssl.ca.location", ca)];
    let (error, elapsed) = connect_error(&wrong_name.bootstrap_by_name(), &tls).await;
    assert_fatal_security_error(&error, elapsed, "not valid for this host name");
    assert!(error.to_string().contains("kafka.invalid"), "names what the certificate is for: {error}");
    // Host-name checks off: the chain is still checked, the name is not.
    let mut lax = tls.to_vec();
    lax.push(("ssl.endpoint.identification.algorithm", "none"));
    connect(&wrong_name.bootstrap_by_name(), &lax).await.expect("no host-name check with algorithm=none");

    let expired = required(TlsTansu::start(&certificates, Listener::Expired).await);
    let (error, elapsed) = connect_error(&expired.bootstrap_by_name(), &tls).await;
    assert_fatal_security_error(&error, elapsed, "has expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_certificate_is_one_clear_fatal_error() {
    common::logs();
    let certificates = required(TestCertificates::generate());
    let listener = required(TlsTansu::start(&certificates, Listener::Mutual).await);
    let ca = certificates.ca.to_str().unwrap();
    for client in [
        None,
        Some((
            certificates.untrusted_client_cert.to_str().unwrap(),
            certificates.untrusted_client_key.to_str().unwrap(),
        )),
    ] {
        let mut properties = vec![("security.protocol", "ssl"), ("ssl.ca.location", ca)];
        if let Some((cert, key)) = client {
            properties.extend([("ssl.certificate.location", cert), ("ssl.key.location", key)]);
        }
        let (error, elapsed) = connect_error(&listener.bootstrap_by_name(), &properties).await;
        assert_fatal_security_error(&error, elapsed, "client certificate");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_protocol_for_a_port_is_named() {
    common::logs();
    let certificates = required(TestCertificates::generate());
    let listener = required(TlsTansu::start(&certificates, Listener::Tls).await);
    let ca = certificates.ca.to_str().unwrap();

    // Plaintext against the TLS port: stunnel resets the connection without
    // a TLS record, as a broker restarting could. A TLS ClientHello on a
    // second connection shows which it is.
    let (error, elapsed) = connect_error(&listener.bootstrap_by_name(), &[]).await;
    assert_fatal_security_error(&error, elapsed, "is a TLS listener");
    assert!(error.to_string().contains("set security.protocol=ssl"), "{error}");

    // TLS against the broker's plaintext port: Tansu reads the ClientHello
    // as the size of a frame that never ends, so the handshake would only
    // time out. A plaintext ApiVersions on a second connection is answered.
    let (error, elapsed) =
        connect_error(&listener.plaintext_bootstrap(), &[("security.protocol", "ssl"), ("ssl.ca.location", ca)]).await;
    assert_fatal_security_error(&error, elapsed, "is a plaintext listener");
    assert!(error.to_string().contains("set security.protocol=plaintext"), "{error}");

    // librdkafka's mock cluster drops the ClientHello at once (its size is
    // over the frame limit), and SASL_SSL fails the same way.
    let mock = required(MockKafka::start(1));
    let sasl_ssl = [
        ("security.protocol", "SASL_SSL"),
        ("ssl.ca.location", ca),
        ("sasl.mechanism", "PLAIN"),
        ("sasl.username", "alice"),
        ("sasl.password", "secret"),
    ];
    let (error, elapsed) = connect_error(mock.bootstrap(), &sasl_ssl).await;
    assert_fatal_security_error(&error, elapsed, "is a plaintext listener");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stops_at_a_fatal_tls_error_instead_of_retrying() {
    common::logs();
    let certificates = required(TestCertificates::generate());
    let listener = required(TlsTansu::start(&certificates, Listener::Tls).await);
    let other_ca = certificates.other_ca.to_str().unwrap();
    let config = config(
        &listener.bootstrap_by_name(),
        // A link that retried would wait out this backoff before its second
        // attempt, so a fast second failure shows it did not retry.
        &[
            ("security.protocol", "ssl"),
            ("ssl.ca.location", other_ca),
            ("reconnect.backoff.ms", "5000"),
            ("reconnect.backoff.max.ms", "5000"),
        ],
    );
    let client = Client::new(config.clone()).unwrap();
    let started = Instant::now();
    let error = client.refresh_metadata(TopicScope::None).await.expect_err("untrusted");
    assert!(!error.is_retriable(), "{error}");
    assert!(started.elapsed() < SETUP);
    // The link remembers: the second attempt fails at once, with the same words.
    let started = Instant::now();
    let again = client.refresh_metadata(TopicScope::None).await.expect_err("still untrusted");
    assert!(format!("{again:?}").contains("not trusted"), "{again:?}");
    assert!(started.elapsed() < Duration::from_millis(500), "no reconnect loop: {:?}", started.elapsed());

    // A producer's delivery fails with it instead of waiting out its timeout.
    let producer = Producer::new(ProducerConfig::new(config).delivery_timeout(Duration::from_secs(60))).unwrap();
    let started = Instant::now();
    let outcome = match producer.send(Record::to("anything").value("v")).await {
        Ok(delivery) => delivery.await.map(|_| ()),
        Err(error) => Err(error),
    };
    let error = outcome.expect_err("cannot be delivered");
    assert!(format!("{error:?}").contains("not trusted"), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "failed fast: {:?}", started.elapsed());
}
