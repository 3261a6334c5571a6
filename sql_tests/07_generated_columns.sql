-- Generated columns: VIRTUAL and STORED, indexed, used in constraints.
CREATE TABLE orders(
  id INTEGER PRIMARY KEY,
  qty INTEGER NOT NULL,
  unit_price REAL NOT NULL,
  total REAL GENERATED ALWAYS AS (qty * unit_price) STORED,
  label TEXT GENERATED ALWAYS AS ('order-' || id || ':' || qty) VIRTUAL,
  big INTEGER AS (qty >= 10)
);
CREATE INDEX orders_total ON orders(total);
CREATE INDEX orders_big ON orders(big);
INSERT INTO orders(qty, unit_price) VALUES (1, 2.5), (10, 1.25), (3, 100), (42, 0.5);
SELECT id, qty, unit_price, total, label, big FROM orders ORDER BY id;
UPDATE orders SET qty = qty + 10 WHERE id = 1;
SELECT id, total, label, big FROM orders ORDER BY id;
SELECT id FROM orders WHERE total > 20 ORDER BY total;
SELECT count(*) FROM orders WHERE big;
CREATE TABLE docs(
  id INTEGER PRIMARY KEY,
  body TEXT,
  body_len INTEGER AS (length(body)) STORED,
  title TEXT AS (json_extract(body, '$.title')) VIRTUAL
);
INSERT INTO docs(body) VALUES ('{"title":"first","n":1}'), ('{"title":"second","n":2}'), ('{"n":3}');
SELECT id, body_len, coalesce(title, '<none>') FROM docs ORDER BY id;
PRAGMA table_xinfo(orders);
PRAGMA integrity_check;
