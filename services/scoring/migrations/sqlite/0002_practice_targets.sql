-- How each learner's first attempts at new practice items went against the target success rate:
-- the correction is the running sum of gain·(target − outcome), kept within its limit, and
-- moves the target that new items are chosen for.
CREATE TABLE practice_targets (
    learner_id      TEXT PRIMARY KEY,
    correction      REAL NOT NULL,
    rolling_success REAL NOT NULL,
    first_attempts  INTEGER NOT NULL,
    update_time     INTEGER NOT NULL
);
