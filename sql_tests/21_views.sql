-- Views: simple, joined, aggregated, nested, view over a CTE, dropped and recreated.
CREATE TABLE product(id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL);
CREATE TABLE sale(id INTEGER PRIMARY KEY, product_id INTEGER, qty INTEGER, day TEXT);
INSERT INTO product VALUES (1, 'pen', 'office', 1.5), (2, 'desk', 'furniture', 120), (3, 'chair', 'furniture', 45.25), (4, 'ink', 'office', 7);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60)
INSERT INTO sale(product_id, qty, day) SELECT i % 4 + 1, i % 5 + 1, date('2024-01-01', '+' || (i % 10) || ' days') FROM n;
CREATE VIEW sale_detail AS SELECT s.id, s.day, p.name, p.category, s.qty, s.qty * p.price AS revenue FROM sale s JOIN product p ON p.id = s.product_id;
CREATE VIEW category_revenue AS SELECT category, sum(revenue) AS revenue, count(*) AS n FROM sale_detail GROUP BY category;
CREATE VIEW top_days(day, revenue) AS WITH d AS (SELECT day, sum(revenue) AS r FROM sale_detail GROUP BY day) SELECT day, r FROM d ORDER BY r DESC, day LIMIT 3;
SELECT category, revenue, n FROM category_revenue ORDER BY category;
SELECT day, revenue FROM top_days;
SELECT name, sum(qty) FROM sale_detail WHERE day BETWEEN '2024-01-03' AND '2024-01-05' GROUP BY name ORDER BY name;
UPDATE product SET price = price * 2 WHERE category = 'office';
SELECT category, revenue FROM category_revenue ORDER BY category;
DROP VIEW top_days;
CREATE VIEW top_days AS SELECT day, sum(qty) AS q FROM sale GROUP BY day ORDER BY q DESC, day LIMIT 2;
SELECT * FROM top_days;
CREATE TEMP VIEW temp_cheap AS SELECT name FROM product WHERE price < 10;
SELECT name FROM temp_cheap ORDER BY name;
SELECT type, name FROM sqlite_schema WHERE type = 'view' ORDER BY name;
CREATE TABLE snapshot AS SELECT * FROM sale_detail WHERE id <= 10;
SELECT count(*), sum(revenue) FROM snapshot;
PRAGMA integrity_check;
