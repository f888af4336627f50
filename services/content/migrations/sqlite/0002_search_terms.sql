-- PostgreSQL's one-word search index (0002 there); FTS5 ranks a one-word query from its own
-- index already, so SQLite has nothing to add.
SELECT 1;
