-- Every answer writes a progress event and its course and skill rows, and each foreign-key
-- check is a query of its own: a fifth of a progress batch's execution. The batch statement
-- checks each learner itself and holds them against deletion (FOR KEY SHARE) until it commits;
-- DeleteLearner removes the learner first and then their progress.
ALTER TABLE progress_events DROP CONSTRAINT progress_events_learner_id_fkey;
ALTER TABLE course_progress DROP CONSTRAINT course_progress_learner_id_fkey;
ALTER TABLE skill_progress DROP CONSTRAINT skill_progress_learner_id_fkey;
