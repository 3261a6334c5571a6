/*
 * replicated.h — use the sqlite-replicated extension (libreplicated.so) from a C or C++ program.
 *
 * libreplicated is a SQLite loadable extension. Its entry point registers a VFS named "replicated"
 * and the SQL functions replicated_status(), replicated_leader() and replicated_last_error()
 * (README.md lists what each build provides). It calls SQLite only through the sqlite3_api_routines table it is handed,
 * so it works with whichever SQLite your program uses (the system libsqlite3, or an amalgamation
 * compiled into the program) as long as that SQLite is at least 3.34.1 and was not built with
 * SQLITE_OMIT_LOAD_EXTENSION.
 *
 * BUILD
 *   gcc -I c_shim app.c -L target/release -Wl,-rpath,$PWD/target/release -lreplicated -lsqlite3
 * (-lreplicated picks target/release/libreplicated.so; the rpath lets the program find it at run time
 * without LD_LIBRARY_PATH. Prefer the .so to the staticlib libreplicated.a: two Rust staticlibs in one
 * binary can clash on std symbols.) A program that compiles sqlite3.c itself drops -lsqlite3.
 *
 * USE
 *   sqlite3_replicated_register();                  // 1. once, before anything else
 *   sqlite3_open(":memory:", &boot);                // 2. one plain connection: this runs the extension's
 *   sqlite3_close(boot);                            //    init, which registers the "replicated" VFS
 *   sqlite3_open_v2("file:app.db?vfs=replicated&node=1&peers=1@10.0.0.1:7001&secret_file=/etc/app/key",
 *                   &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI, NULL);   // 3.
 *
 * WHY STEP 2: SQLite runs auto-extensions at the END of sqlite3_open*(), after it has looked up the
 * VFS named by the URI. So the first connection opened after sqlite3_replicated_register() must not
 * name vfs=replicated: that open fails with "no such vfs: replicated" (SQLITE_ERROR), and since a
 * failed open runs no auto-extension, every further open naming the VFS fails the same way until
 * some connection that does not name it has been opened. Open (and close) any plain connection
 * first, e.g. ":memory:". This was checked against SQLite 3.40.1 with the built library (see
 * tests/test_hosts.py::test_c_auto_extension_ordering). After that first plain open the VFS stays
 * registered for the life of the process (the init returns SQLITE_OK_LOAD_PERMANENTLY and the library
 * is linked -z nodelete), whether or not the bootstrap connection is closed; every later connection
 * runs the (idempotent) init too, which gives it the replicated_* SQL functions.
 *
 * Alternative without the auto-extension: sqlite3_enable_load_extension(boot, 1), then
 * sqlite3_load_extension(boot, "target/release/libreplicated", NULL, &err) on a plain connection,
 * then open the URI (no -lreplicated needed at link time). Either way the replicated_* SQL functions
 * are registered on every connection opened afterwards (DESIGN.md §3.2).
 *
 * URI PARAMETERS (DESIGN.md §3.1; open with SQLITE_OPEN_URI, or sqlite3_config(SQLITE_CONFIG_URI, 1))
 *   vfs=replicated                 required
 *   node=ID                        this node's id (integer > 0), required
 *   peers=ID@HOST:PORT,...         initial voters including this node, required on first start
 *   listen=HOST:PORT               UDP address to bind (default: this node's entry in peers)
 *   secret=S | secret_file=PATH    shared cluster secret (or tls_ca, tls_cert, tls_key for mutual TLS)
 *   ack=apply|commit               when a commit returns (default apply)
 *   timeout_ms=N                   longest a commit waits for its quorum (default 5000)
 *   data=DIR                       Raft log/vote/snapshot directory (default <db>-raft/)
 *   election_ms=N, heartbeat_ms=N  Raft timing
 *   config=PATH                    a TOML file with the same keys (the URI wins); or $REPLICATED_CONFIG
 * Unknown keys and bad values fail the open with a message naming the key.
 */
#ifndef SQLITE_REPLICATED_H
#define SQLITE_REPLICATED_H

#include <sqlite3.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The extension's entry point for sqlite3_load_extension() (SQLite derives this name from
 * "libreplicated"). Returns SQLITE_OK_LOAD_PERMANENTLY (256) on success. Idempotent. Do not call it
 * yourself: pApi must be SQLite's own routine table, which only SQLite can pass. */
int sqlite3_replicated_init(sqlite3 *db, char **pzErrMsg, const struct sqlite3_api_routines *pApi);

/* The same initialisation as an auto-extension: returns SQLITE_OK. Use this one, not
 * sqlite3_replicated_init, with sqlite3_auto_extension(): SQLite's auto-extension loop treats any
 * non-zero return, SQLITE_OK_LOAD_PERMANENTLY included, as "automatic extension loading failed".
 * (Checked on 3.40.1: with sqlite3_replicated_init registered, every open leaves that error in
 * sqlite3_errmsg() and sqlite3_extended_errcode() == 256, an open with SQLITE_OPEN_EXRESCODE fails
 * with 256, and auto-extensions registered after it stop running. A plain open still returns
 * SQLITE_OK only because 256 & 0xff == 0.) The extension also registers this function itself the
 * first time it is loaded, so every later connection of the process gets the SQL functions. */
int sqlite3_replicated_auto_init(sqlite3 *db, char **pzErrMsg, const struct sqlite3_api_routines *pApi);

/* Registers the extension as an auto-extension of the SQLite this program links: every connection
 * opened from now on runs the (idempotent) initialisation. Registering twice is a no-op. Returns
 * SQLITE_OK or an error code (SQLITE_NOMEM). Remember: the first connection opened after this must
 * not name vfs=replicated (see WHY STEP 2 above). */
static inline int sqlite3_replicated_register(void)
{
    return sqlite3_auto_extension((void (*)(void))sqlite3_replicated_auto_init);
}

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SQLITE_REPLICATED_H */
