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
//! from 0; the last one has `last` set; page numbers ascend across parts. The `Assembler` applies
//! the base rule at part 0, checks that each following part continues the sequence, and at the last
//! part yields an `Assembled`: the last part plus the log index of part 0. That is where the
//! transaction is applied (and where its index becomes `last_txn`). An interrupted sequence (the
//! leader failed over mid-transaction) is discarded by the next part 0 — identically on every node.
//!
//! Memory: the Assembler keeps no pages, only where the sequence started. Whoever applies an
//! `Assembled` streams its earlier parts back from the Raft log (`for_each_page`), one batch of
//! `READ_BATCH` entries at a time, so applying a transaction of any size holds a few parts at once.
//! The parts are in the log for as long as that takes: they are committed (never truncated), and
//! the log is purged only behind a snapshot, which ends at the last *complete* transaction, before
//! part 0 (state_machine.rs, `published`).

use serde::{Deserialize, Serialize};

/// Largest page SQLite supports.
pub const MAX_PAGE_SIZE: u32 = 65536;
/// Pages per log entry: a transaction is split into parts of at most this many bytes of pages.
pub const PART_BYTES: usize = 512 << 10;
/// Entries read from the log per batch when an assembled transaction is applied (at most
/// `READ_BATCH * PART_BYTES` of pages in memory).
pub const READ_BATCH: u64 = 4;

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

    pub fn clone_header(&self) -> Txn {
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
    /// A part of a transaction that continues in later entries.
    Staged,
    /// The transaction's last part: apply the whole transaction now.
    Complete(Assembled),
}

/// A complete transaction: its last part, in hand, and where its earlier parts are in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assembled {
    /// Log index of part 0 (= `last_index` for a transaction in one entry).
    pub first_index: u64,
    /// Log index of the last part.
    pub last_index: u64,
    pub last: Txn,
}

impl Assembled {
    pub fn page_size(&self) -> u32 {
        self.last.page_size
    }

    pub fn db_size(&self) -> u32 {
        self.last.db_size
    }

    /// Calls `page(pgno, image, is_last_page)` for every page of the transaction in order, reading
    /// the earlier parts back with `read(lo, hi)` (the log entries lo..=hi). Each part read back is
    /// checked to be the one the Assembler accepted at that place; anything else is an error (the
    /// log changed under a committed sequence: never expected, never applied).
    pub fn for_each_page(
        &self,
        mut read: impl FnMut(u64, u64) -> std::io::Result<Vec<Entry>>,
        mut page: impl FnMut(u32, &[u8], bool) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut each = |t: &Txn, last: bool| -> Result<(), String> {
            let n = t.pgnos.len();
            for i in 0..n {
                page(t.pgnos[i], t.page(i), last && i + 1 == n)?;
            }
            Ok(())
        };
        let mut want = 0u32;
        let mut prev_pgno = 0u32;
        let mut i = self.first_index;
        while i < self.last_index {
            let hi = (i + READ_BATCH - 1).min(self.last_index - 1);
            let entries = read(i, hi).map_err(|e| format!("reading parts {i}..={hi} of a transaction: {e}"))?;
            if entries.len() as u64 != hi - i + 1 || entries.first().map(|e| e.log_id.index) != Some(i) {
                return Err(format!(
                    "log entries {i}..={hi} (parts of the transaction ending at {}) are missing",
                    self.last_index
                ));
            }
            for e in &entries {
                let openraft::EntryPayload::Normal(Request::Txn(t)) = &e.payload else {
                    continue; // blank and membership entries may sit between parts
                };
                let ok = t.origin == self.last.origin
                    && t.txn_id == self.last.txn_id
                    && t.part == want
                    && !t.last
                    && t.page_size == self.last.page_size
                    && t.db_size == self.last.db_size
                    && t.validate().is_ok()
                    && t.pgnos.first().is_some_and(|p| *p > prev_pgno);
                if !ok {
                    return Err(format!(
                        "log entry {} is not part {want} of the transaction ending at {}",
                        e.log_id.index, self.last_index
                    ));
                }
                prev_pgno = t.pgnos.last().copied().unwrap_or(prev_pgno);
                want += 1;
                each(t, false)?;
            }
            i = hi + 1;
        }
        if want != self.last.part {
            return Err(format!(
                "found {want} parts before the last part ({}) of the transaction ending at {}",
                self.last.part, self.last_index
            ));
        }
        each(&self.last, true)
    }
}

/// Where a split transaction's sequence stands (no pages: see the module comment).
#[derive(Debug, Clone)]
struct Staging {
    origin: u64,
    txn_id: u64,
    base_index: u64,
    page_size: u32,
    db_size: u32,
    part: u32,
    last_pgno: u32,
    first_index: u64,
}

/// Follows split transactions and applies the base rule (see the module comment). Pure: the
/// state machine and restart replay feed it the same entries and take the same decisions.
#[derive(Default, Debug, Clone)]
pub struct Assembler {
    staging: Option<Staging>,
}

impl Assembler {
    /// Feeds the transaction entry `t`, at log index `index`, given the index of the last applied
    /// transaction.
    pub fn feed(&mut self, last_txn: u64, index: u64, t: Txn) -> Fed {
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
                return Fed::Complete(Assembled {
                    first_index: index,
                    last_index: index,
                    last: t,
                });
            }
            self.staging = Some(Staging {
                origin: t.origin,
                txn_id: t.txn_id,
                base_index: t.base_index,
                page_size: t.page_size,
                db_size: t.db_size,
                part: 0,
                last_pgno: t.pgnos.last().copied().unwrap_or(0),
                first_index: index,
            });
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
                    && s.first_index < index
                    && t.pgnos.first().is_some_and(|p| *p > s.last_pgno) =>
            {
                if t.last {
                    Fed::Complete(Assembled {
                        first_index: s.first_index,
                        last_index: index,
                        last: t,
                    })
                } else {
                    s.part = t.part;
                    s.last_pgno = t.pgnos.last().copied().unwrap_or(s.last_pgno);
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

    fn entry(index: u64, payload: openraft::EntryPayload<TypeConfig>) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload,
        }
    }

    /// Feeds `parts` as log entries from index 10 on (with a blank entry after the first, as a
    /// re-election mid-transaction leaves) and reassembles what completes by reading them back.
    fn feed_and_read(whole: &Txn) -> (Vec<Entry>, Option<Txn>) {
        let mut log = Vec::new();
        let mut a = Assembler::default();
        let mut out = None;
        for (k, p) in whole.clone().into_parts().into_iter().enumerate() {
            if k == 1 {
                log.push(entry(10 + log.len() as u64, openraft::EntryPayload::Blank));
            }
            let index = 10 + log.len() as u64;
            log.push(entry(index, openraft::EntryPayload::Normal(Request::Txn(p.clone()))));
            match a.feed(whole.base_index, index, p) {
                Fed::Complete(asm) => {
                    let mut t = Txn {
                        part: 0,
                        last: true,
                        ..asm.last.clone_header()
                    };
                    let read = |lo: u64, hi: u64| Ok(log[(lo - 10) as usize..=(hi - 10) as usize].to_vec());
                    asm.for_each_page(read, |pg, img, _| {
                        t.pgnos.push(pg);
                        t.pages.extend_from_slice(img);
                        Ok(())
                    })
                    .expect("reads back");
                    out = Some(t);
                }
                Fed::Staged => {}
                Fed::Stale => panic!("stale"),
            }
        }
        assert!(!a.is_staging());
        (log, out)
    }

    #[test]
    fn split_and_reassemble() {
        let pages: Vec<u32> = (1..=3000).collect();
        let whole = txn(7, 5, &pages);
        let parts = whole.clone().into_parts();
        assert!(parts.len() > 1 && parts.iter().all(|p| p.pages.len() <= PART_BYTES));
        assert!(parts.last().is_some_and(|p| p.last) && parts.iter().filter(|p| p.last).count() == 1);
        let (_, out) = feed_and_read(&whole);
        assert_eq!(out, Some(whole));
        let one = txn(8, 5, &[3, 4]);
        assert_eq!(feed_and_read(&one).1, Some(one));
    }

    #[test]
    fn reading_back_refuses_a_changed_log() {
        let whole = txn(7, 5, &(1..=3000).collect::<Vec<_>>());
        let (mut log, _) = feed_and_read(&whole);
        let last = log.len() as u64 + 9;
        let Some(openraft::EntryPayload::Normal(Request::Txn(t))) = log.last().map(|e| e.payload.clone()) else {
            panic!("no last part");
        };
        let asm = Assembled {
            first_index: 10,
            last_index: last,
            last: t,
        };
        let count = |log: &Vec<Entry>| {
            let read = |lo: u64, hi: u64| Ok(log[(lo - 10) as usize..=(hi - 10) as usize].to_vec());
            asm.for_each_page(read, |_, _, _| Ok(()))
        };
        assert!(count(&log).is_ok());
        // Another transaction's part where a part should be.
        let mut bad = log.clone();
        if let openraft::EntryPayload::Normal(Request::Txn(t)) = &mut bad[2].payload {
            t.txn_id = 99;
        }
        assert!(count(&bad).unwrap_err().contains("is not part 1"));
        // A part missing (a blank entry in its place).
        bad = log.clone();
        bad[2].payload = openraft::EntryPayload::Blank;
        assert!(count(&bad).is_err());
        // Entries missing from the log.
        log.truncate(2);
        let read = |lo: u64, hi: u64| {
            Ok(log
                .iter()
                .filter(|e| (lo..=hi).contains(&e.log_id.index))
                .cloned()
                .collect())
        };
        assert!(asm
            .for_each_page(read, |_, _, _| Ok(()))
            .unwrap_err()
            .contains("missing"));
    }

    #[test]
    fn base_rule_and_broken_sequences() {
        let mut a = Assembler::default();
        assert_eq!(a.feed(4, 1, txn(1, 5, &[1])), Fed::Stale, "built on another state");
        let parts = txn(2, 5, &(1..=2000).collect::<Vec<_>>()).into_parts();
        assert_eq!(a.feed(5, 2, parts[0].clone()), Fed::Staged);
        // A new transaction starts before the old one finished (fail-over): the old is dropped.
        assert!(matches!(a.feed(5, 3, txn(3, 5, &[9])), Fed::Complete(_)));
        assert_eq!(
            a.feed(5, 4, parts[1].clone()),
            Fed::Stale,
            "a stray part is never applied"
        );
        // Out of order / duplicated parts are stale.
        assert_eq!(a.feed(5, 5, parts[0].clone()), Fed::Staged);
        assert_eq!(
            a.feed(5, 6, parts[0].clone()),
            Fed::Staged,
            "part 0 again restarts the sequence"
        );
        let mut p2 = parts[1].clone();
        p2.part = 5;
        assert_eq!(a.feed(5, 7, p2), Fed::Stale);
        // Pages must ascend across parts.
        assert_eq!(a.feed(5, 8, parts[0].clone()), Fed::Staged);
        let mut p1 = parts[1].clone();
        p1.pgnos[0] = 1;
        assert_eq!(a.feed(5, 9, p1), Fed::Stale);
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
