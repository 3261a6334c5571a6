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
