//! What the CLI test files share: running the `rill` binary.

#![allow(dead_code, unreachable_pub, reason = "each test file uses a different part")]

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// `rill` with no settings from the environment (brokers, a config file,
/// log filters).
pub fn command() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rill"));
    command.env_remove("RILL_BROKERS").env_remove("RILL_CONFIG_FILE").env_remove("RUST_LOG");
    command
}

/// Runs `rill args` to the end.
pub fn rill(args: &[&str]) -> Output {
    command().args(args).output().expect("the rill binary runs")
}

/// Runs `rill args` with `input` on its standard input.
pub fn rill_with_input(args: &[&str], input: &[u8]) -> Output {
    let mut child = command()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the rill binary runs");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
