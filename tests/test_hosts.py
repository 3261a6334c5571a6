"""Every supported host loads the built extension and replicates through it (DESIGN.md §2).

One test per host, each a real subprocess against a fresh directory and a fresh port:
  (a) the sqlite3 shell: .load + .open URI          (b) /usr/bin/python3 with load_extension
  (c) a Python without enable_load_extension (pyenv), through examples/python/replicated_loader.py
  (d) Go with github.com/mattn/go-sqlite3 (examples/go)   (e) C through c_shim/replicated.h (examples/c)
Each writes through the replicated VFS in one process, then reads the rows back in a second process
that reopens the same URI (durability across a restart of the node). The status checks need a
one-node cluster to elect itself, which it does within a couple of seconds; we poll up to ~10 s.

Run: python3 -m pytest tests/test_hosts.py -x -q   (needs target/release/libreplicated.so)
"""
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from util import LIB, LIB_SO, REPO, SECRET, free_port, repl_uri, run_shell  # noqa: E402

pytestmark = pytest.mark.skipif(not LIB_SO.exists(),
                                reason=f"{LIB_SO} not built (cargo build --release)")

STATUS_KEYS = {"node_id", "role", "term", "leader_id", "leader_addr", "commit_index", "applied_index",
               "members", "db"}
ROWS = 3
RUN_TIMEOUT = 120
SYSTEM_PYTHON = "/usr/bin/python3"


# ---------------------------------------------------------------------------------------- helpers

def run(cmd, *, timeout=RUN_TIMEOUT, cwd=REPO, env=None):
    """Runs a host program; fails the test with its full output on a non-zero exit."""
    try:
        p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                           cwd=cwd, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"timed out after {timeout}s: {cmd}\nstdout:\n{e.stdout}\nstderr:\n{e.stderr}")
    if p.returncode != 0:
        pytest.fail(f"exit {p.returncode}: {cmd}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def check_status(text, port):
    """replicated_status() of the one-node cluster on `port`, after it elected itself."""
    st = json.loads(text)
    assert isinstance(st, dict), text
    missing = STATUS_KEYS - st.keys()
    assert not missing, f"replicated_status() lacks {sorted(missing)}: {text}"
    assert st["node_id"] == 1, text
    assert st["role"] == "leader", f"one-node cluster not leader after ~10 s: {text}"
    assert st["leader_id"] == 1, text
    assert str(port) in str(st["leader_addr"]), text
    assert isinstance(st["members"], list) and st["members"], text
    assert isinstance(st["term"], int) and st["term"] >= 1, text
    assert isinstance(st["commit_index"], int) and isinstance(st["applied_index"], int), text
    assert st["commit_index"] >= 1 and st["applied_index"] >= 1, text
    return st


def parse_example_output(out):
    """Output of the Python/Go/C examples: 'row <id> <val>'..., 'count <n>', 'status <json>'."""
    rows, count, status, loaded_by = [], None, None, None
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        if key == "row":
            rid, _, val = rest.partition(" ")
            rows.append((int(rid), val))
        elif key == "count":
            count = int(rest)
        elif key == "status":
            status = rest
        elif key == "loaded-by":
            loaded_by = rest
    assert count == len(rows), out
    assert status is not None, out
    return rows, status, loaded_by


def expected_rows(prefix):
    return [(i, f"{prefix}-{i}") for i in range(1, ROWS + 1)]


def check_write_then_read(cmd_for_mode, prefix, port, db_path):
    """Runs the example in write mode, then (a new process, same URI) in read mode."""
    w = run(cmd_for_mode("write"))
    rows, status, _ = parse_example_output(w.stdout)
    assert rows == expected_rows(prefix), w.stdout
    check_status(status, port)
    assert db_path.exists(), "database file not created"

    r = run(cmd_for_mode("read"))
    rows, status, _ = parse_example_output(r.stdout)
    assert rows == expected_rows(prefix), f"rows not durable across a restart:\n{r.stdout}\n{r.stderr}"
    check_status(status, port)
    return w, r


class Shell:
    """An interactive sqlite3 shell on pipes: send a few lines, get their output back."""

    def __init__(self, cwd):
        self.p = subprocess.Popen(["sqlite3", "-batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, bufsize=1, cwd=cwd)
        self.q = queue.Queue()
        self.n = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def __call__(self, script, timeout=60):
        """Runs `script`; returns its output lines; fails on any error message from the shell."""
        self.n += 1
        mark = f"__done_{self.n}__"
        self.p.stdin.write(f"{script.rstrip()}\nSELECT '{mark}';\n")
        self.p.stdin.flush()
        out, deadline = [], time.monotonic() + timeout
        while True:
            try:
                line = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"sqlite3 shell: no answer within {timeout}s to:\n{script}\noutput so far: {out}")
            if line is None:
                pytest.fail(f"sqlite3 shell exited (rc={self.p.wait()}) during:\n{script}\noutput: {out}")
            if line == mark:
                break
            out.append(line)
        errors = [l for l in out if l.startswith(("Error", "Parse error", "Runtime error"))]
        assert not errors, f"sqlite3 shell error for:\n{script}\n" + "\n".join(out)
        return out

    def close(self):
        try:
            self.p.stdin.write(".quit\n")
            self.p.stdin.close()
        except OSError:
            pass
        try:
            rc = self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            pytest.fail("sqlite3 shell did not exit within 30 s of .quit")
        assert rc == 0, f"sqlite3 shell exit code {rc}"


def poll_leader(query, timeout=10.0):
    """Calls query() -> status JSON until role is leader or `timeout` passes; returns the last one."""
    deadline = time.monotonic() + timeout
    while True:
        text = query()
        if json.loads(text).get("role") == "leader" or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------ (a)

def test_sqlite3_shell(tmp_path):
    port, db = free_port(), tmp_path / "shell.db"
    uri = repl_uri(db, port=port)
    sh = Shell(tmp_path)
    try:
        # .load twice on the default in-memory connection; .open then closes that connection, so a
        # successful open of the URI proves the VFS outlives the connection that loaded it.
        sh(f".load {LIB}\n.load {LIB}")
        sh(f".open '{uri}'")
        sh("CREATE TABLE items(id INTEGER PRIMARY KEY, val TEXT NOT NULL);\n"
           "BEGIN;\n" + "".join(f"INSERT INTO items(val) VALUES ('sh-{i}');\n" for i in range(1, ROWS))
           + "COMMIT;\n" + f"INSERT INTO items(val) VALUES ('sh-{ROWS}');")
        out = sh(".mode list\n.separator |\nSELECT id, val FROM items ORDER BY id;")
        assert out == [f"{i}|{v}" for i, v in expected_rows("sh")], out
        status = poll_leader(lambda: sh("SELECT replicated_status();")[-1])
        check_status(status, port)
        assert sh("SELECT replicated_leader();") == [f"1@127.0.0.1:{port}"]
        # the functions above came with the open (§3.2: every connection); .load on the replicated
        # connection itself is harmless too
        sh(f".load {LIB}")
        assert sh("SELECT count(*) FROM items;") == [str(ROWS)]
        check_status(sh("SELECT replicated_status();")[-1], port)
    finally:
        sh.close()

    # a second shell process reopens the same URI: the rows are durable
    p = run_shell(f".load {LIB}\n.open '{uri}'\n.mode list\n.separator |\nSELECT id, val FROM items ORDER BY id;\n"
                  "SELECT replicated_status();\n")
    assert p.stderr == "", p.stderr
    lines = p.stdout.splitlines()
    assert lines[:-1] == [f"{i}|{v}" for i, v in expected_rows("sh")], p.stdout
    st = json.loads(lines[-1])
    assert st["node_id"] == 1 and STATUS_KEYS <= st.keys(), lines[-1]


def test_shell_demo_script(tmp_path):
    """examples/shell/demo.sql runs as documented (with its port and path swapped for fresh ones)."""
    demo = (REPO / "examples" / "shell" / "demo.sql").read_text()
    assert "127.0.0.1:7001" in demo and "/tmp/replicated-demo.db" in demo
    port, db = free_port(), tmp_path / "demo.db"
    script = demo.replace("127.0.0.1:7001", f"127.0.0.1:{port}").replace("/tmp/replicated-demo.db", str(db))
    p = run_shell(script)  # cwd is the repository root, as the demo's .load path expects
    assert p.stderr == "", p.stderr
    assert "from the sqlite3 shell" in p.stdout and "autocommit works too" in p.stdout, p.stdout
    status = next(l for l in p.stdout.splitlines() if l.startswith("{"))
    assert json.loads(status)["node_id"] == 1, status


# ------------------------------------------------------------------------------------- (b), (c)

def python_has_load_extension(python):
    p = subprocess.run([python, "-c", "import sqlite3; print(hasattr(sqlite3.Connection, 'enable_load_extension'))"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip() == "True"


def python_example(python, tmp_path, expect_method):
    port, db = free_port(), tmp_path / "py.db"
    example = REPO / "examples" / "python" / "example.py"

    def cmd(mode):
        return [python, example, "--lib", LIB_SO, "--db", db, "--port", port, "--secret", SECRET,
                "--mode", mode, "--rows", ROWS]

    w, r = check_write_then_read(cmd, "py", port, db)
    for p in (w, r):
        assert parse_example_output(p.stdout)[2] == expect_method, p.stdout


def test_python_load_extension(tmp_path):
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"{SYSTEM_PYTHON} not installed")
    if not python_has_load_extension(SYSTEM_PYTHON):
        pytest.skip(f"{SYSTEM_PYTHON} has no enable_load_extension")
    python_example(SYSTEM_PYTHON, tmp_path, "load_extension")


def test_python_load_extension_direct(tmp_path):
    """The plain recipe of DESIGN.md §2 without the helper: load_extension on :memory:, close it,
    then connect to the URI; replicated_status() must exist on that new connection (§3.2)."""
    if not Path(SYSTEM_PYTHON).exists() or not python_has_load_extension(SYSTEM_PYTHON):
        pytest.skip(f"{SYSTEM_PYTHON} missing or without enable_load_extension")
    port, db = free_port(), tmp_path / "direct.db"
    uri = repl_uri(db, port=port)
    script = f"""
import json, sqlite3, sys, time
boot = sqlite3.connect(":memory:")
boot.enable_load_extension(True)
boot.load_extension({str(LIB)!r})
boot.load_extension({str(LIB)!r})   # twice: harmless
boot.close()
con = sqlite3.connect({uri!r}, uri=True, isolation_level=None)
if sys.argv[1] == "write":
    con.execute("CREATE TABLE t(x)")
    con.execute("INSERT INTO t VALUES (42)")
print("rows", con.execute("SELECT x FROM t").fetchall())
deadline = time.monotonic() + 10
while True:
    s = con.execute("SELECT replicated_status()").fetchone()[0]
    if json.loads(s)["role"] == "leader" or time.monotonic() > deadline:
        break
    time.sleep(0.2)
print("status", s)
con.close()
"""
    for mode in ("write", "read"):
        p = run([SYSTEM_PYTHON, "-c", script, mode])
        lines = p.stdout.splitlines()
        assert lines[0] == "rows [(42,)]", p.stdout
        check_status(lines[1].partition(" ")[2], port)


def python_without_load_extension():
    for cand in (sys.executable, shutil.which("python3")):
        if cand and not python_has_load_extension(cand):
            return cand
    return None


def test_python_ctypes_auto_extension(tmp_path):
    python = python_without_load_extension()
    if python is None:
        pytest.skip(f"no python3 without enable_load_extension here (tried {sys.executable}, "
                    f"{shutil.which('python3')}): the ctypes path is untestable")
    assert not python_has_load_extension(python)
    python_example(python, tmp_path, "auto_extension")


def test_python_loader_idempotent(tmp_path):
    """load() twice returns the same method and leaves the VFS usable; works in either interpreter."""
    no_load_ext = python_without_load_extension()
    python = no_load_ext or sys.executable
    port, db = free_port(), tmp_path / "idem.db"
    uri = repl_uri(db, port=port)
    script = f"""
import sqlite3, sys
sys.path.insert(0, {str(REPO / 'examples' / 'python')!r})
import replicated_loader
a = replicated_loader.load({str(LIB_SO)!r})
b = replicated_loader.load({str(LIB)!r})   # without .so: same library, no-op
con = sqlite3.connect({uri!r}, uri=True)
con.execute("CREATE TABLE t(x)"); con.commit()
print(a, b, con.execute("SELECT count(*) FROM t").fetchone()[0])
"""
    p = run([python, "-c", script])
    method = "auto_extension" if no_load_ext else "load_extension"
    assert p.stdout.split() == [method, method, "0"], p.stdout + p.stderr


# ------------------------------------------------------------------------------------------ (e)

def gcc_build(src, out):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed")
    libdir = LIB_SO.parent
    run([gcc, "-Wall", "-Werror", "-I", REPO / "c_shim", src, "-o", out, "-L", libdir,
         f"-Wl,-rpath,{libdir}", "-lreplicated", "-lsqlite3"])
    return out


def test_c(tmp_path):
    exe = gcc_build(REPO / "examples" / "c" / "demo.c", tmp_path / "demo")
    port, db = free_port(), tmp_path / "c.db"
    uri = repl_uri(db, port=port)
    check_write_then_read(lambda mode: [exe, uri, mode, ROWS], "c", port, db)


AUTO_EXT_PROBE = r"""
#include <stdio.h>
#include "replicated.h"
static int try_open(const char *what, const char *uri, int extra, sqlite3 **out) {
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(uri, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI | extra, NULL);
    printf("%s rc=%d ext=%d msg=%s\n", what, rc, db ? sqlite3_extended_errcode(db) : -1,
           db ? sqlite3_errmsg(db) : "nomem");
    if (out && rc == SQLITE_OK) *out = db; else sqlite3_close(db);
    return rc;
}
int main(int argc, char **argv) {
    sqlite3 *boot = NULL, *db = NULL;
    (void)argc;
    if (sqlite3_replicated_register() != SQLITE_OK || sqlite3_replicated_register() != SQLITE_OK) return 3;
    try_open("uri-first", argv[1], 0, NULL);        /* before any plain open */
    try_open("uri-second", argv[1], 0, NULL);       /* a failed open ran no auto-extension */
    try_open("memory", ":memory:", 0, &boot);       /* runs the init: registers the VFS */
    try_open("uri-while-boot-open", argv[1], 0, &db);
    sqlite3_close(db);
    sqlite3_close(boot);
    try_open("uri-exrescode", argv[1], SQLITE_OPEN_EXRESCODE, NULL);
    try_open("uri-after-boot-closed", argv[1], 0, &db);
    sqlite3_stmt *st = NULL;
    int frc = sqlite3_prepare_v2(db, "SELECT replicated_leader()", -1, &st, NULL);
    printf("functions rc=%d\n", frc);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return 0;
}
"""


def test_c_auto_extension_ordering(tmp_path):
    """What c_shim/replicated.h documents: auto-extensions run after the VFS lookup of an open, so
    the first open must be a plain one; and the registered function leaves no error behind."""
    src = tmp_path / "probe.c"
    src.write_text(AUTO_EXT_PROBE)
    exe = gcc_build(src, tmp_path / "probe")
    port, db = free_port(), tmp_path / "probe.db"
    out = run([exe, repl_uri(db, port=port)]).stdout
    res = {}
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        res[key] = rest
    assert res["uri-first"] == "rc=1 ext=1 msg=no such vfs: replicated", out
    assert res["uri-second"] == "rc=1 ext=1 msg=no such vfs: replicated", out
    ok = "rc=0 ext=0 msg=not an error"
    assert res["memory"] == ok, out
    assert res["uri-while-boot-open"] == ok, out
    assert res["uri-exrescode"] == ok, out  # an auto-extension returning 256 would fail this open
    assert res["uri-after-boot-closed"] == ok, out
    assert res["functions"] == "rc=0", out


# ------------------------------------------------------------------------------------------ (d)

@pytest.fixture(scope="module")
def go_binary(tmp_path_factory):
    go = shutil.which("go")
    if go is None:
        pytest.skip("go not installed")
    out = tmp_path_factory.mktemp("go") / "replicated-example"
    env = dict(os.environ, CGO_ENABLED="1")
    # the first build compiles the sqlite3 amalgamation with cgo: a minute or two on 2 cores
    run([go, "build", "-o", out, "."], cwd=REPO / "examples" / "go", timeout=1200, env=env)
    return out


def test_go(tmp_path, go_binary):
    port, db = free_port(), tmp_path / "go.db"

    def cmd(mode):
        return [go_binary, "-lib", LIB, "-db", db, "-port", port, "-secret", SECRET, "-mode", mode,
                "-rows", ROWS]

    check_write_then_read(cmd, "go", port, db)
