-- The log of record: one row per accepted attempt; attempt_id is the client's idempotency key.
CREATE TABLE attempts (
    seq               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    attempt_id        TEXT NOT NULL UNIQUE,
    learner_id        TEXT NOT NULL,
    course_id         TEXT NOT NULL,
    item_id           TEXT NOT NULL,
    rating            BIGINT NOT NULL,
    correct           BIGINT NOT NULL,
    response_ms       BIGINT NOT NULL,
    answer_time       BIGINT NOT NULL,
    record_time       BIGINT NOT NULL,
    stability         DOUBLE PRECISION NOT NULL,
    difficulty        DOUBLE PRECISION NOT NULL,
    due_time          BIGINT NOT NULL,
    predicted_recall  DOUBLE PRECISION NOT NULL,
    predicted_success DOUBLE PRECISION NOT NULL
);
CREATE INDEX attempts_by_learner ON attempts (learner_id, seq);

-- Each learner's FSRS memory state per item.
CREATE TABLE memory_states (
    learner_id       TEXT NOT NULL,
    item_id          TEXT NOT NULL,
    course_id        TEXT NOT NULL,
    stability        DOUBLE PRECISION NOT NULL,
    difficulty       DOUBLE PRECISION NOT NULL,
    last_review_time BIGINT NOT NULL,
    due_time         BIGINT NOT NULL,
    last_rating      BIGINT NOT NULL,
    review_count     BIGINT NOT NULL,
    lapse_count      BIGINT NOT NULL,
    PRIMARY KEY (learner_id, item_id)
);
CREATE INDEX memory_states_by_due ON memory_states (learner_id, due_time, item_id);
CREATE INDEX memory_states_by_course ON memory_states (learner_id, course_id, due_time);

-- Progress events waiting for the user service, written in the attempt's transaction.
CREATE TABLE outbox (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    attempt_id  TEXT NOT NULL,
    event       BYTEA NOT NULL,
    create_time BIGINT NOT NULL
);
