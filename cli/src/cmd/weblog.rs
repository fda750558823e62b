//! `rill weblog`: the web-log processor until SIGINT or SIGTERM. The first
//! signal drains, commits and stops within the shutdown timeout; a second
//! one exits at once.

use rill::{Ignore, Processor};
use rill_cli::weblog;

use super::CliError;
use super::args::{Common, WeblogArgs};

pub(crate) async fn run(common: &Common, args: &WeblogArgs) -> Result<(), CliError> {
    #[cfg(feature = "prometheus")]
    if let Some(addr) = args.metrics_addr {
        let bound = rill_cli::metrics_http::serve(addr).await?;
        eprintln!("rill: metrics at http://{bound}/metrics");
    }
    let mut builder = Processor::<Ignore, String, String, String>::builder()
        .name(&args.name)
        .input_topic(&args.input)
        .output_topic(&args.output)
        .consume_error_tolerance(args.tolerance.0.clone())
        .auto_offset_reset(&args.from)
        .static_membership(args.static_membership.0)
        .function(|input| weblog::process(&input.value));
    if args.exactly_once {
        builder = builder.processing_guarantee(rill::Guarantee::ExactlyOnce);
    }
    // -X keys go to whichever client takes them (client keys to both).
    let properties = common.processor_properties(None)?;
    builder = properties.apply(builder.bootstrap_servers(properties.bootstrap()?));
    let processor = builder.build()?;
    let metrics = processor.metrics();
    processor.run(&args.instance, super::stop_signal()?).await?;
    let m = metrics.snapshot();
    eprintln!(
        "rill: weblog {} consumed {}, produced {}, filtered {}, skipped {}, dead-lettered {}",
        args.instance, m.consumed, m.produced, m.filtered, m.skipped, m.dead_lettered
    );
    Ok(())
}
