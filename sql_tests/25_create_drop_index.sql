-- CREATE/DROP INDEX on a populated table, repeatedly; IF NOT EXISTS / IF EXISTS; index inside rolled back transaction.
CREATE TABLE m(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
INSERT INTO m SELECT i, (i * 31) % 500, printf('b%05d', (i * 17) % 2500), i / 7.0 FROM n;
CREATE INDEX m_a ON m(a);
CREATE INDEX IF NOT EXISTS m_a ON m(a);
CREATE INDEX m_b_desc ON m(b DESC);
CREATE UNIQUE INDEX m_b_unique ON m(b);
CREATE INDEX m_ac ON m(a, c) WHERE a > 250;
SELECT count(*) FROM m WHERE a = 42;
SELECT id, b FROM m WHERE b BETWEEN 'b01000' AND 'b01004' ORDER BY b;
SELECT count(*) FROM m WHERE a > 400 AND c < 100;
DROP INDEX m_a;
DROP INDEX IF EXISTS m_a;
SELECT count(*) FROM m WHERE a = 42;
BEGIN;
CREATE INDEX m_c ON m(c);
DROP INDEX m_b_desc;
ROLLBACK;
SELECT name FROM sqlite_schema WHERE type = 'index' ORDER BY name;
-- rebuild indexes a few times with data changes in between
CREATE INDEX m_a ON m(a);
UPDATE m SET a = a + 1000 WHERE id % 5 = 0;
DROP INDEX m_a;
DELETE FROM m WHERE id % 9 = 0;
CREATE INDEX m_a ON m(a);
CREATE INDEX m_expr ON m(a % 7, substr(b, -2));
SELECT count(*) FROM m WHERE a % 7 = 3 AND substr(b, -2) = '07';
SELECT count(*), sum(a) FROM m INDEXED BY m_a WHERE a >= 1000;
DROP INDEX m_expr;
DROP INDEX m_ac;
SELECT name FROM sqlite_schema WHERE type = 'index' ORDER BY name;
PRAGMA integrity_check;
