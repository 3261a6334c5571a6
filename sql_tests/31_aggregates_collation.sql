-- Aggregates, GROUP BY/HAVING, DISTINCT, collations (NOCASE, RTRIM, BINARY), LIKE/GLOB, compound selects.
CREATE TABLE w(id INTEGER PRIMARY KEY, word TEXT COLLATE NOCASE, tag TEXT COLLATE RTRIM, n INTEGER);
INSERT INTO w(word, tag, n) VALUES ('Apple', 'x', 1), ('apple', 'x  ', 2), ('APPLE', 'y', 3), ('banana', 'y ', 4),
  ('Banana', 'z', 5), ('cherry', 'x', 6), ('Cherry', NULL, 7), ('date', 'z   ', NULL), ('Éclair', 'y', 8), ('eclair', 'y', 9);
SELECT word, count(*), sum(n), group_concat(id, '+') FROM w GROUP BY word ORDER BY word;
SELECT tag, count(*) FROM w GROUP BY tag ORDER BY tag;
SELECT count(DISTINCT word), count(DISTINCT word COLLATE BINARY), count(DISTINCT tag), count(tag), count(*) FROM w;
SELECT word FROM w WHERE word = 'APPLE' ORDER BY id;
SELECT word FROM w WHERE word = 'APPLE' COLLATE BINARY ORDER BY id;
SELECT word FROM w ORDER BY word COLLATE BINARY, id;
SELECT word FROM w WHERE word LIKE 'ch%' ORDER BY id;
SELECT word FROM w WHERE word GLOB '[A-C]*' ORDER BY id;
SELECT tag, sum(n) FROM w GROUP BY tag HAVING sum(n) > 10 ORDER BY tag;
SELECT avg(n), total(n), min(n), max(n), sum(n) FILTER (WHERE n % 2 = 0) FROM w;
SELECT word FROM w WHERE n < 3 UNION SELECT word FROM w WHERE n > 7 ORDER BY 1;
SELECT lower(word) FROM w WHERE n < 5 INTERSECT SELECT lower(word) FROM w WHERE n > 2 ORDER BY 1;
SELECT lower(word) FROM w EXCEPT SELECT lower(word) FROM w WHERE n IS NULL OR n > 5 ORDER BY 1;
SELECT upper('éclair'), lower('ÉCLAIR'), length('Éclair'), length(CAST('Éclair' AS BLOB)), unicode('É'), char(201, 99);
SELECT substr('hello world', -5), replace('a.b.c', '.', '::'), trim('  x  '), ltrim('xxyx', 'x'), instr('abcabc', 'ca'), printf('%Q', 'it''s');
CREATE TABLE g AS SELECT word COLLATE NOCASE AS k, sum(n) AS s FROM w GROUP BY 1;
SELECT k, s FROM g ORDER BY k;
PRAGMA integrity_check;
