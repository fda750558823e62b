//! Tansu for tests: `rill-cli`'s launcher (the one `rill demo` uses), and
//! a broker behind the fault proxy.
//!
//! Where Tansu departs from Kafka (see FIXTURES.md): it holds each JoinGroup
//! for half the session timeout; InitProducerId needs v3+; ListOffsets
//! "latest" returns the newest batch's base offset + 1, not the high
//! watermark; fetch sessions are not supported; aborted records are not
//! hidden under read_committed.

pub use rill_cli::local::{Tansu, TansuOptions, tansu_binary as binary};

use crate::TestkitError;

/// Starts a broker reachable only through a fault proxy: it advertises the
/// proxy's port, so every byte between client and broker passes the proxy.
pub async fn behind_proxy(seed: u64) -> Result<(Tansu, crate::Proxy), TestkitError> {
    let mut proxy = crate::Proxy::bind(seed).await?;
    let tansu = Tansu::start_with(TansuOptions { advertised_port: Some(proxy.port()) }).await?;
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], tansu.listen_port()));
    proxy.forward_to(upstream);
    Ok((tansu, proxy))
}
