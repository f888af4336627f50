-- Each word of each item in service, with the item's relevance for that word alone
-- (ts_rank_cd of the one-word query, so a one-word search ranks exactly as before). A one-word
-- search reads its page from this index in order instead of ranking every item the word is in,
-- which for a common word is most of the catalogue. Kept in step with items by a trigger.
CREATE TABLE item_terms (
    lexeme    TEXT NOT NULL,
    item_id   TEXT NOT NULL REFERENCES items (item_id) ON DELETE CASCADE,
    course_id TEXT NOT NULL,
    relevance DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (lexeme, item_id)
);
CREATE INDEX item_terms_by_relevance ON item_terms (lexeme, relevance DESC, item_id);
CREATE INDEX item_terms_by_course ON item_terms (lexeme, course_id, relevance DESC, item_id);
CREATE INDEX item_terms_by_item ON item_terms (item_id);

-- The one-lexeme query: quotes and backslashes doubled, as tsquery input wants them.
CREATE FUNCTION item_term_query(lexeme TEXT) RETURNS tsquery LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT ('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''')::tsquery
$$;

CREATE FUNCTION item_terms_refresh() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM item_terms WHERE item_id = NEW.item_id;
    IF NEW.retired = 0 THEN
        INSERT INTO item_terms (lexeme, item_id, course_id, relevance)
        SELECT t.lexeme, NEW.item_id, NEW.course_id, ts_rank_cd(NEW.search_vector, item_term_query(t.lexeme))
        FROM unnest(NEW.search_vector) AS t;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER items_terms AFTER INSERT OR UPDATE ON items FOR EACH ROW EXECUTE FUNCTION item_terms_refresh();

INSERT INTO item_terms (lexeme, item_id, course_id, relevance)
SELECT t.lexeme, i.item_id, i.course_id, ts_rank_cd(i.search_vector, item_term_query(t.lexeme))
FROM items i, unnest(i.search_vector) AS t
WHERE i.retired = 0;
