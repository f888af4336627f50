-- The current-knowledge estimate scoring keeps per learner and item; NULL for rows written
-- before it existed (scoring then starts from ability minus difficulty).
ALTER TABLE memory_states ADD COLUMN knowledge REAL;
-- The mock test an attempt answered; empty for practice.
ALTER TABLE attempts ADD COLUMN mock_test_id TEXT NOT NULL DEFAULT '';
CREATE INDEX attempts_by_mock_test ON attempts (learner_id, mock_test_id, seq) WHERE mock_test_id <> '';
