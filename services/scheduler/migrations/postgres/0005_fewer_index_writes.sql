-- Every attempt inserts into each index of attempts, memory_states and outbox (a review moves
-- due_time, so its update cannot be HOT). Two indexes earned less than they cost:
-- memory_states_by_due served only ListDueItems across all of a learner's courses, which the
-- primary key's learner prefix serves as well; the outbox is read and deleted by consumer, so
-- (consumer, seq) becomes its key and the index on seq alone goes.
DROP INDEX memory_states_by_due;
CREATE UNIQUE INDEX outbox_key ON outbox (consumer, seq);
ALTER TABLE outbox DROP CONSTRAINT outbox_pkey, ADD PRIMARY KEY USING INDEX outbox_key;
DROP INDEX outbox_by_consumer;
