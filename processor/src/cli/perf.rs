//! `rill perf produce`: records as fast as the producer takes them, then
//! one JSON line with throughput and process CPU over the measured phase.

use rill_testkit::perf::{ProduceLoad, produce_with_rill};

use super::CliError;
use super::args::{Common, PerfProduceArgs};

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
