"""The nemesis suite (tests/nemesis/): first the checker, fed broken histories so that every
check is shown to fail when it should; then real runs, 3 and 5 nodes, at least 50 fault cycles in
all (`make nemesis` runs the 10-minute schedule, `make soak DURATION=...` any length)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "nemesis"))
import checker  # noqa: E402

RUN = Path(__file__).resolve().parent / "nemesis" / "run.py"


def op(kind, t0, t1, ops, wl="append", write=None, sync=False, node=1):
    if write is None:
        write = any(o[0] in ("append", "transfer", "add") for o in ops)
    return {"c": 1, "wl": wl, "type": kind, "t0": t0, "t1": t1, "node": node, "write": write, "sync": sync,
            "ops": ops}


def append_anomalies(history, final):
    res = checker.Result()
    checker.check_append(history, final, res)
    return set(res.anomalies)


def test_a_clean_append_history_passes():
    h = [op("ok", 0, 1, [["append", 1, 10]]),
         op("ok", 2, 3, [["append", 1, 11], ["r", 1, [10, 11]]]),
         op("ok", 4, 5, [["r", 1, [10, 11]]], sync=True),
         op("ok", 0.5, 6, [["r", 1, []]]),  # concurrent with everything: may see nothing
         op("info", 6, 7, [["append", 1, 12]]),  # unknown outcome, here: happened
         op("info", 6, 7, [["append", 2, 20]]),  # unknown outcome, here: did not happen
         op("fail", 6, 7, [["append", 2, 21]])]
    assert append_anomalies(h, {1: [10, 11, 12]}) == set()


@pytest.mark.parametrize("history,final,kind", [
    ([op("ok", 0, 1, [["append", 1, 10]])], {1: []}, "lost"),
    ([op("ok", 0, 1, [["append", 1, 10]])], {1: [10, 10]}, "duplicate"),
    ([op("fail", 0, 1, [["append", 1, 10]])], {1: [10]}, "phantom"),
    ([op("ok", 0, 1, [["append", 1, 10]])], {1: [10, 99]}, "phantom"),
    # A read saw a value that is not in the final list: it was visible, then lost.
    ([op("info", 0, 1, [["append", 1, 10]]), op("ok", 2, 3, [["r", 1, [10]]])], {1: []}, "not-prefix"),
    # Order flipped between a read and the end.
    ([op("ok", 0, 1, [["append", 1, 10]]), op("ok", 0, 1, [["append", 1, 11]]),
      op("ok", 2, 3, [["r", 1, [11, 10]]])], {1: [10, 11]}, "not-prefix"),
    # A synced read that misses a write acknowledged before it began: stale, not linearizable.
    ([op("ok", 0, 1, [["append", 1, 10]]), op("ok", 2, 3, [["r", 1, []]], sync=True)], {1: [10]},
     "nonlinearizable"),
    # Appends ordered against real time.
    ([op("ok", 0, 1, [["append", 1, 10]]), op("ok", 2, 3, [["append", 1, 11]])], {1: [11, 10]},
     "nonlinearizable"),
    # A transaction that does not see its own append.
    ([op("ok", 0, 1, [["append", 1, 10], ["r", 1, []]])], {1: [10]}, "internal"),
    # Write skew across two keys: each transaction read the other's key before the other's append.
    ([op("ok", 0, 1, [["r", 2, []], ["append", 1, 10]]), op("ok", 0, 1, [["r", 1, []], ["append", 2, 20]])],
     {1: [10], 2: [20]}, "cycle"),
])
def test_the_append_checker_finds(history, final, kind):
    assert kind in append_anomalies(history, final)


def test_stale_reads_without_sync_are_allowed_but_must_be_prefixes():
    h = [op("ok", 0, 1, [["append", 1, 10]]), op("ok", 2, 3, [["r", 1, []]])]
    assert append_anomalies(h, {1: [10]}) == set()


def test_the_bank_and_set_checkers_find():
    res = checker.Result()
    h = [op("ok", 0, 1, [["read", None, [8, 800]]], wl="bank"), op("ok", 0, 1, [["read", None, [8, 799]]], wl="bank")]
    checker.check_bank(h, 8, 800, {1: (8, 800), 2: (7, 700)}, res)
    assert len(res.anomalies["bank-total"]) == 2
    res = checker.Result()
    h = [op("ok", 0, 1, [["add", None, 1]], wl="set"), op("fail", 0, 1, [["add", None, 2]], wl="set"),
         op("info", 0, 1, [["add", None, 3]], wl="set")]
    checker.check_set(h, [2, 3], res)
    assert res.anomalies["set-lost"] == [1] and res.anomalies["set-phantom"] == [2]


def run_nemesis(*args):
    seed = os.environ.get("NEMESIS_SEED", "1")
    r = subprocess.run([sys.executable, str(RUN), "--seed", seed, *args], capture_output=True, text=True,
                       timeout=900)
    print(r.stdout[-6000:], r.stderr[-3000:])
    assert r.returncode == 0, f"nemesis failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert "0 anomalies" in r.stdout


def test_nemesis_three_nodes():
    """The default configuration: the whole log is kept; a wiped node replays it."""
    run_nemesis("--nodes", "3", "--cycles", os.environ.get("NEMESIS_CYCLES_3", "39"))


def test_nemesis_five_nodes_with_snapshots():
    """Snapshots and log compaction on: a wiped or lagging node receives a snapshot."""
    run_nemesis("--nodes", "5", "--clients", "5", "--snapshot-every", "250",
                "--cycles", os.environ.get("NEMESIS_CYCLES_5", "13"))
