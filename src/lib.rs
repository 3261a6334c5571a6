//! sqlite-replicated: a SQLite loadable extension whose VFS, `replicated`, makes a database highly
//! available by replicating every committed WAL transaction through Raft.
//!
//! Data path (one module per concern, arrows point down):
//! ```text
//! vfs/      intercept: wrap the OS VFS, capture a transaction at the WAL commit sync
//! node.rs   the hub: one Raft group per database; write gating; the blocking commit
//! net/      carry: QUIC transport (quinn + rustls), authenticated by secret or mutual TLS
//! raft/     agree: openraft glue — log store (fsync'd segments), state machine, applied record
//! apply.rs follower apply: SQLite's writer protocol on the WAL and wal-index
//! reconcile the restart path: make the WAL agree with the Raft log before anyone reads
//! wal/      pure formats: WAL header, frames, checksums
//! sql/      the admin surface (replicated_* functions)
//! config    URI / TOML → validated Config
//! ```
//! This file holds only the entry points. Both are `extern "C"` and catch panics.

pub mod apply;
pub mod config;
pub mod failpoint;
pub mod ffi;
pub mod net;
pub mod node;
pub mod raft;
pub mod reconcile;
pub mod runtime;
pub mod sql;
pub mod vfs;
pub mod wal;

use libsqlite3_sys as sys;
use std::ffi::{c_char, c_int};

/// Oldest SQLite this extension accepts (the API table of libsqlite3-sys 0.38).
pub const MIN_SQLITE_VERSION: i32 = 3_034_001;

unsafe fn init(db: *mut sys::sqlite3, pz_err: *mut *mut c_char, p_api: *mut sys::sqlite3_api_routines) -> c_int {
    if p_api.is_null() {
        // A host built without extension support hands no API table: nothing can be called.
        return sys::SQLITE_ERROR;
    }
    let set_err = |msg: &str| {
        if !pz_err.is_null() {
            *pz_err = ffi::sqlite_string(msg);
        }
    };
    if let Err(e) = sys::rusqlite_extension_init2(p_api) {
        let msg = match e {
            sys::InitError::VersionMismatch { runtime, .. } => format!(
                "replicated: this SQLite is {}.{}.{}; the extension needs SQLite 3.34.1 or newer",
                runtime / 1_000_000,
                runtime / 1000 % 1000,
                runtime % 1000
            ),
            other => format!("replicated: cannot initialise the SQLite API table: {other:?}"),
        };
        // init2 stores malloc first, so sqlite_string may work; if not, the code still tells.
        set_err(&msg);
        return sys::SQLITE_ERROR;
    }
    if let Err(e) = vfs::register() {
        set_err(&e);
        return sys::SQLITE_ERROR;
    }
    static AUTO: std::sync::Once = std::sync::Once::new();
    AUTO.call_once(|| {
        let f: unsafe extern "C" fn(*mut sys::sqlite3, *mut *mut c_char, *mut sys::sqlite3_api_routines) -> c_int =
            sqlite3_replicated_auto_init;
        // SAFETY: SQLite calls auto-extensions with exactly this signature.
        let f: unsafe extern "C" fn() = std::mem::transmute(f as *const ());
        sys::sqlite3_auto_extension(Some(f));
    });
    if db.is_null() {
        return sys::SQLITE_OK;
    }
    if let Err(e) = sql::register_functions(db) {
        set_err(&e);
        return sys::SQLITE_ERROR;
    }
    // A replicated database on this connection: report a failed configuration as the open's
    // error, and pin synchronous=FULL (the commit hook lives in the commit sync).
    let mut f: *mut sys::sqlite3_file = std::ptr::null_mut();
    let rc = sys::sqlite3_file_control(
        db,
        c"main".as_ptr(),
        sys::SQLITE_FCNTL_FILE_POINTER,
        &mut f as *mut _ as *mut std::ffi::c_void,
    );
    if rc == sys::SQLITE_OK {
        if let Some(st) = vfs::main_state(f) {
            if let Some(e) = &st.config_error {
                set_err(e);
                return sys::SQLITE_ERROR;
            }
            // The pragma reads the schema, so it can meet the node's applier holding the WAL
            // locks (entries applied as the node starts), and the application has had no chance
            // to set a busy handler yet: wait for the lock here, a bounded time.
            let deadline = std::time::Instant::now() + PRAGMA_BUSY_WAIT;
            let rc = loop {
                let rc = sys::sqlite3_exec(
                    db,
                    c"PRAGMA main.synchronous=FULL".as_ptr(),
                    None,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
                if rc & 0xff != sys::SQLITE_BUSY || std::time::Instant::now() >= deadline {
                    break rc;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            };
            if rc != sys::SQLITE_OK {
                let msg = ffi::cstr(sys::sqlite3_errmsg(db)).unwrap_or_default();
                set_err(&format!("replicated: cannot set synchronous=FULL: {msg}"));
                return rc;
            }
        }
    }
    sys::SQLITE_OK
}

/// How long opening a replicated database waits for the WAL locks to set synchronous=FULL.
const PRAGMA_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Entry point for `sqlite3_load_extension` / `.load` / `load_extension()`. Registers the VFS and
/// the SQL functions and stays loaded for the life of the process (SQLITE_OK_LOAD_PERMANENTLY).
///
/// # Safety
/// Called by SQLite with a live connection and its API table.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_replicated_init(
    db: *mut sys::sqlite3,
    pz_err: *mut *mut c_char,
    p_api: *mut sys::sqlite3_api_routines,
) -> c_int {
    ffi::guard(sys::SQLITE_ERROR, || match init(db, pz_err, p_api) {
        sys::SQLITE_OK => sys::SQLITE_OK_LOAD_PERMANENTLY,
        rc => rc,
    })
}

/// Entry point for `sqlite3_auto_extension` (what `sqlite3_replicated_register()` in
/// `c_shim/replicated.h` registers): same work, but returns SQLITE_OK, because SQLite treats any
/// other return of an auto-extension — SQLITE_OK_LOAD_PERMANENTLY included — as a failed open.
///
/// # Safety
/// Called by SQLite with a live connection and its API table.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_replicated_auto_init(
    db: *mut sys::sqlite3,
    pz_err: *mut *mut c_char,
    p_api: *mut sys::sqlite3_api_routines,
) -> c_int {
    ffi::guard(sys::SQLITE_ERROR, || init(db, pz_err, p_api))
}
