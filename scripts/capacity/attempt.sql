-- pgbench: the durable write of one SubmitAttempt, on the scheduler's own schema: the attempt
-- with its idempotency key, the learner's memory state upserted, one outbox row for scoring and
-- one for the user service. Run with fsync and synchronous_commit on, as the suite runs. (The
-- suite sends it as one statement; this is the same writes in one transaction.)
\set learner random_zipfian(1, 100000, 1.1)
\set item random(1, 1000)
BEGIN;
INSERT INTO attempts (attempt_id, learner_id, course_id, item_id, rating, correct, response_ms, answer_time,
                      record_time, stability, difficulty, due_time, predicted_recall, predicted_success, mock_test_id)
VALUES (gen_random_uuid()::text, 'learner-' || :learner, 'course-000', 'c000-i' || :item, 3, 1, 8000,
        1795000000000, 1795000000000, 3.2, 5.1, 1795300000000, 0.9, 0.8, '')
ON CONFLICT (attempt_id) DO NOTHING;
INSERT INTO memory_states AS m (learner_id, item_id, course_id, stability, difficulty, last_review_time, due_time,
                                last_rating, review_count, lapse_count, phase, step, knowledge)
VALUES ('learner-' || :learner, 'c000-i' || :item, 'course-000', 3.2, 5.1, 1795000000000, 1795300000000, 3, 1, 0, 2, 0, 0.4)
ON CONFLICT (learner_id, item_id) DO UPDATE SET
    stability = excluded.stability, difficulty = excluded.difficulty, last_review_time = excluded.last_review_time,
    due_time = excluded.due_time, last_rating = excluded.last_rating, review_count = m.review_count + 1,
    lapse_count = m.lapse_count + excluded.lapse_count, phase = excluded.phase, step = excluded.step,
    knowledge = excluded.knowledge;
INSERT INTO outbox (attempt_id, consumer, event, create_time)
VALUES ('x', 'scoring', '\x0a0178'::bytea, 1795000000000), ('x', 'user', '\x0a0178'::bytea, 1795000000000) RETURNING seq;
COMMIT;
