-- nondeterministic
-- random() and randomblob(): values differ between runs, so lines with values carry the marker ~nd~;
-- every other line states a fact that must hold whatever the random values were.
CREATE TABLE r(id INTEGER PRIMARY KEY, v INTEGER NOT NULL, b BLOB NOT NULL, s TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
INSERT INTO r(v, b, s) SELECT random(), randomblob(abs(random()) % 300), hex(randomblob(16)) FROM n;
INSERT INTO r(v, b, s) VALUES (random(), randomblob(30000), 'big');
CREATE TABLE totals(n INTEGER, sum_v_mod INTEGER, sum_len INTEGER);
INSERT INTO totals SELECT count(*), sum(v % 1000), sum(length(b)) FROM r;
SELECT count(*) FROM r;
SELECT count(*) = (SELECT n FROM totals) FROM r;
SELECT sum(v % 1000) = (SELECT sum_v_mod FROM totals), sum(length(b)) = (SELECT sum_len FROM totals) FROM r;
SELECT '~nd~', sum(v % 1000), sum(length(b)) FROM r;
SELECT length(b) FROM r WHERE s = 'big';
SELECT count(*) FROM r WHERE length(s) = 32 OR s = 'big';
CREATE INDEX r_v ON r(v);
DELETE FROM r WHERE id IN (SELECT id FROM r ORDER BY random() LIMIT 500);
SELECT count(*) FROM r;
UPDATE r SET s = lower(s) WHERE id IN (SELECT id FROM r WHERE s != 'big' ORDER BY v LIMIT 100);
SELECT count(*) FROM r WHERE s = lower(s) AND s != 'big';
SELECT '~nd~', min(v), max(v) FROM r;
SELECT count(*) FROM (SELECT v FROM r ORDER BY v) WHERE v IS NOT NULL;
PRAGMA integrity_check;
