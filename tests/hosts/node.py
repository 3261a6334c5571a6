"""A long-running node host: opens a replicated database and executes SQL sent as JSON lines.

Usage: node.py LIB URI [--serve SOCKET]
Prints {"ready": true} once the database is open. Then, per input line {"id": N, "sql": "...",
"args": [...], "script": bool}, prints {"id": N, "rows": [[...], ...]} or {"id": N, "error": "...",
"code": extended_code}. The node (Raft, transport, applier) lives as long as this process; tests
kill it with SIGKILL to crash it.

With --serve, the host also accepts client processes on a unix socket (the nemesis workloads):
each client connection gets its own thread and its own SQLite connection to the same database,
like the connection pool of an application server. A client sends one transaction per line,
{"txn": [[sql, args], ...], "begin": "immediate"|"deferred", "sync": ms or null}, and gets
{"results": [rows, ...]} or {"error": ..., "code": ..., "stage": "sync"|"begin"|"stmt"|"commit"}.
The stage tells the client whether the outcome is known: only an error at "commit" leaves the
transaction's fate undecided (Raft may still commit it).
"""
import json
import os
import socket
import sqlite3
import sys
import threading


def dumps(obj):
    return json.dumps(obj, default=lambda b: b.hex() if isinstance(b, bytes) else str(b))


def open_db(uri):
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10, check_same_thread=False)


def error(e, stage):
    return {"error": str(e), "code": getattr(e, "sqlite_errorcode", -1), "stage": stage}


def rollback_quietly(con):
    """Ends a transaction a failed statement left open (SQLite may already have rolled it back)."""
    if con.in_transaction:
        try:
            con.execute("rollback")
        except sqlite3.Error:
            pass


def run_txn(con, req):
    stage = "sync"
    try:
        if req.get("sync") is not None:
            con.execute("select replicated_sync(?)", (req["sync"],)).fetchall()
        stage = "begin"
        con.execute("begin immediate" if req.get("begin") == "immediate" else "begin")
        stage = "stmt"
        results = [[list(r) for r in con.execute(sql, args).fetchall()] for sql, args in req["txn"]]
        stage = "commit"
        con.execute("commit")
        return {"results": results}
    except sqlite3.Error as e:
        rollback_quietly(con)
        return error(e, stage)


def serve_client(uri, conn):
    con = None
    try:
        con = open_db(uri)
        f = conn.makefile("rw", encoding="utf-8")
        for line in f:
            try:
                req = json.loads(line)
            except ValueError:
                continue
            f.write(dumps(run_txn(con, req)) + "\n")
            f.flush()
    except (OSError, sqlite3.Error):
        pass
    finally:
        if con is not None:
            con.close()
        conn.close()


def serve(uri, path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(64)

    def loop():
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=serve_client, args=(uri, conn), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def main():
    lib, uri = sys.argv[1], sys.argv[2]
    boot = sqlite3.connect(":memory:")
    boot.enable_load_extension(True)
    boot.load_extension(lib)
    con = open_db(uri)
    if "--serve" in sys.argv:
        serve(uri, sys.argv[sys.argv.index("--serve") + 1])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        try:
            req = json.loads(line)
        except ValueError:
            continue
        rid = req.get("id")
        try:
            if req.get("script"):
                con.executescript(req["sql"])
                rows = []
            else:
                cur = con.execute(req["sql"], req.get("args", []))
                rows = [list(r) for r in cur.fetchall()]
            out = {"id": rid, "rows": rows}
        except sqlite3.Error as e:
            rollback_quietly(con)
            out = {"id": rid, "error": str(e), "code": getattr(e, "sqlite_errorcode", -1)}
        print(dumps(out), flush=True)


if __name__ == "__main__":
    main()
