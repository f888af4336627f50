-- Elo/Rasch ability of a learner per skill (logit scale), updated on first attempts.
CREATE TABLE learner_skills (
    learner_id    TEXT NOT NULL,
    skill_id      TEXT NOT NULL,
    ability       DOUBLE PRECISION NOT NULL,
    attempt_count BIGINT NOT NULL,
    update_time   BIGINT NOT NULL,
    PRIMARY KEY (learner_id, skill_id)
);

-- Elo/Rasch difficulty of an item (logit scale), seeded from the content's initial difficulty.
CREATE TABLE item_calibration (
    item_id       TEXT PRIMARY KEY,
    difficulty    DOUBLE PRECISION NOT NULL,
    attempt_count BIGINT NOT NULL,
    update_time   BIGINT NOT NULL
);

-- Every attempt applied, with its encoded ApplyAttemptResponse: a retried ApplyAttempt gets the
-- first answer back and changes nothing.
CREATE TABLE applied_attempts (
    attempt_id  TEXT PRIMARY KEY,
    learner_id  TEXT NOT NULL,
    item_id     TEXT NOT NULL,
    response    BYTEA NOT NULL,
    record_time BIGINT NOT NULL
);
CREATE INDEX applied_attempts_by_learner ON applied_attempts (learner_id);
