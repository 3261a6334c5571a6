-- Basic DDL and DML: create, insert, update, delete, select.
CREATE TABLE people(id INTEGER PRIMARY KEY, name TEXT NOT NULL, age INTEGER, email TEXT);
INSERT INTO people(name, age, email) VALUES ('alice', 30, 'alice@example.com');
INSERT INTO people(name, age, email) VALUES ('bob', 25, 'bob@example.com'), ('carol', 41, NULL), ('dave', 19, 'dave@example.com');
SELECT id, name, age, coalesce(email, '-') FROM people ORDER BY id;
UPDATE people SET age = age + 1 WHERE name IN ('alice', 'carol');
DELETE FROM people WHERE age < 20;
SELECT id, name, age FROM people ORDER BY id;
SELECT count(*), sum(age), min(name), max(name) FROM people;
CREATE TABLE kv(k TEXT PRIMARY KEY, v);
INSERT INTO kv VALUES ('a', 1), ('b', 2.5), ('c', 'three'), ('d', x'0102'), ('e', NULL);
SELECT k, typeof(v), quote(v) FROM kv ORDER BY k;
UPDATE kv SET v = v || '!' WHERE typeof(v) = 'text';
REPLACE INTO kv VALUES ('a', 100);
INSERT OR IGNORE INTO kv VALUES ('b', 999);
SELECT k, quote(v) FROM kv ORDER BY k;
SELECT changes(), total_changes() > 0;
SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name;
PRAGMA integrity_check;
