//! Peer authentication: the TLS configurations and the hello exchange.
//!
//! This module owns everything that decides whether a QUIC connection may carry RPCs: the rustls
//! client and server configurations (ring provider, TLS 1.3 only, ALPN `replicated/1`, no session
//! resumption, no 0-RTT), the per-connection hello on the first bidirectional stream, and the
//! stateless-reset key. There is no unauthenticated mode: a connection whose hello has not
//! completed serves nothing, and mod.rs closes it on any error returned here.
//!
//! SHARED SECRET (`Auth::Secret`)
//!
//! Each process makes a fresh self-signed certificate at start. TLS therefore provides an
//! encrypted channel with a server that is not yet known to be a cluster member: the client
//! accepts any server certificate (it still checks the TLS 1.3 CertificateVerify signature, so the
//! server holds the key of the certificate it sent), and presents none. Membership is then proven
//! in the hello, both ways:
//!
//! ```text
//!     exporter = TLS-Exporter(label "EXPORTER-replicated-secret-proof", context "", 32 bytes)
//!     proof(R, id) = HMAC-SHA256(key = secret,
//!                                "replicated/1 hello" || R || id as u64 LE || exporter)
//!     client -> server:  hello { node_id = c, proof(b'C', c) }
//!     server:            verify (constant time); on failure close, never answer
//!     server -> client:  hello { node_id = s, proof(b'S', s) }
//!     client:            verify, and require s == the node id it dialed
//! ```
//!
//! Why this resists replay and relay: the exporter is derived from this TLS session's master
//! secret, which depends on both sides' fresh randomness and ephemeral (EC)DHE shares, so it is
//! different in every session. A recorded hello is worthless in any other session. A relay that
//! terminates TLS towards each side has two sessions with two different exporters; the proofs it
//! receives are bound to the wrong one and it cannot compute correct ones without the secret.
//! The role byte stops a peer from reflecting the client's proof back as the server's, and the
//! node id inside the MAC stops a member from being announced under another member's id by a
//! third party. The server answers only after verifying the client, so it is not an oracle. A
//! member that knows the secret can, of course, claim any id: in this mode the secret is the
//! whole of a node's identity.
//!
//! MUTUAL TLS (`Auth::Tls { ca, cert, key }`)
//!
//! Both sides present certificates issued by the cluster CA, which is the only trust root. The
//! client verifies the server under the name `node-<to>.replicated`; the server requires a client
//! certificate (WebPkiClientVerifier rooted at the CA only). The hello carries node ids only; the
//! server accepts a claimed id `c` only if the client's end-entity certificate is valid for
//! `node-<c>.replicated`, so a valid certificate cannot claim another node's id. The client gets
//! the same guarantee from server-name verification, and also requires the server's hello id to
//! be the id it dialed.
//!
//! BOUNDS: a hello is at most `codec::HELLO_MAX` bytes (read with a bounded `read_to_end`); the
//! caller bounds TLS handshake plus hello by [`HELLO_TIMEOUT`].
//!
//! STATELESS RESET: the endpoint's reset key is derived from this node's secret (the shared secret
//! or its TLS private key) and its id, so a node restarted on the same port can reset the stale
//! connections its peers still hold to its previous incarnation (they reconnect at once instead of
//! waiting out the idle timeout), while no one without the secret can forge such resets. (In
//! shared-secret mode every member knows the secret and so could forge resets for the others:
//! members are trusted.) For this to work connection ids are random and unvalidated
//! (`RandomCids` below); quinn's default ids are keyed per process and a new process would drop, not
//! reset, the old ones.

use super::codec::{self, Hello, PROOF_LEN};
use super::{NetError, NodeId};
use crate::config::Auth;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use ring::hmac;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The application protocol; a peer speaking anything else fails the TLS handshake.
pub const ALPN: &[u8] = b"replicated/1";
/// TLS exporter label of the secret proof (RFC 8446 §7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-replicated-secret-proof";
const PROOF_PREFIX: &[u8] = b"replicated/1 hello";
const RESET_KEY_LABEL: &[u8] = b"replicated/1 stateless-reset";
/// Longest a new connection may take for the TLS handshake plus the hello, on either side.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection ids: 8 random bytes, not validated. quinn's default generator keys its ids with a
/// per-process random key and silently drops packets for ids it did not make, so a restarted node
/// would never answer its peers' stale connections with a stateless reset. With unvalidated ids it
/// does (quinn rate-limits resets to one per 20 ms, each smaller than the packet that caused it).
pub(crate) struct RandomCids {
    rng: ring::rand::SystemRandom,
    fallback: hmac::Key,
    counter: u64,
}

impl RandomCids {
    pub(crate) fn new() -> RandomCids {
        let seed = format!("{:?}{:?}", std::time::SystemTime::now(), std::thread::current().id());
        RandomCids {
            rng: ring::rand::SystemRandom::new(),
            fallback: hmac::Key::new(hmac::HMAC_SHA256, seed.as_bytes()),
            counter: 0,
        }
    }
}

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        use ring::rand::SecureRandom;
        let mut cid = [0u8; 8];
        if self.rng.fill(&mut cid).is_err() {
            // The system RNG does not fail on Linux; if it ever does, stay unpredictable anyway.
            self.counter += 1;
            let t = hmac::sign(&self.fallback, &self.counter.to_le_bytes());
            cid.copy_from_slice(&t.as_ref()[..8]);
        }
        quinn::ConnectionId::new(&cid)
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// Role byte of a proof made by the dialing side.
pub const ROLE_CLIENT: u8 = b'C';
/// Role byte of a proof made by the accepting side.
pub const ROLE_SERVER: u8 = b'S';

/// The DNS name a node's certificate carries and a client verifies: `node-<id>.replicated`.
pub fn server_name(id: NodeId) -> String {
    format!("node-{id}.replicated")
}

/// What the endpoint needs, built once per transport.
pub(crate) struct Setup {
    pub server: Arc<QuicServerConfig>,
    pub client: Arc<QuicClientConfig>,
    /// The HMAC key of the shared secret; `None` in mutual-TLS mode.
    pub secret: Option<hmac::Key>,
    pub reset_key: hmac::Key,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

fn tls_err(what: &str) -> impl FnOnce(rustls::Error) -> io::Error + '_ {
    move |e| invalid(format!("replicated: {what}: {e}"))
}

fn derive_reset_key(secret: &[u8], node_id: NodeId) -> hmac::Key {
    let k = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut msg = RESET_KEY_LABEL.to_vec();
    msg.extend_from_slice(&node_id.to_le_bytes());
    hmac::Key::new(hmac::HMAC_SHA256, hmac::sign(&k, &msg).as_ref())
}

fn load_certs(path: &Path, what: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| invalid(format!("replicated: {what} {}: {e}", path.display())))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("replicated: {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "replicated: {what} {}: no CERTIFICATE in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// Build the TLS configurations for `auth`. `check_own_name` refuses a certificate that is not
/// valid for this node's own name (a configuration mistake every peer would refuse anyway).
pub(crate) fn setup(auth: &Auth, node_id: NodeId, check_own_name: bool) -> io::Result<Setup> {
    let tls13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let (mut server, mut client, secret, reset_key) = match auth {
        Auth::Secret(s) => {
            if s.is_empty() {
                return Err(invalid("replicated: the shared secret is empty"));
            }
            let ck = rcgen::generate_simple_self_signed(vec![server_name(node_id)])
                .map_err(|e| io::Error::other(format!("replicated: cannot make a certificate: {e}")))?;
            let cert = ck.cert.der().clone();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
            let server = rustls::ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(tls13)
                .map_err(tls_err("TLS server configuration"))?
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .map_err(tls_err("TLS server certificate"))?;
            let client = rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(tls13)
                .map_err(tls_err("TLS client configuration"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider())))
                .with_no_client_auth();
            (
                server,
                client,
                Some(hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes())),
                derive_reset_key(s.as_bytes(), node_id),
            )
        }
        Auth::Tls { ca, cert, key } => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca, "tls_ca")? {
                roots
                    .add(c)
                    .map_err(|e| invalid(format!("replicated: tls_ca {}: {e}", ca.display())))?;
            }
            let roots = Arc::new(roots);
            let chain = load_certs(cert, "tls_cert")?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| invalid(format!("replicated: tls_key {}: {e}", key.display())))?;
            if check_own_name {
                cert_is_for_node(&chain[0], node_id).map_err(|e| {
                    invalid(format!(
                        "replicated: tls_cert {}: {e}; this node is {node_id}",
                        cert.display()
                    ))
                })?;
            }
            let reset_key = derive_reset_key(key.secret_der(), node_id);
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| invalid(format!("replicated: tls_ca {}: {e}", ca.display())))?;
            let server = rustls::ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(tls13)
                .map_err(tls_err("TLS server configuration"))?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(tls_err("tls_cert/tls_key"))?;
            let client = rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(tls13)
                .map_err(tls_err("TLS client configuration"))?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)
                .map_err(tls_err("tls_cert/tls_key"))?;
            (server, client, None, reset_key)
        }
    };
    server.alpn_protocols = vec![ALPN.to_vec()];
    server.send_tls13_tickets = 0;
    server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    client.alpn_protocols = vec![ALPN.to_vec()];
    client.resumption = rustls::client::Resumption::disabled();
    let server = QuicServerConfig::try_from(server)
        .map_err(|e| invalid(format!("replicated: TLS server configuration unusable for QUIC: {e}")))?;
    let client = QuicClientConfig::try_from(client)
        .map_err(|e| invalid(format!("replicated: TLS client configuration unusable for QUIC: {e}")))?;
    Ok(Setup {
        server: Arc::new(server),
        client: Arc::new(client),
        secret,
        reset_key,
    })
}

/// Shared-secret mode's server certificate check: any certificate, but the handshake signature
/// must verify with the key it carries (so the exporter is shared with whoever holds that key).
#[derive(Debug)]
struct AnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only: never reached; refuse if it ever is.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn proof_message(role: u8, node_id: NodeId, exporter: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(PROOF_PREFIX.len() + 1 + 8 + 32);
    m.extend_from_slice(PROOF_PREFIX);
    m.push(role);
    m.extend_from_slice(&node_id.to_le_bytes());
    m.extend_from_slice(exporter);
    m
}

/// `HMAC-SHA256(secret, "replicated/1 hello" || role || node_id LE || exporter)`.
pub fn proof(key: &hmac::Key, role: u8, node_id: NodeId, exporter: &[u8; 32]) -> [u8; PROOF_LEN] {
    let tag = hmac::sign(key, &proof_message(role, node_id, exporter));
    let mut out = [0u8; PROOF_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Constant-time check of a proof.
pub fn verify_proof(key: &hmac::Key, role: u8, node_id: NodeId, exporter: &[u8; 32], proof: &[u8]) -> bool {
    hmac::verify(key, &proof_message(role, node_id, exporter), proof).is_ok()
}

/// Is this end-entity certificate valid for `node-<id>.replicated`? (Name check only; the chain
/// was verified by TLS.)
pub fn cert_is_for_node(der: &CertificateDer<'_>, id: NodeId) -> Result<(), String> {
    let cert = webpki::EndEntityCert::try_from(der).map_err(|e| format!("unparseable certificate: {e}"))?;
    let name = ServerName::try_from(server_name(id)).map_err(|e| format!("bad node name: {e}"))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|_| format!("certificate is not valid for {}", server_name(id)))
}

fn exporter(conn: &quinn::Connection) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| "TLS exporter unavailable".to_string())?;
    Ok(out)
}

/// Why a hello failed, for the caller to close, count and report.
#[derive(Debug)]
pub(crate) enum HelloError {
    /// This side refuses the peer: close with `code`, count, warn with `reason`.
    Refuse { code: u32, reason: String },
    /// The connection failed underneath (peer closed or refused us, timed out, ...).
    Net(NetError),
}

fn refuse(code: u32, reason: impl Into<String>) -> HelloError {
    HelloError::Refuse {
        code,
        reason: reason.into(),
    }
}

/// Dialing side: send our hello on the first stream, verify the answer. On success the
/// connection is authenticated as node `to`.
pub(crate) async fn client_hello(
    conn: &quinn::Connection,
    secret: Option<&hmac::Key>,
    my_id: NodeId,
    to: NodeId,
) -> Result<(), HelloError> {
    use super::{CLOSE_AUTH, CLOSE_PROTOCOL};
    let exp = exporter(conn).map_err(|r| refuse(CLOSE_PROTOCOL, r))?;
    let hello = Hello {
        node_id: my_id,
        proof: secret.map(|k| proof(k, ROLE_CLIENT, my_id, &exp)),
    };
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| HelloError::Net(super::conn_error(&e)))?;
    let io = |e: String| HelloError::Net(NetError::Unreachable(e));
    send.write_all(&codec::encode_hello(&hello))
        .await
        .map_err(|e| write_error(e).map_or_else(io, HelloError::Net))?;
    send.finish().map_err(|_| io("hello stream closed".into()))?;
    let reply = match recv.read_to_end(codec::HELLO_MAX).await {
        Ok(b) => b,
        Err(quinn::ReadToEndError::TooLong) => return Err(refuse(CLOSE_PROTOCOL, "hello reply too long")),
        Err(quinn::ReadToEndError::Read(e)) => {
            return Err(read_error(e).map_or_else(io, HelloError::Net));
        }
    };
    let reply = codec::decode_hello(&reply, secret.is_some()).map_err(|e| refuse(CLOSE_PROTOCOL, e.to_string()))?;
    if reply.node_id != to {
        return Err(refuse(
            CLOSE_AUTH,
            format!("dialed node {to} but the peer says it is node {}", reply.node_id),
        ));
    }
    if let (Some(k), Some(p)) = (secret, reply.proof.as_ref()) {
        if !verify_proof(k, ROLE_SERVER, reply.node_id, &exp, p) {
            return Err(refuse(CLOSE_AUTH, "the server's proof of the shared secret is wrong"));
        }
    }
    Ok(())
}

/// Accepting side: read the client's hello from the first stream, verify it, answer. Returns the
/// authenticated peer id.
pub(crate) async fn server_hello(
    conn: &quinn::Connection,
    secret: Option<&hmac::Key>,
    my_id: NodeId,
) -> Result<NodeId, HelloError> {
    use super::{CLOSE_AUTH, CLOSE_PROTOCOL};
    let exp = exporter(conn).map_err(|r| refuse(CLOSE_PROTOCOL, r))?;
    let (mut send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| HelloError::Net(super::conn_error(&e)))?;
    let io = |e: String| HelloError::Net(NetError::Unreachable(e));
    let bytes = match recv.read_to_end(codec::HELLO_MAX).await {
        Ok(b) => b,
        Err(quinn::ReadToEndError::TooLong) => return Err(refuse(CLOSE_PROTOCOL, "hello too long")),
        Err(quinn::ReadToEndError::Read(e)) => {
            return Err(read_error(e).map_or_else(|m| refuse(CLOSE_PROTOCOL, m), HelloError::Net));
        }
    };
    let hello = codec::decode_hello(&bytes, secret.is_some()).map_err(|e| refuse(CLOSE_PROTOCOL, e.to_string()))?;
    match (secret, hello.proof.as_ref()) {
        (Some(k), Some(p)) => {
            if !verify_proof(k, ROLE_CLIENT, hello.node_id, &exp, p) {
                return Err(refuse(
                    CLOSE_AUTH,
                    format!("wrong proof of the shared secret (claims node {})", hello.node_id),
                ));
            }
        }
        _ => {
            let certs = conn
                .peer_identity()
                .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())
                .ok_or_else(|| refuse(CLOSE_AUTH, "no client certificate"))?;
            let ee = certs
                .first()
                .ok_or_else(|| refuse(CLOSE_AUTH, "empty client certificate chain"))?;
            cert_is_for_node(ee, hello.node_id)
                .map_err(|e| refuse(CLOSE_AUTH, format!("claims node {}: {e}", hello.node_id)))?;
        }
    }
    let reply = Hello {
        node_id: my_id,
        proof: secret.map(|k| proof(k, ROLE_SERVER, my_id, &exp)),
    };
    send.write_all(&codec::encode_hello(&reply))
        .await
        .map_err(|e| write_error(e).map_or_else(io, HelloError::Net))?;
    send.finish().map_err(|_| io("hello stream closed".into()))?;
    Ok(hello.node_id)
}

/// A read failure: `Ok(NetError)` when the connection itself failed, `Err(msg)` for a stream-level
/// problem (the peer reset the hello stream).
fn read_error(e: quinn::ReadError) -> Result<NetError, String> {
    match e {
        quinn::ReadError::ConnectionLost(c) => Ok(super::conn_error(&c)),
        other => Err(format!("hello stream: {other}")),
    }
}

fn write_error(e: quinn::WriteError) -> Result<NetError, String> {
    match e {
        quinn::WriteError::ConnectionLost(c) => Ok(super::conn_error(&c)),
        other => Err(format!("hello stream: {other}")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn proof_binds_role_id_exporter_and_secret() {
        let k = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef");
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdeX");
        let e1 = [1u8; 32];
        let e2 = [2u8; 32];
        let p = proof(&k, ROLE_CLIENT, 7, &e1);
        assert!(verify_proof(&k, ROLE_CLIENT, 7, &e1, &p));
        assert!(
            !verify_proof(&k, ROLE_SERVER, 7, &e1, &p),
            "reflected as the server's proof"
        );
        assert!(!verify_proof(&k, ROLE_CLIENT, 8, &e1, &p), "claimed under another id");
        assert!(
            !verify_proof(&k, ROLE_CLIENT, 7, &e2, &p),
            "replayed in another session"
        );
        assert!(!verify_proof(&other, ROLE_CLIENT, 7, &e1, &p), "other secret");
        assert!(!verify_proof(&k, ROLE_CLIENT, 7, &e1, &p[..31]), "truncated");
        assert!(!verify_proof(&k, ROLE_CLIENT, 7, &e1, &[]), "empty");
    }

    #[test]
    fn proof_matches_the_documented_construction() {
        // HMAC-SHA256(secret, "replicated/1 hello" || 'S' || 5u64 LE || exporter), computed by hand.
        let k = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret-s3cret-s3cret");
        let exp = [0xabu8; 32];
        let mut msg = b"replicated/1 hello".to_vec();
        msg.push(b'S');
        msg.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0]);
        msg.extend_from_slice(&exp);
        assert_eq!(
            proof(&k, ROLE_SERVER, 5, &exp).as_slice(),
            hmac::sign(&k, &msg).as_ref()
        );
    }

    #[test]
    fn reset_keys_differ_per_node_and_secret() {
        let a = hmac::sign(&derive_reset_key(b"secret-one-secret", 1), b"cid");
        let a2 = hmac::sign(&derive_reset_key(b"secret-one-secret", 1), b"cid");
        let b = hmac::sign(&derive_reset_key(b"secret-one-secret", 2), b"cid");
        let c = hmac::sign(&derive_reset_key(b"secret-two-secret", 1), b"cid");
        assert_eq!(a.as_ref(), a2.as_ref());
        assert_ne!(a.as_ref(), b.as_ref());
        assert_ne!(a.as_ref(), c.as_ref());
    }

    #[test]
    fn setup_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let auth = Auth::Tls {
            ca: missing.clone(),
            cert: missing.clone(),
            key: missing.clone(),
        };
        let e = setup(&auth, 1, true).err().unwrap();
        assert!(
            e.to_string().contains("tls_ca") && e.to_string().contains("nope.pem"),
            "{e}"
        );
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a pem file").unwrap();
        let auth = Auth::Tls {
            ca: garbage.clone(),
            cert: garbage.clone(),
            key: garbage,
        };
        let e = setup(&auth, 1, true).err().unwrap();
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        assert!(setup(&Auth::Secret(String::new()), 1, true).is_err());
    }

    #[test]
    fn own_certificate_must_carry_own_name() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let auth = pki.node_auth(dir.path(), 2);
        assert!(setup(&auth, 2, true).is_ok());
        let e = setup(&auth, 3, true).err().unwrap();
        assert!(e.to_string().contains("node-3.replicated"), "{e}");
        assert!(setup(&auth, 3, false).is_ok());
    }

    /// A throw-away cluster CA for tests (the cert tool's logic, trimmed).
    pub(crate) struct TestPki {
        ca_params: rcgen::CertificateParams,
        ca_key: rcgen::KeyPair,
        ca_pem: String,
    }

    impl TestPki {
        pub(crate) fn new() -> TestPki {
            let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
            ca_params.distinguished_name = rcgen::DistinguishedName::new();
            ca_params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "test cluster CA");
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
            TestPki {
                ca_params,
                ca_key,
                ca_pem,
            }
        }

        /// Writes ca.pem and node-<id>.{pem,key} (certificate for node `id`) under `dir`.
        pub(crate) fn node_auth(&self, dir: &Path, id: NodeId) -> Auth {
            let issuer = rcgen::Issuer::from_params(&self.ca_params, &self.ca_key);
            let mut p = rcgen::CertificateParams::new(vec![server_name(id)]).unwrap();
            p.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            let ca = dir.join("ca.pem");
            std::fs::write(&ca, &self.ca_pem).unwrap();
            let cert_path = dir.join(format!("node-{id}.pem"));
            let key_path = dir.join(format!("node-{id}.key"));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            Auth::Tls {
                ca,
                cert: cert_path,
                key: key_path,
            }
        }
    }
}
