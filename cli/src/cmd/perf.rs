//! `rill perf produce` / `rill perf consume`: records as fast as the client
//! takes or returns them, then one JSON line with throughput and process
//! CPU over the measured phase.

use std::time::{SystemTime, UNIX_EPOCH};

use std::time::Duration;

use rill_cli::perf::{ConsumeLoad, ProduceLoad, consume_with_rill, produce_with_rill};
use rill_cli::perf::{ProcessLoad, Work};
use rill_client::producer::ProducerConfig;
use rill_client::{Client, NewTopic};

use super::CliError;
use super::args::{Common, PerfConsumeArgs, PerfProcessArgs, PerfProduceArgs};

pub(crate) async fn produce(common: &Common, args: &PerfProduceArgs) -> Result<(), CliError> {
    let load = ProduceLoad {
        topic: args.topic.clone(),
        messages: args.messages,
        value_bytes: args.value_bytes,
        keys: args.keys,
    };
    let report = produce_with_rill(common.producer_config(&args.producer)?, &load).await?;
    println!("{}", report.to_json());
    Ok(())
}

pub(crate) async fn consume(common: &Common, args: &PerfConsumeArgs) -> Result<(), CliError> {
    let load = ConsumeLoad { topic: args.topic.clone(), messages: args.messages, group: args.group.clone() };
    let config = common.consumer_config()?.offset_reset(rill_client::consumer::OffsetReset::Earliest);
    let report = consume_with_rill(config, &load).await?;
    println!("{}", report.to_json());
    Ok(())
}

pub(crate) async fn process(common: &Common, args: &PerfProcessArgs) -> Result<(), CliError> {
    let properties = common.processor_properties(None)?;
    let bootstrap = properties.bootstrap()?;
    let client_config = properties.client_config()?;
    let client = Client::new(client_config.clone())?;
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let (input, output) = (format!("rill-perf-in-{stamp}"), format!("rill-perf-out-{stamp}"));
    client
        .admin()
        .create_topics(&[NewTopic::new(&input, args.partitions), NewTopic::new(&output, args.partitions)])
        .await?;
    let work = match args.order {
        None => Work::WebLog,
        Some(order) => Work::Keyed {
            order: order.order(),
            concurrency: args.concurrency as usize,
            call: Duration::from_millis(args.call_ms),
            keys: args.keys,
            value_bytes: args.value_bytes,
        },
    };
    let load = ProcessLoad {
        bootstrap,
        input: input.clone(),
        output: output.clone(),
        messages: args.messages,
        rate: args.rate,
        consumer_properties: properties.consumer,
        producer_properties: properties.producer,
        processor_properties: properties.processor,
        work,
        name: None,
    };
    let result = async {
        if args.rate.is_none() {
            eprintln!("loading {} records into {input}...", args.messages);
            let config = ProducerConfig::new(client_config.clone());
            rill_cli::perf::feed(config, &input, &load.work, (0, args.messages), None, Some(args.partitions)).await?;
        }
        Ok::<_, CliError>(rill_cli::perf::process_with_rill(&load).await?)
    }
    .await;
    // The topics were made for this run; a keyed run's output is kept for
    // a reader to check.
    let made: Vec<&str> = match load.work {
        Work::WebLog => vec![&input, &output],
        Work::Keyed { .. } => vec![&input],
    };
    if let Err(error) = client.admin().delete_topics(&made).await {
        eprintln!("rill: could not delete {}: {error}", made.join(" and "));
    }
    println!("{}", result?.to_json());
    Ok(())
}
