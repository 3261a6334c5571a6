-- A write transaction much larger than the page cache: with cache_size=10 the pager spills dirty pages
-- into the WAL before COMMIT (uncommitted frames), rewrites some of them, and only then commits.
PRAGMA cache_size = 10;
CREATE TABLE spill(id INTEGER PRIMARY KEY, k TEXT, payload TEXT);
CREATE INDEX spill_k ON spill(k);
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000)
INSERT INTO spill SELECT i, printf('k%07d', (i * 7717) % 4001), printf('%05d:', i) || substr(replace(hex(zeroblob(200)), '00', char(97 + i % 26)), 1, 194) FROM n;
-- touch pages that were already spilled, so frames of this transaction are written again
UPDATE spill SET payload = upper(payload) WHERE id % 97 = 0;
DELETE FROM spill WHERE id % 113 = 0;
SELECT count(*), sum(length(payload)) FROM spill;
COMMIT;
SELECT count(*), sum(length(payload)), min(k), max(k) FROM spill;
SELECT id, k, substr(payload, 1, 12), length(payload) FROM spill WHERE id IN (1, 97, 2000, 3999, 4000) ORDER BY id;
SELECT count(*) FROM spill WHERE payload GLOB '*[A-Z]*';
-- a second large transaction: rewrite every row
BEGIN;
UPDATE spill SET payload = substr(payload, 1, 6) || replace(substr(payload, 7), substr(payload, 7, 1), '#');
INSERT INTO spill(k, payload) SELECT 'copy-' || k, payload FROM spill WHERE id <= 1000;
COMMIT;
SELECT count(*), sum(length(payload)), count(DISTINCT substr(payload, 7, 1)) FROM spill;
SELECT count(*) FROM spill WHERE k LIKE 'copy-%';
PRAGMA cache_size = 2000;
SELECT count(*) FROM spill INDEXED BY spill_k WHERE k > 'k0002000';
PRAGMA integrity_check;
