//! Sockets. Tokio starts here.
//!
//! - [`Connection`]: one TCP connection to one broker; pipelined requests
//!   matched to replies by correlation id; per-request timeouts; a frame
//!   size cap.
//! - `broker`: a broker's link: lazy connect, reconnect with backoff.
//! - `backoff`: exponential backoff with jitter (pure).
//! - `probe`: which protocol a listener speaks, when a connection fails as
//!   a wrong `security.protocol` makes it fail.
//! - [`security`]: `security.protocol` and the TLS settings (rustls on ring).
//! - [`sasl`]: the `sasl.*` settings and each mechanism's exchange (pure).

pub mod backoff;
pub(crate) mod broker;
mod connection;
mod probe;
pub mod sasl;
pub mod security;

pub use connection::Connection;
pub use security::{Secret, SecurityProtocol};

use std::fmt;

/// `N` bytes from the system's secure random source (SCRAM nonces, group
/// member ids).
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    bytes
}

/// `host:port` of a broker, as configured or as advertised in metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BrokerAddress {
    /// DNS name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl BrokerAddress {
    /// The port used when a bootstrap entry has none.
    pub const DEFAULT_PORT: u16 = 9092;

    /// A broker address.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        BrokerAddress { host: host.into(), port }
    }

    /// Parses `host:port`, `host`, `[v6]:port` or `[v6]`. An optional
    /// `scheme://` prefix (`PLAINTEXT://`, as Kafka listeners are written)
    /// is accepted and dropped.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let text = text.split_once("://").map_or(text, |(_, rest)| rest);
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| format!("`{text}`: unclosed `[`"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(after.strip_prefix(':').ok_or_else(|| format!("`{text}`: expected `:port` after `]`"))?),
                ),
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, _)) if host.contains(':') => {
                    return Err(format!("`{text}`: write IPv6 addresses as [address]:port"));
                }
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{text}`: empty host"));
        }
        let port = match port {
            None => Self::DEFAULT_PORT,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{text}`: `{port}` is not a port"))?,
        };
        Ok(BrokerAddress::new(host, port))
    }
}

impl fmt::Display for BrokerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_people_write() {
        let cases = [
            ("localhost:9093", ("localhost", 9093)),
            ("kafka-1.example.com", ("kafka-1.example.com", 9092)),
            ("10.0.0.1:19092", ("10.0.0.1", 19092)),
            ("[::1]:9094", ("::1", 9094)),
            ("[fe80::1]", ("fe80::1", 9092)),
            ("PLAINTEXT://broker:9092", ("broker", 9092)),
            (" spaced:1 ", ("spaced", 1)),
        ];
        for (text, (host, port)) in cases {
            assert_eq!(BrokerAddress::parse(text), Ok(BrokerAddress::new(host, port)), "{text}");
        }
        for bad in ["", ":9092", "host:", "host:0", "host:65536", "host:x", "::1:9092", "[::1", "[::1]9092"] {
            assert!(BrokerAddress::parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(BrokerAddress::new("::1", 1).to_string(), "[::1]:1");
    }
}
