//! The Raft network seen by openraft, carried by the QUIC transport (`net/`).
//!
//! Every Raft RPC is one request on its own QUIC stream: the payload is the postcard encoding of
//! openraft's request, the answer the encoding of `Result<response, RaftError>`. The service side
//! (`RaftService`) decodes, hands the request to the local `Raft`, and encodes the answer; a
//! malformed request is refused with a remote error, never a panic.
//!
//! Bounds: an AppendEntries request is kept under `MAX_APPEND_BYTES` (less while the peer is
//! slow to answer: `AppendBudget`) by sending a prefix of its
//! entries and reporting `PartialSuccess` up to the last one sent (openraft then sends the rest); a
//! single entry is at most one part of a transaction (`PART_BYTES` of pages, raft/types.rs), far
//! under the transport's 96 MiB message bound. Timeouts: openraft's per-RPC hard TTL. An unreachable, refused or timed-out peer is
//! reported as `Unreachable`, so openraft backs off instead of spinning: for `retry` (heartbeat_ms,
//! at most 100 ms), not openraft's default 500 ms. A restarted node must hear from the leader
//! before its own election timer fires (lease + election timeout, 300-400 ms by default). If it
//! does not, it campaigns with a stale log: the candidacy fails, yet the leader steps down on
//! seeing the higher term, and the failed candidate then waits an extra 2 x election_ms before it
//! may campaign again, which slowed the next fail-over to ~0.8 s. A peer going unreachable and
//! coming back is logged once each way (openraft's own per-RPC errors are off by default).
//!
//! Besides Raft's own RPCs the service answers `READ_INDEX` (a follower's `replicated_sync()`
//! asks the leader for a linearizable read point) and `APPLIED` (a follower tells the leader how
//! far it has applied, for `ack=apply`).

use crate::net::{Handler, NetError, Transport};
use crate::raft::election::{self, Contact};
use crate::raft::types::{LogId, NodeId, TypeConfig, Vote};
use openraft::error::{NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, Raft};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub const APPEND: u8 = 1;
pub const VOTE: u8 = 2;
pub const READ_INDEX: u8 = 4;
pub const APPLIED: u8 = 5;
pub const SNAPSHOT_CHUNK: u8 = 6;
pub const SNAPSHOT_DONE: u8 = 7;
pub const CAMPAIGN: u8 = 8;
/// Would you vote for me? (raft/election.rs). Answers a bool; changes nothing.
pub const PRE_VOTE: u8 = 9;

/// Bytes of snapshot image per SNAPSHOT_CHUNK message.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest snapshot image a node accepts (bounds the receiving file).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 40;

/// Body of a SNAPSHOT_CHUNK request: `data` goes at `offset` of the snapshot `id` of `total` bytes.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    pub id: String,
    pub offset: u64,
    pub total: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

impl Chunk {
    /// The chunk lies inside its snapshot, and the snapshot is within `MAX_SNAPSHOT_BYTES`.
    pub fn check_bounds(&self) -> Result<(), String> {
        if self.total > MAX_SNAPSHOT_BYTES
            || self
                .offset
                .checked_add(self.data.len() as u64)
                .is_none_or(|e| e > self.total)
        {
            return Err(format!(
                "snapshot chunk out of bounds (offset {}, total {})",
                self.offset, self.total
            ));
        }
        Ok(())
    }
}

/// Body of a SNAPSHOT_DONE request: install the received snapshot `id` under `vote`.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Done {
    pub id: String,
    pub total: u64,
    pub vote: openraft::Vote<NodeId>,
    pub meta: openraft::SnapshotMeta<NodeId, BasicNode>,
}

/// A request body as the service decodes it, before anything touches the node.
pub enum RpcBody {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// The body is ignored.
    ReadIndex,
    Applied(u64),
    SnapshotChunk(Chunk),
    SnapshotDone(Done),
    /// The body is ignored.
    Campaign,
    PreVote(crate::raft::election::PreVote),
}

/// Decodes the body of a request of `kind`: pure, so every malformed body is an error (the
/// service's remote error), never a panic. Unknown kinds are refused here too.
pub fn decode_rpc_body(kind: u8, body: &[u8]) -> Result<RpcBody, String> {
    Ok(match kind {
        APPEND => RpcBody::Append(well_formed(decode(body)?)?),
        VOTE => RpcBody::Vote(decode(body)?),
        READ_INDEX => RpcBody::ReadIndex,
        APPLIED => RpcBody::Applied(decode(body)?),
        SNAPSHOT_CHUNK => RpcBody::SnapshotChunk(decode(body)?),
        SNAPSHOT_DONE => RpcBody::SnapshotDone(decode(body)?),
        CAMPAIGN => RpcBody::Campaign,
        PRE_VOTE => RpcBody::PreVote(decode(body)?),
        k => return Err(format!("unknown request kind {k}")),
    })
}

/// An AppendEntries request's entries follow its previous log id one index at a time, their
/// terms never going down. openraft 0.9 takes that for granted from a leader, and its log store
/// gives up for good on anything else (the follower's Raft core stops): a peer that sends such a
/// request, through a bug or with the secret, gets an error and nothing changes.
fn well_formed(req: AppendEntriesRequest<TypeConfig>) -> Result<AppendEntriesRequest<TypeConfig>, String> {
    let mut prev = req.prev_log_id;
    for e in &req.entries {
        let (index, term) = (e.log_id.index, e.log_id.leader_id.term);
        let expected = prev.map_or(Some(0), |p| p.index.checked_add(1));
        if Some(index) != expected || prev.is_some_and(|p| term < p.leader_id.term) {
            return Err(format!(
                "malformed AppendEntries: entry {index} (term {term}) after {prev:?}"
            ));
        }
        prev = Some(e.log_id);
    }
    Ok(req)
}

/// A poisoned node's answer to CAMPAIGN and READ_INDEX (state_machine.rs).
pub const WILL_NOT_LEAD: &str = "this node cannot apply the log (see replicated_last_error()) and will not lead";

/// Largest AppendEntries payload sent in one RPC when it holds more than one entry. openraft 0.9
/// gives every AppendEntries `heartbeat_interval` to complete (then backs off for 500 ms), so a
/// batch must be small enough for a follower to receive, write and fsync in that time.
pub const MAX_APPEND_BYTES: usize = 4 << 20;
/// The smallest budget `append_entries` shrinks to (one entry is always sent, whatever its size).
pub const MIN_APPEND_BYTES: usize = 64 << 10;

fn to_rpc_error<E: std::error::Error>(e: NetError) -> RPCError<NodeId, BasicNode, E> {
    match e {
        NetError::Remote(msg) | NetError::Protocol(msg) => {
            RPCError::Network(NetworkError::new(&std::io::Error::other(msg)))
        }
        other => RPCError::Unreachable(Unreachable::new(&std::io::Error::other(other.to_string()))),
    }
}

/// The postcard encoding of a request or answer body.
pub fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(v).map_err(|e| format!("encode: {e}"))
}

/// Decodes a request or answer body (bounded by `b`: postcard never allocates past the input).
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("malformed message: {e}"))
}

/// Creates one client per peer; all share the node's transport.
pub struct QuicNetwork {
    pub transport: Transport,
    /// Snapshots being sent, by target, for replicated_status().
    pub sending: Transfers,
    /// How long openraft waits before it tries an unreachable peer again.
    pub retry: Duration,
    /// openraft's heartbeat interval (keep-alives during a snapshot transfer, see full_snapshot).
    pub heartbeat: Duration,
    /// Eager AppendEntries under way or answered, by follower (see `append_entries`).
    pub eager: EagerCalls,
}

pub struct QuicClient {
    transport: Transport,
    target: NodeId,
    addr: String,
    sending: Transfers,
    retry: Duration,
    heartbeat: Duration,
    /// Since when this peer has been unreachable (its transitions are logged once).
    down_since: Option<std::time::Instant>,
    append_budget: AppendBudget,
    eager: EagerCalls,
}

/// The byte budget of the next AppendEntries to one peer (when it holds more than one entry).
///
/// openraft cancels an AppendEntries after heartbeat_interval, and a follower answers only after
/// its fsync: when it is slower than that (a busy disk), resending the same megabytes only adds
/// load. So the budget halves after every AppendEntries that did not complete (openraft's timeout
/// dropped it, or the transport's fired) and doubles after each success, within
/// MIN_APPEND_BYTES ..= MAX_APPEND_BYTES.
#[derive(Debug)]
struct AppendBudget {
    bytes: usize,
    /// An AppendEntries is under way; still set at the next one if it was dropped.
    unfinished: bool,
}

impl AppendBudget {
    fn new() -> Self {
        AppendBudget {
            bytes: MAX_APPEND_BYTES,
            unfinished: false,
        }
    }

    /// An AppendEntries starts: its budget. One without entries (a heartbeat, or the commit index
    /// moving) is not counted: a follower whose disk stalls still answers it in time, so it says
    /// nothing about how much that follower can take, and counting it would undo each halving
    /// (openraft sends one between a dropped request and its resend when commits go on).
    fn start(&mut self, entries: bool) -> usize {
        if !entries {
            return usize::MAX;
        }
        if std::mem::replace(&mut self.unfinished, true) {
            self.bytes = (self.bytes / 2).max(MIN_APPEND_BYTES);
        }
        self.bytes
    }

    /// It ended: `timed_out` when the peer did not answer in time, `success` when it answered
    /// Success (a refusal -- a conflict, a higher vote -- says nothing about speed and does not
    /// grow the budget). Not counted for a request without entries (see `start`).
    fn end(&mut self, entries: bool, timed_out: bool, success: bool) {
        if !entries {
            return;
        }
        self.unfinished = timed_out;
        if success {
            self.bytes = self.bytes.saturating_mul(2).min(MAX_APPEND_BYTES);
        }
    }
}

/// Progress of one snapshot transfer, shown by replicated_status().
#[derive(Clone, Debug, serde::Serialize)]
pub struct Transfer {
    pub id: String,
    /// The other end: the receiver for a snapshot being sent, the sender for one being received.
    pub peer: NodeId,
    pub bytes: u64,
    pub total: u64,
    /// "sending", "receiving", "installing" (the receiver writes it through its WAL).
    pub phase: &'static str,
    /// When this entry was last updated.
    #[serde(skip)]
    pub updated: std::time::Instant,
}

/// How long one snapshot chunk may take before its sender abandons the transfer (and starts
/// another).
pub const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);

/// Drops from `t` the "receiving" transfers that no chunk has advanced within CHUNK_TIMEOUT: their
/// sender has abandoned them (a leader change, a timeout), and nothing else would remove them
/// until that peer starts another transfer.
pub fn drop_abandoned(t: &mut BTreeMap<NodeId, Transfer>, now: std::time::Instant) {
    t.retain(|_, x| x.phase != "receiving" || now.saturating_duration_since(x.updated) <= CHUNK_TIMEOUT);
}

/// Transfers under way, by peer (at most one per peer: openraft sends one snapshot at a time).
pub type Transfers = Arc<Mutex<BTreeMap<NodeId, Transfer>>>;

/// An eager AppendEntries (log_store.rs, EAGER REPLICATION) sent to one follower: the leader's
/// vote, the log id before the batch and the batch's last log id.
pub struct EagerCall {
    pub vote: Vote,
    pub prev: Option<LogId>,
    pub last: LogId,
    /// None while it is under way; then whether the follower answered Success.
    pub answer: tokio::sync::watch::Receiver<Option<bool>>,
}

/// The latest eager call per follower (a newer one replaces it): at most one entry per peer.
pub type EagerCalls = Arc<Mutex<BTreeMap<NodeId, EagerCall>>>;

/// The eager call that sent exactly the entries of `rpc` to `target` (same vote, same log id
/// before them, same last log id, so the same entries: a leader writes one entry per log id).
/// Every request carrying entries takes the follower's call out of the map, matching or not: an
/// eager answer serves only openraft's next request to that follower, which follows the leader's
/// fsync within a moment, never a later one (by then the follower may have been restarted, or
/// wiped).
fn take_eager_call(
    calls: &mut BTreeMap<NodeId, EagerCall>,
    target: NodeId,
    rpc: &AppendEntriesRequest<TypeConfig>,
) -> Option<EagerCall> {
    let last = rpc.entries.last()?.log_id;
    let c = calls.remove(&target)?;
    (c.vote == rpc.vote && c.prev == rpc.prev_log_id && c.last == last).then_some(c)
}

/// Whether an encoded AppendEntries answer is a Success.
pub fn is_append_success(body: &[u8]) -> bool {
    matches!(
        decode::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(body),
        Ok(Ok(AppendEntriesResponse::Success))
    )
}

impl RaftNetworkFactory<TypeConfig> for QuicNetwork {
    type Network = QuicClient;
    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        QuicClient {
            transport: self.transport.clone(),
            target,
            addr: node.addr.clone(),
            sending: self.sending.clone(),
            retry: self.retry,
            heartbeat: self.heartbeat,
            down_since: None,
            append_budget: AppendBudget::new(),
            eager: self.eager.clone(),
        }
    }
}

impl QuicClient {
    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned, E: std::error::Error>(
        &mut self,
        kind: u8,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>> {
        let body = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        let out = self.transport.call(self.target, &self.addr, kind, &body, timeout).await;
        let out = match (out, self.down_since) {
            (Ok(out), None) => out,
            (Ok(out), Some(since)) => {
                tracing::info!(
                    "replicated: node {} at {} is reachable again (after {:.1} s)",
                    self.target,
                    self.addr,
                    since.elapsed().as_secs_f64()
                );
                self.down_since = None;
                out
            }
            (Err(e), down) => {
                if down.is_none() && !matches!(e, NetError::Remote(_) | NetError::Protocol(_)) {
                    tracing::warn!("replicated: node {} at {} is unreachable: {e}", self.target, self.addr);
                    self.down_since = Some(std::time::Instant::now());
                }
                return Err(to_rpc_error(e));
            }
        };
        decode(&out).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))
    }

    /// Whether the follower answered Success to the eager call with exactly `rpc`'s entries
    /// (`take_eager_call`), waiting at most `wait` for that answer.
    ///
    /// Why this is openraft's answer too: the eager request was a genuine AppendEntries with the
    /// same vote, the same log id before the entries and the same entries, and the follower
    /// handled it as it handles any (its Raft core, an fsync before it answers). Its Success says
    /// what an answer to openraft's request would say: under this vote its log holds the entries
    /// through `last`, durably. Using it is receiving that answer earlier, which Raft allows for any
    /// answer (a late one is no different). What openraft's request would add is its
    /// `leader_commit`; the follower learns it from the next AppendEntries, which openraft sends
    /// when the commit index moves. The follower's answer was ready when the leader's own fsync
    /// ended, so the commit no longer waits for a second round trip after it.
    async fn eager_answer(&self, rpc: &AppendEntriesRequest<TypeConfig>, wait: Duration) -> bool {
        let Some(mut call) = take_eager_call(&mut self.eager.lock(), self.target, rpc) else {
            return false;
        };
        let success = matches!(
            tokio::time::timeout(wait, call.answer.wait_for(Option::is_some)).await,
            Ok(Ok(a)) if *a == Some(true)
        );
        success
    }
}

impl RaftNetwork<TypeConfig> for QuicClient {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(self.retry))
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let start = std::time::Instant::now();
        if self.eager_answer(&rpc, option.hard_ttl() / 2).await {
            return Ok(AppendEntriesResponse::Success);
        }
        let ttl = option.hard_ttl().saturating_sub(start.elapsed());
        // Keep the message bounded: send a prefix and report partial success for it.
        let entries = !rpc.entries.is_empty();
        let budget = self.append_budget.start(entries);
        let mut truncated = false;
        while rpc.entries.len() > 1 && postcard::experimental::serialized_size(&rpc).unwrap_or(usize::MAX) > budget {
            let keep = rpc.entries.len() / 2;
            rpc.entries.truncate(keep);
            truncated = true;
        }
        let last = rpc.entries.last().map(|e| e.log_id);
        let r = self
            .call::<_, Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>, _>(APPEND, &rpc, ttl)
            .await;
        self.append_budget.end(
            entries,
            matches!(r, Err(RPCError::Unreachable(_))),
            matches!(r, Ok(Ok(AppendEntriesResponse::Success))),
        );
        match r? {
            Ok(AppendEntriesResponse::Success) if truncated => Ok(AppendEntriesResponse::PartialSuccess(last)),
            Ok(resp) => Ok(resp),
            Err(e) => Err(RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e))),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let r: Result<VoteResponse<NodeId>, RaftError<NodeId>> = self.call(VOTE, &rpc, option.hard_ttl()).await?;
        r.map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }

    /// Streams the snapshot image in bounded chunks (each its own RPC, so it is not limited by
    /// openraft's per-AppendEntries budget), then asks the follower to install it.
    async fn full_snapshot(
        &mut self,
        vote: openraft::Vote<NodeId>,
        snapshot: openraft::Snapshot<TypeConfig>,
        cancel: impl Future<Output = openraft::error::ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<
        openraft::raft::SnapshotResponse<NodeId>,
        openraft::error::StreamingError<TypeConfig, openraft::error::Fatal<NodeId>>,
    > {
        use openraft::error::StreamingError;
        let net = |e: String| StreamingError::Network(NetworkError::new(&std::io::Error::other(e)));
        let id = snapshot.meta.snapshot_id.clone();
        let file =
            std::fs::File::open(&snapshot.snapshot.path).map_err(|e| net(format!("opening the snapshot: {e}")))?;
        let total = file.metadata().map_err(|e| net(e.to_string()))?.len();
        // openraft sends no heartbeat to this peer until the transfer and the install are over:
        // keep its election timer from firing meanwhile (it would campaign, and depose us, in the
        // middle of a transfer of more than a few hundred milliseconds). An AppendEntries with
        // no entries and no previous log id only renews the leader's vote: it matches any log.
        // The first one also checks that the peer is there at all, within a heartbeat interval
        // like any AppendEntries: the chunks' long timeout would otherwise keep this stream
        // dialing a dead peer for seconds, and sending nothing, after it came back.
        let keep_alive_req = AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: None,
            leader_commit: None,
            entries: Vec::new(),
        };
        if let Err(e) = self
            .call::<_, Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>, RaftError<NodeId>>(
                APPEND,
                &keep_alive_req,
                self.heartbeat,
            )
            .await
        {
            return Err(match e {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => net(other.to_string()),
            });
        }
        tokio::pin!(cancel);
        let progress = |bytes: u64, phase| {
            let t = Transfer {
                id: id.clone(),
                peer: self.target,
                bytes,
                total,
                phase,
                updated: std::time::Instant::now(),
            };
            self.sending.lock().insert(self.target, t);
        };
        let keep_alive = encode(&keep_alive_req).map_err(net)?;
        let (transport, target, addr, every) = (self.transport.clone(), self.target, self.addr.clone(), self.heartbeat);
        let keep_alives = async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _ = transport.call(target, &addr, APPEND, &keep_alive, every).await;
            }
        };
        let send = self.send_snapshot_from(&file, &id, total, vote, &snapshot.meta, &mut cancel, progress);
        let r = tokio::select! {
            r = send => r,
            never = keep_alives => never,
        };
        self.sending.lock().remove(&self.target);
        r
    }
}

impl QuicClient {
    /// The body of full_snapshot: the chunks, then SNAPSHOT_DONE (which waits for the install).
    #[allow(clippy::too_many_arguments)]
    async fn send_snapshot_from(
        &self,
        file: &std::fs::File,
        id: &str,
        total: u64,
        vote: openraft::Vote<NodeId>,
        meta: &openraft::SnapshotMeta<NodeId, BasicNode>,
        cancel: &mut std::pin::Pin<
            &mut (impl Future<Output = openraft::error::ReplicationClosed> + openraft::OptionalSend + 'static),
        >,
        progress: impl Fn(u64, &'static str),
    ) -> Result<
        openraft::raft::SnapshotResponse<NodeId>,
        openraft::error::StreamingError<TypeConfig, openraft::error::Fatal<NodeId>>,
    > {
        use openraft::error::StreamingError;
        use std::os::unix::fs::FileExt;
        let net = |e: String| StreamingError::Network(NetworkError::new(&std::io::Error::other(e)));
        let unreachable = |e: NetError| match e {
            NetError::Remote(m) | NetError::Protocol(m) => {
                StreamingError::Network(NetworkError::new(&std::io::Error::other(m)))
            }
            other => StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(other.to_string()))),
        };
        let mut offset = 0u64;
        progress(0, "sending");
        while offset < total {
            let n = (SNAPSHOT_CHUNK_BYTES as u64).min(total - offset) as usize;
            let mut data = vec![0u8; n];
            file.read_exact_at(&mut data, offset)
                .map_err(|e| net(format!("reading the snapshot: {e}")))?;
            let body = encode(&Chunk {
                id: id.to_string(),
                offset,
                total,
                data,
            })
            .map_err(net)?;
            tokio::select! {
                biased;
                closed = cancel.as_mut() => return Err(StreamingError::Closed(closed)),
                r = self.transport.call(self.target, &self.addr, SNAPSHOT_CHUNK, &body, CHUNK_TIMEOUT) => {
                    r.map_err(unreachable)?;
                }
            }
            offset += n as u64;
            progress(offset, "sending");
        }
        progress(total, "installing");
        let body = encode(&Done {
            id: id.to_string(),
            total,
            vote,
            meta: meta.clone(),
        })
        .map_err(net)?;
        // Installing writes the whole image through the follower's WAL: allow it time.
        let out = self
            .transport
            .call(self.target, &self.addr, SNAPSHOT_DONE, &body, Duration::from_secs(600))
            .await
            .map_err(unreachable)?;
        let r: Result<openraft::raft::SnapshotResponse<NodeId>, String> = decode(&out).map_err(net)?;
        r.map_err(net)
    }
}

/// Serves incoming RPCs for one node (cheap to clone: shared state behind an Arc).
#[derive(Clone)]
pub struct RaftService(Arc<ServiceState>);

pub struct ServiceState {
    pub raft: OnceLock<Raft<TypeConfig>>,
    /// The node's data directory (where received snapshots are written).
    pub data: OnceLock<std::path::PathBuf>,
    /// Highest applied index each follower reported (for `ack=apply`).
    pub applied: Mutex<BTreeMap<NodeId, u64>>,
    /// Snapshots being received, by sender, for replicated_status().
    pub receiving: Transfers,
    pub applied_notify: tokio::sync::Notify,
    /// The highest commit index a leader has sent this node (a hint of how far behind it is).
    pub leader_commit: Arc<std::sync::atomic::AtomicU64>,
    /// When this node last heard from a leader (raft/election.rs).
    pub contact: Arc<Contact>,
    /// The log store (its last log id answers pre-votes) and the leader lease.
    pub election: OnceLock<(crate::raft::log_store::LogStore, Duration)>,
    /// The node cannot apply (SmShared::poison): it must not lead, so it refuses CAMPAIGN and,
    /// as a leader, grants pre-votes (node.rs `run_elections` stops its heartbeats).
    pub poisoned: std::sync::atomic::AtomicBool,
}

impl ServiceState {
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl std::ops::Deref for RaftService {
    type Target = ServiceState;
    fn deref(&self) -> &ServiceState {
        &self.0
    }
}

impl Default for RaftService {
    fn default() -> Self {
        Self::new()
    }
}

impl RaftService {
    pub fn new() -> RaftService {
        RaftService(Arc::new(ServiceState {
            raft: OnceLock::new(),
            data: OnceLock::new(),
            applied: Mutex::new(BTreeMap::new()),
            receiving: Arc::new(Mutex::new(BTreeMap::new())),
            applied_notify: tokio::sync::Notify::new(),
            leader_commit: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            contact: Arc::new(Contact::default()),
            election: OnceLock::new(),
            poisoned: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    async fn serve(self, from: NodeId, kind: u8, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let Some(raft) = self.raft.get().cloned() else {
            return Err("node is starting".into());
        };
        match decode_rpc_body(kind, &body)? {
            RpcBody::Append(req) => {
                if let Some(c) = req.leader_commit {
                    self.leader_commit
                        .fetch_max(c.index, std::sync::atomic::Ordering::Relaxed);
                }
                let r = raft.append_entries(req).await;
                if matches!(r, Ok(ref a) if !matches!(a, AppendEntriesResponse::HigherVote(_))) {
                    self.contact.heard();
                }
                encode(&r)
            }
            RpcBody::Vote(req) => {
                let r = raft.vote(req).await;
                // Granting a vote restarts the election timer, as in Raft: the candidate it voted
                // for is about to lead, and a pre-vote granted now would let another node
                // campaign over it.
                if matches!(r, Ok(ref v) if v.vote_granted) {
                    self.contact.heard();
                }
                encode(&r)
            }
            RpcBody::ReadIndex => {
                // Confirming leadership sends AppendEntries to every voter, heartbeats or not: a
                // poisoned leader that answered would renew its followers' leases for as long as
                // anyone calls replicated_sync(), and never be replaced.
                if self.is_poisoned() {
                    return Err(WILL_NOT_LEAD.into());
                }
                let r = raft.get_read_log_id().await.map_err(|e| e.to_string())?;
                encode(&r.0.map(|l| l.index).unwrap_or(0))
            }
            RpcBody::Applied(idx) => {
                // Only members' reports are kept: the map stays as small as the cluster, whatever
                // ids peers claim.
                let members = raft.metrics().borrow().membership_config.clone();
                let is_member = |id: &NodeId| members.membership().get_node(id).is_some();
                if is_member(&from) {
                    let mut m = self.applied.lock();
                    let e = m.entry(from).or_insert(0);
                    *e = (*e).max(idx);
                    // Removed members leave (checked only when there are more entries than members:
                    // this runs for every commit with ack=apply).
                    if m.len() > members.membership().nodes().count() {
                        m.retain(|id, _| is_member(id));
                    }
                    drop(m);
                    self.applied_notify.notify_waiters();
                }
                encode(&())
            }
            RpcBody::SnapshotChunk(c) => {
                use crate::raft::snapshot;
                let data = self.data.get().ok_or("node is starting")?;
                c.check_bounds()?;
                let path = snapshot::incoming(data, &c.id).map_err(|e| e.to_string())?;
                snapshot::write_chunk(&path, c.offset, &c.data).map_err(|e| format!("receiving a snapshot: {e}"))?;
                if c.offset == 0 {
                    // A new transfer: remove what abandoned ones left (snapshot.rs).
                    let stale = snapshot::remove_stale_incoming(data, &path, snapshot::STALE_INCOMING);
                    if !stale.is_empty() {
                        tracing::info!("replicated: removed abandoned incoming snapshot(s) {stale:?}");
                        self.receiving.lock().retain(|_, t| !stale.contains(&t.id));
                    }
                }
                let t = Transfer {
                    id: c.id,
                    peer: from,
                    bytes: c.offset + c.data.len() as u64,
                    total: c.total,
                    phase: "receiving",
                    updated: std::time::Instant::now(),
                };
                self.receiving.lock().insert(from, t);
                encode(&())
            }
            RpcBody::SnapshotDone(d) => {
                let data = self.data.get().ok_or("node is starting")?;
                let path = crate::raft::snapshot::incoming(data, &d.id).map_err(|e| e.to_string())?;
                let len = std::fs::metadata(&path)
                    .map(|m| m.len())
                    .map_err(|e| format!("snapshot {}: {e}", d.id))?;
                if len != d.total {
                    return Err(format!("snapshot {} incomplete: {len} of {} bytes", d.id, d.total));
                }
                let t = Transfer {
                    id: d.id.clone(),
                    peer: from,
                    bytes: len,
                    total: d.total,
                    phase: "installing",
                    updated: std::time::Instant::now(),
                };
                // From here on no chunk can write the file (snapshot.rs, claim_incoming).
                let path =
                    crate::raft::snapshot::claim_incoming(&path).map_err(|e| format!("snapshot {}: {e}", d.id))?;
                // openraft 0.9 stops the Raft core when an install fails: an image that is not a
                // whole database is refused here instead, and the sender starts again.
                if let Err(e) = std::fs::File::open(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|f| crate::apply::geometry(&f, "the received snapshot image"))
                {
                    let _ = std::fs::remove_file(&path);
                    return Err(format!("snapshot {}: {e}", d.id));
                }
                self.receiving.lock().insert(from, t);
                let snap = openraft::Snapshot {
                    meta: d.meta,
                    snapshot: Box::new(crate::raft::snapshot::SnapshotFile { path: path.clone() }),
                };
                let r = raft
                    .install_full_snapshot(d.vote, snap)
                    .await
                    .map_err(|e| e.to_string());
                if r.is_ok() {
                    self.contact.heard();
                }
                // An installed image was renamed to a snapshot; one still here was not installed
                // (refused, failed, or not newer than this node's state): nothing needs it, and a
                // sender that still has to send it starts a transfer again.
                let _ = std::fs::remove_file(&path);
                self.receiving.lock().remove(&from);
                encode(&r)
            }
            RpcBody::Campaign => {
                // The leader hands over (replicated_transfer_leader): start an election now.
                // This is word from the leader, so for the lease this node refuses pre-votes:
                // the other followers' leases have expired too (the leader stopped its heartbeats),
                // and one whose timer fires meanwhile would otherwise win this node's grant and
                // campaign against it (seen: "node 2 did not take over (leader is Some(3))").
                if self.is_poisoned() {
                    return Err(WILL_NOT_LEAD.into());
                }
                self.contact.heard();
                self.contact.campaigned();
                raft.trigger().elect().await.map_err(|e| e.to_string())?;
                encode(&())
            }
            RpcBody::PreVote(p) => {
                let (log, lease) = self.election.get().ok_or("node is starting")?;
                // A poisoned leader is stepping down: it grants like any follower whose leader
                // went quiet (it stopped its own heartbeats and no longer hears itself).
                let is_leader = raft.metrics().borrow().state == openraft::ServerState::Leader && !self.is_poisoned();
                let mine = log.last_log_id();
                encode(&election::grant(
                    is_leader,
                    self.contact.since(),
                    *lease,
                    mine,
                    p.last_log,
                ))
            }
        }
    }
}

impl Handler for RaftService {
    fn handle(
        &self,
        from: NodeId,
        kind: u8,
        body: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send>> {
        Box::pin(self.clone().serve(from, kind, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_bodies_decode_or_fail_cleanly() {
        let chunk = Chunk {
            id: "41-3-40".into(),
            offset: 8,
            total: 16,
            data: vec![1; 8],
        };
        let b = encode(&chunk).unwrap_or_default();
        match decode_rpc_body(SNAPSHOT_CHUNK, &b) {
            Ok(RpcBody::SnapshotChunk(c)) => assert!(c.check_bounds().is_ok() && c.data == chunk.data),
            _ => panic!("chunk not decoded"),
        }
        let e = decode_rpc_body(SNAPSHOT_CHUNK, &b[..b.len() - 1]).err();
        assert!(e.is_some_and(|e| e.starts_with("malformed message")));
        assert_eq!(
            decode_rpc_body(10, &[]).err(),
            Some("unknown request kind 10".to_string())
        );
        assert!(matches!(decode_rpc_body(READ_INDEX, b"any"), Ok(RpcBody::ReadIndex)));
        assert!(matches!(decode_rpc_body(CAMPAIGN, b""), Ok(RpcBody::Campaign)));
        let pre = encode(&election::PreVote { last_log: None }).unwrap_or_default();
        assert!(matches!(decode_rpc_body(PRE_VOTE, &pre), Ok(RpcBody::PreVote(_))));
        assert!(decode_rpc_body(PRE_VOTE, &[7]).is_err());
        let applied = encode(&7u64).unwrap_or_default();
        assert!(matches!(decode_rpc_body(APPLIED, &applied), Ok(RpcBody::Applied(7))));
        assert!(decode_rpc_body(APPEND, &[]).is_err() && decode_rpc_body(VOTE, &[0xff]).is_err());
        // AppendEntries whose entries do not follow on from its previous log id are refused.
        {
            use openraft::testing::{blank_ent, log_id};
            let append = |prev: Option<LogId>, ents: &[(u64, u64)]| {
                let req = AppendEntriesRequest::<TypeConfig> {
                    vote: Vote::new_committed(3, 1),
                    prev_log_id: prev,
                    entries: ents.iter().map(|&(t, i)| blank_ent::<TypeConfig>(t, 1, i)).collect(),
                    leader_commit: None,
                };
                decode_rpc_body(APPEND, &encode(&req).unwrap_or_default())
            };
            let p = Some(log_id(2, 1, 4));
            assert!(matches!(append(p, &[(2, 5), (3, 6)]), Ok(RpcBody::Append(_))));
            assert!(matches!(append(None, &[(1, 0), (1, 1)]), Ok(RpcBody::Append(_))));
            assert!(matches!(append(p, &[]), Ok(RpcBody::Append(_))));
            for bad in [
                &[(2, 6)][..],
                &[(2, 5), (2, 7)],
                &[(2, 5), (2, 5)],
                &[(1, 5)],
                &[(3, 5), (2, 6)],
            ] {
                let e = append(p, bad).err();
                assert!(e.is_some_and(|e| e.starts_with("malformed AppendEntries")), "{bad:?}");
            }
            assert!(append(None, &[(1, 1)]).is_err());
            assert!(
                append(Some(log_id(2, 1, u64::MAX)), &[(2, 0)]).is_err(),
                "no wrap-around"
            );
        }
        // Out of bounds: past the end (no overflow), beyond the snapshot size limit.
        let past = Chunk {
            offset: u64::MAX,
            ..chunk
        };
        assert!(past.check_bounds().is_err());
        let huge = Chunk {
            offset: 0,
            total: MAX_SNAPSHOT_BYTES + 1,
            ..past
        };
        assert!(huge.check_bounds().is_err());
    }

    #[test]
    fn an_eager_answer_serves_only_the_next_request_for_exactly_its_entries() {
        use openraft::testing::{blank_ent, log_id};
        let vote = Vote::new_committed(2, 1);
        let req = |vote: Vote, prev: u64, last: u64| AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id(2, 1, prev)),
            entries: (prev + 1..=last).map(|i| blank_ent::<TypeConfig>(2, 1, i)).collect(),
            leader_commit: None,
        };
        let (_answer, answered) = tokio::sync::watch::channel(Some(true));
        let call = |prev: u64, last: u64| EagerCall {
            vote,
            prev: Some(log_id(2, 1, prev)),
            last: log_id(2, 1, last),
            answer: answered.clone(),
        };
        let mut calls = BTreeMap::new();
        calls.insert(2, call(4, 5));
        // A heartbeat (no entries) leaves it; another follower's request does not see it.
        assert!(take_eager_call(&mut calls, 2, &req(vote, 5, 5)).is_none() && calls.len() == 1);
        assert!(take_eager_call(&mut calls, 3, &req(vote, 4, 5)).is_none() && calls.len() == 1);
        // Exactly its entries: used, and gone.
        assert!(take_eager_call(&mut calls, 2, &req(vote, 4, 5)).is_some() && calls.is_empty());
        // Anything else carrying entries is not answered by it, and takes it out all the same.
        let other_vote = Vote::new_committed(3, 1);
        // Another previous log id, more entries, another vote.
        for r in [req(vote, 3, 5), req(vote, 4, 6), req(other_vote, 4, 5)] {
            calls.insert(2, call(4, 5));
            assert!(take_eager_call(&mut calls, 2, &r).is_none());
            assert!(calls.is_empty());
        }
    }

    #[test]
    fn abandoned_receiving_transfers_are_not_shown() {
        let now = std::time::Instant::now();
        let t = |peer, phase, age: u64| Transfer {
            id: format!("snap-{peer}"),
            peer,
            bytes: 1,
            total: 2,
            phase,
            updated: now.checked_sub(Duration::from_secs(age)).unwrap_or(now),
        };
        let mut m: BTreeMap<NodeId, Transfer> = [
            (1, t(1, "receiving", 1)),
            (2, t(2, "receiving", CHUNK_TIMEOUT.as_secs() + 5)),
            (3, t(3, "installing", 3600)), // an install takes as long as the database is large
        ]
        .into_iter()
        .collect();
        drop_abandoned(&mut m, now);
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    }

    #[test]
    fn append_budget_shrinks_while_the_peer_is_slow_and_grows_back() {
        let mut b = AppendBudget::new();
        assert_eq!(b.start(true), MAX_APPEND_BYTES);
        b.end(true, false, true);
        assert_eq!(b.start(true), MAX_APPEND_BYTES, "a success keeps the maximum");
        // Dropped by openraft's timeout: end() never runs. A heartbeat answered in time before
        // the resend changes nothing.
        assert_eq!(b.start(false), usize::MAX, "a heartbeat is not limited");
        b.end(false, false, true);
        assert_eq!(b.start(true), MAX_APPEND_BYTES / 2);
        b.end(true, true, false); // the transport's timeout
        assert_eq!(b.start(true), MAX_APPEND_BYTES / 4);
        for _ in 0..20 {
            b.end(true, true, false);
            b.start(true);
        }
        b.end(true, true, false);
        assert_eq!(b.start(true), MIN_APPEND_BYTES, "never below the floor");
        b.end(true, false, false); // refused (a conflict, a higher vote): answered in time
        assert_eq!(
            b.start(true),
            MIN_APPEND_BYTES,
            "an answer that is no success does not grow it"
        );
        b.end(true, false, true);
        assert_eq!(b.start(true), MIN_APPEND_BYTES * 2);
        for _ in 0..20 {
            b.end(true, false, true);
            b.start(true);
        }
        b.end(true, false, true);
        assert_eq!(b.start(true), MAX_APPEND_BYTES, "never above the maximum");
    }
}
