//! SASL authentication (`security.protocol` `sasl_plaintext` / `sasl_ssl`):
//! the `sasl.*` settings and the pure exchanges of each mechanism.
//!
//! ```text
//!  connection setup                      every session_lifetime × 0.85-0.95
//!  ────────────────                      ─────────────────────────────────
//!  ApiVersions                           (new requests held back)
//!  SaslHandshake v1 {mechanism}          SaslHandshake v1 {mechanism}
//!  SaslAuthenticate {bytes} ⇄ Exchange   SaslAuthenticate {bytes} ⇄ Exchange
//!  → session_lifetime_ms (KIP-368)       → the next session lifetime
//! ```
//!
//! `Exchange` is the client side of one mechanism as a state machine: it
//! makes the first message, takes each server message and says what to send
//! next or that it is done. No IO, no clock: the connection drives it, and
//! unit tests drive it with scripted server messages (RFC 7677's vector for
//! SCRAM). PLAIN (RFC 4616), SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, the
//! server's signature checked), OAUTHBEARER (RFC 7628, KIP-255) with a token
//! the application provides ([`OAuthBearerTokenProvider`]) or the unsecured
//! JWTs librdkafka makes for tests.

mod oauthbearer;
mod scram;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) use oauthbearer::TokenSource;
pub use oauthbearer::{OAuthBearerToken, OAuthBearerTokenProvider, TokenError};

use crate::config::{ConfigError, parse};
use crate::net::security::Secret;

/// A SASL mechanism (`sasl.mechanism`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SaslMechanism {
    /// Username and password in the clear (use it over TLS only).
    Plain,
    /// SCRAM with SHA-256: the password never crosses the wire, and the
    /// broker proves it knows it too.
    ScramSha256,
    /// SCRAM with SHA-512.
    ScramSha512,
    /// An OAuth 2 bearer token.
    OAuthBearer,
}

impl SaslMechanism {
    /// The mechanism's name on the wire (`SCRAM-SHA-256`).
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }

    /// Parses a mechanism name, in any case.
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => SaslMechanism::Plain,
            "SCRAM-SHA-256" => SaslMechanism::ScramSha256,
            "SCRAM-SHA-512" => SaslMechanism::ScramSha512,
            "OAUTHBEARER" => SaslMechanism::OAuthBearer,
            _ => return None,
        })
    }
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `sasl.*` settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct SaslSettings {
    pub(crate) mechanism: Option<SaslMechanism>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    /// The application's token provider, shared by every connection of
    /// every client made from this configuration (one token cache).
    pub(crate) token_source: Option<Arc<TokenSource>>,
    /// `enable.sasl.oauthbearer.unsecure.jwt`.
    pub(crate) unsecured_jwt: bool,
    /// `sasl.oauthbearer.config`, parsed: the unsecured JWTs to make.
    pub(crate) unsecured_jwt_config: Option<oauthbearer::UnsecuredJwt>,
}

impl SaslSettings {
    /// Applies one `sasl.*` (or `enable.sasl.*`) property; `Ok(false)` for
    /// a key that is not one of them.
    pub(crate) fn set_property(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        match key {
            "sasl.mechanism" | "sasl.mechanisms" => {
                let trimmed = value.trim();
                if trimmed.eq_ignore_ascii_case("GSSAPI") {
                    return Err(ConfigError::NotAllowed {
                        key: key.to_owned(),
                        reason: "GSSAPI (Kerberos) is not supported; PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and \
                                 OAUTHBEARER are"
                            .into(),
                    });
                }
                let mechanism = SaslMechanism::parse(trimmed).ok_or_else(|| {
                    ConfigError::invalid_value(
                        key,
                        value,
                        "expected PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
                    )
                })?;
                self.mechanism = Some(mechanism);
            }
            "sasl.username" => self.username = Some(value.to_owned()),
            "sasl.password" => self.password = Some(Secret::new(value)),
            "enable.sasl.oauthbearer.unsecure.jwt" => self.unsecured_jwt = parse::boolean(key, value)?,
            "sasl.oauthbearer.config" => {
                // Parsed here, so a typo is a configuration error.
                let jwt = oauthbearer::UnsecuredJwt::parse(value)
                    .map_err(|reason| ConfigError::invalid_value(key, "[not shown]", reason))?;
                self.unsecured_jwt_config = Some(jwt);
            }
            "sasl.oauthbearer.method" => {
                if !value.trim().eq_ignore_ascii_case("default") {
                    return Err(ConfigError::NotAllowed {
                        key: key.to_owned(),
                        reason: format!(
                            "`{value}`: only `default` is supported; fetch tokens in the application and give a \
                             token provider (ClientConfig::oauthbearer_token_provider)"
                        ),
                    });
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether the settings suffice for their mechanism.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let Some(mechanism) = self.mechanism else {
            return Err(ConfigError::Invalid(
                "security.protocol sasl_* needs `sasl.mechanism` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or \
                 OAUTHBEARER)"
                    .into(),
            ));
        };
        match mechanism {
            SaslMechanism::Plain | SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                if self.username.as_deref().is_none_or(str::is_empty) {
                    return Err(ConfigError::Invalid(format!("SASL {mechanism} needs `sasl.username`")));
                }
                if self.password.is_none() {
                    return Err(ConfigError::Invalid(format!("SASL {mechanism} needs `sasl.password`")));
                }
            }
            SaslMechanism::OAuthBearer => {
                if self.token_source.is_none() && !self.unsecured_jwt {
                    return Err(ConfigError::Invalid(
                        "SASL OAUTHBEARER needs a token provider (ClientConfig::oauthbearer_token_provider), or \
                         `enable.sasl.oauthbearer.unsecure.jwt=true` with `sasl.oauthbearer.config` for tests"
                            .into(),
                    ));
                }
                if self.token_source.is_none() && self.unsecured_jwt_config.is_none() {
                    return Err(ConfigError::Invalid(
                        "unsecured OAUTHBEARER JWTs need `sasl.oauthbearer.config` (at least `principal=NAME`)".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The mechanism, once validated.
    pub(crate) fn mechanism(&self) -> SaslMechanism {
        self.mechanism.expect("validated: sasl.mechanism is set")
    }

    /// Begins one authentication: the exchange and its first message.
    /// Async only for OAUTHBEARER, whose token may have to be fetched.
    pub(crate) async fn begin(&self) -> Result<(Exchange, Vec<u8>), String> {
        let mechanism = self.mechanism();
        let credentials = || {
            let username = self.username.clone().unwrap_or_default();
            let password = self.password.clone().unwrap_or_else(|| Secret::new(""));
            (username, password)
        };
        Ok(match mechanism {
            SaslMechanism::Plain => {
                let (username, password) = credentials();
                let first = plain_message(&username, &password);
                (Exchange::Plain, first)
            }
            SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                let (username, password) = credentials();
                let hash =
                    if mechanism == SaslMechanism::ScramSha256 { scram::Hash::Sha256 } else { scram::Hash::Sha512 };
                let (client, first) = scram::ScramClient::start(hash, &username, password, &scram::random_nonce());
                (Exchange::Scram(Box::new(client)), first)
            }
            SaslMechanism::OAuthBearer => {
                let token = match (&self.token_source, &self.unsecured_jwt_config) {
                    (Some(source), _) => source.current().await?,
                    (None, Some(jwt)) => jwt.token(std::time::SystemTime::now()),
                    (None, None) => return Err("no OAUTHBEARER token provider".to_owned()),
                };
                let first = oauthbearer::initial_response(&token);
                (Exchange::OAuthBearer { refused: None }, first)
            }
        })
    }
}

fn plain_message(username: &str, password: &Secret) -> Vec<u8> {
    // authzid (empty) NUL authcid NUL passwd.
    let mut message = Vec::with_capacity(username.len() + password.expose().len() + 2);
    message.push(0);
    message.extend_from_slice(username.as_bytes());
    message.push(0);
    message.extend_from_slice(password.expose().as_bytes());
    message
}

/// The client side of one authentication in progress.
#[derive(Debug)]
pub(crate) enum Exchange {
    Plain,
    Scram(Box<scram::ScramClient>),
    /// `refused` holds the broker's error report once it sent one.
    OAuthBearer {
        refused: Option<String>,
    },
}

/// What to do after a server message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send these bytes in the next SaslAuthenticate.
    Respond(Vec<u8>),
    /// Authenticated.
    Done,
}

impl Exchange {
    /// Takes the server's bytes of a successful SaslAuthenticate answer.
    /// An `Err` is why authentication failed, for the person reading it.
    pub(crate) fn on_server_message(&mut self, message: &[u8]) -> Result<Step, String> {
        match self {
            // The broker's answer (its error code) is all PLAIN gets.
            Exchange::Plain => Ok(Step::Done),
            Exchange::Scram(client) => client.on_server_message(message),
            Exchange::OAuthBearer { refused } => {
                if let Some(report) = refused {
                    return Err(format!("the broker refused the token: {report}"));
                }
                if message.is_empty() {
                    return Ok(Step::Done);
                }
                // RFC 7628 §3.2.2: a failure is a JSON report the client
                // acknowledges with a single %x01; the broker then fails the
                // exchange.
                *refused = Some(String::from_utf8_lossy(message).into_owned());
                Ok(Step::Respond(vec![0x01]))
            }
        }
    }

    /// The broker's OAUTHBEARER error report, if it sent one.
    pub(crate) fn server_report(&self) -> Option<&str> {
        match self {
            Exchange::OAuthBearer { refused } => refused.as_deref(),
            _ => None,
        }
    }
}

/// Brokers refuse a re-authentication within a second of the previous one
/// (Kafka's KafkaChannel.MIN_REAUTH_INTERVAL_ONE_SECOND_NANOS).
pub(crate) const MIN_REAUTHENTICATION_INTERVAL: Duration = Duration::from_secs(1);

/// When to re-authenticate (KIP-368), pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reauthentication {
    /// The broker set no session lifetime.
    Never,
    /// Begin at this instant.
    At(Instant),
    /// The session ends before a re-authentication may begin: open a new
    /// connection instead.
    TooShort,
}

/// The session began when the final SaslAuthenticate was sent (`sent`; the
/// broker counts from its receipt, a little later) and lasts `lifetime`.
/// Re-authentication begins at 85-95 % of it, as Java's client does (`jitter`
/// in [0, 1) picks the point, so that many connections do not renew in
/// step), but not within [`MIN_REAUTHENTICATION_INTERVAL`] of the previous
/// one's start (`previous`), which the broker would refuse.
pub(crate) fn next_reauthentication(
    sent: Instant,
    lifetime: Duration,
    previous: Option<Instant>,
    jitter: f64,
) -> Reauthentication {
    if lifetime.is_zero() {
        return Reauthentication::Never;
    }
    let at = sent + lifetime.mul_f64(0.85 + 0.10 * jitter.clamp(0.0, 1.0));
    let earliest = previous.map_or(at, |previous| previous + MIN_REAUTHENTICATION_INTERVAL);
    let at = at.max(earliest);
    if at >= sent + lifetime {
        return Reauthentication::TooShort;
    }
    Reauthentication::At(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanisms_parse_in_any_case() {
        assert_eq!(SaslMechanism::parse("scram-sha-512"), Some(SaslMechanism::ScramSha512));
        assert_eq!(SaslMechanism::parse(" PLAIN "), Some(SaslMechanism::Plain));
        assert_eq!(SaslMechanism::parse("OAuthBearer"), Some(SaslMechanism::OAuthBearer));
        assert_eq!(SaslMechanism::parse("SCRAM-SHA-1"), None);
        for m in
            [SaslMechanism::Plain, SaslMechanism::ScramSha256, SaslMechanism::ScramSha512, SaslMechanism::OAuthBearer]
        {
            assert_eq!(SaslMechanism::parse(m.name()), Some(m));
        }
    }

    #[test]
    fn gssapi_and_oidc_are_refused_by_name() {
        let mut settings = SaslSettings::default();
        let error = settings.set_property("sasl.mechanisms", "GSSAPI").unwrap_err();
        assert!(error.to_string().contains("Kerberos"), "{error}");
        let error = settings.set_property("sasl.oauthbearer.method", "oidc").unwrap_err();
        assert!(error.to_string().contains("token provider"), "{error}");
        assert!(settings.set_property("sasl.oauthbearer.method", "default").unwrap());
        assert!(!settings.set_property("sasl.kerberos.keytab", "x").unwrap());
    }

    #[test]
    fn each_mechanism_says_what_it_misses() {
        let mut settings = SaslSettings::default();
        assert!(settings.validate().unwrap_err().to_string().contains("sasl.mechanism"));
        settings.set_property("sasl.mechanism", "SCRAM-SHA-256").unwrap();
        assert!(settings.validate().unwrap_err().to_string().contains("sasl.username"));
        settings.set_property("sasl.username", "alice").unwrap();
        assert!(settings.validate().unwrap_err().to_string().contains("sasl.password"));
        settings.set_property("sasl.password", "s3cret").unwrap();
        settings.validate().unwrap();
        assert!(!format!("{settings:?}").contains("s3cret"), "the password shows in Debug");

        let mut settings = SaslSettings::default();
        settings.set_property("sasl.mechanism", "OAUTHBEARER").unwrap();
        assert!(settings.validate().unwrap_err().to_string().contains("token provider"));
        settings.set_property("enable.sasl.oauthbearer.unsecure.jwt", "true").unwrap();
        assert!(settings.validate().unwrap_err().to_string().contains("sasl.oauthbearer.config"));
        settings.set_property("sasl.oauthbearer.config", "principal=admin").unwrap();
        settings.validate().unwrap();
    }

    #[tokio::test]
    async fn plain_sends_the_rfc_4616_message_and_is_done_on_any_answer() {
        let mut settings = SaslSettings::default();
        for (key, value) in [("sasl.mechanism", "PLAIN"), ("sasl.username", "alice"), ("sasl.password", "pw")] {
            settings.set_property(key, value).unwrap();
        }
        let (mut exchange, first) = settings.begin().await.unwrap();
        assert_eq!(first, b"\0alice\0pw");
        assert_eq!(exchange.on_server_message(b""), Ok(Step::Done));
    }

    #[test]
    fn oauthbearer_acknowledges_a_refusal_and_then_reports_it() {
        let mut exchange = Exchange::OAuthBearer { refused: None };
        let report = br#"{"status":"invalid_token"}"#;
        assert_eq!(exchange.on_server_message(report), Ok(Step::Respond(vec![1])));
        assert_eq!(exchange.server_report(), Some(r#"{"status":"invalid_token"}"#));
        let error = exchange.on_server_message(b"").unwrap_err();
        assert!(error.contains("invalid_token"), "{error}");
        let mut accepted = Exchange::OAuthBearer { refused: None };
        assert_eq!(accepted.on_server_message(b""), Ok(Step::Done));
    }

    #[test]
    fn reauthentication_comes_at_85_to_95_percent_of_the_session() {
        let sent = Instant::now();
        let lifetime = Duration::from_secs(100);
        let at = |seconds: f64| Reauthentication::At(sent + Duration::from_secs_f64(seconds));
        assert_eq!(next_reauthentication(sent, lifetime, None, 0.0), at(85.0));
        assert_eq!(next_reauthentication(sent, lifetime, None, 0.5), at(90.0));
        assert_eq!(next_reauthentication(sent, lifetime, None, 7.0), at(95.0), "jitter is clamped");
        assert_eq!(next_reauthentication(sent, Duration::ZERO, None, 0.5), Reauthentication::Never);
    }

    #[test]
    fn reauthentications_keep_a_second_apart_or_give_up() {
        let sent = Instant::now();
        // 2 s session: 1.7 s is past the second after the previous start.
        let previous = Some(sent);
        assert_eq!(
            next_reauthentication(sent, Duration::from_secs(2), previous, 0.0),
            Reauthentication::At(sent + Duration::from_millis(1700))
        );
        // A 1.1 s session that began as the previous re-authentication did:
        // 85 % is 0.935 s, within its second; the second it is.
        assert_eq!(
            next_reauthentication(sent, Duration::from_millis(1100), Some(sent), 0.0),
            Reauthentication::At(sent + Duration::from_secs(1))
        );
        // A 500 ms session right after a re-authentication: no room.
        assert_eq!(
            next_reauthentication(sent, Duration::from_millis(500), Some(sent), 0.0),
            Reauthentication::TooShort
        );
    }
}
