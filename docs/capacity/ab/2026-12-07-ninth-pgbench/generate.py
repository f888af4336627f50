"""Writes bN.sql: pgbench scripts recording N attempts in one statement, the scheduler's
group-commit statement (attempts, memory states, two outbox rows each).

    python3 generate.py 1 4 8
"""
import sys

COLUMNS = ("attempt_id, learner_id, course_id, item_id, rating, correct, response_ms, answer_time, record_time, "
           "stability, difficulty, due_time, predicted_recall, predicted_success, mock_test_id")


def row(i):
    return (f"(gen_random_uuid()::text, 'learner-' || :l{i}, 'course-000', 'c000-i' || :i{i}, 3::bigint, 1::bigint, "
            "8000::bigint, 1795000000000::bigint, 1795000000000::bigint, 3.2::float8, 5.1::float8, "
            "1795300000000::bigint, 0.9::float8, 0.8::float8, ''::text, 2, 0, 0.4::float8, "
            "'\\x0a0178'::bytea, '\\x0a0178'::bytea)")


def script(n):
    variables = "".join(f"\\set l{i} random_zipfian(1, 100000, 1.1)\n\\set i{i} random(1, 1000)\n" for i in range(n))
    return variables + f"""WITH input ({COLUMNS}, phase, step, knowledge, ev_s, ev_u) AS (VALUES {', '.join(row(i) for i in range(n))}),
attempt AS (INSERT INTO attempts ({COLUMNS})
  SELECT {COLUMNS} FROM input ON CONFLICT (attempt_id) DO NOTHING RETURNING attempt_id),
memory AS (INSERT INTO memory_states AS m (learner_id, item_id, course_id, stability, difficulty, last_review_time, due_time, last_rating, review_count, lapse_count, phase, step, knowledge)
  SELECT DISTINCT ON (learner_id, item_id) learner_id, item_id, course_id, stability, difficulty, answer_time, due_time, rating, 1, 0, phase, step, knowledge FROM input JOIN attempt USING (attempt_id)
  ON CONFLICT (learner_id, item_id) DO UPDATE SET stability = excluded.stability, difficulty = excluded.difficulty, last_review_time = excluded.last_review_time, due_time = excluded.due_time, last_rating = excluded.last_rating, review_count = m.review_count + 1, lapse_count = m.lapse_count + excluded.lapse_count, phase = excluded.phase, step = excluded.step, knowledge = excluded.knowledge)
INSERT INTO outbox (attempt_id, consumer, event, create_time)
SELECT i.attempt_id, c.consumer, CASE c.consumer WHEN 'scoring' THEN i.ev_s ELSE i.ev_u END, i.record_time FROM input i JOIN attempt USING (attempt_id), (VALUES ('scoring'), ('user')) AS c (consumer) RETURNING attempt_id, consumer, seq;
"""


for n in map(int, sys.argv[1:]):
    with open(f"b{n}.sql", "w") as out:
        out.write(script(n))
