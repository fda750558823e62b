//! [`ClientConfig`]: what every Kafka client of this crate shares, with
//! documented defaults, plus [`ClientConfig::from_properties`] for the
//! librdkafka/Java property names.
//!
//! Typed setters are the API; string properties go through one table
//! ([`ClientConfig::set_property`]) so an unknown or malformed key is an
//! error that names it.

use std::time::Duration;

use std::sync::Arc;

use crate::net::BrokerAddress;
use crate::net::sasl::{OAuthBearerTokenProvider, SaslMechanism, SaslSettings, TokenSource};
use crate::net::security::{Secret, SecurityProtocol, TlsSettings};

/// A configuration key or value that was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The property name is not one this client knows.
    #[error("unknown configuration property `{key}`")]
    UnknownKey {
        /// The offending key.
        key: String,
    },
    /// The value does not parse or is out of range.
    #[error("invalid value `{value}` for `{key}`: {reason}")]
    InvalidValue {
        /// The property.
        key: String,
        /// The value given.
        value: String,
        /// What was expected.
        reason: String,
    },
    /// A property this client knows but does not support yet, or one the
    /// application owns and a caller may not override.
    #[error("`{key}` cannot be set: {reason}")]
    NotAllowed {
        /// The property.
        key: String,
        /// Why not.
        reason: String,
    },
    /// The settings contradict each other or miss something required.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl ConfigError {
    pub(crate) fn invalid_value(key: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError::InvalidValue { key: key.to_owned(), value: value.to_owned(), reason: reason.into() }
    }
}

/// Parsers for property values, shared by every config type.
pub(crate) mod parse {
    use super::ConfigError;
    use std::time::Duration;

    pub(crate) fn millis(key: &str, value: &str) -> Result<Duration, ConfigError> {
        value
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| ConfigError::invalid_value(key, value, "expected a whole number of milliseconds"))
    }

    pub(crate) fn positive_millis(key: &str, value: &str) -> Result<Duration, ConfigError> {
        let duration = millis(key, value)?;
        if duration.is_zero() {
            return Err(ConfigError::invalid_value(key, value, "must be greater than 0"));
        }
        Ok(duration)
    }

    pub(crate) fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
        key: &str,
        value: &str,
        min: T,
        max: T,
    ) -> Result<T, ConfigError> {
        let parsed =
            value.trim().parse::<T>().map_err(|_| ConfigError::invalid_value(key, value, "expected a number"))?;
        if parsed < min || parsed > max {
            return Err(ConfigError::invalid_value(key, value, format!("must be between {min} and {max}")));
        }
        Ok(parsed)
    }

    pub(crate) fn boolean(key: &str, value: &str) -> Result<bool, ConfigError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::invalid_value(key, value, "expected true or false")),
        }
    }
}

/// Applies `(key, value)` properties through `set`, which says whether it
/// knows the key; the first unknown key is an error naming it.
pub(crate) fn apply_properties<K: AsRef<str>, V: AsRef<str>>(
    properties: impl IntoIterator<Item = (K, V)>,
    mut set: impl FnMut(&str, &str) -> Result<bool, ConfigError>,
) -> Result<(), ConfigError> {
    for (key, value) in properties {
        let (key, value) = (key.as_ref(), value.as_ref());
        if !set(key, value)? {
            return Err(ConfigError::UnknownKey { key: key.to_owned() });
        }
    }
    Ok(())
}

/// Reads `key=value` lines of a Java-style properties file, in order.
///
/// `#` and `!` start comment lines; blank lines are skipped; `key: value`
/// and `key value` are accepted too; a line ending in `\` goes on on the
/// next. Keys and values are trimmed. An unreadable file or a line with no
/// value is an error naming the file and line.
pub fn read_properties_file(path: impl AsRef<std::path::Path>) -> Result<Vec<(String, String)>, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("cannot read properties file {}: {e}", path.display())))?;
    parse_properties(&text).map_err(|(line, reason)| {
        ConfigError::Invalid(format!("properties file {} line {line}: {reason}", path.display()))
    })
}

/// The text of a properties file as `(key, value)` pairs, or the line
/// number and reason of the first bad line.
pub(crate) fn parse_properties(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        let (start, mut logical) = match pending.take() {
            Some((start, so_far)) => (start, so_far + line),
            None if line.is_empty() || line.starts_with('#') || line.starts_with('!') => continue,
            None => (line_no, line.to_owned()),
        };
        if logical.ends_with('\\') {
            logical.pop();
            pending = Some((start, logical));
            continue;
        }
        let split = logical.find(['=', ':']).or_else(|| logical.find(char::is_whitespace));
        let Some(at) = split else {
            return Err((start, format!("`{logical}` has no value (expected key=value)")));
        };
        let key = logical[..at].trim();
        let value = logical[at + 1..].trim();
        if key.is_empty() {
            return Err((start, "empty key".to_owned()));
        }
        out.push((key.to_owned(), value.to_owned()));
    }
    if let Some((start, _)) = pending {
        return Err((start, "the file ends inside a continued line".to_owned()));
    }
    Ok(out)
}

/// Settings shared by producers, consumers and admin clients.
///
/// The defaults follow librdkafka and the Java client where they agree, and
/// say so where they do not. Times are [`Duration`]s; the property names
/// take milliseconds.
#[derive(Debug, Clone)]
#[must_use = "settings take effect only when given to a client"]
pub struct ClientConfig {
    pub(crate) bootstrap_servers: Vec<BrokerAddress>,
    pub(crate) client_id: String,
    pub(crate) request_timeout: Duration,
    pub(crate) connection_setup_timeout: Duration,
    pub(crate) reconnect_backoff: Duration,
    pub(crate) reconnect_backoff_max: Duration,
    pub(crate) retry_backoff: Duration,
    pub(crate) retry_backoff_max: Duration,
    pub(crate) metadata_max_age: Duration,
    pub(crate) max_response_size: usize,
    pub(crate) allow_auto_create_topics: bool,
    pub(crate) client_software_name: String,
    pub(crate) client_software_version: String,
    pub(crate) security_protocol: SecurityProtocol,
    pub(crate) tls: TlsSettings,
    pub(crate) sasl: SaslSettings,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap_servers: Vec::new(),
            client_id: "rill".to_owned(),
            request_timeout: Duration::from_secs(30),
            connection_setup_timeout: Duration::from_secs(10),
            reconnect_backoff: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(10),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            metadata_max_age: Duration::from_secs(300),
            max_response_size: 100 * 1024 * 1024,
            allow_auto_create_topics: false,
            client_software_name: "rill".to_owned(),
            client_software_version: env!("CARGO_PKG_VERSION").to_owned(),
            security_protocol: SecurityProtocol::Plaintext,
            tls: TlsSettings::new(),
            sasl: SaslSettings::default(),
        }
    }
}

impl ClientConfig {
    /// A configuration with the given bootstrap servers and every other
    /// setting at its default.
    ///
    /// `servers` is a comma-separated `host:port` list, the form of
    /// `bootstrap.servers`. Hosts may be DNS names, IPv4 or bracketed IPv6
    /// addresses; a missing port means 9092.
    pub fn new(servers: &str) -> Result<Self, ConfigError> {
        let mut config = ClientConfig::default();
        config.set_property("bootstrap.servers", servers)?;
        Ok(config)
    }

    /// Builds a configuration from librdkafka/Java property names.
    ///
    /// Unknown keys and malformed values are errors naming the key.
    pub fn from_properties<K: AsRef<str>, V: AsRef<str>>(
        properties: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let mut config = ClientConfig::default();
        apply_properties(properties, |key, value| config.set_property(key, value))?;
        config.validate()?;
        Ok(config)
    }

    /// Applies one property by its librdkafka/Java name.
    ///
    /// Returns `Ok(false)` when the key is not a client-level key, so that
    /// producer and consumer configs can offer theirs first and fall back
    /// here. Accepted keys (aliases on one line):
    ///
    /// | key | setting |
    /// |---|---|
    /// | `bootstrap.servers`, `metadata.broker.list` | [`Self::bootstrap_servers`] |
    /// | `client.id` | [`Self::client_id`] |
    /// | `request.timeout.ms`, `socket.timeout.ms` | [`Self::request_timeout`] |
    /// | `socket.connection.setup.timeout.ms` | [`Self::connection_setup_timeout`] |
    /// | `reconnect.backoff.ms`, `reconnect.backoff.max.ms` | [`Self::reconnect_backoff`] |
    /// | `retry.backoff.ms`, `retry.backoff.max.ms` | [`Self::retry_backoff`] |
    /// | `metadata.max.age.ms`, `topic.metadata.refresh.interval.ms` | [`Self::metadata_max_age`] |
    /// | `receive.message.max.bytes`, `max.response.size` | [`Self::max_response_size`] |
    /// | `allow.auto.create.topics` | [`Self::allow_auto_create_topics`] |
    /// | `client.software.name`, `client.software.version` | sent in ApiVersions (KIP-511) |
    /// | `security.protocol` | [`Self::security_protocol`]: `plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl` (any case) |
    /// | `ssl.ca.location`, `ssl.ca.pem` | CA certificates (PEM) that broker certificates must chain to; default: the webpki roots built in |
    /// | `ssl.certificate.location`, `ssl.certificate.pem` | client certificate chain (PEM), for mTLS |
    /// | `ssl.key.location`, `ssl.key.pem` | its private key (PEM, PKCS#8, PKCS#1 or SEC1) |
    /// | `ssl.key.password` | opens an encrypted PKCS#8 key (PBES2: PBKDF2 or scrypt, AES-CBC) |
    /// | `ssl.endpoint.identification.algorithm` | `https` (default): the certificate must name the broker's host; `none` |
    /// | `sasl.mechanism`, `sasl.mechanisms` | [`Self::sasl_mechanism`]: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER` |
    /// | `sasl.username`, `sasl.password` | [`Self::sasl_credentials`] |
    /// | `enable.sasl.oauthbearer.unsecure.jwt`, `sasl.oauthbearer.config` | unsecured JWTs for tests, as librdkafka makes them (`principal=NAME [scope=a,b] [lifeSeconds=N] [extension_K=V]`) |
    /// | `sasl.oauthbearer.method` | `default` only; see [`Self::oauthbearer_token_provider`] |
    pub fn set_property(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        match key {
            "bootstrap.servers" | "metadata.broker.list" => {
                let servers = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| BrokerAddress::parse(s).map_err(|reason| ConfigError::invalid_value(key, value, reason)))
                    .collect::<Result<Vec<_>, _>>()?;
                if servers.is_empty() {
                    return Err(ConfigError::invalid_value(key, value, "expected at least one host:port"));
                }
                self.bootstrap_servers = servers;
            }
            "client.id" => self.client_id = value.to_owned(),
            "request.timeout.ms" | "socket.timeout.ms" => {
                self.request_timeout = parse::positive_millis(key, value)?;
            }
            "socket.connection.setup.timeout.ms" => {
                self.connection_setup_timeout = parse::positive_millis(key, value)?;
            }
            "reconnect.backoff.ms" => self.reconnect_backoff = parse::millis(key, value)?,
            "reconnect.backoff.max.ms" => self.reconnect_backoff_max = parse::millis(key, value)?,
            "retry.backoff.ms" => self.retry_backoff = parse::millis(key, value)?,
            "retry.backoff.max.ms" => self.retry_backoff_max = parse::millis(key, value)?,
            "metadata.max.age.ms" | "topic.metadata.refresh.interval.ms" => {
                self.metadata_max_age = parse::positive_millis(key, value)?;
            }
            "receive.message.max.bytes" | "max.response.size" => {
                self.max_response_size = parse::number(key, value, 1024usize, i32::MAX as usize)?;
            }
            "allow.auto.create.topics" => self.allow_auto_create_topics = parse::boolean(key, value)?,
            "client.software.name" => self.client_software_name = value.to_owned(),
            "client.software.version" => self.client_software_version = value.to_owned(),
            "security.protocol" => {
                let protocol = SecurityProtocol::parse(value).ok_or_else(|| {
                    ConfigError::invalid_value(key, value, "expected plaintext, ssl, sasl_plaintext or sasl_ssl")
                })?;
                self.security_protocol = protocol;
            }
            _ if key.starts_with("ssl.") => return self.tls.set_property(key, value),
            _ if key.starts_with("sasl.") || key.starts_with("enable.sasl.") => {
                return self.sasl.set_property(key, value);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks the settings against each other. Called by every `build`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.is_empty() {
            return Err(ConfigError::Invalid("`bootstrap.servers` is required".into()));
        }
        if self.reconnect_backoff_max < self.reconnect_backoff {
            return Err(ConfigError::Invalid(
                "`reconnect.backoff.max.ms` must not be below `reconnect.backoff.ms`".into(),
            ));
        }
        if self.retry_backoff_max < self.retry_backoff {
            return Err(ConfigError::Invalid("`retry.backoff.max.ms` must not be below `retry.backoff.ms`".into()));
        }
        if self.security_protocol.uses_tls() {
            self.tls.client_config()?;
        }
        if self.security_protocol.uses_sasl() {
            self.sasl.validate()?;
        }
        Ok(())
    }

    /// How connections are secured. Default [`SecurityProtocol::Plaintext`].
    /// The TLS settings are the `ssl.*` properties
    /// ([`Self::set_property`]).
    pub fn security_protocol(mut self, protocol: SecurityProtocol) -> Self {
        self.security_protocol = protocol;
        self
    }

    /// The SASL mechanism for `sasl_plaintext` and `sasl_ssl`. No default:
    /// Java's and librdkafka's is GSSAPI (Kerberos), which this client does
    /// not speak.
    pub fn sasl_mechanism(mut self, mechanism: SaslMechanism) -> Self {
        self.sasl.mechanism = Some(mechanism);
        self
    }

    /// The user name and password of PLAIN and SCRAM. The password never
    /// appears in logs, errors or `Debug` output.
    pub fn sasl_credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.sasl.username = Some(username.into());
        self.sasl.password = Some(Secret::new(password.into()));
        self
    }

    /// Where OAUTHBEARER tokens come from: an async function of the
    /// application's, called when a connection authenticates and the
    /// cached token has passed 80 % of its lifetime (or there is none).
    /// Connections re-authenticate before their session ends (KIP-368), so
    /// a refreshed token reaches long-lived connections too. Every client
    /// made from this configuration (and its clones) shares one cache.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use rill_client::{ClientConfig, OAuthBearerToken, SaslMechanism, SecurityProtocol, TokenError};
    /// let config = ClientConfig::new("broker:9093")?
    ///     .security_protocol(SecurityProtocol::SaslSsl)
    ///     .sasl_mechanism(SaslMechanism::OAuthBearer)
    ///     .oauthbearer_token_provider(|| async {
    ///         // Ask the identity provider here.
    ///         Ok::<_, TokenError>(OAuthBearerToken::new("eyJ...", Duration::from_secs(3600)))
    ///     });
    /// config.validate()?;
    /// # Ok::<(), rill_client::ConfigError>(())
    /// ```
    pub fn oauthbearer_token_provider(mut self, provider: impl OAuthBearerTokenProvider) -> Self {
        self.sasl.token_source = Some(Arc::new(TokenSource::new(Arc::new(provider))));
        self
    }

    /// Reads a properties file (`client.properties` of Java and
    /// librdkafka, kcat's `-F`) and applies it, as [`Self::from_properties`]
    /// does. See [`read_properties_file`] for the format.
    pub fn from_properties_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        Self::from_properties(read_properties_file(path)?)
    }

    /// Replaces the bootstrap list.
    pub fn bootstrap_servers(mut self, servers: Vec<BrokerAddress>) -> Self {
        self.bootstrap_servers = servers;
        self
    }

    /// The id sent in every request header; brokers log it and use it for
    /// quotas. Default `rill`.
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// How long a request may wait for its reply before it fails and its
    /// connection is closed. Default 30 s (Java's `request.timeout.ms`;
    /// librdkafka's `socket.timeout.ms` is 60 s). Long-polling requests add
    /// their own wait to this.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long the TCP connect plus the ApiVersions handshake may take.
    /// Default 10 s (Java's `socket.connection.setup.timeout.ms`).
    pub fn connection_setup_timeout(mut self, timeout: Duration) -> Self {
        self.connection_setup_timeout = timeout;
        self
    }

    /// Backoff before reconnecting to a broker: starts at `initial`, doubles
    /// per failed attempt up to `max`, with ±20 % jitter so that many
    /// clients do not reconnect in step. Defaults 100 ms and 10 s.
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_backoff = initial;
        self.reconnect_backoff_max = max;
        self
    }

    /// Backoff between retries of a failed request (and of metadata
    /// refreshes): starts at `initial`, doubles up to `max`, with jitter.
    /// Defaults 100 ms and 1 s.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_backoff = initial;
        self.retry_backoff_max = max;
        self
    }

    /// Metadata older than this is refreshed even without an error that
    /// calls for it. Default 5 minutes.
    pub fn metadata_max_age(mut self, age: Duration) -> Self {
        self.metadata_max_age = age;
        self
    }

    /// The largest response frame accepted from a broker. A larger length
    /// prefix closes the connection before anything of that size is
    /// allocated. Default 100 MiB (librdkafka's `receive.message.max.bytes`).
    pub fn max_response_size(mut self, bytes: usize) -> Self {
        self.max_response_size = bytes;
        self
    }

    /// Whether metadata requests may make the broker auto-create a topic.
    /// Default false: a typo in a topic name should be an error.
    pub fn allow_auto_create_topics(mut self, allow: bool) -> Self {
        self.allow_auto_create_topics = allow;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let config = ClientConfig::new("localhost:9092").unwrap();
        assert_eq!(config.request_timeout, Duration::from_secs(30));
        assert_eq!(config.max_response_size, 100 * 1024 * 1024);
        assert!(!config.allow_auto_create_topics);
        assert_eq!(config.bootstrap_servers.len(), 1);
    }

    #[test]
    fn properties_are_applied_by_their_familiar_names() {
        let config = ClientConfig::from_properties([
            ("bootstrap.servers", "a:1, b:2 ,[::1]:3,broker"),
            ("client.id", "me"),
            ("socket.timeout.ms", "1500"),
            ("reconnect.backoff.max.ms", "2000"),
            ("topic.metadata.refresh.interval.ms", "60000"),
            ("security.protocol", "PLAINTEXT"),
        ])
        .unwrap();
        let hosts: Vec<String> = config.bootstrap_servers.iter().map(|a| a.to_string()).collect();
        assert_eq!(hosts, ["a:1", "b:2", "[::1]:3", "broker:9092"]);
        assert_eq!(config.client_id, "me");
        assert_eq!(config.request_timeout, Duration::from_millis(1500));
        assert_eq!(config.reconnect_backoff_max, Duration::from_secs(2));
        assert_eq!(config.metadata_max_age, Duration::from_secs(60));
    }

    #[test]
    fn unknown_key_is_named() {
        let error = ClientConfig::from_properties([("bootstrap.servers", "a:1"), ("linger.msec", "5")]).unwrap_err();
        assert_eq!(error, ConfigError::UnknownKey { key: "linger.msec".into() });
        assert_eq!(error.to_string(), "unknown configuration property `linger.msec`");
    }

    #[test]
    fn bad_values_name_key_and_value() {
        let error =
            ClientConfig::from_properties([("bootstrap.servers", "a:1"), ("request.timeout.ms", "soon")]).unwrap_err();
        assert!(
            matches!(&error, ConfigError::InvalidValue { key, value, .. } if key == "request.timeout.ms" && value == "soon"),
            "{error}"
        );
        assert!(error.to_string().contains("`request.timeout.ms`"));

        let error = ClientConfig::from_properties([("bootstrap.servers", "host:notaport")]).unwrap_err();
        assert!(error.to_string().contains("`bootstrap.servers`"), "{error}");

        let error =
            ClientConfig::from_properties([("bootstrap.servers", "a:1"), ("security.protocol", "tls")]).unwrap_err();
        assert!(matches!(error, ConfigError::InvalidValue { .. }), "{error}");
        let error = ClientConfig::from_properties([
            ("bootstrap.servers", "a:1"),
            ("security.protocol", "SSL"),
            ("ssl.ca.location", "/nonexistent.pem"),
        ])
        .unwrap_err();
        assert!(error.to_string().contains("`ssl.ca.location`"), "{error}");
    }

    #[test]
    fn properties_files_read_as_java_writes_them() {
        let text = "# a comment\n! another\n\nbootstrap.servers = a:1,\\\n    b:2\nclient.id: me\nsecurity.protocol SSL\nsasl.password=p=w:rd\n";
        let pairs = parse_properties(text).unwrap();
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("bootstrap.servers", "a:1,b:2"),
                ("client.id", "me"),
                ("security.protocol", "SSL"),
                ("sasl.password", "p=w:rd"),
            ]
        );
        assert_eq!(parse_properties("ok=1\nlonely\n").unwrap_err().0, 2);
        assert_eq!(parse_properties("a=\\").unwrap_err().0, 1);

        let path = std::env::temp_dir().join(format!("rill-config-test-{}.properties", std::process::id()));
        std::fs::write(&path, "bootstrap.servers=h:1\nclient.id=from-file\n").unwrap();
        let config = ClientConfig::from_properties_file(&path).unwrap();
        assert_eq!(config.client_id, "from-file");
        std::fs::write(&path, "bootstrap.servers=h:1\nno.such.key=1\n").unwrap();
        assert_eq!(
            ClientConfig::from_properties_file(&path).unwrap_err(),
            ConfigError::UnknownKey { key: "no.such.key".into() }
        );
        std::fs::remove_file(&path).unwrap();
        let missing = ClientConfig::from_properties_file("/nonexistent/client.properties").unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/client.properties"), "{missing}");
    }

    #[test]
    fn contradictions_are_rejected() {
        let error = ClientConfig::from_properties([
            ("bootstrap.servers", "a:1"),
            ("reconnect.backoff.ms", "500"),
            ("reconnect.backoff.max.ms", "100"),
        ])
        .unwrap_err();
        assert!(matches!(error, ConfigError::Invalid(_)), "{error}");
        assert!(matches!(ClientConfig::from_properties::<&str, &str>([]).unwrap_err(), ConfigError::Invalid(_)));
    }
}
