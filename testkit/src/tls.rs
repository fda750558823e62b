//! A TLS listener in front of Tansu: stunnel (Debian package `stunnel4`,
//! OpenSSL inside), a TLS terminator nobody here wrote, with certificates
//! made fresh by each test ([`TestCertificates`], rcgen).
//!
//! Tansu 0.6.0's own `--cert`/`--key` flags do not give a TLS listener (see
//! FIXTURES.md §8), so Tansu listens in plaintext on a loopback port and
//! advertises the stunnel port: every connection a client opens after
//! bootstrap goes through TLS too.
//!
//! What this fixture does not do: TLS 1.2-only or 1.3-only listeners (stunnel
//! offers both; which one a test negotiates is not checked), certificate
//! revocation, encrypted client keys.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

use crate::{Tansu, TansuOptions, TestkitError};

/// PEM files of one test's private PKI, in a temporary directory that is
/// removed on drop.
#[derive(Debug)]
pub struct TestCertificates {
    dir: PathBuf,
    /// The CA that issued the broker and client certificates.
    pub ca: PathBuf,
    /// The broker's certificate (for `localhost` and 127.0.0.1) and key.
    pub server_cert: PathBuf,
    /// The broker's private key.
    pub server_key: PathBuf,
    /// The broker's certificate expired a year ago (same CA and names),
    /// with its key.
    pub expired_cert: PathBuf,
    /// A certificate issued only for `kafka.invalid`, by the same CA, with
    /// its key.
    pub wrong_name_cert: PathBuf,
    /// A client certificate for mTLS, issued by the CA.
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
    /// A CA that issued nothing here: brokers do not chain to it.
    pub other_ca: PathBuf,
    /// A client certificate from the other CA: a broker refuses it.
    pub untrusted_client_cert: PathBuf,
    /// Its private key.
    pub untrusted_client_key: PathBuf,
}

fn this_year() -> i32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    1970 + (secs / 31_556_952) as i32
}

fn ca(name: &str) -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let year = this_year();
    params.not_before = date_time_ymd(year - 1, 1, 1);
    params.not_after = date_time_ymd(year + 1, 12, 31);
    CertifiedIssuer::self_signed(params, KeyPair::generate()?)
}

/// A leaf certificate and its key, PEM.
fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    purpose: ExtendedKeyUsagePurpose,
    expired: bool,
) -> Result<(String, String), rcgen::Error> {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("rill-test-client"));
    params.extended_key_usages = vec![purpose];
    let year = this_year();
    if expired {
        params.not_before = date_time_ymd(year - 3, 1, 1);
        params.not_after = date_time_ymd(year - 1, 1, 1);
    } else {
        params.not_before = date_time_ymd(year - 1, 1, 1);
        params.not_after = date_time_ymd(year + 1, 12, 31);
    }
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, issuer)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

impl TestCertificates {
    /// Makes a CA, broker and client certificates, and a second CA with a
    /// client certificate of its own, in a fresh temporary directory.
    pub fn generate() -> Result<TestCertificates, TestkitError> {
        let dir = std::env::temp_dir().join(crate::unique_topic("rill-tls"));
        fs::create_dir_all(&dir).map_err(|e| TestkitError::Start(format!("{}: {e}", dir.display())))?;
        let fail = |e: rcgen::Error| TestkitError::Start(format!("certificate generation: {e}"));
        let write = |name: &str, pem: &str| -> Result<PathBuf, TestkitError> {
            let path = dir.join(name);
            fs::write(&path, pem).map_err(|e| TestkitError::Start(format!("{}: {e}", path.display())))?;
            Ok(path)
        };
        let authority = ca("rill test CA").map_err(fail)?;
        let other = ca("rill unrelated CA").map_err(fail)?;
        let names = ["localhost", "127.0.0.1"];
        let (server_cert, server_key) =
            leaf(&authority, &names, ExtendedKeyUsagePurpose::ServerAuth, false).map_err(fail)?;
        let (client_cert, client_key) =
            leaf(&authority, &["rill-test-client"], ExtendedKeyUsagePurpose::ClientAuth, false).map_err(fail)?;
        let (untrusted_cert, untrusted_key) =
            leaf(&other, &["rill-test-client"], ExtendedKeyUsagePurpose::ClientAuth, false).map_err(fail)?;
        // The expired and wrong-name certificates are written with their
        // keys in one file, as stunnel's `cert` accepts.
        let expired_cert = {
            let (cert, key) = leaf(&authority, &names, ExtendedKeyUsagePurpose::ServerAuth, true).map_err(fail)?;
            write("expired.pem", &format!("{cert}{key}"))?
        };
        let wrong_name_cert = {
            let (cert, key) =
                leaf(&authority, &["kafka.invalid"], ExtendedKeyUsagePurpose::ServerAuth, false).map_err(fail)?;
            write("wrong-name.pem", &format!("{cert}{key}"))?
        };
        Ok(TestCertificates {
            ca: write("ca.pem", &authority.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server.key", &server_key)?,
            expired_cert,
            wrong_name_cert,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client.key", &client_key)?,
            other_ca: write("other-ca.pem", &other.pem())?,
            untrusted_client_cert: write("untrusted-client.pem", &untrusted_cert)?,
            untrusted_client_key: write("untrusted-client.key", &untrusted_key)?,
            dir,
        })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The client key encrypted with `password` by the `openssl` command
    /// (PKCS#8, PBES2 with AES-256-CBC and PBKDF2, or scrypt): what
    /// `ssl.key.password` opens.
    pub fn encrypted_client_key(&self, password: &str, scrypt: bool) -> Result<PathBuf, TestkitError> {
        let out = self.dir.join(if scrypt { "client-scrypt.key" } else { "client-pbkdf2.key" });
        let mut command = Command::new("openssl");
        command.args(["pkcs8", "-topk8", "-v2", "aes-256-cbc"]);
        if scrypt {
            command.arg("-scrypt");
        }
        let output = command
            .arg("-in")
            .arg(&self.client_key)
            .arg("-out")
            .arg(&out)
            .arg("-passout")
            .arg(format!("pass:{password}"))
            .output()
            .map_err(|e| TestkitError::Start(format!("cannot run openssl (Debian: apt-get install openssl): {e}")))?;
        if !output.status.success() {
            return Err(TestkitError::Start(format!(
                "openssl pkcs8 failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(out)
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Which certificate the listener presents, and whether it asks for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The broker certificate; no client certificate asked for.
    Tls,
    /// The broker certificate, and a client certificate from the test CA
    /// is required (stunnel `verify = 2`).
    Mutual,
    /// An expired broker certificate.
    Expired,
    /// A certificate for `kafka.invalid` only.
    WrongName,
}

/// Tansu reachable only through stunnel.
#[derive(Debug)]
pub struct TlsTansu {
    stunnel: Child,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    /// The broker behind the listener (plaintext on its own port).
    pub tansu: Tansu,
}

impl TlsTansu {
    /// Starts Tansu advertising a stunnel port, and stunnel on it with the
    /// given listener's certificates.
    pub async fn start(certificates: &TestCertificates, listener: Listener) -> Result<TlsTansu, TestkitError> {
        let binary = stunnel_binary()?;
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| TestkitError::Start(e.to_string()))?;
            probe.local_addr().map_err(|e| TestkitError::Start(e.to_string()))?.port()
        };
        let tansu = Tansu::start_with(TansuOptions { advertised_port: Some(port) }).await?;
        let (cert, key) = match listener {
            Listener::Tls | Listener::Mutual => (certificates.server_cert.clone(), certificates.server_key.clone()),
            Listener::Expired => (certificates.expired_cert.clone(), certificates.expired_cert.clone()),
            Listener::WrongName => (certificates.wrong_name_cert.clone(), certificates.wrong_name_cert.clone()),
        };
        let mut service = format!(
            "foreground = yes\npid =\ndebug = notice\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{}\ncert \
             = {}\nkey = {}\n",
            tansu.listen_port(),
            cert.display(),
            key.display()
        );
        if listener == Listener::Mutual {
            service.push_str(&format!("verify = 2\nCAfile = {}\n", certificates.ca.display()));
        }
        let config = certificates.dir().join(format!("stunnel-{port}.conf"));
        fs::write(&config, service).map_err(|e| TestkitError::Start(format!("{}: {e}", config.display())))?;
        let log = certificates.dir().join(format!("stunnel-{port}.log"));
        let log_file = fs::File::create(&log).map_err(|e| TestkitError::Start(e.to_string()))?;
        let log_err = log_file.try_clone().map_err(|e| TestkitError::Start(e.to_string()))?;
        let stunnel = Command::new(&binary)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| TestkitError::Start(format!("cannot run {}: {e}", binary.display())))?;
        let mut fixture = TlsTansu { stunnel, port, config, log, tansu };
        let log = fixture.log.clone();
        crate::wait_started(
            &mut fixture.stunnel,
            "stunnel",
            Duration::from_secs(10),
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            || fs::read_to_string(&log).unwrap_or_default(),
        )?;
        Ok(fixture)
    }

    /// `127.0.0.1:port` of the TLS listener.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `localhost:port` of the TLS listener: the name the certificate
    /// gives, for host-name checks.
    pub fn bootstrap_by_name(&self) -> String {
        format!("localhost:{}", self.port)
    }

    /// The TLS listener's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's own plaintext port, behind the listener.
    pub fn plaintext_bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.tansu.listen_port())
    }
}

impl Drop for TlsTansu {
    fn drop(&mut self) {
        let _ = self.stunnel.kill();
        let _ = self.stunnel.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- stunnel log {} ---\n{}",
                self.log.display(),
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        let _ = fs::remove_file(&self.config);
    }
}

/// `RILL_STUNNEL_BIN`, else `stunnel4` or `stunnel` on the PATH.
fn stunnel_binary() -> Result<PathBuf, TestkitError> {
    if let Some(bin) = std::env::var_os("RILL_STUNNEL_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["stunnel4", "stunnel"] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(TestkitError::Start(
        "stunnel is not installed (Debian: apt-get install stunnel4); the TLS tests need it".into(),
    ))
}
