-- Triggers: BEFORE, AFTER, INSTEAD OF on a view, WHEN clauses, RAISE.
CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, updated INTEGER DEFAULT 0);
CREATE TABLE audit(seq INTEGER PRIMARY KEY, op TEXT, item_id INTEGER, detail TEXT);
CREATE TRIGGER items_bi BEFORE INSERT ON items
WHEN NEW.qty < 0
BEGIN
  SELECT RAISE(ABORT, 'negative qty');
END;
CREATE TRIGGER items_ai AFTER INSERT ON items
BEGIN
  INSERT INTO audit(op, item_id, detail) VALUES ('insert', NEW.id, NEW.name || ':' || NEW.qty);
END;
CREATE TRIGGER items_bu BEFORE UPDATE OF qty ON items
BEGIN
  INSERT INTO audit(op, item_id, detail) VALUES ('before-update', OLD.id, OLD.qty || '->' || NEW.qty);
END;
CREATE TRIGGER items_au AFTER UPDATE OF qty ON items
WHEN NEW.updated = OLD.updated
BEGIN
  UPDATE items SET updated = OLD.updated + 1 WHERE id = NEW.id;
END;
CREATE TRIGGER items_ad AFTER DELETE ON items
BEGIN
  INSERT INTO audit(op, item_id, detail) VALUES ('delete', OLD.id, OLD.name);
END;
INSERT INTO items(name, qty) VALUES ('bolt', 10), ('nut', 20), ('washer', 5);
UPDATE items SET qty = qty * 3 WHERE name = 'nut';
UPDATE items SET name = 'big bolt' WHERE name = 'bolt';
DELETE FROM items WHERE name = 'washer';
SELECT id, name, qty, updated FROM items ORDER BY id;
SELECT seq, op, item_id, detail FROM audit ORDER BY seq;
CREATE VIEW item_view AS SELECT id, name, qty FROM items;
CREATE TRIGGER item_view_ii INSTEAD OF INSERT ON item_view
BEGIN
  INSERT INTO items(name, qty) VALUES (upper(NEW.name), coalesce(NEW.qty, 0));
END;
CREATE TRIGGER item_view_iu INSTEAD OF UPDATE ON item_view
BEGIN
  UPDATE items SET qty = NEW.qty WHERE id = OLD.id;
  INSERT INTO audit(op, item_id, detail) VALUES ('view-update', OLD.id, NEW.name);
END;
CREATE TRIGGER item_view_id INSTEAD OF DELETE ON item_view
BEGIN
  DELETE FROM items WHERE id = OLD.id;
END;
INSERT INTO item_view(name, qty) VALUES ('screw', 7);
INSERT INTO item_view(name) VALUES ('pin');
UPDATE item_view SET qty = 99, name = 'ignored' WHERE name = 'SCREW';
DELETE FROM item_view WHERE name = 'PIN';
SELECT id, name, qty, updated FROM items ORDER BY id;
SELECT seq, op, item_id, detail FROM audit ORDER BY seq;
-- RAISE(IGNORE) skips single rows without an error (the shell runs with -bail, so no failing statements)
CREATE TRIGGER items_skip BEFORE INSERT ON items WHEN NEW.name LIKE 'skip%'
BEGIN
  SELECT RAISE(IGNORE);
END;
INSERT INTO items(name, qty) VALUES ('skip-me', 1), ('keep-me', 2), ('skip-too', 3);
SELECT name FROM items WHERE name LIKE '%-me' OR name LIKE 'skip%' ORDER BY name;
SELECT count(*) FROM items WHERE qty < 0;
-- triggers inside a rolled back transaction leave nothing behind
BEGIN;
INSERT INTO items(name, qty) VALUES ('temp', 1);
DELETE FROM items;
ROLLBACK;
SELECT count(*) FROM items;
SELECT count(*) FROM audit;
SELECT name FROM sqlite_schema WHERE type = 'trigger' ORDER BY name;
DROP TRIGGER items_bu;
UPDATE items SET qty = 1;
SELECT count(*) FROM audit WHERE op = 'before-update';
PRAGMA integrity_check;
