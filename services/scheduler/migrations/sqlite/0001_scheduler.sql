-- The log of record: one row per accepted attempt; attempt_id is the client's idempotency key.
CREATE TABLE attempts (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    attempt_id        TEXT NOT NULL UNIQUE,
    learner_id        TEXT NOT NULL,
    course_id         TEXT NOT NULL,
    item_id           TEXT NOT NULL,
    rating            INTEGER NOT NULL,
    correct           INTEGER NOT NULL,
    response_ms       INTEGER NOT NULL,
    answer_time       INTEGER NOT NULL,
    record_time       INTEGER NOT NULL,
    stability         REAL NOT NULL,
    difficulty        REAL NOT NULL,
    due_time          INTEGER NOT NULL,
    predicted_recall  REAL NOT NULL,
    predicted_success REAL NOT NULL
);
CREATE INDEX attempts_by_learner ON attempts (learner_id, seq);

-- Each learner's FSRS memory state per item.
CREATE TABLE memory_states (
    learner_id       TEXT NOT NULL,
    item_id          TEXT NOT NULL,
    course_id        TEXT NOT NULL,
    stability        REAL NOT NULL,
    difficulty       REAL NOT NULL,
    last_review_time INTEGER NOT NULL,
    due_time         INTEGER NOT NULL,
    last_rating      INTEGER NOT NULL,
    review_count     INTEGER NOT NULL,
    lapse_count      INTEGER NOT NULL,
    PRIMARY KEY (learner_id, item_id)
);
CREATE INDEX memory_states_by_due ON memory_states (learner_id, due_time, item_id);
CREATE INDEX memory_states_by_course ON memory_states (learner_id, course_id, due_time);

-- Progress events waiting for the user service, written in the attempt's transaction.
CREATE TABLE outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    attempt_id  TEXT NOT NULL,
    event       BLOB NOT NULL,
    create_time INTEGER NOT NULL
);
