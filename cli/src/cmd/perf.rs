//! `rill perf produce` / `rill perf consume`: records as fast as the client
//! takes or returns them, then one JSON line with throughput and process
//! CPU over the measured phase.

use std::time::{SystemTime, UNIX_EPOCH};

use rill_cli::perf::ProcessLoad;
use rill_cli::perf::{ConsumeLoad, ProduceLoad, consume_with_rill, produce_with_rill};
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
    let load = ProcessLoad {
        bootstrap,
        input: input.clone(),
        output: output.clone(),
        messages: args.messages,
        rate: args.rate,
        consumer_properties: properties.consumer,
        producer_properties: properties.producer,
    };
    let result = async {
        if args.rate.is_none() {
            eprintln!("loading {} lines into {input}...", args.messages);
            let config = ProducerConfig::new(client_config.clone());
            rill_cli::perf::feed(config, &input, (0, args.messages), None, Some(args.partitions)).await?;
        }
        Ok::<_, CliError>(rill_cli::perf::process_with_rill(&load).await?)
    }
    .await;
    // The topics were made for this run.
    if let Err(error) = client.admin().delete_topics(&[input.as_str(), output.as_str()]).await {
        eprintln!("rill: could not delete {input} and {output}: {error}");
    }
    println!("{}", result?.to_json());
    Ok(())
}
