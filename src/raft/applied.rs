//! The applied-state record: what of the Raft log is in this node's database files, and where.
//!
//! Files in the node's data directory:
//! ```text
//! applied       append-only 64-byte records, one per transaction entry applied in the current WAL
//!               generation: magic "RPLR", raft index u64, term u64, WAL salts [8], commit frame
//!               number u64, commit frame checksum 2×u32, db size u32, last transaction index
//!               u64 (equal to the raft index except for an installed snapshot), the leader
//!               node id of the entry's log id u32 (0: unknown, as written by earlier versions,
//!               or an id above u32::MAX), crc32 u32 (little-endian, crc over the first 60 bytes).
//! checkpointed  the marker M: the last transaction index (and the applied log id at that time)
//!               whose state is entirely in the database file (JSON), replaced atomically.
//! membership    the last applied membership (JSON), replaced atomically.
//! ```
//! Why records are *not* fsynced per commit: a record is written only after its entry is
//! committed in Raft (on the leader after the quorum ack, on followers at apply), so a record that
//! survives proves the commit; a record lost to power failure only makes reconciliation start from
//! an earlier point and replay more (entries are full page images: replay is idempotent).
//!
//! Records are made durable before a checkpoint copies frames into the database file (`sync`,
//! at CKPT_START). The WAL itself is never fsynced (vfs/mod.rs, x_sync: the log holds every
//! frame), so after a power loss the database file may hold pages of transactions whose frames
//! are gone from the WAL: every one of them has a durable record, and reconciliation replays up
//! to the newest durable record at least (reconcile.rs), which rewrites each of those pages.
//! Hence:
//! - a record that could not be written (a full disk) is kept in memory (at most
//!   MAX_UNWRITTEN) and written again by the next `append` or `sync`; `sync` fails, and the
//!   checkpoint is refused, while any is unwritten: its transaction must not reach the database
//!   file uncovered. Past the bound, or after a failed fsync (whose error Linux reports once: a
//!   later fsync may succeed without the pages), `sync` fails until the generation ends;
//! - reconciliation trims the records it cannot use, but first makes the replay bound they gave
//!   durable (`replay-floor`, below): an interrupted replay must not forget how far to go.
//!
//! ```text
//! replay-floor  the index up to which reconciliation must replay (JSON), replaced atomically
//! ```
//!
//! The marker advances only when a WAL generation ends (header rewritten, WAL truncated to zero or
//! deleted): at that point SQLite has backfilled every frame and synced the database file. It is fsynced before the
//! records of the old generation are discarded. Bound: the records file holds one generation's
//! transactions (64 bytes each) and is truncated at every marker advance.

use crate::raft::types::{LogId, NodeId};
use openraft::{BasicNode, StoredMembership};
use parking_lot::Mutex;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const RECORD_SIZE: usize = 64;
const MAGIC: &[u8; 4] = b"RPLR";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub index: u64,
    pub term: u64,
    /// The leader node id of the entry's log id (openraft orders log ids by term *and* leader):
    /// a restart names the applied entry exactly even when the log no longer holds it. 0: unknown.
    pub leader: NodeId,
    pub salt: [u8; 8],
    pub commit_frame: u64,
    pub cksum: (u32, u32),
    pub db_size: u32,
    /// Index of the last transaction in this state (a snapshot's may be below `index`).
    pub last_txn: u64,
}

impl Record {
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4..12].copy_from_slice(&self.index.to_le_bytes());
        b[12..20].copy_from_slice(&self.term.to_le_bytes());
        b[20..28].copy_from_slice(&self.salt);
        b[28..36].copy_from_slice(&self.commit_frame.to_le_bytes());
        b[36..40].copy_from_slice(&self.cksum.0.to_le_bytes());
        b[40..44].copy_from_slice(&self.cksum.1.to_le_bytes());
        b[44..48].copy_from_slice(&self.db_size.to_le_bytes());
        b[48..56].copy_from_slice(&self.last_txn.to_le_bytes());
        b[56..60].copy_from_slice(&u32::try_from(self.leader).unwrap_or(0).to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Record> {
        if b.len() != RECORD_SIZE || &b[0..4] != MAGIC {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        if crc32fast::hash(&b[..60]) != u32_at(60) {
            return None;
        }
        let mut salt = [0u8; 8];
        salt.copy_from_slice(&b[20..28]);
        Some(Record {
            index: u64_at(4),
            term: u64_at(12),
            leader: NodeId::from(u32_at(56)),
            salt,
            commit_frame: u64_at(28),
            cksum: (u32_at(36), u32_at(40)),
            db_size: u32_at(44),
            last_txn: u64_at(48),
        })
    }
}

/// The checkpoint marker M (stored as JSON, replaced atomically).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Marker {
    pub applied: Option<LogId>,
    pub last_txn: u64,
}

/// Records kept in memory after their write failed, at most (64 bytes each).
const MAX_UNWRITTEN: usize = 1 << 16;
const REPLAY_FLOOR: &str = "replay-floor";

/// What was on disk at open.
pub struct Loaded {
    pub records: Vec<Record>,
    /// The replay bound an earlier reconciliation made durable before it trimmed records.
    pub replay_floor: Option<u64>,
    pub marker: Marker,
    pub membership: Option<StoredMembership<NodeId, BasicNode>>,
}

pub struct AppliedStore {
    dir: PathBuf,
    records: Mutex<Records>,
}

struct Records {
    file: File,
    /// Length in whole records.
    len: u64,
    /// Records whose write failed, in order, to be written before any later one.
    unwritten: std::collections::VecDeque<Record>,
    /// A failed fsync, or more than MAX_UNWRITTEN unwritten: `sync` fails until `keep_first`.
    broken: bool,
}

impl Records {
    /// Writes the unwritten records in order; stops at the first failure (they stay queued).
    fn write_unwritten(&mut self) -> io::Result<()> {
        while let Some(r) = self.unwritten.front().copied() {
            crate::failpoint::hit("record.append")?;
            self.file.write_all_at(&r.encode(), self.len)?;
            self.len += RECORD_SIZE as u64;
            self.unwritten.pop_front();
        }
        Ok(())
    }
}

fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    File::open(dir)?.sync_all()
}

impl AppliedStore {
    pub fn open(dir: &Path) -> io::Result<(AppliedStore, Loaded)> {
        std::fs::create_dir_all(dir)?;
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("applied"))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        let mut records = Vec::new();
        for chunk in buf.chunks_exact(RECORD_SIZE) {
            match Record::decode(chunk) {
                Some(r) => records.push(r),
                None => break, // a torn tail: everything after it is unknown
            }
        }
        let len = (records.len() * RECORD_SIZE) as u64;
        if len != buf.len() as u64 {
            f.set_len(len)?;
        }
        let marker = match std::fs::read(dir.join("checkpointed")) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| io::Error::other(format!("checkpoint marker is corrupt: {e}")))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Marker::default(),
            Err(e) => return Err(e),
        };
        let replay_floor = match std::fs::read(dir.join(REPLAY_FLOOR)) {
            Ok(b) => Some(
                serde_json::from_slice(&b).map_err(|e| io::Error::other(format!("replay floor is corrupt: {e}")))?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let membership = match std::fs::read(dir.join("membership")) {
            Ok(b) => Some(
                serde_json::from_slice(&b).map_err(|e| io::Error::other(format!("membership file is corrupt: {e}")))?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok((
            AppliedStore {
                dir: dir.to_path_buf(),
                records: Mutex::new(Records {
                    file: f,
                    len,
                    unwritten: std::collections::VecDeque::new(),
                    broken: false,
                }),
            },
            Loaded {
                records,
                replay_floor,
                marker,
                membership,
            },
        ))
    }

    /// Appends a record (page cache only; see the module comment for why that is enough).
    pub fn append(&self, r: &Record) -> io::Result<()> {
        let mut g = self.records.lock();
        if g.unwritten.len() >= MAX_UNWRITTEN {
            g.broken = true;
            return Err(io::Error::other("too many applied-state records could not be written"));
        }
        g.unwritten.push_back(*r);
        g.write_unwritten()
    }

    /// Makes the replay bound `index` durable (reconcile.rs, before it trims records).
    pub fn set_replay_floor(&self, index: u64) -> io::Result<()> {
        write_atomic(
            &self.dir,
            REPLAY_FLOOR,
            &serde_json::to_vec(&index).map_err(io::Error::other)?,
        )
    }

    /// Keeps only the first `n` records (reconciliation cut the WAL behind the rest).
    pub fn keep_first(&self, n: usize) -> io::Result<()> {
        let mut g = self.records.lock();
        let len = (n * RECORD_SIZE) as u64;
        g.file.set_len(len)?;
        g.file.sync_data()?;
        g.len = len;
        // The records that failed belonged to the WAL behind this cut or to an ended generation.
        g.unwritten.clear();
        g.broken = false;
        Ok(())
    }

    /// Makes every record durable; fails while one of this generation could not be written.
    pub fn sync(&self) -> io::Result<()> {
        let mut g = self.records.lock();
        if g.broken {
            return Err(io::Error::other(
                "applied-state records of this WAL generation could not be made durable (restart the node)",
            ));
        }
        g.write_unwritten()?;
        g.file.sync_data().inspect_err(|_| g.broken = true)
    }

    /// Advances the marker (durably), then drops the records of the ended generation.
    pub fn set_marker(&self, m: Marker) -> io::Result<()> {
        let b = serde_json::to_vec(&m).map_err(io::Error::other)?;
        write_atomic(&self.dir, "checkpointed", &b)?;
        self.keep_first(0)
    }

    pub fn save_membership(&self, m: &StoredMembership<NodeId, BasicNode>) -> io::Result<()> {
        let b = serde_json::to_vec(m).map_err(io::Error::other)?;
        write_atomic(&self.dir, "membership", &b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u64) -> Record {
        Record {
            index: i,
            term: 2,
            leader: i % 3,
            salt: [i as u8; 8],
            commit_frame: i * 3,
            cksum: (7, 9),
            db_size: 5,
            last_txn: i,
        }
    }

    #[test]
    fn the_leader_id_is_kept_or_unknown_when_it_does_not_fit() {
        let r = Record { leader: 7, ..rec(1) };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        let big = Record {
            leader: NodeId::from(u32::MAX) + 1,
            ..rec(1)
        };
        assert_eq!(Record::decode(&big.encode()).map(|d| d.leader), Some(0));
    }

    #[test]
    fn records_survive_and_torn_tail_is_cut() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        {
            let (s, l) = AppliedStore::open(d.path()).unwrap_or_else(|e| panic!("{e}"));
            assert!(l.records.is_empty());
            for i in 1..=3 {
                s.append(&rec(i)).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        // Tear the last record.
        let p = d.path().join("applied");
        let mut b = std::fs::read(&p).unwrap_or_else(|e| panic!("{e}"));
        b[2 * RECORD_SIZE + 10] ^= 0xff;
        std::fs::write(&p, &b).unwrap_or_else(|e| panic!("{e}"));
        let (s, l) = AppliedStore::open(d.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.records, vec![rec(1), rec(2)]);
        let m = Marker {
            applied: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(4, 1), 12)),
            last_txn: 11,
        };
        s.set_marker(m).unwrap_or_else(|e| panic!("{e}"));
        let (_, l) = AppliedStore::open(d.path()).unwrap_or_else(|e| panic!("{e}"));
        assert!(l.records.is_empty());
        assert_eq!(l.marker.last_txn, 11);
        assert_eq!(l.marker.applied.map(|a| (a.index, a.leader_id.term)), Some((12, 4)));
    }

    #[test]
    fn corrupt_marker_is_an_error() {
        let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(d.path().join("checkpointed"), b"garbage").unwrap_or_else(|e| panic!("{e}"));
        assert!(AppliedStore::open(d.path()).is_err());
    }
}
