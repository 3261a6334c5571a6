-- Common table expressions: plain, chained, recursive (series, tree walk, graph with cycle guard), CTE in DML.
CREATE TABLE emp(id INTEGER PRIMARY KEY, name TEXT, boss INTEGER REFERENCES emp(id), salary INTEGER);
INSERT INTO emp VALUES (1, 'root', NULL, 300), (2, 'ana', 1, 200), (3, 'bo', 1, 190), (4, 'cid', 2, 120),
  (5, 'dot', 2, 110), (6, 'eli', 4, 90), (7, 'fin', 3, 100), (8, 'gil', 7, 80);
WITH RECURSIVE chain(id, name, depth, path) AS (
  SELECT id, name, 0, name FROM emp WHERE boss IS NULL
  UNION ALL
  SELECT e.id, e.name, c.depth + 1, c.path || '/' || e.name FROM emp e JOIN chain c ON e.boss = c.id
)
SELECT id, depth, path FROM chain ORDER BY path;
WITH RECURSIVE under(id) AS (SELECT 2 UNION SELECT e.id FROM emp e JOIN under u ON e.boss = u.id)
SELECT count(*), sum(salary) FROM emp WHERE id IN under;
WITH dept_total AS (SELECT boss, sum(salary) AS s FROM emp WHERE boss IS NOT NULL GROUP BY boss),
     ranked AS (SELECT boss, s FROM dept_total WHERE s > 100)
SELECT e.name, r.s FROM ranked r JOIN emp e ON e.id = r.boss ORDER BY r.s DESC, e.name;
WITH RECURSIVE fib(n, a, b) AS (SELECT 1, 0, 1 UNION ALL SELECT n + 1, b, a + b FROM fib WHERE n < 60)
SELECT n, a FROM fib WHERE n IN (1, 2, 10, 30, 60) ORDER BY n;
CREATE TABLE link(src INTEGER, dst INTEGER);
INSERT INTO link VALUES (1, 2), (2, 3), (3, 1), (3, 4), (4, 5), (5, 4), (6, 7);
WITH RECURSIVE reach(node) AS (SELECT 1 UNION SELECT l.dst FROM link l JOIN reach r ON l.src = r.node)
SELECT group_concat(node, ',') FROM (SELECT node FROM reach ORDER BY node);
CREATE TABLE series(n INTEGER PRIMARY KEY, sq INTEGER);
WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 1000)
INSERT INTO series SELECT n, n * n FROM s;
WITH odd AS (SELECT n FROM series WHERE n % 2 = 1)
DELETE FROM series WHERE n IN odd AND n > 10;
WITH big AS MATERIALIZED (SELECT n FROM series WHERE n > 900)
UPDATE series SET sq = -sq WHERE n IN big;
SELECT count(*), sum(sq) FROM series;
WITH RECURSIVE mandel(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM mandel WHERE x < 9)
SELECT group_concat(substr('.:-=+*#%@', x + 1, 1), '') FROM mandel;
PRAGMA integrity_check;
