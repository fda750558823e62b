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
use super::args::{Common, FreshTopics, PerfConsumeArgs, PerfProcessArgs, PerfProduceArgs, ProducerFlags};

pub(crate) async fn produce(common: &Common, args: &PerfProduceArgs) -> Result<(), CliError> {
    let config = common.producer_config(&args.producer)?;
    let client = Client::new(config.client().clone())?;
    let (topics, made) = topics_for(&client, args.topic.as_deref(), &args.fresh).await?;
    let load = ProduceLoad { topics, messages: args.messages, value_bytes: args.value_bytes, keys: args.keys };
    let result = produce_with_rill(config, &load).await;
    drop_made(&client, made).await;
    println!("{}", result?.to_json());
    Ok(())
}

pub(crate) async fn consume(common: &Common, args: &PerfConsumeArgs) -> Result<(), CliError> {
    let config = common.consumer_config()?.offset_reset(rill_client::consumer::OffsetReset::Earliest);
    let client = Client::new(config.client().clone())?;
    let (topics, made) = topics_for(&client, args.topic.as_deref(), &args.fresh).await?;
    let result = async {
        if made.is_some() {
            eprintln!("writing {} records into {} topic(s) first...", args.messages, topics.len());
            let flags = ProducerFlags { linger_ms: None, compression: args.compression, partitioner: None };
            let producer = common.producer_config(&flags)?;
            let fill = ProduceLoad {
                topics: topics.clone(),
                messages: args.messages,
                value_bytes: args.value_bytes,
                keys: 1000,
            };
            produce_with_rill(producer, &fill).await?;
        }
        let load = ConsumeLoad { topics: topics.clone(), messages: args.messages, group: args.group.clone() };
        Ok::<_, CliError>(consume_with_rill(config, &load).await?)
    }
    .await;
    drop_made(&client, made).await;
    println!("{}", result?.to_json());
    Ok(())
}

/// The topic named, or fresh ones (`Some` of them in the second place:
/// the run deletes them at the end).
async fn topics_for(
    client: &Client,
    topic: Option<&str>,
    fresh: &FreshTopics,
) -> Result<(Vec<String>, Option<Vec<String>>), CliError> {
    if let Some(topic) = topic {
        return Ok((vec![topic.to_owned()], None));
    }
    let made = rill_cli::perf::create_topics(client, "rill-perf", fresh.topics as usize, fresh.partitions).await?;
    Ok((made.clone(), Some(made)))
}

async fn drop_made(client: &Client, made: Option<Vec<String>>) {
    if let Some(made) = made
        && let Err(error) = rill_cli::perf::delete_topics(client, &made).await
    {
        eprintln!("rill: could not delete the run's topics: {error}");
    }
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
