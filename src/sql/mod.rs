//! The admin surface: `replicated_*` SQL functions, registered on every connection of a process
//! that loaded the extension (DESIGN §3.2).
//!
//! A function finds its database through the connection's main (or named) schema file: if that
//! file belongs to the replicated VFS, its handle knows the node. Functions never block longer
//! than the node's `timeout_ms` and never panic across the FFI boundary.

use crate::ffi::{cstr, guard};
use crate::node::Database;
use libsqlite3_sys as ffi;
use std::ffi::{c_int, c_void, CString};
use std::sync::Arc;

unsafe fn result_text(ctx: *mut ffi::sqlite3_context, s: &str) {
    let c = CString::new(s.replace('\0', " ")).unwrap_or_default();
    ffi::sqlite3_result_text(ctx, c.as_ptr(), -1, ffi::SQLITE_TRANSIENT());
}

unsafe fn result_error(ctx: *mut ffi::sqlite3_context, s: &str) {
    let c = CString::new(s.replace('\0', " ")).unwrap_or_default();
    ffi::sqlite3_result_error(ctx, c.as_ptr(), -1);
}

/// The schema named by argument `i` (default "main").
unsafe fn schema_arg(argc: c_int, argv: *mut *mut ffi::sqlite3_value, i: usize) -> String {
    if (argc as usize) > i {
        let v = *argv.add(i);
        if let Some(s) = cstr(ffi::sqlite3_value_text(v) as *const _) {
            return s;
        }
    }
    "main".into()
}

/// The replicated main-file state of `schema` on the function's connection.
unsafe fn file_state<'a>(ctx: *mut ffi::sqlite3_context, schema: &str) -> Result<&'a crate::vfs::MainState, String> {
    let db = ffi::sqlite3_context_db_handle(ctx);
    let z = CString::new(schema).map_err(|e| e.to_string())?;
    let mut f: *mut ffi::sqlite3_file = std::ptr::null_mut();
    let rc = ffi::sqlite3_file_control(
        db,
        z.as_ptr(),
        ffi::SQLITE_FCNTL_FILE_POINTER,
        &mut f as *mut _ as *mut c_void,
    );
    if rc != ffi::SQLITE_OK {
        return Err(format!("replicated: no database named '{schema}'"));
    }
    crate::vfs::main_state(f).ok_or_else(|| {
        format!("replicated: database '{schema}' is not open through the replicated VFS (use a file: URI with vfs=replicated)")
    })
}

unsafe fn node_of(ctx: *mut ffi::sqlite3_context, schema: &str) -> Result<Arc<Database>, String> {
    let st = file_state(ctx, schema)?;
    match (&st.db, &st.config_error) {
        (Some(db), _) => Ok(db.clone()),
        (None, Some(e)) => Err(e.clone()),
        (None, None) => Err("replicated: no node for this database".into()),
    }
}

unsafe extern "C" fn fn_status(ctx: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value) {
    guard((), || {
        let schema = schema_arg(argc, argv, 0);
        match node_of(ctx, &schema) {
            Ok(db) => result_text(ctx, &db.status_json()),
            Err(e) => result_error(ctx, &e),
        }
    })
}

unsafe extern "C" fn fn_leader(ctx: *mut ffi::sqlite3_context, _argc: c_int, _argv: *mut *mut ffi::sqlite3_value) {
    guard((), || match node_of(ctx, "main") {
        Ok(db) => match db.leader() {
            Some(l) => result_text(ctx, &l),
            None => ffi::sqlite3_result_null(ctx),
        },
        Err(e) => result_error(ctx, &e),
    })
}

unsafe extern "C" fn fn_sync(ctx: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value) {
    guard((), || match node_of(ctx, "main") {
        Ok(db) => {
            let ms = if argc >= 1 {
                ffi::sqlite3_value_int64(*argv)
            } else {
                db.cfg.timeout_ms as i64
            };
            if !(1..=3_600_000).contains(&ms) {
                return result_error(ctx, "replicated_sync: timeout_ms must be between 1 and 3600000");
            }
            match db.sync(std::time::Duration::from_millis(ms as u64)) {
                Ok(i) => ffi::sqlite3_result_int64(ctx, i as i64),
                Err(e) => result_error(ctx, &e),
            }
        }
        Err(e) => result_error(ctx, &e),
    })
}

unsafe fn text_arg(argv: *mut *mut ffi::sqlite3_value, i: usize) -> Option<String> {
    cstr(ffi::sqlite3_value_text(*argv.add(i)) as *const _)
}

/// Membership changes may wait for a new node to catch up: at least a minute, more if configured.
fn admin_timeout(db: &Database) -> std::time::Duration {
    std::time::Duration::from_millis(db.cfg.timeout_ms.max(60_000))
}

unsafe extern "C" fn fn_add_node(ctx: *mut ffi::sqlite3_context, argc: c_int, argv: *mut *mut ffi::sqlite3_value) {
    guard((), || match node_of(ctx, "main") {
        Ok(db) => {
            let id = ffi::sqlite3_value_int64(*argv);
            let Some(addr) = text_arg(argv, 1) else {
                return result_error(ctx, "replicated_add_node(id, 'host:port' [, voter]): address missing");
            };
            let voter = argc < 3 || ffi::sqlite3_value_int64(*argv.add(2)) != 0;
            if id <= 0 {
                return result_error(ctx, "replicated_add_node: node id must be > 0");
            }
            match db.add_node(id as u64, &addr, voter, admin_timeout(&db)) {
                Ok(i) => ffi::sqlite3_result_int64(ctx, i as i64),
                Err(e) => result_error(ctx, &e),
            }
        }
        Err(e) => result_error(ctx, &e),
    })
}

unsafe extern "C" fn fn_remove_node(ctx: *mut ffi::sqlite3_context, _argc: c_int, argv: *mut *mut ffi::sqlite3_value) {
    guard((), || match node_of(ctx, "main") {
        Ok(db) => {
            let id = ffi::sqlite3_value_int64(*argv);
            if id <= 0 {
                return result_error(ctx, "replicated_remove_node: node id must be > 0");
            }
            match db.remove_node(id as u64, admin_timeout(&db)) {
                Ok(i) => ffi::sqlite3_result_int64(ctx, i as i64),
                Err(e) => result_error(ctx, &e),
            }
        }
        Err(e) => result_error(ctx, &e),
    })
}

unsafe extern "C" fn fn_transfer_leader(
    ctx: *mut ffi::sqlite3_context,
    _argc: c_int,
    argv: *mut *mut ffi::sqlite3_value,
) {
    guard((), || match node_of(ctx, "main") {
        Ok(db) => {
            let id = ffi::sqlite3_value_int64(*argv);
            if id <= 0 {
                return result_error(ctx, "replicated_transfer_leader: node id must be > 0");
            }
            let timeout = std::time::Duration::from_millis(db.cfg.timeout_ms.max(5000));
            match db.transfer_leader(id as u64, timeout) {
                Ok(i) => ffi::sqlite3_result_int64(ctx, i as i64),
                Err(e) => result_error(ctx, &e),
            }
        }
        Err(e) => result_error(ctx, &e),
    })
}

unsafe extern "C" fn fn_last_error(ctx: *mut ffi::sqlite3_context, _argc: c_int, _argv: *mut *mut ffi::sqlite3_value) {
    guard((), || match file_state(ctx, "main") {
        Ok(st) => {
            let own = st.last_error.lock().clone();
            let node = st.db.as_ref().and_then(|d| d.last_error_of_node());
            match own.or(node).or_else(|| st.config_error.clone()) {
                Some(e) => result_text(ctx, &e),
                None => ffi::sqlite3_result_null(ctx),
            }
        }
        Err(_) => ffi::sqlite3_result_null(ctx),
    })
}

type SqlFn = unsafe extern "C" fn(*mut ffi::sqlite3_context, c_int, *mut *mut ffi::sqlite3_value);

/// Registers the functions on `db`. Idempotent (re-registering replaces).
///
/// # Safety
/// `db` is a live connection and the API table is initialised.
pub unsafe fn register_functions(db: *mut ffi::sqlite3) -> Result<(), String> {
    let fns: &[(&std::ffi::CStr, c_int, SqlFn)] = &[
        (c"replicated_status", 0, fn_status),
        (c"replicated_status", 1, fn_status),
        (c"replicated_leader", 0, fn_leader),
        (c"replicated_add_node", 2, fn_add_node),
        (c"replicated_add_node", 3, fn_add_node),
        (c"replicated_remove_node", 1, fn_remove_node),
        (c"replicated_transfer_leader", 1, fn_transfer_leader),
        (c"replicated_sync", 0, fn_sync),
        (c"replicated_sync", 1, fn_sync),
        (c"replicated_last_error", 0, fn_last_error),
    ];
    for (name, n, f) in fns {
        let rc = ffi::sqlite3_create_function_v2(
            db,
            name.as_ptr(),
            *n,
            ffi::SQLITE_UTF8,
            std::ptr::null_mut(),
            Some(*f),
            None,
            None,
            None,
        );
        if rc != ffi::SQLITE_OK {
            return Err(format!("replicated: cannot register {} ({rc})", name.to_string_lossy()));
        }
    }
    Ok(())
}
