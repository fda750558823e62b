//! The SCRAM client (RFC 5802, SHA-256 and SHA-512 as RFC 7677 and
//! Kafka's KIP-84 name them), without channel binding (`n,,`).
//!
//! ```text
//!  client-first  n,,n=USER,r=CNONCE
//!  server-first  r=CNONCE+SNONCE,s=SALT,i=ITERATIONS
//!  client-final  c=biws,r=CNONCE+SNONCE,p=PROOF
//!  server-final  v=SERVER_SIGNATURE            (or e=ERROR)
//! ```
//!
//! The server's signature is checked (in constant time), so a server that
//! does not know the password cannot pass for the broker.

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::{digest, hmac, pbkdf2};

use super::Step;
use crate::net::security::Secret;

/// Kafka's brokers refuse fewer (ScramMechanism.minIterations), and so does
/// this client: a server asking for fewer weakens the stored password.
const MIN_ITERATIONS: u32 = 4096;
/// Kafka's brokers store at most this many (ScramMechanism.maxIterations);
/// a server asking for more makes the client spend its CPU before proving
/// anything.
const MAX_ITERATIONS: u32 = 16_384;

/// The SCRAM hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hash {
    Sha256,
    Sha512,
}

impl Hash {
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Hash::Sha256 => hmac::HMAC_SHA256,
            Hash::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Hash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Hash::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Hash::Sha256 => &digest::SHA256,
            Hash::Sha512 => &digest::SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }
}

/// 32 random bytes, base64: printable and free of `,`.
pub(crate) fn random_nonce() -> String {
    STANDARD.encode(crate::net::random_bytes::<32>())
}

/// One SCRAM exchange.
pub(crate) struct ScramClient {
    hash: Hash,
    password: Secret,
    client_nonce: String,
    client_first_bare: String,
    state: State,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient").field("hash", &self.hash).field("state", &self.state).finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum State {
    /// client-first sent, waiting for server-first.
    SentFirst,
    /// client-final sent; what the server's signature must be made of:
    /// HMAC(ServerKey, AuthMessage).
    SentFinal {
        server_key: Vec<u8>,
        auth_message: String,
    },
    Done,
}

impl ScramClient {
    /// The exchange and its client-first message.
    pub(crate) fn start(hash: Hash, username: &str, password: Secret, client_nonce: &str) -> (ScramClient, Vec<u8>) {
        let client_first_bare = format!("n={},r={client_nonce}", escape_username(username));
        let first = format!("n,,{client_first_bare}").into_bytes();
        let client = ScramClient {
            hash,
            password,
            client_nonce: client_nonce.to_owned(),
            client_first_bare,
            state: State::SentFirst,
        };
        (client, first)
    }

    pub(crate) fn on_server_message(&mut self, message: &[u8]) -> Result<Step, String> {
        let text = std::str::from_utf8(message).map_err(|_| "the broker's SCRAM message is not UTF-8".to_owned())?;
        match std::mem::replace(&mut self.state, State::Done) {
            State::SentFirst => {
                let (final_message, server_key, auth_message) = self.client_final(text)?;
                self.state = State::SentFinal { server_key, auth_message };
                Ok(Step::Respond(final_message.into_bytes()))
            }
            State::SentFinal { server_key, auth_message } => {
                let attributes = Attributes::parse(text);
                if let Some(error) = attributes.get('e') {
                    return Err(format!("the broker refused the SCRAM proof: {error}"));
                }
                let received = attributes
                    .get('v')
                    .and_then(|v| STANDARD.decode(v).ok())
                    .ok_or_else(|| "the broker's SCRAM server-final message has no verifier (v=)".to_owned())?;
                // hmac::verify compares in constant time.
                let key = hmac::Key::new(self.hash.hmac(), &server_key);
                if hmac::verify(&key, auth_message.as_bytes(), &received).is_err() {
                    return Err("the broker's SCRAM signature is wrong: it does not know this user's password (or \
                                something between pretends to be the broker)"
                        .to_owned());
                }
                Ok(Step::Done)
            }
            State::Done => Err("the broker sent a SCRAM message after the exchange ended".to_owned()),
        }
    }

    /// From server-first: client-final, ServerKey and AuthMessage.
    fn client_final(&self, server_first: &str) -> Result<(String, Vec<u8>, String), String> {
        let attributes = Attributes::parse(server_first);
        if let Some(error) = attributes.get('e') {
            return Err(format!("the broker refused the SCRAM exchange: {error}"));
        }
        if attributes.get('m').is_some() {
            return Err("the broker's SCRAM server-first message has a mandatory extension (m=) this client does not \
                        know"
                .to_owned());
        }
        let nonce = attributes.get('r').ok_or("the broker's SCRAM server-first message has no nonce (r=)")?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err("the broker's SCRAM nonce does not extend the client's".to_owned());
        }
        let salt = attributes
            .get('s')
            .and_then(|s| STANDARD.decode(s).ok())
            .ok_or("the broker's SCRAM server-first message has no valid salt (s=)")?;
        let iterations: u32 = attributes
            .get('i')
            .and_then(|i| i.parse().ok())
            .ok_or("the broker's SCRAM server-first message has no valid iteration count (i=)")?;
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(format!(
                "the broker asks for {iterations} SCRAM iterations; this client takes {MIN_ITERATIONS} to \
                 {MAX_ITERATIONS}"
            ));
        }
        let hash = self.hash;
        let mut salted = vec![0u8; hash.len()];
        let rounds = NonZeroU32::new(iterations).expect("at least MIN_ITERATIONS");
        pbkdf2::derive(hash.pbkdf2(), rounds, &salt, self.password.expose().as_bytes(), &mut salted);
        let salted_key = hmac::Key::new(hash.hmac(), &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(hash.digest(), client_key.as_ref());
        // "biws" is base64 of the GS2 header "n,,".
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature = hmac::sign(&hmac::Key::new(hash.hmac(), stored_key.as_ref()), auth_message.as_bytes());
        let proof: Vec<u8> =
            client_key.as_ref().iter().zip(client_signature.as_ref()).map(|(key, signature)| key ^ signature).collect();
        let server_key = hmac::sign(&salted_key, b"Server Key");
        Ok((format!("{without_proof},p={}", STANDARD.encode(proof)), server_key.as_ref().to_vec(), auth_message))
    }
}

/// `=` and `,` in a SCRAM user name (RFC 5802 §5.1).
fn escape_username(username: &str) -> String {
    username.replace('=', "=3D").replace(',', "=2C")
}

/// The `x=value` attributes of a SCRAM message.
struct Attributes<'a>(Vec<(char, &'a str)>);

impl<'a> Attributes<'a> {
    fn parse(message: &'a str) -> Self {
        Attributes(
            message
                .split(',')
                .filter_map(|part| {
                    let mut chars = part.chars();
                    let name = chars.next()?;
                    let value = chars.as_str().strip_prefix('=')?;
                    Some((name, value))
                })
                .collect(),
        )
    }

    fn get(&self, name: char) -> Option<&'a str> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3: user `user`, password `pencil`.
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_client() -> (ScramClient, Vec<u8>) {
        ScramClient::start(Hash::Sha256, "user", Secret::new("pencil"), CLIENT_NONCE)
    }

    #[test]
    fn the_rfc_7677_exchange() {
        let (mut client, first) = rfc_client();
        assert_eq!(first, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.on_server_message(SERVER_FIRST.as_bytes()), Ok(Step::Respond(CLIENT_FINAL.into())));
        assert_eq!(client.on_server_message(SERVER_FINAL.as_bytes()), Ok(Step::Done));
        assert!(client.on_server_message(b"v=x").is_err(), "nothing comes after the end");
        assert!(!format!("{client:?}").contains("pencil"));
    }

    #[test]
    fn a_wrong_server_signature_fails() {
        let (mut client, _) = rfc_client();
        client.on_server_message(SERVER_FIRST.as_bytes()).unwrap();
        let error = client.on_server_message(b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").unwrap_err();
        assert!(error.contains("signature is wrong"), "{error}");
        let (mut client, _) = rfc_client();
        client.on_server_message(SERVER_FIRST.as_bytes()).unwrap();
        assert!(client.on_server_message(b"x=1").unwrap_err().contains("no verifier"));
    }

    #[test]
    fn the_server_error_is_passed_on() {
        let (mut client, _) = rfc_client();
        client.on_server_message(SERVER_FIRST.as_bytes()).unwrap();
        let error = client.on_server_message(b"e=invalid-proof").unwrap_err();
        assert!(error.contains("invalid-proof"), "{error}");
    }

    #[test]
    fn a_bad_server_first_message_is_refused() {
        let cases = [
            ("r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "does not extend"),
            ("r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "does not extend"),
            ("r=rOprNGfwEbeRWgbNEkqOxyz,s=!!!,i=4096", "salt"),
            ("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1024", "1024 SCRAM iterations"),
            ("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=100000", "100000 SCRAM iterations"),
            ("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==", "iteration count"),
            ("m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "mandatory extension"),
            ("e=unknown-user", "unknown-user"),
        ];
        for (message, expected) in cases {
            let (mut client, _) = rfc_client();
            let error = client.on_server_message(message.as_bytes()).unwrap_err();
            assert!(error.contains(expected), "{message}: {error}");
        }
        let (mut client, _) = rfc_client();
        assert!(client.on_server_message(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn sha_512_proves_and_checks_with_its_own_keys() {
        // The server side computed independently of ScramClient: RFC 5802's
        // formulas over SHA-512.
        let password = "pencil";
        let salt = b"0123456789abcdef";
        let server_first = format!("r={CLIENT_NONCE}srv,s={},i=4096", STANDARD.encode(salt));
        let (mut client, first) = ScramClient::start(Hash::Sha512, "a=b,c", Secret::new(password), CLIENT_NONCE);
        assert_eq!(first, format!("n,,n=a=3Db=2Cc,r={CLIENT_NONCE}").into_bytes());
        let Step::Respond(client_final) = client.on_server_message(server_first.as_bytes()).unwrap() else {
            panic!("expected client-final");
        };
        let client_final = String::from_utf8(client_final).unwrap();
        let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
        let mut salted = [0u8; 64];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA512,
            NonZeroU32::new(4096).unwrap(),
            salt,
            password.as_bytes(),
            &mut salted,
        );
        let auth_message = format!("n=a=3Db=2Cc,r={CLIENT_NONCE},{server_first},{without_proof}");
        let salted_key = hmac::Key::new(hmac::HMAC_SHA512, &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(&digest::SHA512, client_key.as_ref());
        let client_signature =
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA512, stored_key.as_ref()), auth_message.as_bytes());
        let recovered: Vec<u8> =
            STANDARD.decode(proof).unwrap().iter().zip(client_signature.as_ref()).map(|(p, s)| p ^ s).collect();
        assert_eq!(recovered, client_key.as_ref(), "the proof reveals the client key to a server holding StoredKey");
        let server_key = hmac::sign(&salted_key, b"Server Key");
        let signature = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA512, server_key.as_ref()), auth_message.as_bytes());
        let server_final = format!("v={}", STANDARD.encode(signature.as_ref()));
        assert_eq!(client.on_server_message(server_final.as_bytes()), Ok(Step::Done));
    }

    #[test]
    fn nonces_differ_and_hold_no_comma() {
        let (a, b) = (random_nonce(), random_nonce());
        assert_ne!(a, b);
        assert!(!a.contains(',') && a.len() >= 32);
    }
}
