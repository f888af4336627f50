-- As on PostgreSQL (0006 there): a review moved its memory state's entry in this index, and the
-- reads by learner and course sort their rows by due time themselves.
DROP INDEX memory_states_by_course;
CREATE INDEX memory_states_by_course ON memory_states (learner_id, course_id);
