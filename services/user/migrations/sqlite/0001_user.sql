CREATE TABLE learners (
    learner_id        TEXT PRIMARY KEY,
    display_name      TEXT NOT NULL,
    email             TEXT NOT NULL,
    locale            TEXT NOT NULL,
    desired_retention REAL NOT NULL,
    create_time       INTEGER NOT NULL,
    update_time       INTEGER NOT NULL
);

CREATE TABLE enrolments (
    learner_id TEXT NOT NULL REFERENCES learners (learner_id) ON DELETE CASCADE,
    course_id  TEXT NOT NULL,
    enrol_time INTEGER NOT NULL,
    PRIMARY KEY (learner_id, course_id)
);

-- One row per attempt ever applied: the idempotency guarantee of RecordProgress.
CREATE TABLE progress_events (
    attempt_id  TEXT PRIMARY KEY,
    learner_id  TEXT NOT NULL REFERENCES learners (learner_id) ON DELETE CASCADE,
    record_time INTEGER NOT NULL
);
CREATE INDEX progress_events_by_learner ON progress_events (learner_id);

CREATE TABLE course_progress (
    learner_id        TEXT NOT NULL REFERENCES learners (learner_id) ON DELETE CASCADE,
    course_id         TEXT NOT NULL,
    attempt_count     INTEGER NOT NULL,
    correct_count     INTEGER NOT NULL,
    items_seen        INTEGER NOT NULL,
    last_attempt_time INTEGER NOT NULL,
    PRIMARY KEY (learner_id, course_id)
);

CREATE TABLE skill_progress (
    learner_id        TEXT NOT NULL REFERENCES learners (learner_id) ON DELETE CASCADE,
    course_id         TEXT NOT NULL,
    skill_id          TEXT NOT NULL,
    attempt_count     INTEGER NOT NULL,
    correct_count     INTEGER NOT NULL,
    last_attempt_time INTEGER NOT NULL,
    PRIMARY KEY (learner_id, course_id, skill_id)
);
