//! OAUTHBEARER (RFC 7628, Kafka's KIP-255 and KIP-342): the token, the
//! application's provider of tokens, the cache that refreshes a token at
//! 80 % of its lifetime (as Java's and librdkafka's refresh does), and the
//! unsecured JWTs that librdkafka's `enable.sasl.oauthbearer.unsecure.jwt`
//! makes for tests.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tracing::{debug, warn};

use crate::net::security::Secret;

/// What a token provider fails with.
pub type TokenError = Box<dyn std::error::Error + Send + Sync>;

/// An OAuth 2 bearer token and when it expires. `Debug` shows the token
/// as `[redacted]`.
#[derive(Debug, Clone)]
pub struct OAuthBearerToken {
    value: Secret,
    expires_at: SystemTime,
    principal: Option<String>,
    extensions: Vec<(String, String)>,
}

impl OAuthBearerToken {
    /// A token valid for `lifetime` from now.
    pub fn new(value: impl Into<String>, lifetime: Duration) -> Self {
        Self::expiring_at(value, SystemTime::now() + lifetime)
    }

    /// A token that expires at `expires_at` (the JWT's `exp`).
    pub fn expiring_at(value: impl Into<String>, expires_at: SystemTime) -> Self {
        OAuthBearerToken { value: Secret::new(value), expires_at, principal: None, extensions: Vec::new() }
    }

    /// The principal the token names, for logs only.
    pub fn with_principal(mut self, principal: impl Into<String>) -> Self {
        self.principal = Some(principal.into());
        self
    }

    /// A SASL extension sent with the token (KIP-342; Confluent Cloud's
    /// `logicalCluster` and `identityPoolId` are such).
    pub fn with_extension(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extensions.push((key.into(), value.into()));
        self
    }

    /// When the token expires.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// Whether the token can be sent as it is: the grammar Kafka's brokers
    /// check (OAuthBearerClientInitialResponse): the token
    /// `[-_~+/.a-zA-Z0-9]+=*`, extension names `[A-Za-z]+` (not `auth`),
    /// values `[\x21-\x7E \t\r\n]+`.
    fn check(&self) -> Result<(), String> {
        let value = self.value.expose();
        let body = value.trim_end_matches('=');
        let token_char = |b: u8| b.is_ascii_alphanumeric() || b"-_~+/.".contains(&b);
        if body.is_empty() || !body.bytes().all(token_char) {
            return Err("the token is empty or holds characters a bearer token cannot (RFC 6750)".into());
        }
        for (key, value) in &self.extensions {
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphabetic()) || key == "auth" {
                return Err(format!("extension name `{key}` must be letters only and not `auth`"));
            }
            let value_char = |b: u8| (0x21..=0x7e).contains(&b) || b" \t\r\n".contains(&b);
            if value.is_empty() || !value.bytes().all(value_char) {
                return Err(format!("extension `{key}` is empty or holds characters Kafka does not allow"));
            }
        }
        Ok(())
    }
}

/// Gives the client its OAUTHBEARER tokens: an async function the
/// application writes (fetch from an identity provider, read a mounted
/// file). Called when a connection authenticates and no cached token is
/// fresh; the client refreshes at 80 % of a token's lifetime.
///
/// Any `Fn() -> impl Future<Output = Result<OAuthBearerToken, TokenError>>`
/// is one.
pub trait OAuthBearerTokenProvider: Send + Sync + 'static {
    /// A fresh token.
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<OAuthBearerToken, TokenError>> + Send + 'static>>;
}

impl<F, Fut> OAuthBearerTokenProvider for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<OAuthBearerToken, TokenError>> + Send + 'static,
{
    fn token(&self) -> Pin<Box<dyn Future<Output = Result<OAuthBearerToken, TokenError>> + Send + 'static>> {
        Box::pin(self())
    }
}

/// After a failed refresh, while the old token still holds, the provider
/// is asked again no sooner than this.
const REFRESH_RETRY: Duration = Duration::from_secs(10);
/// A token this close to its expiry is refreshed, however young.
const MIN_REMAINING: Duration = Duration::from_secs(2);

/// The application's provider and the token it last gave.
pub(crate) struct TokenSource {
    provider: Arc<dyn OAuthBearerTokenProvider>,
    cached: tokio::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    token: Option<(OAuthBearerToken, SystemTime)>,
    failed_at: Option<SystemTime>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSource")
    }
}

/// What to do with the cached token at `now` (pure).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Send it.
    Fresh,
    /// Ask the provider; if that fails, the cached token may still be sent.
    Refresh { fallback: bool },
}

/// A token obtained at `obtained` that expires at `expires` is refreshed
/// from 80 % of its lifetime on, or within [`MIN_REMAINING`] of expiry; after a failed refresh at `failed_at` the
/// old one is used for [`REFRESH_RETRY`] before the provider is asked again.
pub(crate) fn freshness(
    now: SystemTime,
    cached: Option<(SystemTime, SystemTime)>,
    failed_at: Option<SystemTime>,
) -> Freshness {
    let Some((obtained, expires)) = cached else {
        return Freshness::Refresh { fallback: false };
    };
    if now >= expires {
        return Freshness::Refresh { fallback: false };
    }
    let lifetime = expires.duration_since(obtained).unwrap_or_default();
    // A session cannot outlive its token, and a broker refuses a
    // re-authentication within a second of the last: a token about to
    // expire would end the connection, whatever its age.
    let remaining = expires.duration_since(now).unwrap_or_default();
    if now < obtained + lifetime.mul_f64(0.8) && remaining > MIN_REMAINING {
        return Freshness::Fresh;
    }
    match failed_at {
        Some(at) if now < at + REFRESH_RETRY => Freshness::Fresh,
        _ => Freshness::Refresh { fallback: true },
    }
}

impl TokenSource {
    pub(crate) fn new(provider: Arc<dyn OAuthBearerTokenProvider>) -> Self {
        TokenSource { provider, cached: tokio::sync::Mutex::new(Cache::default()) }
    }

    /// The token to send now: the cached one while fresh, else a new one
    /// from the provider (one call at a time, whatever the number of
    /// connections asking).
    pub(crate) async fn current(&self) -> Result<OAuthBearerToken, String> {
        let mut cache = self.cached.lock().await;
        let now = SystemTime::now();
        let dates = cache.token.as_ref().map(|(token, obtained)| (*obtained, token.expires_at));
        let fallback = match freshness(now, dates, cache.failed_at) {
            Freshness::Fresh => return Ok(cache.token.as_ref().expect("fresh means cached").0.clone()),
            Freshness::Refresh { fallback } => fallback,
        };
        let outcome = match self.provider.token().await {
            Ok(token) if token.expires_at <= SystemTime::now() => {
                Err("the token provider gave a token that has already expired".to_owned())
            }
            Ok(token) => token.check().map(|()| token).map_err(|e| format!("the token provider gave a bad token: {e}")),
            Err(error) => Err(format!("the OAUTHBEARER token provider failed: {error}")),
        };
        match outcome {
            Ok(token) => {
                debug!(target: "rill::sasl", principal = ?token.principal, expires_at = ?token.expires_at, "new OAUTHBEARER token");
                cache.token = Some((token.clone(), now));
                cache.failed_at = None;
                Ok(token)
            }
            Err(reason) if fallback => {
                warn!(target: "rill::sasl", %reason, "token refresh failed; the current token is still valid");
                cache.failed_at = Some(now);
                Ok(cache.token.as_ref().expect("fallback means cached").0.clone())
            }
            Err(reason) => Err(reason),
        }
    }
}

/// The client's first (and only) OAUTHBEARER message: the GS2 header, the
/// token and the extensions (RFC 7628 §3.1).
pub(crate) fn initial_response(token: &OAuthBearerToken) -> Vec<u8> {
    let mut message = format!("n,,\x01auth=Bearer {}\x01", token.value.expose());
    for (key, value) in &token.extensions {
        message.push_str(&format!("{key}={value}\x01"));
    }
    message.push('\x01');
    message.into_bytes()
}

/// librdkafka's unsecured JWT for tests (`sasl.oauthbearer.config`):
/// `principal=NAME [principalClaimName=sub] [scope=a,b]
/// [scopeClaimName=scope] [lifeSeconds=3600] [extension_NAME=value]…`.
/// The token is signed with `alg: none`: only brokers configured for
/// unsecured tokens accept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnsecuredJwt {
    principal: String,
    principal_claim: String,
    scope: Vec<String>,
    scope_claim: String,
    lifetime: Duration,
    extensions: Vec<(String, String)>,
}

impl UnsecuredJwt {
    pub(crate) fn parse(config: &str) -> Result<UnsecuredJwt, String> {
        let mut jwt = UnsecuredJwt {
            principal: String::new(),
            principal_claim: "sub".into(),
            scope: Vec::new(),
            scope_claim: "scope".into(),
            lifetime: Duration::from_secs(3600),
            extensions: Vec::new(),
        };
        for part in config.split_whitespace() {
            let (key, value) = part.split_once('=').ok_or_else(|| format!("`{part}` is not name=value"))?;
            match key {
                "principal" => jwt.principal = value.to_owned(),
                "principalClaimName" => jwt.principal_claim = value.to_owned(),
                "scope" => jwt.scope = value.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
                "scopeClaimName" => jwt.scope_claim = value.to_owned(),
                "lifeSeconds" => {
                    let seconds: u64 = value.parse().map_err(|_| format!("lifeSeconds `{value}` is not a number"))?;
                    if seconds == 0 {
                        return Err("lifeSeconds must be at least 1".into());
                    }
                    jwt.lifetime = Duration::from_secs(seconds);
                }
                _ => match key.strip_prefix("extension_") {
                    Some(name) => jwt.extensions.push((name.to_owned(), value.to_owned())),
                    None => return Err(format!("unknown attribute `{key}`")),
                },
            }
        }
        if jwt.principal.is_empty() {
            return Err("`principal=NAME` is required".into());
        }
        jwt.token(UNIX_EPOCH).check()?;
        Ok(jwt)
    }

    /// A token issued at `now`.
    pub(crate) fn token(&self, now: SystemTime) -> OAuthBearerToken {
        let issued = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let expires = issued + self.lifetime.as_secs();
        let mut claims = serde_json::Map::new();
        claims.insert(self.principal_claim.clone(), self.principal.clone().into());
        claims.insert("iat".into(), issued.into());
        claims.insert("exp".into(), expires.into());
        if !self.scope.is_empty() {
            claims.insert(self.scope_claim.clone(), self.scope.clone().into());
        }
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::Value::Object(claims).to_string());
        let mut token =
            OAuthBearerToken::expiring_at(format!("{header}.{payload}."), UNIX_EPOCH + Duration::from_secs(expires))
                .with_principal(self.principal.clone());
        token.extensions = self.extensions.clone();
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn a_token_is_refreshed_from_80_percent_of_its_lifetime() {
        let cached = Some((at(1000), at(1100)));
        assert_eq!(freshness(at(1000), None, None), Freshness::Refresh { fallback: false });
        assert_eq!(freshness(at(1079), cached, None), Freshness::Fresh);
        assert_eq!(freshness(at(1080), cached, None), Freshness::Refresh { fallback: true });
        assert_eq!(freshness(at(1100), cached, None), Freshness::Refresh { fallback: false }, "expired");
        assert_eq!(freshness(at(1085), cached, Some(at(1080))), Freshness::Fresh, "retry waits after a failure");
        assert_eq!(freshness(at(1090), cached, Some(at(1080))), Freshness::Refresh { fallback: true });
        // A short-lived token: 80 % of 5 s is 4 s, but with 2 s left it is
        // refreshed.
        let short = Some((at(1000), at(1005)));
        assert_eq!(freshness(at(1002), short, None), Freshness::Fresh);
        assert_eq!(freshness(at(1003), short, None), Freshness::Refresh { fallback: true });
    }

    #[test]
    fn the_initial_response_carries_token_and_extensions() {
        let token =
            OAuthBearerToken::new("abc.def.", Duration::from_secs(60)).with_extension("logicalCluster", "lkc-1");
        assert_eq!(initial_response(&token), b"n,,\x01auth=Bearer abc.def.\x01logicalCluster=lkc-1\x01\x01");
        assert!(!format!("{token:?}").contains("abc.def."), "the token shows in Debug");
    }

    #[test]
    fn tokens_rfc_7628_cannot_carry_are_refused() {
        let bad = [
            OAuthBearerToken::new("", Duration::from_secs(1)),
            OAuthBearerToken::new("a b", Duration::from_secs(1)),
            OAuthBearerToken::new("t", Duration::from_secs(1)).with_extension("auth", "x"),
            OAuthBearerToken::new("t", Duration::from_secs(1)).with_extension("k1", "x"),
            OAuthBearerToken::new("t", Duration::from_secs(1)).with_extension("k", "a\x01b"),
            OAuthBearerToken::new("t", Duration::from_secs(1)).with_extension("k", ""),
            OAuthBearerToken::new("a,b", Duration::from_secs(1)),
        ];
        for token in bad {
            assert!(token.check().is_err(), "{token:?}");
        }
        OAuthBearerToken::new("t", Duration::from_secs(1)).with_extension("k", "a b").check().unwrap();
        OAuthBearerToken::new("abc.DEF-_~+/.==", Duration::from_secs(1)).with_extension("k", "a\r\nb").check().unwrap();
    }

    #[test]
    fn unsecured_jwts_follow_librdkafkas_config() {
        let jwt = UnsecuredJwt::parse("principal=admin scope=read,write lifeSeconds=60 extension_traceId=123").unwrap();
        let token = jwt.token(at(1_000_000));
        assert_eq!(token.expires_at(), at(1_000_060));
        let value = token.value.expose();
        let parts: Vec<&str> = value.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[2], "", "alg none: no signature");
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "none"}));
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"sub": "admin", "iat": 1_000_000, "exp": 1_000_060, "scope": ["read", "write"]})
        );
        assert_eq!(token.extensions, [("traceId".to_owned(), "123".to_owned())]);
        for bad in [
            "",
            "scope=a",
            "principal=a lifeSeconds=x",
            "principal=a lifeSeconds=0",
            "principal=a color=red",
            "principal",
        ] {
            assert!(UnsecuredJwt::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn the_source_asks_the_provider_once_while_the_token_is_fresh_and_falls_back_on_failure() {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let provider = move || {
            let call = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                match call {
                    0 => Ok(OAuthBearerToken::new("first", Duration::from_secs(3600))),
                    1 => Err::<OAuthBearerToken, TokenError>("identity provider down".into()),
                    _ => Ok(OAuthBearerToken::new("third", Duration::from_secs(3600))),
                }
            }
        };
        let source = TokenSource::new(Arc::new(provider));
        assert_eq!(source.current().await.unwrap().value.expose(), "first");
        assert_eq!(source.current().await.unwrap().value.expose(), "first");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a fresh token is not fetched again");
        // Age the cached token past 80 %: the provider fails, the old token
        // still holds and is sent.
        {
            let mut cache = source.cached.lock().await;
            let (token, obtained) = cache.token.as_mut().unwrap();
            *obtained = SystemTime::now() - Duration::from_secs(3600);
            token.expires_at = SystemTime::now() + Duration::from_secs(60);
        }
        assert_eq!(source.current().await.unwrap().value.expose(), "first");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Once the old one has expired, the refresh goes through.
        {
            let mut cache = source.cached.lock().await;
            cache.token.as_mut().unwrap().0.expires_at = SystemTime::now() - Duration::from_secs(1);
        }
        assert_eq!(source.current().await.unwrap().value.expose(), "third");
    }

    #[tokio::test]
    async fn a_failing_provider_without_a_token_is_an_error_naming_it() {
        let source = TokenSource::new(Arc::new(|| async { Err::<OAuthBearerToken, TokenError>("no network".into()) }));
        let error = source.current().await.unwrap_err();
        assert!(error.contains("token provider failed: no network"), "{error}");
        let expired = TokenSource::new(Arc::new(|| async { Ok(OAuthBearerToken::expiring_at("t", UNIX_EPOCH)) }));
        assert!(expired.current().await.unwrap_err().contains("already expired"));
    }
}
