//! A TCP proxy between client and broker that delays, cuts, blackholes and
//! truncates traffic.
//!
//! Faults come two ways: set by the test ([`Proxy::set_fault`],
//! [`Proxy::cut_all`]), or drawn at random per forwarded chunk from a seeded
//! generator ([`Proxy::set_chaos`]). Every connection and direction draws
//! from its own generator derived from the seed, so a failing run can be
//! replayed with `RILL_PROXY_SEED=<seed>`; the seed is printed when a test
//! panics.
//!
//! For a broker to be reached only through the proxy, it must advertise the
//! proxy's port: bind the proxy first ([`Proxy::bind`]), start the broker
//! advertising [`Proxy::port`], then [`Proxy::forward_to`] it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::TestkitError;

/// A fault applied to every chunk while it is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Hold each chunk this long before forwarding it.
    Delay(Duration),
    /// Swallow everything; connections stay open and silent.
    Blackhole,
    /// Forward this many bytes of the next broker-to-client chunk, then
    /// close the connection (a response cut mid-frame).
    TruncateResponse(usize),
    /// Close connections on their next chunk.
    Cut,
    /// Forward requests, but close the connection instead of forwarding any
    /// answer: the broker acts on each request and the client never learns
    /// it did.
    CutResponses,
}

/// Random faults, each with a probability per chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Chaos {
    /// Probability of delaying a chunk by up to `max_delay`.
    pub delay: f64,
    /// Longest delay.
    pub max_delay: Duration,
    /// Probability of closing the connection instead of forwarding.
    pub cut: f64,
    /// Probability of forwarding part of a chunk, then closing.
    pub truncate: f64,
}

#[derive(Debug)]
struct State {
    fault: Fault,
    chaos: Option<Chaos>,
    connections: Vec<AbortHandle>,
}

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    listener: Option<TcpListener>,
    port: u16,
    seed: u64,
    state: Arc<Mutex<State>>,
    accept: Option<AbortHandle>,
    connections_seen: Arc<AtomicU64>,
}

/// splitmix64: a small, well-mixed generator; enough for fault schedules.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Proxy {
    /// Binds a loopback port. The seed comes from `RILL_PROXY_SEED` when
    /// set, else from `seed`.
    pub async fn bind(seed: u64) -> Result<Proxy, TestkitError> {
        let seed = std::env::var("RILL_PROXY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(seed);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| TestkitError::Start(format!("proxy cannot bind: {e}")))?;
        let port = listener.local_addr().map_err(|e| TestkitError::Start(e.to_string()))?.port();
        Ok(Proxy {
            listener: Some(listener),
            port,
            seed,
            state: Arc::new(Mutex::new(State { fault: Fault::None, chaos: None, connections: Vec::new() })),
            accept: None,
            connections_seen: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Starts forwarding accepted connections to `upstream`.
    pub fn forward_to(&mut self, upstream: SocketAddr) {
        let listener = self.listener.take().expect("forward_to is called once");
        let state = self.state.clone();
        let seed = self.seed;
        let seen = self.connections_seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let index = seen.fetch_add(1, Ordering::Relaxed);
                let state2 = state.clone();
                let connection = tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let base = seed ^ index.wrapping_mul(0x2545_f491_4f6c_dd1d);
                    let up = pump(client_read, server_write, state2.clone(), Rng(base), false);
                    let down = pump(server_read, client_write, state2, Rng(base ^ 0xdead_beef), true);
                    // Either direction ending ends the connection.
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                    }
                });
                let mut state = lock(&state);
                state.connections.retain(|c| !c.is_finished());
                state.connections.push(connection.abort_handle());
            }
        });
        self.accept = Some(task.abort_handle());
    }

    /// The port clients (and the broker's advertised listener) use.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The seed of the random faults.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.connections_seen.load(Ordering::Relaxed)
    }

    /// Sets the fault applied to every chunk from now on.
    pub fn set_fault(&self, fault: Fault) {
        lock(&self.state).fault = fault;
    }

    /// Turns random faults on (`Some`) or off.
    pub fn set_chaos(&self, chaos: Option<Chaos>) {
        lock(&self.state).chaos = chaos;
    }

    /// Closes every open connection now.
    pub fn cut_all(&self) {
        for connection in lock(&self.state).connections.drain(..) {
            connection.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        self.cut_all();
        if std::thread::panicking() {
            eprintln!("--- fault proxy seed: RILL_PROXY_SEED={} ---", self.seed);
        }
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<Mutex<State>>,
    mut rng: Rng,
    to_client: bool,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let (fault, chaos) = {
            let state = lock(&state);
            (state.fault, state.chaos)
        };
        let mut chunk = &buffer[..n];
        match fault {
            Fault::None => {}
            Fault::Delay(delay) => tokio::time::sleep(delay).await,
            Fault::Blackhole => continue,
            Fault::Cut => return,
            Fault::TruncateResponse(keep) if to_client => {
                let _ = to.write_all(&chunk[..keep.min(chunk.len())]).await;
                lock(&state).fault = Fault::None;
                return;
            }
            Fault::TruncateResponse(_) => {}
            Fault::CutResponses if to_client => return,
            Fault::CutResponses => {}
        }
        if let Some(chaos) = chaos {
            let roll = rng.unit();
            if roll < chaos.cut {
                return;
            } else if roll < chaos.cut + chaos.truncate {
                let keep = (rng.next() as usize) % chunk.len().max(1);
                let _ = to.write_all(&chunk[..keep]).await;
                return;
            } else if roll < chaos.cut + chaos.truncate + chaos.delay {
                let micros = chaos.max_delay.as_micros().max(1) as u64;
                tokio::time::sleep(Duration::from_micros(rng.next() % micros)).await;
            }
        }
        while !chunk.is_empty() {
            match to.write(chunk).await {
                Ok(0) | Err(_) => return,
                Ok(written) => chunk = &chunk[written..],
            }
        }
    }
}
