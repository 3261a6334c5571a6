-- UPSERT: ON CONFLICT DO UPDATE / DO NOTHING, excluded., WHERE on the update, multiple conflict targets.
CREATE TABLE counters(name TEXT PRIMARY KEY, hits INTEGER NOT NULL DEFAULT 0, last TEXT);
CREATE TABLE pairs(a INTEGER, b INTEGER, v TEXT, UNIQUE (a, b));
INSERT INTO counters(name, hits, last) VALUES ('home', 1, 'x') ON CONFLICT(name) DO UPDATE SET hits = hits + 1, last = excluded.last;
INSERT INTO counters(name, hits, last) VALUES ('home', 1, 'y') ON CONFLICT(name) DO UPDATE SET hits = hits + 1, last = excluded.last;
INSERT INTO counters(name, hits, last) VALUES ('about', 5, 'z') ON CONFLICT DO NOTHING;
INSERT INTO counters(name, hits, last) VALUES ('about', 50, 'w') ON CONFLICT DO NOTHING;
SELECT name, hits, last FROM counters ORDER BY name;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
INSERT INTO counters(name, hits, last) SELECT 'page' || (i % 17), 1, 'bulk' || i FROM n WHERE true
ON CONFLICT(name) DO UPDATE SET hits = hits + excluded.hits, last = max(last, excluded.last);
SELECT count(*), sum(hits) FROM counters;
SELECT name, hits, last FROM counters WHERE name IN ('page0', 'page16') ORDER BY name;
INSERT INTO counters(name, hits) VALUES ('home', 100) ON CONFLICT(name) DO UPDATE SET hits = excluded.hits WHERE excluded.hits > hits + 1000;
SELECT hits FROM counters WHERE name = 'home';
INSERT INTO pairs VALUES (1, 1, 'one'), (1, 2, 'two');
INSERT INTO pairs VALUES (1, 1, 'uno'), (2, 2, 'dos') ON CONFLICT(a, b) DO UPDATE SET v = v || '/' || excluded.v;
SELECT a, b, v FROM pairs ORDER BY a, b;
CREATE TABLE multi(id INTEGER PRIMARY KEY, code TEXT UNIQUE, n INTEGER);
INSERT INTO multi VALUES (1, 'a', 0), (2, 'b', 0);
INSERT INTO multi VALUES (1, 'z', 10) ON CONFLICT(id) DO UPDATE SET n = n + 1 ON CONFLICT(code) DO UPDATE SET n = n + 100;
INSERT INTO multi VALUES (9, 'b', 10) ON CONFLICT(id) DO UPDATE SET n = n + 1 ON CONFLICT(code) DO UPDATE SET n = n + 100;
INSERT INTO multi VALUES (3, 'c', 7) ON CONFLICT(id) DO UPDATE SET n = n + 1 ON CONFLICT(code) DO UPDATE SET n = n + 100;
SELECT id, code, n FROM multi ORDER BY id;
PRAGMA integrity_check;
