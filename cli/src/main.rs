//! The `rill` command-line tool.
//!
//! # Layout
//!
//! - `cmd::args`: the command line (clap), and the one place where
//!   `--brokers`/`RILL_BROKERS` and `-X key=value` become client settings.
//! - `cmd::topic`: `rill topic create|list|delete`.
//! - `cmd::metadata`: `rill metadata` (brokers, topics, leaders, API versions).
//! - `cmd::demo`: `rill demo`, the end-to-end demo on a local broker.
//!
//! Errors print as one line on stderr and exit non-zero.

mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cmd::args::Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The final error is printed anyway; RUST_LOG=rill=debug (or
                // rill::broker=debug, …) shows what led to it.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("rill: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(cmd::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rill: {}", cmd::one_line(&*error));
            ExitCode::FAILURE
        }
    };
    // The command is done; a read of standard input still blocked on its
    // thread (`rill produce` stopped by a signal) must not hold the exit.
    runtime.shutdown_background();
    code
}
