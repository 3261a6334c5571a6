-- A session that never writes: the replicated database stays empty and must still open, dump and check.
SELECT 1 + 1;
SELECT count(*) FROM sqlite_schema;
BEGIN;
SELECT 'in a read transaction';
COMMIT;
PRAGMA integrity_check;
