//! A proxy that speaks Kafka: it sits in front of every broker of a
//! cluster, reads whole request and response frames, and can answer a
//! request itself or replace the broker's answer.
//!
//! Unlike the byte-level [`Proxy`](crate::Proxy), it needs no help from the
//! broker: it rewrites the broker addresses in Metadata, FindCoordinator and
//! Produce answers to listeners of its own (one per broker, opened as
//! brokers appear), so every connection a client makes goes through it.
//! That works for librdkafka's mock cluster, whose brokers advertise their
//! own ports, as well as for Tansu.
//!
//! Faults:
//! - [`RequestFault::AnswerWithoutForwarding`] and
//!   [`RequestFault::AnswerLate`]: the broker never sees the request; the
//!   client gets an error code for every partition in it.
//! - [`RequestFault::ReplaceAnswer`]: the broker acts on the request; the
//!   client is told it failed (an acks=all leader that appended, then lost
//!   leadership while waiting for its replicas, answers this way).
//! - [`KafkaProxy::out_of_range_next_fetch`]: a Fetch answer says
//!   OFFSET_OUT_OF_RANGE for a partition.
//! - [`KafkaProxy::diverge_next_fetch`]: a Fetch answer says the leader's
//!   log parts from what the client read (KIP-320), as a Kafka leader
//!   answers after an unclean election.
//! - [`KafkaProxy::cut_all`]: every open connection closes at once.
//!
//! Answers always reach the client in request order, as a broker sends
//! them: one the proxy makes waits behind the broker's answers to earlier
//! requests on the same connection.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::EpochEndOffset;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, FetchResponse, FindCoordinatorResponse, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::TestkitError;
use crate::proxy::Rng;

/// What the proxy does to a request a rule picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFault {
    /// Do not forward it; answer every partition with this error code.
    AnswerWithoutForwarding(i16),
    /// Do not forward it; answer every partition with this error code once
    /// the connection's next request has been forwarded (or after a
    /// second): a client that pipelines has sent more behind it by then.
    AnswerLate(i16),
    /// Forward it, then replace the broker's answer with this error code
    /// for every partition.
    ReplaceAnswer(i16),
}

/// Which requests a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// The next `n` requests of the API.
    Next(u32),
    /// Each request of the API with this probability (seeded).
    Randomly(f64),
}

#[derive(Debug, Clone, Copy)]
struct Rule {
    api: ApiKey,
    fault: RequestFault,
    schedule: Schedule,
}

#[derive(Debug)]
struct Shared {
    rules: Vec<Rule>,
    rng: Rng,
    /// Upstream broker address → the port of the proxy's listener for it.
    listeners: HashMap<(String, i32), u16>,
    accepts: Vec<AbortHandle>,
    connections: Vec<AbortHandle>,
    cutter: Option<AbortHandle>,
}

/// A running Kafka-aware proxy; dropping it closes every listener and
/// connection.
#[derive(Debug)]
pub struct KafkaProxy {
    inner: Arc<Inner>,
    bootstrap: String,
    seed: u64,
}

/// What the proxy's tasks share.
#[derive(Debug)]
struct Inner {
    shared: Mutex<Shared>,
    faults: AtomicU64,
    connections_seen: AtomicU64,
    /// Record batches still to corrupt in Fetch answers.
    corrupt: AtomicU64,
    /// A diverging epoch or an error owed to the next Fetch answer for a
    /// partition.
    diverge: Mutex<Option<Owed>>,
    /// Produce requests with a batch larger than this are refused
    /// (`usize::MAX`: no limit).
    max_batch: std::sync::atomic::AtomicUsize,
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl KafkaProxy {
    /// Starts a proxy in front of the cluster at `bootstrap` (`host:port`).
    /// The seed (or `RILL_PROXY_SEED`) drives [`Schedule::Randomly`].
    pub async fn start(bootstrap: &str, seed: u64) -> Result<KafkaProxy, TestkitError> {
        let seed = std::env::var("RILL_PROXY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(seed);
        let (host, port) = bootstrap
            .split(',')
            .next()
            .and_then(|first| first.rsplit_once(':'))
            .and_then(|(host, port)| Some((host.to_owned(), port.parse::<i32>().ok()?)))
            .ok_or_else(|| TestkitError::Start(format!("proxy: bad bootstrap address `{bootstrap}`")))?;
        let inner = Arc::new(Inner {
            shared: Mutex::new(Shared {
                rules: Vec::new(),
                rng: Rng(seed),
                listeners: HashMap::new(),
                accepts: Vec::new(),
                connections: Vec::new(),
                cutter: None,
            }),
            faults: AtomicU64::new(0),
            connections_seen: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            diverge: Mutex::new(None),
            max_batch: std::sync::atomic::AtomicUsize::new(usize::MAX),
        });
        let port = inner.listener_for(&host, port)?;
        Ok(KafkaProxy { inner, bootstrap: format!("127.0.0.1:{port}"), seed })
    }

    /// The address clients bootstrap from.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The seed of the random schedule.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Applies `fault` to requests of `api` as `schedule` says. Only
    /// Produce requests can be answered by the proxy.
    pub fn add_rule(&self, api: ApiKey, fault: RequestFault, schedule: Schedule) {
        assert_eq!(api, ApiKey::Produce, "the proxy can only make Produce answers");
        lock(&self.inner.shared).rules.push(Rule { api, fault, schedule });
    }

    /// Corrupts the next `batches` record batches that come back in Fetch
    /// answers (the first batch of the first partition with records in an
    /// answer): a byte inside its CRC flips, as a bad disk or a bad link
    /// would do it. The broker's log stays intact. Counted in
    /// [`Self::faults_applied`] as it happens.
    pub fn corrupt_fetched_batches(&self, batches: u64) {
        self.inner.corrupt.store(batches, Ordering::Relaxed);
    }

    /// Makes the next Fetch answer (v12 or later) for `topic`/`partition`
    /// say that the leader's log ends `leader_epoch` at `end_offset`: its
    /// records are dropped and its `diverging_epoch` set, as a Kafka leader
    /// answers a fetch whose last fetched epoch its log does not agree
    /// with (an unclean election truncated it). The broker's log stays as
    /// it is. Counted in [`Self::faults_applied`] when applied.
    pub fn diverge_next_fetch(&self, topic: &str, partition: i32, leader_epoch: i32, end_offset: i64) {
        *self.inner.diverge.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Owed { topic: topic.to_owned(), partition, fault: FetchFault::Diverge { leader_epoch, end_offset } });
    }

    /// Makes the next Fetch answer that carries `topic`/`partition` say
    /// OFFSET_OUT_OF_RANGE for it instead of its records, as a broker
    /// answers a position past its log's end (a topic deleted and made
    /// again, a log lost and rebuilt). An answer carries a partition of an
    /// incremental fetch session only when it has records or news: write to
    /// it after this. Counted in [`Self::faults_applied`] when applied.
    pub fn out_of_range_next_fetch(&self, topic: &str, partition: i32) {
        *self.inner.diverge.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Owed { topic: topic.to_owned(), partition, fault: FetchFault::OutOfRange });
    }

    /// Whether the fault of [`Self::diverge_next_fetch`] or
    /// [`Self::out_of_range_next_fetch`] is still owed.
    pub fn divergence_pending(&self) -> bool {
        self.inner.diverge.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Refuses every Produce request holding a record batch larger than
    /// `bytes` with MESSAGE_TOO_LARGE, without forwarding it, as a broker
    /// with that `message.max.bytes` refuses the batch (a request with
    /// several partitions is refused whole: use one partition). Counted in
    /// [`Self::faults_applied`].
    pub fn limit_batch_size(&self, bytes: usize) {
        self.inner.max_batch.store(bytes, Ordering::Relaxed);
    }

    /// Removes every rule.
    pub fn clear_rules(&self) {
        lock(&self.inner.shared).rules.clear();
    }

    /// Requests a rule has applied to so far.
    pub fn faults_applied(&self) -> u64 {
        self.inner.faults.load(Ordering::Relaxed)
    }

    /// Client connections accepted so far, over every listener.
    pub fn connections_accepted(&self) -> u64 {
        self.inner.connections_seen.load(Ordering::Relaxed)
    }

    /// Closes every open connection now.
    pub fn cut_all(&self) {
        self.inner.cut_all();
    }

    /// From now on closes every open connection after a random pause
    /// between `min` and `max` (drawn from the proxy's seed), again and
    /// again, until [`Self::stop_cutting`] or the proxy is dropped.
    pub fn cut_randomly(&self, min: Duration, max: Duration) {
        let inner = self.inner.clone();
        let mut rng = Rng(self.seed ^ 0xc0ff_ee00);
        let span = max.saturating_sub(min).as_millis().max(1) as u64;
        let task = tokio::spawn(async move {
            loop {
                let pause = min + Duration::from_millis(rng.next() % span);
                tokio::time::sleep(pause).await;
                inner.cut_all();
            }
        });
        let mut shared = lock(&self.inner.shared);
        if let Some(old) = shared.cutter.replace(task.abort_handle()) {
            old.abort();
        }
    }

    /// Stops [`Self::cut_randomly`].
    pub fn stop_cutting(&self) {
        if let Some(cutter) = lock(&self.inner.shared).cutter.take() {
            cutter.abort();
        }
    }
}

impl Drop for KafkaProxy {
    fn drop(&mut self) {
        let mut shared = lock(&self.inner.shared);
        let Shared { accepts, connections, cutter, .. } = &mut *shared;
        for task in accepts.drain(..).chain(connections.drain(..)).chain(cutter.take()) {
            task.abort();
        }
        if std::thread::panicking() {
            eprintln!("--- kafka proxy seed: RILL_PROXY_SEED={} ---", self.seed);
        }
    }
}

impl Inner {
    fn cut_all(&self) {
        for connection in lock(&self.shared).connections.drain(..) {
            connection.abort();
        }
    }

    /// The port of the listener for the broker at `host:port`, opened on
    /// first use.
    fn listener_for(self: &Arc<Self>, host: &str, port: i32) -> Result<u16, TestkitError> {
        let mut shared = lock(&self.shared);
        if let Some(&local) = shared.listeners.get(&(host.to_owned(), port)) {
            return Ok(local);
        }
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|e| TestkitError::Start(format!("proxy cannot bind: {e}")))?;
        let local = std_listener.local_addr().map_err(|e| TestkitError::Start(e.to_string()))?.port();
        let listener = TcpListener::from_std(std_listener).map_err(|e| TestkitError::Start(e.to_string()))?;
        let upstream = format!("{host}:{port}");
        let proxy = self.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                proxy.connections_seen.fetch_add(1, Ordering::Relaxed);
                let connection = tokio::spawn(proxy.clone().serve(client, upstream.clone()));
                let mut shared = lock(&proxy.shared);
                shared.connections.retain(|c| !c.is_finished());
                shared.connections.push(connection.abort_handle());
            }
        });
        shared.accepts.push(accept.abort_handle());
        shared.listeners.insert((host.to_owned(), port), local);
        Ok(local)
    }

    async fn serve(self: Arc<Self>, client: TcpStream, upstream: String) {
        let Ok(server) = TcpStream::connect(&upstream).await else { return };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let link =
            Arc::new(Link { pending: Mutex::new(VecDeque::new()), to_client: tokio::sync::Mutex::new(client_write) });
        let up = self.requests(client_read, server_write, link.clone());
        let down = self.answers(server_read, link);
        // Either direction ending ends the connection.
        tokio::select! {
            _ = up => {}
            _ = down => {}
        }
    }

    /// Client to broker: each request is forwarded, answered here, or
    /// marked for its answer to be replaced.
    async fn requests(&self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf, link: Arc<Link>) -> Option<()> {
        let mut buffer = BytesMut::with_capacity(64 * 1024);
        // An answer held back until the next request is forwarded.
        let mut held = false;
        loop {
            while let Some(frame) = split_frame(&mut buffer) {
                let request = Request::parse(&frame)?;
                match self.pick(&request) {
                    None => {
                        if request.expects_answer() {
                            link.expect(Pending::Broker { request, replace: None });
                        }
                        to.write_all(&frame).await.ok()?;
                        if std::mem::take(&mut held) {
                            link.flush_made().await?;
                        }
                    }
                    Some(RequestFault::AnswerLate(code)) => {
                        if request.expects_answer() {
                            link.expect(Pending::Made(request.error_answer(code)?));
                            held = true;
                            let link = link.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                link.flush_made().await
                            });
                        }
                    }
                    Some(RequestFault::ReplaceAnswer(code)) => {
                        let replace = Some(request.error_answer(code)?);
                        link.expect(Pending::Broker { request, replace });
                        to.write_all(&frame).await.ok()?;
                    }
                    Some(RequestFault::AnswerWithoutForwarding(code)) => {
                        if request.expects_answer() {
                            link.expect(Pending::Made(request.error_answer(code)?));
                            link.flush_made().await?;
                        }
                    }
                }
            }
            if from.read_buf(&mut buffer).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// Broker to client: answers in request order, with broker addresses
    /// rewritten to the proxy's listeners.
    async fn answers(self: &Arc<Self>, mut from: OwnedReadHalf, link: Arc<Link>) -> Option<()> {
        let mut buffer = BytesMut::with_capacity(64 * 1024);
        loop {
            while let Some(frame) = split_frame(&mut buffer) {
                let correlation_id = i32::from_be_bytes(frame.get(4..8)?.try_into().ok()?);
                let mut writer = link.to_client.lock().await;
                link.write_made(&mut writer).await?;
                let Some(Pending::Broker { request, replace }) = link.pop_front() else { return None };
                if request.correlation_id != correlation_id {
                    return None;
                }
                let frame = match replace {
                    Some(made) => made,
                    None if request.api == ApiKey::Fetch && self.corrupt.load(Ordering::Relaxed) > 0 => {
                        self.corrupt_records(&request, frame).unwrap_or_else(|frame| frame)
                    }
                    None if request.api == ApiKey::Fetch && self.owes_divergence() => {
                        self.diverge(&request, frame).unwrap_or_else(|frame| frame)
                    }
                    None => self.rewrite(&request, frame).unwrap_or_else(|frame| frame),
                };
                writer.write_all(&frame).await.ok()?;
                link.write_made(&mut writer).await?;
            }
            if from.read_buf(&mut buffer).await.ok()? == 0 {
                return None;
            }
        }
    }

    /// The fault for this request, if a rule picks it.
    fn pick(&self, request: &Request) -> Option<RequestFault> {
        let max_batch = self.max_batch.load(Ordering::Relaxed);
        if request.produce.as_ref().is_some_and(|p| p.largest_batch > max_batch) {
            self.faults.fetch_add(1, Ordering::Relaxed);
            return Some(RequestFault::AnswerWithoutForwarding(10)); // MESSAGE_TOO_LARGE
        }
        let mut shared = lock(&self.shared);
        let Shared { rules, rng, .. } = &mut *shared;
        let fault = rules.iter_mut().filter(|rule| rule.api == request.api).find_map(|rule| fire(rule, rng))?;
        self.faults.fetch_add(1, Ordering::Relaxed);
        Some(fault)
    }

    /// Points broker addresses in an answer at the proxy's listeners; the
    /// frame unchanged when it carries none (or does not decode).
    fn rewrite(self: &Arc<Self>, request: &Request, frame: Bytes) -> Result<Bytes, Bytes> {
        let version = request.version;
        match request.api {
            ApiKey::Metadata => {
                let Some((header, mut response)) = decode_answer::<MetadataResponse>(&frame, version) else {
                    return Err(frame);
                };
                for broker in &mut response.brokers {
                    broker.port = self.local_port(&broker.host, broker.port).ok_or_else(|| frame.clone())?;
                    broker.host = StrBytes::from_static_str("127.0.0.1");
                }
                encode(&header, &response, version).ok_or(frame)
            }
            ApiKey::FindCoordinator => {
                let Some((header, mut response)) = decode_answer::<FindCoordinatorResponse>(&frame, version) else {
                    return Err(frame);
                };
                if response.error_code == 0 && version < 4 {
                    response.port = self.local_port(&response.host, response.port).ok_or_else(|| frame.clone())?;
                    response.host = StrBytes::from_static_str("127.0.0.1");
                }
                for coordinator in response.coordinators.iter_mut().filter(|c| c.error_code == 0) {
                    coordinator.port =
                        self.local_port(&coordinator.host, coordinator.port).ok_or_else(|| frame.clone())?;
                    coordinator.host = StrBytes::from_static_str("127.0.0.1");
                }
                encode(&header, &response, version).ok_or(frame)
            }
            ApiKey::Produce => {
                let Some((header, mut response)) = decode_answer::<ProduceResponse>(&frame, version) else {
                    return Err(frame);
                };
                if response.node_endpoints.is_empty() {
                    return Err(frame);
                }
                for endpoint in &mut response.node_endpoints {
                    endpoint.port = self.local_port(&endpoint.host, endpoint.port).ok_or_else(|| frame.clone())?;
                    endpoint.host = StrBytes::from_static_str("127.0.0.1");
                }
                encode(&header, &response, version).ok_or(frame)
            }
            _ => Err(frame),
        }
    }

    /// Flips the last byte of the first record batch in a Fetch answer, if
    /// there is one and a corruption is still owed.
    fn corrupt_records(&self, request: &Request, frame: Bytes) -> Result<Bytes, Bytes> {
        let version = request.version;
        let Some((header, mut response)) = decode_answer::<FetchResponse>(&frame, version) else {
            return Err(frame);
        };
        let Some(records) = response
            .responses
            .iter_mut()
            .flat_map(|t| t.partitions.iter_mut())
            .filter_map(|p| p.records.as_mut())
            .find(|r| r.len() > 61)
        else {
            return Err(frame);
        };
        let first_batch = 12 + i32::from_be_bytes(records[8..12].try_into().expect("4 bytes")) as usize;
        if first_batch > records.len()
            || self.corrupt.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_err()
        {
            return Err(frame);
        }
        let mut damaged = records.to_vec();
        damaged[first_batch - 1] ^= 0x5a;
        *records = Bytes::from(damaged);
        self.faults.fetch_add(1, Ordering::Relaxed);
        encode(&header, &response, version).ok_or(frame)
    }

    fn owes_divergence(&self) -> bool {
        self.diverge.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Answers for the owed partition with a diverging epoch (at v12 or
    /// later) or an error instead of records, if this Fetch answer
    /// carries it.
    fn diverge(&self, request: &Request, frame: Bytes) -> Result<Bytes, Bytes> {
        let version = request.version;
        let mut owed = self.diverge.lock().unwrap_or_else(|p| p.into_inner());
        let Some(divergence) = owed.as_ref() else { return Err(frame) };
        if version < 12 && matches!(divergence.fault, FetchFault::Diverge { .. }) {
            return Err(frame);
        }
        let Some((header, mut response)) = decode_answer::<FetchResponse>(&frame, version) else {
            return Err(frame);
        };
        let Some(data) = response
            .responses
            .iter_mut()
            .filter(|t| t.topic.0.as_str() == divergence.topic)
            .flat_map(|t| t.partitions.iter_mut())
            .find(|p| p.partition_index == divergence.partition && p.error_code == 0)
        else {
            return Err(frame);
        };
        data.records = None;
        match divergence.fault {
            FetchFault::Diverge { leader_epoch, end_offset } => {
                data.diverging_epoch = EpochEndOffset::default().with_epoch(leader_epoch).with_end_offset(end_offset);
            }
            FetchFault::OutOfRange => data.error_code = 1, // OFFSET_OUT_OF_RANGE
        }
        *owed = None;
        self.faults.fetch_add(1, Ordering::Relaxed);
        encode(&header, &response, version).ok_or(frame)
    }

    fn local_port(self: &Arc<Self>, host: &str, port: i32) -> Option<i32> {
        self.listener_for(host, port).ok().map(i32::from)
    }
}

/// A diverging epoch or an error owed to a Fetch answer.
#[derive(Debug)]
struct Owed {
    topic: String,
    partition: i32,
    fault: FetchFault,
}

#[derive(Debug, Clone, Copy)]
enum FetchFault {
    Diverge { leader_epoch: i32, end_offset: i64 },
    OutOfRange,
}

/// The rule's fault, if its schedule picks this request.
fn fire(rule: &mut Rule, rng: &mut Rng) -> Option<RequestFault> {
    let fires = match &mut rule.schedule {
        Schedule::Next(0) => false,
        Schedule::Next(n) => {
            *n -= 1;
            true
        }
        Schedule::Randomly(p) => rng.unit() < *p,
    };
    fires.then_some(rule.fault)
}

/// What the client is owed, in request order.
#[derive(Debug)]
enum Pending {
    /// The broker's answer to this request (or a replacement for it).
    Broker { request: Request, replace: Option<Bytes> },
    /// An answer the proxy made.
    Made(Bytes),
}

/// One proxied connection: what is owed, and the way to the client.
#[derive(Debug)]
struct Link {
    pending: Mutex<VecDeque<Pending>>,
    to_client: tokio::sync::Mutex<OwnedWriteHalf>,
}

impl Link {
    fn expect(&self, pending: Pending) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).push_back(pending);
    }

    fn pop_front(&self) -> Option<Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    fn next_made(&self) -> Option<Bytes> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.front() {
            Some(Pending::Made(_)) => match pending.pop_front() {
                Some(Pending::Made(frame)) => Some(frame),
                _ => None,
            },
            _ => None,
        }
    }

    /// Writes the answers the proxy made that are next in line.
    async fn write_made(&self, writer: &mut OwnedWriteHalf) -> Option<()> {
        while let Some(frame) = self.next_made() {
            writer.write_all(&frame).await.ok()?;
        }
        Some(())
    }

    async fn flush_made(&self) -> Option<()> {
        let mut writer = self.to_client.lock().await;
        self.write_made(&mut writer).await
    }
}

/// A request's header, and for Produce its partitions.
#[derive(Debug)]
struct Request {
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    produce: Option<Produce>,
}

/// What a Produce request is about.
#[derive(Debug)]
struct Produce {
    /// Each topic with its partitions.
    topics: Vec<(StrBytes, Vec<i32>)>,
    /// acks=0: the broker sends no answer.
    no_answer: bool,
    /// Bytes of the largest partition's records.
    largest_batch: usize,
}

impl Request {
    fn parse(frame: &Bytes) -> Option<Request> {
        let mut body = frame.slice(4..);
        let api = ApiKey::try_from(i16::from_be_bytes(body.get(0..2)?.try_into().ok()?)).ok()?;
        let version = i16::from_be_bytes(body.get(2..4)?.try_into().ok()?);
        let header = RequestHeader::decode(&mut body, api.request_header_version(version)).ok()?;
        let produce = if api == ApiKey::Produce {
            let request = ProduceRequest::decode(&mut body, version).ok()?;
            let topics = request
                .topic_data
                .iter()
                .map(|t| (t.name.0.clone(), t.partition_data.iter().map(|p| p.index).collect()))
                .collect();
            let largest_batch = request
                .topic_data
                .iter()
                .flat_map(|t| t.partition_data.iter())
                .map(|p| p.records.as_ref().map_or(0, |r| r.len()))
                .max()
                .unwrap_or(0);
            Some(Produce { topics, no_answer: request.acks == 0, largest_batch })
        } else {
            None
        };
        Some(Request { api, version, correlation_id: header.correlation_id, produce })
    }

    fn expects_answer(&self) -> bool {
        !self.produce.as_ref().is_some_and(|p| p.no_answer)
    }

    /// A Produce answer with `code` for every partition of the request.
    fn error_answer(&self, code: i16) -> Option<Bytes> {
        let response = ProduceResponse::default().with_responses(
            self.produce
                .as_ref()?
                .topics
                .iter()
                .map(|(name, partitions)| {
                    TopicProduceResponse::default()
                        .with_name(kafka_protocol::messages::TopicName(name.clone()))
                        .with_partition_responses(
                            partitions
                                .iter()
                                .map(|&index| {
                                    PartitionProduceResponse::default()
                                        .with_index(index)
                                        .with_error_code(code)
                                        .with_base_offset(-1)
                                        .with_log_append_time_ms(-1)
                                        .with_log_start_offset(-1)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
        let header = ResponseHeader::default().with_correlation_id(self.correlation_id);
        encode(&header, &response, self.version)
    }
}

/// An answer's header and body, from its `[size][header][body]` frame.
fn decode_answer<R: Decodable + HeaderVersion>(frame: &Bytes, version: i16) -> Option<(ResponseHeader, R)> {
    let mut body = frame.slice(4..);
    let header = ResponseHeader::decode(&mut body, R::header_version(version)).ok()?;
    Some((header, R::decode(&mut body, version).ok()?))
}

/// `[size][header][body]` for an answer.
fn encode<R: Encodable + HeaderVersion>(header: &ResponseHeader, response: &R, version: i16) -> Option<Bytes> {
    let mut out = BytesMut::new();
    out.put_i32(0);
    header.encode(&mut out, R::header_version(version)).ok()?;
    response.encode(&mut out, version).ok()?;
    let size = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    Some(out.freeze())
}

/// Takes one whole `[size][payload]` frame off the front of the buffer.
fn split_frame(buffer: &mut BytesMut) -> Option<Bytes> {
    let size = usize::try_from(i32::from_be_bytes(buffer.get(..4)?.try_into().ok()?)).ok()?;
    if buffer.len() < 4 + size {
        return None;
    }
    Some(buffer.split_to(4 + size).freeze())
}
