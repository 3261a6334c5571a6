//! The Raft network seen by openraft, carried by the QUIC transport (`net/`).
//!
//! Every Raft RPC is one request on its own QUIC stream: the payload is the postcard encoding of
//! openraft's request, the answer the encoding of `Result<response, RaftError>`. The service side
//! (`RaftService`) decodes, hands the request to the local `Raft`, and encodes the answer; a
//! malformed request is refused with a remote error, never a panic.
//!
//! Bounds: an AppendEntries request is kept under `MAX_APPEND_BYTES` by sending a prefix of its
//! entries and reporting `PartialSuccess` up to the last one sent (openraft then sends the rest); a
//! single entry is at most one transaction (`MAX_TXN_BYTES` of pages), under the transport's 96 MiB
//! message bound. Timeouts: openraft's per-RPC hard TTL. An unreachable, refused or timed-out peer is
//! reported as `Unreachable`, so openraft backs off instead of spinning.
//!
//! Besides Raft's own RPCs the service answers `READ_INDEX` (a follower's `replicated_sync()`
//! asks the leader for a linearizable read point) and `APPLIED` (a follower tells the leader how
//! far it has applied, for `ack=apply`).

use crate::net::{Handler, NetError, Transport};
use crate::raft::types::{NodeId, TypeConfig};
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

/// Bytes of snapshot image per SNAPSHOT_CHUNK message.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest snapshot image a node accepts (bounds the receiving file).
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 40;

#[derive(serde::Serialize, serde::Deserialize)]
struct Chunk {
    id: String,
    offset: u64,
    total: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Done {
    id: String,
    total: u64,
    vote: openraft::Vote<NodeId>,
    meta: openraft::SnapshotMeta<NodeId, BasicNode>,
}

/// Largest AppendEntries payload sent in one RPC when it holds more than one entry. openraft 0.9
/// gives every AppendEntries `heartbeat_interval` to complete (then backs off for 500 ms), so a
/// batch must be small enough for a follower to receive, write and fsync in that time.
pub const MAX_APPEND_BYTES: usize = 4 << 20;

fn to_rpc_error<E: std::error::Error>(e: NetError) -> RPCError<NodeId, BasicNode, E> {
    match e {
        NetError::Remote(msg) | NetError::Protocol(msg) => {
            RPCError::Network(NetworkError::new(&std::io::Error::other(msg)))
        }
        other => RPCError::Unreachable(Unreachable::new(&std::io::Error::other(other.to_string()))),
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_allocvec(v).map_err(|e| format!("encode: {e}"))
}

fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("malformed message: {e}"))
}

/// Creates one client per peer; all share the node's transport.
pub struct QuicNetwork {
    pub transport: Transport,
}

pub struct QuicClient {
    transport: Transport,
    target: NodeId,
    addr: String,
}

impl RaftNetworkFactory<TypeConfig> for QuicNetwork {
    type Network = QuicClient;
    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Self::Network {
        QuicClient {
            transport: self.transport.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

impl QuicClient {
    async fn call<Req: serde::Serialize, Resp: serde::de::DeserializeOwned, E: std::error::Error>(
        &self,
        kind: u8,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>> {
        let body = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        let out = self
            .transport
            .call(self.target, &self.addr, kind, &body, timeout)
            .await
            .map_err(to_rpc_error)?;
        decode(&out).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))
    }
}

impl RaftNetwork<TypeConfig> for QuicClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        // Keep the message bounded: send a prefix and report partial success for it.
        let mut truncated = false;
        while rpc.entries.len() > 1 && postcard::experimental::serialized_size(&rpc).unwrap_or(0) > MAX_APPEND_BYTES {
            let keep = rpc.entries.len() / 2;
            rpc.entries.truncate(keep);
            truncated = true;
        }
        let last = rpc.entries.last().map(|e| e.log_id);
        let r: Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>> =
            self.call(APPEND, &rpc, option.hard_ttl()).await?;
        match r {
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
        use std::os::unix::fs::FileExt;
        let net = |e: String| StreamingError::Network(NetworkError::new(&std::io::Error::other(e)));
        let unreachable = |e: NetError| match e {
            NetError::Remote(m) | NetError::Protocol(m) => {
                StreamingError::Network(NetworkError::new(&std::io::Error::other(m)))
            }
            other => StreamingError::Unreachable(Unreachable::new(&std::io::Error::other(other.to_string()))),
        };
        let id = snapshot.meta.snapshot_id.clone();
        let file =
            std::fs::File::open(&snapshot.snapshot.path).map_err(|e| net(format!("opening the snapshot: {e}")))?;
        let total = file.metadata().map_err(|e| net(e.to_string()))?.len();
        tokio::pin!(cancel);
        let mut offset = 0u64;
        while offset < total {
            let n = (SNAPSHOT_CHUNK_BYTES as u64).min(total - offset) as usize;
            let mut data = vec![0u8; n];
            file.read_exact_at(&mut data, offset)
                .map_err(|e| net(format!("reading the snapshot: {e}")))?;
            let body = encode(&Chunk {
                id: id.clone(),
                offset,
                total,
                data,
            })
            .map_err(net)?;
            tokio::select! {
                biased;
                closed = &mut cancel => return Err(StreamingError::Closed(closed)),
                r = self.transport.call(self.target, &self.addr, SNAPSHOT_CHUNK, &body, Duration::from_secs(30)) => {
                    r.map_err(unreachable)?;
                }
            }
            offset += n as u64;
        }
        let body = encode(&Done {
            id,
            total,
            vote,
            meta: snapshot.meta.clone(),
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
    pub applied_notify: tokio::sync::Notify,
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
            applied_notify: tokio::sync::Notify::new(),
        }))
    }

    async fn serve(self, from: NodeId, kind: u8, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let Some(raft) = self.raft.get().cloned() else {
            return Err("node is starting".into());
        };
        match kind {
            APPEND => encode(
                &raft
                    .append_entries(decode::<AppendEntriesRequest<TypeConfig>>(&body)?)
                    .await,
            ),
            VOTE => encode(&raft.vote(decode::<VoteRequest<NodeId>>(&body)?).await),
            READ_INDEX => {
                let r = raft.get_read_log_id().await.map_err(|e| e.to_string())?;
                encode(&r.0.map(|l| l.index).unwrap_or(0))
            }
            APPLIED => {
                let idx: u64 = decode(&body)?;
                let mut m = self.applied.lock();
                let e = m.entry(from).or_insert(0);
                *e = (*e).max(idx);
                drop(m);
                self.applied_notify.notify_waiters();
                encode(&())
            }
            SNAPSHOT_CHUNK => {
                use std::os::unix::fs::FileExt;
                let c: Chunk = decode(&body)?;
                let data = self.data.get().ok_or("node is starting")?;
                if c.total > MAX_SNAPSHOT_BYTES || c.offset.checked_add(c.data.len() as u64).is_none_or(|e| e > c.total)
                {
                    return Err(format!(
                        "snapshot chunk out of bounds (offset {}, total {})",
                        c.offset, c.total
                    ));
                }
                let path = crate::raft::snapshot::incoming(data, &c.id).map_err(|e| e.to_string())?;
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(c.offset == 0)
                    .open(&path)
                    .map_err(|e| format!("receiving a snapshot: {e}"))?;
                f.write_all_at(&c.data, c.offset)
                    .map_err(|e| format!("receiving a snapshot: {e}"))?;
                encode(&())
            }
            SNAPSHOT_DONE => {
                let d: Done = decode(&body)?;
                let data = self.data.get().ok_or("node is starting")?;
                let path = crate::raft::snapshot::incoming(data, &d.id).map_err(|e| e.to_string())?;
                let len = std::fs::metadata(&path)
                    .map(|m| m.len())
                    .map_err(|e| format!("snapshot {}: {e}", d.id))?;
                if len != d.total {
                    return Err(format!("snapshot {} incomplete: {len} of {} bytes", d.id, d.total));
                }
                let snap = openraft::Snapshot {
                    meta: d.meta,
                    snapshot: Box::new(crate::raft::snapshot::SnapshotFile { path }),
                };
                let r = raft
                    .install_full_snapshot(d.vote, snap)
                    .await
                    .map_err(|e| e.to_string());
                encode(&r)
            }
            CAMPAIGN => {
                // The leader hands over (replicated_transfer_leader): start an election now.
                raft.trigger().elect().await.map_err(|e| e.to_string())?;
                encode(&())
            }
            k => Err(format!("unknown request kind {k}")),
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
