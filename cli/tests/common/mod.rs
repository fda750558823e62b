//! What the CLI test files share: running the `rill` binary.

#![allow(dead_code, unreachable_pub, reason = "each test file uses a different part")]

use std::io::Write;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

/// Sends SIGTERM to a child `rill`.
pub fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

/// Waits for the child to exit, at most `within`.
pub fn exit_status(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "rill did not stop within {within:?} of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
