//! `security.protocol` and the TLS settings (`ssl.*`), and the rustls client
//! configuration built from them.
//!
//! TLS is rustls on the `ring` provider: no OpenSSL, no system library, so
//! the static binary carries its own roots (webpki-roots) unless
//! `ssl.ca.location` / `ssl.ca.pem` name others. The rustls configuration is
//! built once, when the client configuration is validated, so a missing file
//! or a bad PEM is a configuration error naming the key, not a connect-time
//! surprise.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::ConfigError;

/// How bytes travel to the brokers (`security.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SecurityProtocol {
    /// TCP, no TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL authentication over TCP.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Parses the property value, in any case (`SASL_SSL`, `sasl_ssl`).
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value.trim().to_ascii_lowercase().as_str() {
            "plaintext" => SecurityProtocol::Plaintext,
            "ssl" => SecurityProtocol::Ssl,
            "sasl_plaintext" => SecurityProtocol::SaslPlaintext,
            "sasl_ssl" => SecurityProtocol::SaslSsl,
            _ => return None,
        })
    }

    /// Whether connections use TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether connections authenticate with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl)
    }
}

/// A password or key that must never be printed: `Debug` and `Display`
/// show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where PEM comes from: a file or the value itself.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pem {
    File(PathBuf),
    Inline(Secret),
}

impl Pem {
    /// The PEM text and the property it came from, for error messages.
    fn read(&self, file_key: &'static str, inline_key: &'static str) -> Result<(Vec<u8>, &'static str), ConfigError> {
        match self {
            Pem::File(path) => std::fs::read(path)
                .map(|bytes| (bytes, file_key))
                .map_err(|e| ConfigError::invalid_value(file_key, &path.display().to_string(), e.to_string())),
            Pem::Inline(text) => Ok((text.expose().as_bytes().to_vec(), inline_key)),
        }
    }
}

/// The `ssl.*` settings. Clones share the built rustls configuration until
/// one of them is changed.
#[derive(Clone, Default)]
pub(crate) struct TlsSettings {
    ca: Option<Pem>,
    verify_hostname: bool,
    certificate: Option<Pem>,
    key: Option<Pem>,
    key_password: Option<Secret>,
    built: OnceLock<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = |pem: &Option<Pem>| match pem {
            None => "none".to_owned(),
            Some(Pem::File(path)) => path.display().to_string(),
            Some(Pem::Inline(_)) => "inline PEM".to_owned(),
        };
        f.debug_struct("TlsSettings")
            .field("ca", &source(&self.ca))
            .field("verify_hostname", &self.verify_hostname)
            .field("certificate", &source(&self.certificate))
            .field("key", &source(&self.key))
            .field("key_password", &self.key_password)
            .finish()
    }
}

impl TlsSettings {
    pub(crate) fn new() -> Self {
        TlsSettings { verify_hostname: true, ..TlsSettings::default() }
    }

    /// Applies an `ssl.*` property; `Ok(false)` for a key that is not one.
    pub(crate) fn set_property(&mut self, key: &str, value: &str) -> Result<bool, ConfigError> {
        let path = || Pem::File(PathBuf::from(value.trim()));
        let inline = || Pem::Inline(Secret::new(value));
        match key {
            "ssl.ca.location" => self.ca = Some(path()),
            "ssl.ca.pem" => self.ca = Some(inline()),
            "ssl.certificate.location" => self.certificate = Some(path()),
            "ssl.certificate.pem" => self.certificate = Some(inline()),
            "ssl.key.location" => self.key = Some(path()),
            "ssl.key.pem" => self.key = Some(inline()),
            "ssl.key.password" => self.key_password = Some(Secret::new(value)),
            "ssl.endpoint.identification.algorithm" => {
                self.verify_hostname = match value.trim().to_ascii_lowercase().as_str() {
                    "https" => true,
                    "none" | "" => false,
                    _ => return Err(ConfigError::invalid_value(key, value, "expected `https` or `none`")),
                }
            }
            _ => return Ok(false),
        }
        self.built = OnceLock::new();
        Ok(true)
    }

    /// The rustls configuration, built on first use.
    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
        if let Some(built) = self.built.get() {
            return Ok(built.clone());
        }
        let built = Arc::new(self.build()?);
        Ok(self.built.get_or_init(|| built).clone())
    }

    fn build(&self) -> Result<rustls::ClientConfig, ConfigError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        match &self.ca {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(ca) => {
                let (pem, key) = ca.read("ssl.ca.location", "ssl.ca.pem")?;
                let certificates = certificates(&pem, key)?;
                let (_, unusable) = roots.add_parsable_certificates(certificates);
                if roots.is_empty() {
                    return Err(ConfigError::invalid_value(key, "…", "no usable CA certificate in it"));
                }
                if unusable > 0 {
                    tracing::warn!(target: "rill::security", property = key, unusable, "some CA certificates could not be used");
                }
            }
        }
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| ConfigError::Invalid(format!("TLS verifier: {e}")))?;
        let verifier: Arc<dyn ServerCertVerifier> = if self.verify_hostname {
            verifier
        } else {
            tracing::warn!(
                target: "rill::security",
                "ssl.endpoint.identification.algorithm=none: broker certificates are checked against the CA but not \
                 against the broker's host name"
            );
            Arc::new(AnyHostName(verifier))
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| ConfigError::Invalid(format!("TLS versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        match (&self.certificate, &self.key) {
            (None, None) => Ok(builder.with_no_client_auth()),
            (Some(certificate), Some(key)) => {
                let (pem, cert_key) = certificate.read("ssl.certificate.location", "ssl.certificate.pem")?;
                let chain = certificates(&pem, cert_key)?;
                let (pem, key_key) = key.read("ssl.key.location", "ssl.key.pem")?;
                let private_key = self.private_key(&pem, key_key)?;
                builder
                    .with_client_auth_cert(chain, private_key)
                    .map_err(|e| ConfigError::Invalid(format!("client certificate and key: {e}")))
            }
            (Some(_), None) => Err(ConfigError::Invalid(
                "`ssl.certificate.location` (or `.pem`) needs `ssl.key.location` (or `.pem`)".into(),
            )),
            (None, Some(_)) => Err(ConfigError::Invalid(
                "`ssl.key.location` (or `.pem`) needs `ssl.certificate.location` (or `.pem`)".into(),
            )),
        }
    }

    fn private_key(&self, pem: &[u8], key: &'static str) -> Result<PrivateKeyDer<'static>, ConfigError> {
        let text = std::str::from_utf8(pem).unwrap_or_default();
        if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
            return self.decrypt_key(text, key);
        }
        if text.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(ConfigError::invalid_value(
                key,
                "…",
                "an OpenSSL-encrypted key of the old format (Proc-Type: 4,ENCRYPTED) is not supported; convert it to \
                 encrypted PKCS#8 (`openssl pkcs8 -topk8 -v2 aes-256-cbc -in key.pem -out key-pkcs8.pem`)",
            ));
        }
        PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| ConfigError::invalid_value(key, "…", format!("no private key in PEM: {e}")))
    }

    /// An encrypted PKCS#8 key (PBES2: PBKDF2 or scrypt, AES-CBC), opened
    /// with `ssl.key.password`.
    fn decrypt_key(&self, pem: &str, key: &'static str) -> Result<PrivateKeyDer<'static>, ConfigError> {
        use pkcs8::der::Decode;
        let Some(password) = &self.key_password else {
            return Err(ConfigError::Invalid(format!(
                "the private key of `{key}` is encrypted: set `ssl.key.password`"
            )));
        };
        let begin = pem.find("-----BEGIN ENCRYPTED PRIVATE KEY-----").expect("the caller found it");
        let end_marker = "-----END ENCRYPTED PRIVATE KEY-----";
        let end = pem[begin..].find(end_marker).map(|at| begin + at + end_marker.len()).ok_or_else(|| {
            ConfigError::invalid_value(key, "…", "the encrypted private key's PEM block does not end")
        })?;
        let (_, document) = pkcs8::der::Document::from_pem(&pem[begin..end])
            .map_err(|e| ConfigError::invalid_value(key, "…", format!("bad encrypted private key PEM: {e}")))?;
        let encrypted = pkcs8::EncryptedPrivateKeyInfo::from_der(document.as_bytes())
            .map_err(|e| ConfigError::invalid_value(key, "…", format!("bad encrypted private key: {e}")))?;
        let decrypted = encrypted.decrypt(password.expose().as_bytes()).map_err(|e| {
            ConfigError::invalid_value(
                "ssl.key.password",
                "[not shown]",
                format!(
                    "cannot decrypt the private key of `{key}` ({e}): a wrong password, or a scheme other than PBES2 \
                     with PBKDF2 or scrypt and AES-CBC"
                ),
            )
        })?;
        Ok(PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(decrypted.as_bytes().to_vec())))
    }
}

fn certificates(pem: &[u8], key: &'static str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::invalid_value(key, "…", format!("bad PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(ConfigError::invalid_value(key, "…", "no certificate in PEM"));
    }
    Ok(certificates)
}

/// `ssl.endpoint.identification.algorithm=none`: the chain and signatures
/// are verified as usual; only a certificate not issued for this host name
/// is accepted.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The rustls error inside an I/O error from a TLS stream.
fn tls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// The words for an alert by which a broker refuses the TLS session, or
/// `None` for any other alert. Under TLS 1.3 such an alert can come after
/// the client's side of the handshake is done, on the first read.
fn refusal(alert: rustls::AlertDescription) -> Option<String> {
    use rustls::AlertDescription as Alert;
    matches!(
        alert,
        Alert::BadCertificate
            | Alert::CertificateRequired
            | Alert::UnknownCA
            | Alert::CertificateUnknown
            | Alert::AccessDenied
            | Alert::HandshakeFailure
    )
    .then(|| {
        format!(
            "the broker refused the TLS session ({alert:?}); it may require a client certificate it trusts \
             (ssl.certificate.location, ssl.key.location)"
        )
    })
}

/// A read error that is the broker refusing the session (see [`refusal`]).
pub(crate) fn refused_session(error: &std::io::Error) -> Option<String> {
    match tls_error(error)? {
        rustls::Error::AlertReceived(alert) => refusal(*alert),
        _ => None,
    }
}

/// What a failed TLS handshake means, in words, and whether trying again
/// can help. A certificate problem or a refused client certificate is
/// fatal; a handshake cut short is not (the broker may be restarting, or
/// the port may not speak TLS: the message says both).
pub(crate) fn explain_handshake_error(error: &std::io::Error) -> (String, bool) {
    let Some(tls) = tls_error(error) else {
        return match error.kind() {
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => (
                format!(
                    "the broker closed the connection during the TLS handshake ({error}); is this port a TLS \
                     listener? (security.protocol=ssl or sasl_ssl needs one)"
                ),
                false,
            ),
            _ => (format!("TLS handshake failed: {error}"), false),
        };
    };
    let message = match tls {
        rustls::Error::InvalidCertificate(reason) => match reason {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => format!(
                "the broker's certificate is not trusted ({reason:?}); set ssl.ca.location to the CA that issued it"
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the broker's certificate has expired".to_owned()
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the broker's certificate is not valid yet (check the clock)".to_owned()
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "the broker's certificate is not valid for this host name ({}); connect by a name it was issued \
                 for, or set ssl.endpoint.identification.algorithm=none",
                certificate_error_detail(reason)
            ),
            other => format!("the broker's certificate was rejected: {other:?}"),
        },
        rustls::Error::AlertReceived(alert) => {
            refusal(*alert).unwrap_or_else(|| format!("the broker ended the TLS handshake with {alert:?}"))
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => format!(
            "the broker did not answer in TLS ({tls}); is this a plaintext port? (set security.protocol=plaintext \
             or sasl_plaintext for it)"
        ),
        other => format!("TLS handshake failed: {other}"),
    };
    (message, true)
}

fn certificate_error_detail(error: &CertificateError) -> String {
    match error {
        CertificateError::NotValidForNameContext { expected, presented } => {
            format!("expected {expected:?}, the certificate names {}", presented.join(", "))
        }
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_in_any_case() {
        assert_eq!(SecurityProtocol::parse("SASL_SSL"), Some(SecurityProtocol::SaslSsl));
        assert_eq!(SecurityProtocol::parse("ssl"), Some(SecurityProtocol::Ssl));
        assert_eq!(SecurityProtocol::parse(" Plaintext "), Some(SecurityProtocol::Plaintext));
        assert_eq!(SecurityProtocol::parse("sasl_plaintext"), Some(SecurityProtocol::SaslPlaintext));
        assert_eq!(SecurityProtocol::parse("tls"), None);
        assert!(SecurityProtocol::SaslSsl.uses_tls() && SecurityProtocol::SaslSsl.uses_sasl());
        assert!(!SecurityProtocol::SaslPlaintext.uses_tls());
    }

    #[test]
    fn secrets_are_never_printed() {
        let mut tls = TlsSettings::new();
        tls.set_property("ssl.key.password", "hunter2").unwrap();
        tls.set_property("ssl.key.pem", "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----").unwrap();
        let shown = format!("{tls:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("c2VjcmV0"), "{shown}");
        assert!(shown.contains("[redacted]") && shown.contains("inline PEM"), "{shown}");
    }

    #[test]
    fn the_default_roots_build_and_are_cached() {
        let tls = TlsSettings::new();
        let first = tls.client_config().unwrap();
        assert!(Arc::ptr_eq(&first, &tls.client_config().unwrap()));
        let mut changed = tls.clone();
        changed.set_property("ssl.endpoint.identification.algorithm", "none").unwrap();
        assert!(!Arc::ptr_eq(&first, &changed.client_config().unwrap()));
    }

    #[test]
    fn bad_files_name_their_property() {
        let mut tls = TlsSettings::new();
        tls.set_property("ssl.ca.location", "/nonexistent/ca.pem").unwrap();
        let error = tls.client_config().unwrap_err();
        assert!(error.to_string().contains("ssl.ca.location") && error.to_string().contains("/nonexistent"), "{error}");

        let mut tls = TlsSettings::new();
        tls.set_property("ssl.ca.pem", "not a certificate").unwrap();
        assert!(tls.client_config().unwrap_err().to_string().contains("ssl.ca.pem"));

        let mut tls = TlsSettings::new();
        tls.set_property("ssl.certificate.pem", "x").unwrap();
        assert!(tls.client_config().unwrap_err().to_string().contains("needs `ssl.key.location`"));

        // An encrypted key without its password, or one that is not
        // PKCS#8, says what to do; the password never shows.
        let encrypted = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let mut tls = TlsSettings::new();
        tls.set_property("ssl.certificate.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap();
        tls.set_property("ssl.key.pem", encrypted).unwrap();
        let error = tls.client_config().unwrap_err();
        assert!(error.to_string().contains("set `ssl.key.password`"), "{error}");
        tls.set_property("ssl.key.password", "hunter2").unwrap();
        let error = tls.client_config().unwrap_err();
        assert!(error.to_string().contains("bad encrypted private key"), "{error}");
        assert!(!error.to_string().contains("hunter2"), "{error}");
        let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----\n";
        tls.set_property("ssl.key.pem", legacy).unwrap();
        assert!(tls.client_config().unwrap_err().to_string().contains("openssl pkcs8 -topk8"));

        let mut tls = TlsSettings::new();
        assert!(tls.set_property("ssl.endpoint.identification.algorithm", "dns").is_err());
        assert!(!tls.set_property("ssl.cipher.suites", "x").unwrap());
    }
}
