-- STRICT tables: declared types enforced, ANY column keeps values as given, lossless conversions accepted.
CREATE TABLE s(id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, a ANY) STRICT;
INSERT INTO s VALUES (1, 10, 1.5, 'x', x'00', 1);
INSERT INTO s VALUES (2, '20', 2, 'y', x'01', '1');
INSERT INTO s VALUES (3, NULL, '3.25', 'z', NULL, 1.0);
INSERT INTO s VALUES (4, 4, 4, 'w', x'ff', x'abcd');
SELECT id, typeof(i), i, typeof(r), r, typeof(t), typeof(b), typeof(a), quote(a) FROM s ORDER BY id;
-- (values that cannot be converted are refused with an error; the corpus runs with -bail, so none here)
INSERT INTO s SELECT id + 10, i * 2, r / 2, t || t, CAST(b || b AS BLOB), a FROM s;
SELECT count(*) FROM s;
CREATE TABLE sw(k TEXT PRIMARY KEY, v INTEGER NOT NULL) STRICT, WITHOUT ROWID;
INSERT INTO sw VALUES ('a', 1), ('b', '2'), ('c', 3.0);
SELECT k, v, typeof(v) FROM sw ORDER BY k;
UPDATE sw SET v = v * 2;
UPDATE sw SET v = '100' WHERE k = 'a';
SELECT k, v FROM sw ORDER BY k;
SELECT name, strict, wr FROM pragma_table_list WHERE schema = 'main' AND name IN ('s', 'sw') ORDER BY name;
PRAGMA integrity_check;
