-- FTS5: create, insert, MATCH, phrase/prefix/boolean queries, highlight, snippet, bm25 ordering, delete, optimize.
CREATE VIRTUAL TABLE notes USING fts5(title, body, tokenize = 'porter unicode61');
INSERT INTO notes(title, body) VALUES
  ('raft basics', 'Raft elects a leader and replicates a log of commands to followers'),
  ('sqlite wal', 'The write-ahead log appends frames and a checkpoint copies pages back into the database'),
  ('consensus', 'Consensus protocols such as raft and paxos keep replicated logs identical'),
  ('cooking', 'Replicate the recipe twice: chop onions, fry onions, add the sauce'),
  ('checkpoints', 'A checkpoint runs when the log grows; readers keep their snapshot');
SELECT title FROM notes WHERE notes MATCH 'log' ORDER BY rank, title;
SELECT title FROM notes WHERE notes MATCH 'raft AND log' ORDER BY title;
SELECT title FROM notes WHERE notes MATCH 'replic*' ORDER BY title;
SELECT title FROM notes WHERE notes MATCH '"write ahead"' ORDER BY title;
SELECT title FROM notes WHERE notes MATCH 'title:checkpoint*' ORDER BY title;
SELECT title FROM notes WHERE notes MATCH 'onions NOT raft' ORDER BY title;
SELECT highlight(notes, 1, '[', ']') FROM notes WHERE notes MATCH 'leader' ORDER BY rowid;
SELECT snippet(notes, 1, '<', '>', '...', 4) FROM notes WHERE notes MATCH 'snapshot' ORDER BY rowid;
SELECT title FROM notes WHERE notes MATCH 'log OR checkpoint' ORDER BY bm25(notes), title;
SELECT title, round(bm25(notes, 10.0, 1.0), 3) < 0 FROM notes WHERE notes MATCH 'raft' ORDER BY bm25(notes, 10.0, 1.0), title;
-- many documents so the index spans several segments
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1500)
INSERT INTO notes(title, body) SELECT 'doc' || i, 'word' || (i % 37) || ' common term' || (i % 11) || ' filler ' || hex(zeroblob(i % 50)) FROM n;
SELECT count(*) FROM notes WHERE notes MATCH 'common';
SELECT count(*) FROM notes WHERE notes MATCH 'word5 AND term5';
DELETE FROM notes WHERE rowid % 4 = 0;
UPDATE notes SET body = body || ' updated' WHERE rowid % 5 = 0;
SELECT count(*) FROM notes WHERE notes MATCH 'updated';
SELECT count(*) FROM notes WHERE notes MATCH 'common';
INSERT INTO notes(notes) VALUES ('optimize');
SELECT count(*) FROM notes WHERE notes MATCH 'common';
INSERT INTO notes(notes) VALUES ('integrity-check');
SELECT title FROM notes WHERE notes MATCH 'raft' ORDER BY rank, title;
PRAGMA integrity_check;
