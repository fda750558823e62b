//! Produce, consume and connect through a secured listener (TLS, SASL).

use std::time::{Duration, Instant};

use super::read_back::read_all_with;
use rill_client::TopicPartition;
use rill_client::consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_client::producer::{Producer, ProducerConfig, Record};
use rill_client::{BrokerAddress, Client, ClientConfig, Connection, Error, NewTopic};
use rill_testkit::unique_topic;

/// `socket.connection.setup.timeout.ms` of every client here.
pub const SETUP: Duration = Duration::from_secs(5);

pub fn config(bootstrap: &str, properties: &[(&str, &str)]) -> ClientConfig {
    let mut all = vec![("bootstrap.servers", bootstrap), ("socket.connection.setup.timeout.ms", "5000")];
    all.extend_from_slice(properties);
    ClientConfig::from_properties(all).expect("valid properties")
}

/// Produces `count` records with Rill, consumes them with Rill, and has
/// librdkafka read them, all through the same secured listener.
pub async fn round_trip(librdkafka_bootstrap: &str, rill: ClientConfig, librdkafka: &[(&str, &str)], count: usize) {
    let topic = unique_topic("secured");
    Client::new(rill.clone()).unwrap().admin().create_topics(&[NewTopic::new(&topic, 3)]).await.unwrap();
    let producer = Producer::new(ProducerConfig::new(rill.clone())).unwrap();
    let mut deliveries = Vec::new();
    for i in 0..count {
        let (key, value) = (format!("k{}", i % 10), format!("value-{i}"));
        deliveries.push(producer.send(Record::to(&topic).key(&key).value(&value)).await.unwrap());
    }
    for delivery in deliveries {
        delivery.await.expect("delivered over TLS");
    }
    producer.close(Duration::from_secs(10)).await.unwrap();

    let mut consumer = Consumer::new(ConsumerConfig::new(rill.clone()).offset_reset(OffsetReset::Earliest)).unwrap();
    consumer.assign(&(0..3).map(|p| TopicPartition::new(&topic, p)).collect::<Vec<_>>());
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < count && Instant::now() < deadline {
        if let Ok(Ok(record)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await {
            seen.push(String::from_utf8(record.value.unwrap().to_vec()).unwrap());
        }
    }
    seen.sort();
    let mut expected: Vec<String> = (0..count).map(|i| format!("value-{i}")).collect();
    expected.sort();
    assert_eq!(seen, expected, "Rill read back every record over TLS");

    let mut properties = vec![("bootstrap.servers", librdkafka_bootstrap.to_owned())];
    properties.extend(librdkafka.iter().map(|(k, v)| (*k, v.to_string())));
    let properties: Vec<(&str, &str)> = properties.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let read = read_all_with(&properties, &topic, 3, count, Duration::from_secs(30));
    assert_eq!(read.len(), count, "librdkafka read every record over the same listener");
}

/// Connects once, as a client with these properties would.
pub async fn connect(bootstrap: &str, properties: &[(&str, &str)]) -> Result<Connection, Error> {
    Connection::connect(&BrokerAddress::parse(bootstrap).unwrap(), &config(bootstrap, properties)).await
}

/// Connects once and returns the error and how long it took.
pub async fn connect_error(bootstrap: &str, properties: &[(&str, &str)]) -> (Error, Duration) {
    let started = Instant::now();
    let error = connect(bootstrap, properties).await.expect_err("the connection must fail");
    (error, started.elapsed())
}

pub fn assert_fatal_security_error(error: &Error, elapsed: Duration, says: &str) {
    assert!(matches!(error, Error::Security { .. }), "a security error, not {error:?}");
    assert!(!error.is_retriable(), "{error} must be fatal");
    let message = error.to_string();
    assert!(message.contains(says), "the message {message:?} should say {says:?}");
    assert!(message.starts_with("cannot connect securely to "), "names the broker: {message}");
    assert!(elapsed < SETUP, "failed within the setup timeout ({elapsed:?})");
}
