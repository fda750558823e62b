//! Subcommands of the `rill` binary.

pub(crate) mod args;
mod broker;
mod cluster;
mod consume;
mod demo;
mod group;
mod metadata;
mod perf;
mod produce;
mod table;
mod topic;
mod weblog;

use args::{Args, Command};

/// Any error a subcommand returns; printed as one line.
pub(crate) type CliError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) async fn run(args: Args) -> Result<(), CliError> {
    match &args.command {
        Command::Topic(command) => topic::run(&args.common, command).await,
        Command::Group(command) => group::run(&args.common, command).await,
        Command::Cluster(command) => cluster::run(&args.common, command).await,
        Command::Metadata => metadata::run(&args.common).await,
        Command::Produce(produce) => produce::run(&args.common, produce).await,
        Command::Consume(consume) => consume::run(&args.common, consume).await,
        Command::Weblog(weblog) => weblog::run(&args.common, weblog).await,
        Command::Perf(args::PerfCommand::Produce(perf)) => perf::produce(&args.common, perf).await,
        Command::Perf(args::PerfCommand::Consume(perf)) => perf::consume(&args.common, perf).await,
        Command::Perf(args::PerfCommand::Process(perf)) => perf::process(&args.common, perf).await,
        Command::Demo(demo) => demo::run(&args.common, demo).await,
        Command::Broker => broker::run().await,
    }
}

/// Resolves on the first SIGINT or SIGTERM, after which the command stops
/// cleanly; a second signal exits the process at once with status 130.
/// Call it before any work: from then on the signals no longer kill the
/// process by default.
pub(crate) fn stop_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        eprintln!("rill: stopping (a second signal exits at once)");
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            std::process::exit(130);
        });
    })
}

/// `1 record`, `2 records`.
pub(crate) fn count(n: u64, thing: &str) -> String {
    if n == 1 { format!("1 {thing}") } else { format!("{n} {thing}s") }
}

/// An error and its sources on one line: `outer: inner: root`. Sources
/// already quoted by the outer message are not repeated.
pub(crate) fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace('\n', " ")
}
