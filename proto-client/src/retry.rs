//! Retrying an operation under one deadline, with backoff.
//!
//! The caller loops; after each failure it asks [`Retrier::after`], which
//! gives up on fatal errors and at the deadline, and otherwise sleeps the
//! backoff and says what the error calls for (a metadata refresh, say).

use std::time::Duration;

use tokio::time::Instant;
use tracing::debug;

use crate::config::ClientConfig;
use crate::error::{Error, ErrorAction};
use crate::net::backoff::{Backoff, jitter};

/// Backoff and deadline of one operation.
#[derive(Debug)]
pub(crate) struct Retrier {
    operation: String,
    timeout: Duration,
    deadline: Instant,
    backoff: Backoff,
}

impl Retrier {
    pub(crate) fn new(config: &ClientConfig, operation: impl Into<String>, timeout: Duration) -> Self {
        Retrier {
            operation: operation.into(),
            timeout,
            deadline: Instant::now() + timeout,
            backoff: Backoff::new(config.retry_backoff, config.retry_backoff_max),
        }
    }

    /// Time left before the deadline.
    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// After `error`: `Err` to give up (fatal, or no time left for another
    /// try), or, after the backoff, `Ok` with what the error calls for.
    pub(crate) async fn after(&mut self, error: Error) -> Result<ErrorAction, Error> {
        let action = error.action();
        if action == ErrorAction::Fatal {
            return Err(error);
        }
        let delay = self.backoff.next_delay(jitter());
        if Instant::now() + delay >= self.deadline {
            debug!(target: "rill::retry", operation = %self.operation, %error, "giving up at the deadline");
            return Err(Error::Timeout {
                operation: format!("{} (last error: {error})", self.operation),
                after: self.timeout,
            });
        }
        debug!(target: "rill::retry", operation = %self.operation, %error, retry_in = ?delay, "retrying");
        tokio::time::sleep(delay).await;
        Ok(action)
    }
}
