-- VACUUM after heavy churn: content unchanged, file compacted, schema and indexes intact.
CREATE TABLE t(id INTEGER PRIMARY KEY, a TEXT, b BLOB);
CREATE INDEX t_a ON t(a);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
INSERT INTO t SELECT i, printf('row-%05d-%s', i, substr(hex(zeroblob(60)), 1, 60 + i % 40)), zeroblob(i % 700) FROM n;
DELETE FROM t WHERE id % 3 != 0;
SELECT freelist_count > 0 FROM pragma_freelist_count;
SELECT count(*), sum(length(a)), sum(length(b)) FROM t;
CREATE TABLE pc(before INTEGER);
INSERT INTO pc SELECT page_count FROM pragma_page_count;
VACUUM;
SELECT (SELECT page_count FROM pragma_page_count) < before FROM pc;
SELECT freelist_count FROM pragma_freelist_count;
SELECT count(*), sum(length(a)), sum(length(b)) FROM t;
SELECT id, a FROM t WHERE a > 'row-02990' ORDER BY a;
INSERT INTO t(a, b) VALUES ('after-vacuum', x'00ff');
SELECT id, a, hex(b) FROM t WHERE a = 'after-vacuum';
-- a second VACUUM on an already compact database, then more writes
VACUUM;
UPDATE t SET a = upper(a) WHERE id % 300 = 0;
SELECT id, a FROM t WHERE id % 300 = 0 ORDER BY id;
DROP TABLE pc;
VACUUM;
SELECT name FROM sqlite_schema ORDER BY name;
SELECT count(*) FROM t;
PRAGMA integrity_check;
