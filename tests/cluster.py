"""Multi-node helpers shared by every cluster test and the demo (`make demo`).

A `Cluster` runs N node processes on loopback, each a real host process (`tests/hosts/node.py`
under Debian's /usr/bin/python3, whose sqlite3 can load extensions) that opens the replicated
database and executes SQL sent to it. It can find the leader, kill -9 and restart nodes, cut links
with iptables on the nodes' UDP ports (recipes: ../shared/TESTING.md), and compare nodes.
"""
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIB = REPO / "target" / "release" / "libreplicated"
HOST_PY = "/usr/bin/python3"
NODE = REPO / "tests" / "hosts" / "node.py"
SECRET = "cluster-test-secret-0123456789"
START_TIMEOUT = 90  # seconds for a node to open its database (reconcile, Raft start)


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class SqlError(Exception):
    def __init__(self, msg, code):
        super().__init__(msg)
        self.code = code


class Node:
    def __init__(self, cluster, nid):
        self.cluster, self.id, self.proc, self._seq = cluster, nid, None, 0
        self.auth = None  # overrides the cluster's authentication parameters when set
        self.serve = None  # a unix socket path: the host also serves client processes there
        self.log_path = None  # where the host's stderr goes (default: node.log beside the database)

    @property
    def db(self):
        return self.cluster.dir / f"n{self.id}" / "app.db"

    def uri(self):
        c = self.cluster
        peers = ",".join(f"{i}@{c.addr(i)}" for i in c.ports)
        extra = "".join(f"&{k}={v}" for k, v in c.params.items())
        if c.relay_ports:
            extra += f"&listen=127.0.0.1:{c.ports[self.id]}"
        return f"file:{self.db}?vfs=replicated&node={self.id}&peers={peers}&{self.auth or c.auth(self.id)}{extra}"

    def start(self, env=None):
        self.db.parent.mkdir(parents=True, exist_ok=True)
        e = dict(os.environ)
        e.update(self.cluster.env)
        e.update(env or {})
        log = open(self.log_path or self.db.parent / "node.log", "ab")
        serve = ["--serve", str(self.serve)] if self.serve else []
        self.proc = subprocess.Popen([HOST_PY, str(NODE), str(LIB), self.uri(), *serve], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=log, text=True, env=e,
                                     start_new_session=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], START_TIMEOUT)
        line = self.proc.stdout.readline() if ready else ""
        if not line or not json.loads(line).get("ready"):
            self.kill()
            raise RuntimeError(f"node {self.id} did not start within {START_TIMEOUT} s: {line!r}; "
                               f"see {self.log_path or self.db.parent / 'node.log'}")
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def pause(self):
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        os.killpg(self.proc.pid, signal.SIGCONT)

    def submit(self, sql, *args, script=False):
        """Sends one statement to this node without waiting for its answer."""
        self._seq += 1
        self.proc.stdin.write(json.dumps({"id": self._seq, "sql": sql, "args": list(args), "script": script}) + "\n")
        self.proc.stdin.flush()

    def sql(self, sql, *args, script=False):
        """Runs one statement on this node; returns rows or raises SqlError."""
        self.submit(sql, *args, script=script)
        line = self.proc.stdout.readline()
        if not line:
            raise SqlError(f"node {self.id} died", -1)
        out = json.loads(line)
        if "error" in out:
            raise SqlError(out["error"], out["code"])
        return out["rows"]

    def one(self, sql, *args):
        rows = self.sql(sql, *args)
        return rows[0][0] if rows else None

    def status(self):
        return json.loads(self.one("select replicated_status()"))


class Cluster:
    def __init__(self, directory, n=3, certs=None, relay=False, env=None, **params):
        """`certs`: a directory made by `replicated-certs` (mutual TLS); default: shared secret.
        `relay`: peers reach each node through a relay port (`relay_ports`; the nemesis harness
        runs the relay that delays packets); each node still listens on its own port (`ports`).
        `env`: environment variables for every node process, at every start."""
        self.certs = certs
        self.env = dict(env or {})
        self.dir = Path(directory)
        self.ids = list(range(1, n + 1))
        self.ports = dict(zip(self.ids, free_ports(n)))
        self.relay_ports = dict(zip(self.ids, free_ports(n))) if relay else {}
        self.params = {"timeout_ms": 3000, **params}
        self.nodes = {i: Node(self, i) for i in self.ids}
        self.rules = []

    def addr(self, nid):
        """The address peers use to reach node `nid` (its relay port when relayed)."""
        return f"127.0.0.1:{self.relay_ports.get(nid, self.ports[nid])}"

    def auth(self, nid):
        if self.certs:
            d = self.certs
            return f"tls_ca={d}/ca.pem&tls_cert={d}/node-{nid}.pem&tls_key={d}/node-{nid}.key"
        return f"secret={SECRET}"

    def add_node(self, nid):
        """A new node (not started) that knows every peer, itself included; join it with
        replicated_add_node on the leader."""
        self.ids.append(nid)
        self.ports[nid] = free_ports(1)[0]
        if self.relay_ports:
            raise ValueError("add_node on a relayed cluster: restart the relay with the new port")
        self.nodes[nid] = Node(self, nid)
        return self.nodes[nid]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.heal()
        self.stop()

    def start(self, env=None):
        for n in self.nodes.values():
            n.start(env)
        return self

    def stop(self):
        for n in self.nodes.values():
            n.kill()

    def alive(self):
        return [n for n in self.nodes.values() if n.alive()]

    def leader(self, timeout=15, among=None):
        """The node every live node (or `among`) agrees is leader, and that says so itself."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            nodes = among or self.alive()
            try:
                st = {n.id: n.status() for n in nodes}
            except SqlError as e:
                last = e
                time.sleep(0.05)
                continue
            leaders = {s["leader_id"] for s in st.values()}
            if len(leaders) == 1:
                lid = leaders.pop()
                if lid in st and st[lid]["role"] == "leader":
                    return self.nodes[lid]
            last = st
            time.sleep(0.05)
        raise AssertionError(f"no agreed leader within {timeout}s: {last}")

    def followers(self):
        lid = self.leader().id
        return [n for n in self.alive() if n.id != lid]

    def write(self, sql, *args, timeout=15):
        """Runs `sql` on the current leader, retrying across elections; returns the node used."""
        deadline = time.time() + timeout
        while True:
            node = self.leader(timeout=max(0.1, deadline - time.time()))
            try:
                node.sql(sql, *args)
                return node
            except SqlError as e:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def sync_all(self, timeout_ms=10000):
        for n in self.alive():
            n.one("select replicated_sync(?)", timeout_ms)

    def dump(self, node, tables):
        return {t: node.sql(f"select * from {t} order by 1") for t in tables}

    def checkpoint_and_hash(self):
        """TRUNCATE-checkpoint every live node; sha256 of each database file. A checkpoint that
        stays busy (something holds a read transaction) raises: the file would be incomplete."""
        out = {}
        for n in self.alive():
            for _ in range(100):
                busy, log, ckpt = n.sql("pragma wal_checkpoint(TRUNCATE)")[0]
                if busy == 0:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError(f"node {n.id}: the TRUNCATE checkpoint stays busy ({log} frames, {ckpt} done)")
            out[n.id] = hashlib.sha256(n.db.read_bytes()).hexdigest()
        return out

    # --- network faults (iptables on loopback UDP ports; TESTING.md) ---
    @staticmethod
    def _iptables(action, rule):
        subprocess.run(["iptables", action, "INPUT", *rule], check=True, capture_output=True)

    def _link_rules(self, src, dst):
        """The DROP rules that stop every packet from node `src` reaching node `dst`. Direct:
        src's listen port -> dst's listen port. Relayed, src's packets reach dst by two paths:
        src -> dst's relay port (connections src opened), and, for connections dst opened to src's
        relay port, the relay forwards src's answers from src's relay port -> dst's listen port."""
        p, r = self.ports, self.relay_ports
        drop = lambda sport, dport: ["-p", "udp", "-s", "127.0.0.1", "--sport", str(sport),
                                     "--dport", str(dport), "-j", "DROP"]
        if not r:
            return [drop(p[src], p[dst])]
        return [drop(p[src], r[dst]), drop(r[src], p[dst])]

    def _add(self, rule):
        self._iptables("-I", rule)
        self.rules.append(rule)

    def cut(self, a, b, both=True):
        """Drops packets a -> b (and b -> a when `both`)."""
        for s, d in ([(a, b), (b, a)] if both else [(a, b)]):
            for rule in self._link_rules(s, d):
                self._add(rule)

    def isolate(self, a):
        for b in self.ids:
            if b != a:
                self.cut(a, b)

    def lose(self, probability, nodes=None):
        """Drops a random share of the UDP packets arriving at each of `nodes` (default: all)."""
        for n in nodes or self.ids:
            self._add(["-p", "udp", "--dport", str(self.ports[n]), "-m", "statistic", "--mode", "random",
                       "--probability", f"{probability:.3f}", "-j", "DROP"])

    def heal(self):
        while self.rules:
            rule = self.rules.pop()
            try:
                self._iptables("-D", rule)
            except subprocess.CalledProcessError:
                pass

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)
