-- PostgreSQL drops the progress tables' foreign keys (0002 there). SQLite's checks are cheap
-- and its one writer is exclusive, so it keeps them.
SELECT 1;
