//! `rill-testkit`: real brokers for Rill's tests, fault injection, and
//! helpers. Tests start what they need themselves.
//!
//! # Layout
//!
//! - [`tansu`]: Tansu, an independent Kafka-compatible broker, through
//!   `rill-cli`'s launcher (pinned PyPI wheel, cached under `target/`), the
//!   one `rill demo` uses; and Tansu behind the fault proxy.
//! - [`mock`] (feature `mock`): librdkafka's mock cluster: N brokers and fault
//!   injection. Only ever enabled from dev-dependencies.
//! - [`cluster`]: one way to run a test body against every broker kind
//!   available ([`each_broker`]), with per-kind capability gaps.
//! - [`proxy`]: a seeded fault-injecting TCP proxy (delay, cut, blackhole,
//!   truncate).
//! - [`kafka_proxy`] (feature `kafka-proxy`): a proxy that reads Kafka
//!   frames, sits in front of every broker of a cluster (it rewrites the
//!   addresses brokers advertise), answers or re-answers chosen requests.
//! - [`read`]: reads a partition back with Rill's own decoder.
//! - [`tls`] (feature `tls`): stunnel in front of Tansu, certificates made
//!   by each test.
//! - [`sasl`] (feature `tls`): a SASL gate in front of Tansu (PLAIN, SCRAM
//!   by the `scramp` package, OAUTHBEARER, re-authentication), SASL_SSL
//!   with the test certificates.
//! - [`unique_topic`]: topic names that never collide between tests.

pub mod cluster;
#[cfg(feature = "kafka-proxy")]
pub mod kafka_proxy;
#[cfg(feature = "mock")]
pub mod mock;
pub mod proxy;
pub mod read;
#[cfg(feature = "tls")]
pub mod sasl;
pub mod tansu;
#[cfg(feature = "tls")]
pub mod tls;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use cluster::{BrokerKind, Capability, ClusterOptions, TestCluster, each_broker};
#[cfg(feature = "kafka-proxy")]
pub use kafka_proxy::{KafkaProxy, RequestFault, Schedule};
pub use proxy::{Chaos, Fault, Proxy};
pub use tansu::{Tansu, TansuOptions};

/// Waits until `ready()` holds for a helper process just started
/// (stunnel, the SASL gate): an error with `log()` if it exits first or is
/// not ready within `within`.
#[cfg(feature = "tls")]
pub(crate) fn wait_started(
    child: &mut std::process::Child,
    what: &str,
    within: std::time::Duration,
    ready: impl Fn() -> bool,
    log: impl Fn() -> String,
) -> Result<(), TestkitError> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(TestkitError::Start(format!("{what} exited with {status}: {}", log())));
        }
        if ready() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(TestkitError::Start(format!("{what} was not ready within {within:?}: {}", log())));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// What can go wrong starting test infrastructure.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// A broker could not be installed.
    #[error("install: {0}")]
    Install(String),
    /// A broker could not be started.
    #[error("start: {0}")]
    Start(String),
    /// The mock cluster refused a command.
    #[error("mock cluster: {0}")]
    Mock(String),
    /// Tansu could not be installed or started.
    #[error(transparent)]
    Local(#[from] rill_cli::local::LocalError),
    /// A client call failed.
    #[error(transparent)]
    Client(#[from] rill_client::Error),
}

/// What a test needs. A fixture that cannot be had here fails the test:
/// a test never passes without running what it asserts. Leave tests out
/// with a filter instead (`cargo nextest run -E 'not test(/tansu/)'`), which
/// nextest reports as skipped.
pub fn required<T, E: std::fmt::Display>(started: Result<T, E>) -> T {
    started.unwrap_or_else(|error| {
        panic!(
            "a test fixture did not start: {error}\n(the tests install Tansu from PyPI with python3 and pip, and \
             build librdkafka's mock cluster with gcc and make)"
        )
    })
}

/// A topic name no other test (or earlier run) uses:
/// `{prefix}-{pid}-{counter}-{time}`.
pub fn unique_topic(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() % 1_000_000);
    format!("{prefix}-{}-{n}-{micros}", std::process::id())
}

pub use rill_cli::local::{cache_dir, pip};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_unique_and_valid() {
        let a = unique_topic("t");
        let b = unique_topic("t");
        assert_ne!(a, b);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'));
    }
}
