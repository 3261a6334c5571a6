"""A workload client process: runs transactions against the nodes' hosts and records a history.

Usage: client.py CONFIG_JSON
CONFIG: {"client": id, "socks": {node_id: unix socket path}, "home": node_id, "history": path,
         "seed": n, "accounts": n, "keys": n, "mix": {"bank": w, "append": w, "set": w}}

Each client is one process with one connection per node host (each served by its own SQLite
connection inside the host). Writes go to the node it believes leads (learned from
`replicated_leader()` after a SQLITE_READONLY); reads go to its home node, a follower as often as
not, half of them behind `replicated_sync()`. Every finished operation is appended to the history
as one JSON line:
  {"c": client, "wl": "bank"|"append"|"set", "type": "ok"|"fail"|"info", "t0": start, "t1": end,
   "node": id, "write": bool, "sync": bool, "ops": [[f, k, v], ...], "err": message}
`fail` means the transaction certainly did not happen (refused before commit); `info` means its
fate is unknown (the commit itself failed or the node vanished mid-request): the checker accepts
either outcome for it, but only one. Stops after finishing the current operation on SIGTERM.
"""
import json
import random
import signal
import socket
import sys
import time

REQUEST_TIMEOUT = 12.0  # > the nodes' timeout_ms plus a pause: a request that outlives it is `info`
SQLITE_READONLY = 8
KEY_WINDOW_S = 20  # list-append uses a new set of keys every 20 s, as Elle does, so reads stay cheap

stop = False


def on_term(*_):
    global stop
    stop = True


class Conn:
    def __init__(self, path):
        self.path, self.sock, self.f, self.down_until = path, None, None, 0.0

    def call(self, req):
        """The node's reply, or None when the node could not be reached or did not answer."""
        if self.sock is None:
            if time.time() < self.down_until:
                return None
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(REQUEST_TIMEOUT)
                s.connect(self.path)
            except OSError:
                self.down_until = time.time() + 0.2
                return None
            self.sock, self.f = s, s.makefile("rw", encoding="utf-8")
        try:
            self.f.write(json.dumps(req) + "\n")
            self.f.flush()
            line = self.f.readline()
            if line:
                return json.loads(line)
        except (OSError, ValueError):
            pass
        self.close()
        return None

    def close(self):
        try:
            if self.sock is not None:
                self.sock.close()
        except OSError:
            pass
        self.sock = self.f = None
        self.down_until = time.time() + 0.2


def main():
    cfg = json.loads(sys.argv[1])
    signal.signal(signal.SIGTERM, on_term)
    me, rnd = cfg["client"], random.Random(cfg["seed"])
    conns = {int(k): Conn(v) for k, v in cfg["socks"].items()}
    home = leader = int(cfg["home"])
    accounts, keys = cfg["accounts"], cfg["keys"]
    kinds = [k for k, w in cfg["mix"].items() for _ in range(w)]
    counter = 0
    out = open(cfg["history"], "a", buffering=1)

    def fresh():
        nonlocal counter
        counter += 1
        return me * 10_000_000 + counter

    def learn_leader(node):
        nonlocal leader
        r = conns[node].call({"txn": [["select replicated_leader()", []]], "begin": "deferred"})
        addr = r and r.get("results") and r["results"][0][0][0]
        if addr:
            leader = int(addr.split("@")[0])
        else:
            leader = rnd.choice(list(conns))

    while not stop:
        wl = rnd.choice(kinds)
        sync = None
        if wl == "bank":
            if rnd.random() < 0.5:
                a, b = rnd.sample(range(accounts), 2)
                amount = rnd.randint(1, 5)
                ops = [["transfer", [a, b], amount]]
                stmts = [["update accounts set balance = balance - ? where id = ?", [amount, a]],
                         ["update accounts set balance = balance + ? where id = ?", [amount, b]]]
                write = True
            else:
                ops = [["read", None, None]]
                stmts = [["select count(*), sum(balance) from accounts", []]]
                write = False
        elif wl == "append":
            ops, stmts = [], []
            window = int(time.time() // KEY_WINDOW_S) * keys  # fresh keys now and then: lists stay short
            for _ in range(rnd.randint(1, 3)):
                k = window + rnd.randrange(keys)
                if rnd.random() < 0.5:
                    v = fresh()
                    ops.append(["append", k, v])
                    stmts.append(["insert into la(k, v) values(?, ?)", [k, v]])
                else:
                    ops.append(["r", k, None])
                    stmts.append(["select v from la where k = ? order by pos", [k]])
            write = any(o[0] == "append" for o in ops)
        else:
            v = fresh()
            ops, stmts, write = [["add", None, v]], [["insert into sset(v) values(?)", [v]]], True
        if not write and rnd.random() < 0.5:
            sync = 5000
        node = leader if write else home
        if not write and conns[home].sock is None and time.time() < conns[home].down_until:
            node = rnd.choice(list(conns))  # home is down: read elsewhere meanwhile
        req = {"txn": stmts, "begin": "immediate" if write else "deferred", "sync": sync}
        t0 = time.time()
        r = conns[node].call(req)
        t1 = time.time()
        rec = {"c": me, "wl": wl, "t0": t0, "t1": t1, "node": node, "write": write, "sync": sync is not None,
               "ops": ops}
        if r is None:
            rec["type"], rec["err"] = ("info" if write else "fail"), "no answer from the node"
            if write:
                leader = rnd.choice(list(conns))
        elif "error" in r:
            decided = r["stage"] != "commit" or not write
            rec["type"], rec["err"] = ("fail" if decided else "info"), f"{r['stage']}: {r['error']}"
            if write and r["code"] & 0xFF == SQLITE_READONLY:
                learn_leader(node)
        else:
            rec["type"] = "ok"
            for op, rows in zip(ops, r["results"]):
                if op[0] == "r":
                    op[2] = [row[0] for row in rows]
                elif op[0] == "read":
                    op[2] = rows[0]
        out.write(json.dumps(rec) + "\n")
        if rec["type"] != "ok":
            time.sleep(0.02)


if __name__ == "__main__":
    main()
