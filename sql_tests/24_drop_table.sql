-- DROP TABLE: with indexes, triggers and overflow pages; IF EXISTS; drop and recreate under the same name.
CREATE TABLE victim(id INTEGER PRIMARY KEY, a TEXT, b BLOB);
CREATE INDEX victim_a ON victim(a);
CREATE TABLE keeper(id INTEGER PRIMARY KEY, note TEXT);
CREATE TRIGGER victim_ins AFTER INSERT ON victim BEGIN INSERT INTO keeper(note) VALUES ('ins ' || NEW.id); END;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
INSERT INTO victim SELECT i, 'a' || i, zeroblob(i * 20) FROM n;
SELECT count(*) FROM victim;
SELECT count(*) FROM keeper;
DROP TABLE victim;
SELECT name FROM sqlite_schema ORDER BY name;
DROP TABLE IF EXISTS victim;
DROP TABLE IF EXISTS never_existed;
CREATE TABLE victim(x TEXT PRIMARY KEY, y INTEGER) WITHOUT ROWID;
INSERT INTO victim VALUES ('reborn', 1);
SELECT x, y FROM victim;
-- drop inside a rolled back transaction: the table survives
BEGIN;
DROP TABLE keeper;
ROLLBACK;
SELECT count(*) FROM keeper;
-- drop inside a committed transaction together with other writes
BEGIN;
CREATE TABLE short_lived(v);
INSERT INTO short_lived VALUES (1), (2);
INSERT INTO keeper(note) SELECT 'moved ' || v FROM short_lived;
DROP TABLE short_lived;
COMMIT;
SELECT note FROM keeper WHERE note LIKE 'moved%' ORDER BY note;
SELECT name FROM sqlite_schema ORDER BY name;
SELECT freelist_count > 0 FROM pragma_freelist_count;
PRAGMA integrity_check;
