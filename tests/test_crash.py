"""Crash safety on one node (DESIGN §3.5 invariants 1 and 2), with real processes and kill -9.

- Every acknowledged commit of a write loop killed at random moments is present after restart.
- A process killed while a commit waits at its commit hook never shows that transaction after
  restart — even though its frames are complete and valid in the WAL, where SQLite's own recovery
  would resurrect them (the test checks they really are there before restarting).
- Failpoints at each step of capture, commit, record and reconcile: crash there, restart, check.
- `PRAGMA integrity_check` is `ok` every time.
"""
import os
import random
import signal
import subprocess
import time

import pytest

from util import LIB, LIB_SO, REPO, free_port, make_existing_db, repl_uri, run_shell, shell_prelude

pytestmark = pytest.mark.skipif(not LIB_SO.exists(), reason="library not built (run `make`)")
HOST_PY = "/usr/bin/python3"  # Debian's python: its sqlite3 can load extensions
# The start of a script for HOST_PY: sqlite3 imported, the extension loaded.
LOADER = f"import sqlite3\nb=sqlite3.connect(':memory:');b.enable_load_extension(True);b.load_extension({str(LIB)!r})\n"


def run_host(script, failpoints):
    """Runs LOADER + `script` in HOST_PY with REPLICATED_FAILPOINTS=`failpoints`."""
    return subprocess.run([HOST_PY, "-c", LOADER + script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "REPLICATED_FAILPOINTS": failpoints})
WRITER = str(REPO / "tests" / "hosts" / "writer.py")


class Writer:
    def __init__(self, uri, start, count, env=None, extra=()):
        e = dict(os.environ)
        e.update(env or {})
        self.p = subprocess.Popen([HOST_PY, WRITER, str(LIB), uri, str(start), str(count), *extra],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                                  start_new_session=True)
        self.lines = []

    def wait_for(self, prefix, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.p.stdout.readline()
            if not line:
                break
            self.lines.append(line.strip())
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"writer never printed {prefix!r}; got {self.lines[-5:]}; "
                             f"stderr={self.p.stderr.read() if self.p.poll() is not None else ''}")

    def kill(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()
        out = self.p.stdout.read()
        self.lines += [l.strip() for l in out.splitlines()]

    def acked(self):
        return {int(l.split()[1]) for l in self.lines if l.startswith("ack ")}

    def tried(self):
        return {int(l.split()[1]) for l in self.lines if l.startswith("try ")}


def read_state(uri, env=None):
    """ids in `acked` and the integrity check, read by a fresh sqlite3 shell process."""
    p = run_shell(shell_prelude(uri) + "create table if not exists acked(id integer primary key, pad);\n"
                  "select 'ids', group_concat(id) from acked;\npragma integrity_check;\n", env=env)
    lines = p.stdout.strip().splitlines()
    ids_line = [l for l in lines if l.startswith("ids|")][0]
    ids = {int(x) for x in ids_line.split("|", 1)[1].split(",") if x}
    assert lines[-1] == "ok", p.stdout
    return ids


def kill_writer_rounds(uri, rounds, rnd, lo, hi):
    """Runs a writer and kills it -9 after a random lo..hi seconds, `rounds` times; after each kill
    a fresh process checks that every acknowledged row is there and no row nobody tried. Returns the
    ids acknowledged over all rounds."""
    all_acked, all_tried, next_id = set(), set(), 1
    for _round in range(rounds):
        w = Writer(uri, next_id, 100000, extra=("--big-every", "37", "--ckpt-every", "53"))
        w.wait_for("ready")
        time.sleep(rnd.uniform(lo, hi))
        w.kill()
        all_acked |= w.acked()
        all_tried |= w.tried()
        present = read_state(uri)
        lost = all_acked - present
        assert not lost, f"acknowledged commits lost after kill -9: {sorted(lost)[:20]}"
        phantom = present - all_tried
        assert not phantom, f"rows nobody wrote: {sorted(phantom)[:20]}"
        next_id = max(all_tried | {next_id}) + 1
    return all_acked


@pytest.mark.parametrize("psow", ["1", "0"])
def test_random_kills_lose_no_acknowledged_commit(tmp_path, psow):
    """psow=0: every commit is padded to a sector boundary and synced mid-frame (SQLite's
    padToSectorBoundary), a different sequence of writes and syncs at each kill point."""
    port = free_port()
    uri = repl_uri(tmp_path / "app.db", port=port, data=tmp_path / "raft", psow=psow)
    rnd = random.Random(int(os.environ.get("CRASH_SEED", "1234")))
    all_acked = kill_writer_rounds(uri, 8, rnd, 0.05, 1.2)
    assert len(all_acked) > 50, "the writer made too little progress for the test to mean anything"


def test_kills_after_the_log_was_compacted(tmp_path):
    """Default settings on one node: 80 MiB of writes make the node snapshot and purge its log;
    restarts and kill -9 of a writer afterwards lose nothing and keep the database intact (restart
    then needs the state behind the purge point from the database files, not from the log)."""
    import json
    uri = repl_uri(tmp_path / "app.db", port=free_port(), data=tmp_path / "raft")
    p = run_shell(shell_prelude(uri) + "create table bulk(b);\n"
                  + "insert into bulk values(randomblob(1048576));\n" * 80
                  + ".shell sleep 4\nselect replicated_status();\n")
    st = json.loads(p.stdout.strip().splitlines()[-1])
    assert st["snapshot_index"] and st["purged_index"], st
    kill_writer_rounds(uri, 3, random.Random(7), 0.1, 0.8)
    p = run_shell(shell_prelude(uri) + "select count(*), sum(length(b)) from bulk;\n"
                  "select json_extract(replicated_status(), '$.purged_index') > 0;\n")
    assert p.stdout.split() == [f"80|{80 << 20}", "1"], p.stdout


def wal_has_row_marker(db_path, marker: bytes) -> bool:
    wal = str(db_path) + "-wal"
    return os.path.exists(wal) and marker in open(wal, "rb").read()


@pytest.mark.parametrize("size", ["small", "large"])
def test_killed_while_commit_waits_never_shows_it(tmp_path, size):
    """Killed before its transaction reached Raft. A small transaction's frames are still in the
    connection's write-behind buffer (vfs/wal_buffer.rs): they never reach the WAL. A large one's
    overflow the buffer: the whole transaction is in the WAL, valid, with a commit frame, and
    SQLite's own recovery would bring it back; the restart's reconciliation must not."""
    point = "commit.before_propose"
    db = tmp_path / "app.db"
    uri = repl_uri(db, data=tmp_path / "raft")
    run_shell(shell_prelude(uri) + "create table acked(id integer primary key, pad); insert into acked values(1,'a');\n")
    marker = b"PHANTOM-" + os.urandom(8).hex().encode()
    value = f"{marker.decode()!r}" if size == "small" else f"{marker.decode()!r} || randomblob(3 << 20)"
    script = (f"import sqlite3,sys\nb=sqlite3.connect(':memory:');b.enable_load_extension(True);b.load_extension({str(LIB)!r})\n"
              f"c=sqlite3.connect({uri!r},uri=True,isolation_level=None)\nprint('go',flush=True)\n"
              f"c.execute('insert into acked select 2, ' + {value!r})\nprint('acked',flush=True)\n")
    p = subprocess.Popen([HOST_PY, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "REPLICATED_FAILPOINTS": f"{point}=pause"}, start_new_session=True)
    assert p.stdout.readline().strip() == "go"
    line = ""
    while "failpoint" not in line and p.poll() is None:
        line = p.stderr.readline()
    assert f"failpoint {point}: pause" in line, line + p.stderr.read()
    time.sleep(0.2)
    assert p.poll() is None, p.stderr.read()
    assert wal_has_row_marker(db, marker) == (size == "large")
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert read_state(uri) == {1}


def test_a_commit_whose_frames_cannot_reach_the_wal_is_replayed_at_restart(tmp_path):
    """The frames go to the WAL file while Raft commits the transaction (write-behind). When that
    write fails after Raft committed, the commit reports an error and the node stops accepting
    writes; the restart replays the transaction from the log (it was committed: one voter)."""
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    run_shell(shell_prelude(uri) + "create table acked(id integer primary key, pad); insert into acked values(1,'a');\n")
    p = run_shell(shell_prelude(uri) + "insert into acked values(2,'b');\nselect replicated_last_error();\n"
                  "insert into acked values(3,'c');\n", check=False,
                  env={**os.environ, "REPLICATED_FAILPOINTS": "wal.write_out=error"})
    assert "disk I/O error" in p.stderr, p.stderr
    assert "writing the transaction's frames to the WAL failed" in p.stdout, p.stdout
    assert "restart this node" in p.stderr, p.stderr
    assert read_state(uri) == {1, 2}
    run_shell(shell_prelude(uri) + "insert into acked values(3,'c');\n")
    assert read_state(uri) == {1, 2, 3}


@pytest.mark.parametrize("point,visible", [
    ("commit.before_propose", False),   # never reached Raft
    ("commit.after_quorum", True),      # committed in Raft (one voter), not yet recorded: replayed
    ("commit.after_record", True),      # committed and recorded, not yet published
])
def test_crash_at_each_commit_step(tmp_path, point, visible):
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    run_shell(shell_prelude(uri) + "create table acked(id integer primary key, pad); insert into acked values(1,'a');\n")
    p = run_shell(shell_prelude(uri) + "insert into acked values(2,'b');\n", check=False,
                  env={**os.environ, "REPLICATED_FAILPOINTS": f"{point}=crash"})
    assert p.returncode != 0, "the failpoint did not fire"
    assert read_state(uri) == ({1, 2} if visible else {1})
    # And the node keeps working afterwards.
    run_shell(shell_prelude(uri) + "insert into acked values(3,'c');\n")
    assert read_state(uri) == ({1, 2, 3} if visible else {1, 3})


def test_no_checkpoint_copies_a_transaction_whose_record_was_not_written(tmp_path):
    """The WAL is never fsynced; what a checkpoint copies into the database file must be covered by
    a durable applied-state record, from which a restart after a power loss knows how far to
    replay. When a record cannot be written, the commit still succeeds (Raft committed it), but
    every checkpoint of that WAL generation is refused; the restart replays the transaction."""
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    run_shell(shell_prelude(uri) + "create table acked(id integer primary key, pad); insert into acked values(1,'a');\n")
    p = run_shell(shell_prelude(uri) + "insert into acked values(2,'b');\nselect 'inserted';\n"
                  "pragma wal_checkpoint(truncate);\nselect 'checkpointed';\n", check=False,
                  env={**os.environ, "REPLICATED_FAILPOINTS": "record.append=error"})
    out = p.stdout.split()
    assert out[0] == "inserted" and out[1] == "checkpointed", p.stdout + p.stderr  # no checkpoint result row
    assert "disk I/O error" in p.stderr, p.stderr
    assert read_state(uri) == {1, 2}
    # A record that failed once (a full disk that then had room) is written again with the next
    # one: checkpoints go on.
    p = run_shell(shell_prelude(uri) + "insert into acked values(3,'c');\ninsert into acked values(4,'d');\n"
                  "pragma wal_checkpoint(truncate);\n", env={**os.environ, "REPLICATED_FAILPOINTS": "record.append=1*error"})
    assert "cannot write the applied-state record" in p.stderr, p.stderr
    assert p.stdout.split()[-1] == "0|0|0", p.stdout + p.stderr
    assert read_state(uri) == {1, 2, 3, 4}


@pytest.mark.parametrize("point", ["reconcile.after_cut", "reconcile.replay_entry", "reconcile.after_replay"])
def test_crash_during_reconcile(tmp_path, point):
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    run_shell(shell_prelude(uri) + "create table acked(id integer primary key, pad); insert into acked values(1,'a');\n")
    # Leave committed-but-unrecorded entries behind, so restart has to replay them.
    for i in (2, 3):
        run_shell(shell_prelude(uri) + f"insert into acked values({i},'b');\n", check=False,
                  env={**os.environ, "REPLICATED_FAILPOINTS": "commit.after_quorum=crash"})
    p = run_shell(shell_prelude(uri) + "select count(*) from acked;\n", check=False,
                  env={**os.environ, "REPLICATED_FAILPOINTS": f"{point}=crash"})
    assert p.returncode != 0, "the failpoint did not fire"
    assert read_state(uri) == {1, 2, 3}


@pytest.mark.parametrize("point", ["reconcile.after_cut", "reconcile.replay_entry"])
def test_readers_of_other_processes_wait_while_the_node_reconciles(tmp_path, point):
    """While a starting node rewrites its WAL, a plain `sqlite3 -readonly` opening the database
    gets SQLITE_BUSY: before, it read the WAL halfway through reconciliation and built a wal-index
    that reconciliation then deleted under it (a reader left on a stale wal-index)."""
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    run_shell(shell_prelude(uri) + "create table acked(id integer primary key, pad); insert into acked values(1,'a');\n")
    for i in (2, 3):  # committed but not recorded: the restart replays them
        run_shell(shell_prelude(uri) + f"insert into acked values({i},'b');\n", check=False,
                  env={**os.environ, "REPLICATED_FAILPOINTS": "commit.after_quorum=crash"})
    starting = subprocess.Popen(["sqlite3", "-batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True,
                                env={**os.environ, "REPLICATED_FAILPOINTS": f"{point}=pause"})
    try:
        starting.stdin.write(shell_prelude(uri) + "select count(*) from acked;\n")
        starting.stdin.flush()
        assert f"failpoint {point}: pause" in starting.stderr.readline()
        plain = subprocess.run(["sqlite3", "-readonly", str(tmp_path / "app.db"), "select count(*) from acked;"],
                               capture_output=True, text=True, timeout=30)
        assert plain.returncode != 0 and "locked" in plain.stderr, plain.stdout + plain.stderr
    finally:
        os.killpg(starting.pid, signal.SIGKILL)
        starting.wait()
    assert read_state(uri) == {1, 2, 3}


def test_failed_commit_is_rolled_back_and_connection_stays_usable(tmp_path):
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    script = (f"c=sqlite3.connect({uri!r},uri=True,isolation_level=None)\n"
              "c.execute('create table acked(id integer primary key, pad)')\n"
              "try:\n  c.execute(\"insert into acked values(2,'x')\")\n  print('no error')\n"
              "except sqlite3.Error as e:\n  print('error', e.sqlite_errorcode & 0xff, e.sqlite_errorcode >> 8)\n"
              "print('last', c.execute('select replicated_last_error()').fetchone()[0])\n"
              "c.execute(\"insert into acked values(3,'y')\")\nprint('ids', c.execute('select group_concat(id) from acked').fetchone()[0])\n")
    p = run_host(script, "commit.before_propose=2*error")
    out = p.stdout.splitlines()
    assert p.returncode == 0, p.stderr
    assert out[0] == "error 10 103", out  # SQLITE_IOERR, our replication-failure extended code
    assert "failpoint" in out[1]
    assert out[2] == "ids 3"
    assert read_state(uri) == {3}


def test_an_open_that_fails_after_raft_started_can_be_retried(tmp_path):
    """A start that fails after the Raft core and the transport are up (failpoint error, first
    pass only) stops them: the same process opens the database again, on the same port and data
    directory, and commits. (Before, the first core kept running with the lock released and the
    port held: the retry failed to listen.)"""
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    script = (f"try:\n  c=sqlite3.connect({uri!r},uri=True,isolation_level=None);c.execute('select 1')\n  print('opened')\n"
              "except sqlite3.Error as e:\n  print('failed', e)\n"
              f"c=sqlite3.connect({uri!r},uri=True,isolation_level=None)\n"
              "c.execute('create table t(a)');c.execute('insert into t values(1)')\n"
              "print('rows', c.execute('select count(*) from t').fetchone()[0])\n")
    p = run_host(script, "start.before_attach=1*error")
    out = p.stdout.splitlines()
    assert p.returncode == 0, p.stderr
    assert out[0].startswith("failed") and "failpoint" in out[0], out
    assert out[1] == "rows 1", out


def test_a_slow_start_does_not_hold_up_opens_of_other_databases(tmp_path):
    """Two replicated databases opened at once in one process: one start is held for 2 s
    (failpoint delay, first pass only), the other opens without waiting for it. (Before, every
    start held the process-wide registry lock, so any open waited for the slowest start.)"""
    uris = [repl_uri(tmp_path / f"{n}.db", data=tmp_path / f"raft-{n}") for n in ("a", "b")]
    script = ("import threading, time\nout = {}\n"
              "def open_db(u):\n  t = time.monotonic()\n"
              "  c = sqlite3.connect(u, uri=True, isolation_level=None); c.execute('create table t(a)')\n"
              "  out[u] = time.monotonic() - t\n"
              f"ts = [threading.Thread(target=open_db, args=(u,)) for u in {uris!r}]\n"
              "[t.start() for t in ts]; [t.join() for t in ts]\n"
              "print(' '.join(f'{d:.2f}' for d in sorted(out.values())))\n")
    p = run_host(script, "start.before_attach=1*delay")
    assert p.returncode == 0, p.stderr
    fast, slow = map(float, p.stdout.split())
    assert slow >= 1.9, p.stdout  # one start was held
    assert fast < 1.5, p.stdout  # and the other did not wait for it


def test_concurrent_opens_of_one_database_share_one_node(tmp_path):
    """Four threads open the same replicated database at once, one start held for 2 s: each
    waits for that one start (a second start of the same node would fail on the data directory's
    lock, or worse), and all four connections then write through the same node."""
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    script = ("import threading\nerrs = []\n"
              "def open_db(i):\n  try:\n"
              f"    c = sqlite3.connect({uri!r}, uri=True, isolation_level=None, timeout=10)\n"
              "    c.execute('create table if not exists t(a)'); c.execute('insert into t values(?)', (i,))\n"
              "  except Exception as e:\n    errs.append(repr(e))\n"
              "ts = [threading.Thread(target=open_db, args=(i,)) for i in range(4)]\n"
              "[t.start() for t in ts]; [t.join() for t in ts]\n"
              f"c = sqlite3.connect({uri!r}, uri=True)\n"
              "print(errs, c.execute('select count(*), json_extract(replicated_status(), \"$.node_id\") from t').fetchone())\n")
    p = run_host(script, "start.before_attach=1*delay")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[] (4, 1)", p.stdout


APPLY_SCRIPT = """
import sqlite3, sys, time
b = sqlite3.connect(':memory:'); b.enable_load_extension(True); b.load_extension(sys.argv[1])
c = sqlite3.connect(sys.argv[2], uri=True, isolation_level=None)
r = sqlite3.connect(sys.argv[2], uri=True, isolation_level=None)
c.execute('create table if not exists acked(id integer primary key, pad)')   # sm.claim pass 1
c.execute("insert into acked values(1, 'a')")                                # pass 2
r.execute('begin'); before = r.execute('select count(*) from acked').fetchone()[0]
try:
    c.execute("insert into acked values(2, 'b')")                            # pass 3: declined
    print('no error')
except sqlite3.Error as e:
    print('error', e.sqlite_errorcode & 0xff, e.sqlite_errorcode >> 8)
time.sleep(1.0)
print('snapshot', before, r.execute('select count(*) from acked').fetchone()[0]); r.execute('commit')
print('ids', c.execute('select group_concat(id) from acked').fetchone()[0])
c.execute("insert into acked values(3, 'c')")
print('ids', c.execute('select group_concat(id) from acked').fetchone()[0])
"""


def test_committed_after_timeout_is_applied_from_the_log(tmp_path):
    """The commit times out (the claim is declined), but Raft committed the entry: the applier
    publishes it through the wal-index protocol once the writer has let go of the write lock; an
    open reader keeps its snapshot; later writes build on it; every process agrees."""
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft", timeout_ms=400)
    p = subprocess.run([HOST_PY, "-c", APPLY_SCRIPT, str(LIB), uri], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "REPLICATED_FAILPOINTS": "sm.claim=3*error"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split("\n")[:4] == ["error 10 101", "snapshot 1 1", "ids 1,2", "ids 1,2,3"], p.stdout
    assert read_state(uri) == {1, 2, 3}
    plain = subprocess.run(["sqlite3", "-readonly", str(tmp_path / "app.db"),
                            "select group_concat(id) from acked; pragma integrity_check;"],
                           capture_output=True, text=True)
    assert plain.stdout.split() == ["1,2,3", "ok"], plain.stdout + plain.stderr


@pytest.mark.parametrize("point", ["apply.before", "apply.after_frames", "apply.before_publish"])
def test_crash_during_apply(tmp_path, point):
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft", timeout_ms=400)
    p = subprocess.run([HOST_PY, "-c", APPLY_SCRIPT, str(LIB), uri], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "REPLICATED_FAILPOINTS": f"sm.claim=3*error,{point}=crash"})
    assert p.returncode != 0, "the failpoint did not fire"
    # Entry 2 is committed in Raft: restart replays it, whatever the apply left in the WAL.
    assert read_state(uri) == {1, 2}


BIG = ("with recursive n(i) as (select 1 union all select i + 1 from n where i < 1500) "
       "insert into big(b) select randomblob(2000) from n;\n")  # ~3 MiB of pages: several parts


@pytest.mark.parametrize("point,visible", [
    ("log.after_fsync=4*crash", False),  # dies after 2 of the big transaction's parts are durable
    ("commit.after_quorum=crash", True),  # every part committed (one voter), not yet claimed
])
def test_crash_in_a_split_transaction(tmp_path, point, visible):
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    run_shell(shell_prelude(uri) + "create table big(id integer primary key, b blob);\n")
    p = run_shell(shell_prelude(uri) + BIG, check=False, env={**os.environ, "REPLICATED_FAILPOINTS": point})
    assert p.returncode != 0, "the failpoint did not fire"
    out = run_shell(shell_prelude(uri) + "select count(*) from big;\npragma integrity_check;\n").stdout.split()
    assert out == (["1500", "ok"] if visible else ["0", "ok"]), out
    # The node goes on: another split transaction commits on top.
    out = run_shell(shell_prelude(uri) + BIG + "select count(*) from big;\npragma integrity_check;\n").stdout.split()
    assert out == (["3000", "ok"] if visible else ["1500", "ok"]), out


@pytest.mark.parametrize("point", ["capture.start", "checkpoint.start", "checkpoint.before_marker",
                                   "checkpoint.after_marker"])
def test_crash_at_capture_and_checkpoint_steps(tmp_path, point):
    """A crash as a commit is captured, or at each step of a checkpoint (records synced, WAL
    generation ended, marker written): after restart every acknowledged row is there, the
    interrupted commit (capture.start) is not, and the node keeps committing and checkpointing."""
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    rows = ";".join(f"insert into acked values({i}, randomblob(500))" for i in range(1, 41))
    run_shell(shell_prelude(uri) + f"create table acked(id integer primary key, pad); {rows};\n")
    if point == "capture.start":
        action, acked = "insert into acked values(41, 'x');\n", set(range(1, 41))
    else:  # acknowledged commits, then the checkpoint that crashes
        more = ";".join(f"insert into acked values({i}, randomblob(500))" for i in range(41, 46))
        mark = tmp_path / "mark"  # written and closed before the checkpoint (stdout is buffered)
        action = f"{more};\n.output {mark}\nselect 'acked-all';\n.output stdout\npragma wal_checkpoint(TRUNCATE);\n"
        acked = set(range(1, 46))
    # The first write of a session also starts a WAL generation (header at offset 0): the markers'
    # failpoints fire on their second pass, the TRUNCATE.
    nth = "2*" if "marker" in point else ""
    p = run_shell(shell_prelude(uri) + action, check=False,
                  env={**os.environ, "REPLICATED_FAILPOINTS": f"{point}={nth}crash"})
    assert p.returncode != 0, f"the failpoint did not fire: {p.stdout} {p.stderr}"
    assert point == "capture.start" or "acked-all" in mark.read_text(), "crashed before the checkpoint"
    assert read_state(uri) == acked
    run_shell(shell_prelude(uri) + "insert into acked values(52, 'y'); pragma wal_checkpoint(TRUNCATE);\n"
              "insert into acked values(53, 'z');\n")
    assert read_state(uri) == acked | {52, 53}


def test_a_checkpoint_whose_records_cannot_be_synced_writes_nothing(tmp_path):
    """The applied-state records are made durable before a checkpoint copies frames into the
    database file (what a restart's reconciliation relies on). When that fails, the checkpoint
    must not write the database file at all; SQLite ignores the answer to the hint, so it went
    ahead. The data stays whole in the WAL, and the next checkpoint copies it."""
    import hashlib
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    rows = ";".join(f"insert into acked values({i}, randomblob(500))" for i in range(1, 41))
    run_shell(shell_prelude(uri) + f"create table acked(id integer primary key, pad); {rows};\n")
    db = tmp_path / "app.db"
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    more = ";".join(f"insert into acked values({i}, randomblob(500))" for i in range(41, 46))
    p = run_shell(shell_prelude(uri) + f"{more};\npragma wal_checkpoint(TRUNCATE);\n", check=False,
                  env={**os.environ, "REPLICATED_FAILPOINTS": "checkpoint.start=error"})
    assert "I/O error" in p.stderr, p.stdout + p.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before, "the refused checkpoint wrote the database"
    assert read_state(uri) == set(range(1, 46))
    assert hashlib.sha256(db.read_bytes()).hexdigest() != before, "the next checkpoint copies the frames"


def test_a_panic_in_the_commit_path_is_contained(tmp_path):
    """A panic in the commit path after the entry was claimed (failpoint action `panic`) fails
    the statement with IOERR and must leave nothing inconsistent: the claimed transaction was
    never published, so the node refuses further writes until a restart, which replays it from
    the log. (Caught only at the FFI boundary before, it left the node writing on top of a state
    that lacked a transaction Raft had committed.)"""
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    run_shell(shell_prelude(uri) + "create table acked(id integer primary key, pad); insert into acked values(1,'a');\n")
    p = run_shell(shell_prelude(uri) + "insert into acked values(2,'b');\nselect 'next';\ninsert into acked values(3,'c');\n",
                  check=False, env={**os.environ, "REPLICATED_FAILPOINTS": "commit.after_quorum=panic"})
    assert "next" in p.stdout, p.stdout + p.stderr
    assert p.stderr.count("I/O error") == 2, p.stderr  # the panicked commit, then the refused write
    assert read_state(uri) == {1, 2}
    run_shell(shell_prelude(uri) + "insert into acked values(4,'d');\n")
    assert read_state(uri) == {1, 2, 4}


def test_crash_before_the_log_fsync(tmp_path):
    """A crash after the entry is written to the Raft log but before its fsync: the commit was
    never acknowledged, so either outcome is allowed; but kill -9 keeps the page cache, the entry is
    then whole in the log, and as the only voter the node must treat it as committed: the row is
    there after restart, exactly once, and the node goes on."""
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    run_shell(shell_prelude(uri) + "create table acked(id integer primary key, pad); insert into acked values(1,'a');\n")
    p = run_shell(shell_prelude(uri) + "insert into acked values(2,'b');\n", check=False,
                  env={**os.environ, "REPLICATED_FAILPOINTS": "log.before_fsync=crash"})
    assert p.returncode != 0, "the failpoint did not fire"
    assert read_state(uri) == {1, 2}
    run_shell(shell_prelude(uri) + "insert into acked values(3,'c');\n")
    assert read_state(uri) == {1, 2, 3}


@pytest.mark.parametrize("point", ["commit.before_propose=crash", "log.after_fsync=4*crash",
                                   "commit.after_quorum=crash"])
def test_crash_while_importing_an_existing_database(tmp_path, point):
    """kill at each step of importing an existing database (several parts): the next start imports
    it (or finds it imported), nothing is lost, and writes work."""
    db = tmp_path / "app.db"
    count, total = make_existing_db(db, rows=1000)
    uri = repl_uri(db, data=tmp_path / "raft")
    p = run_shell(shell_prelude(uri) + "select count(*) from old;\n", check=False,
                  env={**os.environ, "REPLICATED_FAILPOINTS": point})
    assert p.returncode != 0, "the failpoint did not fire"
    out = run_shell(shell_prelude(uri) + "select count(*), sum(r) from old;\ninsert into old(r) values(1);\n"
                    "select count(*) from old;\npragma integrity_check;\n").stdout.split()
    assert out == [f"{count}|{total}", str(count + 1), "ok"], out
    assert not (tmp_path / "raft" / "import").exists()


def test_checkpoints_racing_commits_in_one_process_are_not_mistaken_for_foreign_writes(tmp_path):
    """Several connections of one process: two commit in loops while a third runs PASSIVE and
    TRUNCATE checkpoints in a loop. A checkpoint holds no write lock, so it can look at the
    wal-index while a commit is being published; the check for frames this node did not write
    (node.rs, check_wal_end) must never take such a moment for a foreign write."""
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    script = f"""
import threading, time
U = {uri!r}
c = sqlite3.connect(U, uri=True, isolation_level=None, check_same_thread=False)
c.execute("create table t(id integer primary key, w, pad)")
errors, done = [], time.time() + 4
def writer(k):
    w = sqlite3.connect(U, uri=True, isolation_level=None, timeout=30)
    n = 0
    while time.time() < done:
        try:
            w.execute("insert into t(w, pad) values(?, randomblob(300))", (k,))
            n += 1
        except sqlite3.Error as e:
            errors.append(f"writer {{k}}: {{e}} {{w.execute('select replicated_last_error()').fetchone()}}")
            return
    print("wrote", n)
def checkpointer():
    k = sqlite3.connect(U, uri=True, isolation_level=None, timeout=30)
    n = 0
    while time.time() < done:
        try:
            k.execute("pragma wal_checkpoint(PASSIVE)" if n % 4 else "pragma wal_checkpoint(TRUNCATE)").fetchall()
            n += 1
        except sqlite3.Error as e:
            errors.append(f"checkpoint: {{e}}")
            return
    print("checkpoints", n)
ts = [threading.Thread(target=writer, args=(i,)) for i in range(2)] + [threading.Thread(target=checkpointer)]
[t.start() for t in ts]
[t.join() for t in ts]
print("errors", errors)
print("last", c.execute("select replicated_last_error()").fetchone()[0])
"""
    p = run_host(script, "")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "errors []" in lines and "last None" in lines, p.stdout + p.stderr[-2000:]
    wrote = sum(int(l.split()[1]) for l in lines if l.startswith("wrote "))
    assert wrote > 200 and any(l.startswith("checkpoints ") for l in lines), p.stdout
    assert "ok" in run_shell(shell_prelude(uri) + "pragma integrity_check;\n").stdout


def test_restoring_a_backup_into_a_replicated_database(tmp_path):
    """The backup API writing into a replicated database (the shell's `.restore`): the copy is one
    write transaction through the pager, captured and committed like any other, and survives a
    restart; a source whose page size differs is refused by SQLite (a WAL database cannot change
    its page size) and leaves the database as it was."""
    src, odd = tmp_path / "src.db", tmp_path / "odd.db"
    subprocess.run(["sqlite3", str(src), "create table s(a, b); create index si on s(a);"
                    "insert into s select value, randomblob(300) from generate_series(1, 3000);"], check=True)
    subprocess.run(["sqlite3", str(odd), "pragma page_size=8192; create table o(x); insert into o values(1);"],
                   check=True)
    uri = repl_uri(tmp_path / "app.db", data=tmp_path / "raft")
    p = run_shell(shell_prelude(uri) + "create table before(x);\n"
                  f".restore {src}\nselect count(*), sum(length(b)) from s;\n", check=False)
    assert p.stdout.split() == ["3000|900000"], p.stdout + p.stderr
    p = run_shell(shell_prelude(uri) + f".restore {odd}\n", check=False)
    assert "readonly" in p.stderr, p.stdout + p.stderr  # SQLite's answer for a WAL database, plain or not
    p = run_shell(shell_prelude(uri) + "select count(*), sum(length(b)) from s;\n"
                  "select group_concat(name) from sqlite_master;\npragma integrity_check;\n")
    assert p.stdout.split() == ["3000|900000", "s,si", "ok"], p.stdout


def test_two_replicated_databases_attached_to_one_connection(tmp_path):
    """ATTACH of a second replicated database: two nodes in one process, one per database. A
    transaction that writes both commits on both (each one atomically; SQLite in WAL mode is not
    atomic across attached databases, replicated or not) and both survive a restart."""
    a = repl_uri(tmp_path / "a.db", data=tmp_path / "ra")
    b = repl_uri(tmp_path / "b.db", data=tmp_path / "rb")
    p = run_shell(shell_prelude(a) + f"attach '{b}' as b;\n"
                  "create table main.t(x); create table b.u(y);\n"
                  "begin; insert into main.t values(1); insert into b.u values(2); commit;\n"
                  "select json_extract(replicated_status(), '$.role'), json_extract(replicated_status('b'), '$.db');\n")
    assert p.stdout.split() == [f"leader|{tmp_path / 'b.db'}"], p.stdout + p.stderr
    p = run_shell(shell_prelude(b) + f"attach '{a}' as a;\n"
                  "select (select group_concat(x) from a.t), (select group_concat(y) from main.u);\n"
                  "pragma a.integrity_check;\npragma main.integrity_check;\n")
    assert p.stdout.split() == ["1|2", "ok", "ok"], p.stdout + p.stderr
