-- Large transactions that spill to the WAL and are then rolled back (wholly, or to a savepoint):
-- the spilled, uncommitted frames must never become visible.
PRAGMA cache_size = 10;
CREATE TABLE base(id INTEGER PRIMARY KEY, v TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
INSERT INTO base SELECT i, printf('base-%05d-', i) || hex(zeroblob(80)) FROM n;
SELECT count(*), sum(length(v)) FROM base;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
INSERT INTO base(v) SELECT printf('temp-%05d-', i) || hex(zeroblob(100)) FROM n;
UPDATE base SET v = 'overwritten' WHERE id <= 1000;
DELETE FROM base WHERE id % 2 = 0;
SELECT count(*) FROM base;
ROLLBACK;
SELECT count(*), sum(length(v)), min(v), max(substr(v, 1, 10)) FROM base;
BEGIN;
INSERT INTO base(v) VALUES ('kept-1');
SAVEPOINT sp;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
INSERT INTO base(v) SELECT printf('gone-%05d-', i) || hex(zeroblob(100)) FROM n;
UPDATE base SET v = upper(v);
ROLLBACK TO sp;
INSERT INTO base(v) VALUES ('kept-2');
RELEASE sp;
COMMIT;
SELECT count(*), sum(length(v)) FROM base;
SELECT id, substr(v, 1, 16) FROM base WHERE id > 995 ORDER BY id;
SELECT count(*) FROM base WHERE v LIKE 'gone%' OR v LIKE 'temp%' OR v = 'overwritten' OR v GLOB 'BASE*';
-- a rolled back schema change inside a spilled transaction
BEGIN;
CREATE TABLE doomed(x);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
INSERT INTO doomed SELECT hex(zeroblob(200)) FROM n;
DROP TABLE base;
ROLLBACK;
SELECT name FROM sqlite_schema ORDER BY name;
SELECT count(*) FROM base;
PRAGMA integrity_check;
