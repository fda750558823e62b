//! SASL against a server nobody here wrote: the testkit's SASL gate, whose
//! SCRAM side is the `scramp` package, in front of Tansu. librdkafka
//! authenticates through the same gate in the same tests.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::secured::{SETUP, assert_fatal_security_error, config, connect, connect_error, round_trip};
use rill_client::consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_client::producer::{Producer, ProducerConfig, Record};
use rill_client::{
    Client, ClientConfig, NewTopic, OAuthBearerToken, SaslMechanism, SecurityProtocol, TokenError, TopicPartition,
    TopicScope,
};
use rill_testkit::sasl::{SaslOptions, SaslTansu};
use rill_testkit::tls::TestCertificates;
use rill_testkit::{required, unique_topic};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";

fn sasl(mechanism: &str, user: &str, password: &str) -> Vec<(&'static str, String)> {
    vec![
        ("sasl.mechanism", mechanism.to_owned()),
        ("sasl.username", user.to_owned()),
        ("sasl.password", password.to_owned()),
    ]
}

fn borrowed<'a>(properties: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    properties.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_consume_over_sasl_ssl_with_each_mechanism_and_librdkafka_reads_it() {
    common::logs();
    let certificates = required(TestCertificates::generate());
    let gate = required(SaslTansu::start(SaslOptions::new().user(USER, PASSWORD).tls(&certificates)).await);
    let ca = certificates.ca.to_str().unwrap().to_owned();
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let mut properties = sasl(mechanism, USER, PASSWORD);
        properties.extend([("security.protocol", "SASL_SSL".to_owned()), ("ssl.ca.location", ca.clone())]);
        let properties = borrowed(&properties);
        let before = gate.events_of("authenticated").len();
        round_trip(&gate.bootstrap_by_name(), config(&gate.bootstrap_by_name(), &properties), &properties, 1_000).await;
        let authenticated: Vec<_> = gate.events_of("authenticated").into_iter().skip(before).collect();
        assert!(
            authenticated.iter().all(|e| e.get("mechanism") == mechanism && e.get("user") == USER),
            "{authenticated:?}"
        );
        // Rill's connections and librdkafka's: at least two.
        assert!(authenticated.len() >= 2, "{mechanism}: {authenticated:?}");
    }
    assert!(gate.events_of("refused").is_empty(), "{:?}", gate.events_of("refused"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_plaintext_with_typed_settings() {
    common::logs();
    let gate = required(SaslTansu::start(SaslOptions::new().user(USER, PASSWORD).mechanism("SCRAM-SHA-256")).await);
    let config = ClientConfig::new(&gate.bootstrap())
        .unwrap()
        .security_protocol(SecurityProtocol::SaslPlaintext)
        .sasl_mechanism(SaslMechanism::ScramSha256)
        .sasl_credentials(USER, PASSWORD);
    config.validate().unwrap();
    let librdkafka = sasl("SCRAM-SHA-256", USER, PASSWORD);
    let mut librdkafka = borrowed(&librdkafka);
    librdkafka.push(("security.protocol", "sasl_plaintext"));
    round_trip(&gate.bootstrap(), config, &librdkafka, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sasl_problem_is_one_clear_fatal_error() {
    common::logs();
    let gate = required(
        SaslTansu::start(SaslOptions::new().user(USER, PASSWORD).mechanism("PLAIN").mechanism("SCRAM-SHA-256")).await,
    );
    let bootstrap = gate.bootstrap();
    let attempt = |mechanism: &str, user: &str, password: &str| {
        let mut properties = sasl(mechanism, user, password);
        properties.push(("security.protocol", "sasl_plaintext".to_owned()));
        properties
    };
    for (mechanism, user, password) in [
        ("SCRAM-SHA-256", USER, "wrong password"),
        ("PLAIN", USER, "wrong password"),
        ("SCRAM-SHA-256", "mallory", PASSWORD),
    ] {
        let properties = attempt(mechanism, user, password);
        let (error, elapsed) = connect_error(&bootstrap, &borrowed(&properties)).await;
        assert_fatal_security_error(&error, elapsed, &format!("SASL {mechanism} authentication as `{user}` failed"));
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains(password), "the password shows: {shown}");
    }

    let properties = attempt("SCRAM-SHA-512", USER, PASSWORD);
    let (error, elapsed) = connect_error(&bootstrap, &borrowed(&properties)).await;
    assert_fatal_security_error(
        &error,
        elapsed,
        "SASL mechanism SCRAM-SHA-512 is not enabled on the broker (it offers PLAIN, SCRAM-SHA-256)",
    );

    // A client gives up at once instead of reconnecting.
    let mut properties = attempt("SCRAM-SHA-256", USER, "wrong password");
    properties.extend([("reconnect.backoff.ms", "5000".to_owned()), ("reconnect.backoff.max.ms", "5000".to_owned())]);
    let client = Client::new(config(&bootstrap, &borrowed(&properties))).unwrap();
    let error = client.refresh_metadata(TopicScope::None).await.expect_err("wrong password");
    assert!(!error.is_retriable(), "{error}");
    let started = Instant::now();
    let again = client.refresh_metadata(TopicScope::None).await.expect_err("still wrong");
    assert!(format!("{again:?}").contains("authentication as `alice` failed"), "{again:?}");
    assert!(started.elapsed() < Duration::from_millis(500), "no reconnect loop: {:?}", started.elapsed());

    // The right password still works, on the same gate.
    let properties = attempt("SCRAM-SHA-256", USER, PASSWORD);
    connect(&bootstrap, &borrowed(&properties)).await.expect("the right password");
    let refused = gate.events_of("refused");
    assert!(refused.len() >= 5, "the gate saw each refusal: {refused:?}");
}

/// An unsecured JWT (`alg: none`) with these claims, as the gate accepts.
fn unsecured_jwt(claims: &str) -> String {
    use base64::Engine;
    let encode = |text: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
    format!("{}.{}.", encode(r#"{"alg":"none"}"#), encode(claims))
}

/// How many connections authenticated for the first time.
fn first_authentications(gate: &SaslTansu) -> usize {
    gate.events_of("authenticated").iter().filter(|e| e.get("reauth") == "0").count()
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_tokens_are_refreshed_and_long_lived_connections_reauthenticate() {
    common::logs();
    let certificates = required(TestCertificates::generate());
    let lifetime = Duration::from_secs(3);
    let gate = required(SaslTansu::start(SaslOptions::new().session_lifetime(lifetime).tls(&certificates)).await);
    let ca = certificates.ca.to_str().unwrap();

    // The application's provider: tokens of 4 s, each a new one.
    let issued = Arc::new(AtomicU32::new(0));
    let counter = issued.clone();
    let provider = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            // JWT expiry is in whole seconds; the token says the same.
            let expires = now_seconds() + 4;
            let token = unsecured_jwt(&format!(r#"{{"sub":"svc","exp":{expires},"jti":"t{n}"}}"#));
            let expires_at = UNIX_EPOCH + Duration::from_secs(expires);
            Ok::<_, TokenError>(OAuthBearerToken::expiring_at(token, expires_at).with_principal("svc"))
        }
    };
    let rill = config(&gate.bootstrap_by_name(), &[("ssl.ca.location", ca)])
        .security_protocol(SecurityProtocol::SaslSsl)
        .sasl_mechanism(SaslMechanism::OAuthBearer)
        .oauthbearer_token_provider(provider);

    let topic = unique_topic("oauth");
    Client::new(rill.clone()).unwrap().admin().create_topics(&[NewTopic::new(&topic, 2)]).await.unwrap();
    let producer = Producer::new(ProducerConfig::new(rill.clone())).unwrap();
    let mut consumer = Consumer::new(ConsumerConfig::new(rill.clone()).offset_reset(OffsetReset::Earliest)).unwrap();
    consumer.assign(&[TopicPartition::new(&topic, 0), TopicPartition::new(&topic, 1)]);

    // Nine seconds of traffic on the same connections: three sessions at
    // least, each renewed while fetches are in flight.
    let count = 150;
    let reader = tokio::spawn(async move {
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(40);
        while seen < count && Instant::now() < deadline {
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
                seen += 1;
            }
        }
        seen
    });
    let mut connected = None;
    for i in 0..count {
        if i == 10 {
            connected = Some(first_authentications(&gate));
        }
        let delivery = producer.send(Record::to(&topic).key(&format!("k{i}")).value(&format!("v{i}"))).await.unwrap();
        delivery.await.expect("delivered across re-authentications");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(reader.await.unwrap(), count, "every record read across re-authentications");

    let authenticated = gate.events_of("authenticated");
    let reauthenticated: Vec<_> = authenticated.iter().filter(|e| e.get("reauth") == "1").collect();
    assert!(reauthenticated.len() >= 4, "connections re-authenticated: {authenticated:?}");
    assert!(gate.events_of("expired").is_empty(), "no session ran out: {:?}", gate.events_of("expired"));
    assert_eq!(Some(first_authentications(&gate)), connected, "no connection was opened again: {authenticated:?}");
    assert!(issued.load(Ordering::SeqCst) >= 2, "the token was refreshed before it expired");
    producer.close(Duration::from_secs(5)).await.unwrap();

    // librdkafka's own unsecured JWTs through the same gate, and Rill's.
    let unsecured = [
        ("security.protocol", "SASL_SSL"),
        ("ssl.ca.location", ca),
        ("sasl.mechanisms", "OAUTHBEARER"),
        ("enable.sasl.oauthbearer.unsecure.jwt", "true"),
        ("sasl.oauthbearer.config", "principal=tester lifeSeconds=60"),
    ];
    round_trip(&gate.bootstrap_by_name(), config(&gate.bootstrap_by_name(), &unsecured), &unsecured, 200).await;
    assert!(gate.events_of("authenticated").iter().any(|e| e.get("user") == "tester"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_one_clear_fatal_error() {
    common::logs();
    let gate = required(SaslTansu::start(SaslOptions::new()).await);
    let signed = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzdmMifQ.c2lnbmF0dXJl".to_owned();
    let rill = config(&gate.bootstrap(), &[])
        .security_protocol(SecurityProtocol::SaslPlaintext)
        .sasl_mechanism(SaslMechanism::OAuthBearer)
        .oauthbearer_token_provider(move || {
            let token = signed.clone();
            async move { Ok::<_, TokenError>(OAuthBearerToken::new(token, Duration::from_secs(60))) }
        });
    let started = Instant::now();
    let address = rill_client::BrokerAddress::parse(&gate.bootstrap()).unwrap();
    let error = rill_client::Connection::connect(&address, &rill).await.expect_err("refused");
    assert_fatal_security_error(&error, started.elapsed(), "SASL OAUTHBEARER authentication failed");
    assert!(error.to_string().contains("invalid_token"), "the broker's report is shown: {error}");
    assert!(!error.to_string().contains("c2lnbmF0dXJl"), "the token shows: {error}");
    assert!(started.elapsed() < SETUP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_runs_over_sasl_ssl_across_reauthentications() {
    common::logs();
    let certificates = required(TestCertificates::generate());
    let gate = required(
        SaslTansu::start(
            SaslOptions::new()
                .user(USER, PASSWORD)
                .mechanism("SCRAM-SHA-256")
                .session_lifetime(Duration::from_secs(3))
                .tls(&certificates),
        )
        .await,
    );
    let ca = certificates.ca.to_str().unwrap().to_owned();
    let mut secured = sasl("SCRAM-SHA-256", USER, PASSWORD);
    secured.extend([("security.protocol", "SASL_SSL".to_owned()), ("ssl.ca.location", ca)]);
    let secured = borrowed(&secured);
    let client = config(&gate.bootstrap_by_name(), &secured);
    let (input, output) = (unique_topic("sasl-proc-in"), unique_topic("sasl-proc-out"));
    let admin = Client::new(client.clone()).unwrap();
    admin.admin().create_topics(&[NewTopic::new(&input, 2), NewTopic::new(&output, 2)]).await.unwrap();
    let producer = Producer::new(ProducerConfig::new(client.clone())).unwrap();
    let count = 400;
    let mut deliveries = Vec::new();
    for i in 0..count {
        deliveries
            .push(producer.send(Record::to(&input).key(&format!("k{i}")).value(&format!("line {i}"))).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.expect("input delivered");
    }
    producer.close(Duration::from_secs(10)).await.unwrap();
    drop((producer, admin));
    // Connections the gate numbers after this one are the processor's.
    let before = gate.events_of("authenticated").iter().filter_map(|e| e.get("conn").parse::<u32>().ok()).max();

    // The processor's consumer and producer take the same properties; its
    // group's JoinGroup and SyncGroup (each held 1.5 s by Tansu) run across
    // 3 s sessions.
    let mut builder = rill::Processor::<rill::Ignore, String, String, String>::builder()
        .name(unique_topic("sasl-proc"))
        .bootstrap_servers(gate.bootstrap_by_name())
        .input_topic(&input)
        .output_topic(&output)
        .auto_offset_reset("earliest")
        .consumer_property("session.timeout.ms", "3000")
        .consumer_property("heartbeat.interval.ms", "500")
        .function(|input| Some(rill::Output::new("k".to_owned(), input.value.to_uppercase())));
    for &(key, value) in &secured {
        builder = builder.consumer_property(key, value).producer_property(key, value);
    }
    let processor = builder.build().unwrap();
    let metrics = processor.metrics();
    let running = processor.spawn("one");
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.snapshot().produced < count as u64 {
        assert!(Instant::now() < deadline, "the processor stalled: {:?}", metrics.snapshot());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Go on past a few more session ends, then stop cleanly.
    tokio::time::sleep(Duration::from_secs(4)).await;
    tokio::time::timeout(Duration::from_secs(30), running.stop()).await.expect("stops").expect("stops cleanly");

    let mut properties = vec![("bootstrap.servers", gate.bootstrap_by_name())];
    properties.extend(secured.iter().map(|(k, v)| (*k, v.to_string())));
    let properties: Vec<(&str, &str)> = properties.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let read = common::read_back::read_all_with(&properties, &output, 2, count, Duration::from_secs(30));
    assert_eq!(read.len(), count, "librdkafka read every output over the same listener");
    let processor_reauthenticated = gate
        .events_of("authenticated")
        .iter()
        .any(|e| e.get("reauth") == "1" && e.get("conn").parse::<u32>().ok() > before);
    assert!(processor_reauthenticated, "the processor's connections re-authenticated: {:?}", gate.events());
    assert!(gate.events_of("expired").is_empty(), "{:?}", gate.events_of("expired"));
}
