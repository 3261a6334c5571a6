"""Configuration and refusals through the real sqlite3 shell (DESIGN §3.1, §3.3).

Every missing, unknown or malformed key fails the open with a message that names the key; the
TOML file (config= or REPLICATED_CONFIG) works and the URI wins over it; pragmas and URI flags that
would bypass replication are refused with a message.
"""
import os

import pytest

from util import LIB, LIB_SO, SECRET, free_port, make_existing_db, run_shell

pytestmark = pytest.mark.skipif(not LIB_SO.exists(), reason="library not built (run `make`)")


def open_uri(tmp_path, params: str, env=None, sql="select 1;"):
    uri = f"file:{tmp_path}/app.db?vfs=replicated&{params}"
    return run_shell(f".load {LIB}\n.open '{uri}'\n{sql}\n", check=False, env=env)


def good(port, extra=""):
    return f"node=1&peers=1@127.0.0.1:{port}&secret={SECRET}{extra}"


CASES = [
    ("peers=1@127.0.0.1:{p}&secret={s}", "'node'"),
    ("node=0&peers=1@127.0.0.1:{p}&secret={s}", "'node'"),
    ("node=abc&peers=1@127.0.0.1:{p}&secret={s}", "'node'"),
    ("node=1&secret={s}", "'peers'"),
    ("node=1&peers=1@nowhere&secret={s}", "'peers'"),
    ("node=1&peers=2@127.0.0.1:{p}&secret={s}", "'peers'"),
    ("node=1&peers=1@127.0.0.1:{p},1@127.0.0.1:9&secret={s}", "'peers'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&listen=nope", "'listen'"),
    ("node=1&peers=1@127.0.0.1:{p}", "'secret'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret=short", "'secret'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret_file=/nonexistent/key", "'secret_file'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&secret_file=/k", "'secret_file'"),
    ("node=1&peers=1@127.0.0.1:{p}&tls_ca=/x", "'tls_cert'"),
    ("node=1&peers=1@127.0.0.1:{p}&tls_ca=/x&tls_cert=/x&tls_key=/x", "'tls_ca'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&ack=sometimes", "'ack'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&timeout_ms=-5", "'timeout_ms'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&timeout_ms=0", "'timeout_ms'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&data=", "'data'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&election_ms=x", "'election_ms'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&heartbeat_ms=200&election_ms=300", "'election_ms'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&heartbeat_ms=0", "'heartbeat_ms'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&colour=blue", "'colour'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&config=/nonexistent.toml", "'config'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&immutable=1", "'immutable'"),
    ("node=1&peers=1@127.0.0.1:{p}&secret={s}&nolock=1", "'nolock'"),
]


@pytest.mark.parametrize("params,key", CASES, ids=[c[1].strip("'") + f"-{i}" for i, c in enumerate(CASES)])
def test_bad_configuration_fails_the_open_naming_the_key(tmp_path, params, key):
    p = open_uri(tmp_path, params.format(p=free_port(), s=SECRET))
    err = p.stdout + p.stderr
    assert "replicated:" in err and key in err, err
    assert not os.path.exists(tmp_path / "app.db-raft" / "log"), "a refused open must not start a node"


def test_bad_snapshot_setting_fails_the_open(tmp_path):
    env = {**os.environ, "REPLICATED_SNAPSHOT_EVERY": "often"}
    p = open_uri(tmp_path, good(free_port()), env=env)
    err = p.stdout + p.stderr
    assert "REPLICATED_SNAPSHOT_EVERY" in err and "often" in err, err
    assert not os.path.exists(tmp_path / "app.db-raft" / "log"), "a refused open must not start a node"


def test_toml_file_and_env_and_uri_precedence(tmp_path):
    port = free_port()
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'node = 1\npeers = ["1@127.0.0.1:{port}"]\nsecret = "{SECRET}"\ndata = "{tmp_path}/raftdata"\n')
    p = open_uri(tmp_path, f"config={cfg}", sql="create table t(a); select json_extract(replicated_status(),'$.data');")
    assert p.returncode == 0 and p.stdout.strip().endswith(f"{tmp_path}/raftdata"), p.stdout + p.stderr
    # Environment variable, and the URI overriding one key of the file.
    p = open_uri(tmp_path, "timeout_ms=1234", env={**os.environ, "REPLICATED_CONFIG": str(cfg)},
                 sql="select count(*) from t;")
    assert p.returncode == 0 and p.stdout.strip() == "0", p.stdout + p.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('node = 1\nsecrett = "x"\n')
    p = open_uri(tmp_path, f"config={bad}")
    assert "'secrett'" in p.stdout + p.stderr


def test_secret_file(tmp_path):
    key = tmp_path / "cluster.key"
    key.write_text(SECRET + "\n")
    p = open_uri(tmp_path, f"node=1&peers=1@127.0.0.1:{free_port()}&secret_file={key}",
                 sql="create table t(a); insert into t values(1); select count(*) from t;")
    assert p.returncode == 0 and p.stdout.strip() == "1", p.stdout + p.stderr


@pytest.mark.parametrize("pragma,word", [
    ("PRAGMA journal_mode=DELETE;", "journal_mode"),
    ("PRAGMA journal_mode=memory;", "journal_mode"),
    ("PRAGMA locking_mode=EXCLUSIVE;", "locking_mode"),
    ("PRAGMA synchronous=NORMAL;", "synchronous"),
    ("PRAGMA synchronous=OFF;", "synchronous"),
    ("PRAGMA synchronous=1;", "synchronous"),
    # Other spellings SQLite reads as NORMAL or OFF (pragma.c getSafetyLevel): a commit at such a
    # level is never synced, so it would be published without passing through Raft.
    ("PRAGMA synchronous=on;", "synchronous"),
    ("PRAGMA synchronous=yes;", "synchronous"),
    ("PRAGMA synchronous=9;", "synchronous"),
    ("PRAGMA synchronous=no;", "synchronous"),
    ("PRAGMA synchronous=7;", "synchronous"),
])
def test_refused_pragmas(tmp_path, pragma, word):
    port = free_port()
    p = open_uri(tmp_path, good(port), sql=f"create table t(a);\n{pragma}\nselect 'after';")
    err = p.stdout + p.stderr
    assert "replicated:" in err and word in err, err
    # The database is still in WAL mode, synchronous FULL, and writable.
    p = open_uri(tmp_path, good(port), sql="PRAGMA journal_mode; PRAGMA synchronous; insert into t values(1);"
                 " PRAGMA synchronous=FULL; PRAGMA journal_mode=WAL; select count(*) from t;")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split() == ["wal", "2", "wal", "1"], p.stdout


def test_existing_rollback_database_becomes_initial_state(tmp_path):
    db = tmp_path / "app.db"
    run_shell(f".open {db}\nPRAGMA journal_mode=DELETE;\ncreate table old(a); insert into old values(41),(1);\n")
    p = open_uri(tmp_path, good(free_port()), sql="insert into old values(0); select sum(a), count(*) from old;"
                 " PRAGMA journal_mode;")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split() == ["42|3", "wal"], p.stdout


def test_existing_wal_database_keeps_the_transactions_in_its_wal(tmp_path):
    """An existing WAL-mode database whose last transaction is only in its -wal file (its last user
    crashed): the node lets SQLite recover and checkpoint it before reconciling, so nothing is lost."""
    count, total = make_existing_db(tmp_path / "app.db", rows=100)
    p = open_uri(tmp_path, good(free_port()), sql="select count(*), sum(r) from old; insert into old(r) values(1);"
                 " select count(*) from old; pragma integrity_check;")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.split() == [f"{count}|{total}", str(count + 1), "ok"], p.stdout


def test_existing_database_with_another_page_size_is_refused(tmp_path):
    run_shell(f".open {tmp_path}/app.db\nPRAGMA page_size=8192;\ncreate table t(a); insert into t values(1);\n")
    p = open_uri(tmp_path, good(free_port()))
    assert "page size is 8192" in p.stdout + p.stderr and "VACUUM" in p.stdout + p.stderr, p.stdout + p.stderr


def test_second_process_with_same_node_is_refused(tmp_path):
    import subprocess
    port = free_port()
    uri = f"file:{tmp_path}/app.db?vfs=replicated&{good(port)}"
    holder = subprocess.Popen(["sqlite3", "-batch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    holder.stdin.write(f".load {LIB}\n.open '{uri}'\ncreate table t(a);\nselect 'opened';\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "opened"
    try:
        p = open_uri(tmp_path, good(port))
        assert "in use by another process" in p.stdout + p.stderr
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_node_does_not_start_while_another_process_has_the_database_open(tmp_path):
    """Restart reconciliation rewrites the WAL and deletes -shm; a reader attached meanwhile would be
    left on a stale wal-index, so the node refuses to start and says why."""
    import subprocess
    port = free_port()
    run_shell(f".load {LIB}\n.open 'file:{tmp_path}/app.db?vfs=replicated&{good(port)}'\ncreate table t(a);\n"
              "insert into t values(1);\n")
    reader = subprocess.Popen(["sqlite3", "-readonly", str(tmp_path / "app.db")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader.stdin.write("select count(*) from t;\n")
    reader.stdin.flush()
    assert reader.stdout.readline().strip() == "1"
    try:
        p = open_uri(tmp_path, good(port), sql="select count(*) from t;")
        assert "open in another process" in p.stdout + p.stderr, p.stdout + p.stderr
    finally:
        reader.stdin.close()
        reader.wait(timeout=10)
    p = open_uri(tmp_path, good(port), sql="select count(*) from t;")
    assert p.returncode == 0 and p.stdout.strip() == "1", p.stdout + p.stderr
