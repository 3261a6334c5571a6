-- Window functions: ranking, running totals, frames, lag/lead, ntile, named windows, filter.
CREATE TABLE sales(id INTEGER PRIMARY KEY, region TEXT, month INTEGER, amount INTEGER);
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 35)
INSERT INTO sales(region, month, amount) SELECT CASE i % 3 WHEN 0 THEN 'east' WHEN 1 THEN 'west' ELSE 'north' END, i / 3 + 1, (i * 37) % 100 + 10 FROM n;
SELECT region, month, amount,
       sum(amount) OVER (PARTITION BY region ORDER BY month) AS running,
       rank() OVER (PARTITION BY region ORDER BY amount DESC) AS rnk,
       dense_rank() OVER (ORDER BY amount DESC) AS drnk
FROM sales ORDER BY region, month;
SELECT region, month, lag(amount) OVER w, lead(amount, 2, -1) OVER w, first_value(amount) OVER w, last_value(amount) OVER w
FROM sales WINDOW w AS (PARTITION BY region ORDER BY month ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING)
ORDER BY region, month;
SELECT month, avg(amount) OVER (ORDER BY month RANGE BETWEEN 2 PRECEDING AND CURRENT ROW) FROM (SELECT month, sum(amount) AS amount FROM sales GROUP BY month) ORDER BY month;
SELECT id, ntile(4) OVER (ORDER BY amount, id), row_number() OVER (ORDER BY amount DESC, id), percent_rank() OVER (ORDER BY amount), cume_dist() OVER (ORDER BY amount)
FROM sales ORDER BY id LIMIT 12;
SELECT region, count(*) FILTER (WHERE amount > 50) OVER (PARTITION BY region), group_concat(month, ',') OVER (PARTITION BY region ORDER BY month GROUPS BETWEEN 1 PRECEDING AND CURRENT ROW EXCLUDE CURRENT ROW)
FROM sales WHERE month <= 4 ORDER BY region, month;
-- materialize window results into a table
CREATE TABLE ranked AS SELECT id, region, rank() OVER (PARTITION BY region ORDER BY amount DESC, id) AS r FROM sales;
SELECT region, group_concat(id, ',') FROM (SELECT * FROM ranked WHERE r <= 3 ORDER BY region, r) GROUP BY region ORDER BY region;
UPDATE sales SET amount = amount + (SELECT r FROM ranked WHERE ranked.id = sales.id);
SELECT sum(amount) FROM sales;
PRAGMA integrity_check;
