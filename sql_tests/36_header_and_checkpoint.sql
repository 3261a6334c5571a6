-- Writes that touch only the database header (user_version, application_id), and explicit checkpoints
-- between writes (their result rows depend on WAL bookkeeping, so the shell output is discarded).
PRAGMA user_version;
PRAGMA user_version = 42;
PRAGMA application_id = 1936482662;
PRAGMA user_version;
PRAGMA application_id;
CREATE TABLE c(id INTEGER PRIMARY KEY, v TEXT);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
INSERT INTO c SELECT i, hex(zeroblob(i % 200)) FROM n;
.output /dev/null
PRAGMA wal_checkpoint(TRUNCATE);
.output
SELECT count(*), sum(length(v)) FROM c;
UPDATE c SET v = 'x' WHERE id % 2 = 0;
PRAGMA user_version = 43;
.output /dev/null
PRAGMA wal_checkpoint(PASSIVE);
.output
BEGIN;
PRAGMA user_version = 44;
DELETE FROM c WHERE id > 400;
ROLLBACK;
PRAGMA user_version;
SELECT count(*), sum(length(v)) FROM c;
.output /dev/null
PRAGMA wal_checkpoint(FULL);
PRAGMA wal_checkpoint(RESTART);
.output
BEGIN;
PRAGMA user_version = 45;
INSERT INTO c(v) VALUES ('after checkpoints');
COMMIT;
PRAGMA user_version;
SELECT id, v FROM c WHERE id > 500;
SELECT data_version > 0 FROM pragma_data_version;
PRAGMA integrity_check;
