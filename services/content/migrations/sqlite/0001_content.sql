CREATE TABLE courses (
    course_id   TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    create_time INTEGER NOT NULL
);

CREATE TABLE skills (
    skill_id    TEXT PRIMARY KEY,
    course_id   TEXT NOT NULL REFERENCES courses (course_id),
    name        TEXT NOT NULL,
    update_time INTEGER NOT NULL
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
    kind             INTEGER NOT NULL,
    difficulty       REAL NOT NULL,
    retired          INTEGER NOT NULL DEFAULT 0,
    version          INTEGER NOT NULL,
    create_time      INTEGER NOT NULL,
    update_time      INTEGER NOT NULL,
    search_primary   TEXT NOT NULL,
    search_secondary TEXT NOT NULL,
    body             BLOB NOT NULL
);
CREATE INDEX items_by_course ON items (course_id, item_id);

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

-- Full-text index keyed by the items' rowid, kept in step by triggers.
CREATE VIRTUAL TABLE items_fts USING fts5 (search_primary, search_secondary, tokenize = 'porter unicode61');

CREATE TRIGGER items_fts_insert AFTER INSERT ON items BEGIN
    INSERT INTO items_fts (rowid, search_primary, search_secondary)
    VALUES (new.rowid, new.search_primary, new.search_secondary);
END;

CREATE TRIGGER items_fts_update AFTER UPDATE OF search_primary, search_secondary ON items BEGIN
    DELETE FROM items_fts WHERE rowid = old.rowid;
    INSERT INTO items_fts (rowid, search_primary, search_secondary)
    VALUES (new.rowid, new.search_primary, new.search_secondary);
END;

CREATE TRIGGER items_fts_delete AFTER DELETE ON items BEGIN
    DELETE FROM items_fts WHERE rowid = old.rowid;
END;
