-- ALTER TABLE: RENAME TO, RENAME COLUMN, ADD COLUMN, DROP COLUMN; dependent views, triggers, indexes follow.
PRAGMA foreign_keys = ON;
CREATE TABLE customer(id INTEGER PRIMARY KEY, fullname TEXT, phone TEXT, obsolete INTEGER);
CREATE TABLE invoice(id INTEGER PRIMARY KEY, cust_id INTEGER REFERENCES customer(id), amount INTEGER);
CREATE INDEX customer_fullname ON customer(fullname);
CREATE VIEW customer_names AS SELECT id, fullname FROM customer;
CREATE TABLE trail(msg TEXT);
CREATE TRIGGER customer_trail AFTER UPDATE OF fullname ON customer BEGIN
  INSERT INTO trail VALUES (OLD.fullname || '->' || NEW.fullname);
END;
INSERT INTO customer VALUES (1, 'Ada', '111', 0), (2, 'Brian', '222', 1), (3, 'Cleo', NULL, 0);
INSERT INTO invoice VALUES (10, 1, 500), (11, 1, 250), (12, 3, 75);
ALTER TABLE customer RENAME TO client;
ALTER TABLE client RENAME COLUMN fullname TO name;
ALTER TABLE client ADD COLUMN tier TEXT NOT NULL DEFAULT 'basic';
ALTER TABLE client ADD COLUMN created TEXT DEFAULT '2020-01-01';
ALTER TABLE client DROP COLUMN obsolete;
UPDATE client SET name = 'Ada L.' WHERE id = 1;
UPDATE client SET tier = 'gold' WHERE id IN (SELECT cust_id FROM invoice GROUP BY cust_id HAVING sum(amount) > 500);
SELECT * FROM client ORDER BY id;
SELECT * FROM customer_names ORDER BY id;
SELECT msg FROM trail ORDER BY rowid;
SELECT sql FROM sqlite_schema WHERE name IN ('client', 'invoice', 'customer_names', 'customer_fullname', 'customer_trail') ORDER BY name;
PRAGMA foreign_key_check;
ALTER TABLE invoice RENAME COLUMN amount TO cents;
ALTER TABLE invoice ADD COLUMN note TEXT;
UPDATE invoice SET note = 'n' || id;
ALTER TABLE invoice DROP COLUMN note;
SELECT c.name, sum(i.cents) FROM client c JOIN invoice i ON i.cust_id = c.id GROUP BY c.id ORDER BY c.id;
-- ALTER inside a transaction that is rolled back leaves the old schema
BEGIN;
ALTER TABLE client RENAME TO gone;
ALTER TABLE gone ADD COLUMN x;
ROLLBACK;
SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name;
PRAGMA table_info(client);
PRAGMA integrity_check;
