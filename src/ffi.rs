//! Small helpers for talking to the host's SQLite through the API table, and for keeping Rust
//! panics from crossing the FFI boundary.
//!
//! Every call into SQLite made by this crate goes through libsqlite3-sys's `loadable_extension`
//! wrappers, which dispatch through the `sqlite3_api_routines` table the host handed to
//! `sqlite3_replicated_init`. This crate never links a libsqlite3 of its own.

use libsqlite3_sys as ffi;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`, turning a panic into `on_panic` (and a log line). Every `extern "C"` entry uses it:
/// since Rust 1.81 a panic unwinding out of an `extern "C"` function aborts the host process.
pub fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(e) => {
            let what = e
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| e.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!("replicated: internal error (panic caught at the FFI boundary): {what}");
            on_panic
        }
    }
}

fn cstring_lossy(s: &str) -> CString {
    CString::new(s.replace('\0', " ")).unwrap_or_default()
}

/// `sqlite3_log(code, "%s", msg)`: reaches the host's SQLITE_CONFIG_LOG callback (the sqlite3
/// shell and most drivers show nothing unless one is installed; we also log through tracing).
pub fn sqlite_log(code: i32, msg: &str) {
    let m = cstring_lossy(msg);
    // SAFETY: the API table is initialised before any code path that logs; "%s" consumes one arg.
    unsafe { ffi::sqlite3_log(code, c"%s".as_ptr(), m.as_ptr()) };
}

/// A copy of `s` allocated with `sqlite3_malloc`, for out-parameters SQLite frees with sqlite3_free.
pub fn sqlite_string(s: &str) -> *mut c_char {
    let m = cstring_lossy(s);
    let bytes = m.as_bytes_with_nul();
    // SAFETY: allocation through the host's allocator; we copy exactly `bytes.len()` bytes.
    unsafe {
        let p = ffi::sqlite3_malloc64(bytes.len() as u64) as *mut c_char;
        if !p.is_null() {
            std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, p, bytes.len());
        }
        p
    }
}

/// Borrowed C string → Rust string (lossy), `None` for NULL.
///
/// # Safety
/// `p` must be NULL or a valid NUL-terminated string that outlives the call.
pub unsafe fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        Some(std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}
