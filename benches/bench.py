#!/usr/bin/env python3
"""`make bench`: the replicated VFS against plain SQLite, measured in the same run.

Each workload runs on a plain database (WAL, synchronous=FULL) and on a one-node replicated
database (real Raft log, real fsync), alternating, REPEAT times; the table shows medians, the
ratio of the medians replicated/plain (higher is better; 1.0 = same speed) and the range of the
ratios of the alternating pairs: on a shared VM one run differs from the next by 10-20%, so the
range says how far to trust a ratio. Run with an interpreter whose sqlite3
can load extensions (Debian's /usr/bin/python3).

Targets on one node (issue 2): writes >= 0.8x plain FULL, reads >= 0.95x.
"""
import os
import shutil
import socket
import sqlite3
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(REPO, "target", "release", "libreplicated")
REPEAT = int(os.environ.get("BENCH_REPEAT", "7"))
SCALE = float(os.environ.get("BENCH_SCALE", "1"))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_plain(d):
    c = sqlite3.connect(os.path.join(d, "plain.db"), isolation_level=None)
    c.execute("pragma journal_mode=wal")
    c.execute("pragma synchronous=full")
    return c


def open_repl(d, ack="apply"):
    uri = (f"file:{d}/repl.db?vfs=replicated&node=1&peers=1@127.0.0.1:{free_port()}"
           f"&secret=bench-secret-0123456789&ack={ack}")
    c = sqlite3.connect(uri, uri=True, isolation_level=None)
    for _ in range(200):  # a one-node cluster elects itself within an election timeout
        if '"role":"leader"' in c.execute("select replicated_status()").fetchone()[0]:
            break
        time.sleep(0.01)
    return c


def w_single_insert(c, n):
    t = time.perf_counter()
    for i in range(n):
        c.execute("insert into t(v) values(?)", ("x" * 100,))
    return n / (time.perf_counter() - t)


def w_txn_1000(c, n):
    rows = [("y" * 100,)] * 1000
    t = time.perf_counter()
    for _ in range(n):
        c.execute("begin")
        c.executemany("insert into t(v) values(?)", rows)
        c.execute("commit")
    return n * 1000 / (time.perf_counter() - t)


def w_point_read(c, n):
    hi = c.execute("select max(id) from t").fetchone()[0]
    t = time.perf_counter()
    for i in range(n):
        c.execute("select v from t where id=?", (1 + (i * 7919) % hi,)).fetchone()
    return n / (time.perf_counter() - t)


def w_range_scan(c, n):
    hi = c.execute("select max(id) from t").fetchone()[0]
    t = time.perf_counter()
    for i in range(n):
        lo = 1 + (i * 104729) % max(1, hi - 100)
        c.execute("select count(*), max(length(v)) from t where id between ? and ?", (lo, lo + 100)).fetchone()
    return n / (time.perf_counter() - t)


WORKLOADS = [
    ("single-row autocommit INSERT (ops/s)", w_single_insert, 2000),
    ("1000-row transactions (rows/s)", w_txn_1000, 80),
    ("point reads by primary key (ops/s)", w_point_read, 20000),
    ("range scans of 100 rows (ops/s)", w_range_scan, 3000),
]


def main():
    if not os.path.exists(LIB + ".so"):
        sys.exit(f"build first: {LIB}.so is missing (make build)")
    boot = sqlite3.connect(":memory:")
    boot.enable_load_extension(True)
    boot.load_extension(LIB)
    root = tempfile.mkdtemp(prefix="replicated-bench-")
    try:
        results = {}
        for variant in ("apply", "commit"):
            d = os.path.join(root, variant)
            os.makedirs(d)
            plain, repl = open_plain(d), open_repl(d, ack=variant)
            for c in (plain, repl):
                c.execute("create table t(id integer primary key, v text)")
                w_txn_1000(c, 10)  # warm up: data for the reads, WAL and log files in place
            for name, fn, n in WORKLOADS:
                if variant == "commit" and "INSERT" not in name:
                    continue
                n = max(1, int(n * SCALE))
                p, r = [], []
                for _ in range(REPEAT):
                    p.append(fn(plain, n))
                    r.append(fn(repl, n))
                label = name if variant == "apply" else name.replace("INSERT", "INSERT, ack=commit")
                pairs = sorted(b / a for a, b in zip(p, r))
                results[label] = (statistics.median(p), statistics.median(r), pairs[0], pairs[-1])
            plain.close()
            repl.close()
        width = max(len(k) for k in results)
        print(f"\n{'workload (one node, real fsync)':<{width}}  {'plain':>12}  {'replicated':>12}  {'ratio':>6}  {'pairs':>9}")
        print("-" * (width + 49))
        for k, (p, r, lo, hi) in results.items():
            print(f"{k:<{width}}  {p:>12,.0f}  {r:>12,.0f}  {r / p:>6.2f}  {lo:.2f}-{hi:.2f}")
        print(f"\nmedians of {REPEAT} alternating runs; SQLite {sqlite3.sqlite_version}; {os.cpu_count()} cores")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
