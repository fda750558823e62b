//! `rill demo`: the web-log processor end to end. With no arguments it
//! starts a local Tansu broker (`rill_cli::local`; the first run installs
//! it with pip), creates an input and an output topic, runs two processor
//! instances in one group, generates web-log lines with a third processor
//! in source mode, and prints throughput, latency, a few outputs and each
//! input partition's watermark; then it stops everything. With `--brokers`
//! it uses that cluster instead (and deletes its topics at the end).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rill::{Ignore, MetricsSnapshot, Output, Processor, RunningProcessor};
use rill_cli::local::Tansu;
use rill_cli::weblog;
use rill_client::consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_client::{Client, ClientConfig, NewTopic, TopicPartition, TopicScope};
use tokio::time::Instant;

use super::CliError;
use super::args::{Common, DemoArgs};

/// Every this many lines, one without an address (the processor filters it).
const MALFORMED_EVERY: u64 = 50;

pub(crate) async fn run(common: &Common, args: &DemoArgs) -> Result<(), CliError> {
    // Keep the broker alive (it stops on drop) until the demo is done.
    let given = common.processor_properties(None)?.bootstrap;
    let (bootstrap, _broker) = match given.clone() {
        Some(bootstrap) => (bootstrap, None),
        None => {
            eprintln!("starting a local Tansu broker (the first run installs it with pip)...");
            let tansu = Tansu::start().await?;
            eprintln!("tansu is up at {} (pid {})", tansu.bootstrap(), tansu.pid());
            (tansu.bootstrap(), Some(tansu))
        }
    };
    let properties = common.processor_properties(Some(bootstrap.clone()))?;
    let client_config = properties.client_config()?;
    let client = Client::new(client_config.clone().client_id("rill-demo"))?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (input, output) = (format!("rill-demo-weblog-{stamp}"), format!("rill-demo-by-country-{stamp}"));
    client
        .admin()
        .create_topics(&[NewTopic::new(&input, args.partitions), NewTopic::new(&output, args.partitions)])
        .await?;
    println!("created topic {input} with {} partitions (web-log lines)", args.partitions);
    println!("created topic {output} with {} partitions (country → line without its address)", args.partitions);
    let metadata = client.refresh_metadata(TopicScope::Named(vec![input.clone(), output.clone()])).await?;
    print!("{}", super::metadata::describe(&client, &metadata, args.verbose).await);

    let result = demo(&bootstrap, &properties, &client_config, &input, &output, args).await;
    if given.is_some() {
        client.admin().delete_topics(&[input.as_str(), output.as_str()]).await?;
        println!("deleted topics {input} and {output}");
    } else {
        eprintln!("stopping the local broker");
    }
    result
}

/// A processor instance running in a task of its own.
struct Instance {
    id: String,
    running: RunningProcessor,
}

impl Instance {
    fn start<K, V, OK, OV>(processor: Processor<K, V, OK, OV>, id: &str) -> Instance
    where
        K: Send + Sync + 'static,
        V: Send + Sync + 'static,
        OK: Send + Sync + 'static,
        OV: Send + Sync + 'static,
    {
        Instance { id: id.to_owned(), running: processor.spawn(id) }
    }

    fn snapshot(&self) -> MetricsSnapshot {
        self.running.metrics().snapshot()
    }

    /// Stops it (drain, commit, close) and returns its last numbers.
    async fn stop(self) -> Result<MetricsSnapshot, CliError> {
        let metrics = self.running.metrics().clone();
        self.running.stop().await?;
        Ok(metrics.snapshot())
    }
}

async fn demo(
    bootstrap: &str,
    properties: &super::args::ProcessorProperties,
    client_config: &ClientConfig,
    input: &str,
    output: &str,
    args: &DemoArgs,
) -> Result<(), CliError> {
    let name = format!("rill-demo-{}", SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()));
    let mut instances = Vec::new();
    for id in ["demo-1", "demo-2"] {
        let mut builder = Processor::<Ignore, String, String, String>::builder()
            .name(&name)
            .bootstrap_servers(bootstrap)
            .input_topic(input)
            .output_topic(output)
            .auto_offset_reset("earliest")
            // Dynamic members: Tansu's static membership now and then
            // answers a fresh static member's first heartbeat with
            // UNKNOWN_MEMBER_ID (seen under load), and the demo's numbers
            // would show the rebalance that follows.
            .static_membership(false)
            .consumer_property("session.timeout.ms", "6000")
            .consumer_property("heartbeat.interval.ms", "500")
            .function(|input| weblog::process(&input.value));
        builder = properties.apply(builder);
        instances.push(Instance::start(builder.build()?, id));
    }
    eprintln!("two processor instances are joining group {name}-group...");
    let partitions = args.partitions as usize;
    wait_for(&instances, Duration::from_secs(60), "the group to settle", |all| {
        all.iter().map(|m| m.partitions.len()).sum::<usize>() == partitions
            && all.iter().all(|m| !m.partitions.is_empty())
    })
    .await?;
    for instance in &instances {
        let owned: Vec<String> =
            instance.snapshot().partitions.iter().map(|(tp, _)| tp.partition.to_string()).collect();
        println!("instance {} reads partitions {}", instance.id, owned.join(", "));
    }

    // The lines come from a third processor, in source mode.
    let lines = args.lines;
    let spread = args.partitions as u64;
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = next.clone();
    let mut generator = Processor::<(), (), (), String>::builder()
        .name(format!("{name}-generator"))
        .bootstrap_servers(bootstrap)
        .output_topic(input)
        .source(move || {
            let from = counter.fetch_add(1000, std::sync::atomic::Ordering::Relaxed).min(lines);
            let to = (from + 1000).min(lines);
            // Line `id` to partition `id % partitions`: an even spread, so
            // both instances have work (keyless records would go where the
            // sticky partitioner fills its batches).
            async move {
                (from..to).map(|id| Output::new((), line(id)).to_partition((id % spread) as i32)).collect::<Vec<_>>()
            }
        });
    for (key, value) in &properties.producer {
        generator = generator.producer_property(key, value);
    }
    let generator = generator.build()?;
    let started = Instant::now();
    let generator = Instance::start(generator, "generator");
    wait_for(&[&generator], Duration::from_secs(120), "the lines to be written", |m| m[0].produced >= lines).await?;
    let generated_in = started.elapsed();
    let generator = generator.stop().await?;
    println!(
        "generated {} web-log lines in {:.2} s ({:.0} lines/s); one in {MALFORMED_EVERY} has no address",
        generator.produced,
        generated_in.as_secs_f64(),
        generator.produced as f64 / generated_in.as_secs_f64()
    );
    let refs: Vec<&Instance> = instances.iter().collect();
    let mut last_report = Instant::now();
    wait_for(&refs, Duration::from_secs(300), "the lines to be processed", |all| {
        let done: u64 = all.iter().map(|m| m.produced + m.filtered + m.skipped).sum();
        if last_report.elapsed() > Duration::from_secs(1) {
            eprintln!("  {done} of {lines} lines processed");
            last_report = Instant::now();
        }
        done >= lines
    })
    .await?;
    let elapsed = started.elapsed();
    let mut totals = (0, 0, 0);
    let mut latency = rill::LatencySnapshot::default();
    for instance in &instances {
        let m = instance.snapshot();
        totals = (totals.0 + m.consumed, totals.1 + m.produced, totals.2 + m.filtered);
        latency.p50 = latency.p50.max(m.latency.p50);
        latency.p99 = latency.p99.max(m.latency.p99);
    }
    println!(
        "processed {} lines in {:.2} s from the first line written: {:.0} lines/s through the processors; \
         {} outputs, {} filtered; end-to-end latency p50 {:.1} ms, p99 {:.1} ms (the slower instance's)",
        totals.0,
        elapsed.as_secs_f64(),
        totals.0 as f64 / elapsed.as_secs_f64(),
        totals.1,
        totals.2,
        latency.p50.as_secs_f64() * 1e3,
        latency.p99.as_secs_f64() * 1e3
    );
    print_sample(client_config.clone(), output, args.partitions).await?;

    eprintln!("stopping the processors (drain, commit, leave)...");
    println!(
        "watermarks (the next input offset of each partition: everything before it is done and committed; `-` \
         where no line was read)"
    );
    for instance in instances {
        let id = instance.id.clone();
        let last = instance.stop().await?;
        println!("  {id}: consumed {}, produced {}, filtered {}", last.consumed, last.produced, last.filtered);
        for (tp, partition) in &last.partitions {
            let watermark = partition.watermark.map_or("-".to_owned(), |w| w.to_string());
            println!("    {tp}  watermark {watermark}  lag {}", partition.lag.unwrap_or(0));
        }
    }
    Ok(())
}

/// The demo's input line `id`: a web-log line, or now and then one with no
/// address.
fn line(id: u64) -> String {
    if id % MALFORMED_EVERY == MALFORMED_EVERY - 1 {
        format!("- - [27/Nov/2026:10:00:00 +0000] \"GET /item?id={id} HTTP/1.1\" 400 0")
    } else {
        weblog::line(id)
    }
}

/// Waits until `done` holds over the instances' numbers.
async fn wait_for<I: std::borrow::Borrow<Instance>>(
    instances: &[I],
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&[MetricsSnapshot]) -> bool,
) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    loop {
        let snapshots: Vec<MetricsSnapshot> = instances.iter().map(|i| i.borrow().snapshot()).collect();
        if done(&snapshots) {
            return Ok(());
        }
        if let Some(stopped) = instances.iter().find(|i| i.borrow().running.is_finished()) {
            return Err(format!("instance {} stopped while waiting for {what}", stopped.borrow().id).into());
        }
        if Instant::now() > deadline {
            return Err(format!("gave up waiting for {what} after {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Prints the first outputs of the output topic.
async fn print_sample(client: ClientConfig, topic: &str, partitions: i32) -> Result<(), CliError> {
    let config = ConsumerConfig::new(client).offset_reset(OffsetReset::Earliest);
    let mut consumer = Consumer::new(config)?;
    consumer.assign(&(0..partitions).map(|p| TopicPartition::new(topic, p)).collect::<Vec<_>>());
    println!("a few outputs of {topic} (key = country, value = the line without its address):");
    for _ in 0..5 {
        let record = tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await??;
        let text =
            |b: &Option<bytes::Bytes>| b.as_ref().map_or("-".into(), |b| String::from_utf8_lossy(b).into_owned());
        println!(
            "  {}/{}@{}  {}  {}",
            record.topic,
            record.partition,
            record.offset,
            text(&record.key),
            text(&record.value)
        );
    }
    consumer.close(Duration::from_secs(5)).await?;
    Ok(())
}
