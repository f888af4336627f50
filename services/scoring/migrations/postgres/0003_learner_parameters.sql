-- The rating and answer time of each applied attempt: the review history that a learner's own
-- FSRS-6 parameters are fitted on. Unset for attempts applied before this migration.
ALTER TABLE applied_attempts ADD COLUMN rating BIGINT;
ALTER TABLE applied_attempts ADD COLUMN answer_time BIGINT;

-- The latest fit of each learner's FSRS-6 parameters; used in place of the defaults when kept
-- (kept = 1: they predicted the learner's latest reviews better than the defaults).
CREATE TABLE learner_parameters (
    learner_id       TEXT PRIMARY KEY,
    parameters       TEXT NOT NULL,
    kept             BIGINT NOT NULL,
    reviews          BIGINT NOT NULL,
    holdout_reviews  BIGINT NOT NULL,
    default_log_loss DOUBLE PRECISION NOT NULL,
    fitted_log_loss  DOUBLE PRECISION NOT NULL,
    attempt_count    BIGINT NOT NULL,
    fit_time         BIGINT NOT NULL
);

-- Each learner's answers after an item's first (reviews, same-day steps included), counted as
-- they are applied: when there are enough new ones, the parameters are fitted again.
CREATE TABLE learner_reviews (
    learner_id TEXT PRIMARY KEY,
    reviews    BIGINT NOT NULL
);
