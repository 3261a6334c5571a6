-- Mass DELETE then inserts: the pages freed by the delete go on the freelist and are reused by later inserts.
CREATE TABLE churn(id INTEGER PRIMARY KEY, data TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
INSERT INTO churn SELECT i, printf('%06d', i) || hex(zeroblob(150)) FROM n;
CREATE TABLE pages(step TEXT, page_count INTEGER, freelist INTEGER);
INSERT INTO pages SELECT 'full', (SELECT page_count FROM pragma_page_count), (SELECT freelist_count FROM pragma_freelist_count);
DELETE FROM churn WHERE id > 300;
INSERT INTO pages SELECT 'deleted', (SELECT page_count FROM pragma_page_count), (SELECT freelist_count FROM pragma_freelist_count);
SELECT count(*) FROM churn;
SELECT (SELECT freelist FROM pages WHERE step = 'deleted') > (SELECT freelist FROM pages WHERE step = 'full');
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
INSERT INTO churn(data) SELECT 'new' || printf('%06d', i) || hex(zeroblob(150)) FROM n;
INSERT INTO pages SELECT 'refilled', (SELECT page_count FROM pragma_page_count), (SELECT freelist_count FROM pragma_freelist_count);
-- the refill fit in the freed pages: the file did not grow, the freelist shrank
SELECT (SELECT page_count FROM pages WHERE step = 'refilled') <= (SELECT page_count FROM pages WHERE step = 'full');
SELECT (SELECT freelist FROM pages WHERE step = 'refilled') < (SELECT freelist FROM pages WHERE step = 'deleted');
SELECT count(*), min(id), max(id), sum(length(data)) FROM churn;
SELECT id, substr(data, 1, 12) FROM churn WHERE id IN (1, 300, 301, 2300) ORDER BY id;
-- delete everything, then a few rows; repeat in one transaction
BEGIN;
DELETE FROM churn;
INSERT INTO churn(data) VALUES ('only-1'), ('only-2');
DELETE FROM churn WHERE data = 'only-1';
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
INSERT INTO churn(data) SELECT 'again' || i || hex(zeroblob(300)) FROM n;
COMMIT;
SELECT count(*), sum(length(data)) FROM churn;
DROP TABLE pages;
PRAGMA integrity_check;
