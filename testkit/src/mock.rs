//! librdkafka's in-process mock cluster, through the `rdkafka` crate.
//!
//! N brokers on random loopback ports with fault injection: request errors,
//! broker down/up, round-trip time, leader moves, API version limits.
//!
//! The cluster handle is not `Send`, so it lives on a thread of its own and
//! [`MockKafka`] talks to it over a channel; the handle can then be used from
//! any task.
//!
//! Where the mock departs from Kafka (see FIXTURES.md): no CreateTopics,
//! DeleteTopics, DescribeGroups, ListGroups or DescribeConfigs; ApiVersions
//! v3 gets UNSUPPORTED_VERSION with a non-v0 body; group APIs misparse
//! flexible versions (capped below); unknown topics are
//! auto-created with 4 partitions; plain idempotent batches are not
//! sequence-checked; each partition keeps only 5 MiB or 100,000 message sets;
//! a non-transactional InitProducerId v3 carrying an existing pid/epoch
//! crashes the process.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer as _};
pub use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use crate::TestkitError;

type Reply = mpsc::Sender<Result<(), String>>;

enum Command {
    CreateTopic { name: String, partitions: i32, replication_factor: i32 },
    BrokerDown(i32),
    BrokerUp(i32),
    RoundTripTime(i32, Duration),
    RequestErrors(RDKafkaApiKey, Vec<RDKafkaRespErr>),
    ClearRequestErrors(RDKafkaApiKey),
    PartitionLeader { topic: String, partition: i32, broker: Option<i32> },
    ApiVersion(RDKafkaApiKey, Option<i16>, Option<i16>),
    TopicError(String, RDKafkaRespErr),
    GroupCoordinator(String, i32),
    ConsumerGroupTimes { session: Duration, heartbeat: Duration },
}

/// A running mock cluster.
#[derive(Debug)]
pub struct MockKafka {
    commands: Option<mpsc::Sender<(Command, Reply)>>,
    bootstrap: String,
    brokers: i32,
    thread: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock command")
    }
}

impl MockKafka {
    /// Starts a cluster of `brokers` brokers, ids 1..=brokers.
    pub fn start(brokers: i32) -> Result<MockKafka, TestkitError> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, String>>();
        let (commands, receiver) = mpsc::channel::<(Command, Reply)>();
        let thread = thread::Builder::new()
            .name("rill-mock-kafka".into())
            .spawn(move || {
                // Made through a client's `test.mock.num.brokers` rather
                // than `MockCluster::new`: the client's handle also reaches
                // the mock functions the crate does not wrap (KIP-848 group
                // timings).
                let client: BaseProducer = match rdkafka::ClientConfig::new()
                    .set("test.mock.num.brokers", brokers.to_string())
                    .set("log_level", "3")
                    .create()
                {
                    Ok(client) => client,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let Some(cluster) = client.client().mock_cluster() else {
                    let _ = ready_tx.send(Err("the client made no mock cluster".into()));
                    return;
                };
                // The mock's group handlers read arrays as plain i32 counts,
                // so they are only right up to the versions librdkafka
                // itself sends; past them (flexible JoinGroup v6 and
                // SyncGroup v4, LeaveGroup v3's member list) they misparse
                // and close the connection. Offer only those versions.
                for (api, max) in
                    [(RDKafkaApiKey::JoinGroup, 5), (RDKafkaApiKey::SyncGroup, 3), (RDKafkaApiKey::LeaveGroup, 2)]
                {
                    if let Err(e) = cluster.apiversion(api, Some(0), Some(max)) {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Ends when the handle is dropped; the cluster goes with it.
                for (command, reply) in receiver {
                    let _ = reply.send(apply(&client, &cluster, command));
                }
            })
            .map_err(|e| TestkitError::Start(format!("cannot start the mock cluster thread: {e}")))?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| TestkitError::Start("mock cluster thread died".into()))?
            .map_err(|e| TestkitError::Start(format!("mock cluster: {e}")))?;
        Ok(MockKafka { commands: Some(commands), bootstrap, brokers, thread: Some(thread) })
    }

    /// The comma-separated bootstrap list.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Number of brokers.
    pub fn brokers(&self) -> i32 {
        self.brokers
    }

    fn run(&self, command: Command) -> Result<(), TestkitError> {
        let (reply, answer) = mpsc::channel();
        self.commands
            .as_ref()
            .expect("commands live until drop")
            .send((command, reply))
            .map_err(|_| TestkitError::Mock("mock cluster thread is gone".into()))?;
        answer.recv().map_err(|_| TestkitError::Mock("mock cluster thread is gone".into()))?.map_err(TestkitError::Mock)
    }

    /// Creates a topic (the mock has no CreateTopics API), with each
    /// partition's leader chosen by [`spread_leaders`] rather than the
    /// mock's own random pick among the replicas, so a test sees the same
    /// layout every run (a random pick put all six partitions of a topic on
    /// one broker once in 243 runs).
    pub fn create_topic(&self, name: &str, partitions: i32, replication_factor: i32) -> Result<(), TestkitError> {
        self.run(Command::CreateTopic { name: name.into(), partitions, replication_factor })?;
        for (partition, leader) in spread_leaders(partitions, replication_factor, self.brokers).into_iter().enumerate()
        {
            self.partition_leader(name, partition as i32, Some(leader))?;
        }
        Ok(())
    }

    /// Takes a broker down: its connections close, new ones are refused.
    pub fn broker_down(&self, broker: i32) -> Result<(), TestkitError> {
        self.run(Command::BrokerDown(broker))
    }

    /// Brings a broker back.
    pub fn broker_up(&self, broker: i32) -> Result<(), TestkitError> {
        self.run(Command::BrokerUp(broker))
    }

    /// Adds round-trip time to a broker's responses.
    pub fn round_trip_time(&self, broker: i32, rtt: Duration) -> Result<(), TestkitError> {
        self.run(Command::RoundTripTime(broker, rtt))
    }

    /// The next requests of an API get these errors, in order.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) -> Result<(), TestkitError> {
        self.run(Command::RequestErrors(api, errors.to_vec()))
    }

    /// Forgets queued request errors of an API.
    pub fn clear_request_errors(&self, api: RDKafkaApiKey) -> Result<(), TestkitError> {
        self.run(Command::ClearRequestErrors(api))
    }

    /// Moves a partition's leadership (`None`: no leader).
    pub fn partition_leader(&self, topic: &str, partition: i32, broker: Option<i32>) -> Result<(), TestkitError> {
        self.run(Command::PartitionLeader { topic: topic.into(), partition, broker })
    }

    /// Metadata answers for `topic` carry this error (use
    /// `RD_KAFKA_RESP_ERR_NO_ERROR` to clear it).
    pub fn topic_error(&self, topic: &str, error: RDKafkaRespErr) -> Result<(), TestkitError> {
        self.run(Command::TopicError(topic.into(), error))
    }

    /// Makes `broker` the coordinator of `group`.
    pub fn group_coordinator(&self, group: &str, broker: i32) -> Result<(), TestkitError> {
        self.run(Command::GroupCoordinator(group.into(), broker))
    }

    /// The session timeout and heartbeat interval of KIP-848 groups
    /// (`group.consumer.session.timeout.ms` and
    /// `group.consumer.heartbeat.interval.ms` on Kafka; the mock's defaults
    /// are 30 s and 3 s). A group takes them at its next heartbeat.
    pub fn consumer_group_times(&self, session: Duration, heartbeat: Duration) -> Result<(), TestkitError> {
        self.run(Command::ConsumerGroupTimes { session, heartbeat })
    }

    /// Limits the versions an API is offered at; `None, None` removes it.
    pub fn api_version(&self, api: RDKafkaApiKey, min: Option<i16>, max: Option<i16>) -> Result<(), TestkitError> {
        self.run(Command::ApiVersion(api, min, max))
    }
}

/// The leader of each partition of a new topic: of the replicas the mock
/// gives a partition, the one leading the fewest partitions so far (the
/// first in turn on a tie), so leadership is spread as evenly as the
/// replicas allow.
pub fn spread_leaders(partitions: i32, replication_factor: i32, brokers: i32) -> Vec<i32> {
    let mut led = vec![0usize; brokers as usize];
    (0..partitions)
        .map(|partition| {
            let replicas = mock_replicas(partition, replication_factor, brokers);
            let turn = partition as usize % replicas.len();
            let leader = (0..replicas.len())
                .map(|i| replicas[(turn + i) % replicas.len()])
                .min_by_key(|broker| led[*broker as usize - 1])
                .expect("at least one replica");
            led[leader as usize - 1] += 1;
            leader
        })
        .collect()
}

/// The replicas the mock assigns a partition (rdkafka_mock.c,
/// `rd_kafka_mock_partition_assign_replicas`).
fn mock_replicas(partition: i32, replication_factor: i32, brokers: i32) -> Vec<i32> {
    let first = (partition * replication_factor.max(1)) % brokers;
    (0..replication_factor.clamp(1, brokers)).map(|i| (first + i) % brokers + 1).collect()
}

fn apply(
    client: &BaseProducer,
    cluster: &MockCluster<'_, DefaultProducerContext>,
    command: Command,
) -> Result<(), String> {
    let result = match command {
        Command::CreateTopic { name, partitions, replication_factor } => {
            cluster.create_topic(&name, partitions, replication_factor)
        }
        Command::BrokerDown(id) => cluster.broker_down(id),
        Command::BrokerUp(id) => cluster.broker_up(id),
        Command::RoundTripTime(id, rtt) => cluster.broker_round_trip_time(id, rtt),
        Command::RequestErrors(api, errors) => {
            cluster.request_errors(api, &errors);
            Ok(())
        }
        Command::ClearRequestErrors(api) => {
            cluster.clear_request_errors(api);
            Ok(())
        }
        Command::PartitionLeader { topic, partition, broker } => cluster.partition_leader(&topic, partition, broker),
        Command::ApiVersion(api, min, max) => cluster.apiversion(api, min, max),
        Command::TopicError(topic, error) => cluster.topic_error(&topic, error),
        Command::GroupCoordinator(group, broker) => {
            cluster.coordinator(rdkafka::mocking::MockCoordinator::Group(group), broker)
        }
        Command::ConsumerGroupTimes { session, heartbeat } => {
            consumer_group_times(client, session, heartbeat);
            Ok(())
        }
    };
    result.map_err(|e| e.to_string())
}

/// `rd_kafka_mock_set_group_consumer_{session_timeout,heartbeat_interval}_ms`,
/// which the `rdkafka` crate does not wrap.
#[allow(unsafe_code, reason = "two librdkafka mock setters the rdkafka crate does not wrap")]
fn consumer_group_times(client: &BaseProducer, session: Duration, heartbeat: Duration) {
    let millis = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `client` is alive for the whole call and was made with
    // `test.mock.num.brokers`, so its handle owns a mock cluster that lives
    // as long as it does; the setters take the cluster's lock and copy the
    // integers.
    unsafe {
        let mock = rdkafka::bindings::rd_kafka_handle_mock_cluster(client.client().native_ptr());
        assert!(!mock.is_null(), "the client has a mock cluster");
        rdkafka::bindings::rd_kafka_mock_set_group_consumer_session_timeout_ms(mock, millis(session));
        rdkafka::bindings::rd_kafka_mock_set_group_consumer_heartbeat_interval_ms(mock, millis(heartbeat));
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{mock_replicas, spread_leaders};

    #[test]
    fn leaders_are_replicas_and_spread_over_the_brokers() {
        for (replication_factor, brokers) in [(1, 1), (1, 3), (2, 3), (3, 3), (3, 5), (5, 3)] {
            let mut leaders = BTreeSet::new();
            for (partition, leader) in spread_leaders(12, replication_factor, brokers).into_iter().enumerate() {
                let partition = partition as i32;
                assert!(
                    mock_replicas(partition, replication_factor, brokers).contains(&leader),
                    "partition {partition}, rf {replication_factor}, {brokers} brokers: {leader} is not a replica"
                );
                leaders.insert(leader);
            }
            assert_eq!(leaders.len(), brokers as usize, "rf {replication_factor}, {brokers} brokers: {leaders:?}");
        }
    }
}
