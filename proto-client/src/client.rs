//! [`Client`]: the shared handle the producer, consumer and admin build on.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::cluster::{Cluster, Metadata, TopicScope};
use crate::config::{ClientConfig, ConfigError};
use crate::error::Result;
use crate::net::Connection;

/// A connection to a Kafka cluster: broker links, metadata, and a
/// background task that keeps the metadata fresh.
///
/// Cheap to clone. Nothing connects until the first request; a broker that
/// is down is skipped for requests any broker can serve and retried with
/// backoff for those that need it. Dropping the last clone stops the
/// background task and closes the connections.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cluster: Arc<Cluster>,
    refresher: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.refresher.abort();
    }
}

impl Client {
    /// Creates a client. Must be called inside a tokio runtime.
    pub fn new(config: ClientConfig) -> Result<Client> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::Invalid("a Client must be created inside a tokio runtime".into()).into());
        }
        let cluster = Cluster::new(Arc::new(config));
        let refresher = cluster.spawn_refresher();
        Ok(Client { inner: Arc::new(Inner { cluster, refresher }) })
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        self.inner.cluster.config()
    }

    pub(crate) fn cluster(&self) -> &Arc<Cluster> {
        &self.inner.cluster
    }

    /// The latest metadata snapshot (empty before the first refresh).
    pub fn metadata(&self) -> Arc<Metadata> {
        self.inner.cluster.metadata()
    }

    /// Fetches metadata for `scope` now, from the first broker that answers.
    pub async fn refresh_metadata(&self, scope: TopicScope) -> Result<Arc<Metadata>> {
        Ok(self.inner.cluster.refresh(scope).await?.0)
    }

    /// A connection to the broker with this node id (from metadata).
    pub async fn broker_connection(&self, id: i32) -> Result<Connection> {
        self.inner.cluster.connection_to(id).await
    }

    /// A connection to any broker that answers.
    pub async fn any_connection(&self) -> Result<Connection> {
        self.inner.cluster.any_connection().await
    }

    /// Admin operations: topics and offsets.
    pub fn admin(&self) -> Admin {
        Admin::new(self.clone())
    }
}
