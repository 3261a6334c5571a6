//! The `replicated` VFS: a thin wrapper around the host's default OS VFS.
//!
//! What it owns: one `ReplFile` per open file, laid out as `[ReplFile][the OS VFS's file]` in the
//! buffer SQLite allocates (`szOsFile` = ours + theirs). Every method forwards to the wrapped file —
//! xShm* and xFetch/xUnfetch included, so the OS VFS's wal-index locking and mmap stay intact.
//! The only behaviour added is on the data path of a replicated database:
//!
//! 1. *Open* (main db): parse the configuration from the URI and start (or find) the node for
//!    this database — which reconciles the WAL with the Raft log before anything reads.
//!    A bad configuration does not fail `xOpen` (SQLite would only say "unable to open database
//!    file"): the handle remembers the error, refuses all I/O, and the extension's per-connection
//!    init reports the message, which names the key, as the open's error.
//! 2. *Begin write* (`xShmLock(WRITE, exclusive)` while holding a read mark): ask the node; a
//!    follower refuses with SQLITE_READONLY before any page is written. Once the lock is held,
//!    the wal-index must end where this node last published: frames past that end were written
//!    by a process without this VFS (`Database::check_wal_end`); the lock is given back, the
//!    write fails and the node is poisoned. A checkpoint is refused (CKPT_START) on the same test.
//! 3. *Commit* (the WAL `xSync` after a commit frame, see `locks.rs`): capture the transaction,
//!    hand it to Raft, block this SQLite thread until the ack level is met, then return. On failure
//!    the WAL tail is invalidated and synced *before* the error is returned. Never SQLITE_BUSY.
//! 4. *Refusals* through SQLITE_FCNTL_PRAGMA: journal_mode other than WAL, locking_mode=EXCLUSIVE,
//!    synchronous below FULL.
//! 5. *WAL generations*: a WAL header written at offset 0, a WAL truncated to 0 or deleted means
//!    every earlier frame is in the database file; the node records that (the checkpoint marker).
//! 6. *Write-behind* (`wal_buffer.rs`): a write transaction's frames stay in the connection's
//!    memory until its commit, which writes them to the file while Raft makes them durable.
//!
//! Must never: panic across the FFI boundary (every entry is wrapped in `ffi::guard`), take file
//! locks of its own on SQLite's files, or block inside xShmBarrier or a lock release.

pub mod capture;
pub mod locks;
pub mod wal_buffer;

use crate::ffi::{cstr, guard, sqlite_log, sqlite_string};
use crate::node::{Database, WriteError};
use libsqlite3_sys as ffi;
use locks::ShmLocks;
use parking_lot::Mutex;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::{Arc, OnceLock};
use wal_buffer::WalBuffer;

pub const VFS_NAME: &CStr = c"replicated";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Main,
    Wal,
    Other,
}

/// State of one main-database handle (one per connection per database).
pub struct MainState {
    pub db: Option<Arc<Database>>,
    pub config_error: Option<String>,
    /// Handles of the node's own connections (never refused, never captured).
    pub internal: bool,
    locks: ShmLocks,
    /// A commit frame was written since this handle took WAL_WRITE_LOCK.
    commit_pending: bool,
    /// Where the last commit frame's header was written: sizes capture's reads (capture.rs).
    commit_hint: Option<u64>,
    /// The log id of the transaction this handle committed and SQLite is publishing; recorded as
    /// published when the handle releases WAL_WRITE_LOCK (publication happens before that).
    claimed: Option<(crate::raft::types::LogId, u64)>,
    /// The wrapped main file, for wal-index access at capture time.
    real: *mut ffi::sqlite3_file,
    /// Reason for this connection's last replication failure (`replicated_last_error()`).
    pub last_error: Mutex<Option<String>>,
    /// Why the checkpoint under way must not write the database file: the applied-state records
    /// that describe its frames could not be made durable (CKPT_START). SQLite ignores the answer
    /// to that hint, so the checkpoint's first write fails instead, before any page is copied.
    checkpoint_refused: Option<String>,
    /// The wrapped `-wal` file of this connection while it is open (null otherwise).
    wal: *mut ffi::sqlite3_file,
    /// This connection's write transaction's frames not yet in the WAL file (wal_buffer.rs).
    wal_buf: WalBuffer,
    /// WAL writes go to `wal_buf`: from a write transaction's start to its commit sync.
    buffering: bool,
}

#[repr(C)]
struct ReplFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    kind: Kind,
    /// Main: owned (Box). Wal: the owning main handle's state (borrowed; the WAL closes first).
    main: *mut MainState,
}

const HDR: usize = (std::mem::size_of::<ReplFile>() + 15) & !15;

struct BaseVfs(*mut ffi::sqlite3_vfs);
// SAFETY: the OS VFS object is immutable after registration and lives for the process.
unsafe impl Send for BaseVfs {}
unsafe impl Sync for BaseVfs {}
static BASE: OnceLock<BaseVfs> = OnceLock::new();

fn base() -> *mut ffi::sqlite3_vfs {
    BASE.get().map(|b| b.0).unwrap_or(ptr::null_mut())
}

thread_local! {
    /// Set while the node opens one of its own connections (the applier's) on this thread.
    pub static INTERNAL_OPEN: std::cell::RefCell<Option<Arc<Database>>> = const { std::cell::RefCell::new(None) };
}

/// Registers the VFS once per process (idempotent). Returns an SQLite result code.
pub fn register() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| unsafe {
        if !ffi::sqlite3_vfs_find(VFS_NAME.as_ptr()).is_null() {
            return Ok(());
        }
        let os = ffi::sqlite3_vfs_find(ptr::null());
        if os.is_null() {
            return Err("replicated: no default VFS to wrap".into());
        }
        let _ = BASE.set(BaseVfs(os));
        let o = &*os;
        let vfs = Box::new(ffi::sqlite3_vfs {
            iVersion: 3.min(o.iVersion),
            szOsFile: (HDR + o.szOsFile as usize) as c_int,
            mxPathname: o.mxPathname,
            pNext: ptr::null_mut(),
            zName: VFS_NAME.as_ptr(),
            pAppData: ptr::null_mut(),
            xOpen: Some(v_open),
            xDelete: Some(v_delete),
            xAccess: Some(v_access),
            xFullPathname: Some(v_full_pathname),
            xDlOpen: o.xDlOpen,
            xDlError: o.xDlError,
            xDlSym: o.xDlSym,
            xDlClose: o.xDlClose,
            xRandomness: Some(v_randomness),
            xSleep: Some(v_sleep),
            xCurrentTime: Some(v_current_time),
            xGetLastError: Some(v_get_last_error),
            xCurrentTimeInt64: if o.iVersion >= 2 { Some(v_current_time64) } else { None },
            xSetSystemCall: None,
            xGetSystemCall: None,
            xNextSystemCall: None,
        });
        let rc = ffi::sqlite3_vfs_register(Box::into_raw(vfs), 0);
        if rc != ffi::SQLITE_OK {
            return Err(format!("replicated: sqlite3_vfs_register failed ({rc})"));
        }
        Ok(())
    })
    .clone()
}

impl MainState {
    /// The wal-index read locks this handle holds: bit i for WAL_READ_LOCK(i).
    pub fn read_locks(&self) -> u8 {
        (self.locks.shared & locks::READ_ANY) >> 3
    }
}

/// If `file` belongs to this VFS and is a main database, its state.
///
/// # Safety
/// `file` must be NULL or a live `sqlite3_file`.
pub unsafe fn main_state<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a MainState> {
    if file.is_null() || !std::ptr::eq((*file).pMethods, &IO_METHODS) {
        return None;
    }
    let rf = file as *mut ReplFile;
    if (*rf).kind != Kind::Main || (*rf).main.is_null() {
        return None;
    }
    Some(&*(*rf).main)
}

/// The URI parameters of a main-database filename, in order.
unsafe fn uri_pairs(z_name: *const c_char) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..1000 {
        let k = ffi::sqlite3_uri_key(z_name, i);
        if k.is_null() {
            break;
        }
        let v = ffi::sqlite3_uri_parameter(z_name, k);
        out.push((cstr(k).unwrap_or_default(), cstr(v).unwrap_or_default()));
    }
    out
}

unsafe extern "C" fn v_open(
    _vfs: *mut ffi::sqlite3_vfs,
    z_name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    guard(ffi::SQLITE_CANTOPEN, || {
        let os = base();
        let rf = file as *mut ReplFile;
        ptr::write(
            rf,
            ReplFile {
                base: ffi::sqlite3_file { pMethods: ptr::null() },
                real: (file as *mut u8).add(HDR) as *mut ffi::sqlite3_file,
                kind: Kind::Other,
                main: ptr::null_mut(),
            },
        );
        let Some(x_open) = (*os).xOpen else {
            return ffi::SQLITE_CANTOPEN;
        };
        let kind = if flags & ffi::SQLITE_OPEN_MAIN_DB != 0 {
            Kind::Main
        } else if flags & ffi::SQLITE_OPEN_WAL != 0 {
            Kind::Wal
        } else {
            Kind::Other
        };
        // A replicated main database is prepared (genesis, reconcile) before SQLite opens it.
        let mut state = None;
        if kind == Kind::Main && !z_name.is_null() {
            let internal_db = INTERNAL_OPEN.with(|c| c.borrow().clone());
            let internal = internal_db.is_some();
            let path = cstr(z_name).unwrap_or_default();
            let (db, err) = if internal {
                (internal_db, None)
            } else {
                match crate::node::open_database(&path, uri_pairs(z_name), flags & ffi::SQLITE_OPEN_READONLY != 0) {
                    Ok(db) => (Some(db), None),
                    Err(e) => {
                        sqlite_log(ffi::SQLITE_CANTOPEN, &e);
                        (None, Some(e))
                    }
                }
            };
            state = Some(Box::new(MainState {
                db,
                config_error: err,
                internal,
                locks: ShmLocks::default(),
                commit_pending: false,
                commit_hint: None,
                claimed: None,
                real: (*rf).real,
                last_error: Mutex::new(None),
                checkpoint_refused: None,
                wal: ptr::null_mut(),
                wal_buf: WalBuffer::default(),
                buffering: false,
            }));
        }
        let rc = x_open(os, z_name, (*rf).real, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        (*rf).kind = kind;
        match kind {
            Kind::Main => {
                if let Some(s) = state {
                    (*rf).main = Box::into_raw(s);
                }
            }
            Kind::Wal => {
                let dbf = ffi::sqlite3_database_file_object(z_name);
                if !dbf.is_null() && std::ptr::eq((*dbf).pMethods, &IO_METHODS) {
                    (*rf).main = (*(dbf as *mut ReplFile)).main;
                    if !(*rf).main.is_null() {
                        (*(*rf).main).wal = (*rf).real;
                    }
                }
            }
            Kind::Other => {}
        }
        (*rf).base.pMethods = &IO_METHODS;
        ffi::SQLITE_OK
    })
}

unsafe extern "C" fn v_delete(_vfs: *mut ffi::sqlite3_vfs, z_name: *const c_char, sync_dir: c_int) -> c_int {
    guard(ffi::SQLITE_IOERR_DELETE, || {
        let os = base();
        if let Some(name) = cstr(z_name) {
            if let Some(db_path) = name.strip_suffix("-wal") {
                if let Some(db) = crate::node::registry_get(db_path) {
                    // The last connection checkpointed everything and is deleting the WAL: the
                    // database file now holds every applied transaction.
                    if let Err(e) = db.on_wal_reset() {
                        sqlite_log(ffi::SQLITE_IOERR_DELETE, &e);
                        return ffi::SQLITE_IOERR_DELETE;
                    }
                }
            }
        }
        match (*os).xDelete {
            Some(f) => f(os, z_name, sync_dir),
            None => ffi::SQLITE_IOERR_DELETE,
        }
    })
}

unsafe extern "C" fn v_access(_v: *mut ffi::sqlite3_vfs, z: *const c_char, fl: c_int, out: *mut c_int) -> c_int {
    guard(ffi::SQLITE_IOERR_ACCESS, || {
        let os = base();
        (*os)
            .xAccess
            .map(|f| f(os, z, fl, out))
            .unwrap_or(ffi::SQLITE_IOERR_ACCESS)
    })
}
unsafe extern "C" fn v_full_pathname(_v: *mut ffi::sqlite3_vfs, z: *const c_char, n: c_int, out: *mut c_char) -> c_int {
    guard(ffi::SQLITE_CANTOPEN, || {
        let os = base();
        (*os)
            .xFullPathname
            .map(|f| f(os, z, n, out))
            .unwrap_or(ffi::SQLITE_CANTOPEN)
    })
}
unsafe extern "C" fn v_randomness(_v: *mut ffi::sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    guard(0, || {
        let os = base();
        (*os).xRandomness.map(|f| f(os, n, out)).unwrap_or(0)
    })
}
unsafe extern "C" fn v_sleep(_v: *mut ffi::sqlite3_vfs, us: c_int) -> c_int {
    guard(0, || {
        let os = base();
        (*os).xSleep.map(|f| f(os, us)).unwrap_or(0)
    })
}
unsafe extern "C" fn v_current_time(_v: *mut ffi::sqlite3_vfs, t: *mut f64) -> c_int {
    guard(ffi::SQLITE_ERROR, || {
        let os = base();
        (*os).xCurrentTime.map(|f| f(os, t)).unwrap_or(ffi::SQLITE_ERROR)
    })
}
unsafe extern "C" fn v_get_last_error(_v: *mut ffi::sqlite3_vfs, n: c_int, z: *mut c_char) -> c_int {
    guard(0, || {
        let os = base();
        (*os).xGetLastError.map(|f| f(os, n, z)).unwrap_or(0)
    })
}
unsafe extern "C" fn v_current_time64(_v: *mut ffi::sqlite3_vfs, t: *mut ffi::sqlite3_int64) -> c_int {
    guard(ffi::SQLITE_ERROR, || {
        let os = base();
        (*os).xCurrentTimeInt64.map(|f| f(os, t)).unwrap_or(ffi::SQLITE_ERROR)
    })
}

// ---- io methods -------------------------------------------------------------------------------

static IO_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: Some(x_fetch),
    xUnfetch: Some(x_unfetch),
};

unsafe fn real(f: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    (*(f as *mut ReplFile)).real
}
unsafe fn rm<'a>(f: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    &*(*real(f)).pMethods
}
/// The main state of a handle when it is a replicated main db that failed its configuration.
unsafe fn broken(f: *mut ffi::sqlite3_file) -> bool {
    let rf = f as *mut ReplFile;
    (*rf).kind == Kind::Main && !(*rf).main.is_null() && (*(*rf).main).config_error.is_some()
}

macro_rules! forward {
    ($f:expr, $m:ident, $err:expr $(, $a:expr)*) => {{
        let r = real($f);
        match (*(*r).pMethods).$m {
            Some(m) => m(r $(, $a)*),
            None => $err,
        }
    }};
}

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    guard(ffi::SQLITE_IOERR_CLOSE, || {
        let rf = f as *mut ReplFile;
        let r = (*rf).real;
        if (*rf).kind == Kind::Wal && !(*rf).main.is_null() {
            // Empty unless a transaction was cut short: its frames were never published.
            let st = &mut *(*rf).main;
            st.wal_buf.clear();
            st.buffering = false;
            st.wal = ptr::null_mut();
        }
        let rc = if !(*r).pMethods.is_null() {
            forward!(f, xClose, ffi::SQLITE_OK)
        } else {
            ffi::SQLITE_OK
        };
        if (*rf).kind == Kind::Main && !(*rf).main.is_null() {
            drop(Box::from_raw((*rf).main));
        }
        (*rf).main = ptr::null_mut();
        rc
    })
}

unsafe extern "C" fn x_read(f: *mut ffi::sqlite3_file, buf: *mut c_void, n: c_int, off: ffi::sqlite3_int64) -> c_int {
    guard(ffi::SQLITE_IOERR_READ, || {
        // Reads stay allowed on a misconfigured handle: opening reads the header, and the open must
        // succeed for the per-connection init to report the configuration error by name.
        if let Some(st) = wal_state(f) {
            if !st.wal_buf.is_empty() && n > 0 && off >= 0 {
                let out = std::slice::from_raw_parts_mut(buf as *mut u8, n as usize);
                match read_buffered(&mut st.wal_buf, st.wal, off as u64, out) {
                    Ok(true) => return ffi::SQLITE_OK,
                    Ok(false) => {}
                    Err(rc) => return as_ioerr(fails_txn(st, rc)),
                }
            }
        }
        forward!(f, xRead, ffi::SQLITE_IOERR_READ, buf, n, off)
    })
}

unsafe extern "C" fn x_write(
    f: *mut ffi::sqlite3_file,
    buf: *const c_void,
    n: c_int,
    off: ffi::sqlite3_int64,
) -> c_int {
    guard(ffi::SQLITE_IOERR_WRITE, || {
        let rf = f as *mut ReplFile;
        if broken(f) {
            return ffi::SQLITE_CANTOPEN;
        }
        if (*rf).kind == Kind::Wal && !(*rf).main.is_null() {
            let st = &mut *(*rf).main;
            if n == 24 && off >= 32 && !st.internal {
                // A frame header: a non-zero "database size after commit" marks the commit frame.
                let h = std::slice::from_raw_parts(buf as *const u8, 24);
                if crate::wal::frames::be32(h, 4) != 0 {
                    // The first commit frame: with psow=0 padding frames carry the mark too,
                    // and capture reads up to the first only.
                    if !st.commit_pending {
                        st.commit_hint = u64::try_from(off).ok();
                    }
                    st.commit_pending = true;
                }
            } else if n == 32 && off == 0 {
                // A new WAL generation begins (SQLite's writer or the applier writes its header):
                // everything before it was backfilled and the database file synced.
                if let Some(db) = &st.db {
                    if let Err(e) = db.on_wal_reset() {
                        sqlite_log(ffi::SQLITE_IOERR_WRITE, &e);
                        return ffi::SQLITE_IOERR_WRITE;
                    }
                }
            }
            if st.buffering && off >= crate::wal::frames::WAL_HDR as i64 && n > 0 {
                let data = std::slice::from_raw_parts(buf as *const u8, n as usize);
                if st.wal_buf.absorb(off as u64, data) {
                    return ffi::SQLITE_OK;
                }
                let rc = write_out(st);
                if rc != ffi::SQLITE_OK {
                    return fails_txn(st, rc);
                }
                if st.wal_buf.absorb(off as u64, data) {
                    return ffi::SQLITE_OK;
                }
                // Larger than the buffer's bound: written through, below.
            } else {
                let rc = write_out(st);
                if rc != ffi::SQLITE_OK {
                    return fails_txn(st, rc);
                }
            }
        }
        if (*rf).kind == Kind::Main && !(*rf).main.is_null() && (*(*rf).main).checkpoint_refused.is_some() {
            return ffi::SQLITE_IOERR_WRITE; // logged at CKPT_START
        }
        let rc = forward!(f, xWrite, ffi::SQLITE_IOERR_WRITE, buf, n, off);
        if rc != ffi::SQLITE_OK && (*rf).kind == Kind::Wal && !(*rf).main.is_null() {
            // A failed frame write (SQLITE_FULL, say) aborts the transaction: SQLite neither syncs
            // nor publishes it, so it is not a commit that bypassed the hook (the tripwire below).
            (*(*rf).main).commit_pending = false;
        }
        rc
    })
}

unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    guard(ffi::SQLITE_IOERR_TRUNCATE, || {
        let rf = f as *mut ReplFile;
        if broken(f) {
            return ffi::SQLITE_CANTOPEN;
        }
        if let Some(st) = wal_state(f) {
            let rc = write_out(st);
            if rc != ffi::SQLITE_OK {
                return fails_txn(st, rc);
            }
        }
        if (*rf).kind == Kind::Wal && size == 0 && !(*rf).main.is_null() {
            let st = &*(*rf).main;
            if let Some(db) = &st.db {
                if let Err(e) = db.on_wal_reset() {
                    sqlite_log(ffi::SQLITE_IOERR_TRUNCATE, &e);
                    return ffi::SQLITE_IOERR_TRUNCATE;
                }
            }
        }
        forward!(f, xTruncate, ffi::SQLITE_IOERR_TRUNCATE, size)
    })
}

unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    guard(ffi::SQLITE_IOERR_FSYNC, || {
        let rf = f as *mut ReplFile;
        if broken(f) {
            return ffi::SQLITE_CANTOPEN;
        }
        if (*rf).kind == Kind::Wal && !(*rf).main.is_null() {
            let st = &mut *(*rf).main;
            if st.commit_pending && st.locks.holds_write_not_ckpt() && !st.internal {
                st.commit_pending = false;
                if let Some(db) = st.db.clone() {
                    return commit_sync(st, &db, (*rf).real);
                }
            }
            let rc = write_out(st);
            if rc != ffi::SQLITE_OK {
                return fails_txn(st, rc);
            }
            if st.db.is_some() {
                // The WAL of a replicated database is never fsynced: the Raft log holds every
                // frame in it durably. What SQLite syncs here is a new generation's header, or
                // the frames a checkpoint is about to copy into the database file (4 MB per
                // 1000 frames, measured here: 3 ms of every such checkpoint, against 0.7 ms for
                // the whole checkpoint of plain SQLite, whose WAL was synced at each commit).
                // After a power loss, reconciliation keeps only frames that a record vouches for
                // and replays the rest from the log, up to the newest durable record at least:
                // records are synced before a checkpoint copies anything (CKPT_START), so that
                // covers every page the database file may hold (raft/applied.rs, reconcile.rs).
                return ffi::SQLITE_OK;
            }
        }
        forward!(f, xSync, ffi::SQLITE_IOERR_FSYNC, flags)
    })
}

/// The commit path: capture → replicate → return. See the module comment.
unsafe fn commit_sync(st: &mut MainState, db: &Database, wal: *mut ffi::sqlite3_file) -> c_int {
    // What SQLite writes after this sync (padding frames) is published without another call into
    // the VFS: it goes straight to the file.
    st.buffering = false;
    let hint = st.commit_hint.take();
    let buffered = &mut st.wal_buf;
    let mut write_failed = None;
    // A panic in capture is caught here: the buffer must still be dropped and the tail invalidated.
    let captured = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        crate::failpoint::hit("capture.start")
            .map_err(|e| capture::CaptureError::Io(ffi::SQLITE_IOERR, e.to_string()))
            .and_then(|()| {
                capture::capture(st.real, hint, |off, out| match read_buffered(buffered, wal, off, out) {
                    Ok(true) => true,
                    Ok(false) => capture::read_at(wal, off, out),
                    Err(rc) => {
                        write_failed = Some(rc);
                        false
                    }
                })
            })
    }))
    .unwrap_or_else(|_| {
        Err(capture::CaptureError::Io(
            ffi::SQLITE_IOERR,
            "replicated: internal error while capturing the transaction (see the log)".into(),
        ))
    });
    let wal_write_error = |rc: c_int| {
        WriteError::io(
            as_ioerr(rc),
            format!("replicated: writing the transaction's frames to the WAL failed ({rc})"),
        )
    };
    let result = match (captured, write_failed) {
        (Err(_), Some(rc)) => Err(wal_write_error(rc)),
        (Err(capture::CaptureError::TooLarge(n)), None) => Err(WriteError::too_large(n)),
        (Err(capture::CaptureError::Io(code, msg)), None) => Err(WriteError::io(code, msg)),
        // A transaction too large to keep in memory is read again, part by part, while it is
        // proposed: from the file, so all of it goes there first.
        (Ok(cap), _) => match cap.reads_wal_again().then(|| write_buffer(&mut st.wal_buf, wal)) {
            Some(Err(rc)) => Err(wal_write_error(rc)),
            // A panic in here is caught at once, not by `guard`: the tail must still be
            // invalidated, and a pending commit left waiting would be claimed by a committer that
            // is gone.
            _ => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // The frames reach the WAL file while Raft makes the transaction durable.
                db.commit(
                    cap,
                    |off, buf| capture::read_at(wal, off, buf),
                    || {
                        write_buffer(&mut st.wal_buf, wal)
                            .map_err(|rc| format!("writing the transaction's frames to the WAL failed ({rc})"))
                    },
                )
            }))
            .unwrap_or_else(|_| Err(db.commit_panicked())),
        },
    };
    match result {
        Ok((log_id, commit_frame)) => {
            db.begin_publication();
            st.claimed = Some((log_id, commit_frame));
            ffi::SQLITE_OK
        }
        Err(e) => {
            // Never published: whatever is still buffered is dropped.
            st.wal_buf.clear();
            // Invalidate first, then report: a crash after this point must not resurrect it.
            // Where the tail starts must be known: a guess could zero a published frame, and
            // SQLite's next recovery would then drop every frame after it.
            match (capture::read_shm_header(st.real).ok(), capture::wal_page_size(wal)) {
                (Some(h), Some(ps)) => {
                    let rc = capture::invalidate_tail(wal, ps, h.mx_frame as u64 + 1);
                    if rc != ffi::SQLITE_OK {
                        db.poison(format!(
                            "could not invalidate the WAL tail after a failed commit ({rc})"
                        ));
                    }
                }
                _ => db.poison(
                    "could not locate the WAL tail to invalidate after a failed commit (restart the node: \
                     reconciliation removes it)"
                        .into(),
                ),
            }
            report(st, e.code, &e.msg);
            e.code
        }
    }
}

/// Syncs the file under a handle of this VFS itself, which `x_sync` does not do for a replicated
/// database's WAL (the applier makes an installed snapshot durable this way).
///
/// # Safety
/// `f` must be an open file of this VFS.
pub unsafe fn sync_underlying(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    if f.is_null() || !std::ptr::eq((*f).pMethods, &IO_METHODS) {
        return ffi::SQLITE_MISUSE;
    }
    forward!(f, xSync, ffi::SQLITE_IOERR_FSYNC, flags)
}

/// The main state behind a `-wal` handle of a replicated connection.
unsafe fn wal_state<'a>(f: *mut ffi::sqlite3_file) -> Option<&'a mut MainState> {
    let rf = f as *mut ReplFile;
    if (*rf).kind == Kind::Wal && !(*rf).main.is_null() {
        Some(&mut *(*rf).main)
    } else {
        None
    }
}

/// Bytes per write call when the buffer goes to the WAL file.
const WRITE_CHUNK: usize = 64 << 10;

/// Writes `buffered` to the WAL file `wal` (wal_buffer.rs); the buffer is empty afterwards.
unsafe fn write_buffer(buffered: &mut WalBuffer, wal: *mut ffi::sqlite3_file) -> Result<(), c_int> {
    buffered.write_out(|off, bytes| {
        crate::failpoint::hit("wal.write_out").map_err(|_| ffi::SQLITE_IOERR_WRITE)?;
        if wal.is_null() {
            return Err(ffi::SQLITE_IOERR_WRITE);
        }
        let Some(write) = (*(*wal).pMethods).xWrite else {
            return Err(ffi::SQLITE_IOERR_WRITE);
        };
        // The unix VFS writes less than 128 KiB per call (it masks larger sizes).
        for (i, chunk) in bytes.chunks(WRITE_CHUNK).enumerate() {
            let at = off + (i * WRITE_CHUNK) as u64;
            let at = ffi::sqlite3_int64::try_from(at).map_err(|_| ffi::SQLITE_IOERR_WRITE)?;
            match write(wal, chunk.as_ptr() as *const c_void, chunk.len() as c_int, at) {
                ffi::SQLITE_OK => {}
                rc => return Err(rc),
            }
        }
        Ok(())
    })
}

/// An I/O error code for `rc` (SQLITE_FULL from a write-out must not reach a read: the pager
/// treats a read's SQLITE_FULL as a statement failure, not as a broken transaction).
fn as_ioerr(rc: c_int) -> c_int {
    if rc & 0xff == ffi::SQLITE_IOERR {
        rc
    } else {
        ffi::SQLITE_IOERR_WRITE
    }
}

/// A read of the WAL served from `buffered` when it holds all of it (true); a read that only
/// overlaps it writes it out first, so that the file then has those bytes (false).
unsafe fn read_buffered(
    buffered: &mut WalBuffer,
    wal: *mut ffi::sqlite3_file,
    off: u64,
    out: &mut [u8],
) -> Result<bool, c_int> {
    if buffered.read(off, out) {
        return Ok(true);
    }
    if buffered.overlaps(off, out.len()) {
        write_buffer(buffered, wal)?;
    }
    Ok(false)
}

/// `write_buffer` of this connection's buffer, as an SQLite result code.
unsafe fn write_out(st: &mut MainState) -> c_int {
    match write_buffer(&mut st.wal_buf, st.wal) {
        Ok(()) => ffi::SQLITE_OK,
        Err(rc) => rc,
    }
}

/// `rc`, the failure of an operation inside a write transaction, fails the transaction: a commit
/// frame it wrote is then no commit that bypassed the hook (the tripwire in `x_shm_lock`).
fn fails_txn(st: &mut MainState, rc: c_int) -> c_int {
    st.commit_pending = false;
    rc
}

fn report(st: &MainState, code: c_int, msg: &str) {
    sqlite_log(code, msg);
    tracing::warn!("{msg}");
    *st.last_error.lock() = Some(msg.to_string());
}

unsafe extern "C" fn x_file_size(f: *mut ffi::sqlite3_file, out: *mut ffi::sqlite3_int64) -> c_int {
    guard(ffi::SQLITE_IOERR_FSTAT, || {
        if let Some(st) = wal_state(f) {
            let rc = write_out(st);
            if rc != ffi::SQLITE_OK {
                return as_ioerr(fails_txn(st, rc));
            }
        }
        forward!(f, xFileSize, ffi::SQLITE_IOERR_FSTAT, out)
    })
}
unsafe extern "C" fn x_lock(f: *mut ffi::sqlite3_file, l: c_int) -> c_int {
    guard(ffi::SQLITE_IOERR_LOCK, || {
        if broken(f) {
            return ffi::SQLITE_CANTOPEN;
        }
        forward!(f, xLock, ffi::SQLITE_IOERR_LOCK, l)
    })
}
unsafe extern "C" fn x_unlock(f: *mut ffi::sqlite3_file, l: c_int) -> c_int {
    guard(ffi::SQLITE_IOERR_UNLOCK, || {
        forward!(f, xUnlock, ffi::SQLITE_IOERR_UNLOCK, l)
    })
}
unsafe extern "C" fn x_check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    guard(ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, || {
        forward!(f, xCheckReservedLock, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK, out)
    })
}

/// `PRAGMA name = value` → `Some(message)` when the replicated VFS must refuse it.
pub fn refused_pragma(name: &str, value: Option<&str>) -> Option<String> {
    let v = value?
        .trim()
        .trim_matches(|c| c == '\'' || c == '"')
        .to_ascii_lowercase();
    match name.to_ascii_lowercase().as_str() {
        "journal_mode" if v != "wal" => Some(format!(
            "replicated: journal_mode={v} refused: a replicated database must stay in WAL mode"
        )),
        "locking_mode" if v == "exclusive" => {
            Some("replicated: locking_mode=EXCLUSIVE refused: followers must be able to apply".into())
        }
        "synchronous" if synchronous_level(&v) < 3 => Some(format!(
            "replicated: synchronous={v} refused: the commit hook needs synchronous=FULL (or EXTRA)"
        )),
        _ => None,
    }
}

/// The level SQLite's `PRAGMA synchronous=v` sets (pragma.c: `getSafetyLevel`, then
/// `(level + 1) & 7` with 0 meaning OFF): 1 OFF, 2 NORMAL, 3 FULL, 4 EXTRA; 5-7 sync the WAL at
/// commit like FULL. Below 3 a WAL commit is never synced, so it would never reach the commit hook
/// (capture) and would be published without Raft: every spelling of such a level is refused, not
/// only the four usual ones (`on`, `yes`, `9`, an unknown word all mean NORMAL; `no`, `7` OFF).
fn synchronous_level(v: &str) -> u8 {
    let base: u8 = if v.starts_with(|c: char| c.is_ascii_digit()) {
        // sqlite3Atoi: leading zeros skipped, digits up to the first non-digit, more than 10 of
        // them or above i32::MAX give 0; then truncated to u8.
        let digits: String = v
            .trim_start_matches('0')
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let n = match digits.len() {
            0..=10 => digits
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= i32::MAX as u64)
                .unwrap_or(0),
            _ => 0,
        };
        n as u8
    } else {
        match v.to_ascii_lowercase().as_str() {
            "no" | "off" | "false" => 0,
            "full" => 2,
            "extra" => 3,
            _ => 1, // "on", "yes", "true", and any other word
        }
    };
    match base.wrapping_add(1) & 7 {
        0 => 1,
        level => level,
    }
}

unsafe extern "C" fn x_file_control(f: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    guard(ffi::SQLITE_ERROR, || {
        let rf = f as *mut ReplFile;
        if let Some(st) = wal_state(f) {
            let rc = write_out(st);
            if rc != ffi::SQLITE_OK {
                return as_ioerr(fails_txn(st, rc));
            }
        }
        if (*rf).kind == Kind::Main && !(*rf).main.is_null() {
            match op {
                ffi::SQLITE_FCNTL_PRAGMA => {
                    let az = arg as *mut *mut c_char;
                    let name = cstr(*az.add(1)).unwrap_or_default();
                    let value = cstr(*az.add(2));
                    if let Some(msg) = refused_pragma(&name, value.as_deref()) {
                        *az = sqlite_string(&msg);
                        sqlite_log(ffi::SQLITE_ERROR, &msg);
                        return ffi::SQLITE_ERROR;
                    }
                }
                ffi::SQLITE_FCNTL_CKPT_START => {
                    let st = &mut *(*rf).main;
                    if let Some(db) = &st.db {
                        // The checkpoint is about to copy frames into the database file: make
                        // the applied-state records that describe them durable first.
                        st.checkpoint_refused = db.on_checkpoint_start().err();
                        // Nor may it copy frames this node did not write (check_wal_end).
                        if st.checkpoint_refused.is_none() {
                            let real = st.real;
                            if let Err(why) = db.check_wal_end(|| shm_end(real), false) {
                                st.checkpoint_refused = Some(format!("replicated: {why}"));
                            }
                        }
                        if let Some(e) = &st.checkpoint_refused {
                            sqlite_log(ffi::SQLITE_IOERR, &format!("{e}: the checkpoint is refused"));
                        }
                    }
                }
                ffi::SQLITE_FCNTL_CKPT_DONE => (*(*rf).main).checkpoint_refused = None,
                // A refused checkpoint must not change the file at all: with mmap on, the hint
                // that follows CKPT_START would extend it to the size it was about to copy.
                ffi::SQLITE_FCNTL_SIZE_HINT if (*(*rf).main).checkpoint_refused.is_some() => {
                    return ffi::SQLITE_OK;
                }
                _ => {}
            }
        }
        forward!(f, xFileControl, ffi::SQLITE_NOTFOUND, op, arg)
    })
}
unsafe extern "C" fn x_sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    guard(4096, || forward!(f, xSectorSize, 4096))
}
unsafe extern "C" fn x_device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    guard(0, || forward!(f, xDeviceCharacteristics, 0))
}
unsafe extern "C" fn x_shm_map(
    f: *mut ffi::sqlite3_file,
    pg: c_int,
    sz: c_int,
    ext: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    guard(ffi::SQLITE_IOERR_SHMMAP, || {
        if broken(f) {
            return ffi::SQLITE_CANTOPEN;
        }
        forward!(f, xShmMap, ffi::SQLITE_IOERR_SHMMAP, pg, sz, ext, pp)
    })
}

unsafe extern "C" fn x_shm_lock(f: *mut ffi::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    guard(ffi::SQLITE_IOERR_SHMLOCK, || {
        let rf = f as *mut ReplFile;
        if (*rf).kind != Kind::Main || (*rf).main.is_null() {
            return forward!(f, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset, n, flags);
        }
        let st = &mut *(*rf).main;
        if st.config_error.is_some() {
            return ffi::SQLITE_CANTOPEN;
        }
        let lock = flags & ffi::SQLITE_SHM_LOCK != 0;
        let excl = flags & ffi::SQLITE_SHM_EXCLUSIVE != 0;
        let write_start = !st.internal && st.locks.is_write_txn_start(offset, n, lock, excl);
        if write_start {
            if let Some(db) = st.db.clone() {
                if let Err(e) = db.begin_write() {
                    report(st, e.code, &e.msg);
                    return e.code;
                }
            }
        }
        if !lock && excl && offset == 0 {
            if let (Some((log_id, frame)), Some(db)) = (st.claimed.take(), st.db.clone()) {
                // Still under WAL_WRITE_LOCK: SQLite has published the commit (or failed to).
                match capture::read_shm_header(st.real) {
                    Ok(h) if h.mx_frame as u64 >= frame => {
                        db.note_wal_end(Some((h.salt, h.mx_frame)));
                        db.set_published(log_id, log_id.index)
                    }
                    _ => {
                        db.note_wal_end(None);
                        db.poison(format!(
                            "log entry {} was committed in the cluster but SQLite did not publish it here; \
                         restart this node to replay it",
                            log_id.index
                        ))
                    }
                }
            }
        }
        if !lock && excl && offset == 0 {
            // Normally empty: the commit wrote the buffer out. Frames of a transaction that
            // rolled back are never published; they reach the file as they would have anyway.
            st.buffering = false;
            let rc = write_out(st);
            if rc != ffi::SQLITE_OK {
                sqlite_log(
                    rc,
                    "replicated: writing buffered WAL frames at the end of a write transaction failed",
                );
            }
        }
        let rc = forward!(f, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset, n, flags);
        if rc == ffi::SQLITE_OK && write_start {
            if let Err(code) = check_wal_end(st) {
                let unlock = ffi::SQLITE_SHM_UNLOCK | ffi::SQLITE_SHM_EXCLUSIVE;
                forward!(f, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset, n, unlock);
                return code;
            }
            st.buffering = st.db.is_some() && !st.wal.is_null();
        }
        if rc == ffi::SQLITE_OK {
            st.locks.record(offset, n, lock, excl);
            if !lock && excl && offset == 0 {
                if st.commit_pending && !st.internal {
                    // Tripwire: a commit frame was written but no commit sync was seen, so a
                    // transaction was published without replication (synchronous below FULL?).
                    if let Some(db) = &st.db {
                        db.poison("a transaction was committed without passing the commit hook".into());
                    }
                }
                st.commit_pending = false;
            }
        }
        rc
    })
}
/// A write transaction has just taken WAL_WRITE_LOCK: no process but this node may have moved the
/// wal-index since this node last published (`Database::check_wal_end`). Err(code) after
/// poisoning the node and reporting why.
unsafe fn check_wal_end(st: &MainState) -> Result<(), c_int> {
    let Some(db) = st.db.as_ref() else {
        return Ok(());
    };
    db.check_wal_end(|| shm_end(st.real), true).map_err(|why| {
        report(st, crate::node::IOERR_REPLICATION, &format!("replicated: {why}"));
        crate::node::IOERR_REPLICATION
    })
}
/// The wal-index's `(salt, mxFrame)` as `Database::check_wal_end` reads it; None without a map.
///
/// # Safety
/// `real` must be an open main-database file of the wrapped VFS.
unsafe fn shm_end(real: *mut ffi::sqlite3_file) -> Option<([u8; 8], u32)> {
    capture::read_shm_header(real).ok().map(|h| (h.salt, h.mx_frame))
}
unsafe extern "C" fn x_shm_barrier(f: *mut ffi::sqlite3_file) {
    guard((), || {
        let rf = f as *mut ReplFile;
        if (*rf).kind == Kind::Main && !(*rf).main.is_null() {
            let st = &mut *(*rf).main;
            if st.buffering && st.commit_pending {
                // SQLite is publishing a commit that passed no commit sync (the tripwire poisons
                // the node at the unlock): at least its frames must be in the file before the
                // header that shows them (walIndexWriteHdr calls this between its two copies).
                let _ = write_out(st);
            }
        }
        let r = real(f);
        if let Some(m) = (*(*r).pMethods).xShmBarrier {
            m(r)
        }
    })
}
unsafe extern "C" fn x_shm_unmap(f: *mut ffi::sqlite3_file, del: c_int) -> c_int {
    guard(ffi::SQLITE_IOERR, || forward!(f, xShmUnmap, ffi::SQLITE_OK, del))
}
unsafe extern "C" fn x_fetch(
    f: *mut ffi::sqlite3_file,
    off: ffi::sqlite3_int64,
    n: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    guard(ffi::SQLITE_IOERR_MMAP, || {
        if rm(f).iVersion < 3 || broken(f) {
            *pp = ptr::null_mut();
            return ffi::SQLITE_OK;
        }
        forward!(f, xFetch, ffi::SQLITE_OK, off, n, pp)
    })
}
unsafe extern "C" fn x_unfetch(f: *mut ffi::sqlite3_file, off: ffi::sqlite3_int64, p: *mut c_void) -> c_int {
    guard(ffi::SQLITE_IOERR_MMAP, || {
        if rm(f).iVersion < 3 {
            return ffi::SQLITE_OK;
        }
        forward!(f, xUnfetch, ffi::SQLITE_OK, off, p)
    })
}

#[cfg(test)]
mod tests {
    use super::refused_pragma;

    #[test]
    fn pragma_refusals() {
        assert!(refused_pragma("journal_mode", Some("delete")).is_some());
        assert!(refused_pragma("JOURNAL_MODE", Some("'memory'")).is_some());
        assert!(refused_pragma("journal_mode", Some("WAL")).is_none());
        assert!(refused_pragma("journal_mode", None).is_none(), "a query is fine");
        assert!(refused_pragma("locking_mode", Some("EXCLUSIVE")).is_some());
        assert!(refused_pragma("locking_mode", Some("normal")).is_none());
        // Every spelling SQLite reads as OFF or NORMAL (pragma.c getSafetyLevel).
        for v in [
            "0",
            "off",
            "1",
            "NORMAL",
            "on",
            "yes",
            "true",
            "no",
            "false",
            "01",
            "-1",
            "7",
            "8",
            "9",
            "15",
            "256",
            "257",
            "",
            "fast",
            "99999999999",
            "2147483648",
        ] {
            assert!(refused_pragma("synchronous", Some(v)).is_some(), "{v}");
        }
        for v in ["2", "full", "FULL", "3", "extra", "002", "4", "5", "6", "258", "2x"] {
            assert!(refused_pragma("synchronous", Some(v)).is_none(), "{v}");
        }
        assert!(refused_pragma("cache_size", Some("10")).is_none());
    }
}
