#!/usr/bin/env python3
"""The nemesis: a cluster under load, faults on a schedule, then heal and check (issue: verification).

    run.py --nodes 3 --cycles 50          # CI: 50 fault cycles
    run.py --nodes 5 --duration 600       # make nemesis / make soak DURATION=...

What runs: N node processes (tests/hosts/node.py: Debian's python3 and its sqlite3, loading the
extension), each also serving client processes on a unix socket; C client processes
(client.py) running the bank, list-append and set workloads; a UDP relay (relay.py) between the
nodes, so that packets can be delayed; and, between faults, plain `sqlite3 -readonly` shells that
read the bank total straight from a node's files while it applies.

Each fault cycle injects one fault, holds it, heals it and waits for an agreed leader:
  kill / kill-leader            kill -9, then restart (the node reconciles and catches up)
  pause / pause-leader          SIGSTOP longer than the election timeout, then SIGCONT
  partition-halves              a random minority cut from the majority (iptables, both ways)
  partition-leader              the leader cut from everyone
  bridge                        two groups that only one node (the bridge) can reach both of
  one-way                       the leader cannot send, or cannot hear (one-way iptables rules)
  loss                          20-35% of every node's incoming packets dropped (iptables statistic)
  delay                         every packet held 30-120 ms ± 20 ms by the relay
  disk-full                     the tmpfs holding one node's files is filled, then emptied
  membership                    a follower removed, its files wiped, started empty and re-added
  transfer                      replicated_transfer_leader to a random voter
At the end, everything is healed and restarted, the clients stop, and the checks of checker.py run
on the histories, plus: every node has the same content at the same applied index, byte-identical
files after a TRUNCATE checkpoint, and `PRAGMA integrity_check` = ok. Prints a summary table; a run
with anomalies keeps its folder (histories, fault log, node logs) and says where.
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from cluster import REPO, Cluster, SqlError  # noqa: E402

import checker  # noqa: E402

FAULTS = ["kill", "kill-leader", "pause", "pause-leader", "partition-halves", "partition-leader", "bridge",
          "one-way", "loss", "delay", "disk-full", "membership", "transfer"]
ACCOUNTS, BALANCE, KEYS = 8, 100, 12
# The full-disk node's tmpfs: room for a long run's log (kept whole unless --snapshot-every), which
# must never fill it by itself; the disk-full fault fills what is left with a file, then removes it.
TMPFS_MB = int(os.environ.get("NEMESIS_TMPFS_MB", "1024"))


class Nemesis:
    def __init__(self, args, out):
        self.args, self.out = args, out
        self.rnd = random.Random(args.seed)
        env = {"REPLICATED_SNAPSHOT_EVERY": str(args.snapshot_every)} if args.snapshot_every else {}
        self.c = Cluster(out / "nodes", n=args.nodes, relay=True, env=env, timeout_ms=args.timeout_ms, ack=args.ack)
        self.paused, self.down, self.removed = set(), set(), set()
        self.faults, self.notes = Counter(), Counter()
        self.log = open(out / "faults.jsonl", "a", buffering=1)
        self.relay = self.clients = None
        self.tmpfs = None
        self.harness_reads = []
        for nid, node in self.c.nodes.items():
            node.serve = f"/tmp/nemesis-{os.getpid()}-{nid}.sock"

    # --- set-up and tear-down ---
    def start(self):
        routes = [[self.c.relay_ports[i], self.c.ports[i]] for i in self.c.ids]
        self.relay = subprocess.Popen([sys.executable, str(HERE / "relay.py"), json.dumps(routes)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      start_new_session=True)
        if self.relay.stdout.readline().strip() != "ready":
            raise RuntimeError("the relay did not start")
        if "disk-full" in self.args.faults:
            self.mount_tmpfs(self.c.ids[-1])
        self.c.start()
        leader = self.c.leader(timeout=30)
        leader.sql("create table accounts(id integer primary key, balance integer not null)")
        leader.sql("create table la(pos integer primary key, k integer not null, v integer not null)")
        leader.sql("create table sset(v integer primary key)")
        leader.sql("with recursive n(i) as (select 0 union all select i + 1 from n where i + 1 < ?) "
                   "insert into accounts select i, ? from n", ACCOUNTS, BALANCE)
        self.c.sync_all()
        socks = {i: n.serve for i, n in self.c.nodes.items()}
        self.clients = []
        for k in range(1, self.args.clients + 1):
            cfg = {"client": k, "socks": socks, "home": self.c.ids[(k - 1) % len(self.c.ids)],
                   "history": str(self.out / f"client-{k}.jsonl"), "seed": self.args.seed * 100 + k,
                   "accounts": ACCOUNTS, "keys": KEYS, "mix": {"bank": 2, "append": 3, "set": 1}}
            self.clients.append(subprocess.Popen([sys.executable, str(HERE / "client.py"), json.dumps(cfg)],
                                                 start_new_session=True))

    def mount_tmpfs(self, nid):
        d = self.c.dir / f"n{nid}"
        d.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(d)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            print(f"nemesis: cannot mount a tmpfs ({r.stderr.strip()}): no disk-full faults", flush=True)
            self.args.faults = [f for f in self.args.faults if f != "disk-full"]
            return
        self.tmpfs = (nid, d)
        self.c.nodes[nid].log_path = self.out / f"node-{nid}.log"  # not on the disk that fills up

    def stop_clients(self):
        for p in self.clients or []:
            p.send_signal(signal.SIGTERM)
        for p in self.clients or []:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def teardown(self):
        self.heal_all(restart=False)
        for p in self.clients or []:
            if p.poll() is None:
                p.kill()
        self.c.stop()
        if self.relay:
            self.relay.kill()
            self.relay.wait()
        if self.tmpfs:
            # Keep the node's files with the run's evidence: the mount goes away.
            nid, d = self.tmpfs
            shutil.copytree(d, self.out / f"n{nid}-from-tmpfs", ignore=shutil.ignore_patterns("filler"),
                            dirs_exist_ok=True)
            subprocess.run(["umount", "-l", str(d)], capture_output=True)
        for n in self.c.nodes.values():
            Path(n.serve).unlink(missing_ok=True)

    # --- helpers ---
    def note(self, kind, **detail):
        self.log.write(json.dumps({"t": time.time(), "fault": kind, **detail}) + "\n")

    def leader(self, timeout=20):
        live = [n for n in self.c.alive() if n.id not in self.paused | self.removed]
        return self.c.leader(timeout=timeout, among=live)

    def restart(self, node, wipe=False):
        node.kill()
        if wipe:
            for p in node.db.parent.iterdir():
                if p.name != "node.log":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        last, deadline = None, time.time() + 120
        while time.time() < deadline:
            try:
                node.start()
                self.down.discard(node.id)
                return
            except RuntimeError as e:  # e.g. a `sqlite3 -readonly` reader still has the files open
                last = e
                node.kill()
                time.sleep(0.25)
        raise RuntimeError(f"node {node.id} does not restart: {last}")

    def heal_all(self, restart=True):
        self.c.heal()
        if self.relay and self.relay.poll() is None:
            self.relay.stdin.write("delay 0 0\n")
            self.relay.stdin.flush()
        for nid in list(self.paused):
            if self.c.nodes[nid].alive():
                self.c.nodes[nid].resume()
            self.paused.discard(nid)
        if self.tmpfs:
            (self.tmpfs[1] / "filler").unlink(missing_ok=True)
        if restart:
            for nid in list(self.down):
                self.restart(self.c.nodes[nid])
            for n in self.c.nodes.values():
                if n.id not in self.down and not n.alive():
                    self.notes["node died by itself"] += 1
                    self.note("died", node=n.id)
                    self.restart(n)

    def hold(self, lo, hi):
        time.sleep(self.rnd.uniform(lo, hi) * self.args.hold)

    def random_node(self):
        return self.c.nodes[self.rnd.choice(self.c.ids)]

    def follower(self, leader, avoid=()):
        choices = [i for i in self.c.ids if i != leader.id and i not in avoid]
        return self.c.nodes[self.rnd.choice(choices)] if choices else None

    # --- faults ---
    def inject(self, kind):
        c = self.c
        if kind in ("kill", "kill-leader"):
            victim = self.leader() if kind == "kill-leader" else self.random_node()
            self.note(kind, node=victim.id)
            victim.kill()
            self.down.add(victim.id)
            self.hold(0.3, 1.5)
            self.restart(victim)
        elif kind in ("pause", "pause-leader"):
            victim = self.leader() if kind == "pause-leader" else self.random_node()
            self.note(kind, node=victim.id)
            victim.pause()
            self.paused.add(victim.id)
            self.hold(0.6, 2.0)
        elif kind == "partition-halves":
            ids = c.ids[:]
            self.rnd.shuffle(ids)
            k = self.rnd.randint(1, (len(ids) - 1) // 2)
            minority, majority = ids[:k], ids[k:]
            self.note(kind, minority=minority)
            for a in minority:
                for b in majority:
                    c.cut(a, b)
            self.hold(1.0, 2.5)
        elif kind == "partition-leader":
            leader = self.leader()
            self.note(kind, node=leader.id)
            c.isolate(leader.id)
            self.hold(1.0, 2.5)
        elif kind == "bridge":
            ids = c.ids[:]
            self.rnd.shuffle(ids)
            bridge, rest = ids[0], ids[1:]
            left, right = rest[: len(rest) // 2], rest[len(rest) // 2:]
            self.note(kind, bridge=bridge, left=left, right=right)
            for a in left:
                for b in right:
                    c.cut(a, b)
            self.hold(1.0, 2.5)
        elif kind == "one-way":
            leader = self.leader()
            outbound = self.rnd.random() < 0.5
            self.note(kind, node=leader.id, direction="leader cannot send" if outbound else "leader cannot hear")
            for other in c.ids:
                if other != leader.id:
                    c.cut(leader.id, other, both=False) if outbound else c.cut(other, leader.id, both=False)
            self.hold(1.0, 2.5)
        elif kind == "loss":
            p = self.rnd.uniform(0.2, 0.35)
            self.note(kind, probability=round(p, 3))
            c.lose(p)
            self.hold(1.5, 3.0)
        elif kind == "delay":
            ms = self.rnd.randint(30, 120)
            self.note(kind, ms=ms, jitter=20)
            self.relay.stdin.write(f"delay {ms} 20\n")
            self.relay.stdin.flush()
            self.hold(1.5, 3.0)
        elif kind == "disk-full":
            nid, d = self.tmpfs
            self.note(kind, node=nid)
            try:
                with open(d / "filler", "wb") as f:
                    chunk = b"\0" * (1 << 20)
                    while True:
                        f.write(chunk)
            except OSError:
                pass
            self.hold(1.0, 2.5)
        elif kind == "membership":
            self.membership()
        elif kind == "transfer":
            leader = self.leader()
            target = self.follower(leader)
            try:
                leader.one("select replicated_transfer_leader(?)", target.id)
                self.note(kind, node=leader.id, to=target.id, ok=True)
            except SqlError as e:
                self.note(kind, node=leader.id, to=target.id, ok=False, err=str(e))
                self.notes["transfer refused"] += 1
        self.faults[kind] += 1

    def membership(self):
        """Remove a follower, wipe it, start it empty, add it back: it rebuilds from the others.
        Node 1 is never the one: started empty, the lowest id bootstraps a cluster of its own
        (README: a wiped node must be removed before it restarts, and node 1 re-added under a new id)."""
        leader = self.leader()
        victim = self.follower(leader, avoid=(1,))
        if victim is None:
            return
        self.note("membership", node=victim.id, step="remove")
        self.retry_on_leader("select replicated_remove_node(?)", victim.id)
        self.removed.add(victim.id)
        victim.kill()
        self.down.add(victim.id)
        self.restart(victim, wipe=True)
        self.note("membership", node=victim.id, step="add")
        self.retry_on_leader("select replicated_add_node(?, ?, 1)", victim.id, self.c.addr(victim.id))
        self.removed.discard(victim.id)
        try:
            how = "a snapshot" if victim.status()["snapshot_index"] is not None else "the log"
            self.notes[f"wiped node rebuilt from {how}"] += 1
        except SqlError:
            pass

    def retry_on_leader(self, sql, *args, timeout=40):
        deadline, last = time.time() + timeout, None
        while time.time() < deadline:
            try:
                return self.leader().one(sql, *args)
            except (SqlError, AssertionError) as e:
                last = e
                if "already a voter" in str(e) or ("not a member" in str(e) and "remove" in sql):
                    return None
                time.sleep(0.2)
        raise RuntimeError(f"{sql} {args}: {last}")

    def shell_read(self):
        """A plain sqlite3 shell (no extension) reads the bank straight from a live node's files."""
        live = [n for n in self.c.alive() if n.id not in self.paused]
        if not live:
            return
        n = self.rnd.choice(live)
        t0 = time.time()
        r = subprocess.run(["sqlite3", "-readonly", f"file:{n.db}?mode=ro",
                            "select count(*), sum(balance) from accounts"], capture_output=True, text=True,
                           timeout=30)
        if r.returncode == 0 and r.stdout.strip():
            cnt, s = (int(x) for x in r.stdout.strip().split("|"))
            self.harness_reads.append({"c": 0, "wl": "bank", "type": "ok", "t0": t0, "t1": time.time(), "node": n.id,
                                       "write": False, "sync": False, "ops": [["read", None, [cnt, s]]]})

    # --- the run ---
    def run(self):
        kinds = self.args.faults
        order = []
        cycle, deadline = 0, time.time() + self.args.duration if self.args.duration else None
        time.sleep(1.0)
        while (deadline and time.time() < deadline) or (not deadline and cycle < self.args.cycles):
            if not order:
                order = kinds[:]
                self.rnd.shuffle(order)
            kind = order.pop()
            cycle += 1
            try:
                self.inject(kind)
            finally:
                self.heal_all()
            self.note("healed", cycle=cycle)
            try:
                self.leader(timeout=30)
            except AssertionError as e:
                self.notes["no leader 30 s after healing"] += 1
                self.note("no-leader", err=str(e)[:500])
            if self.rnd.random() < 0.5:
                self.shell_read()
            time.sleep(self.rnd.uniform(0.2, 0.8) * self.args.hold)
            if self.args.verbose:
                print(f"cycle {cycle}: {kind}", flush=True)
        return cycle

    def final_checks(self, res):
        """Heal, stop the clients, and compare the nodes."""
        self.heal_all()
        self.stop_clients()
        c = self.c
        c.write("insert into sset(v) values(-1)", timeout=60)  # a commit of the final term
        c.sync_all(timeout_ms=60000)
        contents, applied = {}, {}
        for n in c.alive():
            st = n.status()
            applied[n.id] = st["applied_index"]
            if st["error"]:
                res.bad("node-error", {"node": n.id, "error": st["error"]})
            la = {}
            for k, v in n.sql("select k, v from la order by pos"):
                la.setdefault(k, []).append(v)
            contents[n.id] = {
                "la": la,
                "set": sorted(v for (v,) in n.sql("select v from sset") if v != -1),
                "bank": tuple(n.sql("select count(*), sum(balance) from accounts")[0]),
                "rows": n.sql("select 'a', id, balance from accounts union all select 'l', pos, v from la "
                              "union all select 's', v, null from sset order by 1, 2"),
            }
            ok = n.one("pragma integrity_check")
            if ok != "ok":
                res.bad("integrity", {"node": n.id, "result": ok})
        if len(set(applied.values())) != 1:
            res.bad("applied-index-differs", applied)
        ref_id = min(contents)
        for nid, content in contents.items():
            if content != contents[ref_id]:
                res.bad("divergence", {"node": nid, "vs": ref_id,
                                       "parts": [k for k in content if content[k] != contents[ref_id][k]]})
        try:
            hashes = c.checkpoint_and_hash()
            if len(set(hashes.values())) != 1:
                res.bad("files-differ", hashes)
        except AssertionError as e:
            res.bad("checkpoint-busy", str(e))
        return contents[ref_id], {nid: cont["bank"] for nid, cont in contents.items()}

    def history(self):
        out = list(self.harness_reads)
        for p in sorted(self.out.glob("client-*.jsonl")):
            with open(p) as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # a line cut short by the client's end
        return out


def table(rows, head):
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "  ".join(str(x).ljust(w[i]) for i, x in enumerate(r))  # noqa: E731
    return "\n".join([line(head), line(["-" * x for x in w])] + [line(r) for r in rows])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--cycles", type=int, default=50)
    ap.add_argument("--duration", type=float, default=0, help="seconds of faults (overrides --cycles)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seed", type=int, default=int(os.environ.get("NEMESIS_SEED", time.time_ns() % 100000)))
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--hold", type=float, default=1.0, help="scales every fault's duration")
    ap.add_argument("--ack", default="apply")
    ap.add_argument("--timeout-ms", type=int, default=3000)
    ap.add_argument("--snapshot-every", type=int, default=0,
                    help="nodes snapshot and purge their log every N entries (REPLICATED_SNAPSHOT_EVERY)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the run's folder even when it passes")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = set(args.faults) - set(FAULTS)
    if unknown:
        ap.error(f"unknown faults {sorted(unknown)}; known: {FAULTS}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or REPO / "target" / "nemesis" / f"{stamp}-{args.nodes}n-seed{args.seed}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"nemesis: {args.nodes} nodes, {args.clients} clients, seed {args.seed}, "
          f"{f'{args.duration:.0f} s' if args.duration else f'{args.cycles} cycles'}, folder {out}", flush=True)
    nem = Nemesis(args, out)
    res = checker.Result()
    t0 = time.time()
    cycles = 0
    try:
        nem.start()
        cycles = nem.run()
        final, bank_finals = nem.final_checks(res)
        hist = nem.history()
        checker.check_bank(hist, ACCOUNTS, ACCOUNTS * BALANCE, bank_finals, res)
        checker.check_set(hist, final["set"], res)
        checker.check_append(hist, final["la"], res)
    except Exception as e:  # the run itself broke: that is a failure with the same evidence kept
        res.bad("harness", repr(e))
        hist = nem.history()
    finally:
        nem.teardown()
    kinds = Counter((r["wl"], r["type"]) for r in hist)
    rows = [[f, n] for f, n in sorted(nem.faults.items())] + [["total fault cycles", cycles]]
    print("\n" + table(rows, ["fault", "injected"]))
    rows = [[wl, kinds[(wl, "ok")], kinds[(wl, "fail")], kinds[(wl, "info")]] for wl in ("bank", "append", "set")]
    print("\n" + table(rows, ["workload", "acknowledged", "failed", "unknown"]))
    rows = [[k, v["count"], json.dumps(v["examples"][:1])[:100]] for k, v in res.summary().items()] or [["none", 0, ""]]
    print("\n" + table(rows, ["anomaly", "count", "example"]))
    if nem.notes:
        print("\n" + table([[k, v] for k, v in nem.notes.items()], ["note", "count"]))
    summary = {"nodes": args.nodes, "seed": args.seed, "cycles": cycles, "seconds": round(time.time() - t0, 1),
               "faults": dict(nem.faults), "ops": {f"{a} {b}": n for (a, b), n in kinds.items()},
               "anomalies": res.summary(), "notes": dict(nem.notes)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if res.count():
        print(f"\nnemesis: FAILED with {res.count()} anomalies; history, fault log and node logs are in {out}")
        return 1
    print(f"\nnemesis: passed, {cycles} fault cycles in {time.time() - t0:.0f} s, 0 anomalies")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
