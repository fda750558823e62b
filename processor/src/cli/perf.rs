//! `rill perf produce` / `rill perf consume`: records as fast as the client
//! takes or returns them, then one JSON line with throughput and process
//! CPU over the measured phase.

use rill_testkit::perf::{ConsumeLoad, ProduceLoad, consume_with_rill, produce_with_rill};

use super::CliError;
use super::args::{Common, PerfConsumeArgs, PerfProduceArgs};

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
