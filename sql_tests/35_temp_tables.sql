-- TEMP tables, indexes, triggers and views live outside the replicated database but are used to
-- compute what is written to it; temp_store=FILE forces real temporary files.
PRAGMA temp_store = FILE;
CREATE TABLE main_data(id INTEGER PRIMARY KEY, v INTEGER);
CREATE TEMP TABLE staging(id INTEGER PRIMARY KEY, v INTEGER, note TEXT);
CREATE INDEX temp.staging_v ON staging(v);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
INSERT INTO staging SELECT i, (i * 7) % 1000, hex(zeroblob(100)) FROM n;
CREATE TEMP TRIGGER main_ins AFTER INSERT ON main_data BEGIN UPDATE staging SET note = 'copied' WHERE id = NEW.id; END;
BEGIN;
INSERT INTO main_data SELECT id, v FROM staging WHERE v % 3 = 0;
DELETE FROM staging WHERE note = 'copied';
COMMIT;
SELECT count(*), sum(v) FROM main_data;
SELECT count(*) FROM staging;
SELECT count(*) FROM temp.sqlite_schema;
SELECT name FROM sqlite_schema ORDER BY name;
-- a large sort through temp files
PRAGMA cache_size = 10;
SELECT count(*), sum(x) FROM (SELECT DISTINCT v * 1000 + id % 10 AS x FROM staging ORDER BY note, x);
PRAGMA cache_size = 2000;
DROP TABLE staging;
CREATE TEMP TABLE again AS SELECT * FROM main_data WHERE id < 100;
UPDATE main_data SET v = -v WHERE id IN (SELECT id FROM again);
SELECT count(*), sum(v) FROM main_data;
PRAGMA integrity_check;
