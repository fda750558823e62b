//! The `rill` binary against a secured listener: SASL_SSL (SCRAM-SHA-512)
//! through the testkit's SASL gate, all settings from a properties file
//! (`-F`), `-X` on top; a wrong password is one line on stderr and a
//! non-zero exit, fast.

mod common;

use std::path::Path;
use std::process::Output;

use common::rill_with_input as rill;
use std::time::{Duration, Instant};

use rill_testkit::sasl::{SaslOptions, SaslTansu};
use rill_testkit::tls::TestCertificates;

fn ok(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rill failed ({}): {stderr}", output.status);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn write_properties(path: &Path, bootstrap: &str, ca: &Path, password: &str) {
    let text = format!(
        "# a client.properties as Java and librdkafka read it\n\
         bootstrap.servers={bootstrap}\n\
         security.protocol=SASL_SSL\n\
         ssl.ca.location={}\n\
         sasl.mechanism=SCRAM-SHA-512\n\
         sasl.username=cli-user\n\
         sasl.password={password}\n",
        ca.display()
    );
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_takes_a_properties_file_for_sasl_ssl() {
    let certificates = rill_testkit::required(TestCertificates::generate());
    let gate = rill_testkit::required(
        SaslTansu::start(SaslOptions::new().user("cli-user", "cli-secret").tls(&certificates)).await,
    );
    let file = certificates.dir().join("client.properties");
    write_properties(&file, &gate.bootstrap_by_name(), &certificates.ca, "cli-secret");
    let file = file.to_str().unwrap();
    let topic = rill_testkit::unique_topic("cli-sasl");

    ok(&rill(&["topic", "create", "-F", file, "--partitions", "2", &topic], b""));
    assert!(ok(&rill(&["topic", "list", "-F", file], b"")).contains(&topic));
    assert!(ok(&rill(&["metadata", "--config-file", file], b"")).contains(&topic));
    let lines: String = (0..300).map(|i| format!("k{i}:line {i}\n")).collect();
    ok(&rill(&["produce", "-F", file, "-t", &topic, "-K", ":"], lines.as_bytes()));
    let consumed = ok(&rill(&["consume", "-F", file, "-t", &topic, "-e", "-f", "%k=%v\\n"], b""));
    let mut got: Vec<&str> = consumed.lines().collect();
    got.sort();
    let mut expected: Vec<String> = (0..300).map(|i| format!("k{i}=line {i}")).collect();
    expected.sort();
    assert_eq!(got, expected);
    // -X overrides the file: the client id reaches the gate's broker; an
    // unknown key in -X is named.
    let output = rill(&["metadata", "-F", file, "-X", "no.such.key=1"], b"");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no.such.key"));
    let authenticated = gate.events_of("authenticated");
    assert!(
        authenticated.len() >= 5 && authenticated.iter().all(|e| e.get("mechanism") == "SCRAM-SHA-512"),
        "{authenticated:?}"
    );

    // A wrong password: one line, non-zero, within the setup timeout.
    let wrong = certificates.dir().join("wrong.properties");
    write_properties(&wrong, &gate.bootstrap_by_name(), &certificates.ca, "not-the-secret");
    let started = Instant::now();
    let output = rill(&["metadata", "-F", wrong.to_str().unwrap()], b"");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("SASL SCRAM-SHA-512 authentication as `cli-user` failed"), "{stderr}");
    assert!(!stderr.contains("not-the-secret"), "the password shows: {stderr}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}
