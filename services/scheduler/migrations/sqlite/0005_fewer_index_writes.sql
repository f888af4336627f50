-- As on PostgreSQL (0005 there), ListDueItems across courses reads the primary key's learner
-- prefix. The outbox keeps its rowid key: SQLite has no index on seq to spare.
DROP INDEX memory_states_by_due;
