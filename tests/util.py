"""Shared helpers for the test suite: where the built extension is, URIs, running real hosts.

Every test drives real host processes (the sqlite3 shell, Python, Go, a C program) that load the built
`target/release/libreplicated.so`; nothing here mocks SQLite.
"""
import os
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "target" / "release" / "libreplicated"  # .so appended by SQLite
LIB_SO = REPO / "target" / "release" / "libreplicated.so"
SECRET = "test-cluster-secret"


def free_port() -> int:
    """A UDP port that is free right now on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def repl_uri(db_path, node=1, port=None, **extra) -> str:
    """URI of a one-node replicated database (peers lists only this node)."""
    port = port or free_port()
    params = {"vfs": "replicated", "node": str(node), "peers": f"{node}@127.0.0.1:{port}", "secret": SECRET}
    params.update({k: str(v) for k, v in extra.items()})
    return f"file:{db_path}?" + "&".join(f"{k}={v}" for k, v in params.items())


def run_shell(script: str, *, timeout=120, check=True, env=None, args=()) -> subprocess.CompletedProcess:
    """Runs the real sqlite3 shell with `script` on stdin (no database argument: the script .opens one)."""
    p = subprocess.run(["sqlite3", "-batch", *args], input=script, text=True, capture_output=True,
                       timeout=timeout, env=env, cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"sqlite3 failed ({p.returncode}):\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def shell_prelude(uri: str) -> str:
    """Lines that load the extension and open `uri`, as a user would type them."""
    return f".load {LIB}\n.open '{uri}'\n"


EXISTING_DB_SCRIPT = r"""
import os, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("pragma journal_mode=wal")
con.execute("create table old(id integer primary key, r, b blob)")
rows = "with recursive n(i) as (select 1 union all select i + 1 from n where i < {}) "
con.execute(rows.format(int(sys.argv[2])) + "insert into old(r, b) select random() % 1000000, randomblob(3000) from n")
con.execute("pragma wal_checkpoint(truncate)")
con.execute("pragma wal_autocheckpoint=0")
con.execute(rows.format(200) + "insert into old(r, b) select random() % 1000000, randomblob(100) from n")
print(con.execute("select count(*), sum(r) from old").fetchone(), flush=True)
os._exit(0)  # no close: the last transaction stays in the -wal file, as after a crash
"""


def make_existing_db(path, rows=1000):
    """A plain WAL-mode database (no extension) whose last transaction is only in its -wal file.
    Returns its (row count, sum of r)."""
    out = subprocess.run(["/usr/bin/python3", "-c", EXISTING_DB_SCRIPT, str(path), str(rows)],
                         capture_output=True, text=True, check=True).stdout
    assert Path(str(path) + "-wal").stat().st_size > 0, "the -wal file should hold the last transaction"
    count, total = out.strip("()\n").split(", ")
    return int(count), int(total)
