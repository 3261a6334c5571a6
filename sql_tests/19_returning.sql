-- RETURNING on INSERT, UPDATE, DELETE and UPSERT, inside and outside explicit transactions.
CREATE TABLE tasks(id INTEGER PRIMARY KEY, title TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0, prio INTEGER);
INSERT INTO tasks(title, prio) VALUES ('write', 2), ('test', 1), ('ship', 3) RETURNING id, title, done;
UPDATE tasks SET done = 1 WHERE prio <= 2 RETURNING id, title, done * 10;
BEGIN;
INSERT INTO tasks(title, prio) VALUES ('celebrate', 9) RETURNING id, upper(title);
DELETE FROM tasks WHERE done = 1 RETURNING title;
COMMIT;
SELECT id, title, done, prio FROM tasks ORDER BY id;
CREATE TABLE tags(name TEXT PRIMARY KEY, uses INTEGER);
INSERT INTO tags VALUES ('x', 1) ON CONFLICT(name) DO UPDATE SET uses = uses + 1 RETURNING name, uses;
INSERT INTO tags VALUES ('x', 1) ON CONFLICT(name) DO UPDATE SET uses = uses + 1 RETURNING name, uses;
BEGIN;
UPDATE tasks SET prio = prio * 10 RETURNING id, prio;
ROLLBACK;
SELECT id, prio FROM tasks ORDER BY id;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5)
INSERT INTO tasks(title, prio) SELECT 'gen' || i, i FROM n WHERE true RETURNING title, prio;
DELETE FROM tasks WHERE prio % 2 = 0 RETURNING title;
SELECT count(*) FROM tasks;
PRAGMA integrity_check;
