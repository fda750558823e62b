//! librdkafka's side of the produce and consume benchmarks, with extra
//! properties (TLS for the TLS benchmark).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::config::ClientConfig as RdConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use rill_cli::perf::{Meter, ProduceLoad, Progress, Report};

/// Counts delivery reports.
#[derive(Default)]
struct Counting {
    delivered: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl ClientContext for Counting {}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// What librdkafka's `send` gives: a refused record comes back.
type Sent<'a, K, P, D> = Result<(), (KafkaError, BaseRecord<'a, K, P, D>)>;

/// Either kind of librdkafka producer, to [`send_when_room`].
pub trait Sends<C: ProducerContext> {
    #[allow(clippy::result_large_err, reason = "rdkafka hands a refused record back by value")]
    fn try_send<'a, K, P>(&self, record: BaseRecord<'a, K, P, C::DeliveryOpaque>) -> Sent<'a, K, P, C::DeliveryOpaque>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized;
    fn serve(&self, timeout: Duration);
}

impl<C: ProducerContext> Sends<C> for BaseProducer<C> {
    fn try_send<'a, K, P>(&self, record: BaseRecord<'a, K, P, C::DeliveryOpaque>) -> Sent<'a, K, P, C::DeliveryOpaque>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        self.send(record)
    }

    fn serve(&self, timeout: Duration) {
        self.poll(timeout);
    }
}

impl<C: ProducerContext + 'static> Sends<C> for ThreadedProducer<C> {
    fn try_send<'a, K, P>(&self, record: BaseRecord<'a, K, P, C::DeliveryOpaque>) -> Sent<'a, K, P, C::DeliveryOpaque>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        self.send(record)
    }

    fn serve(&self, timeout: Duration) {
        self.poll(timeout);
    }
}

/// Sends `record`, serving delivery reports while librdkafka's queue is
/// full and trying again, as librdkafka advises; returns how many times it
/// was full.
pub fn send_when_room<C, K, P>(producer: &impl Sends<C>, mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>) -> u64
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    let mut full = 0;
    loop {
        match producer.try_send(record) {
            Ok(()) => return full,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                full += 1;
                producer.serve(Duration::from_millis(1));
            }
            Err((error, _)) => panic!("librdkafka produce: {error}"),
        }
    }
}

/// The same load through librdkafka, configured like Rill's defaults.
pub fn produce_with_librdkafka(
    bootstrap: &str,
    properties: &[(String, String)],
    load: &ProduceLoad,
    partitions: usize,
) -> Report {
    let context = Counting::default();
    let (delivered, failed) = (context.delivered.clone(), context.failed.clone());
    let mut config = RdConfig::new();
    for (key, value) in properties {
        config.set(key, value);
    }
    let producer: BaseProducer<Counting> = config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create_with_context(context)
        .expect("librdkafka producer");
    let keys = load.key_set();
    let value = load.value();
    // Learn the topic before measuring, as the Rill run does.
    for topic in &load.topics {
        send_when_room(&producer, BaseRecord::<[u8], [u8]>::to(topic).payload(&value[..]));
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let before = delivered.load(Ordering::Relaxed);
    let mut progress = Progress::new(load.messages);
    let meter = Meter::start();
    for i in 0..load.messages {
        let mut record = BaseRecord::<[u8], [u8]>::to(load.topic_of(i)).payload(&value[..]);
        if !keys.is_empty() {
            record = record.key(&keys[(i % load.keys) as usize][..]);
        }
        send_when_room(&producer, record);
        if i % 1000 == 0 {
            producer.poll(Duration::ZERO);
        }
        if i % 10_000 == 0 {
            progress.update(i);
        }
    }
    producer.flush(Duration::from_secs(120)).expect("librdkafka flush");
    let report = meter.finish("librdkafka", "produce", load.messages, load.value_bytes, partitions);
    progress.finish();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "librdkafka failed deliveries");
    assert_eq!(delivered.load(Ordering::Relaxed) - before, load.messages, "librdkafka delivered them all");
    report
}

/// The same reads through librdkafka: a `BaseConsumer` assigned every
/// partition from the beginning, polled record by record.
pub fn consume_with_librdkafka(
    bootstrap: &str,
    properties: &[(String, String)],
    topic: &str,
    messages: u64,
    partitions: i32,
) -> Report {
    consume_topics_with_librdkafka(bootstrap, properties, &[(topic.to_owned(), partitions)], messages)
}

/// [`consume_with_librdkafka`] of several topics, each with its partition
/// count.
pub fn consume_topics_with_librdkafka(
    bootstrap: &str,
    properties: &[(String, String)],
    topics: &[(String, i32)],
    messages: u64,
) -> Report {
    let partitions: i32 = topics.iter().map(|(_, n)| n).sum();
    let mut progress = Progress::new(messages);
    let meter = Meter::start();
    let mut config = RdConfig::new();
    for (key, value) in properties {
        config.set(key, value);
    }
    let consumer: BaseConsumer = config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "unused-assigned-only")
        .set("enable.auto.commit", "false")
        .create()
        .expect("librdkafka consumer");
    let mut assignment = TopicPartitionList::new();
    for (topic, count) in topics {
        for partition in 0..*count {
            assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
        }
    }
    consumer.assign(&assignment).unwrap();
    let mut read = 0u64;
    let mut first_record = None;
    let mut checksum = 0u64;
    let mut value_bytes = 0;
    while read < messages {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(message)) => {
                first_record.get_or_insert_with(|| meter.elapsed());
                if let Some(value) = message.payload() {
                    value_bytes = value.len();
                    checksum = checksum.wrapping_add(u64::from(value.first().copied().unwrap_or(0)));
                }
                read += 1;
                if read.is_multiple_of(10_000) {
                    progress.update(read);
                }
            }
            Some(Err(error)) => panic!("librdkafka consume: {error}"),
        }
    }
    let mut report = meter.finish("librdkafka", "consume", read, value_bytes, partitions as usize);
    report.extra.push(("first_record_s".into(), first_record.unwrap_or_default().as_secs_f64()));
    progress.finish();
    std::hint::black_box(checksum);
    report
}
