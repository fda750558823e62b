//! Which protocol a listener speaks, asked on a second connection when the
//! first failed the way a wrong `security.protocol` makes it fail.
//!
//! Neither mistake announces itself. A TLS listener given a plaintext
//! request usually resets the connection without a TLS record (stunnel
//! and most terminators do), and a plaintext broker given a ClientHello
//! either drops it (Kafka: a 350 MB frame size) or waits for the rest of a
//! frame that never comes (Tansu). Both look like a broker restarting or
//! hanging, which is retriable. So when a connection closes before its
//! first answer, or has none halfway through the setup timeout, the
//! connection asks the other protocol's first question on a fresh socket:
//! a TLS client sends a plaintext ApiVersions v0, a plaintext client a TLS
//! ClientHello. A proper answer proves the mismatch, and the error becomes
//! fatal and says which setting to change; no answer proves nothing, and
//! the original error stands.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::ApiVersionsRequest;
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tracing::debug;

use crate::config::ClientConfig;
use crate::error::Error;
use crate::net::BrokerAddress;
use crate::wire::frame::{self, FrameReader};

/// The correlation id of the probing ApiVersions request.
const PROBE_ID: i32 = 0x0052_494c;
/// An ApiVersions v0 response lists some 80 APIs in 6 bytes each.
const MAX_ANSWER: usize = 64 * 1024;

/// `Some(fatal error)` when `address` speaks the protocol the configured
/// `security.protocol` does not; `None` when it does, or when it does not
/// answer by `deadline`.
pub(super) async fn mismatch(address: &BrokerAddress, config: &ClientConfig, deadline: Instant) -> Option<Error> {
    let uses_tls = config.security_protocol.uses_tls();
    let found = tokio::time::timeout_at(deadline, async {
        if uses_tls { answers_plaintext(address, &config.client_id).await } else { answers_tls(address).await }
    })
    .await
    .unwrap_or(false);
    debug!(target: "rill::broker", broker = %address, other_protocol = if uses_tls { "plaintext" } else { "TLS" }, answered = found, "probed the listener");
    found.then(|| Error::Security { broker: address.to_string(), reason: explain(uses_tls) })
}

/// The words for a listener that answered the other protocol.
fn explain(configured_tls: bool) -> String {
    if configured_tls {
        "it is a plaintext listener: it drops or ignores the TLS handshake but answers a plaintext ApiVersions request; \
         set security.protocol=plaintext (or sasl_plaintext), or use the broker's TLS port"
            .to_owned()
    } else {
        "it is a TLS listener: it drops plaintext requests but answers a TLS ClientHello; set security.protocol=ssl \
         (or sasl_ssl), or use the broker's plaintext port"
            .to_owned()
    }
}

/// Whether a plaintext ApiVersions v0 request gets a Kafka answer.
async fn answers_plaintext(address: &BrokerAddress, client_id: &str) -> bool {
    let Ok(request) = frame::encode_request(
        &ApiVersionsRequest::default(),
        0,
        PROBE_ID,
        &StrBytes::from_string(client_id.to_owned()),
    ) else {
        return false;
    };
    let Ok(mut stream) = super::connection::open_stream(address).await else {
        return false;
    };
    if stream.write_all(&request).await.is_err() {
        return false;
    }
    let mut frames = FrameReader::new(MAX_ANSWER);
    loop {
        match stream.read_buf(frames.read_buffer()).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        match frames.next_frame() {
            Ok(Some(answer)) => return is_api_versions_answer(answer),
            Ok(None) => {}
            Err(_) => return false,
        }
    }
}

/// Whether `frame` (without its size) is the answer to the probe.
fn is_api_versions_answer(frame: Bytes) -> bool {
    frame::correlation_id(&frame) == PROBE_ID && frame::decode_response::<ApiVersionsRequest>(frame, 0).is_ok()
}

/// Whether a TLS ClientHello gets a TLS record back (a ServerHello or an
/// alert: either way, a TLS server read it).
async fn answers_tls(address: &BrokerAddress) -> bool {
    let Some(hello) = client_hello(&address.host) else {
        return false;
    };
    let Ok(mut stream) = super::connection::open_stream(address).await else {
        return false;
    };
    if stream.write_all(&hello).await.is_err() {
        return false;
    }
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await.is_ok() && frame::starts_a_tls_record(&header)
}

/// The bytes of a ClientHello for `host`. Nothing after it is read but the
/// first record header, so the configuration trusts no one.
fn client_hello(host: &str) -> Option<Vec<u8>> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .or_else(|_| rustls::pki_types::ServerName::try_from("broker"))
        .ok()?;
    let mut connection = rustls::ClientConnection::new(Arc::new(config), name).ok()?;
    let mut hello = Vec::new();
    connection.write_tls(&mut hello).ok()?;
    Some(hello)
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};

    use super::*;

    #[test]
    fn a_client_hello_starts_a_tls_record() {
        let hello = client_hello("broker.example.com").unwrap();
        assert!(frame::starts_a_tls_record(&hello));
        assert!(client_hello("127.0.0.1").is_some_and(|hello| frame::starts_a_tls_record(&hello)));
        assert!(client_hello("not a host name").is_some(), "falls back to a placeholder name");
    }

    #[test]
    fn only_the_answer_to_the_probe_counts() {
        // error_code 0, one API (ApiVersions 0..=3), v0 has no throttle time.
        let answer = |correlation_id: i32| {
            let mut frame = BytesMut::new();
            frame.put_i32(correlation_id);
            frame.put_i16(0);
            frame.put_i32(1);
            frame.put_i16(18);
            frame.put_i16(0);
            frame.put_i16(3);
            frame.freeze()
        };
        assert!(is_api_versions_answer(answer(PROBE_ID)));
        assert!(!is_api_versions_answer(answer(PROBE_ID + 1)), "another request's answer");
        let mut truncated = BytesMut::from(&answer(PROBE_ID)[..]);
        truncated.truncate(10);
        assert!(!is_api_versions_answer(truncated.freeze()), "not an ApiVersions body");
    }
}
