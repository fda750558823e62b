//! Tracing across the hop: the W3C trace context of an input becomes the
//! remote parent of the record's span, the function's spans are its
//! children, and each output carries a `traceparent` naming that span.
//! A test subscriber of this binary's own captures every span.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rill::{Ignore, Output, Processor};
use rill_client::TopicPartition;
use rill_client::consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_client::producer::{Header, Producer, ProducerConfig, Record};
use rill_testkit::{ClusterOptions, each_broker, unique_topic};
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as the subscriber saw it: its name, its fields, and its parent's
/// fields when it opened.
#[derive(Debug, Clone, Default)]
struct Seen {
    id: u64,
    name: String,
    fields: BTreeMap<String, String>,
    parent: Option<BTreeMap<String, String>>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Seen>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut seen = Seen { id: id.into_u64(), name: attrs.metadata().name().to_owned(), ..Seen::default() };
        attrs.record(&mut Fields(&mut seen.fields));
        let parent = ctx.span(id).and_then(|span| span.parent()).map(|p| p.id().into_u64());
        let mut all = self.0.lock().unwrap();
        seen.parent = parent.and_then(|p| all.iter().rev().find(|s| s.id == p).map(|s| s.fields.clone()));
        all.push(seen);
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, _: Context<'_, S>) {
        let mut all = self.0.lock().unwrap();
        if let Some(seen) = all.iter_mut().rev().find(|s| s.id == id.into_u64()) {
            values.record(&mut Fields(&mut seen.fields));
        }
    }
}

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_id_put_on_an_input_arrives_on_its_output_through_the_records_span() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone())).unwrap();
    each_broker(ClusterOptions::default(), async |cluster| {
        let (input, output) = (unique_topic("trace-in"), unique_topic("trace-out"));
        cluster.create_topic(&input, 1).await.unwrap();
        cluster.create_topic(&output, 1).await.unwrap();
        let producer = Producer::new(ProducerConfig::new(cluster.client_config())).unwrap();
        let traced = [Header::new("traceparent", Some(PARENT.as_bytes())), Header::new("tracestate", Some(b"v=1"))];
        producer.send(Record::to(&input).value(b"traced").headers(&traced)).await.unwrap().await.unwrap();
        producer.send(Record::to(&input).value(b"plain")).await.unwrap().await.unwrap();
        producer.close(Duration::from_secs(5)).await.unwrap();

        let name = unique_topic("trace");
        let processor = Processor::<Ignore, String, String, String>::builder()
            .name(&name)
            .bootstrap_servers(cluster.bootstrap())
            .input_topic(&input)
            .output_topic(&output)
            .auto_offset_reset("earliest")
            .consumer_property("session.timeout.ms", "6000")
            .consumer_property("heartbeat.interval.ms", "500")
            .async_function(2, |input| {
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Output::new(String::new(), input.value).header("own", Some(b"yes"))
                }
                .instrument(tracing::info_span!("lookup"))
            })
            .build()
            .unwrap();
        let metrics = processor.metrics();
        let running = processor.spawn("one");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while metrics.snapshot().produced < 2 {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", metrics.snapshot());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running.stop().await.unwrap();

        let config = ConsumerConfig::new(cluster.client_config()).offset_reset(OffsetReset::Earliest);
        let mut consumer = Consumer::new(config).unwrap();
        consumer.assign(&[TopicPartition::new(&output, 0)]);
        let mut outputs = BTreeMap::new();
        while outputs.len() < 2 {
            let record = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await.unwrap().unwrap();
            let headers: BTreeMap<String, String> = record
                .headers
                .iter()
                .map(|h| (h.key.to_string(), String::from_utf8(h.value.clone().unwrap_or_default().to_vec()).unwrap()))
                .collect();
            outputs.insert(String::from_utf8(record.value.unwrap().to_vec()).unwrap(), headers);
        }
        consumer.close(Duration::from_secs(5)).await.unwrap();
        assert!(!outputs["plain"].contains_key("traceparent"), "no trace in, none out: {outputs:?}");
        let out = &outputs["traced"];
        assert_eq!((out["own"].as_str(), out["tracestate"].as_str()), ("yes", "v=1"), "{out:?}");
        let child = out["traceparent"].clone();
        let parts: Vec<&str> = child.split('-').collect();
        assert_eq!((parts[0], parts[1], parts[3]), ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01"), "{child}");
        assert_ne!(parts[2], "00f067aa0ba902b7", "the output's parent is this hop's span, not the input's");

        // The span tree: the record's span names the input's trace and
        // span as its remote parent, and carries the id the output names;
        // the function's span is its child.
        let spans = capture.0.lock().unwrap().clone();
        let record = spans
            .iter()
            .find(|s| s.name == "record" && s.fields.get("span_id").map(String::as_str) == Some(parts[2]))
            .unwrap_or_else(|| panic!("no record span {}: {spans:?}", parts[2]));
        assert_eq!(record.fields["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(record.fields["parent_id"], "00f067aa0ba902b7");
        assert_eq!(record.fields["messaging.system"], "kafka");
        assert_eq!(record.fields["messaging.destination.name"], input);
        let lookup = spans
            .iter()
            .find(|s| {
                s.name == "lookup"
                    && s.parent.as_ref().and_then(|p| p.get("span_id")).map(String::as_str) == Some(parts[2])
            })
            .unwrap_or_else(|| panic!("no lookup span under the record's: {spans:?}"));
        assert_eq!(lookup.parent.as_ref().unwrap()["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    })
    .await;
}
