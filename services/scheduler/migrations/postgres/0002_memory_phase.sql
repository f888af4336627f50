-- The memory life cycle: learning and relearning steps before whole-day review intervals.
-- Rows written before this migration were all scheduled in days, i.e. in review (2).
ALTER TABLE memory_states ADD COLUMN phase INTEGER NOT NULL DEFAULT 2;
ALTER TABLE memory_states ADD COLUMN step INTEGER NOT NULL DEFAULT 0;
