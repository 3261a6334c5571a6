-- sqlite-replicated from the sqlite3 shell: a one-node cluster on 127.0.0.1:7001.
-- Run from the repository root:   sqlite3 -batch < examples/shell/demo.sql
-- (see README.md in this folder for a three-node variant and for cleaning up)
.bail on

-- Load the extension into the shell's default in-memory connection. This registers the
-- "replicated" VFS for the whole process; the init returns SQLITE_OK_LOAD_PERMANENTLY, so the VFS
-- stays registered when .open below closes that connection. Loading again is harmless.
.load ./target/release/libreplicated

-- Open (or create) a replicated database. The open returns at once; the node elects itself in the
-- background and the first write waits for that (up to timeout_ms, 5000 by default).
-- The Raft log lives in /tmp/replicated-demo.db-raft/ (override with data=DIR).
.open 'file:/tmp/replicated-demo.db?vfs=replicated&node=1&peers=1@127.0.0.1:7001&secret=demo-secret-change-me'

-- Every committed write transaction is replicated through Raft before it is reported committed.
CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT NOT NULL, at TEXT DEFAULT (datetime('now')));
BEGIN;
INSERT INTO notes(body) VALUES ('hello');
INSERT INTO notes(body) VALUES ('from the sqlite3 shell');
COMMIT;
INSERT INTO notes(body) VALUES ('autocommit works too');

.mode box
SELECT id, body FROM notes ORDER BY id;

.mode list
-- JSON: node_id, role, term, leader_id, leader_addr, commit_index, applied_index, members, db
SELECT replicated_status();
SELECT 'leader: ' || coalesce(replicated_leader(), '(none yet)');
