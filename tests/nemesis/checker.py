"""The checker: decides from the clients' histories and the nodes' final contents whether a run
kept the guarantees of DESIGN §3.5. Pure functions over data; `tests/test_nemesis.py` feeds it
broken histories to prove each check can fail.

History records come from client.py: type `ok` (happened), `fail` (certainly did not), `info`
(unknown; may have happened once, or not at all).

Checks, each an anomaly kind in the result:
* bank — every successful read of the accounts (on any node, synced or not) sees all accounts and
  the invariant total; the final state on every node has the total too.
* set — every acknowledged insert is in the final set; nothing is there that was not attempted,
  or whose attempt certainly failed.
* append (list-append, after Jepsen's Elle) — for every key, with the final list as the order:
  - each value appears at most once (`duplicate`); every acknowledged append is present (`lost`);
    nothing failed or never attempted is present (`phantom`);
  - every read returned a prefix of the final list (`not-prefix`: it saw a value later lost, or
    an order that changed), and a transaction sees its own appends (`internal`);
  - real time (`nonlinearizable`): writes and `replicated_sync()` reads are linearizable. An append
    at position i has rank 2i+1, a read of a prefix of length L rank 2L; a history is linearizable
    iff every operation that finished before another began has a rank no greater than it;
  - serializability across keys (`cycle`): the write-write, write-read and read-write dependencies
    between transactions, as Elle infers them from list orders, must have no cycle.
"""
from collections import defaultdict

MAX_EXAMPLES = 5


class Result:
    def __init__(self):
        self.anomalies = defaultdict(list)
        self.stats = defaultdict(int)

    def bad(self, kind, detail):
        self.anomalies[kind].append(detail)

    def count(self):
        return sum(len(v) for v in self.anomalies.values())

    def summary(self):
        return {k: {"count": len(v), "examples": v[:MAX_EXAMPLES]} for k, v in self.anomalies.items()}


def check_bank(history, accounts, total, finals, res):
    """`finals`: {node: (count, sum)} read at the end."""
    for r in history:
        if r["wl"] != "bank" or r["type"] != "ok":
            continue
        res.stats["bank ok"] += 1
        op = r["ops"][0]
        if op[0] == "read" and (op[2][0] != accounts or op[2][1] != total):
            res.bad("bank-total", {"read": op[2], "expected": [accounts, total], "node": r["node"], "t": r["t0"]})
    for node, (cnt, s) in finals.items():
        if cnt != accounts or s != total:
            res.bad("bank-total", {"final": [cnt, s], "expected": [accounts, total], "node": node})


def check_set(history, final, res):
    ok, attempted = set(), set()
    for r in history:
        if r["wl"] != "set":
            continue
        v = r["ops"][0][2]
        if r["type"] == "ok":
            ok.add(v)
            res.stats["set ok"] += 1
        if r["type"] != "fail":
            attempted.add(v)
    final = set(final)
    for v in sorted(ok - final):
        res.bad("set-lost", v)
    for v in sorted(final - attempted):
        res.bad("set-phantom", v)


def check_append(history, final, res):
    """`final`: {key: [values in list order]} (the same on every node; compared elsewhere)."""
    txns = [r for r in history if r["wl"] == "append" and r["type"] != "fail"]
    failed = {op[2] for r in history if r["wl"] == "append" and r["type"] == "fail"
              for op in r["ops"] if op[0] == "append"}
    writer, position = {}, {}  # value -> transaction index; value -> (key, index in final list)
    for i, r in enumerate(txns):
        for op in r["ops"]:
            if op[0] == "append":
                writer[op[2]] = i
    for k, values in final.items():
        seen = set()
        for idx, v in enumerate(values):
            if v in seen:
                res.bad("duplicate", {"key": k, "value": v})
            seen.add(v)
            position[v] = (k, idx)
            if v in failed:
                res.bad("phantom", {"key": k, "value": v, "why": "its append failed"})
            elif v not in writer:
                res.bad("phantom", {"key": k, "value": v, "why": "never appended"})
    ops_by_key = defaultdict(list)  # key -> [(t0, t1, rank, txn)] for linearizable operations
    for i, r in enumerate(txns):
        linear = r["write"] or r["sync"]
        t1 = r["t1"] if r["type"] == "ok" else float("inf")
        own = defaultdict(list)
        if r["type"] == "ok":
            res.stats["append ok"] += 1
        for op in r["ops"]:
            f, k, v = op
            k_final = final.get(k, [])
            if f == "append":
                if r["type"] == "ok" and v not in position:
                    res.bad("lost", {"key": k, "value": v})
                if v in position:
                    if position[v][0] != k:
                        res.bad("phantom", {"key": k, "value": v, "why": f"found under key {position[v][0]}"})
                    elif linear:
                        ops_by_key[k].append((r["t0"], t1, 2 * position[v][1] + 1, i))
                own[k].append(v)
            elif r["type"] == "ok":
                if v != k_final[: len(v)]:
                    res.bad("not-prefix", {"key": k, "read": v[-8:], "read_len": len(v),
                                           "final": k_final[max(0, len(v) - 8): len(v)], "node": r["node"]})
                    continue
                if own[k] and v[-len(own[k]):] != own[k]:
                    res.bad("internal", {"key": k, "read": v[-8:], "own": own[k]})
                if linear:
                    ops_by_key[k].append((r["t0"], t1, 2 * len(v), i))
    for k, ops in ops_by_key.items():
        _check_realtime(k, ops, txns, res)
    _check_cycles(txns, final, writer, res)


def _check_realtime(key, ops, txns, res):
    """Every op that completed before another was invoked must not have a larger rank."""
    by_end = sorted(ops, key=lambda o: o[1])
    best, j = None, 0  # the finished op with the largest rank so far
    for op in sorted(ops, key=lambda o: o[0]):
        while j < len(by_end) and by_end[j][1] < op[0]:
            if best is None or by_end[j][2] > best[2]:
                best = by_end[j]
            j += 1
        if best is not None and best[2] > op[2]:
            res.bad("nonlinearizable", {
                "key": key,
                "earlier": {"ops": txns[best[3]]["ops"], "t1": best[1], "rank": best[2]},
                "later": {"ops": txns[op[3]]["ops"], "t0": op[0], "rank": op[2]},
            })


def _check_cycles(txns, final, writer, res):
    edges = defaultdict(set)
    for k, values in final.items():
        for a, b in zip(values, values[1:]):
            if a in writer and b in writer and writer[a] != writer[b]:
                edges[writer[a]].add(writer[b])  # ww
    for i, r in enumerate(txns):
        if r["type"] != "ok":
            continue
        for f, k, v in r["ops"]:
            if f != "r":
                continue
            values = final.get(k, [])
            if v and v[-1] in writer and writer[v[-1]] != i:
                edges[writer[v[-1]]].add(i)  # wr: i read the last value appended by that txn
            if len(v) < len(values) and values[len(v)] in writer and writer[values[len(v)]] != i:
                edges[i].add(writer[values[len(v)]])  # rw: i did not see the next append
    cycle = _find_cycle(len(txns), edges)
    if cycle:
        res.bad("cycle", [txns[i]["ops"] for i in cycle][:6])


def _find_cycle(n, edges):
    """One cycle in the graph, as a list of vertices, or None (iterative DFS, colours)."""
    colour = [0] * n  # 0 new, 1 on the stack, 2 done
    parent = {}
    for root in range(n):
        if colour[root]:
            continue
        stack = [(root, iter(edges.get(root, ())))]
        colour[root] = 1
        while stack:
            v, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[v] = 2
                stack.pop()
            elif colour[nxt] == 0:
                colour[nxt] = 1
                parent[nxt] = v
                stack.append((nxt, iter(edges.get(nxt, ()))))
            elif colour[nxt] == 1:
                cycle, x = [nxt], v
                while x != nxt:
                    cycle.append(x)
                    x = parent[x]
                return cycle[::-1]
    return None
