"""The SQL corpus (`sql_tests/*.sql`) run through the real sqlite3 shell, plain and replicated.

For every file:
  1. plain run: the script on an ordinary WAL database (synchronous=FULL), then `.dump` and a few header facts;
  2. replicated run: the same script through the extension on a one-node cluster, then `.dump` and the facts;
     the outputs must match the plain run (see `_comparable` for the `-- nondeterministic` files), and
     replicated_status() must describe this database (so the run really went through the replicated VFS);
  3. persistence: a NEW sqlite3 process loads the extension, reopens the same URI (same port, same Raft data
     directory) and must print the same `.dump` and facts as the end of step 2, and `ok` from integrity_check;
  4. plain readers: after the node process exited, the plain shell opens the database file with `-readonly`
     and must see the same content and pass integrity_check.

Every shell runs with -bail: any SQL or dot-command error fails the run (non-zero exit).

`python3 tests/test_sql_files.py` (no pytest, no extension needed) runs only the plain half: every file twice
on fresh plain databases, checking it succeeds, ends with `ok`, and is deterministic (outside marked lines).
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from util import LIB_SO, REPO, free_port, repl_uri, run_shell, shell_prelude  # noqa: E402

SQL_DIR = REPO / "sql_tests"
SQL_FILES = sorted(SQL_DIR.glob("*.sql"))

# First line of a file whose printed values may differ between runs (random(), datetime('now')).
NONDET_HEADER = "-- nondeterministic"
# Lines of output containing this marker carry such values and are left out of comparisons; every other
# line of a nondeterministic file states a fact that must hold whatever the values were.
ND_MARKER = "~nd~"

DUMP_SEP = "----DUMP----"
FACTS_SEP = "----FACTS----"
CHECK_SEP = "----CHECK----"

# Appended to every run: the whole content, then header facts that `.dump` does not show.
EPILOGUE = f"""
SELECT '{DUMP_SEP}';
.dump
SELECT '{FACTS_SEP}';
SELECT 'user_version', user_version FROM pragma_user_version;
SELECT 'application_id', application_id FROM pragma_application_id;
SELECT 'auto_vacuum', auto_vacuum FROM pragma_auto_vacuum;
SELECT 'page_size', page_size FROM pragma_page_size;
SELECT 'page_count', page_count FROM pragma_page_count;
SELECT 'freelist_count', freelist_count FROM pragma_freelist_count;
SELECT '{CHECK_SEP}';
PRAGMA integrity_check;
"""

# Replicated runs only: proof that the connection really went through the extension's VFS (a URI whose vfs=
# were ignored would run the corpus on a plain database and pass every comparison).
STATUS_SEP = "----STATUS----"
STATUS_EPILOGUE = f"""
SELECT '{STATUS_SEP}';
SELECT json_extract(replicated_status(), '$.db'), json_extract(replicated_status(), '$.node_id');
"""

SHELL_ERRORS = ("Error:", "Parse error", "Runtime error")


def plain_prelude(path) -> str:
    # journal_mode=WAL prints "wal"; keep it out of the compared output.
    return f".open '{path}'\n.output /dev/null\nPRAGMA journal_mode=WAL;\n.output\nPRAGMA synchronous=FULL;\n"


def is_nondeterministic(sql_file: Path) -> bool:
    return sql_file.read_text().splitlines()[0].strip() == NONDET_HEADER


def split_run(stdout: str, what: str):
    """(script output, dump, facts, integrity_check) of a run that ended with EPILOGUE."""
    lines = stdout.splitlines()
    for sep in (DUMP_SEP, FACTS_SEP, CHECK_SEP):
        assert lines.count(sep) == 1, f"{what}: separator {sep!r} printed {lines.count(sep)} times:\n{stdout}"
    d, f, c = lines.index(DUMP_SEP), lines.index(FACTS_SEP), lines.index(CHECK_SEP)
    assert d < f < c, f"{what}: separators out of order:\n{stdout}"
    return lines[:d], lines[d + 1:f], lines[f + 1:c], lines[c + 1:]


def run_checked(script: str, what: str, args=()):
    p = run_shell(script, check=False, args=("-bail", *args))
    assert p.returncode == 0, f"{what}: sqlite3 exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    bad = [l for l in p.stderr.splitlines() if l.startswith(SHELL_ERRORS)]
    assert not bad, f"{what}: shell reported errors:\n{p.stderr}"
    return p


def run_file(sql_file: Path, prelude: str, what: str, status_db=None):
    p = run_checked(prelude + sql_file.read_text() + EPILOGUE + (STATUS_EPILOGUE if status_db else ""), what)
    out = p.stdout
    if status_db:
        out, sep, status = out.partition(STATUS_SEP + "\n")
        assert sep and status.splitlines() == [f"{status_db}|1"], \
            f"{what}: replicated_status() does not describe {status_db}, node 1: {status!r}\nstderr:\n{p.stderr}"
    body, dump, facts, check = split_run(out, what)
    # Every corpus file ends with PRAGMA integrity_check, so its own output ends with "ok".
    assert body and body[-1] == "ok", f"{what}: the file's final integrity_check did not print ok:\n{p.stdout}"
    assert check == ["ok"], f"{what}: integrity_check after the script: {check}"
    return p, body, dump, facts


def _comparable(body, nondet: bool):
    """Script output as compared between runs.

    Normal files: every line, exactly. Nondeterministic files: every line except those carrying ND_MARKER.
    Those files print their random values only on marked lines and otherwise only facts that must hold (counts,
    equalities between independently computed aggregates, "now" within bounds, integrity_check), so this still
    fails when a run loses or duplicates rows, commits a rolled-back change, errors out (-bail) or skips
    statements (the unmarked line count changes).
    """
    if not nondet:
        return body
    return [l for l in body if ND_MARKER not in l]


def _schema(dump):
    return [l for l in dump if l.startswith(("CREATE ", "PRAGMA ", "BEGIN", "COMMIT"))]


def _assert_same(actual, expected, what):
    if actual != expected:
        import difflib
        diff = "\n".join(difflib.unified_diff(expected, actual, "expected", "actual", lineterm="", n=2))
        raise AssertionError(f"{what} differs:\n{diff[:20000]}")


if not LIB_SO.exists():
    if __name__ != "__main__":
        pytest.skip(f"{LIB_SO} is not built yet (run `make test`, which builds it first)", allow_module_level=True)


@pytest.mark.parametrize("sql_file", SQL_FILES, ids=[f.name for f in SQL_FILES])
def test_sql_file(sql_file, tmp_path):
    nondet = is_nondeterministic(sql_file)

    # 1. plain sqlite3, WAL, synchronous=FULL: the reference
    plain_db = tmp_path / "plain.db"
    _, plain_body, plain_dump, plain_facts = run_file(sql_file, plain_prelude(plain_db), "plain run")

    # 2. through the extension, one-node cluster
    db = tmp_path / "app.db"
    uri = repl_uri(db, port=free_port(), data=tmp_path / "raft")
    repl, body, dump, facts = run_file(sql_file, shell_prelude(uri), "replicated run", status_db=db)
    _assert_same(_comparable(body, nondet), _comparable(plain_body, nondet), "replicated output vs plain output")
    if nondet:
        # values differ; the shape of the content (schema, number of rows/statements) may not
        _assert_same(_schema(dump), _schema(plain_dump), "replicated .dump schema vs plain")
        assert len(dump) == len(plain_dump), f"replicated .dump has {len(dump)} lines, plain {len(plain_dump)}"
        _assert_same(facts[:4], plain_facts[:4], "replicated header facts vs plain (user_version..page_size)")
    else:
        _assert_same(dump, plain_dump, "replicated .dump vs plain .dump")
        _assert_same(facts, plain_facts, "replicated header facts vs plain")

    # 3. persistence: a new process, same URI (same node id, port and Raft data directory)
    p = run_checked(shell_prelude(uri) + EPILOGUE, "replicated reopen")
    _, dump2, facts2, check2 = split_run(p.stdout, "replicated reopen")
    _assert_same(dump2, dump, "reopened .dump vs .dump at the end of the replicated run")
    _assert_same(facts2, facts, "reopened header facts vs end of the replicated run")
    assert check2 == ["ok"], f"integrity_check after reopen: {check2}\nstderr:\n{p.stderr}"

    # 4. a plain reader on the files the node left behind (no node process is running now)
    p = run_checked(EPILOGUE, "plain -readonly open of the replicated database", args=("-readonly", str(db)))
    _, dump3, facts3, check3 = split_run(p.stdout, "plain -readonly open")
    assert check3 == ["ok"], f"plain read-only integrity_check of {db}: {check3}\nstderr:\n{p.stderr}"
    _assert_same(dump3, dump, "plain read-only .dump vs .dump of the replicated run")
    _assert_same(facts3, facts, "plain read-only header facts vs replicated run")


def _plain_only_main() -> int:
    """Validates the corpus against plain sqlite3 only: each file twice, deterministic, ending with ok."""
    import tempfile
    failures = 0
    for f in SQL_FILES:
        nondet = is_nondeterministic(f)
        try:
            runs = []
            for i in range(2):
                with tempfile.TemporaryDirectory() as d:
                    runs.append(run_file(f, plain_prelude(Path(d) / "plain.db"), f"plain run {i + 1}"))
            (_, b1, d1, f1), (_, b2, d2, f2) = runs
            _assert_same(_comparable(b2, nondet), _comparable(b1, nondet), "second plain run vs first")
            if not nondet:
                _assert_same(d2, d1, "second plain .dump vs first")
                _assert_same(f2, f1, "second plain header facts vs first")
            print(f"ok    {f.name} ({len(b1)} lines{', nondeterministic' if nondet else ''})")
        except AssertionError as e:
            failures += 1
            print(f"FAIL  {f.name}: {e}")
    print(f"{len(SQL_FILES) - failures}/{len(SQL_FILES)} files pass on plain sqlite3")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(_plain_only_main())
