-- Foreign keys with PRAGMA foreign_keys=ON: ON DELETE CASCADE, SET NULL, ON UPDATE CASCADE, deferred constraints.
PRAGMA foreign_keys = ON;
PRAGMA foreign_keys;
CREATE TABLE author(id INTEGER PRIMARY KEY, name TEXT UNIQUE);
CREATE TABLE book(id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL REFERENCES author(id) ON DELETE CASCADE ON UPDATE CASCADE, title TEXT);
CREATE TABLE chapter(id INTEGER PRIMARY KEY, book_id INTEGER REFERENCES book(id) ON DELETE CASCADE, n INTEGER, body TEXT);
CREATE TABLE review(id INTEGER PRIMARY KEY, book_id INTEGER REFERENCES book(id) ON DELETE SET NULL, stars INTEGER);
CREATE INDEX book_author ON book(author_id);
CREATE INDEX chapter_book ON chapter(book_id);
INSERT INTO author VALUES (1, 'austen'), (2, 'borges'), (3, 'calvino');
INSERT INTO book VALUES (10, 1, 'emma'), (11, 1, 'persuasion'), (20, 2, 'ficciones'), (30, 3, 'invisible cities');
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
INSERT INTO chapter(book_id, n, body) SELECT b.id, n.i, printf('%s ch %d %s', b.title, n.i, hex(zeroblob(100))) FROM book b, n;
INSERT INTO review(book_id, stars) VALUES (10, 5), (11, 4), (20, 5), (20, 3), (30, 4);
SELECT count(*) FROM chapter;
DELETE FROM author WHERE name = 'austen';
SELECT id, author_id, title FROM book ORDER BY id;
SELECT book_id, count(*) FROM chapter GROUP BY book_id ORDER BY book_id;
SELECT id, coalesce(book_id, 'null'), stars FROM review ORDER BY id;
UPDATE author SET id = 200 WHERE id = 2;
SELECT id, author_id FROM book ORDER BY id;
DELETE FROM book WHERE id = 30;
SELECT count(*) FROM chapter;
SELECT id, coalesce(book_id, 'null') FROM review ORDER BY id;
-- deferred constraint: child inserted before parent inside one transaction
CREATE TABLE node(id INTEGER PRIMARY KEY, parent INTEGER REFERENCES node(id) DEFERRABLE INITIALLY DEFERRED);
BEGIN;
INSERT INTO node VALUES (2, 1);
INSERT INTO node VALUES (3, 2);
INSERT INTO node VALUES (1, NULL);
COMMIT;
SELECT id, coalesce(parent, '-') FROM node ORDER BY id;
DELETE FROM node WHERE id = 3;
PRAGMA foreign_key_check;
-- violations are detected by foreign_key_check when enforcement is off
PRAGMA foreign_keys = OFF;
INSERT INTO book VALUES (99, 12345, 'orphan');
PRAGMA foreign_key_check;
DELETE FROM book WHERE id = 99;
PRAGMA foreign_keys = ON;
PRAGMA foreign_key_check;
PRAGMA integrity_check;
