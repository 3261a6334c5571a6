-- Indexes: unique, partial, expression, multi-column; the planner uses them and they stay consistent.
CREATE TABLE users(id INTEGER PRIMARY KEY, email TEXT, name TEXT, active INTEGER, score REAL);
CREATE UNIQUE INDEX users_email ON users(email);
CREATE INDEX users_active_name ON users(name) WHERE active = 1;
CREATE INDEX users_lower_name ON users(lower(name));
CREATE INDEX users_score_name ON users(score DESC, name);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
INSERT INTO users(email, name, active, score)
SELECT printf('user%04d@example.com', i), printf('Name%04d', (i * 7919) % 2000), i % 3 = 0, (i * 37) % 101 FROM n;
SELECT count(*) FROM users;
SELECT id, email FROM users WHERE email = 'user0777@example.com';
SELECT count(*) FROM users WHERE lower(name) BETWEEN 'name0100' AND 'name0199';
SELECT count(*) FROM users WHERE active = 1 AND name LIKE 'Name00%';
SELECT id, score, name FROM users ORDER BY score DESC, name LIMIT 5;
INSERT OR IGNORE INTO users(email, name, active, score) VALUES ('user0001@example.com', 'dup', 1, 0);
SELECT count(*) FROM users WHERE name = 'dup';
UPDATE users SET active = 1 - active WHERE id % 10 = 0;
DELETE FROM users WHERE id % 7 = 0;
SELECT count(*), sum(active) FROM users;
SELECT count(*) FROM users INDEXED BY users_active_name WHERE active = 1 AND name > 'Name1000';
SELECT count(*) FROM users WHERE active = 1 AND name > 'Name1000';
SELECT count(*) FROM users INDEXED BY users_lower_name WHERE lower(name) > 'name1500';
CREATE UNIQUE INDEX users_name_email ON users(name, email);
SELECT name, tbl_name FROM sqlite_schema WHERE type = 'index' ORDER BY name;
REINDEX users;
ANALYZE;
SELECT tbl, idx FROM sqlite_stat1 ORDER BY tbl, idx;
PRAGMA integrity_check;
