-- Single transactions carrying megabytes: a 1.5 MB blob, a 1 MB text, then both replaced.
CREATE TABLE huge(id INTEGER PRIMARY KEY, b BLOB, t TEXT);
INSERT INTO huge(id, b) VALUES (1, zeroblob(1500000));
INSERT INTO huge(id, t) VALUES (2, replace(hex(zeroblob(500000)), '00', 'ok'));
SELECT id, length(b), length(t), substr(t, 499999, 4) FROM huge ORDER BY id;
BEGIN;
UPDATE huge SET b = CAST(replace(hex(zeroblob(600000)), '00', 'Z') AS BLOB) WHERE id = 1;
UPDATE huge SET t = substr(t, 1, 10) WHERE id = 2;
INSERT INTO huge(id, b) SELECT 3, b FROM huge WHERE id = 1;
COMMIT;
SELECT id, length(b), hex(substr(b, 599999, 2)), length(t) FROM huge ORDER BY id;
SELECT count(*) FROM huge WHERE b = (SELECT b FROM huge WHERE id = 3);
DELETE FROM huge WHERE id = 1;
SELECT sum(length(b)) + sum(length(t)) FROM huge;
PRAGMA integrity_check;
