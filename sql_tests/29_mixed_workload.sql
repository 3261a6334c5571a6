-- A mixed workload: each transaction touches several tables (orders, stock, ledger, audit) at once.
PRAGMA foreign_keys = ON;
CREATE TABLE stock(sku TEXT PRIMARY KEY, qty INTEGER NOT NULL CHECK (qty >= 0), price INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE orders(id INTEGER PRIMARY KEY, customer TEXT, status TEXT DEFAULT 'new');
CREATE TABLE order_line(order_id INTEGER REFERENCES orders(id) ON DELETE CASCADE, sku TEXT REFERENCES stock(sku), qty INTEGER, PRIMARY KEY (order_id, sku));
CREATE TABLE ledger(id INTEGER PRIMARY KEY, order_id INTEGER, amount INTEGER, memo TEXT);
CREATE TABLE audit(id INTEGER PRIMARY KEY, what TEXT);
CREATE TRIGGER line_take AFTER INSERT ON order_line BEGIN
  UPDATE stock SET qty = qty - NEW.qty WHERE sku = NEW.sku;
END;
CREATE TRIGGER line_back AFTER DELETE ON order_line BEGIN
  UPDATE stock SET qty = qty + OLD.qty WHERE sku = OLD.sku;
END;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
INSERT INTO stock SELECT printf('SKU%03d', i), 1000, i * 3 FROM n;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
INSERT INTO orders(id, customer) SELECT i, 'cust' || (i % 23) FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400), k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j < 2)
INSERT INTO order_line SELECT i, printf('SKU%03d', (i * 7 + j * 13) % 50 + 1), (i + j) % 5 + 1 FROM n, k;
INSERT INTO ledger(order_id, amount, memo) SELECT ol.order_id, sum(ol.qty * s.price), 'sale' FROM order_line ol JOIN stock s USING (sku) GROUP BY ol.order_id;
INSERT INTO audit(what) VALUES ('batch 1');
COMMIT;
SELECT count(*), sum(qty) FROM order_line;
SELECT sum(qty), sum(qty * price) FROM stock;
SELECT sum(amount) FROM ledger;
BEGIN;
UPDATE orders SET status = 'shipped' WHERE id % 3 = 0;
DELETE FROM orders WHERE id % 10 = 0;
INSERT INTO ledger(order_id, amount, memo) SELECT id, 0, 'cancel' FROM (SELECT id FROM ledger WHERE memo = 'sale' AND order_id % 10 = 0);
UPDATE ledger SET amount = -amount WHERE memo = 'sale' AND order_id % 10 = 0;
INSERT INTO audit(what) VALUES ('batch 2');
COMMIT;
BEGIN;
UPDATE stock SET price = price + 1 WHERE sku IN (SELECT sku FROM order_line GROUP BY sku HAVING sum(qty) > 70);
INSERT INTO audit(what) SELECT 'repriced ' || count(*) FROM stock WHERE price % 3 = 1;
ROLLBACK;
SELECT status, count(*) FROM orders GROUP BY status ORDER BY status;
SELECT count(*), sum(qty) FROM order_line;
SELECT sum(qty) FROM stock;
SELECT 50 * 1000 - (SELECT sum(qty) FROM stock) = (SELECT sum(qty) FROM order_line);
SELECT memo, count(*), sum(amount) FROM ledger GROUP BY memo ORDER BY memo;
SELECT id, what FROM audit ORDER BY id;
SELECT sku, qty FROM stock ORDER BY qty, sku LIMIT 5;
PRAGMA foreign_key_check;
PRAGMA integrity_check;
