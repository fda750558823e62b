//! A small in-test server that speaks just enough Kafka to be a bad peer on
//! cue: it answers ApiVersions and Metadata properly unless the script says
//! otherwise for a given request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, MetadataResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Encodable, StrBytes, decode_request_header_from_buffer};
use rill_client::BrokerAddress;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What to send back for one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A valid answer (ApiVersions and Metadata only).
    Normal,
    /// These bytes, as they are.
    Raw(Vec<u8>),
    /// A size prefix and the request's correlation id, then this body.
    Body(Vec<u8>),
    /// A valid answer under another correlation id.
    WrongCorrelationId,
    /// Half of a valid answer, then close.
    HalfThenClose,
    /// Nothing, ever; the connection stays open.
    Silence,
}

/// The script: (connection index, request index on it, header) → reply.
pub type Script = dyn Fn(usize, usize, &RequestHeader) -> Reply + Send + Sync;

pub struct FakeBroker {
    pub address: BrokerAddress,
    accepted: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<(i16, i16)>>>,
    task: JoinHandle<()>,
}

impl FakeBroker {
    pub async fn start(script: impl Fn(usize, usize, &RequestHeader) -> Reply + Send + Sync + 'static) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (accepted2, requests2) = (accepted.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let index = accepted2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, index, port, script.clone(), requests2.clone()));
            }
        });
        FakeBroker { address: BrokerAddress::new("127.0.0.1", port), accepted, requests, task }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// (api key, version) of every request received.
    pub fn requests(&self) -> Vec<(i16, i16)> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one already-open stream (an in-memory pipe) with the script, as
/// connection 0 of a broker that advertises `port`.
pub fn serve_stream<S>(
    stream: S,
    port: u16,
    script: impl Fn(usize, usize, &RequestHeader) -> Reply + Send + Sync + 'static,
) -> JoinHandle<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(serve(stream, 0, port, Arc::new(script), Arc::default()))
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    connection: usize,
    port: u16,
    script: Arc<Script>,
    requests: Arc<std::sync::Mutex<Vec<(i16, i16)>>>,
) {
    let mut request_index = 0;
    loop {
        let mut size = [0u8; 4];
        if stream.read_exact(&mut size).await.is_err() {
            return;
        }
        let mut body = vec![0u8; u32::from_be_bytes(size) as usize];
        if stream.read_exact(&mut body).await.is_err() {
            return;
        }
        let mut bytes = Bytes::from(body);
        let header = decode_request_header_from_buffer(&mut bytes).unwrap();
        requests.lock().unwrap().push((header.request_api_key, header.request_api_version));
        let reply = script(connection, request_index, &header);
        request_index += 1;
        let out = match reply {
            Reply::Normal => normal_answer(&header, header.correlation_id, port),
            Reply::WrongCorrelationId => normal_answer(&header, header.correlation_id.wrapping_add(1000), port),
            Reply::Raw(bytes) => bytes,
            Reply::Body(body) => {
                let mut out = Vec::new();
                out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                out.extend_from_slice(&header.correlation_id.to_be_bytes());
                out.extend_from_slice(&body);
                out
            }
            Reply::HalfThenClose => {
                let full = normal_answer(&header, header.correlation_id, port);
                let _ = stream.write_all(&full[..full.len() / 2]).await;
                return;
            }
            Reply::Silence => {
                std::future::pending::<()>().await;
                return;
            }
        };
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// A well-formed answer to ApiVersions or Metadata.
pub fn normal_answer(header: &RequestHeader, correlation_id: i32, port: u16) -> Vec<u8> {
    let version = header.request_api_version;
    let api = ApiKey::try_from(header.request_api_key).unwrap();
    match api {
        ApiKey::ApiVersions => {
            let body = api_versions(&[(ApiKey::ApiVersions, 0, 3), (ApiKey::Metadata, 0, 12)]);
            frame(api, version, correlation_id, &body)
        }
        ApiKey::Metadata => frame(api, version, correlation_id, &one_broker_metadata(port)),
        other => panic!("the fake broker does not answer {other:?}"),
    }
}

/// An ApiVersions answer offering these (api, min, max) ranges.
pub fn api_versions(apis: &[(ApiKey, i16, i16)]) -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(
        apis.iter()
            .map(|&(key, min, max)| {
                ApiVersion::default().with_api_key(key as i16).with_min_version(min).with_max_version(max)
            })
            .collect(),
    )
}

/// Metadata naming one broker, id 1 on this port, as the controller.
pub fn one_broker_metadata(port: u16) -> MetadataResponse {
    MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(1))
                .with_host(StrBytes::from_static_str("127.0.0.1"))
                .with_port(i32::from(port)),
        ])
        .with_controller_id(BrokerId(1))
}

pub fn frame<B: Encodable>(api: ApiKey, version: i16, correlation_id: i32, body: &B) -> Vec<u8> {
    let header_version = api.response_header_version(version);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let mut out = BytesMut::new();
    out.put_u32(0);
    header.encode(&mut out, header_version).unwrap();
    body.encode(&mut out, version).unwrap();
    let size = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&size.to_be_bytes());
    out.to_vec()
}
