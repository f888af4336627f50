-- The outbox feeds more than the user service: each attempt's commit writes one row per
-- consumer (scoring's models, the user service's progress), and each consumer's relay reads
-- its own rows in order. Rows from before this migration are progress events.
ALTER TABLE outbox ADD COLUMN consumer TEXT NOT NULL DEFAULT 'user';
CREATE INDEX outbox_by_consumer ON outbox (consumer, seq);
