-- JSON functions: json_extract, ->, ->>, json_each, json_tree, json_group_array/object, json_set/patch.
CREATE TABLE events(id INTEGER PRIMARY KEY, doc TEXT NOT NULL CHECK (json_valid(doc)));
INSERT INTO events(doc) VALUES
  ('{"type":"click","user":{"id":1,"name":"ann"},"tags":["a","b"],"n":3}'),
  ('{"type":"view","user":{"id":2,"name":"ben"},"tags":[],"n":1.5}'),
  ('{"type":"click","user":{"id":2,"name":"ben"},"tags":["b","c","d"],"n":null}'),
  ('{"type":"buy","user":{"id":3,"name":"cy"},"tags":["a"],"n":10,"extra":{"sku":"X-1"}}');
SELECT id, json_extract(doc, '$.type'), json_extract(doc, '$.user.name'), doc ->> '$.n', doc -> '$.tags' FROM events ORDER BY id;
SELECT doc ->> 'type', count(*) FROM events GROUP BY 1 ORDER BY 1;
SELECT e.id, t.key, t.value FROM events e, json_each(e.doc, '$.tags') t ORDER BY e.id, t.key;
SELECT t.value, count(*) FROM events e, json_each(e.doc, '$.tags') t GROUP BY t.value ORDER BY t.value;
SELECT json_group_array(id) FROM (SELECT id FROM events ORDER BY id);
SELECT json_group_object(name, cnt) FROM (SELECT doc ->> '$.user.name' AS name, count(*) AS cnt FROM events GROUP BY 1 ORDER BY 1);
SELECT fullkey, type FROM events, json_tree(events.doc) WHERE events.id = 4 ORDER BY fullkey;
UPDATE events SET doc = json_set(doc, '$.seen', json('true'), '$.n', coalesce(doc ->> '$.n', 0) + 1) WHERE id <= 2;
UPDATE events SET doc = json_patch(doc, '{"extra":null,"patched":1}') WHERE id = 4;
UPDATE events SET doc = json_remove(doc, '$.tags[0]') WHERE id = 3;
UPDATE events SET doc = json_insert(doc, '$.tags[#]', 'z') WHERE id = 1;
SELECT id, doc FROM events ORDER BY id;
SELECT json_array_length(doc, '$.tags') FROM events ORDER BY id;
SELECT json_type(doc, '$.n'), json_quote(doc ->> '$.user.name') FROM events ORDER BY id;
CREATE INDEX events_type ON events(doc ->> 'type');
SELECT id FROM events WHERE doc ->> 'type' = 'click' ORDER BY id;
SELECT json_object('a', 1, 'b', json_array(1, 2, 'x'), 'c', json('{"d":null}'));
PRAGMA integrity_check;
