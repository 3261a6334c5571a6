-- Values larger than a page: overflow chains for blobs and text, grown, shrunk, deleted.
-- (SQLite 3.40 has no unhex(); deterministic non-zero blobs are CAST(text AS BLOB).)
CREATE TABLE big(id INTEGER PRIMARY KEY, b BLOB, t TEXT);
INSERT INTO big VALUES (1, zeroblob(20000), NULL);
INSERT INTO big VALUES (2, CAST(replace(hex(zeroblob(10000)), '00', 'ab') AS BLOB), NULL);
INSERT INTO big VALUES (3, NULL, replace(hex(zeroblob(50000)), '00', 'xy'));
INSERT INTO big VALUES (4, CAST(replace(hex(zeroblob(3000)), '00', '0123456789abcdef') AS BLOB), printf('%.*c', 9000, 'q'));
SELECT id, typeof(b), length(b), length(t), hex(substr(b, 1, 4)), hex(substr(b, -4)), substr(t, 1, 6), substr(t, -6) FROM big ORDER BY id;
SELECT id, length(hex(b)), instr(b, CAST('ba' AS BLOB)), instr(t, 'yx') FROM big ORDER BY id;
UPDATE big SET b = b || b || b WHERE id = 2;
UPDATE big SET t = substr(t, 1, 100) WHERE id = 3;
UPDATE big SET b = zeroblob(200000) WHERE id = 1;
SELECT id, length(b), length(t) FROM big ORDER BY id;
SELECT hex(substr(b, 29999, 4)) FROM big WHERE id = 2;
DELETE FROM big WHERE id = 4;
INSERT INTO big(id, b) SELECT 10 + id, b FROM big WHERE b IS NOT NULL;
SELECT id, length(b), hex(substr(b, 100, 2)) FROM big ORDER BY id;
SELECT sum(length(b)), count(*) FROM big;
CREATE TABLE chunks(id INTEGER PRIMARY KEY, data BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40)
INSERT INTO chunks SELECT i, CAST(replace(hex(zeroblob(4000 + i * 97)), '00', char(64 + i)) AS BLOB) FROM n;
SELECT count(*), sum(length(data)), min(length(data)), max(length(data)) FROM chunks;
SELECT id, hex(substr(data, 1, 2)), hex(substr(data, length(data) - 1, 2)) FROM chunks WHERE id IN (1, 17, 40) ORDER BY id;
SELECT count(*) FROM chunks WHERE data = CAST(replace(hex(zeroblob(length(data))), '00', char(64 + id)) AS BLOB);
UPDATE chunks SET data = substr(data, 1, 10) WHERE id % 2 = 0;
SELECT count(*), sum(length(data)) FROM chunks;
PRAGMA integrity_check;
