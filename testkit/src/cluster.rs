//! One way to run a test body against every broker kind available.
//!
//! Kinds come from `RILL_TEST_BROKERS` (comma-separated: `tansu`, `mock`,
//! `external`); by default `tansu,mock`, or `external` alone when
//! `KAFKA_BOOTSTRAP=host:port,...` names an external cluster (a Kafka or
//! Redpanda container; see docker-compose.yml). A broker that fails to start
//! fails the test, and so does a run in which no broker kind ran: a test
//! never passes without its body.

use std::fmt;
use std::time::Duration;

use rill_client::{Client, ClientConfig, NewTopic};

use crate::TestkitError;
#[cfg(feature = "mock")]
use crate::mock::MockKafka;
use crate::required;
use crate::tansu::Tansu;

/// A kind of broker to test against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// Tansu, a real independent broker (one node).
    Tansu,
    /// librdkafka's mock cluster (several brokers, fault injection).
    Mock,
    /// The cluster named by `KAFKA_BOOTSTRAP`.
    External,
}

impl fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BrokerKind::Tansu => "tansu",
            BrokerKind::Mock => "mock",
            BrokerKind::External => "external",
        })
    }
}

/// Something a test needs that not every broker has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// The CreateTopics and DeleteTopics APIs.
    TopicAdmin,
    /// Several brokers, so that leadership can differ per partition.
    MultipleBrokers,
    /// Fault injection through the broker itself.
    FaultInjection,
}

/// Options for starting test clusters.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Brokers in the mock cluster.
    pub mock_brokers: i32,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { mock_brokers: 3 }
    }
}

enum Running {
    Tansu(Tansu),
    #[cfg(feature = "mock")]
    Mock(MockKafka),
    External,
}

/// A cluster started (or named) for one test.
pub struct TestCluster {
    kind: BrokerKind,
    bootstrap: String,
    running: Running,
}

impl fmt::Debug for TestCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCluster").field("kind", &self.kind).field("bootstrap", &self.bootstrap).finish()
    }
}

/// The broker kinds to test against, from the environment.
pub fn kinds() -> Vec<BrokerKind> {
    let listed = std::env::var("RILL_TEST_BROKERS").ok();
    let default = if std::env::var("KAFKA_BOOTSTRAP").is_ok() { "external" } else { "tansu,mock" };
    listed
        .as_deref()
        .unwrap_or(default)
        .split(',')
        .filter_map(|kind| match kind.trim() {
            "tansu" => Some(BrokerKind::Tansu),
            "mock" => Some(BrokerKind::Mock),
            "external" => Some(BrokerKind::External),
            "" => None,
            other => panic!("RILL_TEST_BROKERS: unknown broker kind `{other}` (tansu, mock, external)"),
        })
        .collect()
}

impl TestCluster {
    /// Starts a cluster of the given kind.
    pub async fn start(kind: BrokerKind, options: &ClusterOptions) -> Result<TestCluster, TestkitError> {
        match kind {
            BrokerKind::Tansu => {
                let tansu = Tansu::start().await?;
                Ok(TestCluster { kind, bootstrap: tansu.bootstrap(), running: Running::Tansu(tansu) })
            }
            #[cfg(feature = "mock")]
            BrokerKind::Mock => {
                let mock = MockKafka::start(options.mock_brokers)?;
                Ok(TestCluster { kind, bootstrap: mock.bootstrap().to_owned(), running: Running::Mock(mock) })
            }
            #[cfg(not(feature = "mock"))]
            BrokerKind::Mock => {
                let _ = options;
                Err(TestkitError::Start("the mock cluster needs rill-testkit's `mock` feature".into()))
            }
            BrokerKind::External => {
                let bootstrap = std::env::var("KAFKA_BOOTSTRAP")
                    .map_err(|_| TestkitError::Start("KAFKA_BOOTSTRAP is not set".into()))?;
                Ok(TestCluster { kind, bootstrap, running: Running::External })
            }
        }
    }

    /// The kind of cluster.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// The bootstrap list.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Whether this cluster has a capability.
    pub fn has(&self, capability: Capability) -> bool {
        match (self.kind, capability) {
            (BrokerKind::Mock, Capability::TopicAdmin) => false,
            (BrokerKind::Tansu, Capability::MultipleBrokers) => false,
            (BrokerKind::Mock, _) => true,
            (_, Capability::FaultInjection) => false,
            _ => true,
        }
    }

    /// Client settings for tests: short timeouts so that a hang fails fast.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(&self.bootstrap)
            .expect("test bootstrap list parses")
            .client_id("rill-test")
            .request_timeout(Duration::from_secs(10))
            .connection_setup_timeout(Duration::from_secs(5))
            .retry_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// A client for this cluster.
    pub fn client(&self) -> Client {
        Client::new(self.client_config()).expect("test client config is valid")
    }

    /// Creates a topic by whatever means the cluster has: CreateTopics, or
    /// the mock cluster's own call (it has no CreateTopics).
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<(), TestkitError> {
        match &self.running {
            #[cfg(feature = "mock")]
            Running::Mock(mock) => {
                let replication = mock.brokers().min(3);
                mock.create_topic(name, partitions, replication)?;
                Ok(())
            }
            _ => {
                self.client().admin().create_topics(&[NewTopic::new(name, partitions)]).await?;
                Ok(())
            }
        }
    }

    /// The mock cluster, for fault injection.
    #[cfg(feature = "mock")]
    pub fn mock(&self) -> Option<&MockKafka> {
        match &self.running {
            Running::Mock(mock) => Some(mock),
            _ => None,
        }
    }

    /// The Tansu broker.
    pub fn tansu(&self) -> Option<&Tansu> {
        match &self.running {
            Running::Tansu(tansu) => Some(tansu),
            _ => None,
        }
    }
}

/// Says which broker a failing test was running against.
struct Announce(BrokerKind);

impl Drop for Announce {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the failure above happened against the {} broker ---", self.0);
        }
    }
}

/// Runs `body` against librdkafka's mock cluster only, for tests that need
/// its fault injection (failing if it cannot start).
#[cfg(feature = "mock")]
pub async fn on_mock(options: ClusterOptions, body: impl AsyncFn(&TestCluster, &MockKafka)) {
    let cluster = required(TestCluster::start(BrokerKind::Mock, &options).await);
    let mock = cluster.mock().expect("a mock cluster");
    body(&cluster, mock).await;
}

/// Runs `body` against every broker kind in [`kinds`], one after another,
/// each on a fresh cluster. Returns the kinds that ran. A broker that does
/// not start fails the test, and so does an empty list of kinds: a test
/// whose body never ran must not pass.
pub async fn each_broker(options: ClusterOptions, body: impl AsyncFn(&TestCluster)) -> Vec<BrokerKind> {
    let kinds = kinds();
    assert!(
        !kinds.is_empty(),
        "RILL_TEST_BROKERS names no broker kind (tansu, mock, external): the test body would not run"
    );
    let mut ran = Vec::new();
    for kind in kinds {
        let cluster = required(TestCluster::start(kind, &options).await);
        let announce = Announce(kind);
        eprintln!("running against the {kind} broker at {}", cluster.bootstrap());
        body(&cluster).await;
        drop(announce);
        ran.push(kind);
    }
    ran
}
