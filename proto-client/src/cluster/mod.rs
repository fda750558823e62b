//! The cluster as this client sees it: broker links and metadata.
//!
//! - [`Metadata`] (in `metadata`): immutable snapshots and the merge rules.
//! - `Cluster`: owns the broker links, publishes snapshots through a watch
//!   channel, and refreshes them: on demand, after leadership errors
//!   (coalesced, at most once per `retry.backoff.ms`), and every
//!   `metadata.max.age.ms`. It only ever asks for the topics the client
//!   uses; "all topics" is asked for only by an explicit listing.

pub mod metadata;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiKey, MetadataRequest, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};

pub use metadata::{BrokerInfo, MergeReport, Metadata, PartitionInfo, TopicInfo, TopicScope};

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::net::Connection;
use crate::net::backoff::{Backoff, jitter};
use crate::net::broker::BrokerLink;

/// Broker links and the metadata that routes requests to them.
#[derive(Debug)]
pub(crate) struct Cluster {
    config: Arc<ClientConfig>,
    bootstrap: Vec<Arc<BrokerLink>>,
    /// Links to brokers known from metadata, by node id.
    links: Mutex<HashMap<i32, Arc<BrokerLink>>>,
    /// Links to group coordinators: separate connections, so that a
    /// long-polling Fetch never delays a heartbeat or a commit (and a held
    /// JoinGroup never stalls fetches).
    coordinator_links: Mutex<HashMap<i32, Arc<BrokerLink>>>,
    metadata: watch::Sender<Arc<Metadata>>,
    /// Topics the client works with; the periodic refresh asks for these.
    wanted: Mutex<BTreeSet<String>>,
    refresh_requested: Arc<Notify>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind short critical sections without awaits or panics.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Cluster {
    pub(crate) fn new(config: Arc<ClientConfig>) -> Arc<Cluster> {
        let bootstrap = config
            .bootstrap_servers
            .iter()
            .enumerate()
            .map(|(i, address)| Arc::new(BrokerLink::new(-1 - i as i32, address.clone(), config.clone())))
            .collect();
        Arc::new(Cluster {
            config,
            bootstrap,
            links: Mutex::new(HashMap::new()),
            coordinator_links: Mutex::new(HashMap::new()),
            metadata: watch::Sender::new(Arc::new(Metadata::default())),
            wanted: Mutex::new(BTreeSet::new()),
            refresh_requested: Arc::new(Notify::new()),
        })
    }

    pub(crate) fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The current snapshot.
    pub(crate) fn metadata(&self) -> Arc<Metadata> {
        self.metadata.borrow().clone()
    }

    /// A receiver that sees every new snapshot.
    pub(crate) fn watch(&self) -> watch::Receiver<Arc<Metadata>> {
        self.metadata.subscribe()
    }

    /// Adds topics to those the periodic refresh covers.
    pub(crate) fn want_topics<'a>(&self, topics: impl IntoIterator<Item = &'a str>) {
        let mut wanted = lock(&self.wanted);
        for topic in topics {
            if !wanted.contains(topic) {
                wanted.insert(topic.to_owned());
            }
        }
    }

    /// Asks the background task for a refresh soon. Calls in a burst (many
    /// partitions failing at once) collapse into one request.
    pub(crate) fn request_refresh(&self) {
        self.refresh_requested.notify_one();
    }

    /// The link to a broker known from metadata.
    pub(crate) fn link(&self, id: i32) -> Option<Arc<BrokerLink>> {
        if let Some(link) = lock(&self.links).get(&id) {
            return Some(link.clone());
        }
        let metadata = self.metadata();
        let broker = metadata.brokers.get(&id)?;
        let mut links = lock(&self.links);
        let link = links
            .entry(id)
            .or_insert_with(|| Arc::new(BrokerLink::new(id, broker.address.clone(), self.config.clone())));
        Some(link.clone())
    }

    /// The coordinator connection to broker `id` at `address` (as
    /// FindCoordinator answered), separate from its data connection.
    pub(crate) fn coordinator_link(&self, id: i32, address: crate::net::BrokerAddress) -> Arc<BrokerLink> {
        let mut links = lock(&self.coordinator_links);
        match links.get(&id) {
            Some(link) if *link.address() == address => link.clone(),
            _ => {
                let link = Arc::new(BrokerLink::new(id, address, self.config.clone()));
                links.insert(id, link.clone());
                link
            }
        }
    }

    /// The link to a given broker, refreshing metadata once if it is not
    /// known yet.
    pub(crate) async fn link_to(&self, id: i32) -> Result<Arc<BrokerLink>> {
        if let Some(link) = self.link(id) {
            return Ok(link);
        }
        self.refresh(TopicScope::None).await?;
        self.link(id).ok_or_else(|| Error::UnknownTopicOrPartition(format!("broker {id} is not in metadata")))
    }

    /// A connection to a given broker.
    pub(crate) async fn connection_to(&self, id: i32) -> Result<Connection> {
        self.link_to(id).await?.connection().await
    }

    /// Links in the order to try them for a request any broker can serve:
    /// connected ones first, then those not backing off, then the rest by
    /// when they may be retried; brokers from metadata before bootstrap
    /// entries. Ties are shuffled so that clients spread their load.
    fn candidates(&self) -> Vec<Arc<BrokerLink>> {
        let mut known: Vec<Arc<BrokerLink>> = {
            let metadata = self.metadata();
            metadata.brokers.keys().filter_map(|id| self.link(*id)).collect()
        };
        known.extend(self.bootstrap.iter().cloned());
        let mut keyed: Vec<(u8, Option<Instant>, u64, Arc<BrokerLink>)> = known
            .into_iter()
            .map(|link| {
                let retry_at = link.retry_at();
                let class = match (link.connected().is_some(), retry_at.is_some(), link.id() < 0) {
                    (true, _, _) => 0,
                    (false, false, false) => 1,
                    (false, false, true) => 2,
                    (false, true, _) => 3,
                };
                (class, retry_at, (jitter() * 1e9) as u64, link)
            })
            .collect();
        keyed.sort_by_key(|k| (k.0, k.1, k.2));
        keyed.into_iter().map(|(_, _, _, link)| link).collect()
    }

    /// A connection to whichever broker answers first in [`Self::candidates`]
    /// order. One dead broker is skipped, not fatal.
    pub(crate) async fn any_connection(&self) -> Result<Connection> {
        let mut tried = Vec::new();
        let mut last = None;
        for link in self.candidates() {
            match link.connection().await {
                Ok(connection) => return Ok(connection),
                Err(error) => {
                    tried.push(link.address().to_string());
                    last = Some(error);
                }
            }
        }
        Err(no_broker(tried, last))
    }

    /// Fetches metadata for `scope` from any broker and merges it.
    pub(crate) async fn refresh(&self, scope: TopicScope) -> Result<(Arc<Metadata>, MergeReport)> {
        let mut tried = Vec::new();
        let mut last = None;
        for link in self.candidates() {
            let attempt =
                link.send_idempotent(|version| self.metadata_request(&scope, version), self.config.request_timeout);
            match attempt.await {
                Ok((response, _)) => {
                    if let Some(code) = kafka_protocol::ResponseError::try_from_code(response.error_code) {
                        // Metadata v13: the broker wants us to bootstrap again.
                        last = Some(Error::broker(ApiKey::Metadata, code, "cluster"));
                        tried.push(link.address().to_string());
                        continue;
                    }
                    let mut report = MergeReport::default();
                    self.metadata.send_modify(|snapshot| {
                        let (next, merge_report) = snapshot.merge(&response, &scope);
                        report = merge_report;
                        *snapshot = Arc::new(next);
                    });
                    self.forget_moved_brokers();
                    let snapshot = self.metadata();
                    debug!(
                        target: "rill::metadata",
                        from = %link.address(),
                        brokers = snapshot.brokers.len(),
                        topics = snapshot.topics.len(),
                        stale = report.stale_partitions,
                        leader_changes = report.leader_changes,
                        unknown = ?report.unknown_topics,
                        "metadata refreshed"
                    );
                    return Ok((snapshot, report));
                }
                Err(error) => {
                    debug!(target: "rill::metadata", broker = %link.address(), %error, "metadata request failed");
                    tried.push(link.address().to_string());
                    last = Some(error);
                }
            }
        }
        Err(no_broker(tried, last))
    }

    fn metadata_request(&self, scope: &TopicScope, version: i16) -> MetadataRequest {
        let topics = match scope {
            TopicScope::All => None,
            TopicScope::None => Some(Vec::new()),
            TopicScope::Named(names) => Some(
                names
                    .iter()
                    .map(|name| {
                        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_string(name.clone()))))
                    })
                    .collect(),
            ),
        };
        MetadataRequest::default()
            .with_topics(topics)
            // Before v4 the field does not exist and brokers behave as if true.
            .with_allow_auto_topic_creation(self.config.allow_auto_create_topics || version < 4)
    }

    /// Drops links whose broker left the cluster or moved to another address;
    /// the next use reconnects to the advertised address.
    fn forget_moved_brokers(&self) {
        let metadata = self.metadata();
        lock(&self.links)
            .retain(|id, link| metadata.brokers.get(id).is_some_and(|broker| broker.address == *link.address()));
    }

    /// The scope the periodic refresh covers.
    fn wanted_scope(&self) -> TopicScope {
        let wanted = lock(&self.wanted);
        if wanted.is_empty() { TopicScope::None } else { TopicScope::Named(wanted.iter().cloned().collect()) }
    }

    /// Starts the background refresher. It holds the cluster until aborted
    /// (the client aborts it on drop).
    pub(crate) fn spawn_refresher(self: &Arc<Self>) -> JoinHandle<()> {
        let cluster = self.clone();
        tokio::spawn(async move { cluster.refresh_loop().await })
    }

    async fn refresh_loop(&self) {
        let max_age = self.config.metadata_max_age;
        let min_interval = self.config.retry_backoff;
        let mut backoff = Backoff::new(self.config.retry_backoff, self.config.retry_backoff_max);
        let mut next_periodic = Instant::now() + max_age;
        loop {
            tokio::select! {
                () = self.refresh_requested.notified() => {}
                () = tokio::time::sleep_until(next_periodic) => {}
            }
            match self.refresh(self.wanted_scope()).await {
                Ok(_) => {
                    backoff.reset();
                    next_periodic = Instant::now() + max_age;
                    // Requests that arrive meanwhile are served by one refresh.
                    tokio::time::sleep(min_interval).await;
                }
                Err(error) => {
                    let delay = backoff.next_delay(jitter());
                    warn!(target: "rill::metadata", %error, retry_in = ?delay, "metadata refresh failed");
                    tokio::time::sleep(delay).await;
                    self.refresh_requested.notify_one();
                }
            }
        }
    }
}

fn no_broker(tried: Vec<String>, last: Option<Error>) -> Error {
    Error::NoBrokerAvailable {
        tried: if tried.is_empty() { "no brokers known".to_owned() } else { tried.join(", ") },
        last: Arc::new(last.unwrap_or(Error::Closed)),
    }
}
