-- A review rewrites its memory state's due time. With due_time in memory_states_by_course no
-- such update could be HOT, so each inserted a new entry into both indexes (a capacity run:
-- 298,918 updates, none HOT). Without it the new version stays on its page and neither index
-- changes. The reads by learner and course sort their rows by due time themselves; a learner
-- has at most a course's items there. Pages keep room for the new versions.
DROP INDEX memory_states_by_course;
CREATE INDEX memory_states_by_course ON memory_states (learner_id, course_id);
ALTER TABLE memory_states SET (fillfactor = 80);
