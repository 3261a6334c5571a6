/*
 * demo.c — use libreplicated from C through c_shim/replicated.h.
 *
 * Build (from the repository root):
 *   gcc -Wall -I c_shim examples/c/demo.c -o demo \
 *       -L target/release -Wl,-rpath,$PWD/target/release -lreplicated -lsqlite3
 * Run:
 *   ./demo 'file:/tmp/app.db?vfs=replicated&node=1&peers=1@127.0.0.1:7001&secret=change-me-16-chars-min' [write|read] [ROWS]
 *
 * write (default): creates table items, inserts ROWS rows (default 3; all but one in one explicit
 * transaction, the last in autocommit mode), reads them back. read: only reads.
 * Prints "row <id> <val>" per row, "count <n>", then "status <json>" (replicated_status(), after
 * waiting up to 10 s for the node to be leader). Returns non-zero on any error.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep, strdup under -std=c99 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "replicated.h"

static int fail(sqlite3 *db, const char *what)
{
    fprintf(stderr, "error: %s: %s (code %d)\n", what, db ? sqlite3_errmsg(db) : "out of memory",
            db ? sqlite3_extended_errcode(db) : SQLITE_NOMEM);
    if (db) {
        /* replicated_last_error() says why a replicated commit failed (e.g. which node leads) */
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, "SELECT replicated_last_error()", -1, &st, NULL) == SQLITE_OK &&
            sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
            fprintf(stderr, "replicated_last_error: %s\n", (const char *)sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
    }
    return 1;
}

static int exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "error: %s: %s\n", sql, err ? err : "?");
        sqlite3_free(err);
        return fail(db, "exec");
    }
    return 0;
}

static int insert(sqlite3 *db, int i)
{
    sqlite3_stmt *st = NULL;
    char val[32];
    snprintf(val, sizeof val, "c-%d", i);
    if (sqlite3_prepare_v2(db, "INSERT INTO items(val) VALUES (?)", -1, &st, NULL) != SQLITE_OK)
        return fail(db, "prepare insert");
    sqlite3_bind_text(st, 1, val, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_DONE) {
        sqlite3_finalize(st);
        return fail(db, "insert");
    }
    sqlite3_finalize(st);
    return 0;
}

/* true if the JSON object text has "role":"leader" (tolerates whitespace around the colon) */
static int is_leader(const char *json)
{
    const char *p = strstr(json, "\"role\"");
    if (!p)
        return 0;
    p += 6;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ':')
        p++;
    return strncmp(p, "\"leader\"", 8) == 0;
}

int main(int argc, char **argv)
{
    sqlite3 *boot = NULL, *db = NULL;
    sqlite3_stmt *st = NULL;
    const char *uri, *mode = "write";
    int rows = 3, n = 0, rc;

    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s URI [write|read] [ROWS]\n", argv[0]);
        return 2;
    }
    uri = argv[1];
    if (argc > 2)
        mode = argv[2];
    if (argc > 3)
        rows = atoi(argv[3]);
    if (strcmp(mode, "write") != 0 && strcmp(mode, "read") != 0) {
        fprintf(stderr, "mode must be write or read\n");
        return 2;
    }

    /* 1. every connection opened from now on runs sqlite3_replicated_init */
    if (sqlite3_replicated_register() != SQLITE_OK) {
        fprintf(stderr, "error: sqlite3_auto_extension failed\n");
        return 1;
    }
    /* 2. auto-extensions run after the VFS lookup: a plain connection first registers the VFS */
    if (sqlite3_open(":memory:", &boot) != SQLITE_OK) {
        fail(boot, "open :memory: (loading the extension)");
        sqlite3_close(boot);
        return 1;
    }
    sqlite3_close(boot); /* the VFS stays registered (SQLITE_OK_LOAD_PERMANENTLY) */

    /* 3. the replicated database */
    rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI, NULL);
    if (rc != SQLITE_OK) {
        fail(db, "open");
        sqlite3_close(db);
        return 1;
    }

    if (strcmp(mode, "write") == 0) {
        if (exec(db, "CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, val TEXT NOT NULL)") ||
            exec(db, "BEGIN"))
            goto err;
        for (int i = 1; i < rows; i++)
            if (insert(db, i))
                goto err;
        if (exec(db, "COMMIT"))
            goto err;
        if (rows > 0 && insert(db, rows))
            goto err;
    }

    if (sqlite3_prepare_v2(db, "SELECT id, val FROM items ORDER BY id", -1, &st, NULL) != SQLITE_OK) {
        fail(db, "prepare select");
        goto err;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        printf("row %lld %s\n", (long long)sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1));
        n++;
    }
    if (rc != SQLITE_DONE) {
        fail(db, "select");
        goto err;
    }
    sqlite3_finalize(st);
    st = NULL;
    printf("count %d\n", n);

    /* a one-node cluster elects itself within a couple of seconds: wait up to 10 s for leader */
    {
        char *status = NULL;
        struct timespec pause = {0, 100 * 1000 * 1000};
        for (int tries = 0; tries < 100; tries++) {
            if (sqlite3_prepare_v2(db, "SELECT replicated_status()", -1, &st, NULL) != SQLITE_OK) {
                fail(db, "prepare replicated_status()");
                goto err;
            }
            if (sqlite3_step(st) != SQLITE_ROW || !sqlite3_column_text(st, 0)) {
                fail(db, "replicated_status()");
                goto err;
            }
            free(status);
            status = strdup((const char *)sqlite3_column_text(st, 0));
            sqlite3_finalize(st);
            st = NULL;
            if (!status || is_leader(status))
                break;
            nanosleep(&pause, NULL);
        }
        if (!status) {
            fail(NULL, "strdup");
            goto err;
        }
        printf("status %s\n", status);
        free(status);
    }

    fflush(stdout);
    if (sqlite3_close(db) != SQLITE_OK) {
        fail(db, "close");
        return 1;
    }
    return 0;

err:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 1;
}
