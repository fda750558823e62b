//! A broker's link: at most one live [`Connection`], opened on first use and
//! opened again after it breaks, with exponential backoff and jitter between
//! failed attempts (`reconnect.backoff.ms` / `reconnect.backoff.max.ms`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::backoff::{Backoff, jitter};
use super::{BrokerAddress, Connection};
use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::wire::ApiRequest;

/// The way to one broker.
#[derive(Debug)]
pub(crate) struct BrokerLink {
    /// Node id from metadata; bootstrap entries get -1, -2, ….
    id: i32,
    address: BrokerAddress,
    config: Arc<ClientConfig>,
    state: Mutex<LinkState>,
    /// Held while connecting, so that one attempt is made at a time.
    connecting: tokio::sync::Mutex<Backoff>,
}

#[derive(Debug, Default)]
struct LinkState {
    connection: Option<Connection>,
    /// No attempt before this instant (set after a failure).
    retry_at: Option<Instant>,
    /// Whether the last attempt failed (to log transitions, not every retry).
    down: bool,
    /// A failure no retry can mend (an untrusted certificate, a refused
    /// client certificate): every later use fails with it at once.
    fatal: Option<Error>,
    /// A connection was made before: the next one is a reconnect.
    connected_before: bool,
}

impl BrokerLink {
    pub(crate) fn new(id: i32, address: BrokerAddress, config: Arc<ClientConfig>) -> Self {
        let backoff = Backoff::new(config.reconnect_backoff, config.reconnect_backoff_max);
        BrokerLink {
            id,
            address,
            config,
            state: Mutex::new(LinkState::default()),
            connecting: tokio::sync::Mutex::new(backoff),
        }
    }

    pub(crate) fn id(&self) -> i32 {
        self.id
    }

    pub(crate) fn address(&self) -> &BrokerAddress {
        &self.address
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LinkState> {
        // The lock guards plain data and is never held across an await or a
        // call that can panic.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The live connection, if there is one.
    pub(crate) fn connected(&self) -> Option<Connection> {
        let mut state = self.state();
        match &state.connection {
            Some(connection) if !connection.is_closed() => Some(connection.clone()),
            Some(_) => {
                state.connection = None;
                None
            }
            None => None,
        }
    }

    /// When the next connection attempt may start, if it must wait.
    pub(crate) fn retry_at(&self) -> Option<Instant> {
        self.state().retry_at.filter(|at| *at > Instant::now())
    }

    /// Sends a request that is safe to repeat (Metadata, ListOffsets, …),
    /// at the negotiated version unless `version` is given.
    ///
    /// A connection can die without its task having noticed yet (the broker
    /// closed an idle socket); the first request on it then fails with
    /// [`Error::ConnectionClosed`]. That says nothing about the broker, so
    /// the request is sent once more on a fresh connection.
    pub(crate) async fn send_idempotent<R: ApiRequest>(
        &self,
        build: impl Fn(i16) -> R,
        timeout: Duration,
    ) -> Result<(R::Response, Connection)> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let connection = self.connection().await?;
            let version = connection.version_for::<R>()?;
            match connection.send_at(&build(version), version, timeout).await {
                Err(Error::ConnectionClosed { .. }) if attempts == 1 => {
                    debug!(target: "rill::broker", broker = %self.address, api = ?R::KEY, "connection was closed; retrying on a new one");
                }
                result => return result.map(|response| (response, connection)),
            }
        }
    }

    /// A live connection: the current one, or a new one (after waiting out
    /// the backoff of earlier failures).
    pub(crate) async fn connection(&self) -> Result<Connection> {
        if let Some(connection) = self.connected() {
            return Ok(connection);
        }
        let mut backoff = self.connecting.lock().await;
        if let Some(connection) = self.connected() {
            return Ok(connection);
        }
        if let Some(fatal) = self.state().fatal.clone() {
            return Err(fatal);
        }
        if let Some(at) = self.retry_at() {
            tokio::time::sleep_until(at).await;
        }
        // The listener's protocol is asked about at an outage's first failure.
        let diagnose = !self.state().down;
        match Connection::open(&self.address, &self.config, diagnose).await {
            Ok(connection) => {
                backoff.reset();
                let mut state = self.state();
                if state.connected_before {
                    metrics::counter!("rill_client_reconnects_total").increment(1);
                }
                state.connected_before = true;
                if state.down {
                    warn!(target: "rill::broker", broker = %self.address, id = self.id, "broker is reachable again");
                }
                state.connection = Some(connection.clone());
                state.retry_at = None;
                state.down = false;
                state.fatal = None;
                Ok(connection)
            }
            Err(error @ Error::Security { .. }) => {
                // The caller gets the error itself; at `error` level the
                // CLI would print it twice.
                warn!(target: "rill::broker", broker = %self.address, id = self.id, %error, "giving up on this broker");
                self.state().fatal = Some(error.clone());
                Err(error)
            }
            Err(error) => {
                let delay = backoff.next_delay(jitter());
                let mut state = self.state();
                if state.down {
                    debug!(target: "rill::broker", broker = %self.address, id = self.id, %error, retry_in = ?delay, "still unreachable");
                } else {
                    warn!(target: "rill::broker", broker = %self.address, id = self.id, %error, retry_in = ?delay, "broker unreachable");
                }
                state.retry_at = Some(Instant::now() + delay);
                state.down = true;
                Err(error)
            }
        }
    }
}
