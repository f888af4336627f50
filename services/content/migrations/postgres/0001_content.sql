CREATE TABLE courses (
    course_id   TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    create_time BIGINT NOT NULL
);

CREATE TABLE skills (
    skill_id    TEXT PRIMARY KEY,
    course_id   TEXT NOT NULL REFERENCES courses (course_id),
    name        TEXT NOT NULL,
    update_time BIGINT NOT NULL
);
CREATE INDEX skills_by_course ON skills (course_id, skill_id);

CREATE TABLE skill_prerequisites (
    skill_id        TEXT NOT NULL REFERENCES skills (skill_id) ON DELETE CASCADE,
    prerequisite_id TEXT NOT NULL REFERENCES skills (skill_id),
    PRIMARY KEY (skill_id, prerequisite_id)
);

-- body: the encoded alp.content.v1.Item; the other columns exist to filter, order and search.
CREATE TABLE items (
    item_id          TEXT PRIMARY KEY,
    course_id        TEXT NOT NULL REFERENCES courses (course_id),
    kind             BIGINT NOT NULL,
    difficulty       DOUBLE PRECISION NOT NULL,
    retired          BIGINT NOT NULL DEFAULT 0,
    version          BIGINT NOT NULL,
    create_time      BIGINT NOT NULL,
    update_time      BIGINT NOT NULL,
    search_primary   TEXT NOT NULL,
    search_secondary TEXT NOT NULL,
    body             BYTEA NOT NULL,
    search_vector    TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('english', search_primary), 'A') ||
        setweight(to_tsvector('english', search_secondary), 'C')
    ) STORED
);
CREATE INDEX items_by_course ON items (course_id, item_id);
CREATE INDEX items_search ON items USING GIN (search_vector);

CREATE TABLE item_skills (
    item_id  TEXT NOT NULL REFERENCES items (item_id) ON DELETE CASCADE,
    skill_id TEXT NOT NULL,
    PRIMARY KEY (item_id, skill_id)
);
CREATE INDEX item_skills_by_skill ON item_skills (skill_id, item_id);

CREATE TABLE item_tags (
    item_id TEXT NOT NULL REFERENCES items (item_id) ON DELETE CASCADE,
    tag     TEXT NOT NULL,
    PRIMARY KEY (item_id, tag)
);
CREATE INDEX item_tags_by_tag ON item_tags (tag, item_id);
