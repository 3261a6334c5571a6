"""A write-loop host for crash tests (run with an interpreter whose sqlite3 can load extensions).

Usage: writer.py LIB URI START COUNT [--big-every N] [--ckpt-every N]
Writes rows START..START+COUNT-1 into table `acked(id, pad)`, one autocommit transaction each (and,
every N rows, a larger multi-row transaction into `bulk`). After each COMMIT returns successfully it
prints `ack <id>` and flushes, so the parent knows exactly which commits were acknowledged.
Before each commit it prints `try <id>`. Errors are printed as `err <id> <code> <message>`.
"""
import sqlite3
import sys


def main():
    lib, uri, start, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    big_every = int(sys.argv[sys.argv.index("--big-every") + 1]) if "--big-every" in sys.argv else 0
    ckpt_every = int(sys.argv[sys.argv.index("--ckpt-every") + 1]) if "--ckpt-every" in sys.argv else 0
    boot = sqlite3.connect(":memory:")
    boot.enable_load_extension(True)
    boot.load_extension(lib)
    con = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
    con.execute("create table if not exists acked(id integer primary key, pad)")
    con.execute("create table if not exists bulk(id integer primary key, grp, pad)")
    print("ready", flush=True)
    for i in range(start, start + count):
        print(f"try {i}", flush=True)
        try:
            if big_every and i % big_every == 0:
                con.execute("begin")
                con.execute("insert into acked values(?, ?)", (i, "x" * 50))
                con.executemany("insert into bulk(grp, pad) values(?, randomblob(300))", [(i,)] * 400)
                con.execute("commit")
            else:
                con.execute("insert into acked values(?, ?)", (i, "x" * 50))
        except sqlite3.Error as e:
            code = getattr(e, "sqlite_errorcode", -1)
            print(f"err {i} {code} {e}", flush=True)
            if con.in_transaction:
                con.execute("rollback")
            continue
        print(f"ack {i}", flush=True)
        if ckpt_every and i % ckpt_every == 0:
            mode = "TRUNCATE" if (i // ckpt_every) % 2 else "PASSIVE"
            con.execute(f"pragma wal_checkpoint({mode})").fetchall()
    print("done", flush=True)


if __name__ == "__main__":
    main()
