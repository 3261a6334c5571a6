-- nondeterministic
-- datetime('now') and friends: the stored values differ between runs (printed only with the ~nd~ marker);
-- the relations between them are deterministic.
CREATE TABLE stamps(id INTEGER PRIMARY KEY, at TEXT NOT NULL DEFAULT (datetime('now')), jd REAL DEFAULT (julianday('now')), unix INTEGER DEFAULT (unixepoch()));
INSERT INTO stamps(id) VALUES (1);
INSERT INTO stamps(id) VALUES (2);
WITH RECURSIVE n(i) AS (SELECT 3 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
INSERT INTO stamps(id) SELECT i FROM n;
SELECT count(*) FROM stamps;
SELECT count(*) FROM stamps WHERE at <= datetime('now') AND at > datetime('now', '-1 day');
SELECT count(*) FROM stamps WHERE abs(unixepoch(at) - unix) <= 1;
SELECT count(*) FROM stamps WHERE abs(jd - julianday(at)) < 1.0 / 86400 * 2;
SELECT count(*) FROM stamps WHERE at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]';
SELECT '~nd~', min(at), max(at) FROM stamps;
SELECT (SELECT at FROM stamps WHERE id = 1) <= (SELECT at FROM stamps WHERE id = 2);
UPDATE stamps SET at = datetime(at, '+1 hour') WHERE id % 2 = 0;
SELECT count(*) FROM stamps WHERE id % 2 = 0 AND abs(unixepoch(at) - unix - 3600) <= 1;
SELECT date('now') = date(datetime('now'));
SELECT strftime('%s', 'now') - unixepoch() BETWEEN -1 AND 1;
PRAGMA integrity_check;
