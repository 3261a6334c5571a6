//! Snapshots: a consistent copy of the database at an applied log index, as one plain file.
//!
//! ```text
//! <data>/snapshots/snap-<index>-<term>.db     the database image at that index: page i of the
//!                                             file is page i of the database, nPage pages
//! <data>/snapshots/snap-<index>-<term>.json   openraft's SnapshotMeta, plus `last_txn`
//! <data>/snapshots/incoming-<id>              a snapshot being received
//! <data>/snapshots/installing-<id>-<random>   a received snapshot being installed
//! ```
//! Receiving: chunks come in order, each written where the previous one ended (`write_chunk`
//! refuses a gap, so a file removed under a live transfer fails that transfer, which the leader
//! starts again, instead of installing a hole). A transfer that the sender gave up (leader change,
//! timeout) leaves its file: the start of the next transfer removes files no chunk has touched for
//! STALE_INCOMING (`remove_stale_incoming`), and a failed install removes its own.
//! Installing: SNAPSHOT_DONE first renames the received file to a name of its own
//! (`claim_incoming`), which no chunk and no clean-up ever touches. A sender that gave up waiting
//! for the install (its replication restarted, or a new leader holds a snapshot with the same
//! id) starts a transfer of the same id again, and its first chunk truncates `incoming-<id>`: that
//! must never be the file being installed (a truncated image cut at a page boundary reads as a
//! smaller, valid-looking database). The install also checks the image's length against the
//! size its header records (`apply.rs`).
//! Building: on the apply thread, between applies and under WAL_WRITE_LOCK, note what is
//! published (log id, last transaction) and open a read transaction on a connection of its own;
//! release the lock. The copy then runs on a thread of its own while applies go on (they only add
//! frames after the pinned ones). The read transaction pins what it saw:
//! - holding READ_LOCK(i), i > 0, it keeps the WAL from restarting and checkpoints from copying
//!   frames past its mark (<= mxFrame). The image is the database file overlaid with the newest
//!   WAL frame of each page up to `mxFrame`, exactly what a full checkpoint would produce. A
//!   checkpoint may meanwhile write the database file, but only frames at or below the mark, and
//!   only pages the overlay takes from the WAL anyway.
//! - holding READ_LOCK(0), SQLite saw every frame backfilled: the database file alone is the image,
//!   and that lock keeps checkpoints from writing it. The WAL may restart meanwhile, so nothing is
//!   taken from it.
//!
//! When: by default a node snapshots once the log after its last snapshot holds 64 MiB or the
//! database's size, whichever is larger (node.rs, SnapshotPolicy).
//!
//! Installing goes through the applier as one (large) transaction, so readers keep their
//! snapshots. Only the newest snapshot is kept; openraft purges the log up to it, and restart can
//! restore the database from it when the entries it needs were purged (reconcile.rs).

use crate::raft::types::{LogId, NodeId};
use crate::wal::frames::{be32, WalHeader, FRAME_HDR, WAL_HDR};
use openraft::{BasicNode, SnapshotMeta};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// openraft's snapshot data: a file on disk (never the whole database in memory).
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredMeta {
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    /// Index of the last transaction in the image (the base rule's starting point).
    pub last_txn: u64,
}

pub fn dir(data: &Path) -> PathBuf {
    data.join("snapshots")
}

fn stem(log_id: &LogId) -> String {
    format!("snap-{:020}-{}", log_id.index, log_id.leader_id.term)
}

/// `snapshot_id` carries `last_txn`, so a receiver learns it with the meta.
pub fn snapshot_id(log_id: &LogId, last_txn: u64) -> String {
    format!("{}-{}-{}", log_id.index, log_id.leader_id.term, last_txn)
}

pub fn last_txn_of(meta: &SnapshotMeta<NodeId, BasicNode>) -> Option<u64> {
    meta.snapshot_id.rsplit('-').next()?.parse().ok()
}

/// Held by `commit` from its first rename until the directory is synced.
static COMMITS: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// The newest snapshot whose commit is complete and durable: what the log may be purged behind.
/// (`latest` may see one whose renames are not synced yet.) None while a commit is under way: the
/// caller, openraft's purge on the runtime thread that carries every database's traffic, must
/// not wait for its fsyncs; it asks again.
pub fn latest_durable(data: &Path) -> Option<Option<(PathBuf, StoredMeta)>> {
    let _settled = COMMITS.try_lock()?;
    Some(latest(data))
}

fn sync_dir(d: &Path) -> io::Result<()> {
    File::open(d)?.sync_all()
}

/// Makes `tmp` (a complete image) the current snapshot with `meta`; removes older ones. A build
/// and an install may finish in either order (openraft 0.9 runs builds beside the state machine):
/// when a newer snapshot is already there, `tmp` is removed instead and the newer one stays.
///
/// A snapshot counts only once its directory entries are durable: the log may be purged behind
/// it (`latest_durable`), and after a power loss an un-synced rename would be gone.
pub fn commit(data: &Path, tmp: &Path, stored: &StoredMeta) -> io::Result<PathBuf> {
    // The image's own fsync may take seconds: before the lock, which `latest_durable` waits for.
    File::open(tmp)?.sync_all()?;
    let _one_at_a_time = COMMITS.lock();
    let d = dir(data);
    std::fs::create_dir_all(&d)?;
    let log_id = stored
        .meta
        .last_log_id
        .ok_or_else(|| io::Error::other("snapshot without a log id"))?;
    if let Some(newer) = latest(data)
        .and_then(|(_, s)| s.meta.last_log_id)
        .filter(|l| l.index > log_id.index)
    {
        let _ = std::fs::remove_file(tmp);
        return Err(io::Error::other(format!(
            "snapshot at {} not kept: the one at {} is newer",
            log_id.index, newer.index
        )));
    }
    let base = d.join(stem(&log_id));
    let db = base.with_extension("db");
    std::fs::rename(tmp, &db)?;
    let json = serde_json::to_vec(stored).map_err(io::Error::other)?;
    let mtmp = base.with_extension("json.tmp");
    {
        let mut f = File::create(&mtmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
    }
    std::fs::rename(&mtmp, base.with_extension("json"))?;
    sync_dir(&d)?;
    drop(_one_at_a_time);
    // Older snapshots are no longer needed (a later commit removes only snapshots older than its
    // own, so this never removes one newer than ours).
    for e in std::fs::read_dir(&d)?.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let older = name
            .strip_prefix("snap-")
            .and_then(|r| r.get(..20))
            .and_then(|i| i.parse::<u64>().ok())
            .is_some_and(|i| i < log_id.index);
        if older {
            let _ = std::fs::remove_file(&p);
        }
    }
    Ok(db)
}

/// Removes what a crash left behind in `snapshots/`: partial copies (`building-*`), partial
/// transfers (`incoming-*`), installs that did not finish (`installing-*`) and unrenamed metadata
/// (`*.json.tmp`). Called at start, before anything builds or receives a snapshot. Returns how
/// many files it removed.
pub fn remove_leftovers(data: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir(data)) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let partial = ["building-", "incoming-", "installing-"]
            .iter()
            .any(|p| name.starts_with(p))
            || name.ends_with(".json.tmp");
        if partial && std::fs::remove_file(&p).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The newest complete snapshot: (image path, meta).
pub fn latest(data: &Path) -> Option<(PathBuf, StoredMeta)> {
    let d = dir(data);
    let mut best: Option<(PathBuf, StoredMeta)> = None;
    for e in std::fs::read_dir(&d).ok()?.flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let Ok(b) = std::fs::read(&p) else { continue };
        let Ok(m) = serde_json::from_slice::<StoredMeta>(&b) else {
            continue;
        };
        let db = p.with_extension("db");
        if !db.exists() {
            continue;
        }
        let idx = m.meta.last_log_id.map(|l| l.index);
        if best
            .as_ref()
            .is_none_or(|(_, b)| b.meta.last_log_id.map(|l| l.index) < idx)
        {
            best = Some((db, m));
        }
    }
    best
}

/// A path for a snapshot being received (`id` is sanitised: it comes from the network).
/// A received snapshot file no chunk has written for this long belongs to a transfer its sender
/// gave up: each chunk is answered within 30 s or the sender abandons the whole transfer.
pub const STALE_INCOMING: std::time::Duration = std::time::Duration::from_secs(120);

/// Writes one received chunk at `offset` of `path`: offset 0 starts (or restarts) the file; any
/// other offset must be where the file ends or inside it (a resent chunk), never past its end.
pub fn write_chunk(path: &Path, offset: u64, data: &[u8]) -> io::Result<()> {
    let f = OpenOptions::new()
        .create(offset == 0)
        .truncate(offset == 0)
        .write(true)
        .open(path)?;
    let len = f.metadata()?.len();
    if offset > len {
        return Err(io::Error::other(format!(
            "a chunk at {offset} but only {len} bytes received: restart the transfer"
        )));
    }
    f.write_all_at(data, offset)
}

/// Removes the received snapshot files other than `keep` that no chunk has written for `idle`.
/// Returns the ids removed.
pub fn remove_stale_incoming(data: &Path, keep: &Path, idle: std::time::Duration) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir(data)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let Some(id) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("incoming-"))
        else {
            continue;
        };
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= idle);
        if p != keep && stale && std::fs::remove_file(&p).is_ok() {
            removed.push(id.to_string());
        }
    }
    removed
}

/// Takes the completely received snapshot `incoming` for installing: renames it to a name of its
/// own, so a transfer of the same id starting again cannot write it (see the module comment).
pub fn claim_incoming(incoming: &Path) -> io::Result<PathBuf> {
    let name = incoming
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("incoming-"))
        .ok_or_else(|| io::Error::other(format!("not a received snapshot: {}", incoming.display())))?;
    let unique = u64::from_le_bytes(crate::reconcile::random_salt());
    let to = incoming.with_file_name(format!("installing-{name}-{unique:016x}"));
    std::fs::rename(incoming, &to)?;
    Ok(to)
}

pub fn incoming(data: &Path, id: &str) -> io::Result<PathBuf> {
    if id.is_empty() || id.len() > 80 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(io::Error::other(format!("bad snapshot id {id:?}")));
    }
    let d = dir(data);
    std::fs::create_dir_all(&d)?;
    Ok(d.join(format!("incoming-{id}")))
}

/// Writes the database image as of WAL frame `mx_frame` (database size `n_page` pages): the
/// database file overlaid with the newest frame of each page in frames 1..=mx_frame.
pub fn copy_image(db: &Path, wal: &Path, mx_frame: u32, n_page: u32, page_size: u32, out: &Path) -> io::Result<()> {
    if n_page == 0 || !(512..=65536).contains(&page_size) {
        return Err(io::Error::other(format!(
            "snapshot: no image of {n_page} pages of {page_size} bytes"
        )));
    }
    let ps = page_size as usize;
    let mut newest: HashMap<u32, u64> = HashMap::new();
    let walf = if mx_frame > 0 { Some(File::open(wal)?) } else { None };
    let mut hdr = None;
    if let Some(w) = &walf {
        let mut hb = [0u8; WAL_HDR];
        w.read_exact_at(&mut hb, 0)?;
        let h = WalHeader::parse(&hb).ok_or_else(|| io::Error::other("snapshot: invalid WAL header"))?;
        if h.page_size != page_size {
            return Err(io::Error::other("snapshot: WAL page size differs from the database's"));
        }
        let mut fh = [0u8; FRAME_HDR];
        for n in 1..=mx_frame as u64 {
            w.read_exact_at(&mut fh, h.frame_offset(n))?;
            newest.insert(be32(&fh, 0), n);
        }
        hdr = Some(h);
    }
    let dbf = File::open(db)?;
    let db_len = dbf.metadata()?.len();
    let mut o = OpenOptions::new().create(true).write(true).truncate(true).open(out)?;
    let mut buf = vec![0u8; ps];
    let mut unsynced = 0usize;
    for pg in 1..=n_page {
        match (newest.get(&pg), &walf, &hdr) {
            (Some(&n), Some(w), Some(h)) => w.read_exact_at(&mut buf, h.frame_offset(n) + FRAME_HDR as u64)?,
            _ => {
                let off = (pg as u64 - 1) * ps as u64;
                if off + ps as u64 > db_len {
                    return Err(io::Error::other(format!(
                        "snapshot: page {pg} is in neither the database nor the WAL"
                    )));
                }
                dbf.read_exact_at(&mut buf, off)?;
            }
        }
        o.write_all(&buf)?;
        unsynced += ps;
        if unsynced >= SYNC_EVERY {
            // Written back as it goes, and at most half the time: a database's worth of dirty
            // pages, or a disk kept busy without a pause, holds up this node's log fsyncs (each
            // must wait for the writes queued before it) until its commits time out.
            let t = std::time::Instant::now();
            o.sync_data()?;
            std::thread::sleep(t.elapsed().min(std::time::Duration::from_millis(100)));
            unsynced = 0;
        }
    }
    o.sync_all()
}

/// How much of a snapshot image is written between two syncs.
const SYNC_EVERY: usize = 1 << 20;

/// Restart path: replace the database file with a snapshot image (no connection has it open).
/// `before_rename` runs on the complete copy just before it becomes the database file.
pub fn restore_db_file(image: &Path, db: &Path, before_rename: impl FnOnce(&Path) -> io::Result<()>) -> io::Result<()> {
    let tmp = crate::reconcile::sibling(db, "-restore");
    std::fs::copy(image, &tmp)?;
    File::open(&tmp)?.sync_all()?;
    before_rename(&tmp)?;
    std::fs::rename(&tmp, db)?;
    if let Some(d) = db.parent() {
        let d = if d.as_os_str().is_empty() { Path::new(".") } else { d };
        sync_dir(d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Makes `p` look untouched for an hour.
    fn age(p: &Path) {
        let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
    }

    #[test]
    fn chunks_are_written_in_order_and_stale_transfers_removed() {
        let d = tempfile::tempdir().unwrap();
        let live = incoming(d.path(), "live").unwrap();
        write_chunk(&live, 0, b"abcd").unwrap();
        write_chunk(&live, 4, b"efgh").unwrap();
        write_chunk(&live, 2, b"CD").unwrap(); // a resent chunk
        assert_eq!(std::fs::read(&live).unwrap(), b"abCDefgh");
        assert!(write_chunk(&live, 12, b"ijkl").is_err(), "a gap");
        assert_eq!(std::fs::read(&live).unwrap().len(), 8);
        write_chunk(&live, 0, b"new").unwrap();
        assert_eq!(std::fs::read(&live).unwrap(), b"new", "offset 0 restarts the file");
        let gone = incoming(d.path(), "gone").unwrap();
        assert!(
            write_chunk(&gone, 4, b"x").is_err() && !gone.exists(),
            "removed under a live transfer"
        );

        let old = incoming(d.path(), "old").unwrap();
        write_chunk(&old, 0, b"old").unwrap();
        age(&old);
        let fresh = incoming(d.path(), "fresh").unwrap();
        write_chunk(&fresh, 0, b"fresh").unwrap();
        let keep = incoming(d.path(), "keep").unwrap();
        write_chunk(&keep, 0, b"k").unwrap();
        age(&keep);
        assert_eq!(
            remove_stale_incoming(d.path(), &keep, STALE_INCOMING),
            vec!["old".to_string()]
        );
        assert!(!old.exists() && fresh.exists() && keep.exists() && live.exists());
    }

    #[test]
    fn a_claimed_snapshot_is_out_of_reach_of_a_transfer_starting_again() {
        let d = tempfile::tempdir().unwrap();
        let received = incoming(d.path(), "9-1-9").unwrap();
        write_chunk(&received, 0, b"abcd").unwrap();
        write_chunk(&received, 4, b"efgh").unwrap();
        let installing = claim_incoming(&received).unwrap();
        assert!(!received.exists());
        // The sender starts the same snapshot again while the install runs, and a transfer of
        // another id cleans up long after this one's last chunk.
        write_chunk(&incoming(d.path(), "9-1-9").unwrap(), 0, b"A").unwrap();
        age(&installing);
        let other = incoming(d.path(), "other").unwrap();
        write_chunk(&other, 0, b"x").unwrap();
        assert!(remove_stale_incoming(d.path(), &other, STALE_INCOMING).is_empty());
        assert_eq!(std::fs::read(&installing).unwrap(), b"abcdefgh");
        let again = claim_incoming(&received).unwrap();
        assert_ne!(again, installing, "each claim has a name of its own");
        assert!(claim_incoming(&installing).is_err(), "only received files are claimed");
    }

    #[test]
    fn leftovers_are_removed_and_snapshots_kept() {
        let d = tempfile::tempdir().unwrap();
        let sd = dir(d.path());
        std::fs::create_dir_all(&sd).unwrap();
        let names = [
            "building-12",
            "incoming-local-7",
            "installing-9-1-9-00000000000000ff",
            "snap-00000000000000000009-1.json.tmp",
        ];
        for n in names
            .iter()
            .chain(&["snap-00000000000000000009-1.db", "snap-00000000000000000009-1.json"])
        {
            std::fs::write(sd.join(n), b"x").unwrap();
        }
        assert_eq!(remove_leftovers(d.path()), 4);
        let mut left: Vec<String> = std::fs::read_dir(&sd)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["snap-00000000000000000009-1.db", "snap-00000000000000000009-1.json"]
        );
        assert_eq!(remove_leftovers(&d.path().join("absent")), 0);
    }

    #[test]
    fn a_snapshot_older_than_the_current_one_is_not_kept() {
        let d = tempfile::tempdir().unwrap();
        let stored = |index: u64| StoredMeta {
            meta: SnapshotMeta {
                last_log_id: Some(openraft::LogId::new(openraft::CommittedLeaderId::new(2, 1), index)),
                last_membership: Default::default(),
                snapshot_id: format!("{index}-2-{index}"),
            },
            last_txn: index,
        };
        let image = |name: &str| {
            let p = d.path().join(name);
            std::fs::write(&p, name.as_bytes()).unwrap();
            p
        };
        commit(d.path(), &image("a"), &stored(10)).unwrap();
        commit(d.path(), &image("b"), &stored(20)).unwrap();
        // A build of 15 that finishes after the install of 20: 20 stays the current snapshot.
        let late = image("c");
        assert!(commit(d.path(), &late, &stored(15)).is_err());
        assert!(!late.exists(), "the late image is removed");
        let (path, meta) = latest(d.path()).unwrap();
        assert_eq!(meta.last_txn, 20);
        assert_eq!(std::fs::read(path).unwrap(), b"b");
        let names: Vec<String> = std::fs::read_dir(dir(d.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "only the snapshot at 20: {names:?}");
        assert!(names.iter().all(|n| n.starts_with("snap-00000000000000000020-2.")));
    }
}
