//! Prometheus text over HTTP: the metrics the client and the processor
//! hand to the `metrics` facade, rendered by `metrics-exporter-prometheus`
//! for `GET /metrics`.
//!
//! The exporter's own listener brings hyper; a scrape endpoint needs only
//! to read a request line and write one response per connection, which is
//! what this does (HTTP/1.1, `Connection: close`, requests over 8 KiB
//! refused).

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A recorder is installed already.
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(#[from] BuildError),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        error: std::io::Error,
    },
}

/// Installs the Prometheus recorder as the process's metrics recorder and
/// serves its text at `http://addr/metrics` until the runtime ends.
/// Returns the address bound (port 0 picks one).
pub async fn serve(addr: SocketAddr) -> Result<SocketAddr, MetricsError> {
    let listener = TcpListener::bind(addr).await.map_err(|error| MetricsError::Listen { addr, error })?;
    let bound = listener.local_addr().map_err(|error| MetricsError::Listen { addr, error })?;
    let handle = PrometheusBuilder::new().install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        // Histograms are drained into their summaries here.
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &handle)).await;
            });
        }
    });
    Ok(bound)
}

/// Reads one request and answers it.
async fn answer(mut stream: TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await?;
        if read == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buffer[..read]);
        if request.len() > 8192 {
            return respond(&mut stream, "431 Request Header Fields Too Large", "too large\n").await;
        }
    }
    let line = request.split(|&c| c == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&c| c == b' ');
    match (parts.next(), parts.next()) {
        (Some(b"GET"), Some(b"/metrics")) => {
            handle.run_upkeep();
            respond(&mut stream, "200 OK", &handle.render()).await
        }
        (Some(b"GET"), _) => respond(&mut stream, "404 Not Found", "only /metrics\n").await,
        _ => respond(&mut stream, "405 Method Not Allowed", "GET /metrics\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
