-- WITHOUT ROWID tables: composite keys, text keys, updates of key columns, large rows.
CREATE TABLE edges(src TEXT, dst TEXT, weight INTEGER, PRIMARY KEY (src, dst)) WITHOUT ROWID;
CREATE TABLE words(word TEXT PRIMARY KEY COLLATE NOCASE, freq INTEGER NOT NULL) WITHOUT ROWID;
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 999)
INSERT INTO edges SELECT printf('n%03d', i % 100), printf('n%03d', (i * 13) % 100 + 100 * (i / 100)), i FROM n;
SELECT count(*), sum(weight) FROM edges;
SELECT src, dst, weight FROM edges WHERE src = 'n042' ORDER BY dst;
UPDATE edges SET dst = 'moved-' || dst WHERE src = 'n001';
DELETE FROM edges WHERE weight % 5 = 0;
SELECT count(*), min(dst), max(dst) FROM edges;
INSERT INTO words VALUES ('apple', 3), ('Banana', 2), ('cherry', 7);
INSERT INTO words VALUES ('APPLE', 1) ON CONFLICT(word) DO UPDATE SET freq = freq + excluded.freq;
SELECT word, freq FROM words ORDER BY word;
CREATE TABLE wide(k INTEGER PRIMARY KEY, payload TEXT) WITHOUT ROWID;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
INSERT INTO wide SELECT i, replace(hex(zeroblob(1500 + i * 10)), '00', printf('%02d', i)) FROM n;
SELECT count(*), sum(length(payload)) FROM wide;
SELECT k, length(payload), substr(payload, 1, 12) FROM wide WHERE k IN (1, 25, 50) ORDER BY k;
CREATE INDEX edges_weight ON edges(weight);
SELECT src, dst FROM edges WHERE weight BETWEEN 500 AND 510 ORDER BY weight;
PRAGMA integrity_check;
