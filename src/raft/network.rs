//! The Raft network seen by openraft. This build has no transport: a node can only form a
//! one-member cluster, and any RPC to a peer reports the peer unreachable (openraft backs off).
//! The QUIC transport plugs in behind the same `RaftNetworkFactory` trait.

use crate::raft::types::{NodeId, TypeConfig};
use openraft::error::{RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use openraft::BasicNode;

pub struct Isolated;
pub struct IsolatedClient(NodeId);

fn unreachable<E: std::error::Error>(to: NodeId) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
        "node {to}: no transport in this build (one-node clusters only)"
    ))))
}

impl RaftNetworkFactory<TypeConfig> for Isolated {
    type Network = IsolatedClient;
    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        IsolatedClient(target)
    }
}

impl RaftNetwork<TypeConfig> for IsolatedClient {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(unreachable(self.0))
    }

    async fn full_snapshot(
        &mut self,
        _vote: openraft::Vote<NodeId>,
        _snapshot: openraft::Snapshot<TypeConfig>,
        _cancel: impl std::future::Future<Output = openraft::error::ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<
        openraft::raft::SnapshotResponse<NodeId>,
        openraft::error::StreamingError<TypeConfig, openraft::error::Fatal<NodeId>>,
    > {
        Err(openraft::error::StreamingError::Unreachable(Unreachable::new(
            &std::io::Error::other(format!("node {}: no transport in this build", self.0)),
        )))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(unreachable(self.0))
    }
}
