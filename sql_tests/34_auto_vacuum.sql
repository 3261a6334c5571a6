-- auto_vacuum: switch to INCREMENTAL (needs a VACUUM), free pages, incremental_vacuum shrinks the file;
-- then FULL auto_vacuum shrinks at every commit. The file truncation must survive replication and restart.
PRAGMA auto_vacuum = INCREMENTAL;
VACUUM;
PRAGMA auto_vacuum;
CREATE TABLE av(id INTEGER PRIMARY KEY, data BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
INSERT INTO av SELECT i, zeroblob(2000 + i) FROM n;
CREATE TABLE pc(step TEXT PRIMARY KEY, pages INTEGER, free INTEGER);
INSERT INTO pc SELECT 'full', (SELECT page_count FROM pragma_page_count), (SELECT freelist_count FROM pragma_freelist_count);
DELETE FROM av WHERE id > 100;
INSERT INTO pc SELECT 'deleted', (SELECT page_count FROM pragma_page_count), (SELECT freelist_count FROM pragma_freelist_count);
SELECT (SELECT free FROM pc WHERE step = 'deleted') > 100;
PRAGMA incremental_vacuum(50);
INSERT INTO pc SELECT 'inc50', (SELECT page_count FROM pragma_page_count), (SELECT freelist_count FROM pragma_freelist_count);
SELECT (SELECT pages FROM pc WHERE step = 'deleted') - (SELECT pages FROM pc WHERE step = 'inc50');
PRAGMA incremental_vacuum;
SELECT freelist_count FROM pragma_freelist_count;
SELECT (SELECT page_count FROM pragma_page_count) < (SELECT pages FROM pc WHERE step = 'full');
SELECT count(*), sum(length(data)) FROM av;
PRAGMA auto_vacuum = FULL;
VACUUM;
PRAGMA auto_vacuum;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
INSERT INTO av(data) SELECT zeroblob(3000) FROM n;
DELETE FROM av WHERE id > 50;
SELECT freelist_count FROM pragma_freelist_count;
SELECT count(*), sum(length(data)) FROM av;
DROP TABLE pc;
PRAGMA integrity_check;
