//! `rill broker`: a local Tansu broker for trying `rill` and the library
//! examples, kept running until SIGINT or SIGTERM.

use rill_cli::local::Tansu;

use super::CliError;

pub(crate) async fn run() -> Result<(), CliError> {
    let stop = super::stop_signal()?;
    eprintln!("rill: starting a local Tansu broker (the first run installs it with pip)...");
    let tansu = Tansu::start().await?;
    // The address alone on stdout, for scripts: BROKERS=$(rill broker | head -1).
    println!("{}", tansu.bootstrap());
    eprintln!(
        "rill: Tansu is up at {} (pid {}), storage in memory: its topics go when it stops. Try `rill metadata -b \
         {}`; SIGINT or SIGTERM stops it.",
        tansu.bootstrap(),
        tansu.pid(),
        tansu.bootstrap()
    );
    stop.await;
    drop(tansu);
    eprintln!("rill: the broker is stopped");
    Ok(())
}
