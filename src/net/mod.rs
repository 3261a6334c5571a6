//! The network transport: authenticated request/response RPCs between nodes over QUIC.
//!
//! This module owns one quinn `Endpoint` per [`Transport`], bound to the node's `listen` address
//! and used both to accept and to dial, so a node's packets always leave from its listen port
//! (the test suite partitions nodes with iptables rules on those ports). It owns the cache of
//! outgoing connections (at most one per peer id), the accept loop, the per-connection hello
//! (auth.rs), the per-stream request/response exchange (framing in codec.rs), and the refusal
//! accounting. It knows nothing of Raft: a request is a `kind` byte and an opaque body, and the
//! [`Handler`] given at start serves them. Nothing here imports anything above `net/` except
//! `config::Auth`.
//!
//! LIFE OF AN RPC
//!
//! `call(to, addr, kind, body, timeout)` checks the body against the limit (TooLarge, no I/O),
//! then within `timeout`: takes the cached connection to `to` (or dials `addr` and completes the
//! hello, see below), opens a fresh bidirectional stream, writes `[kind][len][body]`, finishes
//! its side, and reads `[status][len][body]`. One RPC = one stream, so a slow or large RPC never
//! delays another (no head-of-line blocking between streams). If the cached connection turns out
//! to be dead (already closed when a stream is opened, or stateless-reset by a restarted peer),
//! the call evicts it and retries once on a fresh connection. A call that times out when the peer
//! has answered nothing for [`SILENT_EVICT`] also drops the cached connection, so the next call
//! dials afresh. Measured without it: the leader's heartbeats to a restarted follower kept timing
//! out on the stale connection for up to ~0.5 s after the restart (the reset below did not come
//! soon enough), long enough for the follower to campaign; a fresh dial reaches the new process at
//! once. In the reset case the previous
//! incarnation of the peer may already have served the request: callers' RPCs must tolerate
//! duplicates (Raft's do).
//!
//! On the accepting side every connection first completes the TLS handshake and the hello
//! within 5 s ([`auth::HELLO_TIMEOUT`]), else it is closed. Then each incoming bidirectional
//! stream is one request, served in its own task; the handler runs in a task of its own so a
//! panicking handler becomes a remote error, not a torn stream.
//!
//! AUTHENTICATION: see auth.rs. In short, shared-secret mode proves the secret with an HMAC bound
//! to the TLS session's exporter (no replay, no relay); mutual-TLS mode pins the claimed node id
//! to the certificate's `node-<id>.replicated` name. There is no unauthenticated mode.
//!
//! BOUNDS, and what happens at each
//!
//! * Message size: `NetConfig::max_message` (default [`MAX_MESSAGE`], 96 MiB; clamped to u32).
//!   Sender: `call` returns TooLarge before any I/O; a handler response above it is replaced by a
//!   remote error. Receiver: the length in the 5-byte header is checked before anything is
//!   allocated; above the limit the stream is reset (and stopped) with [`STREAM_TOO_LARGE`], the
//!   refusal is logged and counted, and the connection stays usable. The caller sees TooLarge when
//!   it is the one refusing a response, Remote when the peer refused its request.
//! * Hello: at most `codec::HELLO_MAX` bytes; handshake + hello within 5 s.
//! * Incoming bidirectional streams per connection: [`MAX_STREAMS`] concurrently (QUIC flow
//!   control: the peer cannot open more; extra callers wait for credit inside their timeout).
//!   The server opens no streams towards clients (limit 0 in the client's transport config).
//! * Address validation: an unauthenticated attempt takes an inbound slot for up to the hello's
//!   5 s, and a QUIC Initial is easy to send from forged source addresses. So once
//!   [`VALIDATE_ABOVE`] slots are taken, an attempt whose address is not yet validated is answered
//!   with a QUIC Retry (stateless: no slot, no handshake work) and gets a slot only when it comes
//!   back with the token, which needs the Retry to reach its claimed address. Peers' clients do
//!   this by themselves, at the cost of one round trip. Below that mark nothing changes: the
//!   round trip is not paid when nothing is under attack.
//! * Inbound connections: [`MAX_INBOUND`] concurrently (handshaking or established); beyond that a
//!   new one is refused at once (QUIC CONNECTION_REFUSED), counted and logged. Of those, at most
//!   [`MAX_UNAUTHENTICATED_PER_ADDRESS`] from one (non-loopback) source address may be
//!   handshaking or waiting for their hello: one host that stalls its handshakes cannot take
//!   every slot.
//! * Outbound connection cache: one per peer id, at most [`MAX_PEERS`] ids; when full an
//!   arbitrary other entry is dropped (its connection closes when its last RPC ends).
//! * Liveness: QUIC keep-alive every `keep_alive` (1 s) and idle timeout `idle_timeout` (10 s): a
//!   silent peer's connection dies after 10 s and the next call redials. An authenticated peer
//!   that opens a stream and stalls holds that stream slot as long as its connection lives.
//! * Memory: a request body is buffered whole (at most `max_message`) before the handler runs, and
//!   a response whole before it is returned; quinn grows its buffer with the bytes actually
//!   received, never from the announced length. An authenticated peer can thus make a node hold
//!   up to `MAX_STREAMS` bodies per connection; members are trusted not to (they could as well
//!   disrupt Raft). Until its hello is verified a connection may open one stream (the hello's,
//!   at most `HELLO_MAX` read), and quinn buffers at most one stream window for it (it buffers
//!   data of streams not yet accepted too); every connection's unread data is bounded by
//!   [`RECEIVE_WINDOW`]. No datagrams are accepted.
//! * Warnings about refusals: at most one line per remote address per second (the counter counts
//!   them all). The rate limiter forgets addresses after a second and holds at most 4096.
//! * Unknown packets: garbage datagrams are dropped by quinn. A short-header packet for an unknown
//!   connection is answered with a stateless reset (quinn: at most one per 20 ms, each smaller
//!   than the packet that caused it). Connection ids are random and unvalidated and the reset key
//!   is derived from the node's secret (auth.rs), so a node restarted on its port resets the
//!   stale connections its peers still hold and they redial at once instead of timing out.
//!
//! CLOSE AND RESET CODES (QUIC application error codes): connections close with
//! [`CLOSE_SHUTDOWN`], [`CLOSE_AUTH`] (authentication refused), [`CLOSE_PROTOCOL`] (malformed
//! hello) or [`CLOSE_TIMEOUT`] (hello not done in time); streams are reset/stopped with
//! [`STREAM_TOO_LARGE`] or [`STREAM_MALFORMED`].

pub mod auth;
pub mod codec;

use codec::CodecError;
pub use codec::MAX_MESSAGE;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

pub type NodeId = u64;

/// Concurrent incoming bidirectional streams (RPCs in flight) per connection.
pub const MAX_STREAMS: u32 = 256;
/// Concurrent inbound connections (handshaking or established).
pub const MAX_INBOUND: usize = 256;
/// Inbound connections from one source address that may be handshaking or waiting for their hello
/// at once. Address validation (VALIDATE_ABOVE) stops forged addresses; this stops one real
/// address that stalls its handshakes from taking every inbound slot, and with them the node's
/// Raft traffic. Loopback addresses are not limited: every process of a cluster on one host
/// shares one, and a local process can disturb the node in simpler ways (it can read its files).
pub const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 16;
/// Bytes a peer may have in flight to this node on one connection, all streams together (quinn's
/// flow control; each stream also has quinn's default window of 1.25 MB). Ample for the largest
/// messages here (a 4 MiB AppendEntries batch, 1 MiB snapshot chunks), which read as they come.
pub const RECEIVE_WINDOW: u32 = 64 << 20;
/// With at least this many inbound slots taken, a connection attempt must first prove its source
/// address (a QUIC Retry) before it gets one.
pub const VALIDATE_ABOVE: usize = MAX_INBOUND / 2;
/// Ack-eliciting packets a peer may receive before it must send an ACK at once (QUIC ACK
/// frequency extension; both ends are quinn). quinn's default, 1, has a follower send an ACK-only
/// packet for about every second packet of a commit's exchange, each a syscall and a wake-up of
/// the leader's runtime. With 3 those ACKs ride on the answers. Measured, 3 nodes, single-row
/// commits, alternating builds: ack=commit 1,381 -> 1,444/s, ack=apply 1,266 -> 1,304/s;
/// 1000-row transactions and catch-up unchanged (10 made 1000-row transactions about 10%
/// slower). The loss timers do not change: the ACK delay stays quinn's 25 ms.
pub const ACK_THRESHOLD: u32 = 3;
/// Peer ids kept in the outbound connection cache.
pub const MAX_PEERS: usize = 1024;

/// The largest UDP payload MTU discovery tries (quinn's default stops at 1452). Larger datagrams
/// where the path allows them (jumbo frames, loopback) mean fewer packets, so less CPU per byte;
/// on a 1500-byte path the probes above it are simply lost and discovery settles lower.
pub const MTU_UPPER_BOUND: u16 = 9000;

/// A peer that answered nothing for this long when a call to it times out is presumed gone (or
/// restarted): its cached connection is dropped and the next call dials afresh.
pub const SILENT_EVICT: Duration = Duration::from_millis(150);

/// Connection closed by `shutdown` (or by dropping the last `Transport`).
pub const CLOSE_SHUTDOWN: u32 = 0;
/// Connection closed because the peer failed authentication.
pub const CLOSE_AUTH: u32 = 1;
/// Connection closed because the hello was malformed.
pub const CLOSE_PROTOCOL: u32 = 2;
/// Connection closed because the hello did not complete in time.
pub const CLOSE_TIMEOUT: u32 = 3;
/// Stream reset/stopped: a message longer than the receiver's limit.
pub const STREAM_TOO_LARGE: u32 = 0x10;
/// Stream reset/stopped: truncated or trailing bytes.
pub const STREAM_MALFORMED: u32 = 0x11;

#[derive(Clone)]
pub struct NetConfig {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    pub auth: crate::config::Auth,
    /// Largest request or response body accepted or sent (default [`MAX_MESSAGE`]).
    pub max_message: usize,
    /// QUIC keep-alive interval (default 1 s).
    pub keep_alive: Duration,
    /// QUIC max idle timeout: a connection that hears nothing for this long is dead (default 10 s).
    pub idle_timeout: Duration,
}

impl fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the shared secret.
        let auth = match &self.auth {
            crate::config::Auth::Secret(_) => "Secret(..)".to_string(),
            tls => format!("{tls:?}"),
        };
        f.debug_struct("NetConfig")
            .field("node_id", &self.node_id)
            .field("listen", &self.listen)
            .field("auth", &format_args!("{auth}"))
            .field("max_message", &self.max_message)
            .field("keep_alive", &self.keep_alive)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl NetConfig {
    /// A configuration with the default bounds and timings.
    pub fn new(node_id: NodeId, listen: SocketAddr, auth: crate::config::Auth) -> NetConfig {
        NetConfig {
            node_id,
            listen,
            auth,
            max_message: MAX_MESSAGE,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

pub trait Handler: Send + Sync + 'static {
    /// Serve one request of `kind` from an authenticated peer; Err(msg) is sent back as a remote error.
    fn handle(
        &self,
        from: NodeId,
        kind: u8,
        body: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The peer could not be reached or the connection failed (resolve, handshake timeout, reset,
    /// idle timeout, peer shut down, this transport shut down).
    Unreachable(String),
    /// The call's timeout elapsed.
    Timeout,
    /// Authentication failed, either way (TLS or hello).
    Refused(String),
    /// A message above the limit: a request refused before sending, or a response refused on
    /// receipt.
    TooLarge { size: usize, limit: usize },
    /// The handler on the peer returned an error (or the peer refused the request as too large).
    Remote(String),
    /// The peer broke the wire protocol.
    Protocol(String),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Unreachable(m) => write!(f, "unreachable: {m}"),
            NetError::Timeout => write!(f, "timed out"),
            NetError::Refused(m) => write!(f, "refused: {m}"),
            NetError::TooLarge { size, limit } => {
                write!(f, "message of {size} bytes exceeds the limit of {limit} bytes")
            }
            NetError::Remote(m) => write!(f, "remote error: {m}"),
            NetError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl std::error::Error for NetError {}

impl NetError {
    fn context(self, to: NodeId, addr: &str) -> NetError {
        let c = |m: String| format!("node {to} at {addr}: {m}");
        match self {
            NetError::Unreachable(m) => NetError::Unreachable(c(m)),
            NetError::Refused(m) => NetError::Refused(c(m)),
            NetError::Protocol(m) => NetError::Protocol(c(m)),
            other => other,
        }
    }
}

fn is_crypto_code(code: quinn::TransportErrorCode) -> bool {
    (0x100..0x200).contains(&u64::from(code))
}

/// What a dead connection means for a caller.
pub(crate) fn conn_error(e: &quinn::ConnectionError) -> NetError {
    use quinn::ConnectionError as E;
    match e {
        E::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason);
            match u32::try_from(c.error_code.into_inner()) {
                Ok(CLOSE_SHUTDOWN | CLOSE_TIMEOUT) => {
                    NetError::Unreachable(format!("peer closed the connection: {reason}"))
                }
                Ok(CLOSE_AUTH | CLOSE_PROTOCOL) => NetError::Refused(format!("peer refused the connection: {reason}")),
                _ => NetError::Unreachable(format!("peer closed the connection: {c}")),
            }
        }
        E::ConnectionClosed(c) if is_crypto_code(c.error_code) => NetError::Refused(format!("TLS: peer: {c}")),
        E::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            NetError::Unreachable(format!("peer refused a new connection: {c}"))
        }
        E::ConnectionClosed(c) => NetError::Protocol(format!("peer aborted the connection: {c}")),
        E::TransportError(t) if is_crypto_code(t.code) => NetError::Refused(format!("TLS: {t}")),
        E::TransportError(t) => NetError::Protocol(t.to_string()),
        E::VersionMismatch => NetError::Protocol("no common QUIC version".into()),
        E::Reset => NetError::Unreachable("connection reset by the peer (restarted?)".into()),
        E::TimedOut => NetError::Unreachable("connection timed out".into()),
        E::LocallyClosed => NetError::Unreachable("connection closed locally".into()),
        E::CidsExhausted => NetError::Unreachable("connection ids exhausted".into()),
    }
}

fn code(c: u32) -> quinn::VarInt {
    quinn::VarInt::from_u32(c)
}

/// One outbound cache entry; the async mutex makes concurrent callers share one dial.
#[derive(Default)]
struct Slot {
    addr: String,
    conn: Option<quinn::Connection>,
}

struct Shared {
    node_id: NodeId,
    max_message: usize,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    secret: Option<ring::hmac::Key>,
    handler: Arc<dyn Handler>,
    refused: AtomicU64,
    /// Connection attempts answered with a Retry (address validation under pressure).
    retried: AtomicU64,
    closed: AtomicBool,
    peers: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<Slot>>>>,
    /// When each peer last answered a call (at most MAX_PEERS entries).
    answered: Mutex<HashMap<NodeId, Instant>>,
    inbound: Arc<tokio::sync::Semaphore>,
    /// Inbound connections not yet authenticated, by source address (at most MAX_INBOUND
    /// entries: each holds an inbound slot).
    unauthenticated: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
    log_limiter: Mutex<HashMap<SocketAddr, Instant>>,
    local_addr: SocketAddr,
}

/// One unauthenticated inbound connection counted against its source address; uncounted when
/// dropped (the hello verified, or the connection over).
struct Unauthenticated {
    map: Arc<Mutex<HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl Unauthenticated {
    fn take(map: &Arc<Mutex<HashMap<std::net::IpAddr, usize>>>, ip: std::net::IpAddr) -> Option<Unauthenticated> {
        let mut m = map.lock();
        let n = m.entry(ip).or_insert(0);
        if *n >= MAX_UNAUTHENTICATED_PER_ADDRESS && !ip.is_loopback() {
            return None;
        }
        *n += 1;
        Some(Unauthenticated { map: map.clone(), ip })
    }
}

impl Drop for Unauthenticated {
    fn drop(&mut self) {
        let mut m = self.map.lock();
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    /// Count a refusal and warn about it (rate-limited per remote address).
    fn refuse(&self, remote: SocketAddr, what: &str, reason: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        if self.may_log(remote) {
            warn!(node = self.node_id, remote = %remote, "replicated: refused {what} {remote}: {reason}");
        }
    }

    fn may_log(&self, remote: SocketAddr) -> bool {
        let now = Instant::now();
        let mut m = self.log_limiter.lock();
        if m.len() >= 4096 {
            m.retain(|_, t| now.duration_since(*t) < Duration::from_secs(1));
            if m.len() >= 4096 {
                m.clear();
            }
        }
        match m.get(&remote) {
            Some(t) if now.duration_since(*t) < Duration::from_secs(1) => false,
            _ => {
                m.insert(remote, now);
                true
            }
        }
    }
}

/// Owner of the endpoint: dropping the last `Transport` closes it.
struct Inner {
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.endpoint.close(code(CLOSE_SHUTDOWN), b"shutdown");
        self.accept_task.abort();
    }
}

#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

/// A failed RPC attempt; `retry` when the request certainly (or, after a stateless reset, at
/// least from this incarnation's point of view) never reached the handler.
struct Failed {
    err: NetError,
    retry: bool,
}

impl Transport {
    /// Binds the UDP socket and starts accepting. Must be called within a tokio runtime context.
    pub fn start(cfg: NetConfig, handler: Arc<dyn Handler>) -> io::Result<Transport> {
        Self::start_inner(cfg, handler, true)
    }

    fn start_inner(cfg: NetConfig, handler: Arc<dyn Handler>, check_own_name: bool) -> io::Result<Transport> {
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        if cfg.node_id == 0 {
            return Err(invalid("replicated: node id 0 is not valid".into()));
        }
        if cfg.keep_alive.is_zero() || cfg.keep_alive >= cfg.idle_timeout {
            return Err(invalid(format!(
                "replicated: keep-alive {:?} must be positive and shorter than the idle timeout {:?}",
                cfg.keep_alive, cfg.idle_timeout
            )));
        }
        let runtime = quinn::default_runtime()
            .ok_or_else(|| io::Error::other("replicated: the transport must be started inside a tokio runtime"))?;
        let setup = auth::setup(&cfg.auth, cfg.node_id, check_own_name)?;
        let idle = quinn::IdleTimeout::try_from(cfg.idle_timeout)
            .map_err(|_| invalid(format!("replicated: idle timeout {:?} is too large", cfg.idle_timeout)))?;
        let transport = |bidi: u32| {
            let mut t = quinn::TransportConfig::default();
            let mut mtu = quinn::MtuDiscoveryConfig::default();
            mtu.upper_bound(MTU_UPPER_BOUND);
            t.keep_alive_interval(Some(cfg.keep_alive))
                .mtu_discovery_config(Some(mtu))
                .max_idle_timeout(Some(idle))
                .max_concurrent_bidi_streams(quinn::VarInt::from_u32(bidi))
                .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
                // quinn buffers what a peer sends on a stream whether or not it was accepted:
                // bound the whole connection (its default is unbounded), and take no datagrams.
                .receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW))
                .datagram_receive_buffer_size(None);
            // Fewer ACK-only packets (ACK_THRESHOLD). quinn asks it of a peer only if the peer
            // announced the extension, so an older peer is simply acknowledged as before.
            let mut ack = quinn::AckFrequencyConfig::default();
            ack.ack_eliciting_threshold(quinn::VarInt::from_u32(ACK_THRESHOLD));
            t.ack_frequency_config(Some(ack));
            Arc::new(t)
        };
        // One stream, the hello's, until the peer is authenticated (serve_connection raises it).
        let mut server_config = quinn::ServerConfig::with_crypto(setup.server);
        server_config.transport_config(transport(1)).max_incoming(MAX_INBOUND);
        let mut client_config = quinn::ClientConfig::new(setup.client);
        client_config.transport_config(transport(0));
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(setup.reset_key));
        endpoint_config.cid_generator(|| Box::new(auth::RandomCids::new()));
        let socket = std::net::UdpSocket::bind(cfg.listen)
            .map_err(|e| io::Error::new(e.kind(), format!("replicated: cannot bind {}: {e}", cfg.listen)))?;
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)?;
        let local_addr = endpoint.local_addr()?;
        let shared = Arc::new(Shared {
            node_id: cfg.node_id,
            max_message: codec::clamp_limit(cfg.max_message),
            endpoint,
            client_config,
            secret: setup.secret,
            handler,
            refused: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            peers: Mutex::new(HashMap::new()),
            answered: Mutex::new(HashMap::new()),
            inbound: Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND)),
            unauthenticated: Arc::new(Mutex::new(HashMap::new())),
            log_limiter: Mutex::new(HashMap::new()),
            local_addr,
        });
        let accept_task = tokio::spawn(accept_loop(shared.clone()));
        Ok(Transport {
            inner: Arc::new(Inner { shared, accept_task }),
        })
    }

    /// One RPC on its own bidirectional stream, over a cached, authenticated connection to `to` at
    /// `addr` (host:port; resolved with tokio::net::lookup_host). Reconnects when the cached
    /// connection died.
    pub async fn call(
        &self,
        to: NodeId,
        addr: &str,
        kind: u8,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, NetError> {
        let s = &self.inner.shared;
        if body.len() > s.max_message {
            return Err(NetError::TooLarge {
                size: body.len(),
                limit: s.max_message,
            });
        }
        if s.closed.load(Ordering::SeqCst) {
            return Err(NetError::Unreachable("transport shut down".into()));
        }
        match tokio::time::timeout(timeout, self.call_inner(to, addr, kind, body)).await {
            Ok(r) => {
                if r.is_ok() {
                    let mut a = s.answered.lock();
                    if a.len() >= MAX_PEERS && !a.contains_key(&to) {
                        a.clear();
                    }
                    a.insert(to, Instant::now());
                }
                r.map_err(|e| e.context(to, addr))
            }
            Err(_) => {
                let silent = s.answered.lock().get(&to).is_none_or(|t| t.elapsed() >= SILENT_EVICT);
                if silent {
                    // Skipped while another call is dialing: that one brings a fresh connection.
                    if let Ok(mut g) = self.slot(to).try_lock() {
                        g.conn = None;
                    }
                }
                Err(NetError::Timeout)
            }
        }
    }

    async fn call_inner(&self, to: NodeId, addr: &str, kind: u8, body: &[u8]) -> Result<Vec<u8>, NetError> {
        let mut attempt = 0;
        loop {
            let (conn, fresh) = self.connection(to, addr).await?;
            match self.rpc(&conn, kind, body).await {
                Ok(r) => return Ok(r),
                Err(f) => {
                    if conn.close_reason().is_some() {
                        self.evict(to, &conn).await;
                    }
                    if !f.retry || fresh || attempt > 0 {
                        return Err(f.err);
                    }
                    debug!(
                        node = self.inner.shared.node_id,
                        to, "replicated: cached connection dead ({}); redialing", f.err
                    );
                    attempt += 1;
                }
            }
        }
    }

    fn slot(&self, to: NodeId) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut peers = self.inner.shared.peers.lock();
        if !peers.contains_key(&to) && peers.len() >= MAX_PEERS {
            if let Some(k) = peers.keys().next().copied() {
                peers.remove(&k);
            }
        }
        peers.entry(to).or_default().clone()
    }

    async fn evict(&self, to: NodeId, dead: &quinn::Connection) {
        let slot = self.slot(to);
        let mut g = slot.lock().await;
        if g.conn.as_ref().is_some_and(|c| c.stable_id() == dead.stable_id()) {
            g.conn = None;
        }
    }

    /// The cached connection to `to`, or a fresh authenticated one. `true` when fresh.
    async fn connection(&self, to: NodeId, addr: &str) -> Result<(quinn::Connection, bool), NetError> {
        let slot = self.slot(to);
        let mut g = slot.lock().await;
        if let Some(c) = &g.conn {
            if g.addr == addr && c.close_reason().is_none() {
                return Ok((c.clone(), false));
            }
        }
        g.conn = None;
        let c = self.dial(to, addr).await?;
        if self.inner.shared.closed.load(Ordering::SeqCst) {
            c.close(code(CLOSE_SHUTDOWN), b"shutdown");
            return Err(NetError::Unreachable("transport shut down".into()));
        }
        g.addr = addr.to_string();
        g.conn = Some(c.clone());
        Ok((c, true))
    }

    async fn resolve(&self, addr: &str) -> Result<SocketAddr, NetError> {
        let all: Vec<SocketAddr> = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| NetError::Unreachable(format!("cannot resolve {addr}: {e}")))?
            .collect();
        let local = self.inner.shared.local_addr;
        // A socket bound to an IPv4 address cannot reach IPv6 peers: prefer our own family.
        all.iter()
            .find(|a| a.is_ipv4() == local.is_ipv4())
            .or_else(|| all.first())
            .copied()
            .ok_or_else(|| NetError::Unreachable(format!("{addr} resolves to no address")))
    }

    async fn dial(&self, to: NodeId, addr: &str) -> Result<quinn::Connection, NetError> {
        let s = &self.inner.shared;
        let sa = self.resolve(addr).await?;
        let deadline = tokio::time::Instant::now() + auth::HELLO_TIMEOUT;
        let connecting = s
            .endpoint
            .connect_with(s.client_config.clone(), sa, &auth::server_name(to))
            .map_err(|e| NetError::Unreachable(format!("cannot connect: {e}")))?;
        let conn = match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) => return Err(NetError::Unreachable("TLS handshake timed out".into())),
            Ok(Err(e)) => {
                if let quinn::ConnectionError::TransportError(t) = &e {
                    if is_crypto_code(t.code) {
                        s.refuse(sa, "server at", &format!("TLS: {t}"));
                    }
                }
                return Err(conn_error(&e));
            }
            Ok(Ok(c)) => c,
        };
        match tokio::time::timeout_at(deadline, auth::client_hello(&conn, s.secret.as_ref(), s.node_id, to)).await {
            Err(_) => {
                s.refuse(sa, "server at", &format!("node {to}: hello not answered within 5 s"));
                conn.close(code(CLOSE_TIMEOUT), b"hello timeout");
                Err(NetError::Unreachable("hello not answered in time".into()))
            }
            Ok(Err(auth::HelloError::Refuse { code: c, reason })) => {
                s.refuse(sa, "server at", &format!("node {to}: {reason}"));
                conn.close(code(c), b"authentication refused");
                Err(NetError::Refused(reason))
            }
            Ok(Err(auth::HelloError::Net(e))) => {
                conn.close(code(CLOSE_PROTOCOL), b"hello failed");
                Err(e)
            }
            Ok(Ok(())) => Ok(conn),
        }
    }

    async fn rpc(&self, conn: &quinn::Connection, kind: u8, body: &[u8]) -> Result<Vec<u8>, Failed> {
        let s = &self.inner.shared;
        let limit = s.max_message;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| Failed {
            err: conn_error(&e),
            retry: true,
        })?;
        let fail = |err: NetError| Failed { err, retry: false };
        let header = codec::request_header(kind, body.len(), limit).map_err(|e| fail(codec_error(e)))?;
        let written = async {
            send.write_all(&header).await?;
            send.write_all(body).await
        };
        if let Err(e) = written.await {
            return Err(match e {
                quinn::WriteError::ConnectionLost(c) => Failed {
                    retry: matches!(c, quinn::ConnectionError::Reset),
                    err: conn_error(&c),
                },
                quinn::WriteError::Stopped(c) => fail(stream_code_error(c, body.len())),
                other => fail(NetError::Protocol(format!("request stream: {other}"))),
            });
        }
        // Finishing only fails if the stream is already closed; the read below reports why.
        let _ = send.finish();
        let read_fail = |e: quinn::ReadError| match e {
            quinn::ReadError::ConnectionLost(c) => Failed {
                retry: matches!(c, quinn::ConnectionError::Reset),
                err: conn_error(&c),
            },
            quinn::ReadError::Reset(c) => fail(stream_code_error(c, body.len())),
            other => fail(NetError::Protocol(format!("response stream: {other}"))),
        };
        let mut h = [0u8; codec::HEADER_LEN];
        match recv.read_exact(&mut h).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(n)) => {
                return Err(fail(NetError::Protocol(format!(
                    "response truncated after {n} header bytes"
                ))));
            }
            Err(quinn::ReadExactError::ReadError(e)) => return Err(read_fail(e)),
        }
        let (ok, len) = match codec::parse_response_header(&h, limit) {
            Ok(x) => x,
            Err(e) => {
                let stream_code = if matches!(e, CodecError::TooLarge { .. }) {
                    STREAM_TOO_LARGE
                } else {
                    STREAM_MALFORMED
                };
                let _ = recv.stop(code(stream_code));
                s.refuse(conn.remote_address(), "response from", &e.to_string());
                return Err(fail(codec_error(e)));
            }
        };
        let data = match recv.read_to_end(len).await {
            Ok(d) => d,
            Err(quinn::ReadToEndError::TooLong) => {
                let _ = recv.stop(code(STREAM_MALFORMED));
                s.refuse(conn.remote_address(), "response from", "bytes after the announced body");
                return Err(fail(NetError::Protocol("bytes after the response body".into())));
            }
            Err(quinn::ReadToEndError::Read(e)) => return Err(read_fail(e)),
        };
        if let Err(e) = codec::check_body(len, data.len()) {
            s.refuse(conn.remote_address(), "response from", &e.to_string());
            return Err(fail(codec_error(e)));
        }
        codec::response_from_parts(ok, data).map_err(|m| fail(NetError::Remote(m)))
    }

    /// Connections and streams refused so far (authentication failures, protocol errors,
    /// oversized messages), on either side.
    pub fn refused_count(&self) -> u64 {
        self.inner.shared.refused.load(Ordering::Relaxed)
    }

    /// Connection attempts asked to validate their address first (see BOUNDS).
    pub fn retried_count(&self) -> u64 {
        self.inner.shared.retried.load(Ordering::Relaxed)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.shared.local_addr
    }

    /// Close every connection and the endpoint; later calls fail with Unreachable. Waits (at most
    /// 2 s) for the close to reach the peers.
    pub async fn shutdown(&self) {
        let s = &self.inner.shared;
        s.closed.store(true, Ordering::SeqCst);
        s.endpoint.close(code(CLOSE_SHUTDOWN), b"shutdown");
        let slots: Vec<_> = s.peers.lock().drain().map(|(_, v)| v).collect();
        drop(slots);
        let _ = tokio::time::timeout(Duration::from_secs(2), s.endpoint.wait_idle()).await;
    }
}

fn codec_error(e: CodecError) -> NetError {
    match e {
        CodecError::TooLarge { size, limit } => NetError::TooLarge { size, limit },
        other => NetError::Protocol(other.to_string()),
    }
}

fn stream_code_error(c: quinn::VarInt, size: usize) -> NetError {
    match u32::try_from(c.into_inner()) {
        Ok(STREAM_TOO_LARGE) => NetError::Remote(format!("the peer refused a request of {size} bytes as too large")),
        Ok(STREAM_MALFORMED) => NetError::Protocol("the peer found the request malformed".into()),
        _ => NetError::Protocol(format!("the peer abandoned the request (code {c})")),
    }
}

async fn accept_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.endpoint.accept().await {
        let remote = incoming.remote_address();
        // Under pressure, a slot only for an address that has shown it receives our packets.
        let in_use = MAX_INBOUND.saturating_sub(shared.inbound.available_permits());
        if in_use >= VALIDATE_ABOVE && !incoming.remote_address_validated() && incoming.may_retry() {
            shared.retried.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
                shared.refuse(remote, "connection from", "address validation failed");
            }
            continue;
        }
        let Some(pending) = Unauthenticated::take(&shared.unauthenticated, remote.ip()) else {
            incoming.refuse();
            shared.refuse(
                remote,
                "connection from",
                "too many unauthenticated connections from this address",
            );
            continue;
        };
        let permit = match shared.inbound.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                incoming.refuse();
                shared.refuse(remote, "connection from", "too many inbound connections");
                continue;
            }
        };
        let s = shared.clone();
        tokio::spawn(async move {
            serve_connection(s, incoming, remote, pending).await;
            drop(permit);
        });
    }
}

async fn serve_connection(s: Arc<Shared>, incoming: quinn::Incoming, remote: SocketAddr, pending: Unauthenticated) {
    let deadline = tokio::time::Instant::now() + auth::HELLO_TIMEOUT;
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => {
            s.refuse(remote, "connection from", &format!("cannot accept: {e}"));
            return;
        }
    };
    let conn = match tokio::time::timeout_at(deadline, connecting).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            s.refuse(remote, "connection from", &format!("TLS handshake failed: {e}"));
            return;
        }
        Err(_) => {
            // Dropping the handshake closes the connection.
            s.refuse(remote, "connection from", "TLS handshake not completed in time");
            return;
        }
    };
    let peer = match tokio::time::timeout_at(deadline, auth::server_hello(&conn, s.secret.as_ref(), s.node_id)).await {
        Ok(Ok(id)) => id,
        Ok(Err(auth::HelloError::Refuse { code: c, reason })) => {
            let public: &[u8] = if c == CLOSE_AUTH {
                b"authentication refused"
            } else {
                b"malformed hello"
            };
            s.refuse(remote, "connection from", &reason);
            conn.close(code(c), public);
            return;
        }
        Ok(Err(auth::HelloError::Net(e))) => {
            debug!(node = s.node_id, remote = %remote, "replicated: connection lost during hello: {e}");
            conn.close(code(CLOSE_PROTOCOL), b"hello failed");
            return;
        }
        Err(_) => {
            s.refuse(remote, "connection from", "no hello within 5 s");
            conn.close(code(CLOSE_TIMEOUT), b"hello timeout");
            return;
        }
    };
    debug!(node = s.node_id, peer, remote = %remote, "replicated: peer authenticated");
    drop(pending);
    conn.set_max_concurrent_bi_streams(quinn::VarInt::from_u32(MAX_STREAMS));
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                tokio::spawn(serve_stream(s.clone(), peer, remote, send, recv));
            }
            Err(e) => {
                debug!(node = s.node_id, peer, remote = %remote, "replicated: inbound connection ended: {e}");
                return;
            }
        }
    }
}

async fn serve_stream(
    s: Arc<Shared>,
    peer: NodeId,
    remote: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let limit = s.max_message;
    let abandon = |stream_code: u32, why: &str, send: &mut quinn::SendStream, recv: &mut quinn::RecvStream| {
        // Count first: the peer may act on the reset before this task runs again.
        s.refuse(remote, "request from", &format!("node {peer}: {why}"));
        let _ = recv.stop(code(stream_code));
        let _ = send.reset(code(stream_code));
    };
    let mut h = [0u8; codec::HEADER_LEN];
    match recv.read_exact(&mut h).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return abandon(
                STREAM_MALFORMED,
                &format!("stream ended after {n} header bytes"),
                &mut send,
                &mut recv,
            );
        }
        Err(quinn::ReadExactError::ReadError(e)) => {
            // The caller gave up (reset) or the connection died: nothing to answer.
            debug!(node = s.node_id, peer, "replicated: request stream: {e}");
            return;
        }
    }
    let (kind, len) = match codec::parse_request_header(&h, limit) {
        Ok(x) => x,
        Err(e) => {
            let c = if matches!(e, CodecError::TooLarge { .. }) {
                STREAM_TOO_LARGE
            } else {
                STREAM_MALFORMED
            };
            return abandon(c, &e.to_string(), &mut send, &mut recv);
        }
    };
    let body = match recv.read_to_end(len).await {
        Ok(b) => b,
        Err(quinn::ReadToEndError::TooLong) => {
            return abandon(STREAM_MALFORMED, "bytes after the announced body", &mut send, &mut recv);
        }
        Err(quinn::ReadToEndError::Read(e)) => {
            debug!(node = s.node_id, peer, "replicated: request stream: {e}");
            return;
        }
    };
    if let Err(e) = codec::check_body(len, body.len()) {
        return abandon(STREAM_MALFORMED, &e.to_string(), &mut send, &mut recv);
    }
    // The handler runs in a task of its own: a panic there becomes a remote error.
    let result = match tokio::spawn(s.handler.handle(peer, kind, body)).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => Err(format!("node {}: the request handler panicked", s.node_id)),
        Err(_) => Err(format!("node {}: the request handler was cancelled", s.node_id)),
    };
    let (ok, payload) = match result {
        Ok(b) => (true, b),
        Err(m) => (false, m.into_bytes()),
    };
    let (header, payload) = match codec::response_header(ok, payload.len(), limit) {
        Ok(h) => (h, payload),
        Err(e) => {
            warn!(
                node = s.node_id,
                peer, "replicated: response to request kind {kind} not sent: {e}"
            );
            let m = format!("node {}: response not sent: {e}", s.node_id).into_bytes();
            match codec::response_header(false, m.len(), limit) {
                Ok(h) => (h, m),
                Err(_) => {
                    // The limit is smaller than the message itself: reset instead.
                    let _ = send.reset(code(STREAM_TOO_LARGE));
                    return;
                }
            }
        }
    };
    let sent = async {
        send.write_all(&header).await?;
        send.write_all(&payload).await
    };
    if let Err(e) = sent.await {
        debug!(node = s.node_id, peer, "replicated: response not delivered: {e}");
        return;
    }
    let _ = send.finish();
}

#[cfg(test)]
impl Transport {
    /// Test-only: start without checking that a mutual-TLS certificate names this node.
    fn start_unchecked(cfg: NetConfig, handler: Arc<dyn Handler>) -> io::Result<Transport> {
        Self::start_inner(cfg, handler, false)
    }

    /// Test-only: the authenticated connection `call` would use.
    async fn connection_for_test(&self, to: NodeId, addr: &str) -> quinn::Connection {
        self.connection(to, addr).await.unwrap().0
    }

    /// Test-only: die like kill -9 — the port is released and peers hear nothing more.
    fn crash_for_test(&self) {
        let s = &self.inner.shared;
        s.closed.store(true, Ordering::SeqCst);
        // quinn keeps the previous socket until traffic arrives on the new one: rebind twice so
        // the listen port is really released. Packets from the new ports are discarded by the
        // peers (a client ignores a server's packets from an unknown address).
        for _ in 0..2 {
            let elsewhere = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.endpoint.rebind(elsewhere).unwrap();
        }
        s.endpoint.close(code(CLOSE_SHUTDOWN), b"crash");
    }
}

#[cfg(test)]
mod tests {
    use super::auth::tests::TestPki;
    use super::*;
    use crate::config::Auth;

    const T: Duration = Duration::from_secs(5);
    const ECHO: u8 = 1;
    const FAIL: u8 = 2;
    const PANIC: u8 = 3;
    /// Respond with as many bytes as the u32 LE body asks for.
    const SIZED: u8 = 4;

    struct Echo;
    impl Handler for Echo {
        fn handle(
            &self,
            from: NodeId,
            kind: u8,
            body: Vec<u8>,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>> {
            Box::pin(async move {
                match kind {
                    ECHO => Ok(body),
                    FAIL => Err(format!("no luck for node {from}")),
                    PANIC => panic!("handler exploded"),
                    SIZED => {
                        let n = u32::from_le_bytes(body[..4].try_into().unwrap()) as usize;
                        Ok(vec![7u8; n])
                    }
                    k => Err(format!("unknown kind {k}")),
                }
            })
        }
    }

    fn init_log() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }

    fn secret(s: &str) -> Auth {
        Auth::Secret(s.to_string())
    }

    fn cfg(id: NodeId, auth: Auth) -> NetConfig {
        NetConfig::new(id, "127.0.0.1:0".parse().unwrap(), auth)
    }

    fn node(id: NodeId, auth: Auth) -> Transport {
        init_log();
        Transport::start(cfg(id, auth), Arc::new(Echo)).unwrap()
    }

    /// Server-side counters move in the server's task, a moment after the client hears the close.
    async fn eventually(cond: impl Fn() -> bool) {
        for _ in 0..200 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached within 2 s");
    }

    fn addr(t: &Transport) -> String {
        t.local_addr().to_string()
    }

    const S: &str = "correct horse battery staple";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echo_with_shared_secret_both_ways() {
        let a = node(1, secret(S));
        let b = node(2, secret(S));
        assert_eq!(a.call(2, &addr(&b), ECHO, b"ping", T).await.unwrap(), b"ping");
        assert_eq!(b.call(1, &addr(&a), ECHO, b"pong", T).await.unwrap(), b"pong");
        assert_eq!(a.call(2, &addr(&b), ECHO, b"", T).await.unwrap(), b"");
        // The connection is cached: a second call reuses it.
        let c1 = a.connection_for_test(2, &addr(&b)).await;
        a.call(2, &addr(&b), ECHO, b"again", T).await.unwrap();
        assert_eq!(c1.stable_id(), a.connection_for_test(2, &addr(&b)).await.stable_id());
        assert_eq!(a.refused_count() + b.refused_count(), 0);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn echo_with_mutual_tls_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let a = node(1, pki.node_auth(dir.path(), 1));
        let b = node(2, pki.node_auth(dir.path(), 2));
        assert_eq!(a.call(2, &addr(&b), ECHO, b"ping", T).await.unwrap(), b"ping");
        assert_eq!(b.call(1, &addr(&a), ECHO, b"pong", T).await.unwrap(), b"pong");
        // The handler learns the authenticated peer id.
        assert_eq!(
            b.call(1, &addr(&a), FAIL, b"", T).await,
            Err(NetError::Remote("no luck for node 2".into()))
        );
        assert_eq!(a.refused_count() + b.refused_count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_rpcs() {
        let a = node(1, secret(S));
        let b = node(2, secret(S));
        let to = addr(&b);
        // More than MAX_STREAMS at once: the excess waits for stream credit.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..600u32 {
            let (a, to) = (a.clone(), to.clone());
            set.spawn(async move {
                let body = vec![(i % 251) as u8; (i as usize * 37) % 5000];
                let got = a.call(2, &to, ECHO, &body, Duration::from_secs(20)).await.unwrap();
                assert_eq!(got, body);
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        // And a large one, alongside small ones.
        let big = vec![0x5au8; 8 << 20];
        let (r1, r2) = tokio::join!(
            a.call(2, &to, ECHO, &big, Duration::from_secs(30)),
            a.call(2, &to, ECHO, b"small", T)
        );
        assert_eq!(r1.unwrap(), big);
        assert_eq!(r2.unwrap(), b"small");
        assert_eq!(b.refused_count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wrong_secret_refused_both_directions() {
        let a = node(1, secret(S));
        let b = node(2, secret("a different secret, same length"));
        match a.call(2, &addr(&b), ECHO, b"x", T).await {
            Err(NetError::Refused(m)) => assert!(m.contains("authentication refused"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.refused_count(), 1);
        assert!(matches!(
            b.call(1, &addr(&a), ECHO, b"x", T).await,
            Err(NetError::Refused(_))
        ));
        assert_eq!(a.refused_count(), 1);
        // Both keep serving nodes that know their secret.
        let c = node(3, secret(S));
        assert_eq!(c.call(1, &addr(&a), ECHO, b"ok", T).await.unwrap(), b"ok");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_refuses_a_server_with_another_id() {
        let a = node(1, secret(S));
        let b = node(2, secret(S));
        // Dial "node 5" at b's address: b proves the secret but is node 2.
        match a.call(5, &addr(&b), ECHO, b"x", T).await {
            Err(NetError::Refused(m)) => assert!(m.contains("says it is node 2"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.refused_count(), 1);
        // The same in mutual-TLS mode fails at server-name verification.
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let c = node(1, pki.node_auth(dir.path(), 1));
        let d = node(2, pki.node_auth(dir.path(), 2));
        assert!(matches!(
            c.call(5, &addr(&d), ECHO, b"x", T).await,
            Err(NetError::Refused(_))
        ));
        assert_eq!(c.refused_count(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn foreign_ca_refused() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (ours, theirs) = (TestPki::new(), TestPki::new());
        let a = node(1, ours.node_auth(d1.path(), 1));
        let b = node(2, ours.node_auth(d1.path(), 2));
        // x trusts our CA but presents a certificate from another CA: a's TLS handshake refuses it.
        let Auth::Tls { cert, key, .. } = theirs.node_auth(d2.path(), 2) else {
            unreachable!()
        };
        let x = node(
            2,
            Auth::Tls {
                ca: d1.path().join("ca.pem"),
                cert,
                key,
            },
        );
        assert!(matches!(
            x.call(1, &addr(&a), ECHO, b"x", T).await,
            Err(NetError::Refused(_))
        ));
        eventually(|| a.refused_count() == 1).await;
        // y is wholly foreign: dialing it, a refuses y's server certificate itself.
        let y = node(2, theirs.node_auth(d2.path(), 2));
        assert!(matches!(
            a.call(2, &addr(&y), ECHO, b"x", T).await,
            Err(NetError::Refused(_))
        ));
        assert_eq!(a.refused_count(), 2);
        // And y dialing a refuses a's certificate (y's own count), whatever a makes of it.
        assert!(matches!(
            y.call(1, &addr(&a), ECHO, b"x", T).await,
            Err(NetError::Refused(_))
        ));
        eventually(|| y.refused_count() == 2).await;
        assert_eq!(b.call(1, &addr(&a), ECHO, b"fine", T).await.unwrap(), b"fine");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn certificate_for_node_2_cannot_claim_id_3() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let a = node(1, pki.node_auth(dir.path(), 1));
        // A correctly issued certificate for node 2, used by a process claiming to be node 3.
        let liar = Transport::start_unchecked(cfg(3, pki.node_auth(dir.path(), 2)), Arc::new(Echo)).unwrap();
        match liar.call(1, &addr(&a), ECHO, b"x", T).await {
            Err(NetError::Refused(m)) => assert!(m.contains("authentication refused"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.refused_count(), 1);
        // The honest start refuses the mismatch outright.
        let e = Transport::start(cfg(3, pki.node_auth(dir.path(), 2)), Arc::new(Echo))
            .err()
            .unwrap();
        assert!(e.to_string().contains("node-3.replicated"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_large_on_send_is_refused_without_io() {
        let mut c = cfg(1, secret(S));
        c.max_message = 1024;
        let a = Transport::start(c, Arc::new(Echo)).unwrap();
        // No peer at all: the size check comes first.
        let r = a.call(2, "127.0.0.1:9", ECHO, &[0u8; 1025], T).await;
        assert_eq!(
            r,
            Err(NetError::TooLarge {
                size: 1025,
                limit: 1024
            })
        );
        assert_eq!(
            a.call(2, "127.0.0.1:9", ECHO, &[0u8; 1024], Duration::from_millis(200))
                .await,
            Err(NetError::Timeout)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_large_on_receive_resets_the_stream_not_the_connection() {
        let a = node(1, secret(S));
        let mut c = cfg(2, secret(S));
        c.max_message = 1024;
        let b = Transport::start(c, Arc::new(Echo)).unwrap();
        let to = addr(&b);
        // A legitimate call above b's limit: b refuses it, a learns why.
        match a.call(2, &to, ECHO, &[1u8; 2000], T).await {
            Err(NetError::Remote(m)) => assert!(m.contains("too large"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.refused_count(), 1);
        // A crafted stream announcing 1 GiB after a valid hello: reset from the header alone.
        let conn = a.connection_for_test(2, &to).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[ECHO, 0, 0, 0, 0x40]).await.unwrap();
        let mut buf = [0u8; 1];
        match recv.read(&mut buf).await {
            Err(quinn::ReadError::Reset(c)) => assert_eq!(c, code(STREAM_TOO_LARGE)),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.refused_count(), 2);
        // Malformed: fewer bytes than announced, then finish.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&[ECHO, 10, 0, 0, 0, 1, 2]).await.unwrap();
        send.finish().unwrap();
        match recv.read(&mut buf).await {
            Err(quinn::ReadError::Reset(c)) => assert_eq!(c, code(STREAM_MALFORMED)),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.refused_count(), 3);
        // The same connection still serves RPCs.
        assert_eq!(a.call(2, &to, ECHO, b"still here", T).await.unwrap(), b"still here");
        assert_eq!(conn.stable_id(), a.connection_for_test(2, &to).await.stable_id());
        assert!(conn.close_reason().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_large_response_refused_by_the_caller() {
        let mut c = cfg(1, secret(S));
        c.max_message = 1024;
        let a = Transport::start(c, Arc::new(Echo)).unwrap();
        let b = node(2, secret(S));
        let to = addr(&b);
        let r = a.call(2, &to, SIZED, &2000u32.to_le_bytes(), T).await;
        assert_eq!(
            r,
            Err(NetError::TooLarge {
                size: 2000,
                limit: 1024
            })
        );
        assert_eq!(a.refused_count(), 1);
        assert_eq!(
            a.call(2, &to, SIZED, &1024u32.to_le_bytes(), T).await.unwrap(),
            vec![7u8; 1024]
        );
        // A handler answer above the server's own limit becomes a remote error.
        let mut c = cfg(3, secret(S));
        c.max_message = 100;
        let small = Transport::start(c, Arc::new(Echo)).unwrap();
        match a.call(3, &addr(&small), SIZED, &101u32.to_le_bytes(), T).await {
            Err(NetError::Remote(m)) => assert!(m.contains("exceeds"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_datagrams_do_not_disturb() {
        let a = node(1, secret(S));
        let b = node(2, secret(S));
        let to = b.local_addr();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..300usize {
            let len = [1, 20, 100, 1200, 1500][i % 5];
            let mut d: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if i % 3 == 0 {
                // Looks like a QUIC v1 Initial with garbage inside.
                d[0] = 0xc0;
                if d.len() >= 5 {
                    d[1..5].copy_from_slice(&[0, 0, 0, 1]);
                }
            }
            sock.send_to(&d, to).unwrap();
        }
        assert_eq!(a.call(2, &to.to_string(), ECHO, b"fine", T).await.unwrap(), b"fine");
        // Garbage aimed at an established connection's port as well.
        for _ in 0..100 {
            sock.send_to(&[0x40; 64], to).unwrap();
        }
        assert_eq!(a.call(2, &to.to_string(), ECHO, b"still", T).await.unwrap(), b"still");
    }

    /// Genuine QUIC Initial packets, each opening a different connection, replayed from many
    /// source addresses that never answer: what a flood from forged addresses looks like to the
    /// server. Each would hold an inbound slot until the hello times out (5 s); a real peer must
    /// still get in meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forged_connection_attempts_cannot_take_every_inbound_slot() {
        let a = node(1, secret(S));
        let b = node(2, secret(S));
        // Calls to a plain UDP socket, each to another peer id: each dials its own connection.
        let trap = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let trap_addr = trap.local_addr().unwrap().to_string();
        let wanted = MAX_INBOUND + 40;
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..wanted as u64 {
            let (a, to) = (a.clone(), trap_addr.clone());
            calls.spawn(async move { a.call(1000 + i, &to, ECHO, b"", Duration::from_secs(2)).await });
        }
        let mut initials: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        while initials.len() < wanted {
            let got = tokio::time::timeout(Duration::from_secs(5), trap.recv_from(&mut buf)).await;
            let (n, _) = got.expect("the calls sent their Initials").unwrap();
            let d = &buf[..n];
            // Long header: flags, version (4), dcid length, dcid.
            if d.len() > 6 && d[0] & 0x80 != 0 && d.len() > 6 + d[5] as usize {
                initials
                    .entry(d[6..6 + d[5] as usize].to_vec())
                    .or_insert_with(|| d.to_vec());
            }
        }
        calls.abort_all();
        let mut forgers = Vec::new();
        for (i, d) in initials.values().enumerate() {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.send_to(d, b.local_addr()).unwrap();
            forgers.push(sock); // kept open, never read: the handshakes stall
            if i % 32 == 31 {
                // Paced, so the server's socket buffer does not drop them.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(b.retried_count() > 0, "no attempt was asked to validate its address");
        assert_eq!(a.call(2, &addr(&b), ECHO, b"let me in", T).await.unwrap(), b"let me in");
        drop(forgers);
    }

    #[test]
    fn unauthenticated_connections_are_limited_per_source_address() {
        let map = Arc::new(Mutex::new(HashMap::new()));
        let (a, b): (std::net::IpAddr, std::net::IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let mut held: Vec<Unauthenticated> = (0..MAX_UNAUTHENTICATED_PER_ADDRESS)
            .map(|_| Unauthenticated::take(&map, a).unwrap())
            .collect();
        assert!(
            Unauthenticated::take(&map, a).is_none(),
            "one more from the same address"
        );
        assert!(
            Unauthenticated::take(&map, b).is_some(),
            "another address is not affected"
        );
        held.pop(); // authenticated, or gone
        let again = Unauthenticated::take(&map, a);
        assert!(again.is_some());
        drop((held, again));
        assert!(map.lock().is_empty(), "nothing left counted");
        let local: Vec<_> = (0..MAX_UNAUTHENTICATED_PER_ADDRESS + 5)
            .map(|_| Unauthenticated::take(&map, "127.0.0.1".parse().unwrap()))
            .collect();
        assert!(local.iter().all(Option::is_some), "loopback is not limited");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handler_errors_come_back_as_remote() {
        let a = node(1, secret(S));
        let b = node(2, secret(S));
        let to = addr(&b);
        assert_eq!(
            a.call(2, &to, FAIL, b"", T).await,
            Err(NetError::Remote("no luck for node 1".into()))
        );
        match a.call(2, &to, PANIC, b"", T).await {
            Err(NetError::Remote(m)) => assert!(m.contains("panicked"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(a.call(2, &to, ECHO, b"after", T).await.unwrap(), b"after");
        assert_eq!(b.refused_count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unreachable_peer_fails_within_the_timeout() {
        let a = node(1, secret(S));
        // A port with nobody behind it.
        let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let t0 = Instant::now();
        let r = a
            .call(2, &dead.to_string(), ECHO, b"x", Duration::from_millis(500))
            .await;
        assert!(matches!(r, Err(NetError::Timeout | NetError::Unreachable(_))), "{r:?}");
        assert!(t0.elapsed() < Duration::from_millis(1500), "{:?}", t0.elapsed());
        let r = a
            .call(2, "not an address", ECHO, b"x", Duration::from_millis(500))
            .await;
        assert!(matches!(r, Err(NetError::Timeout | NetError::Unreachable(_))), "{r:?}");
        assert_eq!(a.refused_count(), 0);
    }

    /// A bare QUIC client with this crate's TLS settings but no hello logic.
    async fn raw_connection(auth: &Auth, server: SocketAddr, server_id: NodeId) -> quinn::Connection {
        let setup = auth::setup(auth, 9, false).unwrap();
        let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let cc = quinn::ClientConfig::new(setup.client);
        ep.connect_with(cc, server, &auth::server_name(server_id))
            .unwrap()
            .await
            .unwrap()
    }

    fn closed_with(e: quinn::ConnectionError) -> u32 {
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner() as u32,
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hello_rules_on_the_accepting_side() {
        let b = node(2, secret(S));
        let to = b.local_addr();
        // Before its hello a connection gets one stream (the hello's) and no datagrams: an
        // unauthenticated peer cannot make the node buffer the data of hundreds of streams.
        let conn = raw_connection(&secret(S), to, 2).await;
        assert_eq!(conn.max_datagram_size(), None);
        let (mut first, _r) = conn.open_bi().await.unwrap();
        first.write_all(b"x").await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), conn.open_bi())
                .await
                .is_err(),
            "a second stream before the hello"
        );
        drop(conn);
        // Silence after the handshake: closed after 5 s.
        let conn = raw_connection(&secret(S), to, 2).await;
        let t0 = Instant::now();
        assert_eq!(closed_with(conn.closed().await), CLOSE_TIMEOUT);
        assert!(t0.elapsed() < Duration::from_secs(7));
        // (The dropped connection counts too if its close did not arrive before its hello's time.)
        let base = b.refused_count();
        assert!(base == 1 || base == 2, "{base}");

        // Garbage instead of a hello.
        let conn = raw_connection(&secret(S), to, 2).await;
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        send.finish().unwrap();
        assert_eq!(closed_with(conn.closed().await), CLOSE_PROTOCOL);
        assert_eq!(b.refused_count(), base + 1);

        // A hello whose proof is bound to another session (here: a zero exporter), i.e. a replayed
        // or relayed proof made with the right secret.
        let conn = raw_connection(&secret(S), to, 2).await;
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, S.as_bytes());
        let stale = auth::proof(&k, auth::ROLE_CLIENT, 9, &[0u8; 32]);
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&codec::encode_hello(&codec::Hello {
            node_id: 9,
            proof: Some(stale),
        }))
        .await
        .unwrap();
        send.finish().unwrap();
        assert_eq!(closed_with(conn.closed().await), CLOSE_AUTH);
        assert_eq!(b.refused_count(), base + 2);

        // The same, with the proof made for this session: accepted, and RPCs flow.
        let conn = raw_connection(&secret(S), to, 2).await;
        let mut exp = [0u8; 32];
        conn.export_keying_material(&mut exp, auth::EXPORTER_LABEL, b"")
            .unwrap();
        let good = auth::proof(&k, auth::ROLE_CLIENT, 9, &exp);
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&codec::encode_hello(&codec::Hello {
            node_id: 9,
            proof: Some(good),
        }))
        .await
        .unwrap();
        send.finish().unwrap();
        let reply = codec::decode_hello(&recv.read_to_end(100).await.unwrap(), true).unwrap();
        assert_eq!(reply.node_id, 2);
        assert!(auth::verify_proof(
            &k,
            auth::ROLE_SERVER,
            2,
            &exp,
            &reply.proof.unwrap()
        ));
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&codec::encode_request(ECHO, b"raw", 100).unwrap())
            .await
            .unwrap();
        send.finish().unwrap();
        let resp = recv.read_to_end(100).await.unwrap();
        assert_eq!(codec::decode_response(&resp, 100).unwrap(), Ok(b"raw".to_vec()));
        // After the hello, streams in parallel.
        let mut open = Vec::new();
        for _ in 0..8 {
            open.push(conn.open_bi().await.unwrap());
        }
        assert_eq!(b.refused_count(), base + 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hello_rules_on_the_dialing_side() {
        // A server that completes TLS and then says nothing.
        let setup = auth::setup(&secret(S), 2, false).unwrap();
        let sc = quinn::ServerConfig::with_crypto(setup.server);
        let mute = quinn::Endpoint::server(sc, "127.0.0.1:0".parse().unwrap()).unwrap();
        let mute_addr = mute.local_addr().unwrap().to_string();
        let keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(i) = mute.accept().await {
                if let Ok(c) = i.await {
                    held.push(c);
                }
            }
        });
        let a = node(1, secret(S));
        let t0 = Instant::now();
        let r = a.call(2, &mute_addr, ECHO, b"x", Duration::from_secs(20)).await;
        assert!(
            matches!(&r, Err(NetError::Unreachable(m)) if m.contains("hello")),
            "{r:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(7), "{:?}", t0.elapsed());
        assert_eq!(a.refused_count(), 1);
        keep.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mode_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::new();
        let t = node(1, pki.node_auth(dir.path(), 1));
        let s = node(2, secret(S));
        // The secret-mode client has no certificate for the mTLS server, and the mTLS client
        // does not trust the secret-mode server's self-signed certificate.
        assert!(matches!(
            s.call(1, &addr(&t), ECHO, b"x", T).await,
            Err(NetError::Refused(_))
        ));
        assert!(matches!(
            t.call(2, &addr(&s), ECHO, b"x", T).await,
            Err(NetError::Refused(_))
        ));
        eventually(|| t.refused_count() >= 2).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restarted_peer_is_redialed_at_once() {
        let a = node(1, secret(S));
        let b = node(2, secret(S));
        let port = b.local_addr();
        assert_eq!(a.call(2, &port.to_string(), ECHO, b"one", T).await.unwrap(), b"one");
        b.crash_for_test();
        drop(b);
        // A new incarnation on the same port: a's cached connection is stale, but the new process
        // can stateless-reset it (same derived key), so a redials at once instead of waiting out
        // the 10 s idle timeout.
        let mut tries = 0;
        let b2 = loop {
            match Transport::start(NetConfig::new(2, port, secret(S)), Arc::new(Echo)) {
                Ok(t) => break t,
                Err(e) if tries < 50 => {
                    tries += 1;
                    debug!("port not free yet: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        let t0 = Instant::now();
        assert_eq!(a.call(2, &port.to_string(), ECHO, b"two", T).await.unwrap(), b"two");
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        b2.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_stops_serving_and_calling() {
        let a = node(1, secret(S));
        let b = node(2, secret(S));
        let to = addr(&b);
        a.call(2, &to, ECHO, b"x", T).await.unwrap();
        b.shutdown().await;
        assert!(a.call(2, &to, ECHO, b"x", Duration::from_millis(500)).await.is_err());
        assert!(matches!(
            b.call(1, &addr(&a), ECHO, b"x", T).await,
            Err(NetError::Unreachable(_))
        ));
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let e = Transport::start(cfg(1, secret(S)), Arc::new(Echo)).err().unwrap();
        assert!(e.to_string().contains("tokio runtime"), "{e}");
    }

    #[test]
    fn errors_display() {
        assert_eq!(
            NetError::TooLarge { size: 5, limit: 4 }.to_string(),
            "message of 5 bytes exceeds the limit of 4 bytes"
        );
        assert_eq!(NetError::Timeout.to_string(), "timed out");
        assert_eq!(
            NetError::Refused("x".into()).context(3, "h:1").to_string(),
            "refused: node 3 at h:1: x"
        );
    }
}
