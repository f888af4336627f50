-- How each learner's first attempts at new practice items went against the target success rate:
-- the correction is the running sum of gain·(target − outcome), kept within its limit, and
-- moves the target that new items are chosen for.
CREATE TABLE practice_targets (
    learner_id      TEXT PRIMARY KEY,
    correction      DOUBLE PRECISION NOT NULL,
    rolling_success DOUBLE PRECISION NOT NULL,
    first_attempts  BIGINT NOT NULL,
    update_time     BIGINT NOT NULL
);
