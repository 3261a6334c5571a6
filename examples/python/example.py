"""Use sqlite-replicated from Python's stdlib sqlite3 (with or without enable_load_extension).

    python3 examples/python/example.py --db /tmp/app.db --port 7001 [--mode write|read] [--rows 3]
                                       [--lib target/release/libreplicated.so] [--data DIR]

write (default): creates table items, inserts ROWS rows (all but one in one transaction, the last in
autocommit mode) and reads them back; read: only reads. Prints "row <id> <val>" per row,
"count <n>", "loaded-by <load_extension|auto_extension>" and "status <json>" (replicated_status(),
after waiting up to 10 s for this one-node cluster to elect itself). Exits non-zero on any error.
"""
import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replicated_loader  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lib", default=None, help="libreplicated.so (default: this checkout's target/release)")
    ap.add_argument("--db", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--node", type=int, default=1)
    ap.add_argument("--secret", default="example-cluster-secret")
    ap.add_argument("--data", default=None, help="Raft directory (default <db>-raft/)")
    ap.add_argument("--mode", choices=["write", "read"], default="write")
    ap.add_argument("--rows", type=int, default=3)
    ap.add_argument("--wait", type=float, default=10.0)
    a = ap.parse_args()

    method = replicated_loader.load(a.lib)

    params = {"vfs": "replicated", "node": a.node, "peers": f"{a.node}@127.0.0.1:{a.port}", "secret": a.secret}
    if a.data:
        params["data"] = a.data
    uri = f"file:{a.db}?{urlencode(params, safe='@:,/')}"
    # isolation_level=None: autocommit; transactions are explicit BEGIN/COMMIT below
    con = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        if a.mode == "write":
            con.execute("CREATE TABLE IF NOT EXISTS items(id INTEGER PRIMARY KEY, val TEXT NOT NULL)")
            con.execute("BEGIN")
            con.executemany("INSERT INTO items(val) VALUES (?)", [(f"py-{i}",) for i in range(1, a.rows)])
            con.execute("COMMIT")
            if a.rows > 0:
                con.execute("INSERT INTO items(val) VALUES (?)", (f"py-{a.rows}",))
        rows = con.execute("SELECT id, val FROM items ORDER BY id").fetchall()
        for rid, val in rows:
            print(f"row {rid} {val}")
        print(f"count {len(rows)}")
        print(f"loaded-by {method}")

        deadline = time.monotonic() + a.wait
        while True:
            status = con.execute("SELECT replicated_status()").fetchone()[0]
            if json.loads(status).get("role") == "leader" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        print(f"status {status}")
    except sqlite3.Error as e:
        try:
            why = con.execute("SELECT replicated_last_error()").fetchone()[0]
        except sqlite3.Error:
            why = None
        print(f"error: {e} (replicated_last_error: {why})", file=sys.stderr)
        return 1
    finally:
        con.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
