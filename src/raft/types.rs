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
//!
//! Large transactions are split into *parts*, each its own log entry of at most `PART_BYTES` of
//! pages (openraft 0.9 gives an AppendEntries one heartbeat interval to reach a follower and be
//! fsync'd, so entries must stay small). Parts carry the same `txn_id` and `base_index`, numbered
//! from 0; the last one has `last` set. The `Assembler` applies the base rule at part 0, collects
//! consecutive parts, and yields the whole transaction at its last part, which is where it is
//! applied (and where its index becomes `last_txn`). An interrupted sequence (the leader failed
//! over mid-transaction) is discarded by the next part 0 — identically on every node.

use serde::{Deserialize, Serialize};

/// Largest page SQLite supports.
pub const MAX_PAGE_SIZE: u32 = 65536;
/// Pages per log entry: a transaction is split into parts of at most this many bytes of pages.
pub const PART_BYTES: usize = 512 << 10;
/// Largest transaction a node stages while its parts arrive (the capture limit is lower).
pub const MAX_STAGED_BYTES: usize = 80 << 20;

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
    /// Part number (0-based) of a transaction split over several entries.
    pub part: u32,
    /// This is the transaction's last part (a transaction in one entry: part 0, last).
    pub last: bool,
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
        if self.pgnos.is_empty() {
            return Err("no pages".into());
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

    /// Splits a whole transaction into parts of at most `PART_BYTES` of pages (at least one page).
    pub fn into_parts(self) -> Vec<Txn> {
        let ps = self.page_size as usize;
        let per = (PART_BYTES / ps.max(1)).max(1);
        if self.pgnos.len() <= per {
            // The common case: one entry, no copy.
            return vec![Txn {
                part: 0,
                last: true,
                ..self
            }];
        }
        let n = self.pgnos.len().div_ceil(per).max(1);
        let mut out = Vec::with_capacity(n);
        for (i, pgnos) in self.pgnos.chunks(per).enumerate() {
            let from = i * per * ps;
            out.push(Txn {
                pgnos: pgnos.to_vec(),
                pages: self.pages[from..from + pgnos.len() * ps].to_vec(),
                part: i as u32,
                last: i + 1 == n,
                ..Txn {
                    pgnos: Vec::new(),
                    pages: Vec::new(),
                    ..self.clone_header()
                }
            });
        }
        out
    }

    fn clone_header(&self) -> Txn {
        Txn {
            origin: self.origin,
            txn_id: self.txn_id,
            base_index: self.base_index,
            page_size: self.page_size,
            db_size: self.db_size,
            pgnos: Vec::new(),
            pages: Vec::new(),
            part: 0,
            last: true,
        }
    }
}

/// What feeding one transaction entry to the `Assembler` gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Not applicable: built on another state, malformed, or out of sequence.
    Stale,
    /// A part kept for later.
    Staged,
    /// The whole transaction, to apply now.
    Complete(Txn),
}

/// Reassembles split transactions and applies the base rule (see the module comment). Pure: the
/// state machine and restart replay feed it the same entries and take the same decisions.
#[derive(Default, Debug, Clone)]
pub struct Assembler {
    staging: Option<Txn>,
}

impl Assembler {
    pub fn feed(&mut self, last_txn: u64, t: Txn) -> Fed {
        if t.validate().is_err() {
            self.staging = None;
            return Fed::Stale;
        }
        if t.part == 0 {
            self.staging = None;
            if t.base_index != last_txn {
                return Fed::Stale;
            }
            if t.last {
                return Fed::Complete(t);
            }
            self.staging = Some(t);
            return Fed::Staged;
        }
        match self.staging.take() {
            Some(mut s)
                if s.txn_id == t.txn_id
                    && s.origin == t.origin
                    && s.part + 1 == t.part
                    && s.base_index == t.base_index
                    && s.page_size == t.page_size
                    && s.db_size == t.db_size
                    && t.pgnos.first() > s.pgnos.last()
                    && s.pages.len() + t.pages.len() <= MAX_STAGED_BYTES =>
            {
                s.pgnos.extend_from_slice(&t.pgnos);
                s.pages.extend_from_slice(&t.pages);
                s.part = t.part;
                if t.last {
                    s.part = 0;
                    s.last = true;
                    Fed::Complete(s)
                } else {
                    self.staging = Some(s);
                    Fed::Staged
                }
            }
            _ => Fed::Stale,
        }
    }

    pub fn is_staging(&self) -> bool {
        self.staging.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(id: u64, base: u64, pages: &[u32]) -> Txn {
        Txn {
            origin: 1,
            txn_id: id,
            base_index: base,
            page_size: 512,
            db_size: 10_000,
            pgnos: pages.to_vec(),
            pages: pages.iter().flat_map(|p| vec![*p as u8; 512]).collect(),
            part: 0,
            last: true,
        }
    }

    #[test]
    fn split_and_reassemble() {
        let pages: Vec<u32> = (1..=3000).collect();
        let whole = txn(7, 5, &pages);
        let parts = whole.clone().into_parts();
        assert!(parts.len() > 1 && parts.iter().all(|p| p.pages.len() <= PART_BYTES));
        assert!(parts.last().is_some_and(|p| p.last) && parts.iter().filter(|p| p.last).count() == 1);
        let mut a = Assembler::default();
        let mut out = None;
        for p in parts {
            match a.feed(5, p) {
                Fed::Complete(t) => out = Some(t),
                Fed::Staged => {}
                Fed::Stale => panic!("stale"),
            }
        }
        assert_eq!(out, Some(whole));
        assert!(!a.is_staging());
    }

    #[test]
    fn base_rule_and_broken_sequences() {
        let mut a = Assembler::default();
        assert_eq!(a.feed(4, txn(1, 5, &[1])), Fed::Stale, "built on another state");
        let parts = txn(2, 5, &(1..=2000).collect::<Vec<_>>()).into_parts();
        assert_eq!(a.feed(5, parts[0].clone()), Fed::Staged);
        // A new transaction starts before the old one finished (fail-over): the old is dropped.
        assert!(matches!(a.feed(5, txn(3, 5, &[9])), Fed::Complete(_)));
        assert_eq!(a.feed(5, parts[1].clone()), Fed::Stale, "a stray part is never applied");
        // Out of order / duplicated parts are stale.
        assert_eq!(a.feed(5, parts[0].clone()), Fed::Staged);
        assert_eq!(
            a.feed(5, parts[0].clone()),
            Fed::Staged,
            "part 0 again restarts the sequence"
        );
        let mut p2 = parts[1].clone();
        p2.part = 5;
        assert_eq!(a.feed(5, p2), Fed::Stale);
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
    /// A part of a split transaction, kept until its last part.
    Staged { index: u64 },
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
        SnapshotData = crate::raft::snapshot::SnapshotFile,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
