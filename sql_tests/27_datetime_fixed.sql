-- Date and time functions on fixed inputs (deterministic), stored and queried.
CREATE TABLE ev(id INTEGER PRIMARY KEY, at TEXT);
INSERT INTO ev(at) VALUES ('2024-02-28 23:59:59'), ('2024-02-29 12:00:00'), ('2023-12-31 00:00:00'), ('2000-01-01T06:30:00.123'), ('1970-01-01 00:00:00');
SELECT id, date(at), time(at), datetime(at, '+1 day'), strftime('%Y|%m|%d|%H|%M|%S|%j|%w|%W', at) FROM ev ORDER BY id;
SELECT id, unixepoch(at), julianday(at), strftime('%s', at), strftime('%f', at) FROM ev ORDER BY id;
SELECT date('2024-01-31', '+1 month'), date('2024-03-31', '-1 month'), date('2024-01-15', 'start of month'), date('2024-06-15', 'start of year', '+45 days');
SELECT date('2024-05-01', 'weekday 0'), date('2024-05-01', '-7 days', 'weekday 3'), datetime(1700000000, 'unixepoch'), datetime(2460000.5);
SELECT datetime('2024-03-10 01:30:00', '+90 minutes', '-30 seconds'), time('12:00', '+0.5 hours'), datetime('2024-01-01', '+1.5 days');
SELECT julianday('2024-12-25') - julianday('2024-01-01'), (unixepoch('2025-01-01') - unixepoch('2024-01-01')) / 86400;
SELECT date('2023-02-29'), date('not a date'), datetime('2024-01-01 25:00:00');
UPDATE ev SET at = datetime(at, '+1 year') WHERE at < '2001';
SELECT id, at FROM ev ORDER BY at;
SELECT strftime('%Y', at) AS y, count(*) FROM ev GROUP BY y ORDER BY y;
CREATE INDEX ev_day ON ev(date(at));
SELECT id FROM ev WHERE date(at) = '2024-02-29';
PRAGMA integrity_check;
