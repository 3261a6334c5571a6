//! Follower apply: appending a committed transaction to this node's WAL and publishing it through
//! the wal-index, exactly as SQLite's own writer does (notes §3.4; `walFrames`, `walIndexAppend`,
//! `walIndexWriteHdr`, `walRestartHdr` in SQLite's wal.c). Used on followers, and on a leader for
//! entries it did not capture itself (committed in an earlier term, or a proposal that timed out).
//!
//! ```text
//! wal-index (-shm), 32 KiB regions, host byte order. Region 0 starts with:
//!   0  header copy [0]   48  header copy [1]      (each: iVersion, unused, iChange, isInit u8,
//!                                                  bigEndCksum u8, szPage u16, mxFrame, nPage,
//!                                                  aFrameCksum[2], aSalt[2], aCksum[2])
//!   96 nBackfill  100 aReadMark[5]  120 lock bytes[8]  128 nBackfillAttempted  (136 bytes in all)
//! Every region then holds u32 aPgno[4096] (region 0: 4062 of them, after the 136-byte header)
//! and u16 aHash[8192] at byte 16384. Frame f lives in region (f+33)/4096; the hash of page P is
//! (P*383) & 8191 with linear probing; a slot holds the 1-based index of the frame in its region.
//! ```
//! Protocol, for one transaction:
//! 1. Take WAL_WRITE_LOCK through SQLite's lock layer: `xShmLock` on the main-file handle of a
//!    dedicated, idle connection (never fcntl locks of our own: POSIX locks do not conflict inside
//!    one process, and the unix VFS arbitrates in-process locks in memory).
//! 2. Read the header (copy [0], barrier, copy [1]; equal, initialised, checksum valid). If it is
//!    not, let SQLite recover it (a read on the applier connection) and start again. It must end
//!    where this node last published (`Database::check_wal_end`): frames after that were written
//!    by a process without the replicated VFS, and the apply fails (the node is poisoned). A
//!    snapshot image is exempt: it rewrites every page, so it replaces them (and clears the poison).
//! 3. If every frame is backfilled (nBackfill == mxFrame > 0) and READ_LOCK(1..4) can be taken,
//!    restart the WAL: salt-1 + 1, a new salt-2, mxFrame 0, publish, reset the checkpoint info.
//! 4. On an empty WAL write a new WAL header (not synced: see below).
//! 5. Write the frames after mxFrame with this node's salts and checksum chain; the last one
//!    carries the database size.
//! 6. Append the hash entries (clearing stale ones left by an abandoned writer, as SQLite does).
//! 7. Record where the transaction sits (applied-state record), then publish: header copy [1],
//!    full barrier, copy [0], with iChange + 1. That store is the visibility point: readers in this
//!    process and in others keep their snapshots, new readers see the transaction.
//! 8. Release WAL_WRITE_LOCK.
//!
//! The WAL is never synced, neither at commit nor before a checkpoint copies its frames (the Raft
//! log, already durable, rebuilds what a power loss takes: vfs/mod.rs x_sync, raft/applied.rs,
//! reconcile.rs); only an installed snapshot is, as its entries may be purged from the log.
//! Followers never auto-checkpoint (SQLite's WAL hook fires only for its own commits), so the
//! applier runs a PASSIVE checkpoint once the WAL holds CHECKPOINT_FRAMES frames; the next apply
//! then restarts the WAL (step 3).
//!
//! Must never: invalidate the header to force recovery (readers would stall in O(WAL) recovery
//! after every apply), write a frame for a transaction that is not committed in Raft, or apply on
//! top of a failed apply (after a failure the applier refuses everything until the node restarts,
//! and restart replays from the log).

use crate::ffi::cstr;
use crate::node::Database;
use crate::raft::applied::Record;
use crate::raft::log_store::LogStore;
use crate::raft::snapshot::{self, StoredMeta};
use crate::raft::types::{Assembled, LogId};
use crate::wal::frames::{self, checksum, WalHeader, WAL_HDR};
use libsqlite3_sys as ffi;
use parking_lot::Mutex;
use std::ffi::{c_void, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

const REGION: i32 = 32768;
const INDEX_HDR_SIZE: usize = 136;
const NPAGE: u32 = 4096;
const NPAGE_ONE: u32 = NPAGE - (INDEX_HDR_SIZE / 4) as u32;
const NSLOT: u32 = 8192;
const READMARK_NOT_USED: u32 = 0xffff_ffff;
/// Run a PASSIVE checkpoint once the WAL holds this many frames (SQLite's default autocheckpoint).
pub const CHECKPOINT_FRAMES: u32 = 1000;
/// Longest wait for WAL_WRITE_LOCK (held briefly by checkpoints and recovery) before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(30);
/// Bound on queued jobs; the state machine waits for each apply, so one is ever outstanding.
const QUEUE: usize = 16;
/// How long jobs that arrive before the database is attached wait for it (see `run`).
const ATTACH_WAIT: Duration = Duration::from_secs(30);

pub type Reply = tokio::sync::oneshot::Sender<Result<(), String>>;

enum Job {
    Attach(Weak<Database>),
    Apply {
        txn: Assembled,
        log_id: LogId,
        reply: Reply,
    },
    Build {
        reply: tokio::sync::oneshot::Sender<Result<(PathBuf, StoredMeta), String>>,
    },
    Install {
        image: PathBuf,
        stored: StoredMeta,
        reply: Reply,
    },
}

/// The pages one apply writes: a transaction from the log, or a whole snapshot image. Both are
/// streamed (a few log entries, or one page, at a time): applying never holds a whole transaction.
enum Source<'a> {
    Txn {
        txn: &'a Assembled,
        log: &'a LogStore,
    },
    Image {
        file: std::fs::File,
        n_page: u32,
        page_size: u32,
    },
}

impl Source<'_> {
    fn page_size(&self) -> u32 {
        match self {
            Source::Txn { txn, .. } => txn.page_size(),
            Source::Image { page_size, .. } => *page_size,
        }
    }
    fn db_size(&self) -> u32 {
        match self {
            Source::Txn { txn, .. } => txn.db_size(),
            Source::Image { n_page, .. } => *n_page,
        }
    }
    /// Calls `page(pgno, image, is_last)` for every page, in order.
    fn for_each_page(&self, mut page: impl FnMut(u32, &[u8], bool) -> Result<(), String>) -> Result<(), String> {
        match self {
            Source::Txn { txn, log } => txn.for_each_page(|lo, hi| log.entries_sync(lo, hi), page),
            Source::Image {
                file,
                n_page,
                page_size,
            } => {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; *page_size as usize];
                for i in 0..*n_page {
                    file.read_exact_at(&mut buf, i as u64 * *page_size as u64)
                        .map_err(|e| format!("reading the snapshot image: {e}"))?;
                    page(i + 1, &buf, i + 1 == *n_page)?;
                }
                Ok(())
            }
        }
    }
}

/// The state machine's handle to the applier thread.
#[derive(Clone)]
pub struct ApplierHandle {
    tx: crossbeam_channel::Sender<Job>,
    /// Why applying is waiting (a full disk), for replicated_status().
    stalled: Arc<Mutex<Option<String>>>,
}

/// Prefix of an apply error caused by a full disk (SQLITE_FULL on a WAL write): retried.
const DISK_FULL: &str = "disk full: ";

/// DISK_FULL for an I/O error that means the disk is full, else nothing.
fn full_prefix(e: &std::io::Error) -> &'static str {
    if crate::raft::log_store::disk_full(e) {
        DISK_FULL
    } else {
        ""
    }
}

impl ApplierHandle {
    /// Starts the applier thread for the database at `path`. It opens its connection at the first
    /// job, after `attach`.
    pub fn spawn(path: String) -> Result<ApplierHandle, String> {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let stalled = Arc::new(Mutex::new(None));
        let s = stalled.clone();
        std::thread::Builder::new()
            .name("replicated-apply".into())
            .spawn(move || run(path, rx, s))
            .map_err(|e| format!("replicated: cannot start the apply thread: {e}"))?;
        Ok(ApplierHandle { tx, stalled })
    }

    /// Why applying is waiting (a full disk), if it is.
    pub fn stalled(&self) -> Option<String> {
        self.stalled.lock().clone()
    }

    pub fn attach(&self, db: Weak<Database>) {
        let _ = self.tx.try_send(Job::Attach(db));
    }

    /// Queues the job `make` builds around a reply channel, and waits for the apply thread's answer.
    async fn request<T>(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<T, String>>) -> Job,
    ) -> Result<T, String> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.tx.try_send(make(reply)).map_err(|e| format!("apply queue: {e}"))?;
        rx.await.map_err(|_| "the apply thread is gone".to_string())?
    }

    /// Applies `txn` (complete at `log_id`); resolves when it is published.
    pub async fn apply(&self, txn: Assembled, log_id: LogId) -> Result<(), String> {
        self.request(|reply| Job::Apply { txn, log_id, reply }).await
    }

    /// Builds a snapshot of what is published now (between applies).
    pub async fn build_snapshot(&self) -> Result<(PathBuf, StoredMeta), String> {
        self.request(|reply| Job::Build { reply }).await
    }

    /// Replaces the database content with a snapshot image, as one transaction that readers do
    /// not see until it is published.
    pub async fn install_snapshot(&self, image: PathBuf, stored: StoredMeta) -> Result<(), String> {
        self.request(|reply| Job::Install { image, stored, reply }).await
    }
}

fn run(path: String, rx: crossbeam_channel::Receiver<Job>, stalled: Arc<Mutex<Option<String>>>) {
    let mut db: Option<Weak<Database>> = None;
    let mut conn: Option<Conn> = None;
    let mut broken: Option<String> = None;
    // Jobs that came before the attach, in order. At most one job of each kind is outstanding (each
    // requester awaits its answer), so this holds a few at most.
    let mut early: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    let mut waited = false;
    loop {
        let job = match early.pop_front() {
            Some(job) => job,
            None => match rx.recv() {
                Ok(job) => job,
                Err(_) => break,
            },
        };
        if let Job::Attach(w) = job {
            db = Some(w);
            continue;
        }
        let job = match job {
            // Only openraft's start asks before the attach (a purged log without a snapshot), and
            // the attach comes after that start returns: answer at once, the scheduler snapshots
            // once the node runs (node.rs, `schedule_snapshots`).
            Job::Build { reply } if db.is_none() => {
                let _ = reply.send(Err("snapshot: the node is still starting".into()));
                continue;
            }
            job => job,
        };
        if db.is_none() && !waited {
            // The Raft core starts before `Database::start` attaches the applier, so a leader's
            // AppendEntries can have an entry applied first (it failed, and poisoned the node,
            // before). Hold it until the attach; without one within ATTACH_WAIT the start failed,
            // and the jobs fail below.
            waited = true;
            early.push_back(job);
            let deadline = Instant::now() + ATTACH_WAIT;
            while let Ok(next) = rx.recv_deadline(deadline) {
                match next {
                    Job::Attach(w) => {
                        db = Some(w);
                        break;
                    }
                    other => early.push_back(other),
                }
            }
            continue;
        }
        // Everything else needs the database and the applier's connection.
        let ready = crate::ffi::guard(Err("panic in the applier".to_string()), || {
            let d = db.as_ref().and_then(Weak::upgrade).ok_or("the database is gone")?;
            if conn.is_none() {
                conn = Some(Conn::open(&path, &d)?);
            }
            Ok(d)
        });
        match job {
            Job::Attach(_) => {}
            Job::Apply { txn, log_id, reply } => {
                let r = ready.and_then(|d| {
                    if let Some(b) = &broken {
                        return Err(format!("an earlier apply failed ({b}); restart the node to replay"));
                    }
                    let c = conn.as_mut().ok_or("no connection")?;
                    until_space(&stalled, &format!("applying entry {}", log_id.index), || {
                        crate::ffi::guard(Err("panic in the applier".into()), || {
                            let src = Source::Txn {
                                txn: &txn,
                                log: d.log(),
                            };
                            c.apply(&d, &src, log_id, log_id.index)
                        })
                    })
                });
                if let Err(e) = &r {
                    broken.get_or_insert(e.clone());
                }
                let _ = reply.send(r);
            }
            Job::Build { reply } => {
                let pinned = ready.and_then(|d| {
                    let c = conn.as_mut().ok_or("no connection")?;
                    until_space(&stalled, "building a snapshot", || {
                        crate::ffi::guard(Err("panic while building a snapshot".into()), || {
                            c.pin_snapshot(&path, &d)
                        })
                    })
                });
                // The copy takes as long as the database is large: it runs beside the applies.
                // openraft builds one snapshot at a time, so at most one such thread runs.
                match pinned {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                    Ok(p) => {
                        let stalled = stalled.clone();
                        type Handover = (
                            Pinned,
                            tokio::sync::oneshot::Sender<Result<(PathBuf, StoredMeta), String>>,
                        );
                        let (tx, rx) = crossbeam_channel::bounded::<Handover>(1);
                        let spawned = std::thread::Builder::new()
                            .name("replicated-snapshot".into())
                            .spawn(move || {
                                let Ok((p, reply)) = rx.recv() else { return };
                                let r = crate::ffi::guard(Err("panic while copying a snapshot".into()), || {
                                    Pinned::copy(p, &stalled)
                                });
                                let _ = reply.send(r);
                            });
                        match spawned {
                            Ok(_) => {
                                let _ = tx.send((p, reply));
                            }
                            Err(e) => {
                                drop(p);
                                let _ = reply.send(Err(format!("cannot start a snapshot thread: {e}")));
                            }
                        }
                    }
                }
            }
            Job::Install { image, stored, reply } => {
                let r = ready.and_then(|d| {
                    let c = conn.as_mut().ok_or("no connection")?;
                    let r = until_space(&stalled, "installing a snapshot", || {
                        crate::ffi::guard(Err("panic while installing a snapshot".into()), || {
                            c.install_snapshot(&d, &image, &stored)
                        })
                    });
                    // A snapshot replaces the whole state: it also clears an earlier failure.
                    if r.is_ok() {
                        broken = None;
                    }
                    r
                });
                let _ = reply.send(r);
            }
        }
    }
    drop(conn.take());
}

/// Runs `attempt` again, with a growing pause (10 ms to 1 s), for as long as it fails because the
/// disk is full (an error starting with DISK_FULL). Every job of the applier fails such a write
/// before it publishes or indexes anything, so trying the same job again is safe. Meanwhile
/// `stalled` says what waits, for replicated_status(); a full disk thus stalls this node's applies
/// instead of stopping the node, and they resume by themselves when space is freed.
fn until_space<T>(
    stalled: &Mutex<Option<String>>,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let mut wait = Duration::from_millis(10);
    loop {
        match attempt() {
            Err(e) if e.starts_with(DISK_FULL) => {
                if stalled.lock().is_none() {
                    tracing::error!("replicated: {what} is waiting for disk space: {e}");
                    *stalled.lock() = Some(format!("{what} is waiting for disk space: {e}"));
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            r => {
                if stalled.lock().take().is_some() {
                    tracing::warn!("replicated: {what} goes on: disk space is available again");
                }
                return r;
            }
        }
    }
}

/// The applier's own connection: idle, used for its file handles (locks, shm, WAL).
struct Conn {
    db: *mut ffi::sqlite3,
    main: *mut ffi::sqlite3_file,
    wal: *mut ffi::sqlite3_file,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: the connection was opened by us and is used by one thread at a time (a
        // snapshot's pinning connection is closed by the thread that copied it).
        unsafe { ffi::sqlite3_close(self.db) };
    }
}

unsafe fn file_pointer(db: *mut ffi::sqlite3, op: i32) -> *mut ffi::sqlite3_file {
    let mut f: *mut ffi::sqlite3_file = ptr::null_mut();
    ffi::sqlite3_file_control(db, c"main".as_ptr(), op, &mut f as *mut _ as *mut c_void);
    f
}

/// Header copy as 12 native u32 words.
type Hdr = [u32; 12];

/// The WAL salts a wal-index header holds (aSalt: the WAL header's bytes, copied as they are).
fn hdr_salt(h: &Hdr) -> [u8; 8] {
    let mut s = [0u8; 8];
    s[..4].copy_from_slice(&h[8].to_ne_bytes());
    s[4..].copy_from_slice(&h[9].to_ne_bytes());
    s
}

fn hdr_cksum(h: &Hdr) -> (u32, u32) {
    let mut b = [0u8; 40];
    for (i, w) in h[..10].iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    checksum(&b, (0, 0), cfg!(target_endian = "big"))
}

/// A snapshot being built: the connection whose read transaction pins frames 1..=`mx`, and
/// what the image will be.
struct Pinned {
    conn: Conn,
    db_path: PathBuf,
    wal_path: PathBuf,
    data: PathBuf,
    mx: u32,
    n_page: u32,
    page_size: u32,
    stored: StoredMeta,
}

// SAFETY: the connection was opened with SQLITE_OPEN_NOMUTEX, which allows any one thread at a
// time to use it; a Pinned moves whole to the copying thread and nothing else keeps its pointers.
unsafe impl Send for Pinned {}

impl Pinned {
    /// Copies the pinned image into `snapshots/` and makes it the current snapshot; ends the read
    /// transaction (and closes its connection) when done, whatever the outcome.
    fn copy(self, stalled: &Mutex<Option<String>>) -> Result<(PathBuf, StoredMeta), String> {
        let index = self.stored.meta.last_log_id.map(|l| l.index).unwrap_or(0);
        let tmp = snapshot::dir(&self.data).join(format!("building-{index}"));
        let copied = until_space(stalled, "building a snapshot", || {
            std::fs::create_dir_all(snapshot::dir(&self.data))
                .and_then(|()| {
                    snapshot::copy_image(
                        &self.db_path,
                        &self.wal_path,
                        self.mx,
                        self.n_page,
                        self.page_size,
                        &tmp,
                    )
                })
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp); // a partial copy only takes space
                    format!("{}snapshot: copying the database: {e}", full_prefix(&e))
                })
        });
        let _ = self.conn.exec(c"COMMIT");
        drop(self.conn);
        copied?;
        let image = until_space(stalled, "saving a snapshot", || {
            snapshot::commit(&self.data, &tmp, &self.stored)
                .map_err(|e| format!("{}snapshot: saving: {e}", full_prefix(&e)))
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
        Ok((image, self.stored))
    }
}

impl Conn {
    fn open(path: &str, db: &Arc<Database>) -> Result<Conn, String> {
        let p = CString::new(path).map_err(|e| e.to_string())?;
        let mut h: *mut ffi::sqlite3 = ptr::null_mut();
        crate::vfs::INTERNAL_OPEN.with(|c| c.replace(Some(db.clone())));
        // SAFETY: plain API calls on a connection this thread owns.
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                p.as_ptr(),
                &mut h,
                ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_NOMUTEX,
                crate::vfs::VFS_NAME.as_ptr(),
            )
        };
        crate::vfs::INTERNAL_OPEN.with(|c| c.replace(None));
        let conn = Conn {
            db: h,
            main: ptr::null_mut(),
            wal: ptr::null_mut(),
        };
        if rc != ffi::SQLITE_OK {
            return Err(format!("applier: cannot open {path}: {}", conn.errmsg()));
        }
        let mut conn = conn;
        conn.read_once()?; // opens the WAL, and recovers the wal-index if it needs it
                           // SAFETY: the connection is open; the pointers stay valid while it is.
        unsafe {
            conn.main = file_pointer(conn.db, ffi::SQLITE_FCNTL_FILE_POINTER);
            conn.wal = file_pointer(conn.db, ffi::SQLITE_FCNTL_JOURNAL_POINTER);
        }
        if conn.main.is_null() || conn.wal.is_null() || unsafe { (*conn.wal).pMethods.is_null() } {
            return Err("applier: the database is not open in WAL mode".into());
        }
        Ok(conn)
    }

    fn errmsg(&self) -> String {
        // SAFETY: errmsg on a (possibly failed) handle is allowed.
        unsafe { cstr(ffi::sqlite3_errmsg(self.db)).unwrap_or_default() }
    }

    fn exec(&self, sql: &std::ffi::CStr) -> Result<(), String> {
        // SAFETY: a statement on our own idle connection.
        let rc = unsafe { ffi::sqlite3_exec(self.db, sql.as_ptr(), None, ptr::null_mut(), ptr::null_mut()) };
        if rc != ffi::SQLITE_OK {
            return Err(format!("applier: {}: {}", sql.to_string_lossy(), self.errmsg()));
        }
        Ok(())
    }

    /// A read transaction: makes SQLite open the WAL and rebuild a stale wal-index.
    fn read_once(&self) -> Result<(), String> {
        self.exec(c"SELECT count(*) FROM sqlite_schema")
    }

    unsafe fn shm_lock(&self, offset: i32, n: i32, flags: i32) -> i32 {
        match (*(*self.main).pMethods).xShmLock {
            Some(f) => f(self.main, offset, n, flags),
            None => ffi::SQLITE_IOERR_SHMLOCK,
        }
    }

    unsafe fn region(&self, i: i32) -> Result<*mut u8, String> {
        let Some(map) = (*(*self.main).pMethods).xShmMap else {
            return Err("no xShmMap".into());
        };
        let mut p: *mut c_void = ptr::null_mut();
        let rc = map(self.main, i, REGION, 1, &mut p as *mut _);
        if rc != ffi::SQLITE_OK || p.is_null() {
            return Err(format!("applier: wal-index region {i} unavailable ({rc})"));
        }
        Ok(p as *mut u8)
    }

    unsafe fn barrier(&self) {
        if let Some(b) = (*(*self.main).pMethods).xShmBarrier {
            b(self.main);
        }
    }

    unsafe fn wal_io(&self, write: bool, buf: *mut u8, n: usize, off: u64) -> Result<(), String> {
        let m = &*(*self.wal).pMethods;
        let rc = if write {
            m.xWrite
                .map(|f| f(self.wal, buf as *const c_void, n as i32, off as i64))
        } else {
            m.xRead.map(|f| f(self.wal, buf as *mut c_void, n as i32, off as i64))
        }
        .unwrap_or(ffi::SQLITE_IOERR);
        if rc != ffi::SQLITE_OK {
            let full = if rc & 0xff == ffi::SQLITE_FULL { DISK_FULL } else { "" };
            return Err(format!(
                "{full}applier: WAL {} at {off} failed ({rc})",
                if write { "write" } else { "read" }
            ));
        }
        Ok(())
    }

    unsafe fn read_hdr(&self, r0: *mut u8) -> Option<Hdr> {
        let w = r0 as *const u32;
        let mut a = [0u32; 12];
        let mut b = [0u32; 12];
        for (i, v) in a.iter_mut().enumerate() {
            *v = ptr::read_volatile(w.add(i));
        }
        self.barrier();
        for (i, v) in b.iter_mut().enumerate() {
            *v = ptr::read_volatile(w.add(12 + i));
        }
        let is_init = a[3].to_ne_bytes()[0] != 0;
        (a == b && is_init && hdr_cksum(&a) == (a[10], a[11])).then_some(a)
    }

    unsafe fn publish(&self, r0: *mut u8, h: &mut Hdr) {
        h[0] = 3_007_000;
        h[1] = 0;
        let mut b = h[3].to_ne_bytes();
        b[0] = 1; // isInit
        h[3] = u32::from_ne_bytes(b);
        let ck = hdr_cksum(h);
        h[10] = ck.0;
        h[11] = ck.1;
        let w = r0 as *mut u32;
        for (i, v) in h.iter().enumerate() {
            ptr::write_volatile(w.add(12 + i), *v);
        }
        self.barrier();
        for (i, v) in h.iter().enumerate() {
            ptr::write_volatile(w.add(i), *v);
        }
    }

    /// `walHashGet`: the page-number array, hash table and first frame number (minus one) of the
    /// wal-index block that holds frame `frame`.
    unsafe fn hash_block(&self, frame: u32) -> Result<(*mut u32, *mut u16, u32), String> {
        let block = (frame + NPAGE - NPAGE_ONE - 1) / NPAGE;
        let base = self.region(block as i32)?;
        let a_hash = base.add(NPAGE as usize * 4) as *mut u16;
        Ok(if block == 0 {
            (base.add(INDEX_HDR_SIZE) as *mut u32, a_hash, 0)
        } else {
            (base as *mut u32, a_hash, NPAGE_ONE + (block - 1) * NPAGE)
        })
    }

    /// `walIndexAppend` for frame `frame` holding page `pgno`; `committed` is the published mxFrame.
    unsafe fn index_append(&self, committed: u32, frame: u32, pgno: u32) -> Result<(), String> {
        let (a_pgno, a_hash, zero) = self.hash_block(frame)?;
        let idx = frame - zero;
        if idx == 1 {
            let n = a_hash.add(NSLOT as usize) as usize - a_pgno as usize;
            ptr::write_bytes(a_pgno as *mut u8, 0, n);
        }
        if ptr::read_volatile(a_pgno.add(idx as usize - 1)) != 0 {
            self.cleanup_hash(committed)?;
        }
        let mut key = (pgno.wrapping_mul(383)) & (NSLOT - 1);
        let mut collide = idx;
        while ptr::read_volatile(a_hash.add(key as usize)) != 0 {
            if collide == 0 {
                return Err("applier: wal-index hash table is corrupt".into());
            }
            collide -= 1;
            key = (key + 1) & (NSLOT - 1);
        }
        ptr::write_volatile(a_pgno.add(idx as usize - 1), pgno);
        ptr::write_volatile(a_hash.add(key as usize), idx as u16);
        Ok(())
    }

    /// `walCleanupHash`: forget hash entries above the published mxFrame in its block.
    unsafe fn cleanup_hash(&self, committed: u32) -> Result<(), String> {
        if committed == 0 {
            return Ok(());
        }
        let (a_pgno, a_hash, zero) = self.hash_block(committed)?;
        let limit = committed - zero;
        for i in 0..NSLOT as usize {
            if u32::from(ptr::read_volatile(a_hash.add(i))) > limit {
                ptr::write_volatile(a_hash.add(i), 0);
            }
        }
        let from = a_pgno.add(limit as usize) as *mut u8;
        ptr::write_bytes(from, 0, a_hash as usize - from as usize);
        Ok(())
    }

    fn apply(&mut self, db: &Database, src: &Source, log_id: LogId, last_txn: u64) -> Result<(), String> {
        crate::failpoint::hit("apply.before").map_err(|e| e.to_string())?;
        let deadline = Instant::now() + LOCK_WAIT;
        let mut recovered = false;
        loop {
            // SAFETY: all shm and WAL access below happens under WAL_WRITE_LOCK, on handles of
            // our own connection, through the wrapped VFS.
            let rc = unsafe { self.shm_lock(0, 1, ffi::SQLITE_SHM_LOCK | ffi::SQLITE_SHM_EXCLUSIVE) };
            if rc == ffi::SQLITE_BUSY {
                if Instant::now() > deadline {
                    return Err("applier: WAL write lock busy for too long".into());
                }
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if rc != ffi::SQLITE_OK {
                return Err(format!("applier: cannot take the WAL write lock ({rc})"));
            }
            let r = unsafe { self.apply_locked(db, src, log_id, last_txn) };
            unsafe { self.shm_lock(0, 1, ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE) };
            match r {
                Ok(frames) => {
                    if frames >= CHECKPOINT_FRAMES {
                        // Best effort: a busy checkpoint simply tries again after the next apply.
                        let _ = self.exec(c"PRAGMA wal_checkpoint(PASSIVE)");
                    }
                    return Ok(());
                }
                Err(None) if !recovered => {
                    // The header needs recovery: let SQLite do it with a read, then retry.
                    self.read_once()?;
                    recovered = true;
                }
                Err(None) => return Err("applier: the wal-index header stays invalid after recovery".into()),
                Err(Some(e)) => return Err(e),
            }
        }
    }

    /// Steps 2–7 of the module comment. Ok(mxFrame after); Err(None) = header needs recovery.
    unsafe fn apply_locked(
        &self,
        db: &Database,
        src: &Source,
        log_id: LogId,
        last_txn: u64,
    ) -> Result<u32, Option<String>> {
        let r0 = self.region(0).map_err(Some)?;
        let Some(mut h) = self.read_hdr(r0) else {
            return Err(None);
        };
        // A snapshot image writes every page and the size: it replaces whatever the frames
        // before it hold, so it may go on top of frames this node did not write (and repairs it).
        if !matches!(src, Source::Image { .. }) {
            db.check_wal_end(|| Some((hdr_salt(&h), h[4])), true).map_err(Some)?;
        }
        let ps = src.page_size();
        let ckpt = r0.add(96) as *mut u32; // nBackfill, aReadMark[5], locks, nBackfillAttempted
        let mut mx = h[4];
        let mut nckpt_next = None;
        // 3. Restart a fully backfilled WAL.
        if mx > 0 && ptr::read_volatile(ckpt) == mx {
            let rc = self.shm_lock(4, 4, ffi::SQLITE_SHM_LOCK | ffi::SQLITE_SHM_EXCLUSIVE);
            if rc == ffi::SQLITE_OK {
                let mut wh = [0u8; WAL_HDR];
                let _ = self.wal_io(false, wh.as_mut_ptr(), WAL_HDR, 0);
                nckpt_next = Some(frames::be32(&wh, 12).wrapping_add(1));
                let salt = h[8].to_ne_bytes();
                let s1 = u32::from_be_bytes(salt).wrapping_add(1);
                h[8] = u32::from_ne_bytes(s1.to_be_bytes());
                h[9] = u32::from_ne_bytes(crate::reconcile::random_salt()[..4].try_into().unwrap_or([7; 4]));
                h[4] = 0;
                mx = 0;
                self.publish(r0, &mut h);
                ptr::write_volatile(ckpt, 0); // nBackfill
                ptr::write_volatile(r0.add(128) as *mut u32, 0); // nBackfillAttempted
                ptr::write_volatile(ckpt.add(2), 0); // aReadMark[1]
                for i in 3..=5 {
                    ptr::write_volatile(ckpt.add(i), READMARK_NOT_USED);
                }
                self.shm_lock(4, 4, ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE);
            }
        }
        // 4. A new WAL header when the WAL is empty.
        let wal_hdr = if mx == 0 {
            let mut salt = [0u8; 8];
            salt[..4].copy_from_slice(&h[8].to_ne_bytes());
            salt[4..].copy_from_slice(&h[9].to_ne_bytes());
            let seq = nckpt_next.unwrap_or(0);
            if seq == 0 || salt == [0u8; 8] {
                salt = crate::reconcile::random_salt();
            }
            let wh = WalHeader::new(ps, seq, salt);
            let mut b = wh.encode();
            self.wal_io(true, b.as_mut_ptr(), WAL_HDR, 0).map_err(Some)?;
            h[8] = u32::from_ne_bytes([salt[0], salt[1], salt[2], salt[3]]);
            h[9] = u32::from_ne_bytes([salt[4], salt[5], salt[6], salt[7]]);
            // isInit (u8), bigEndCksum (u8), szPage (u16; 65536 is stored as 1), in memory order.
            let sz = (((ps & 0xff00) | (ps >> 16)) as u16).to_ne_bytes();
            let b = h[3].to_ne_bytes();
            h[3] = u32::from_ne_bytes([b[0], wh.big_endian as u8, sz[0], sz[1]]);
            h[6] = wh.cksum.0;
            h[7] = wh.cksum.1;
            wh
        } else {
            let mut b = [0u8; WAL_HDR];
            self.wal_io(false, b.as_mut_ptr(), WAL_HDR, 0).map_err(Some)?;
            match WalHeader::parse(&b) {
                Some(wh) if wh.page_size == ps => wh,
                Some(wh) => {
                    return Err(Some(format!(
                        "applier: entry page size {ps} differs from the WAL's {}",
                        wh.page_size
                    )))
                }
                None => return Err(Some("applier: the WAL header is invalid".into())),
            }
        };
        // 5. Frames (the page numbers are kept for step 6: 4 bytes a page).
        let mut running = (h[6], h[7]);
        let mut buf = Vec::with_capacity(ps as usize + frames::FRAME_HDR);
        let mut pgnos: Vec<u32> = Vec::new();
        let db_size = src.db_size();
        src.for_each_page(|pgno, page, last| {
            if page.len() != ps as usize {
                return Err(format!(
                    "applier: a page of {} bytes in a {ps}-byte-page WAL",
                    page.len()
                ));
            }
            let commit = if last { db_size } else { 0 };
            running = frames::encode_frame(&wal_hdr, running, pgno, commit, page, &mut buf);
            let off = wal_hdr.frame_offset(mx as u64 + 1 + pgnos.len() as u64);
            self.wal_io(true, buf.as_mut_ptr(), buf.len(), off)?;
            pgnos.push(pgno);
            Ok(())
        })
        .map_err(Some)?;
        let n = u32::try_from(pgnos.len())
            .ok()
            .filter(|n| mx.checked_add(*n).is_some())
            .ok_or_else(|| Some("applier: the WAL would exceed 2^32 frames".to_string()))?;
        if n == 0 {
            return Err(Some("applier: a transaction without pages".into()));
        }
        crate::failpoint::hit("apply.after_frames").map_err(|e| Some(e.to_string()))?;
        // 6. Hash entries.
        for (i, pgno) in pgnos.iter().enumerate() {
            self.index_append(mx, mx + 1 + i as u32, *pgno).map_err(Some)?;
        }
        // 7. Record, then publish.
        let new_mx = mx + n;
        let rec = Record {
            index: log_id.index,
            term: log_id.leader_id.term,
            leader: log_id.leader_id.node_id,
            salt: wal_hdr.salt,
            commit_frame: new_mx as u64,
            cksum: running,
            db_size: src.db_size(),
            last_txn,
        };
        db.record_applied(&rec);
        crate::failpoint::hit("apply.before_publish").map_err(|e| Some(e.to_string()))?;
        h[2] = h[2].wrapping_add(1); // iChange
        h[4] = new_mx;
        h[5] = src.db_size();
        h[6] = running.0;
        h[7] = running.1;
        db.begin_publication();
        self.publish(r0, &mut h);
        db.note_wal_end(Some((hdr_salt(&h), new_mx)));
        db.set_published(log_id, last_txn);
        Ok(new_mx)
    }

    /// See raft/snapshot.rs: under the write lock, pin what is published with a read transaction
    /// on a connection of its own. The copy (`Pinned::copy`) then runs on another thread while
    /// applies go on: they only add frames after the pinned ones.
    fn pin_snapshot(&mut self, path: &str, db: &Arc<Database>) -> Result<Pinned, String> {
        let snap = Conn::open(path, db)?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            let rc = unsafe { self.shm_lock(0, 1, ffi::SQLITE_SHM_LOCK | ffi::SQLITE_SHM_EXCLUSIVE) };
            if rc == ffi::SQLITE_OK {
                break;
            }
            if rc != ffi::SQLITE_BUSY || Instant::now() > deadline {
                return Err(format!("snapshot: cannot take the WAL write lock ({rc})"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        type Pin = (
            LogId,
            u64,
            u32,
            u32,
            u32,
            openraft::StoredMembership<crate::raft::types::NodeId, openraft::BasicNode>,
        );
        let pinned = (|| -> Result<Pin, String> {
            let (log_id, last_txn) = db.published();
            let log_id = log_id.ok_or("snapshot: nothing applied yet")?;
            // Asked under the write lock, while what is published cannot move: the state machine
            // keeps the membership at the published index (state_machine.rs, `decide`).
            let membership = db.membership_at(log_id.index).ok_or_else(|| {
                format!(
                    "snapshot: the membership at index {} is not known here (a membership change applied \
                     before the start, or thousands since the last write): the next write allows a snapshot",
                    log_id.index
                )
            })?;
            let r0 = unsafe { self.region(0)? };
            let h = unsafe { self.read_hdr(r0) }.ok_or("snapshot: the wal-index header needs recovery")?;
            // A poisoned node's files are not the state it reports; and frames it did not write
            // (check_wal_end) must not leave in an image labelled with a log id.
            if db.is_poisoned() {
                return Err(
                    "snapshot: this node cannot apply the log (poisoned): no snapshot until it restarts".into(),
                );
            }
            db.check_wal_end(|| Some((hdr_salt(&h), h[4])), false)
                .map_err(|why| format!("snapshot: {why}"))?;
            let b = h[3].to_ne_bytes();
            let sz = u16::from_ne_bytes([b[2], b[3]]) as u32;
            let page_size = if sz == 1 { 65536 } else { sz };
            snap.exec(c"BEGIN")?;
            // The read transaction that pins frames 1..=mxFrame.
            snap.read_once()?;
            // With READ_LOCK(0), SQLite saw every frame backfilled and reads the database file
            // alone. That lock keeps checkpoints from writing the file, but not the WAL from being
            // restarted and overwritten while we copy: take nothing from the WAL then. Any other
            // read lock keeps the WAL from restarting, and checkpoints from copying frames past it.
            // SAFETY: `main` is the live main-file handle of `snap`.
            let locks = unsafe { crate::vfs::main_state(snap.main) }.map_or(0, |m| m.read_locks());
            let mx = match locks {
                1 => 0,
                l if l > 1 => h[4],
                _ => return Err("snapshot: the pinning read transaction holds no read lock".into()),
            };
            Ok((log_id, last_txn, mx, h[5], page_size, membership))
        })();
        unsafe { self.shm_lock(0, 1, ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE) };
        let (log_id, last_txn, mx, n_page, page_size, membership) = pinned?; // dropping `snap` ends its transaction
        let db_path = PathBuf::from(path);
        let (n_page, page_size) = if mx == 0 && (n_page == 0 || page_size == 0) {
            // SQLite's recovery of an empty WAL leaves the header's size fields zero; readers
            // then size the database by its file (READ_LOCK(0) keeps checkpoints from changing it).
            let f = std::fs::File::open(&db_path).map_err(|e| format!("snapshot: opening the database: {e}"))?;
            geometry(&f, "snapshot: the database")?
        } else {
            (n_page, page_size)
        };
        Ok(Pinned {
            wal_path: crate::reconcile::sibling(&db_path, "-wal"),
            db_path,
            data: db.cfg.data.clone(),
            conn: snap,
            mx,
            n_page,
            page_size,
            stored: StoredMeta {
                meta: openraft::SnapshotMeta {
                    last_log_id: Some(log_id),
                    last_membership: membership,
                    snapshot_id: snapshot::snapshot_id(&log_id, last_txn),
                },
                last_txn,
            },
        })
    }

    fn install_snapshot(&mut self, db: &Database, image: &Path, stored: &StoredMeta) -> Result<(), String> {
        let log_id = stored.meta.last_log_id.ok_or("snapshot without a log id")?;
        let file = std::fs::File::open(image).map_err(|e| format!("opening the snapshot image: {e}"))?;
        let (n_page, page_size) = geometry(&file, "the snapshot image")?;
        self.apply(
            db,
            &Source::Image {
                file,
                n_page,
                page_size,
            },
            log_id,
            stored.last_txn,
        )?;
        // Durable now: after a restart the install must be found even if the log before it is gone.
        let rc = unsafe { crate::vfs::sync_underlying(self.wal, ffi::SQLITE_SYNC_NORMAL) };
        if rc != ffi::SQLITE_OK {
            return Err(format!("syncing the WAL after a snapshot install failed ({rc})"));
        }
        db.sync_records()
    }
}

/// The page count and page size of a database file read alone (a snapshot image, or the
/// database when no WAL frame counts): the page size from its header, the count from its length.
/// An empty file, or one that is not a SQLite database, has no state to copy.
pub(crate) fn geometry(f: &std::fs::File, what: &str) -> Result<(u32, u32), String> {
    use std::os::unix::fs::FileExt;
    let len = f.metadata().map_err(|e| format!("{what}: {e}"))?.len();
    let mut hdr = [0u8; 100];
    if len > 0 {
        f.read_exact_at(&mut hdr, 0)
            .map_err(|e| format!("reading {what}: {e}"))?;
        if &hdr[..16] != b"SQLite format 3\0" {
            return Err(format!("{what} is not a SQLite database"));
        }
    }
    let ps = match u16::from_be_bytes([hdr[16], hdr[17]]) {
        1 => 65536,
        p => u32::from(p),
    };
    if !(512..=65536).contains(&ps) || !ps.is_power_of_two() || len == 0 || len % u64::from(ps) != 0 {
        return Err(format!("{what} has a bad size ({len} bytes, page size {ps})"));
    }
    let n = u32::try_from(len / u64::from(ps)).map_err(|_| format!("{what} is too large"))?;
    // The size the header records, when the header says it is current (the change counter at 24
    // equals the version-valid-for number at 92), must fit in the file: SQLite's own rule
    // (lockBtree). A file cut short at a page boundary would otherwise pass for a smaller
    // database. A file longer than that is legitimate (SQLite ignores the pages past it; an
    // imported file may have them, and then every snapshot image too).
    let be = |at: usize| u32::from_be_bytes([hdr[at], hdr[at + 1], hdr[at + 2], hdr[at + 3]]);
    let recorded = be(28);
    if recorded != 0 && be(24) == be(92) && recorded > n {
        return Err(format!(
            "{what} holds {n} pages but its header records {recorded}: it is incomplete or damaged"
        ));
    }
    Ok((n, ps))
}

#[cfg(test)]
mod tests {
    use super::geometry;
    use std::io::Write;

    /// A database image of `pages` pages of 4096 bytes whose header records `recorded` pages.
    fn image(pages: u32, recorded: u32, counter: u32, valid_for: u32) -> std::fs::File {
        let mut page1 = vec![0u8; 4096];
        page1[..16].copy_from_slice(b"SQLite format 3\0");
        page1[16..18].copy_from_slice(&4096u16.to_be_bytes());
        page1[24..28].copy_from_slice(&counter.to_be_bytes());
        page1[28..32].copy_from_slice(&recorded.to_be_bytes());
        page1[92..96].copy_from_slice(&valid_for.to_be_bytes());
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&page1).unwrap();
        f.write_all(&vec![0u8; 4096 * (pages as usize - 1)]).unwrap();
        f
    }

    #[test]
    fn an_image_shorter_than_its_header_records_is_refused() {
        assert_eq!(geometry(&image(3, 3, 7, 7), "image").unwrap(), (3, 4096));
        let cut = geometry(&image(2, 3, 7, 7), "image").unwrap_err();
        assert!(cut.contains("holds 2 pages but its header records 3"), "{cut}");
        // Pages past the recorded size are legitimate (SQLite ignores them).
        assert_eq!(geometry(&image(4, 3, 7, 7), "image").unwrap(), (4, 4096));
        // A recorded size that is not current (or absent) does not count, as in SQLite.
        assert_eq!(geometry(&image(2, 3, 7, 6), "image").unwrap(), (2, 4096));
        assert_eq!(geometry(&image(2, 0, 7, 7), "image").unwrap(), (2, 4096));
    }
}
