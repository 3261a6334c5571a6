"""A long-running node host: opens a replicated database and executes SQL sent as JSON lines.

Usage: node.py LIB URI
Prints {"ready": true} once the database is open. Then, per input line {"id": N, "sql": "...",
"args": [...], "many": bool}, prints {"id": N, "rows": [[...], ...]} or {"id": N, "error": "...",
"code": extended_code}. The node (Raft, transport, applier) lives as long as this process; tests
kill it with SIGKILL to crash it.
"""
import json
import sqlite3
import sys


def main():
    lib, uri = sys.argv[1], sys.argv[2]
    boot = sqlite3.connect(":memory:")
    boot.enable_load_extension(True)
    boot.load_extension(lib)
    con = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=10, check_same_thread=False)
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
            if con.in_transaction:
                try:
                    con.execute("rollback")
                except sqlite3.Error:
                    pass
            out = {"id": rid, "error": str(e), "code": getattr(e, "sqlite_errorcode", -1)}
        print(json.dumps(out, default=lambda b: b.hex() if isinstance(b, bytes) else str(b)), flush=True)


if __name__ == "__main__":
    main()
