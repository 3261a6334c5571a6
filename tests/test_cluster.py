"""Multi-node behaviour with real processes on loopback (DESIGN §3.3, §3.5).

Three (or more) node processes, each a real Python host that loaded the extension. Writes go to the
leader; followers apply through the wal-index protocol and serve reads; kill -9, restarts and
iptables partitions try to lose acknowledged commits, show uncommitted ones, or make nodes diverge.
"""
import os
import random
import select
import shutil
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest

from cluster import Cluster, SqlError
from util import LIB_SO, make_existing_db

pytestmark = pytest.mark.skipif(not LIB_SO.exists(), reason="library not built (run `make`)")
SQLITE_READONLY = 8
SQLITE_IOERR = 10
HAVE_IPTABLES = shutil.which("iptables") is not None and os.geteuid() == 0


@pytest.fixture
def cluster(tmp_path):
    clusters = []

    def make(n=3, **params):
        c = Cluster(tmp_path / f"c{len(clusters)}", n, **params)
        clusters.append(c)
        return c.start()

    yield make
    for c in clusters:
        c.heal()
        c.stop()


def test_replicate_read_on_followers_and_converge(cluster):
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(id integer primary key, r integer, at text, pad blob)")
    for i in range(100):
        leader.sql("insert into t(r, at, pad) values(random(), datetime('now'), randomblob(50))")
    leader.sql("begin")
    for i in range(2000):  # a transaction that spills and spans many pages
        leader.sql("insert into t(r, at, pad) values(random(), datetime('now'), randomblob(300))")
    leader.sql("commit")
    c.sync_all()
    dumps = {n.id: c.dump(n, ["t"]) for n in c.alive()}
    assert len(dumps[leader.id]["t"]) == 2100
    assert all(d == dumps[leader.id] for d in dumps.values()), "nodes hold different content"
    for n in c.alive():
        assert n.one("pragma integrity_check") == "ok"
    # Writes on a follower are refused before any page is written, naming the leader.
    f = c.followers()[0]
    with pytest.raises(SqlError) as e:
        f.sql("insert into t(r) values(1)")
    assert e.value.code & 0xff == SQLITE_READONLY
    assert f"node {leader.id}@" in f.one("select replicated_last_error()")
    assert f.one("select replicated_leader()").startswith(f"{leader.id}@127.0.0.1:")
    # After a TRUNCATE checkpoint the database files are byte-identical.
    hashes = c.checkpoint_and_hash()
    assert len(set(hashes.values())) == 1, hashes


def test_status_shape(cluster):
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    c.sync_all()
    for n in c.alive():
        s = n.status()
        for k in ("node_id", "role", "term", "leader_id", "leader_addr", "commit_index", "applied_index",
                  "members", "db"):
            assert k in s, (k, s)
        assert s["role"] == ("leader" if n.id == leader.id else "follower")
        assert [m["id"] for m in s["members"]] == [1, 2, 3]
        assert all(m["voter"] for m in s["members"])
    ls = leader.status()
    assert all(m["matched_index"] is not None and m["matched_index"] >= 1 for m in ls["members"]), ls


def test_ack_apply_means_a_majority_has_applied(cluster):
    c = cluster(3, ack="apply")
    leader = c.leader()
    leader.sql("create table t(a)")
    c.sync_all()

    def seen(f, i):
        # Only a majority must have applied: the other follower may lag (even behind the DDL).
        try:
            return f.one("select count(*) from t where a = ?", i)
        except SqlError:
            return 0

    for i in range(30):
        leader.sql("insert into t values(?)", i)
        assert 1 in [seen(f, i) for f in c.followers()], f"row {i} acknowledged but applied on no follower"


def test_leader_killed_failover_and_rejoin(cluster):
    c = cluster(3)
    c.leader().sql("create table acked(id integer primary key)")
    acked = set()
    for i in range(50):
        c.write("insert into acked values(?)", i)
        acked.add(i)
    old = c.leader()
    old.kill()
    t0 = time.time()
    for i in range(50, 100):
        c.write("insert into acked values(?)", i, timeout=20)
        acked.add(i)
    new = c.leader()
    assert new.id != old.id
    old.start()
    c.sync_all()
    for n in c.alive():
        ids = {r[0] for r in n.sql("select id from acked")}
        assert ids == acked, f"node {n.id}: lost {sorted(acked - ids)[:10]} extra {sorted(ids - acked)[:10]}"
        assert n.one("pragma integrity_check") == "ok"
    assert len(set(c.checkpoint_and_hash().values())) == 1
    print(f"writes accepted again {time.time() - t0:.2f}s after kill -9 of the leader (incl. 50 writes)")


def test_full_cluster_kill_and_restart(cluster):
    c = cluster(3)
    c.leader().sql("create table acked(id integer primary key)")
    acked = set()
    for i in range(200):
        c.write("insert into acked values(?)", i)
        acked.add(i)
    for n in c.nodes.values():
        n.kill()
    for n in c.nodes.values():
        n.start()
    c.leader(timeout=20)
    c.sync_all()
    for n in c.alive():
        ids = {r[0] for r in n.sql("select id from acked")}
        assert acked <= ids and ids <= acked | {200}, f"node {n.id}: lost {sorted(acked - ids)[:10]}"
        assert n.one("pragma integrity_check") == "ok"
    c.write("insert into acked values(1000)")
    c.sync_all()
    assert len({n.one("select count(*) from acked") for n in c.alive()}) == 1


def test_a_follower_that_lost_its_unsynced_wal_replays_to_its_newest_record(cluster):
    """No node fsyncs its WAL (the Raft log holds the frames); the applied-state records are
    synced before a checkpoint copies frames into the database file. A power loss is modelled
    after kill -9: the follower's WAL and wal-index are deleted (every WAL write lost) and its
    persisted commit index is deleted (it may lag). Its database file holds the checkpointed
    state. Restarted while the other nodes are down (nothing can reach it from a leader), it
    must be at that state: its applied index where its newest record says, not at the last
    checkpoint marker (from where the leader would later re-apply entries over newer pages),
    also when its first restart dies halfway through the replay. Then the cluster converges."""
    c = cluster(3)
    c.leader().sql("create table acked(id integer primary key, v)")
    for i in range(200):
        c.write("insert into acked values(?, randomblob(300))", i)
    c.sync_all()
    f = c.followers()[0]
    busy, log_frames, copied = f.sql("pragma wal_checkpoint(full)")[0]
    assert busy == 0 and copied == log_frames > 0
    applied = f.status()["applied_index"]
    for n in c.nodes.values():
        n.kill()
    for name in ("app.db-wal", "app.db-shm", "app.db-raft/log/committed"):
        (f.db.parent / name).unlink()
    # The first start dies halfway through its replay: the next must still replay to the end.
    with pytest.raises(Exception):
        f.start(env={"REPLICATED_FAILPOINTS": "reconcile.replay_entry=20*crash"})
    f.proc = None
    f.start()
    assert f.one("select count(*) from acked") == 200
    assert f.one("pragma integrity_check") == "ok"
    assert f.status()["applied_index"] == applied
    for n in c.nodes.values():
        if n is not f:
            n.start()
    c.leader(timeout=20)
    c.write("insert into acked values(1000, 'x')")
    c.sync_all()
    assert {n.one("select count(*) from acked") for n in c.alive()} == {201}
    assert len(set(c.checkpoint_and_hash().values())) == 1


def restart_after_failpoint_crash(node, timeout=10):
    """Waits for `node`'s failpoint to kill it (the test fails if it does not), then restarts it
    without failpoints."""
    deadline = time.time() + timeout
    while node.alive() and time.time() < deadline:
        time.sleep(0.05)
    assert not node.alive(), "the failpoint did not fire"
    node.proc = None
    node.start()


def eager_leader(c, action):
    """Creates table t, then makes a follower, restarted with the failpoint `log.eager_sent=<action>`,
    the leader, and waits until its followers are caught up (eager sends go only to those).
    Returns it and the other nodes."""
    c.leader().sql("create table t(a)")
    c.sync_all()
    f = c.followers()[0]
    f.kill()
    f.start(env={"REPLICATED_FAILPOINTS": f"log.eager_sent={action}"})
    c.sync_all()
    assert c.leader().one("select replicated_transfer_leader(?)", f.id) == f.id
    assert c.leader().id == f.id
    deadline = time.time() + 10
    while True:
        st = f.status()
        if all(m["matched_index"] == st["last_log_index"] for m in st["members"]):
            break
        assert time.time() < deadline, st
        time.sleep(0.02)
    return f, [n for n in c.alive() if n is not f]


def drop_last_log_record(node):
    """What a power loss does to an append whose fsync never completed: the last record of the
    node's newest log segment (log_store.rs: u32 length, u32 crc32, payload) reads as zeros."""
    seg = max((node.db.parent / "app.db-raft" / "log").glob("log-*.seg"))
    data = bytearray(seg.read_bytes())
    off, last = 0, None
    while off + 8 <= len(data):
        n = int.from_bytes(data[off:off + 4], "little")
        crc = int.from_bytes(data[off + 4:off + 8], "little")
        if n == 0 or off + 8 + n > len(data) or zlib.crc32(data[off + 8:off + 8 + n]) != crc:
            break
        last, off = (off, off + 8 + n), off + 8 + n
    assert last is not None, f"no record in {seg}"
    data[last[0]:last[1]] = bytes(last[1] - last[0])
    seg.write_bytes(bytes(data))


def test_a_leader_that_lost_its_unsynced_tail_does_not_lead_that_term_again(cluster):
    """Eager replication hands an entry to the followers before the leader's own fsync. If the
    leader then loses that entry (power loss: here it dies there, and its last log record is
    zeroed), it must not restart as the leader of the same term, as openraft 0.9 would for a
    node whose saved vote is committed and its own: it would write a different entry under the
    log id the followers already hold, they would take it for theirs, and the nodes would
    diverge. It restarts as a follower (log_store.rs, `give_up_own_term`) and gets the entry
    back from them. The followers are paused while it restarts so that they cannot move to a
    new term first (which would hide the bug)."""
    c = cluster(3, election_ms=1500)
    f, others = eager_leader(c, "crash")
    f.submit("insert into t values(42)")  # f dies after the eager send, before its own fsync
    deadline = time.time() + 10
    while f.alive() and time.time() < deadline:
        time.sleep(0.005)
    assert not f.alive(), "the failpoint did not fire"
    f.proc = None
    time.sleep(0.2)  # the followers write what f sent them (their leases last 3 s)
    for n in others:
        n.pause()
    try:
        drop_last_log_record(f)
        f.start()
        f.submit("insert into t values(43)")
        time.sleep(0.5)
    finally:
        for n in others:
            n.resume()
    ready, _, _ = select.select([f.proc.stdout], [], [], 30)
    assert ready, "no answer to the write on the restarted node"
    f.proc.stdout.readline()  # refused (it no longer leads) or committed: either is fine
    deadline = time.time() + 30
    while True:
        try:
            c.sync_all()
            break
        except SqlError:
            assert time.time() < deadline, "the cluster did not recover"
            time.sleep(0.2)
    dumps = {n.id: c.dump(n, ["t"]) for n in c.alive()}
    assert len({str(d) for d in dumps.values()}) == 1, f"the nodes diverged: {dumps}"
    assert [42] in dumps[f.id]["t"], "the entry the followers hold was lost"
    assert all(n.one("pragma integrity_check") == "ok" for n in c.alive())
    assert len(set(c.checkpoint_and_hash().values())) == 1


def test_follower_killed_mid_apply_recovers(cluster):
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    victim = c.followers()[0]
    victim.kill()
    victim.start(env={"REPLICATED_FAILPOINTS": "apply.before_publish=3*crash"})
    c.sync_all()
    for i in range(10):
        leader.sql("insert into t values(?)", i)
    restart_after_failpoint_crash(victim)
    c.sync_all()
    assert victim.one("select count(*) from t") == 10
    assert victim.one("pragma integrity_check") == "ok"


def test_follower_killed_as_its_applier_starts_a_wal_generation(cluster):
    """The applier writes a new WAL header for the entry it is applying (the WAL was checkpointed
    and truncated), which records a checkpoint marker. The marker must name what is in the
    database file, not the entry being applied: killed right after the marker is written (second
    pass of the failpoint; the first is the TRUNCATE below), the follower must still show that
    entry after its restart. (It lost it before the fix; later writes to the same page hid the
    loss, so the entry is checked before anything else is written, and in its own table.)"""
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    leader.sql("create table u(a)")
    for i in range(5):
        leader.sql("insert into t values(?)", i)
    c.sync_all()
    victim = c.followers()[0]
    victim.kill()
    victim.start(env={"REPLICATED_FAILPOINTS": "checkpoint.after_marker=2*crash"})
    c.sync_all()
    victim.sql("pragma wal_checkpoint(TRUNCATE)")
    leader.sql("insert into u values(100)")
    restart_after_failpoint_crash(victim)
    c.sync_all()
    assert victim.one("select group_concat(a) from u") == "100", "the entry being applied was lost"
    leader.sql("insert into t values(101)")
    c.sync_all()
    dumps = {n.id: c.dump(n, ["t", "u"]) for n in c.alive()}
    assert all(d == dumps[leader.id] for d in dumps.values()), "nodes hold different content"
    assert victim.one("pragma integrity_check") == "ok"


def test_entries_committed_while_a_follower_starts_wait_for_its_applier(cluster):
    """A restarting follower's Raft core runs before the node attaches its applier; the leader's
    AppendEntries then has it apply the entries it missed. Held at that point (failpoint delay),
    the applies must wait for the applier rather than fail: before the fix the node stopped
    accepting writes ("the database is gone") until its next restart."""
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    c.sync_all()
    victim = c.followers()[0]
    victim.kill()
    for i in range(20):
        leader.sql("insert into t values(?)", i)
    victim.start(env={"REPLICATED_FAILPOINTS": "start.before_attach=delay"})
    c.sync_all()
    assert victim.one("select count(*) from t") == 20
    assert victim.one("select replicated_last_error()") is None
    # It can lead and write.
    assert leader.one("select replicated_transfer_leader(?)", victim.id) == victim.id
    victim.sql("insert into t values(20)")
    c.sync_all()
    assert {n.one("select count(*) from t") for n in c.alive()} == {21}


def test_leader_replicates_before_its_own_fsync(cluster):
    """Eager replication (log_store.rs): a leader hands a small entry to its followers before its
    own fsync. A leader stuck there (failpoint: its runtime thread blocks) never acknowledges the
    write, yet the followers hold it, so the two of them elect a leader that commits it; the
    stuck node, killed and restarted, converges with them byte for byte."""
    c = cluster(3)
    f, others = eager_leader(c, "pause")
    f.submit("insert into t values(42)")  # it blocks inside f: no answer will come
    deadline = time.time() + 20
    while True:
        try:
            new = c.leader(among=others, timeout=1)
            new.one("select replicated_sync(2000)")
            if new.one("select count(*) from t where a = 42") == 1:
                break
        except (SqlError, AssertionError):
            pass
        assert time.time() < deadline, "the majority did not commit the entry the stuck leader sent"
        time.sleep(0.1)
    assert not select.select([f.proc.stdout], [], [], 0)[0], "the stuck leader answered the write"
    f.kill()
    f.start()
    c.sync_all()
    assert {n.one("select count(*) from t where a = 42") for n in c.alive()} == {1}
    assert all(n.one("pragma integrity_check") == "ok" for n in c.alive())
    assert len(set(c.checkpoint_and_hash().values())) == 1


@pytest.mark.skipif(not HAVE_IPTABLES, reason="needs root and iptables")
def test_isolated_leader_cannot_commit_and_cluster_converges(cluster):
    c = cluster(3, timeout_ms=1500)
    old = c.leader()
    old.sql("create table t(a)")
    c.sync_all()
    c.isolate(old.id)
    with pytest.raises(SqlError) as e:
        old.sql("insert into t values('from the isolated leader')")
    assert e.value.code & 0xff in (SQLITE_IOERR, SQLITE_READONLY), e.value
    rest = [n for n in c.alive() if n.id != old.id]
    new = c.leader(among=rest, timeout=15)
    assert new.id != old.id
    new.sql("insert into t values('from the new leader')")
    c.heal()
    c.sync_all()
    contents = {n.id: sorted(r[0] for r in n.sql("select a from t")) for n in c.alive()}
    assert len({tuple(v) for v in contents.values()}) == 1, contents
    assert "from the new leader" in contents[new.id]
    assert len(set(c.checkpoint_and_hash().values())) == 1


def test_add_and_remove_nodes(cluster):
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    for i in range(100):
        leader.sql("insert into t values(?)", i)
    # Node 4 starts with the full peer list but does not initialize: it waits to be added.
    follower = next(c.nodes[i] for i in (1, 2, 3) if i != leader.id)
    n4 = c.add_node(4).start()
    time.sleep(1.0)  # several election timeouts: a node that is not a member must not campaign
    s4 = n4.status()
    assert s4["role"] in ("learner", "follower") and s4["term"] == 0, s4
    with pytest.raises(SqlError) as e:
        follower.sql("select replicated_add_node(4, ?)", f"127.0.0.1:{c.ports[4]}")
    assert "leader" in str(e.value)
    idx = leader.one("select replicated_add_node(4, ?)", f"127.0.0.1:{c.ports[4]}")
    assert idx > 0
    leader.sql("insert into t values(100)")
    c.sync_all()
    assert n4.one("select count(*) from t") == 101
    members = {m["id"]: m["voter"] for m in leader.status()["members"]}
    assert members == {1: True, 2: True, 3: True, 4: True}, members
    # Remove a follower that is not node 4; the rest keep working.
    gone = next(n for n in c.followers() if n.id != 4)
    leader.one("select replicated_remove_node(?)", gone.id)
    members = {m["id"] for m in leader.status()["members"]}
    assert gone.id not in members
    gone.kill()
    c.write("insert into t values(101)")
    c.sync_all()
    counts = {n.id: n.one("select count(*) from t") for n in c.alive()}
    assert set(counts.values()) == {102}, counts
    assert len(set(c.checkpoint_and_hash().values())) == 1


def wait_until(cond, timeout=10, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_wrong_secret_and_garbage_are_refused_and_cluster_keeps_working(cluster):
    import socket
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    victim = next(n for n in c.followers())
    victim.kill()
    victim.auth = "secret=not-the-cluster-secret-at-all"
    victim.start()
    for i in range(20):
        leader.sql("insert into t values(?)", i)
    # Garbage datagrams at every node's port.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for port in c.ports.values():
            for k in range(50):
                s.sendto(os.urandom(1 + k * 20), ("127.0.0.1", port))
    leader.sql("insert into t values(20)")
    time.sleep(0.5)
    assert victim.one("select count(*) from t") == 0, "a node with the wrong secret received data"
    log = (victim.db.parent / "node.log").read_text() + "".join(
        (n.db.parent / "node.log").read_text() for n in c.nodes.values() if n is not victim)
    assert "refus" in log.lower() or "proof" in log.lower(), "refusals are not logged"
    victim.kill()
    victim.auth = None
    victim.start()
    c.sync_all()
    assert victim.one("select count(*) from t") == 21


def test_mutual_tls_cluster_and_foreign_ca(cluster, tmp_path):
    tool = os.path.join(os.path.dirname(str(LIB_SO)), "replicated-certs")
    certs, foreign = tmp_path / "certs", tmp_path / "foreign"
    subprocess.run([tool, str(certs), "1@127.0.0.1", "2@127.0.0.1", "3@127.0.0.1"], check=True, capture_output=True)
    subprocess.run([tool, str(foreign), "3@127.0.0.1"], check=True, capture_output=True)
    c = Cluster(tmp_path / "tls", 3, certs=certs)
    try:
        c.start()
        leader = c.leader()
        leader.sql("create table t(a)")
        leader.sql("insert into t values(1)")
        c.sync_all()
        assert {n.one("select count(*) from t") for n in c.alive()} == {1}
        victim = c.followers()[0]
        victim.kill()
        if victim.id == 3:
            victim.auth = f"tls_ca={foreign}/ca.pem&tls_cert={foreign}/node-3.pem&tls_key={foreign}/node-3.key"
        else:  # a certificate from the foreign CA for the right node id would be needed; reuse node 3's
            victim.auth = f"tls_ca={certs}/ca.pem&tls_cert={certs}/node-3.pem&tls_key={certs}/node-3.key"
        try:
            victim.start()
            started = True
        except RuntimeError:
            started = False  # refusing to start with a certificate that names another node is fine too
        leader.sql("insert into t values(2)")
        time.sleep(0.5)
        if started:
            assert victim.one("select count(*) from t") == 1, "a node with a foreign/wrong certificate got data"
        victim.kill()
        victim.auth = None
        victim.start()
        c.sync_all()
        assert victim.one("select count(*) from t") == 2
    finally:
        c.stop()


def test_readers_keep_snapshots_during_applies(cluster):
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    leader.sql("insert into t values(0)")
    c.sync_all()
    f = c.followers()[0]
    # A reader in the follower's own process, inside a transaction.
    f.sql("begin")
    assert f.one("select count(*) from t") == 1
    # A plain sqlite3 process reading the follower's files, read-only.
    shell = subprocess.Popen(["sqlite3", "-readonly", str(f.db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)

    def shell_sql(q):
        shell.stdin.write(q + "\nselect 'END';\n")
        shell.stdin.flush()
        out = []
        for line in shell.stdout:
            if line.strip() == "END":
                return out
            out.append(line.strip())

    shell_sql("begin;")
    assert shell_sql("select count(*) from t;") == ["1"]
    for i in range(1, 300):
        leader.sql("insert into t values(?)", i)
    wait_until(lambda: c.nodes[[n.id for n in c.followers() if n.id != f.id][0]].one(
        "select count(*) from t") == 300, what="the other follower to apply")
    time.sleep(0.3)
    assert f.one("select count(*) from t") == 1, "the in-process reader's snapshot moved"
    assert shell_sql("select count(*) from t;") == ["1"], "the plain sqlite3 reader's snapshot moved"
    f.sql("commit")
    shell_sql("commit;")
    wait_until(lambda: f.one("select count(*) from t") == 300, what="the follower to show every row")
    assert shell_sql("select count(*), sum(a) from t; pragma integrity_check;") == ["300|44850", "ok"]
    shell.stdin.close()
    shell.wait(timeout=10)


def peak_rss_mib(node):
    """The node process's peak resident set size (VmHWM), in MiB."""
    with open(f"/proc/{node.proc.pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


# One 4000-byte blob per 4 KiB page: 68,000 rows are about 266 MiB of pages in one transaction.
BIG_ROWS = 68_000
# Below the transaction itself, so no node can have held it whole. What does stay in memory is
# bounded by constants: the leader's proposal window (8 parts of 512 KiB), and per follower stream
# the batch openraft reads from the log for one AppendEntries (max_payload_entries, 64 entries of
# at most 512 KiB, sent in messages of at most 4 MiB): about 32 MiB per follower stream, whatever
# the transaction size.
# Measured: 40-90 MiB per node (the leader is the largest).
RSS_LIMIT_MIB = 192


def test_transaction_of_256_mib_replicates_with_bounded_memory(cluster, capsys):
    """A transaction larger than 256 MiB commits with the default timeout_ms, replicates as bounded
    entries read back from the log at its last part, and no node's memory grows with it."""
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table big(id integer primary key, b blob)")
    c.sync_all()
    start = time.monotonic()
    leader.sql(f"with recursive n(i) as (select 1 union all select i + 1 from n where i < {BIG_ROWS}) "
               "insert into big(b) select randomblob(4000) from n")
    took = time.monotonic() - start
    c.sync_all(timeout_ms=120000)
    size = leader.one("select page_count * page_size from pragma_page_count(), pragma_page_size()")
    assert size >= 256 << 20, size
    assert {tuple(n.sql("select count(*), sum(length(b)) from big")[0]) for n in c.alive()} == \
        {(BIG_ROWS, BIG_ROWS * 4000)}
    rss = {n.id: round(peak_rss_mib(n)) for n in c.alive()}
    with capsys.disabled():
        print(f"\n  {size / 2**20:.0f} MiB transaction committed in {took:.1f} s on 3 nodes; "
              f"peak RSS per node (MiB): {rss}", flush=True)
    for nid, mib in rss.items():
        assert mib < RSS_LIMIT_MIB, f"node {nid} peaked at {mib} MiB"
    leader.sql("insert into big(b) values(x'00')")
    c.sync_all()
    for n in c.alive():
        assert n.one("pragma integrity_check") == "ok"
    assert len(set(c.checkpoint_and_hash().values())) == 1


def big_insert(rows):
    return (f"with recursive n(i) as (select 1 union all select i + 1 from n where i < {rows}) "
            "insert into big(b) select randomblob(4000) from n")


def in_background(node, sql):
    """Runs `sql` on `node` in a thread; returns a function that waits and gives "ok" or the error."""
    out = {}

    def run():
        try:
            node.sql(sql)
            out["r"] = "ok"
        except Exception as e:  # the node may be killed under it
            out["r"] = e

    t = threading.Thread(target=run)
    t.start()
    return lambda: (t.join(120), out.get("r"))[1]


def test_large_transactions_interrupted_by_kills_are_all_or_nothing(cluster):
    """kill -9 while a split transaction's parts are being replicated: of a follower (it restarts
    with part of the sequence in its log and reconciles), then of the leader (the parts it got
    committed are never completed). Every node shows each transaction whole or not at all, an
    acknowledged one everywhere, and all end byte-identical."""
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table big(id integer primary key, b blob)")
    c.sync_all()
    rows = 25_000  # ~100 MiB: about 200 parts
    victim = c.followers()[0]
    done = in_background(leader, big_insert(rows))
    time.sleep(1.0)
    victim.kill()
    assert done() == "ok", "the leader and one follower are a majority"
    victim.start()
    c.sync_all(timeout_ms=60000)
    assert {n.one("select count(*) from big") for n in c.alive()} == {rows}

    old = c.leader()
    done = in_background(old, big_insert(rows))
    time.sleep(1.0)
    old.kill()
    outcome = done()
    print(f"leader killed 1 s into a 100 MiB transaction: {outcome}")
    new = c.leader(timeout=20)
    assert new.id != old.id
    new.sql("insert into big(b) values(x'01')")
    old.start()
    c.sync_all(timeout_ms=60000)
    counts = {n.one("select count(*) from big") for n in c.alive()}
    assert counts in ({rows + 1}, {2 * rows + 1}), counts
    if outcome == "ok":
        assert counts == {2 * rows + 1}, "an acknowledged transaction was lost"
    for n in c.alive():
        assert n.one("pragma integrity_check") == "ok"
    assert len(set(c.checkpoint_and_hash().values())) == 1


def test_existing_database_becomes_the_initial_state_of_a_new_cluster(tmp_path):
    """Node 1 (the lowest id in peers) starts with an existing database, its last transaction still
    in the -wal file. It imports the database through the log as the cluster's first transaction,
    as a one-node cluster; writes wait until the peers have joined. Nodes 2 and 3 start empty, are
    added, rebuild the content from the log, and all end byte-identical. A node added later gets
    it too, and a node other than the lowest id may not start with an existing database."""
    c = Cluster(tmp_path / "c", 3, timeout_ms=1000)
    try:
        first = c.nodes[1]
        first.db.parent.mkdir(parents=True)
        count, total = make_existing_db(first.db, rows=2000)  # ~8 MiB: several parts
        first.start()
        assert first.one("select count(*) from old") == count
        with pytest.raises(SqlError) as e:
            first.sql("insert into old(r) values(1)")
        assert e.value.code == SQLITE_IOERR | (105 << 8), e.value
        assert "being formed" in first.one("select replicated_last_error()")
        c.nodes[2].start()
        c.nodes[3].start()
        c.write("insert into old(r) values(1)", timeout=60)
        c.sync_all(timeout_ms=30000)
        for n in c.alive():
            assert tuple(n.sql("select count(*), sum(r) from old")[0]) == (count + 1, total + 1)
            assert n.one("pragma integrity_check") == "ok"
            assert {m["id"] for m in n.status()["members"] if m["voter"]} == {1, 2, 3}
        assert len(set(c.checkpoint_and_hash().values())) == 1
        assert not Path(str(first.db) + "-raft", "import").exists()
        # A node added later replays the import from the log as well.
        leader = c.leader()
        c.add_node(4).start()
        leader.sql("select replicated_add_node(4, ?)", c.addr(4))
        c.sync_all(timeout_ms=30000)
        assert c.nodes[4].one("select count(*) from old") == count + 1
        assert len(set(c.checkpoint_and_hash().values())) == 1
        # Node 1 restarts with its import marker still there (a crash before it was removed)
        # while another node leads: it finds the import done and the peers joined.
        first.kill()
        Path(str(first.db) + "-raft", "import").write_text("left by a crash\n")
        c.write("insert into old(r) values(1)", timeout=30)
        first.start()
        c.sync_all(timeout_ms=30000)
        assert first.one("select count(*) from old") == count + 2
        assert not Path(str(first.db) + "-raft", "import").exists()
        # Only the lowest id may bring a database.
        other = Cluster(tmp_path / "o", 2)
        other.nodes[2].db.parent.mkdir(parents=True)
        make_existing_db(other.nodes[2].db, rows=10)
        with pytest.raises(RuntimeError):
            other.nodes[2].start()
        assert "only the node with the lowest id" in (other.nodes[2].db.parent / "node.log").read_text()
    finally:
        c.heal()
        c.stop()


SNAP_ENV = {"REPLICATED_SNAPSHOT_EVERY": "30"}


def write_until_purged(c, others):
    """Writes rows into t(v) through the leader of `others` until it has purged its log past index
    40 (at most 3000 rows); returns how many rows it wrote and the leader's last status. openraft purges only when no replication
    stream has the range in flight, so the writes go on until the purge has happened."""
    rows = 0
    while rows < 3000:
        for _ in range(50):
            c.leader(among=others).sql("insert into t(v) values(?)", f"row {rows}")
            rows += 1
        st = c.leader(among=others).status()
        if st["purged_index"] and st["purged_index"] > 40:
            break
    return rows, st


@pytest.mark.skipif(not HAVE_IPTABLES, reason="needs root and iptables")
def test_lagging_follower_receives_a_snapshot(cluster):
    """The leader snapshots and purges its log; a follower cut off for longer than the log it kept
    gets the snapshot over QUIC and installs it while a plain sqlite3 reader holds a transaction."""
    c = cluster(3)
    for n in c.nodes.values():  # restart every node with frequent snapshots
        n.kill()
        n.start(env=SNAP_ENV)
    leader = c.leader()
    leader.sql("create table t(id integer primary key, v text)")
    c.sync_all()
    lagger = next(n for n in c.followers())
    reader = subprocess.Popen(["sqlite3", "-readonly", str(lagger.db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader.stdin.write("begin; select count(*) from t; select 'END';\n")
    reader.stdin.flush()
    before = [reader.stdout.readline().strip() for _ in range(2)]
    c.isolate(lagger.id)
    rows, st = write_until_purged(c, [n for n in c.alive() if n.id != lagger.id])
    assert st["snapshot_index"] and st["purged_index"], st
    c.heal()
    c.sync_all(timeout_ms=30000)
    assert lagger.one("select count(*) from t") == rows
    assert lagger.status()["snapshot_index"] is not None, "caught up from the log, not a snapshot"
    left = sorted(p.name for p in (lagger.db.parent / "app.db-raft" / "snapshots").iterdir())
    assert len(left) == 2 and all(p.startswith("snap-") for p in left), left  # no received file left
    reader.stdin.write("select count(*) from t; commit; select count(*) from t; pragma integrity_check; select 'END';\n")
    reader.stdin.flush()
    after = [reader.stdout.readline().strip() for _ in range(4)]
    assert before == ["0", "END"] and after == ["0", str(rows), "ok", "END"], (before, after)
    reader.stdin.close()
    reader.wait(timeout=10)
    for n in c.alive():
        assert n.one("pragma integrity_check") == "ok"
    assert len(set(c.checkpoint_and_hash().values())) == 1
    # It keeps replicating normally afterwards (restarts around an install: the test below).
    c.write("insert into t(v) values('after')")
    c.sync_all()
    assert {n.one("select count(*) from t") for n in c.alive()} == {rows + 1}


def test_a_node_restarts_after_a_snapshot_taken_past_its_last_transaction(cluster):
    """A restart replays the blank entries of earlier leader changes after the last transaction.
    A snapshot must still be labelled with that transaction, not with the blank: one labelled with
    the blank let the log be purged past the transaction, and the next start of the node failed
    ("the snapshot ends at transaction L but the log is purged up to B"). Snapshots after every
    entry; leader changes without writes; the node restarts twice around them."""
    c = cluster(3)
    env = {"REPLICATED_SNAPSHOT_EVERY": "1"}
    for n in c.nodes.values():
        n.kill()
        n.start(env=env)
    c.leader().sql("create table t(id integer primary key, v text)")
    for i in range(5):
        c.write("insert into t(v) values(?)", f"row {i}")
    c.sync_all()
    node = c.followers()[0]
    for _ in range(2):  # leader changes (blank entries) with no transaction after them
        old = c.leader()
        if old.id == node.id:
            old = next(n for n in c.alive() if n.id != node.id)
        old.kill()
        c.leader(among=[n for n in c.alive()])
        old.start(env=env)
        c.sync_all()
        node.kill()
        node.start(env=env)
        c.sync_all()
        time.sleep(1)  # a snapshot after the blank, and the purge behind it
    node.kill()
    node.start(env=env)  # failed here before
    c.write("insert into t(v) values('after')")
    c.sync_all()
    assert {n.one("select count(*) from t") for n in c.alive()} == {6}
    assert len(set(c.checkpoint_and_hash().values())) == 1


def test_a_snapshot_after_a_restart_with_an_empty_wal_holds_the_database(cluster):
    """wal_checkpoint(TRUNCATE) empties the WAL; after a kill -9 and a restart SQLite's recovery
    leaves the wal-index header's page count and page size zero, and readers size the database by
    its file. A snapshot taken then must do the same: it was an empty image, which a restart
    restored over the database."""
    c = cluster(3)
    for n in c.nodes.values():
        n.kill()
        n.start(env={"REPLICATED_SNAPSHOT_EVERY": "100000"})
    leader = c.leader()
    leader.sql("create table t(id integer primary key, v text)")
    for i in range(20):
        c.write("insert into t(v) values(?)", f"row {i}")
    c.sync_all()
    leader.sql("pragma wal_checkpoint(truncate)")
    assert os.path.getsize(str(leader.db) + "-wal") == 0
    size = os.path.getsize(leader.db)
    assert size >= 2 * 4096
    leader.kill()
    c.leader(among=[n for n in c.alive()])
    leader.start(env={"REPLICATED_SNAPSHOT_EVERY": "1"})  # snapshots at the next commit
    wait_until(lambda: leader.status()["snapshot_index"] is not None, timeout=20, what="a snapshot")
    snaps = list((leader.db.parent / "app.db-raft" / "snapshots").glob("snap-*.db"))
    assert snaps and all(p.stat().st_size == size for p in snaps), (size, [(p, p.stat().st_size) for p in snaps])
    leader.kill()
    leader.start(env={"REPLICATED_SNAPSHOT_EVERY": "1"})
    c.sync_all()
    assert {n.one("select count(*) from t") for n in c.alive()} == {20}
    assert leader.one("pragma integrity_check") == "ok"


def test_log_is_compacted_by_default(cluster):
    """Default settings: once a node's log after its last snapshot passes 64 MiB (or the size of
    its database), the node snapshots and purges the log behind the snapshot. A node added later
    starts from a snapshot sent over QUIC, and all converge."""
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table b(id integer primary key, v blob)")
    for _ in range(80):  # 80 MiB of log on every node
        c.write("insert into b(v) values(randomblob(1048576))")

    def compacted():
        return all((s := n.status())["snapshot_index"] and s["purged_index"] for n in c.alive())
    wait_until(compacted, timeout=60, what="every node to snapshot and purge its log")
    for n in c.alive():
        log = sum(f.stat().st_size for f in (n.db.parent / "app.db-raft" / "log").iterdir())
        assert log < 70 << 20, f"node {n.id} keeps {log} bytes of log"
    leader = c.leader()
    n4 = c.add_node(4).start()
    leader.one("select replicated_add_node(4, ?)", c.addr(4))
    c.write("insert into b(v) values(x'00')")
    c.sync_all(timeout_ms=60000)
    assert n4.status()["snapshot_index"] is not None, "node 4 replayed the log, not a snapshot"
    assert {n.one("select count(*) from b") for n in c.alive()} == {81}
    assert n4.one("pragma integrity_check") == "ok"
    assert len(set(c.checkpoint_and_hash().values())) == 1


def test_snapshot_transfer_does_not_depose_the_leader(cluster):
    """A restarted node that needs a snapshot of ~100 MB (longer to send and install than its
    election timeout) keeps hearing from the leader meanwhile, so it does not campaign: the leader
    and its term stay, and the node ends with the snapshot and the same content."""
    c = cluster(3)
    for n in c.nodes.values():
        n.kill()
        n.start(env=SNAP_ENV)
    leader = c.leader()
    leader.sql("create table b(id integer primary key, v blob)")
    c.sync_all()
    lagger = c.followers()[0]
    lagger.kill()
    for _ in range(100):
        c.write("insert into b(v) values(randomblob(1048576))")
    wait_until(lambda: (leader.status()["purged_index"] or 0) > 40, timeout=60, what="the leader to purge its log")
    term = leader.status()["term"]
    time.sleep(2)  # the leader's stream to the lagger has meanwhile turned to sending a snapshot
    lagger.start(env=SNAP_ENV)
    c.sync_all(timeout_ms=60000)
    assert lagger.status()["snapshot_index"] is not None, "caught up from the log, not a snapshot"
    st = leader.status()
    assert (st["role"], st["term"]) == ("leader", term), st
    assert lagger.one("select count(*) from b") == 100
    assert len(set(c.checkpoint_and_hash().values())) == 1


def test_wiped_node_rebuilds_from_the_log(cluster):
    """A follower whose files and data directory are wiped starts pristine and catches up (by
    replaying the log: this one is shorter than what makes a node snapshot)."""
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    for i in range(100):
        c.write("insert into t values(?)", i)
    victim = next(n for n in c.followers() if n.id != 1)  # node 1 would bootstrap a new cluster
    victim.kill()
    shutil.rmtree(victim.db.parent)
    victim.start()
    c.sync_all(timeout_ms=30000)
    assert victim.one("select count(*) from t") == 100
    assert victim.one("pragma integrity_check") == "ok"
    c.write("insert into t values(100)")
    c.sync_all()
    assert len(set(c.checkpoint_and_hash().values())) == 1


def test_restarted_followers_do_not_depose_the_leader(cluster):
    """A restarted node hears from the leader before its election timer fires, so it does not
    campaign with its stale log, which would cost the cluster its leader (the leader steps down on
    seeing the higher term) and slow the next fail-over (raft/network.rs, the retry interval)."""
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    term = leader.status()["term"]
    for i in range(10):
        f = c.followers()[i % 2]
        f.kill()
        c.write("insert into t values(?)", i)  # the restarted node is behind
        time.sleep(random.uniform(0, 0.5))  # any phase of the leader's retries
        f.start()
        c.sync_all()
        time.sleep(0.6)  # past the restarted node's election timeout (lease + election_ms)
    st = leader.status()
    assert (st["role"], st["term"]) == ("leader", term), st
    assert {n.one("select count(*) from t") for n in c.alive()} == {10}


def test_a_frozen_follower_does_not_depose_the_leader(cluster):
    """A follower frozen past its election timeout (SIGSTOP: a stalled process, a long fsync on a
    saturated disk) asks the others before it campaigns (raft/election.rs, the pre-vote); they
    heard from the leader, so it does not raise the term, and the leader keeps leading. Without
    the pre-vote, a 1 s freeze deposed the leader 5 times out of 5, a 0.3 s one 2 out of 5."""
    import signal
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    term = leader.status()["term"]
    followers = c.followers()
    for i, freeze in enumerate([0.3, 0.5, 1.0, 0.3, 1.5, 0.7]):
        f = followers[i % 2]
        os.kill(f.proc.pid, signal.SIGSTOP)
        try:
            leader.sql("insert into t values(?)", i)  # the majority commits without it
            time.sleep(freeze)
        finally:
            os.kill(f.proc.pid, signal.SIGCONT)
        time.sleep(0.6)  # past its election timeout (lease + election_ms)
        st = leader.status()
        assert (st["role"], st["term"]) == ("leader", term), (freeze, st)
    c.sync_all()
    assert {n.one("select count(*) from t") for n in c.alive()} == {6}


@pytest.mark.skipif(not HAVE_IPTABLES, reason="needs root and iptables")
def test_a_follower_cut_off_and_healed_does_not_depose_the_leader(cluster):
    """The classic case for the pre-vote: a follower cut off from everyone never wins a pre-vote,
    so its term stays put however long the partition lasts, and healing it does not cost the
    cluster its leader. It then catches up with what was written meanwhile."""
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    term = leader.status()["term"]
    f = c.followers()[0]
    c.isolate(f.id)
    try:
        for i in range(5):
            c.write("insert into t values(?)", i)
        time.sleep(2.0)  # several of its election timeouts
        assert f.status()["term"] == term
    finally:
        c.heal()
    c.sync_all()
    time.sleep(0.6)
    st = leader.status()
    assert (st["role"], st["term"]) == ("leader", term), st
    assert {n.one("select count(*) from t") for n in c.alive()} == {5}


def test_transfer_leader(cluster):
    c = cluster(3)
    old = c.leader()
    old.sql("create table t(a)")
    old.sql("insert into t values(1)")
    target = c.followers()[0]
    with pytest.raises(SqlError) as e:
        target.sql("select replicated_transfer_leader(?)", target.id)
    assert "leader" in str(e.value)
    with pytest.raises(SqlError):
        old.sql("select replicated_transfer_leader(99)")
    assert old.one("select replicated_transfer_leader(?)", target.id) == target.id
    assert c.leader().id == target.id
    target.sql("insert into t values(2)")
    with pytest.raises(SqlError) as e:
        old.sql("insert into t values(3)")
    assert e.value.code & 0xff == SQLITE_READONLY
    c.sync_all()
    assert {n.one("select count(*) from t") for n in c.alive()} == {2}
    # And back.
    assert target.one("select replicated_transfer_leader(?)", old.id) == old.id
    assert c.leader().id == old.id


def test_random_kills_during_writes_lose_nothing_and_converge(cluster):
    """kill -9 of random nodes (the leader included) while a client keeps writing: every
    acknowledged insert survives on every node, nothing appears that nobody tried, and the nodes
    end byte-identical."""
    import random
    rnd = random.Random(int(os.environ.get("CLUSTER_SEED", "7")))
    c = cluster(3, timeout_ms=2000)
    c.leader().sql("create table acked(id integer primary key)")
    acked, tried, next_id = set(), set(), 0
    for _round in range(10):
        victim = rnd.choice([c.leader()] + list(c.nodes.values()))  # the leader twice as often
        writes = rnd.randint(5, 25)
        kill_at = rnd.randrange(writes)
        for k in range(writes):
            if k == kill_at:
                victim.kill()
            tried.add(next_id)
            try:
                c.write("insert into acked values(?)", next_id, timeout=10)
                acked.add(next_id)
            except (SqlError, AssertionError):
                pass  # outcome unknown: may or may not be committed
            next_id += 1
        victim.start()
    c.sync_all(timeout_ms=20000)
    for n in c.alive():
        ids = {r[0] for r in n.sql("select id from acked")}
        assert acked <= ids, f"node {n.id} lost acknowledged {sorted(acked - ids)[:10]}"
        assert ids <= tried, f"node {n.id} shows rows nobody wrote: {sorted(ids - tried)[:10]}"
        assert n.one("pragma integrity_check") == "ok"
    assert len({tuple(sorted(r[0] for r in n.sql("select id from acked"))) for n in c.alive()}) == 1
    assert len(set(c.checkpoint_and_hash().values())) == 1
    assert len(acked) > 40, "too little progress for the test to mean anything"


def test_full_disk_stalls_a_node_which_resumes_when_space_returns(tmp_path):
    """One node's files (its stderr log too) live on a small tmpfs that is then filled: that node
    stalls (its log appends and applies wait for space; status says why) while the majority keeps
    committing; when space is freed it resumes by itself, with no restart, and catches up."""
    c = Cluster(tmp_path / "c", 3, timeout_ms=2000)
    d = c.dir / "n3"
    d.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(d)], check=True)
    try:
        c.start()
        c.write("create table t(id integer primary key, pad blob)")
        for i in range(50):
            c.write("insert into t values(?, randomblob(2000))", i)
        with open(d / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
            except OSError:
                pass
        n3 = c.nodes[3]
        done = 50
        deadline = time.time() + 30
        while done < 350 and time.time() < deadline:
            try:
                c.write("insert into t values(?, randomblob(16000))", done, timeout=10)
                done += 1
            except (SqlError, AssertionError):
                pass
        assert done >= 350, "the majority stopped committing while one node's disk was full"
        err = n3.status()["error"]
        assert err and "disk space" in err, err
        (d / "filler").unlink()
        c.sync_all(timeout_ms=30000)
        assert n3.alive() and n3.status()["error"] is None
        assert {n.one("select count(*) from t") for n in c.alive()} == {done}
        assert n3.one("pragma integrity_check") == "ok"
        assert len(set(c.checkpoint_and_hash().values())) == 1
    finally:
        c.stop()
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_transfers_cost_one_term_each(cluster):
    """Each hand-over is exactly one election: the third node, which granted the target its vote,
    and the deposed leader do not start or back another campaign over the new leader (the
    pre-vote's timer restarts on a granted vote; a leader counts as having heard a leader). An
    early version of the pre-vote let the third node campaign right after the target won, in 26 of
    90 nemesis transfers."""
    c = cluster(3)
    leader = c.leader()
    leader.sql("create table t(a)")
    # Busy CPUs stretch the moment between the target's victory and its first message to the
    # third node, when that node's timer could fire (the nemesis's clients did the same).
    hogs = [subprocess.Popen(["python3", "-c", "while True: pass"]) for _ in range(2)]
    try:
        transfer_eight_times(c, leader)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    c.sync_all()
    assert {n.one("select count(*) from t") for n in c.alive()} == {8}


def transfer_eight_times(c, leader):
    for i in range(8):
        term = leader.status()["term"]
        target = c.followers()[i % 2]
        assert leader.one("select replicated_transfer_leader(?)", target.id) == target.id
        time.sleep(0.6)  # past every node's election timeout
        leader = c.leader()
        assert (leader.id, leader.status()["term"]) == (target.id, term + 1), i
        leader.sql("insert into t values(?)", i)


def test_transfer_leader_under_write_load(tmp_path):
    """Writes keep arriving on the leader (another connection in its process) while it hands over:
    the new writes are held back for the hand-over, which succeeds; they then go to the new leader
    (the old one refuses them with SQLITE_READONLY, naming it), and nothing acknowledged is lost."""
    import json as _json
    import socket as _socket
    import threading
    c = Cluster(tmp_path / "c", 3)
    for n in c.nodes.values():
        n.serve = str(tmp_path / f"s{n.id}")
    try:
        c.start()
        old = c.leader()
        old.sql("create table t(id integer primary key)")
        acked, stop = [], threading.Event()

        def writer():
            s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            s.connect(old.serve)
            f = s.makefile("rw")
            i = 0
            while not stop.is_set():
                i += 1
                f.write(_json.dumps({"txn": [["insert into t values(?)", [i]]], "begin": "immediate"}) + "\n")
                f.flush()
                if "results" in _json.loads(f.readline()):
                    acked.append(i)
            s.close()

        th = threading.Thread(target=writer)
        th.start()
        time.sleep(0.5)
        before = len(acked)
        target = next(n for n in c.nodes.values() if n.id != old.id)
        try:
            assert old.one("select replicated_transfer_leader(?)", target.id) == target.id
        finally:
            time.sleep(0.3)
            stop.set()
            th.join()
        assert before > 20, "the writer made no progress before the transfer"
        assert c.leader().id == target.id
        c.sync_all()
        for n in c.alive():
            ids = {r[0] for r in n.sql("select id from t")}
            assert set(acked) <= ids, f"node {n.id} lost acknowledged writes"
    finally:
        c.stop()


@pytest.mark.skipif(not HAVE_IPTABLES, reason="needs root and iptables")
@pytest.mark.parametrize("point", ["snapshot.install.before", "snapshot.install.after_publish",
                                   "snapshot.install.after_commit", "snapshot.install.before=pause"])
def test_crash_while_installing_a_snapshot(cluster, point):
    """A follower that fell behind the leader's purged log crashes at each step of installing the
    snapshot it is sent; restarted, it comes back (from its own files, or by being sent the
    snapshot again), catches up and ends byte-identical. With the install paused instead, both ends
    show the transfer in replicated_status() first."""
    c = cluster(3)
    for n in c.nodes.values():
        n.kill()
    lagger = c.nodes[3]
    fp = point if "=" in point else f"{point}=crash"
    for n in c.nodes.values():
        n.start(env={**SNAP_ENV, **({"REPLICATED_FAILPOINTS": fp} if n is lagger else {})})
    c.write("create table t(id integer primary key, v text)")
    c.sync_all()
    c.isolate(lagger.id)
    others = [n for n in c.alive() if n.id != lagger.id]
    rows, _ = write_until_purged(c, others)
    c.heal()
    if point.endswith("=pause"):
        def shown(node, phase):
            ts = node.status()["snapshot_transfers"]
            return any(t["phase"] == phase and t["bytes"] == t["total"] > 0 for t in ts)
        leader = c.leader(among=others)
        wait_until(lambda: shown(leader, "installing"), 30, "the leader showing the snapshot it sent")
        t = leader.status()["snapshot_transfers"][0]
        assert t["peer"] == lagger.id and t["id"], t
        assert shown(lagger, "installing"), lagger.status()["snapshot_transfers"]
        lagger.kill()
    deadline = time.time() + 30
    while lagger.proc is not None and lagger.proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert lagger.proc is None or lagger.proc.poll() is not None, "the failpoint did not fire"
    lagger.proc = None
    lagger.start(env=SNAP_ENV)
    c.write("insert into t(v) values('after')")
    c.sync_all(timeout_ms=30000)
    assert {n.one("select count(*) from t") for n in c.alive()} == {rows + 1}
    for n in c.alive():
        assert n.one("pragma integrity_check") == "ok"
    assert len(set(c.checkpoint_and_hash().values())) == 1


@pytest.mark.parametrize("point", ["snapshot.install.after_publish", "snapshot.install.after_commit"])
def test_a_new_node_killed_while_installing_its_first_snapshot_rejoins(cluster, point):
    """A node added to a cluster whose log is purged gets a snapshot first. Killed after the install
    was published into its WAL (its log still empty, its snapshot file maybe not saved), it must
    restart as the member it has become: it was taken for a new node and refused to start ("only
    the node with the lowest id ... existing database"), every time."""
    c = cluster(3)
    for n in c.nodes.values():
        n.kill()
        n.start(env=SNAP_ENV)
    c.write("create table t(id integer primary key, v text)")
    c.sync_all()
    members = list(c.alive())
    rows, _ = write_until_purged(c, members)
    n4 = c.add_node(4).start(env={**SNAP_ENV, "REPLICATED_FAILPOINTS": f"{point}=crash"})
    c.leader(among=members).one("select replicated_add_node(4, ?)", c.addr(4))
    deadline = time.time() + 30
    while n4.proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert n4.proc.poll() is not None, "the failpoint did not fire"
    n4.proc = None
    n4.start(env=SNAP_ENV)
    c.write("insert into t(v) values('after')")
    c.sync_all(timeout_ms=30000)
    assert {n.one("select count(*) from t") for n in c.alive()} == {rows + 1}
    assert n4.one("pragma integrity_check") == "ok"
    assert len(set(c.checkpoint_and_hash().values())) == 1


def test_a_follower_that_cannot_apply_reports_no_progress(cluster):
    """A follower whose apply failed (poisoned) still stores log entries, and openraft counts the
    entries after the failed one as applied: none of that is progress. With the other follower
    down, an ack=apply commit has no majority that applied it and fails; replicated_sync() on the
    poisoned node fails instead of serving a stale read. A restart replays the entry; all converge."""
    c = cluster(3)  # ack=apply, the default
    c.write("create table t(id integer primary key, v text)")
    c.write("insert into t(v) values('a')")
    c.sync_all()
    sick, other = c.followers()
    sick.kill()
    sick.start(env={"REPLICATED_FAILPOINTS": "apply.before=error"})
    leader = c.leader()
    leader.sql("insert into t(v) values('b')")  # the leader and `other` applied it
    wait_until(lambda: "applying log entry" in (sick.one("select replicated_last_error()") or ""),
               10, "the follower's apply to fail")
    with pytest.raises(SqlError) as e:
        sick.sql("select replicated_sync(2000)")
    assert "cannot apply the log" in str(e.value)
    assert sick.one("select count(*) from t") == 1  # readers keep the last consistent state
    other.kill()
    with pytest.raises(SqlError) as e:
        leader.sql("insert into t(v) values('c')")  # committed (leader + sick), applied by one
    assert e.value.code & 0xFF == SQLITE_IOERR, e.value
    sick.kill()
    sick.start()
    other.start()
    c.sync_all()
    rows = {n.id: n.sql("select v from t order by id") for n in c.alive()}
    assert rows[leader.id] == [["a"], ["b"], ["c"]], rows
    assert all(r == rows[leader.id] for r in rows.values()), rows
    assert len(set(c.checkpoint_and_hash().values())) == 1


def test_a_leader_that_cannot_apply_steps_down(cluster):
    """A leader whose apply failed refuses writes until it restarts: it must hand the cluster to
    another leader instead of holding it, and must not lead again while poisoned."""
    c = cluster(3)
    c.write("create table t(id integer primary key, v text)")
    c.sync_all()
    sick = c.followers()[0]
    sick.kill()
    # Every claim is declined, so the leader applies its own transactions from the log, and that fails.
    sick.start(env={"REPLICATED_FAILPOINTS": "sm.claim=error,apply.own=error"})
    c.sync_all()
    assert c.leader().one("select replicated_transfer_leader(?)", sick.id) == sick.id
    with pytest.raises(SqlError) as e:
        sick.sql("insert into t(v) values('x')")  # committed, but the leader cannot apply it
    assert e.value.code & 0xFF == SQLITE_IOERR, e.value
    healthy = [n for n in c.alive() if n is not sick]
    # Read barriers asked of it meanwhile must not keep it in place (confirming leadership sends
    # AppendEntries, which renew the followers' leases).
    deadline = time.time() + 10
    while time.time() < deadline and {n.status()["leader_id"] for n in healthy} == {sick.id}:
        try:
            healthy[0].sql("select replicated_sync(200)")
        except SqlError:
            pass
    new = c.leader(among=healthy, timeout=10)
    new.sql("insert into t(v) values('y')")
    assert c.leader().id == new.id  # the sick node agrees
    with pytest.raises(SqlError) as e:
        new.sql("select replicated_transfer_leader(?)", sick.id)
    # (It fails on the sick node's refusal, or on the other node's election: the hand-over
    # paused the heartbeats, so either healthy node may lead now.)
    assert c.leader().id != sick.id
    sick.kill()
    sick.start()
    c.sync_all()
    rows = {n.id: n.sql("select v from t order by id") for n in c.alive()}
    assert rows[sick.id] == [["x"], ["y"]], rows
    assert all(r == rows[sick.id] for r in rows.values()), rows
    assert len(set(c.checkpoint_and_hash().values())) == 1


def test_a_snapshot_after_many_membership_changes_keeps_the_membership(cluster):
    """A snapshot is labelled with the last transaction and carries the membership as of that
    entry. After more than 16 membership changes without a write, that membership had been
    forgotten and the snapshot carried an empty one (a node restoring or installing it would
    know no members)."""
    import json
    c = cluster(3)
    for n in c.nodes.values():
        n.kill()
        n.start(env=SNAP_ENV)  # a snapshot every 30 entries
    c.write("create table t(id integer primary key, v text)")
    c.write("insert into t(v) values('x')")
    c.sync_all()
    leader = c.leader()
    n4 = c.add_node(4).start()
    for _ in range(14):  # 28 membership entries, no transaction
        leader.one("select replicated_add_node(4, ?, 0)", c.addr(4))
        leader.one("select replicated_remove_node(4)")
    n4.kill()

    def snapshots():
        out = []
        for p in (leader.db.parent / "app.db-raft" / "snapshots").glob("*.json"):
            out.append(json.loads(p.read_text()))
        return out

    wait_until(lambda: snapshots(), 15, "a snapshot")
    for s in snapshots():
        voters = s["meta"]["last_membership"]["membership"]["configs"]
        assert voters and sorted(voters[-1]) == [1, 2, 3], s["meta"]


def test_an_imported_file_longer_than_its_database_reaches_new_nodes_by_snapshot(tmp_path):
    """A database file may be longer than the size its header records (SQLite ignores the pages
    past it). Imported as it is, every snapshot image is then longer than its header says: that
    is a whole database, and a new node must install it (an install error stops openraft's core)."""
    import sqlite3
    c = Cluster(tmp_path / "c", 3, timeout_ms=1000, env=SNAP_ENV)
    try:
        first = c.nodes[1]
        first.db.parent.mkdir(parents=True)
        plain = sqlite3.connect(first.db, isolation_level=None)
        plain.execute("pragma journal_mode=wal")
        plain.execute("create table old(id integer primary key, r)")
        plain.executemany("insert into old(r) values(?)", [(i,) for i in range(200)])
        plain.execute("pragma wal_checkpoint(TRUNCATE)")
        plain.close()
        with open(first.db, "ab") as f:
            f.write(bytes(2 * 4096))  # two pages past the recorded size
        for n in c.nodes.values():
            n.start()
        c.write("create table t(id integer primary key, v text)", timeout=60)
        members = list(c.alive())
        rows, st = write_until_purged(c, members)
        assert st["purged_index"], st
        n4 = c.add_node(4).start(env=SNAP_ENV)
        c.leader(among=members).one("select replicated_add_node(4, ?)", c.addr(4))
        c.sync_all(timeout_ms=30000)
        assert n4.status()["snapshot_index"] is not None, "caught up from the log, not a snapshot"
        for n in c.alive():
            assert (n.one("select count(*) from old"), n.one("select count(*) from t")) == (200, rows)
            assert n.one("pragma integrity_check") == "ok"
        assert len(set(c.checkpoint_and_hash().values())) == 1
    finally:
        c.heal()
        c.stop()


def test_commits_padded_to_a_sector_replicate_and_survive_kills(cluster):
    """psow=0 (the file system may tear a sector): SQLite pads each commit with copies of its
    commit frame up to a sector boundary and syncs in the middle of a padding frame. The sync
    must capture only whole frames, and followers, restarts and the WAL must all agree."""
    c = cluster(3, psow=0)
    leader = c.leader()
    leader.sql("create table t(id integer primary key, pad blob)")
    for i in range(60):
        leader.sql("insert into t(pad) values(randomblob(20))")
    # Padding frames are in the leader's WAL: each one-page commit wrote at least two frames.
    busy, frames, _ = leader.sql("pragma wal_checkpoint(PASSIVE)")[0]
    assert busy == 0 and frames >= 120, frames
    for i in range(60):
        leader.sql("insert into t(pad) values(randomblob(?))", 20 + 97 * i)
    leader.sql("begin")
    for i in range(300):
        leader.sql("insert into t(pad) values(randomblob(700))")
    leader.sql("commit")
    leader.kill()
    new = c.leader(among=[n for n in c.alive()], timeout=10)
    for i in range(20):
        c.write("insert into t(pad) values(randomblob(?))", 3000 + i)
    leader.start()
    c.sync_all()
    counts = {n.id: n.one("select count(*) from t") for n in c.alive()}
    assert set(counts.values()) == {440}, counts
    for n in c.alive():
        assert n.one("pragma integrity_check") == "ok"
    assert new.id != leader.id
    hashes = c.checkpoint_and_hash()
    assert len(set(hashes.values())) == 1, hashes


def test_memory_mapped_reads_and_a_wal_size_limit(cluster):
    """mmap_size makes SQLite read pages through xFetch (followers must see applied pages through
    the mapping); journal_size_limit makes the first commit of each WAL generation truncate the
    WAL behind itself. Every node's connection sets both; the nodes converge."""
    c = cluster(3)
    for n in c.alive():
        assert n.one("pragma mmap_size=67108864") == 67108864
        assert n.one("pragma journal_size_limit=0") == 0
    leader = c.leader()
    leader.sql("create table t(id integer primary key, pad blob)")
    for round_ in range(4):
        leader.sql("begin")
        for i in range(400):
            leader.sql("insert into t(pad) values(randomblob(300))")
        leader.sql("commit")
        c.sync_all()
        for n in c.alive():
            assert n.one("select count(*) from t") == 400 * (round_ + 1)
            assert n.one("select sum(length(pad)) from t") == 120000 * (round_ + 1)
        # A RESTART checkpoint: the next commit starts a new WAL generation, then truncates it.
        leader.sql("pragma wal_checkpoint(RESTART)")
        leader.sql("insert into t(pad) values(x'00')")
        leader.sql("delete from t where pad = x'00'")
    # Truncated behind the small commits of the last generation (a round's WAL was ~150 KB).
    assert os.path.getsize(str(leader.db) + "-wal") < 10 * 4120
    for n in c.alive():
        assert n.one("pragma integrity_check") == "ok"
    hashes = c.checkpoint_and_hash()
    assert len(set(hashes.values())) == 1, hashes


def plain_write(node, sql):
    """`sql` run by the real sqlite3 shell on `node`'s database file WITHOUT the replicated VFS:
    a write that bypasses replication (an operator's mistake)."""
    p = subprocess.run(["sqlite3", "-cmd", ".timeout 5000", str(node.db), sql], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_a_write_that_bypassed_the_vfs_is_refused_and_discarded(cluster):
    """Another process writes to a node's database file with plain SQLite. Its frames are on no
    other node: the next write or apply there must refuse to build on them (a page image would
    carry part of them to the followers) and no checkpoint may copy them into the database file;
    a restart discards them and every node converges without them."""
    c = cluster(3)
    c.write("create table t(id integer primary key, v text)")
    c.write("insert into t(v) values('a')")
    c.sync_all()
    # On a follower: the next apply there fails, the follower stops, and a restart repairs it.
    f = c.followers()[0]
    plain_write(f, "insert into t(v) values('foreign-f')")
    c.write("insert into t(v) values('b')")
    wait_until(lambda: "did not write" in (f.status().get("error") or ""), 10,
               "the follower to report the frames it did not write")
    with pytest.raises(SqlError):
        f.sql("pragma wal_checkpoint(TRUNCATE)")
    # On the leader: its next write is refused, it steps down, the others go on.
    old = c.leader()
    assert old.one("pragma mmap_size=67108864") == 67108864
    plain_write(old, "insert into t(v) values('foreign-l' || hex(randomblob(100000)))")
    with pytest.raises(SqlError) as e:
        old.sql("insert into t(v) values('c')")
    assert e.value.code & 0xFF == SQLITE_IOERR, e.value
    assert "did not write" in old.one("select replicated_last_error()")
    size = old.db.stat().st_size
    with pytest.raises(SqlError):
        old.sql("pragma wal_checkpoint(TRUNCATE)")
    # Not even grown: with mmap on, SQLite's size hint would extend the file to the foreign pages.
    assert old.db.stat().st_size == size
    healthy = [n for n in c.alive() if n is not old and n is not f]
    f.kill()
    f.start()
    new = c.leader(among=healthy + [f], timeout=10)
    assert new.id != old.id
    c.write("insert into t(v) values('d')")
    old.kill()
    old.start()
    c.sync_all()
    rows = {n.id: [r[0] for r in n.sql("select v from t order by id")] for n in c.alive()}
    assert all(r == ["a", "b", "d"] for r in rows.values()), {k: [v[:12] for v in r] for k, r in rows.items()}
    for n in c.alive():
        assert n.one("pragma integrity_check") == "ok"
    assert len(set(c.checkpoint_and_hash().values())) == 1


def test_a_node_holding_frames_it_did_not_write_snapshots_none_of_them(cluster):
    """A follower poisoned by a foreign write keeps deciding entries, so its snapshot policy keeps
    firing: an image built now would carry the foreign rows under a log id, outlive the restart
    that cuts them from the WAL, and reach other nodes. No image may hold them."""
    c = cluster(3, env=SNAP_ENV)
    c.write("create table t(id integer primary key, v text)")
    c.sync_all()
    f = c.followers()[0]
    plain_write(f, "insert into t(v) values('foreign-in-snapshot')")
    for i in range(120):  # four times the snapshot interval
        c.write("insert into t(v) values(?)", f"row {i}")
    wait_until(lambda: "did not write" in (f.status().get("error") or ""), 10, "the follower to stop")
    time.sleep(1.5)  # the snapshot scheduler's checks
    snaps = list((f.db.parent / "app.db-raft" / "snapshots").glob("*"))
    assert not [s for s in snaps if b"foreign-in-snapshot" in s.read_bytes()], snaps
    f.kill()
    f.start()
    c.sync_all()
    rows = {n.id: n.one("select count(*) from t where v = 'foreign-in-snapshot'") for n in c.alive()}
    assert set(rows.values()) == {0}, rows
    assert len(set(c.checkpoint_and_hash().values())) == 1
