#!/usr/bin/env python3
"""Three-node rows of `make bench` (DESIGN §7), each against plain SQLite measured in the same run.

- Writes: this process *is* node 1 (it opens node 1's database in-process, so no IPC is in the
  measured path); nodes 2 and 3 are separate processes. Both ack levels.
- Reads on a follower: measured inside a follower process (`--follower-reads`), against a plain
  copy of the same database in that process.
- Fail-over: kill -9 of the leader until a write is accepted again, 20 trials, p50/p99.
- Catch-up: a stopped node rejoins behind by BENCH_CATCHUP_MB of page images; MB/s until applied.
- Memory: RSS of each node process.
"""
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benches"))
from cluster import LIB, SECRET, Cluster, SqlError  # noqa: E402
import bench  # noqa: E402

REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
CATCHUP_MB = int(os.environ.get("BENCH_CATCHUP_MB", "100"))
TRIALS = int(os.environ.get("BENCH_FAILOVER_TRIALS", "20"))


def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_in_process(c, nid, ack):
    node = c.nodes[nid]
    node.db.parent.mkdir(parents=True, exist_ok=True)
    uri = node.uri().replace("&ack=apply", "").replace("&ack=commit", "") + f"&ack={ack}"
    con = sqlite3.connect(uri, uri=True, isolation_level=None)
    deadline = time.time() + 20
    while time.time() < deadline:
        s = json.loads(con.execute("select replicated_status()").fetchone()[0])
        if s["role"] == "leader":
            return con
        time.sleep(0.02)
    raise SystemExit(f"node {nid} did not become leader: {s}")


def writes(root, ack, results):
    c = Cluster(root / f"w-{ack}", 3)
    try:
        for i in (2, 3):
            c.nodes[i].start()
        con = open_in_process(c, 1, ack)
        plain = bench.open_plain(str(root / f"w-{ack}"))
        for x in (plain, con):
            x.execute("create table t(id integer primary key, v text)")
            bench.w_txn_1000(x, 5)
        for name, fn, n in bench.WORKLOADS[:2]:
            p, r = [], []
            for _ in range(REPEAT):
                p.append(fn(plain, n))
                r.append(fn(con, n))
            label = name.replace(" (", f", 3 nodes, ack={ack} (")
            results[label] = (statistics.median(p), statistics.median(r))
        results[f"RSS of a follower process, ack={ack} (MB)"] = (None, max(rss_mb(c.nodes[i].proc.pid) for i in (2, 3)))
        con.close()
    finally:
        c.stop()


def follower_reads(root, results):
    c = Cluster(root / "reads", 3).start()
    try:
        leader = c.leader()
        leader.sql("create table t(id integer primary key, v text)")
        leader.sql("with recursive n(i) as (select 1 union all select i + 1 from n where i < 10000) "
                   "insert into t(v) select printf('%0100d', i) from n")
        c.sync_all()
        f = c.followers()[0]
        f.kill()  # re-open it in a measuring process (same node id, same files)
        out = subprocess.run(["/usr/bin/python3", __file__, "--follower-reads", str(LIB), f.uri(), str(root / "reads")],
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
            results[k] = tuple(v)
    finally:
        c.stop()


def follower_reads_child(lib, uri, d):
    b = sqlite3.connect(":memory:")
    b.enable_load_extension(True)
    b.load_extension(lib)
    con = sqlite3.connect(uri, uri=True, isolation_level=None)
    con.execute("select replicated_sync(10000)")
    plain = bench.open_plain(d)
    plain.execute("create table t(id integer primary key, v text)")
    plain.execute("with recursive n(i) as (select 1 union all select i + 1 from n where i < 10000) "
                  "insert into t(v) select printf('%0100d', i) from n")
    out = {}
    for name, fn, n in bench.WORKLOADS[2:]:
        p, r = [], []
        for _ in range(REPEAT):
            p.append(fn(plain, n))
            r.append(fn(con, n))
        out[name.replace(" (", ", on a follower (")] = (statistics.median(p), statistics.median(r))
    print(json.dumps(out))


def failover(root, results):
    c = Cluster(root / "failover", 3).start()
    times = []
    try:
        c.leader().sql("create table t(a)")
        for _ in range(TRIALS):
            old = c.leader()
            c.write("insert into t values(1)")
            old.kill()
            t0 = time.time()
            done = False
            while not done:
                for n in c.alive():  # try the write on every survivor; the new leader accepts it
                    try:
                        n.sql("insert into t values(2)")
                        done = True
                        break
                    except SqlError:
                        pass
                if not done:
                    if time.time() - t0 > 30:
                        raise SystemExit("no leader accepted a write within 30 s")
                    time.sleep(0.005)
            times.append(time.time() - t0)
            old.start()
            c.sync_all()
    finally:
        c.stop()
    times.sort()
    p99 = times[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
    results[f"fail-over: kill -9 leader -> write accepted, p50 / p99 of {TRIALS} (s)"] = (
        statistics.median(times), p99)


def catchup(root, results):
    c = Cluster(root / "catchup", 3).start()
    try:
        leader = c.leader()
        lagger = c.followers()[0]
        leader.sql("create table blob(id integer primary key, b blob)")
        c.sync_all()
        lagger.kill()
        per_txn = 256 * 1024
        for _ in range(CATCHUP_MB * 4):
            leader.sql("with recursive n(i) as (select 1 union all select i + 1 from n where i < 4) "
                       "insert into blob(b) select randomblob(?) from n", per_txn // 4)
        target = leader.status()["last_log_index"]
        t0 = time.time()
        lagger.start()
        while lagger.status()["applied_index"] < target:
            time.sleep(0.01)
        dt = time.time() - t0
        results[f"catch-up of a node {CATCHUP_MB} MB behind (MB/s)"] = (None, CATCHUP_MB / dt)
    finally:
        c.stop()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--follower-reads":
        return follower_reads_child(*sys.argv[2:5])
    boot = sqlite3.connect(":memory:")
    boot.enable_load_extension(True)
    boot.load_extension(str(LIB))
    root = Path(tempfile.mkdtemp(prefix="replicated-cbench-"))
    results = {}
    # Each phase starts with nothing left to write back from the one before: otherwise its fsyncs
    # queue behind hundreds of MB of the previous phase's dirty pages (measured: fail-over p99
    # 0.62-0.77 s right after the write phases, 0.41-0.42 s after a sync).
    settle = os.sync
    try:
        for ack in ("commit", "apply"):
            settle()
            writes(root, ack, results)
        settle()
        follower_reads(root, results)
        settle()
        failover(root, results)
        settle()
        catchup(root, results)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    width = max(len(k) for k in results)
    print(f"\n{'three nodes on loopback, real fsync':<{width}}  {'plain':>10}  {'replicated':>10}  {'ratio':>6}")
    print("-" * (width + 34))
    for k, (p, r) in results.items():
        if p is None:
            print(f"{k:<{width}}  {'':>10}  {r:>10,.1f}  {'':>6}")
        elif "fail-over" in k:
            print(f"{k:<{width}}  {p:>10.3f}  {r:>10.3f}  {'':>6}")
        else:
            print(f"{k:<{width}}  {p:>10,.0f}  {r:>10,.0f}  {r / p:>6.2f}")


if __name__ == "__main__":
    main()
