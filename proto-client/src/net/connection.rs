//! One TCP connection to one broker.
//!
//! ```text
//!  callers (any task)                      connection task (one per socket)
//!  ──────────────────                      ────────────────────────────────
//!  encode request ──Command{id,frame}──▶  register id + deadline, queue frame
//!                                          write queued frames (vectored)
//!                                          read bytes → FrameReader → frames
//!  decode reply  ◀──oneshot(frame)──────  match frame to id, hand it over
//! ```
//!
//! Callers encode and decode in their own tasks; the connection task only
//! moves bytes and keeps the table of requests in flight. Any protocol
//! violation (oversized frame, unknown correlation id), socket error or
//! request timeout closes the connection, and every request still waiting
//! on it fails with the reason.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, SaslAuthenticateRequest, SaslHandshakeRequest};
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::net::BrokerAddress;
use crate::net::sasl::{self, SaslSettings, Step};
use crate::wire::versions::ApiVersions;
use crate::wire::{ApiRequest, frame};

/// Requests queued for the connection task before senders wait.
const COMMAND_QUEUE: usize = 256;
/// Stop taking new requests while this much is still unwritten.
const OUTBOX_HIGH_WATER: usize = 8 * 1024 * 1024;
/// Frames gathered into one vectored write.
const MAX_IO_SLICES: usize = 64;
/// How long a new connection may go unanswered before the listener is
/// asked which protocol it speaks (at most half the setup timeout).
const SUSPICIOUS_SILENCE: Duration = Duration::from_secs(2);

fn timed_out(address: &BrokerAddress, setup: Duration, what: &str) -> Error {
    Error::connect(address, io::Error::new(io::ErrorKind::TimedOut, format!("no {what} within {setup:?}")))
}

/// A connection to one broker, with its negotiated API versions.
///
/// Cheap to clone; all clones share the socket. Requests from any number of
/// tasks are pipelined on it. The socket closes when the last clone is
/// dropped and nothing is in flight, or on the first error.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pipe: Pipe,
    versions: ApiVersions,
    client_id: StrBytes,
    request_timeout: Duration,
}

impl Connection {
    /// Connects, sends ApiVersions, negotiates, and authenticates when
    /// `security.protocol` says SASL.
    ///
    /// Every address `host` resolves to is tried in turn. The TCP connect,
    /// the TLS handshake, ApiVersions and the SASL exchange each get
    /// `connection_setup_timeout`. A listener that closes the
    /// connection before answering, or is silent halfway through, is asked
    /// on a second connection whether it speaks the other protocol (see
    /// `probe`): if it does, the error is fatal and names the setting.
    pub async fn connect(address: &BrokerAddress, config: &ClientConfig) -> Result<Connection> {
        Self::open(address, config, true).await
    }

    /// [`Self::connect`], asking about the listener's protocol only when
    /// `diagnose` (a broker's link asks at the first failure of an outage,
    /// not at every retry).
    pub(crate) async fn open(address: &BrokerAddress, config: &ClientConfig, diagnose: bool) -> Result<Connection> {
        let setup = config.connection_setup_timeout;
        let deadline = Instant::now() + setup;
        let stream = match tokio::time::timeout_at(deadline, open_stream(address)).await {
            Ok(stream) => stream?,
            Err(_) => return Err(timed_out(address, setup, "TCP connection")),
        };
        let opened = Instant::now();
        let deadline = opened + setup;
        let attempt = Self::over_tcp(stream, address, config, deadline);
        if !diagnose {
            return attempt.await;
        }
        tokio::pin!(attempt);
        let suspicious = opened + (setup / 2).min(SUSPICIOUS_SILENCE);
        let early = tokio::select! {
            result = &mut attempt => Some(result),
            () = tokio::time::sleep_until(suspicious) => None,
        };
        match early {
            Some(Err(error)) if error.is_retriable() => {
                Err(super::probe::mismatch(address, config, deadline).await.unwrap_or(error))
            }
            Some(result) => result,
            None => {
                let probe = super::probe::mismatch(address, config, deadline);
                tokio::pin!(probe);
                let mut probing = true;
                loop {
                    tokio::select! {
                        result = &mut attempt => return match result {
                            Err(error) if error.is_retriable() && probing => Err((&mut probe).await.unwrap_or(error)),
                            result => result,
                        },
                        verdict = &mut probe, if probing => match verdict {
                            Some(mismatch) => return Err(mismatch),
                            None => probing = false,
                        },
                    }
                }
            }
        }
    }

    /// TLS (when configured), ApiVersions and SASL over a TCP stream.
    async fn over_tcp(
        stream: TcpStream,
        address: &BrokerAddress,
        config: &ClientConfig,
        deadline: Instant,
    ) -> Result<Connection> {
        if !config.security_protocol.uses_tls() {
            let (reader, writer) = stream.into_split();
            return Self::handshake_over(reader, writer, address, config).await;
        }
        let tls = tokio_rustls::TlsConnector::from(config.tls.client_config()?);
        let server_name = rustls::pki_types::ServerName::try_from(address.host.clone()).map_err(|e| {
            Error::Security { broker: address.to_string(), reason: format!("not a TLS server name: {e}") }
        })?;
        let stream = match tokio::time::timeout_at(deadline, tls.connect(server_name, stream)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                let (reason, fatal) = super::security::explain_handshake_error(&error);
                return Err(if fatal {
                    Error::Security { broker: address.to_string(), reason }
                } else {
                    Error::connect(address, io::Error::new(error.kind(), reason))
                });
            }
            Err(_) => return Err(timed_out(address, config.connection_setup_timeout, "TLS handshake")),
        };
        let (reader, writer) = tokio::io::split(stream);
        Self::handshake_over(reader, writer, address, config).await
    }

    /// A connection over any byte stream that is already open (a TLS
    /// stream, an in-memory pipe in tests): sends ApiVersions and
    /// negotiates, as [`Self::connect`] does after connecting.
    pub async fn connect_over<S>(stream: S, address: &BrokerAddress, config: &ClientConfig) -> Result<Connection>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        Self::handshake_over(reader, writer, address, config).await
    }

    async fn handshake_over<R, W>(
        reader: R,
        writer: W,
        address: &BrokerAddress,
        config: &ClientConfig,
    ) -> Result<Connection>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let client_id = StrBytes::from_string(config.client_id.clone());
        let (pipe, lane) =
            Pipe::spawn(reader, writer, address.to_string(), config.max_response_size, client_id.clone());
        let versions = handshake(&pipe, config, &client_id).await?;
        if config.security_protocol.uses_sasl() {
            let setup = config.connection_setup_timeout;
            let sasl = &config.sasl;
            let session = match tokio::time::timeout(setup, async {
                let (exchange, first) = sasl.begin().await.map_err(|reason| {
                    Error::connect(address, io::Error::other(format!("SASL {}: {reason}", sasl.mechanism())))
                })?;
                authenticate(&lane, sasl, &versions, exchange, first, setup).await
            })
            .await
            {
                Ok(session) => session?,
                Err(_) => {
                    return Err(Error::connect(
                        address,
                        io::Error::new(io::ErrorKind::TimedOut, format!("no SASL authentication within {setup:?}")),
                    ));
                }
            };
            if let sasl::Reauthentication::At(due) = session.next(None) {
                let reauthentication = Reauthenticator {
                    lane,
                    settings: config.sasl.clone(),
                    versions: versions.clone(),
                    timeout: config.request_timeout,
                };
                tokio::spawn(reauthentication.run(due, session));
            }
        }
        debug!(target: "rill::broker", broker = %address, apis = versions.len(), tls = config.security_protocol.uses_tls(), sasl = config.security_protocol.uses_sasl(), "connected");
        Ok(Connection { inner: Arc::new(Inner { pipe, versions, client_id, request_timeout: config.request_timeout }) })
    }

    /// `host:port` of the broker.
    pub fn broker(&self) -> &str {
        &self.inner.pipe.broker
    }

    /// What the broker advertised in ApiVersions.
    pub fn api_versions(&self) -> &ApiVersions {
        &self.inner.versions
    }

    /// The version `R` goes out at on this connection, or an error naming
    /// the API the broker lacks.
    pub fn version_for<R: ApiRequest>(&self) -> Result<i16> {
        self.inner.versions.version_for::<R>().map_err(|negotiated| Error::UnsupportedApi {
            broker: self.broker().to_owned(),
            api: R::KEY,
            ours: format!("{}..{}", negotiated.ours.0, negotiated.ours.1),
            theirs: negotiated.theirs_display(),
        })
    }

    /// Sends a request at the negotiated version and waits for its reply,
    /// at most the configured request timeout.
    pub async fn send<R: ApiRequest>(&self, request: &R) -> Result<R::Response> {
        let version = self.version_for::<R>()?;
        self.send_at(request, version, self.inner.request_timeout).await
    }

    /// Sends a request at a given version with a given timeout.
    pub async fn send_at<R: ApiRequest>(&self, request: &R, version: i16, timeout: Duration) -> Result<R::Response> {
        self.enqueue(request, version, timeout).await?.await
    }

    /// Queues a request and returns the future of its reply. Requests
    /// queued by one task reach the socket in the order of the calls, which
    /// the producer relies on to keep sequence numbers in order.
    pub(crate) async fn enqueue<R: ApiRequest>(
        &self,
        request: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<impl Future<Output = Result<R::Response>> + Send + 'static> {
        let answer = self.inner.pipe.enqueue(request, version, &self.inner.client_id, timeout, true).await?;
        let broker = self.inner.pipe.broker.clone();
        let closed = self.inner.pipe.closed.clone();
        let timing = crate::telemetry::RequestTiming::start(R::KEY as i16);
        Ok(async move {
            let frame = answer.expect("a reply was asked for").await.map_err(|_| closed_error(&closed, &broker))??;
            timing.answered();
            frame::decode_response::<R>(frame, version).map_err(|message| Error::protocol(&broker, message))
        })
    }

    /// Queues a request the broker does not answer (Produce with acks=0).
    /// Returns once the request is queued, in call order.
    pub(crate) async fn enqueue_without_reply<R: ApiRequest>(&self, request: &R, version: i16) -> Result<()> {
        let timeout = self.inner.request_timeout;
        self.inner.pipe.enqueue(request, version, &self.inner.client_id, timeout, false).await.map(|_| ())
    }

    /// Whether the connection is gone (it never comes back; connect again).
    pub fn is_closed(&self) -> bool {
        self.inner.pipe.commands.is_closed()
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<String> {
        self.inner.pipe.closed.get().map(|error| match error {
            Error::ConnectionClosed { reason, .. } => reason.to_string(),
            other => other.to_string(),
        })
    }
}

/// The caller's side of the connection task.
#[derive(Debug)]
struct Pipe {
    broker: String,
    commands: mpsc::Sender<Command>,
    next_correlation_id: Arc<AtomicI32>,
    closed: Arc<OnceLock<Error>>,
}

#[derive(Debug)]
struct Command {
    correlation_id: i32,
    api: ApiKey,
    /// The frame, in segments written one after the other (a Produce
    /// request's large batches are segments of their own, not copied).
    frame: Vec<Bytes>,
    timeout: Duration,
    /// `None` for a request the broker does not answer.
    reply: Option<oneshot::Sender<Result<Bytes>>>,
}

/// What the SASL side of a connection tells its task. Requests sent this
/// way go out even while the task holds back the callers' requests.
#[derive(Debug)]
enum Control {
    /// Hold back new requests of callers; answer once those in flight
    /// are answered.
    Pause(oneshot::Sender<()>),
    /// Send this request.
    Send(Command),
    /// Let callers' requests through again.
    Resume,
    /// Close the connection with this error.
    Close(Error),
}

/// The SASL side's way to the connection task: its own channel, so that it
/// keeps no [`Pipe`] (and so no connection) alive.
#[derive(Debug)]
struct ControlLane {
    broker: String,
    client_id: StrBytes,
    control: mpsc::Sender<Control>,
    next_correlation_id: Arc<AtomicI32>,
    closed: Arc<OnceLock<Error>>,
}

impl Pipe {
    fn spawn<R, W>(reader: R, writer: W, broker: String, max_frame: usize, client_id: StrBytes) -> (Pipe, ControlLane)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (commands, receiver) = mpsc::channel(COMMAND_QUEUE);
        let (control, control_receiver) = mpsc::channel(4);
        let closed = Arc::new(OnceLock::new());
        let next_correlation_id = Arc::new(AtomicI32::new(0));
        let task = Task {
            broker: broker.clone(),
            commands: receiver,
            control: Some(control_receiver),
            paused: false,
            drained: None,
            in_flight: InFlight::default(),
            frames: frame::FrameReader::new(max_frame),
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            closed: closed.clone(),
        };
        tokio::spawn(task.run(reader, writer));
        let lane = ControlLane {
            broker: broker.clone(),
            client_id,
            control,
            next_correlation_id: next_correlation_id.clone(),
            closed: closed.clone(),
        };
        (Pipe { broker, commands, next_correlation_id, closed }, lane)
    }

    fn closed_error(&self) -> Error {
        closed_error(&self.closed, &self.broker)
    }

    /// Encodes, sends, and returns the reply frame (response header
    /// included, size prefix not).
    async fn roundtrip<R: ApiRequest>(
        &self,
        request: &R,
        version: i16,
        client_id: &StrBytes,
        timeout: Duration,
    ) -> Result<Bytes> {
        let answer = self.enqueue(request, version, client_id, timeout, true).await?;
        answer.expect("a reply was asked for").await.map_err(|_| self.closed_error())?
    }

    /// Encodes and queues a request; returns the receiver of its reply.
    async fn enqueue<R: ApiRequest>(
        &self,
        request: &R,
        version: i16,
        client_id: &StrBytes,
        timeout: Duration,
        expect_reply: bool,
    ) -> Result<Option<oneshot::Receiver<Result<Bytes>>>> {
        let (command, answer) =
            command(&self.broker, &self.next_correlation_id, request, version, client_id, timeout, expect_reply)?;
        self.commands.send(command).await.map_err(|_| self.closed_error())?;
        Ok(answer)
    }
}

/// A request encoded for the connection task, and the receiver of its reply.
fn command<R: ApiRequest>(
    broker: &str,
    ids: &AtomicI32,
    request: &R,
    version: i16,
    client_id: &StrBytes,
    timeout: Duration,
    expect_reply: bool,
) -> Result<(Command, Option<oneshot::Receiver<Result<Bytes>>>)> {
    let correlation_id = ids.fetch_add(1, Ordering::Relaxed);
    let produce = (request as &dyn std::any::Any).downcast_ref::<kafka_protocol::messages::ProduceRequest>();
    let frame = produce
        .and_then(|produce| crate::wire::produce::encode_produce(produce, version, correlation_id, client_id))
        .unwrap_or_else(|| frame::encode_request(request, version, correlation_id, client_id).map(|f| vec![f]))
        .map_err(|message| Error::protocol(broker, message))?;
    let bytes: usize = frame.iter().map(Bytes::len).sum();
    trace!(target: "rill::protocol", broker = %broker, api = ?R::KEY, version, correlation_id, bytes, "send");
    let (reply, answer) = if expect_reply {
        let (reply, answer) = oneshot::channel();
        (Some(reply), Some(answer))
    } else {
        (None, None)
    };
    Ok((Command { correlation_id, api: R::KEY, frame, timeout, reply }, answer))
}

impl ControlLane {
    async fn tell(&self, control: Control) -> Result<()> {
        self.control.send(control).await.map_err(|_| closed_error(&self.closed, &self.broker))
    }

    /// Sends a request past any pause and decodes its answer.
    async fn roundtrip<R: ApiRequest>(&self, request: &R, version: i16, timeout: Duration) -> Result<R::Response> {
        let (command, answer) =
            command(&self.broker, &self.next_correlation_id, request, version, &self.client_id, timeout, true)?;
        self.tell(Control::Send(command)).await?;
        let frame =
            answer.expect("a reply was asked for").await.map_err(|_| closed_error(&self.closed, &self.broker))??;
        frame::decode_response::<R>(frame, version).map_err(|message| Error::protocol(&self.broker, message))
    }

    fn security(&self, reason: String) -> Error {
        Error::Security { broker: self.broker.clone(), reason }
    }
}

/// A SASL session: how long the broker gave it (zero: no end), counted
/// from when the final SaslAuthenticate was sent.
#[derive(Debug, Clone, Copy)]
struct Session {
    sent: Instant,
    lifetime: Duration,
}

impl Session {
    /// When to renew it; `previous` is when the last re-authentication began.
    fn next(&self, previous: Option<Instant>) -> sasl::Reauthentication {
        sasl::next_reauthentication(self.sent, self.lifetime, previous, super::backoff::jitter())
    }

    fn end(&self) -> Option<Instant> {
        (!self.lifetime.is_zero()).then(|| self.sent + self.lifetime)
    }
}

/// One SASL authentication: SaslHandshake v1, then SaslAuthenticate until
/// the exchange is done. Returns the session the broker set. A refusal is [`Error::Security`] (fatal), naming the mechanism and,
/// for PLAIN and SCRAM, the user; never the password.
async fn authenticate(
    lane: &ControlLane,
    settings: &SaslSettings,
    versions: &ApiVersions,
    mut exchange: sasl::Exchange,
    first: Vec<u8>,
    timeout: Duration,
) -> Result<Session> {
    const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
    const SASL_AUTHENTICATION_FAILED: i16 = 58;
    let mechanism = settings.mechanism();
    let who = match (&settings.username, mechanism) {
        (
            Some(user),
            sasl::SaslMechanism::Plain | sasl::SaslMechanism::ScramSha256 | sasl::SaslMechanism::ScramSha512,
        ) => {
            format!("SASL {mechanism} authentication as `{user}`")
        }
        _ => format!("SASL {mechanism} authentication"),
    };
    let version_of = |api: ApiKey, negotiated: std::result::Result<i16, crate::wire::versions::Negotiated>| {
        negotiated.map_err(|negotiated| {
            lane.security(format!(
                "{who}: the broker does not offer {api:?} in a version this client speaks ({}); is this a SASL listener?",
                negotiated.theirs_display()
            ))
        })
    };
    let handshake_version = version_of(ApiKey::SaslHandshake, versions.version_for::<SaslHandshakeRequest>())?;
    let request = SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism.name()));
    let answer = lane.roundtrip(&request, handshake_version, timeout).await?;
    match answer.error_code {
        0 => {}
        UNSUPPORTED_SASL_MECHANISM => {
            let offered: Vec<&str> = answer.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(lane.security(format!(
                "SASL mechanism {mechanism} is not enabled on the broker (it offers {})",
                if offered.is_empty() { "none".to_owned() } else { offered.join(", ") }
            )));
        }
        code => {
            let name = code_name(code);
            return Err(lane.security(format!(
                "{who}: the broker refused SaslHandshake with {name}; is this listener SASL? (security.protocol=ssl \
                 or plaintext for one without authentication)"
            )));
        }
    }
    let version = version_of(ApiKey::SaslAuthenticate, versions.version_for::<SaslAuthenticateRequest>())?;
    let mut message = first;
    loop {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message));
        let sent = Instant::now();
        let answer = lane.roundtrip(&request, version, timeout).await?;
        if answer.error_code != 0 {
            let said = answer.error_message.as_ref().map(|m| m.as_str()).filter(|m| !m.is_empty());
            let report = exchange.server_report().map(|r| format!(" ({r})")).unwrap_or_default();
            let reason = match (answer.error_code, said) {
                (SASL_AUTHENTICATION_FAILED, Some(said)) => format!("{who} failed: {said}{report}"),
                (SASL_AUTHENTICATION_FAILED, None) => format!("{who} failed{report}"),
                (code, said) => {
                    let name = code_name(code);
                    format!("{who} failed with {name}{}{report}", said.map(|s| format!(": {s}")).unwrap_or_default())
                }
            };
            return Err(lane.security(reason));
        }
        match exchange
            .on_server_message(&answer.auth_bytes)
            .map_err(|reason| lane.security(format!("{who}: {reason}")))?
        {
            Step::Respond(next) => message = next,
            Step::Done => {
                let lifetime = Duration::from_millis(answer.session_lifetime_ms.max(0) as u64);
                debug!(target: "rill::sasl", broker = %lane.broker, %mechanism, session = ?lifetime, "authenticated");
                return Ok(Session { sent, lifetime });
            }
        }
    }
}

/// A Kafka error code by its name (`IllegalSaslState`), for messages.
fn code_name(code: i16) -> String {
    kafka_protocol::ResponseError::try_from_code(code).map_or(format!("error {code}"), |e| format!("{e:?}"))
}

/// Re-authenticates a connection before each session ends (KIP-368), until
/// the connection closes. The new exchange (a fresh token for OAUTHBEARER)
/// is prepared first; then callers' new requests are held back, those in
/// flight are answered (the broker would answer the SaslHandshake only after
/// them anyway), and the exchange runs alone on the connection, as franz-go
/// does. A failure closes the connection with a retriable error: requests
/// held back were never sent, and a real refusal shows on the next connect.
struct Reauthenticator {
    lane: ControlLane,
    settings: SaslSettings,
    versions: ApiVersions,
    timeout: Duration,
}

impl Reauthenticator {
    async fn run(self, mut due: Instant, mut session: Session) {
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = self.lane.control.closed() => return,
            }
            let started = Instant::now();
            let end = session.end().unwrap_or(started + self.timeout);
            session = match self.once(end).await {
                Ok(renewed) => renewed,
                Err(reason) => return self.close(reason).await,
            };
            info!(target: "rill::sasl", broker = %self.lane.broker, session = ?session.lifetime, "re-authenticated");
            due = match session.next(Some(started)) {
                sasl::Reauthentication::At(due) => due,
                sasl::Reauthentication::Never => return,
                sasl::Reauthentication::TooShort => {
                    let reason = format!(
                        "the SASL session of {:?} leaves no time to re-authenticate; connecting again",
                        session.lifetime
                    );
                    return self.close(reason).await;
                }
            };
        }
    }

    /// One re-authentication, begun before the session ends at `end`.
    async fn once(&self, end: Instant) -> Result<Session, String> {
        let (exchange, first) = match tokio::time::timeout_at(end, self.settings.begin()).await {
            Ok(begun) => begun?,
            Err(_) => return Err("no new SASL credentials before the session ended".to_owned()),
        };
        let (drained, paused) = oneshot::channel();
        self.lane.tell(Control::Pause(drained)).await.map_err(|e| e.to_string())?;
        // Past the session's end the broker closes the connection at the
        // SaslHandshake; that is no worse than closing it here.
        let _ = tokio::time::timeout_at(end, paused).await;
        let renewed = authenticate(&self.lane, &self.settings, &self.versions, exchange, first, self.timeout)
            .await
            .map_err(|error| format!("re-authentication failed: {error}"))?;
        self.lane.tell(Control::Resume).await.map_err(|e| e.to_string())?;
        Ok(renewed)
    }

    async fn close(&self, reason: String) {
        warn!(target: "rill::sasl", broker = %self.lane.broker, %reason, "closing the connection");
        let error = Error::ConnectionClosed { broker: self.lane.broker.clone(), reason: reason.into() };
        let _ = self.lane.tell(Control::Close(error)).await;
    }
}

/// The error that closed a connection, for a request that finds it closed.
fn closed_error(closed: &OnceLock<Error>, broker: &str) -> Error {
    closed.get().cloned().unwrap_or_else(|| Error::ConnectionClosed {
        broker: broker.to_owned(),
        reason: "connection task ended".into(),
    })
}

pub(super) async fn open_stream(address: &BrokerAddress) -> Result<TcpStream> {
    let candidates: Vec<SocketAddr> = tokio::net::lookup_host((address.host.as_str(), address.port))
        .await
        .map_err(|e| Error::connect(address, e))?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host resolves to no address");
    for candidate in candidates {
        match TcpStream::connect(candidate).await {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|e| Error::connect(address, e))?;
                return Ok(stream);
            }
            Err(e) => {
                debug!(target: "rill::broker", broker = %address, %candidate, error = %e, "connect failed");
                last = e;
            }
        }
    }
    Err(Error::connect(address, last))
}

/// ApiVersions, with the fallback of KIP-511: a broker that does not know
/// our version answers UNSUPPORTED_VERSION and (normally) its own range in a
/// v0 body; we retry at the highest version it has, or v0.
async fn handshake(pipe: &Pipe, config: &ClientConfig, client_id: &StrBytes) -> Result<ApiVersions> {
    const UNSUPPORTED_VERSION: i16 = 35;
    let timeout = config.connection_setup_timeout;
    let request_at = |version: i16| {
        let request = ApiVersionsRequest::default();
        if version >= 3 {
            request
                .with_client_software_name(StrBytes::from_string(config.client_software_name.clone()))
                .with_client_software_version(StrBytes::from_string(config.client_software_version.clone()))
        } else {
            request
        }
    };
    let mut version = ApiVersionsRequest::SUPPORTED.max;
    let mut reply =
        pipe.roundtrip(&request_at(version), version, client_id, timeout).await.map_err(|error| match error {
            // A TLS listener (or a SASL-only one) drops a plaintext client before
            // any answer. A broker restarting does the same, so this stays
            // retriable; the reason says what to check.
            Error::ConnectionClosed { broker, reason } if !config.security_protocol.uses_tls() => {
                Error::ConnectionClosed {
                    broker,
                    reason: format!(
                        "{reason}, before answering ApiVersions: if this is a TLS listener, set security.protocol=ssl"
                    )
                    .into(),
                }
            }
            other => other,
        })?;
    // The ApiVersions response header is always v0: the correlation id only.
    let error_code = reply.get(4..6).map(|b| i16::from_be_bytes([b[0], b[1]]));
    if error_code == Some(UNSUPPORTED_VERSION) {
        // Some brokers (librdkafka's mock) put a body in the version we
        // asked for, not v0: only the error code can be relied on.
        let theirs = frame::decode_body::<ApiVersionsRequest>(reply.slice(4..), 0)
            .ok()
            .and_then(|v0| v0.api_keys.iter().find(|k| k.api_key == ApiKey::ApiVersions as i16).map(|k| k.max_version));
        let retry = theirs.map_or(0, |max| max.clamp(0, version - 1));
        debug!(target: "rill::broker", broker = %pipe.broker, from = version, to = retry, "ApiVersions version not supported; retrying");
        version = retry;
        reply = pipe.roundtrip(&request_at(version), version, client_id, timeout).await?;
    }
    let response = frame::decode_response::<ApiVersionsRequest>(reply, version)
        .map_err(|message| Error::protocol(&pipe.broker, message))?;
    crate::error::check(ApiKey::ApiVersions, response.error_code, || format!("at v{version}"))?;
    Ok(ApiVersions::from_response(&response))
}

/// Requests waiting for their replies, with their deadlines.
#[derive(Debug, Default)]
struct InFlight {
    pending: HashMap<i32, Pending>,
    /// Min-heap of deadlines; entries of answered requests are dropped
    /// lazily when they reach the top.
    deadlines: BinaryHeap<Reverse<(Instant, i32)>>,
}

#[derive(Debug)]
struct Pending {
    api: ApiKey,
    timeout: Duration,
    deadline: Instant,
    reply: oneshot::Sender<Result<Bytes>>,
}

impl InFlight {
    fn insert(&mut self, correlation_id: i32, pending: Pending) {
        self.deadlines.push(Reverse((pending.deadline, correlation_id)));
        self.pending.insert(correlation_id, pending);
    }

    fn take(&mut self, correlation_id: i32) -> Option<Pending> {
        self.pending.remove(&correlation_id)
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, id))) = self.deadlines.peek() {
            match self.pending.get(id) {
                Some(p) if p.deadline == *deadline => return Some(*deadline),
                _ => {
                    self.deadlines.pop();
                }
            }
        }
        None
    }

    /// Requests whose deadline is at or before `now`.
    fn expired(&mut self, now: Instant) -> Vec<Pending> {
        let mut out = Vec::new();
        while let Some(deadline) = self.next_deadline() {
            if deadline > now {
                break;
            }
            let Reverse((_, id)) = self.deadlines.pop().expect("next_deadline saw it");
            out.extend(self.pending.remove(&id));
        }
        out
    }

    fn drain(&mut self) -> impl Iterator<Item = Pending> + '_ {
        self.deadlines.clear();
        self.pending.drain().map(|(_, p)| p)
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The task that owns the socket.
struct Task {
    broker: String,
    commands: mpsc::Receiver<Command>,
    /// The SASL side's requests; `None` once it is gone.
    control: Option<mpsc::Receiver<Control>>,
    /// Callers' new requests wait while a re-authentication runs.
    paused: bool,
    /// Told once nothing is in flight while paused.
    drained: Option<oneshot::Sender<()>>,
    in_flight: InFlight,
    frames: frame::FrameReader,
    outbox: VecDeque<Bytes>,
    outbox_bytes: usize,
    closed: Arc<OnceLock<Error>>,
}

impl Task {
    async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(mut self, mut reader: R, mut writer: W) {
        let error = self.serve(&mut reader, &mut writer).await;
        debug!(target: "rill::broker", broker = %self.broker, %error, in_flight = self.in_flight.pending.len(), "connection closed");
        let _ = self.closed.set(error.clone());
        self.commands.close();
        for pending in self.in_flight.drain() {
            let _ = pending.reply.send(Err(error.clone()));
        }
        while let Ok(command) = self.commands.try_recv() {
            if let Some(reply) = command.reply {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }

    /// The error of a connection closed for `reason`.
    fn closed(&self, reason: impl Into<Arc<str>>) -> Error {
        Error::ConnectionClosed { broker: self.broker.clone(), reason: reason.into() }
    }

    /// Moves bytes until something ends the connection; returns why.
    async fn serve<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(&mut self, reader: &mut R, writer: &mut W) -> Error {
        let mut accepting = true;
        // A TLS stream may keep written bytes in its own buffer until
        // flushed; a TCP stream's flush does nothing.
        let mut unflushed = false;
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            let deadline = self.in_flight.next_deadline();
            if deadline != armed {
                if let Some(at) = deadline {
                    sleep.as_mut().reset(at);
                }
                armed = deadline;
            }
            if !accepting && self.in_flight.is_empty() && self.outbox.is_empty() {
                return self.closed("no longer used");
            }
            if self.in_flight.is_empty()
                && self.outbox.is_empty()
                && let Some(drained) = self.drained.take()
            {
                let _ = drained.send(());
            }
            let can_write = !self.outbox.is_empty() || unflushed;
            let can_accept = accepting && !self.paused && self.outbox_bytes < OUTBOX_HIGH_WATER;
            tokio::select! {
                read = reader.read_buf(self.frames.read_buffer()) => match read {
                    Ok(0) => return self.closed("closed by the broker"),
                    Ok(_) => {
                        if let Err(error) = self.dispatch_frames() {
                            return error;
                        }
                    }
                    // A broker that refuses the client certificate does so
                    // after the client's side of a TLS 1.3 handshake is done:
                    // its alert arrives on the first read.
                    Err(e) => return match super::security::refused_session(&e) {
                        Some(reason) => Error::Security { broker: self.broker.clone(), reason },
                        None => self.closed(format!("read failed: {e}")),
                    },
                },
                written = write_some(writer, &self.outbox), if can_write => match written {
                    Ok(Written::Bytes(0)) => return self.closed("socket accepts no more bytes"),
                    Ok(Written::Bytes(n)) => {
                        self.consume_outbox(n);
                        unflushed = true;
                    }
                    Ok(Written::Flushed) => unflushed = false,
                    Err(e) => return self.closed(format!("write failed: {e}")),
                },
                command = self.commands.recv(), if can_accept => match command {
                    Some(command) => self.accept(command),
                    None => accepting = false,
                },
                control = recv_control(&mut self.control) => match control {
                    Some(Control::Pause(drained)) => {
                        self.paused = true;
                        self.drained = Some(drained);
                    }
                    Some(Control::Resume) => self.paused = false,
                    Some(Control::Send(command)) => self.accept(command),
                    Some(Control::Close(error)) => return error,
                    None => {
                        self.control = None;
                        self.paused = false;
                    }
                },
                () = &mut sleep, if armed.is_some() => {
                    let expired = self.in_flight.expired(Instant::now());
                    if expired.is_empty() {
                        continue;
                    }
                    let mut first = None;
                    for pending in expired {
                        first.get_or_insert((pending.api, pending.timeout));
                        let _ = pending.reply.send(Err(Error::RequestTimeout {
                            api: pending.api,
                            broker: self.broker.clone(),
                            timeout: pending.timeout,
                        }));
                    }
                    let (api, timeout) = first.expect("non-empty");
                    return self.closed(format!("{api:?} request timed out after {timeout:?}"));
                }
            }
        }
    }

    fn accept(&mut self, command: Command) {
        let Some(reply) = command.reply else {
            // No answer will come: just write it.
            self.queue(command.frame);
            return;
        };
        if reply.is_closed() {
            // The caller gave up before the request was written.
            return;
        }
        let deadline = Instant::now() + command.timeout;
        self.queue(command.frame);
        self.in_flight
            .insert(command.correlation_id, Pending { api: command.api, timeout: command.timeout, deadline, reply });
    }

    fn queue(&mut self, frame: Vec<Bytes>) {
        for segment in frame {
            self.outbox_bytes += segment.len();
            self.outbox.push_back(segment);
        }
    }

    fn consume_outbox(&mut self, mut written: usize) {
        self.outbox_bytes -= written;
        while written > 0 {
            let front = self.outbox.front_mut().expect("wrote more than was queued");
            if written >= front.len() {
                written -= front.len();
                self.outbox.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }

    fn dispatch_frames(&mut self) -> Result<(), Error> {
        loop {
            let frame = match self.frames.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(()),
                Err(frame::FrameError::TlsRecord) => {
                    return Err(Error::Security {
                        broker: self.broker.clone(),
                        reason: format!("{}; set security.protocol=ssl (or sasl_ssl)", frame::FrameError::TlsRecord),
                    });
                }
                Err(e) => return Err(self.closed(e.to_string())),
            };
            let correlation_id = frame::correlation_id(&frame);
            let Some(pending) = self.in_flight.take(correlation_id) else {
                return Err(self.closed(format!("response with unknown correlation id {correlation_id}")));
            };
            trace!(target: "rill::protocol", broker = %self.broker, api = ?pending.api, correlation_id, bytes = frame.len(), "receive");
            // A caller that stopped waiting has dropped its receiver; the
            // reply is discarded, the connection stays in step.
            let _ = pending.reply.send(Ok(frame));
        }
    }
}

/// The next message of the SASL side, or never once it is gone.
async fn recv_control(control: &mut Option<mpsc::Receiver<Control>>) -> Option<Control> {
    match control {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// What one write step did.
enum Written {
    Bytes(usize),
    Flushed,
}

/// Writes queued frames (vectored), or flushes once the queue is empty.
async fn write_some<W: AsyncWrite + Unpin>(writer: &mut W, outbox: &VecDeque<Bytes>) -> io::Result<Written> {
    if outbox.is_empty() {
        writer.flush().await?;
        return Ok(Written::Flushed);
    }
    let slices: Vec<IoSlice<'_>> = outbox.iter().take(MAX_IO_SLICES).map(|b| IoSlice::new(b)).collect();
    writer.write_vectored(&slices).await.map(Written::Bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(deadline: Instant) -> (Pending, oneshot::Receiver<Result<Bytes>>) {
        let (reply, rx) = oneshot::channel();
        let pending = Pending { api: ApiKey::Metadata, timeout: Duration::from_secs(1), deadline, reply };
        (pending, rx)
    }

    #[test]
    fn in_flight_deadlines_skip_answered_requests() {
        let start = Instant::now();
        let mut in_flight = InFlight::default();
        let mut receivers = Vec::new();
        for (id, ms) in [(1, 30), (2, 10), (3, 20)] {
            let (p, rx) = pending(start + Duration::from_millis(ms));
            in_flight.insert(id, p);
            receivers.push(rx);
        }
        assert_eq!(in_flight.next_deadline(), Some(start + Duration::from_millis(10)));
        assert!(in_flight.take(2).is_some());
        assert_eq!(in_flight.next_deadline(), Some(start + Duration::from_millis(20)));
        let expired = in_flight.expired(start + Duration::from_millis(25));
        assert_eq!(expired.len(), 1);
        assert_eq!(in_flight.next_deadline(), Some(start + Duration::from_millis(30)));
        assert!(in_flight.expired(start + Duration::from_millis(29)).is_empty());
        assert!(in_flight.take(4).is_none(), "unknown ids are not in flight");
        assert_eq!(in_flight.drain().count(), 1);
        assert!(in_flight.is_empty());
        assert_eq!(in_flight.next_deadline(), None);
    }
}
