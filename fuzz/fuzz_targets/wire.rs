//! Fuzz target `wire`: the input is the bytes of one QUIC stream as a peer may send them (seeds are
//! real requests, responses and hellos, written by examples/gen_seeds.rs).
//!
//! Drives the transport's framing (`net::codec`: request and response headers and bodies, the
//! hello) and, for a well-framed request, the service's decoding of its body
//! (`raft::network::decode_rpc_body`: postcard into openraft's AppendEntries / Vote requests,
//! snapshot chunks and installs, applied reports); the transactions an AppendEntries carries go
//! through the apply loop's `Assembler`. A well-framed response body is decoded as each answer the
//! client expects. Every malformation must be an error: a panic or a large allocation is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;
use openraft::error::RaftError;
use openraft::raft::{AppendEntriesResponse, SnapshotResponse, VoteResponse};
use replicated::net::codec::{self, MAX_MESSAGE};
use replicated::raft::network::{decode, decode_rpc_body, RpcBody};
use replicated::raft::types::NodeId;

/// A small limit as well as the default one, so that the bound itself is exercised.
const SMALL_LIMIT: usize = 64;

fn serve(kind: u8, body: &[u8]) {
    match decode_rpc_body(kind, body) {
        Ok(RpcBody::Append(req)) => replicated_fuzz::apply_entries(&req.entries),
        Ok(RpcBody::SnapshotChunk(c)) => {
            if c.check_bounds().is_ok() {
                assert!(c.offset + c.data.len() as u64 <= c.total);
            }
        }
        Ok(RpcBody::SnapshotDone(d)) => {
            let _ = replicated::raft::snapshot::last_txn_of(&d.meta);
        }
        Ok(RpcBody::Vote(_) | RpcBody::ReadIndex | RpcBody::Applied(_) | RpcBody::Campaign | RpcBody::PreVote(_)) => {}
        Err(e) => assert!(!e.is_empty()),
    }
}

fn answers(body: &[u8]) {
    let _ = decode::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(body);
    let _ = decode::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(body);
    let _ = decode::<Result<SnapshotResponse<NodeId>, String>>(body);
    let _ = decode::<u64>(body);
    let _ = decode::<()>(body);
}

fuzz_target!(|data: &[u8]| {
    if let Some(h) = data.first_chunk::<{ codec::HEADER_LEN }>() {
        for limit in [MAX_MESSAGE, SMALL_LIMIT, 0] {
            let _ = codec::parse_request_header(h, limit);
            let _ = codec::parse_response_header(h, limit);
        }
    }
    for limit in [MAX_MESSAGE, SMALL_LIMIT] {
        if let Ok((kind, body)) = codec::decode_request(data, limit) {
            assert!(body.len() <= limit);
            // Framing is exact: a decoded request re-encodes to the same bytes.
            assert_eq!(codec::encode_request(kind, body, limit).as_deref(), Ok(data));
            if limit == MAX_MESSAGE {
                serve(kind, body);
            }
        }
        match codec::decode_response(data, limit) {
            Ok(Ok(body)) => {
                assert_eq!(codec::encode_response(Ok(&body), limit).as_deref(), Ok(data));
                if limit == MAX_MESSAGE {
                    answers(&body);
                }
            }
            Ok(Err(msg)) => assert!(msg.len() <= 3 * limit),
            Err(_) => {}
        }
    }
    for secret in [true, false] {
        if let Ok(hello) = codec::decode_hello(data, secret) {
            assert_eq!(codec::encode_hello(&hello), data, "hello does not round-trip");
            assert!(hello.node_id > 0 && hello.proof.is_some() == secret);
        }
    }
    // A body without its frame, as the handler receives it after the transport read it.
    if let Some((&kind, body)) = data.split_first() {
        serve(kind, body);
        answers(body);
    }
});
