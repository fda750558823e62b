//! A SASL listener in front of Tansu: the testkit's SASL gate
//! (`sasl_gate.py`, Python), whose SCRAM server is the `scramp` package,
//! an implementation independent of every Kafka client. Tansu advertises
//! the gate's port, so every connection a client opens goes through it.
//!
//! What the gate does: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER
//! with unsecured JWTs (`alg: none`, a `sub` and an `exp` in the future),
//! SaslHandshake v1 + SaslAuthenticate v0-2; session lifetimes and
//! re-authentication (KIP-368), closing a connection whose session ended;
//! TLS (Python's `ssl`, OpenSSL) for SASL_SSL with the test certificates.
//! Every authentication, refusal and expiry is an event the test can read
//! ([`SaslTansu::events`]).
//!
//! What it does not do: SaslHandshake v0 (raw SASL tokens), GSSAPI,
//! signed JWTs, ACLs (an authenticated user may do anything), SCRAM
//! credentials changed at run time, and speed (every frame passes through
//! Python: fine for correctness tests, not for benchmarks).
//!
//! `scramp` 1.5.0 and `asn1crypto` 1.5.1 are installed with pip (hashes
//! pinned) into the test cache on first use, as Tansu is.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::TestkitError;
use crate::tansu::{Tansu, TansuOptions};
use crate::tls::TestCertificates;

const GATE: &str = include_str!("sasl_gate.py");
const SCRAMP: [(&str, &str); 2] = [
    ("scramp==1.5.0", "8280608f568e81da9e9c9d69cac1331b836622d9b48bf5c5e400e16129c6d1fa"),
    ("asn1crypto==1.5.1", "db4e40728b728508912cbb3d44f19ce188f218e9eba635821bb4b68564f8fd67"),
];
const SCRAMP_DIR: &str = "python-scramp-1.5.0";

/// What the gate accepts.
#[derive(Debug, Clone, Default)]
pub struct SaslOptions {
    users: Vec<(String, String)>,
    mechanisms: Vec<String>,
    session_lifetime: Option<Duration>,
    tls: Option<(PathBuf, PathBuf)>,
}

impl SaslOptions {
    /// No users yet, every mechanism, sessions without end, no TLS.
    pub fn new() -> Self {
        SaslOptions::default()
    }

    /// A user of PLAIN and SCRAM (OAUTHBEARER takes any `sub`).
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }

    /// Offer only these mechanisms (repeatable); default all four.
    pub fn mechanism(mut self, name: &str) -> Self {
        self.mechanisms.push(name.to_owned());
        self
    }

    /// Sessions end after this (KIP-368); an OAUTHBEARER session ends at
    /// its token's expiry if that comes first.
    pub fn session_lifetime(mut self, lifetime: Duration) -> Self {
        self.session_lifetime = Some(lifetime);
        self
    }

    /// TLS with the test certificates' broker certificate: SASL_SSL.
    pub fn tls(mut self, certificates: &TestCertificates) -> Self {
        self.tls = Some((certificates.server_cert.clone(), certificates.server_key.clone()));
        self
    }
}

/// One line the gate printed: `authenticated conn=3 mechanism=PLAIN ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateEvent {
    /// `authenticated`, `refused`, `expired`, `closed`.
    pub kind: String,
    /// The `key=value` fields.
    pub fields: BTreeMap<String, String>,
}

impl GateEvent {
    /// A field, or `""`.
    pub fn get(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }
}

/// Tansu reachable only through the SASL gate.
#[derive(Debug)]
pub struct SaslTansu {
    gate: Child,
    port: u16,
    dir: PathBuf,
    events: PathBuf,
    /// The broker behind the gate (plaintext, no authentication, on its own
    /// port).
    pub tansu: Tansu,
}

impl SaslTansu {
    /// Starts Tansu advertising a free port, and the gate on it.
    pub async fn start(options: SaslOptions) -> Result<SaslTansu, TestkitError> {
        let site = crate::pip::install(SCRAMP_DIR, &SCRAMP, |dir| dir.join("scramp").join("__init__.py").is_file())?;
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| TestkitError::Start(e.to_string()))?;
            probe.local_addr().map_err(|e| TestkitError::Start(e.to_string()))?.port()
        };
        let tansu = Tansu::start_with(TansuOptions { advertised_port: Some(port) }).await?;
        let dir = std::env::temp_dir().join(crate::unique_topic("rill-sasl"));
        fs::create_dir_all(&dir).map_err(|e| TestkitError::Start(format!("{}: {e}", dir.display())))?;
        let script = dir.join("sasl_gate.py");
        fs::write(&script, GATE).map_err(|e| TestkitError::Start(format!("{}: {e}", script.display())))?;
        let events = dir.join("events.log");
        let stdout = fs::File::create(&events).map_err(|e| TestkitError::Start(e.to_string()))?;
        let stderr = fs::File::create(dir.join("stderr.log")).map_err(|e| TestkitError::Start(e.to_string()))?;
        let mut command = Command::new(crate::pip::python());
        command
            .arg(&script)
            .args(["--port", &port.to_string(), "--broker", &format!("127.0.0.1:{}", tansu.listen_port())])
            .env("PYTHONPATH", &site)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (name, password) in &options.users {
            command.arg("--user").arg(format!("{name}:{password}"));
        }
        for mechanism in &options.mechanisms {
            command.args(["--mechanism", mechanism]);
        }
        if let Some(lifetime) = options.session_lifetime {
            command.args(["--session-lifetime-ms", &lifetime.as_millis().to_string()]);
        }
        if let Some((cert, key)) = &options.tls {
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let gate = command.spawn().map_err(|e| TestkitError::Start(format!("cannot run the SASL gate: {e}")))?;
        let mut fixture = SaslTansu { gate, port, dir, events, tansu };
        let (events, stderr) = (fixture.events.clone(), fixture.dir.join("stderr.log"));
        crate::wait_started(
            &mut fixture.gate,
            "the SASL gate",
            Duration::from_secs(20),
            || fs::read_to_string(&events).unwrap_or_default().starts_with("listening "),
            || fs::read_to_string(&stderr).unwrap_or_default(),
        )?;
        Ok(fixture)
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    /// `127.0.0.1:port` of the SASL listener.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `localhost:port`: the name the test certificate gives.
    pub fn bootstrap_by_name(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// Everything the gate reported so far, in order.
    pub fn events(&self) -> Vec<GateEvent> {
        let text = fs::read_to_string(&self.events).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let mut parts = line.split(' ');
                let kind = parts.next()?.to_owned();
                let fields =
                    parts.filter_map(|p| p.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
                Some(GateEvent { kind, fields })
            })
            .collect()
    }

    /// The events of one kind.
    pub fn events_of(&self, kind: &str) -> Vec<GateEvent> {
        self.events().into_iter().filter(|e| e.kind == kind).collect()
    }
}

impl Drop for SaslTansu {
    fn drop(&mut self) {
        let _ = self.gate.kill();
        let _ = self.gate.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- SASL gate events ---\n{}\n--- SASL gate stderr ---\n{}",
                fs::read_to_string(&self.events).unwrap_or_default(),
                self.stderr()
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
