//! Restart reconciliation: make the database files agree with the Raft log before anyone reads.
//!
//! The Raft log is the source of truth (DESIGN §4). What may be in the `-wal` file after a crash:
//! frames of transactions that were committed and published (good), frames of a leader transaction
//! that was waiting for its quorum (must never be shown: SQLite's recovery *would* resurrect them,
//! their salts and checksums being valid), and a torn tail. So, with no SQLite connection open, the
//! node's data directory locked, and other processes' readers locked out (`ReaderLock`):
//!
//! 1. Scan the WAL as recovery would. Find the newest applied-state record whose salts, commit
//!    frame and checksum match a valid commit frame. Cut the WAL right after that frame (and drop
//!    the records after it). No match: delete the WAL; the database file holds the marker's state.
//! 2. Delete `-shm`, so the first reader rebuilds the wal-index from the WAL we left.
//! 3. Replay committed entries after that point, appending frames to the WAL with this node's
//!    salts and checksum chain, and recording each. "Committed" = the persisted commit index, or
//!    every durable entry when this node is the only voter (an entry of a one-voter cluster is
//!    committed the moment it is durable), and at least up to the newest durable record (a record
//!    is written only once its entry is committed; this bound is made durable as `replay-floor`
//!    before records are trimmed). The WAL is never fsynced, so after a power loss the database
//!    file may hold pages of transactions whose frames are gone; each of them has a durable
//!    record (raft/applied.rs), so this replay rewrites every such page. Entries are full page
//!    images: replay is idempotent.
//!
//! Never: replay past the known commit index (a follower's uncommitted tail may be truncated by a
//! new leader), or keep WAL frames that no record vouches for.

use crate::failpoint;
use crate::raft::applied::{AppliedStore, Loaded, Marker, Record};
use crate::raft::log_store::LogStore;
use crate::raft::types::{Assembled, LogId, NodeId, Request};
use crate::wal::frames::{self, WalHeader, WAL_HDR};
use openraft::{BasicNode, EntryPayload, StoredMembership};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Entries read from the log per batch during replay (bounds memory).
const REPLAY_BATCH: u64 = 64;

pub struct Reconciled {
    /// The last entry replayed or found applied, of any kind (openraft's applied log id).
    pub applied: Option<LogId>,
    pub last_txn: u64,
    /// The log id up to which the database files hold the state, with `last_txn`: the last
    /// complete transaction (or the snapshot restored). Never a blank or membership entry after
    /// it, nor a part of a transaction still being staged: a snapshot is labelled with this pair,
    /// and the log is purged up to its label.
    pub published: Option<LogId>,
    /// Parts of a split transaction replayed but not yet complete (its last part is not committed).
    pub assembler: crate::raft::types::Assembler,
    pub membership: StoredMembership<NodeId, BasicNode>,
    pub replayed: u64,
}

pub fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

pub fn random_salt() -> [u8; 8] {
    let mut s = [0u8; 8];
    if let Ok(f) = File::open("/dev/urandom") {
        let _ = f.read_exact_at(&mut s, 0);
    }
    if s == [0u8; 8] {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(1);
        s.copy_from_slice(&(t as u64 ^ std::process::id() as u64).to_le_bytes());
    }
    s
}

/// Keeps other processes' SQLite connections out of the database while reconciliation rewrites
/// its WAL: the write lock SQLite's EXCLUSIVE lock takes on the SHARED range of the database
/// file. Every SQLite reader first takes a read lock there, so a `sqlite3 -readonly` opening the
/// database meanwhile gets SQLITE_BUSY (or waits, with a busy timeout) instead of recovering the
/// WAL before it is cut and showing a transaction Raft never committed.
///
/// It is an open-file-description lock (F_OFD_SETLK): SQLite's own POSIX locks in other processes
/// conflict with it, but unlike a POSIX lock it is not dropped when this process closes some
/// other descriptor of the file (the start path opens and closes the database file several
/// times). It would conflict with this process's own SQLite locks too: it is released before any
/// connection of this process reads the database, and is never taken while one may hold a lock.
pub struct ReaderLock {
    /// The database file, and after a restore the file renamed over it too: the replaced one
    /// stays locked until the end, so a reader that opened the old path before the rename (or
    /// waits on its lock) cannot get in between and recover the WAL about to be deleted.
    files: Vec<File>,
}

/// SQLite's lock bytes (os_unix.c): a reader holds a read lock on one byte of this range.
const SHARED_FIRST: i64 = 0x4000_0000 + 2;
const SHARED_SIZE: i64 = 510;

impl ReaderLock {
    /// Takes the lock on `db`; Err(None) when a process holds SQLite locks on it (it has the
    /// database open), Err(Some) on an I/O error.
    pub fn take(db: &Path) -> Result<ReaderLock, Option<io::Error>> {
        let file = OpenOptions::new().read(true).write(true).open(db).map_err(Some)?;
        match Self::ofd(&file, libc::F_WRLCK) {
            Ok(()) => Ok(ReaderLock { files: vec![file] }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Err(None),
            Err(e) => Err(Some(e)),
        }
    }

    /// The database file is about to be replaced by `new` (renamed over it): lock `new` first,
    /// so no reader gets in between; the old file stays locked too.
    pub fn move_to(&mut self, new: &Path) -> io::Result<()> {
        let file = OpenOptions::new().read(true).write(true).open(new)?;
        Self::ofd(&file, libc::F_WRLCK)?;
        self.files.push(file);
        Ok(())
    }

    fn ofd(f: &File, kind: i32) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: F_OFD_SETLK on a descriptor we own, with a zero-initialised struct flock
        // (OFD locks require l_pid == 0).
        let rc = unsafe {
            let mut fl: libc::flock = std::mem::zeroed();
            fl.l_type = kind as i16;
            fl.l_whence = libc::SEEK_SET as i16;
            fl.l_start = SHARED_FIRST;
            fl.l_len = SHARED_SIZE;
            libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Drop for ReaderLock {
    fn drop(&mut self) {
        for f in &self.files {
            let _ = Self::ofd(f, libc::F_UNLCK);
        }
    }
}

/// Appends transactions to a WAL file directly (used only while no connection has it open).
pub struct WalAppender {
    file: File,
    hdr: Option<WalHeader>,
    next_frame: u64,
    running: (u32, u32),
    buf: Vec<u8>,
}

impl WalAppender {
    /// Continue after `commit_frame` (whose checksum is `cksum`) in an existing WAL, or start a new
    /// WAL at the first append when `existing` is None.
    pub fn open(path: &Path, existing: Option<(WalHeader, u64, (u32, u32))>) -> io::Result<WalAppender> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let (hdr, next_frame, running) = match existing {
            Some((h, f, ck)) => (Some(h), f + 1, ck),
            None => {
                file.set_len(0)?;
                (None, 1, (0, 0))
            }
        };
        Ok(WalAppender {
            file,
            hdr,
            next_frame,
            running,
            buf: Vec::new(),
        })
    }

    /// Appends a complete transaction, streaming its earlier parts from `log`; returns its commit
    /// frame, the WAL's salts and the checksum after it.
    pub fn append(&mut self, txn: &Assembled, log: &LogStore) -> io::Result<(u64, [u8; 8], (u32, u32))> {
        let hdr = match self.hdr {
            Some(h) => h,
            None => {
                let h = WalHeader::new(txn.page_size(), 0, random_salt());
                self.file.write_all_at(&h.encode(), 0)?;
                self.file.sync_data()?;
                self.running = h.cksum;
                self.hdr = Some(h);
                h
            }
        };
        if hdr.page_size != txn.page_size() {
            return Err(io::Error::other(format!(
                "page size {} of a log entry differs from the WAL's {}",
                txn.page_size(),
                hdr.page_size
            )));
        }
        let db_size = txn.db_size();
        let (start, start_running) = (self.next_frame, self.running);
        let written = txn.for_each_page(
            |lo, hi| log.entries_sync(lo, hi),
            |pg, image, last| {
                let commit = if last { db_size } else { 0 };
                self.running = frames::encode_frame(&hdr, self.running, pg, commit, image, &mut self.buf);
                self.file
                    .write_all_at(&self.buf, hdr.frame_offset(self.next_frame))
                    .map_err(|e| e.to_string())?;
                self.next_frame += 1;
                Ok(())
            },
        );
        if let Err(e) = written {
            // Nothing after the last commit frame counts; go on from there next time.
            (self.next_frame, self.running) = (start, start_running);
            return Err(io::Error::other(e));
        }
        Ok((self.next_frame - 1, hdr.salt, self.running))
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

fn scan_file(path: &Path) -> io::Result<Option<(WalHeader, Vec<frames::CommitPoint>)>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(frames::scan(|off, buf| f.read_exact_at(buf, off).is_ok()))
}

fn remove_if_exists(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub fn is_sole_voter(m: &StoredMembership<NodeId, BasicNode>, me: NodeId) -> bool {
    let voters: Vec<NodeId> = m.membership().voter_ids().collect();
    voters == vec![me]
}

/// Runs steps 1–3 of the module comment. `initial` is the membership to assume when none was
/// ever applied (from the `peers` configuration).
#[allow(clippy::too_many_arguments)] // each is a separate piece of the node's state at start
pub fn reconcile(
    db_path: &Path,
    log: &LogStore,
    store: &AppliedStore,
    loaded: Loaded,
    me: NodeId,
    initial_voters: &[NodeId],
    data: &Path,
    readers_out: &mut ReaderLock,
) -> Result<Reconciled, String> {
    let wal_path = sibling(db_path, "-wal");
    let err = |what: &str, e: io::Error| format!("replicated: reconciling {}: {what}: {e}", db_path.display());
    let scanned = scan_file(&wal_path).map_err(|e| err("reading the WAL", e))?;

    // 1. The newest record that the WAL vouches for.
    let mut found: Option<(usize, Record, WalHeader)> = None;
    if let Some((hdr, commits)) = &scanned {
        for (i, r) in loaded.records.iter().enumerate().rev() {
            if r.salt == hdr.salt
                && commits
                    .iter()
                    .any(|c| c.frame == r.commit_frame && c.cksum == r.cksum && c.db_size == r.db_size)
            {
                found = Some((i, *r, *hdr));
                break;
            }
        }
    }
    // How far the replay must go at least (step 3): the newest record after the one kept, whose
    // pages a checkpoint may have copied into the database file although its frames are gone.
    // (Records up to the kept one describe frames the kept WAL holds.) Made durable before the
    // records are trimmed, with any floor an interrupted earlier reconciliation left, so that
    // an interrupted replay still knows it at the next start.
    let kept = found.as_ref().map_or(0, |(i, _, _)| i + 1);
    let floor = loaded.records[kept..]
        .iter()
        .map(|r| r.index)
        .max()
        .max(loaded.replay_floor);
    if let Some(f) = floor.filter(|f| Some(*f) != loaded.replay_floor) {
        store
            .set_replay_floor(f)
            .map_err(|e| err("recording the replay floor", e))?;
    }
    let (mut applied, mut last_txn, mut appender) = match found {
        Some((i, r, hdr)) => {
            let f = OpenOptions::new()
                .write(true)
                .open(&wal_path)
                .map_err(|e| err("opening the WAL", e))?;
            f.set_len(hdr.frame_offset(r.commit_frame + 1))
                .map_err(|e| err("cutting the WAL", e))?;
            f.sync_all().map_err(|e| err("syncing the WAL", e))?;
            store.keep_first(i + 1).map_err(|e| err("trimming records", e))?;
            let app = WalAppender::open(&wal_path, Some((hdr, r.commit_frame, r.cksum)))
                .map_err(|e| err("opening the WAL", e))?;
            (
                Some(openraft::LogId::new(
                    openraft::CommittedLeaderId::new(r.term, r.leader),
                    r.index,
                )),
                if r.last_txn == 0 { r.index } else { r.last_txn },
                Some(app),
            )
        }
        None => {
            remove_if_exists(&wal_path).map_err(|e| err("deleting the WAL", e))?;
            store.keep_first(0).map_err(|e| err("trimming records", e))?;
            let Marker { applied, last_txn } = loaded.marker;
            (applied, last_txn, None)
        }
    };
    failpoint::hit("reconcile.after_cut").map_err(|e| err("failpoint", e))?;
    // 2. No stale wal-index.
    remove_if_exists(&sibling(db_path, "-shm")).map_err(|e| err("deleting -shm", e))?;

    // The applied log id must carry the real leader id (openraft does not order log ids of one
    // term with different leaders; a wrong one kept the commit index from advancing until the
    // next election): take it from the log, or from the snapshot or purge point that ends there,
    // else the record's own (records of earlier versions, and markers, lack it).
    let newest_snapshot = crate::raft::snapshot::latest(data);
    if let Some(a) = applied {
        let snapshot_at = newest_snapshot.as_ref().and_then(|(_, s)| s.meta.last_log_id);
        let known = log
            .entries_sync(a.index, a.index)
            .ok()
            .and_then(|mut es| es.pop())
            .map(|e| e.log_id)
            .or(snapshot_at.filter(|l| l.index == a.index))
            .or(log.purged_sync().filter(|l| l.index == a.index));
        if let Some(l) = known {
            applied = Some(l);
        } else if a.leader_id.node_id == 0 {
            tracing::warn!(
                "replicated: the leader of applied entry {} (term {}) is unknown; the commit index may wait \
                 for the next election",
                a.index,
                a.leader_id.term
            );
        }
    }

    // What the files hold: the record or marker found names a published state.
    let mut published = applied;

    // 3. Replay committed entries.
    // A pristine node has no membership until the cluster gives it one: `peers` is only a
    // bootstrap hint, never applied state (a joining node would otherwise think itself a voter).
    let mut membership = loaded.membership.unwrap_or_default();
    // Replay from the entry after the last applied *transaction*: entries between it and `applied`
    // are non-transaction entries (harmless to replay) or parts of a transaction that was still
    // being assembled, which the assembler must see again from its first part.
    let mut start = if last_txn > 0 { last_txn + 1 } else { 0 };
    // The entries to replay were purged behind a snapshot, or a snapshot was installed (it is
    // durable) but the crash came before the database showed it: restore the database file from
    // the newest local snapshot (nothing has it open now) and replay after it.
    let purged_hole = log.purged_sync().map(|p| p.index).filter(|p| start <= *p);
    let snapshot_newer = newest_snapshot
        .as_ref()
        .and_then(|(_, s)| s.meta.last_log_id)
        .is_some_and(|l| applied.is_none_or(|a| l.index > a.index));
    if purged_hole.is_some() || snapshot_newer {
        let p = log.purged_sync().map(|p| p.index).unwrap_or(0);
        let Some((image, stored)) = newest_snapshot else {
            return Err(format!(
                "replicated: reconciling {}: the log is purged up to {p} and there is no local snapshot; \
                 wipe this node's data directory and database so that it receives a snapshot",
                db_path.display()
            ));
        };
        crate::raft::snapshot::restore_db_file(&image, db_path, |tmp| readers_out.move_to(tmp))
            .map_err(|e| err("restoring the snapshot", e))?;
        remove_if_exists(&wal_path).map_err(|e| err("deleting the WAL", e))?;
        remove_if_exists(&sibling(db_path, "-shm")).map_err(|e| err("deleting -shm", e))?;
        store.keep_first(0).map_err(|e| err("trimming records", e))?;
        appender = None;
        applied = stored.meta.last_log_id;
        published = applied;
        last_txn = stored.last_txn;
        membership = stored.meta.last_membership.clone();
        store
            .save_membership(&membership)
            .map_err(|e| err("saving membership", e))?;
        store
            .set_marker(Marker { applied, last_txn })
            .map_err(|e| err("recording the checkpoint marker", e))?;
        start = last_txn + 1;
        // Earlier versions labelled a snapshot with the last entry applied, which may be a blank
        // or membership entry after its last transaction: the snapshot holds those already.
        match applied {
            Some(s) if start <= p && s.index >= p => start = s.index + 1,
            _ => {}
        }
        if purged_hole.is_some() && start <= p {
            return Err(format!(
                "replicated: reconciling {}: the snapshot ends at transaction {last_txn} but the log is purged up to {p}",
                db_path.display()
            ));
        }
        tracing::warn!(
            "replicated: restored {} from snapshot {}",
            db_path.display(),
            stored.meta.snapshot_id
        );
    }
    let mut assembler = crate::raft::types::Assembler::default();
    let last = log.last_log_id().map(|l| l.index);
    let mut committed = log.read_committed_sync().map(|c| c.index);
    // The effective membership for "sole voter" is the newest one in the log.
    let mut newest = if membership.log_id().is_some() {
        membership.clone()
    } else {
        let nodes: std::collections::BTreeSet<NodeId> = initial_voters.iter().copied().collect();
        StoredMembership::new(None, openraft::Membership::new(vec![nodes], None))
    };
    if let Some(last) = last {
        let from = start.max(log.purged_sync().map(|p| p.index + 1).unwrap_or(0));
        let mut i = from;
        while i <= last {
            let hi = (i + REPLAY_BATCH - 1).min(last);
            for e in log.entries_sync(i, hi).map_err(|e| err("reading the log", e))? {
                if let EntryPayload::Membership(m) = &e.payload {
                    newest = StoredMembership::new(Some(e.log_id), m.clone());
                }
            }
            i = hi + 1;
        }
        if is_sole_voter(&newest, me) {
            committed = Some(last);
        }
    }
    // A record proves its entry committed; the newest durable one may lie beyond a persisted
    // commit index that lagged (see step 3 above).
    committed = committed.max(floor);
    let mut replayed = 0u64;
    if let Some(end) = committed {
        let mut i = start;
        while i <= end {
            let hi = (i + REPLAY_BATCH - 1).min(end);
            let entries = log.entries_sync(i, hi).map_err(|e| err("reading the log", e))?;
            if entries.first().map(|e| e.log_id.index) != Some(i) && i <= end {
                return Err(format!(
                    "replicated: reconciling {}: log entry {i} is missing (purged or lost); this node needs a snapshot",
                    db_path.display()
                ));
            }
            for e in entries {
                failpoint::hit("reconcile.replay_entry").map_err(|e| err("failpoint", e))?;
                match &e.payload {
                    EntryPayload::Blank => {}
                    EntryPayload::Membership(m) => {
                        membership = StoredMembership::new(Some(e.log_id), m.clone());
                        store
                            .save_membership(&membership)
                            .map_err(|e| err("saving membership", e))?;
                    }
                    EntryPayload::Normal(Request::Txn(part)) => {
                        let fed = assembler.feed(last_txn, e.log_id.index, part.clone());
                        if let crate::raft::types::Fed::Complete(t) = fed {
                            if appender.is_none() {
                                appender =
                                    Some(WalAppender::open(&wal_path, None).map_err(|e| err("creating the WAL", e))?);
                            }
                            if let Some(app) = appender.as_mut() {
                                let (frame, salt, cksum) =
                                    app.append(&t, log).map_err(|e| err("appending to the WAL", e))?;
                                store
                                    .append(&Record {
                                        index: e.log_id.index,
                                        term: e.log_id.leader_id.term,
                                        leader: e.log_id.leader_id.node_id,
                                        salt,
                                        commit_frame: frame,
                                        cksum,
                                        db_size: t.db_size(),
                                        last_txn: e.log_id.index,
                                    })
                                    .map_err(|e| err("recording", e))?;
                            }
                            last_txn = e.log_id.index;
                            published = Some(e.log_id);
                            replayed += 1;
                        }
                    }
                }
                applied = Some(e.log_id);
            }
            i = hi + 1;
        }
    }
    if let Some(app) = &appender {
        app.sync().map_err(|e| err("syncing the WAL", e))?;
    }
    store.sync().map_err(|e| err("syncing records", e))?;
    failpoint::hit("reconcile.after_replay").map_err(|e| err("failpoint", e))?;
    let _ = WAL_HDR;
    Ok(Reconciled {
        applied,
        last_txn,
        published,
        membership,
        assembler,
        replayed,
    })
}
