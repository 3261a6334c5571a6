//! The types that cross the Raft boundary: what a log entry carries and what applying it returns.
//!
//! A replicated write transaction is a *logical* record: the page size, the database size in pages
//! after the commit, and the final image of every page the transaction wrote. WAL frame numbers,
//! salts and checksums are deliberately absent: every node writes its own WAL with its own salts
//! and checksum chain (they differ between nodes and between WAL generations), so only page images
//! are comparable across nodes.
//!
//! Invariant (the *base rule*): a transaction is built on top of exactly one database state, the one
//! left by the transaction entry with index `base_index` (0 = the genesis state). Every node applies
//! an entry only if the last transaction it applied has index `base_index`; otherwise the entry is
//! *stale* and skipped. The decision depends only on the log, so every node takes the same one.
//! This is what makes page-level replication safe when a leader's earlier proposal timed out but
//! was committed later: the later proposal, built without it, is skipped everywhere instead of
//! overwriting half of its pages.

use serde::{Deserialize, Serialize};
use std::io::Cursor;

/// Largest page SQLite supports.
pub const MAX_PAGE_SIZE: u32 = 65536;

/// One committed write transaction, as captured on the leader at the WAL commit sync.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Node that captured the transaction.
    pub origin: u64,
    /// Unique per origin process: lets the origin recognise its own proposal when it is applied.
    pub txn_id: u64,
    /// Index of the transaction entry this one was built on (see the base rule above).
    pub base_index: u64,
    pub page_size: u32,
    /// Database size in pages after the commit (the commit frame's "nTruncate").
    pub db_size: u32,
    /// Page numbers, ascending, each at most `db_size`.
    pub pgnos: Vec<u32>,
    /// `pgnos.len() * page_size` bytes: the page images, in `pgnos` order.
    #[serde(with = "serde_bytes")]
    pub pages: Vec<u8>,
}

impl Txn {
    /// Checks the shape promises above; a decoded entry that fails them is rejected, never applied.
    pub fn validate(&self) -> Result<(), String> {
        let ps = self.page_size;
        if !(512..=MAX_PAGE_SIZE).contains(&ps) || !ps.is_power_of_two() {
            return Err(format!("bad page size {ps}"));
        }
        if self.db_size == 0 {
            return Err("database size 0".into());
        }
        if self.pages.len() as u64 != self.pgnos.len() as u64 * ps as u64 {
            return Err("page data length does not match page count".into());
        }
        let mut prev = 0u32;
        for &p in &self.pgnos {
            if p == 0 || p <= prev || p > self.db_size {
                return Err(format!("bad page number {p}"));
            }
            prev = p;
        }
        Ok(())
    }

    pub fn page(&self, i: usize) -> &[u8] {
        let ps = self.page_size as usize;
        &self.pages[i * ps..(i + 1) * ps]
    }
}

impl std::fmt::Debug for Txn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Txn")
            .field("origin", &self.origin)
            .field("txn_id", &self.txn_id)
            .field("base_index", &self.base_index)
            .field("page_size", &self.page_size)
            .field("db_size", &self.db_size)
            .field("pages", &self.pgnos.len())
            .finish()
    }
}

/// The application payload of a log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Txn(Txn),
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Txn(t) => write!(f, "txn {} from node {} ({} pages)", t.txn_id, t.origin, t.pgnos.len()),
        }
    }
}

/// What applying an entry did. Identical on every node for the same entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Response {
    /// Membership and blank entries.
    #[default]
    None,
    /// The transaction is part of the database state from this index on.
    Applied { index: u64 },
    /// The transaction was built on another state than the current one (base rule) and was skipped.
    Stale {
        index: u64,
        base_index: u64,
        last_txn_index: u64,
    },
}

openraft::declare_raft_types!(
    /// openraft's type configuration for one replicated database.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
