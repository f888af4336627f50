#!/usr/bin/env python3
"""Writes FSRS-6 test vectors from the reference Python implementation (PyPI `fsrs`), so the scoring
service's memory model can be checked against it without Python at test time.

    python3 -m venv /tmp/fsrs && /tmp/fsrs/bin/pip install fsrs==6.3.2
    /tmp/fsrs/bin/python scripts/fsrs-vectors.py > services/scoring/tests/fsrs_vectors.json

Default parameters, learning steps 1 m and 10 m, relearning step 10 m, no fuzz. Each history is a list of
(seconds since the first review, rating); every review records the state the reference computes.
"""

import json
from datetime import datetime, timedelta, timezone

import fsrs

MINUTE, DAY = 60, 86_400
AGAIN, HARD, GOOD, EASY = 1, 2, 3, 4

HISTORIES = {
    "good all the way": [(0, GOOD), (60, GOOD), (600 + 60, GOOD), (3 * DAY, GOOD), (10 * DAY, GOOD), (30 * DAY, GOOD)],
    "lapse and relearn": [
        (0, GOOD), (60, GOOD), (11 * MINUTE, GOOD), (2 * DAY, GOOD), (9 * DAY, AGAIN),
        (9 * DAY + 10 * MINUTE, GOOD), (12 * DAY, HARD), (25 * DAY, EASY),
    ],
    "same-day struggle": [
        (0, AGAIN), (MINUTE, AGAIN), (2 * MINUTE, HARD), (12 * MINUTE, GOOD), (22 * MINUTE, GOOD),
        (DAY + 3600, AGAIN), (DAY + 3600 + 10 * MINUTE, GOOD), (3 * DAY, GOOD),
    ],
    "easy first": [
        (0, EASY), (8 * DAY, GOOD), (40 * DAY, AGAIN), (40 * DAY + 10 * MINUTE, AGAIN),
        (40 * DAY + 30 * MINUTE, GOOD), (41 * DAY, GOOD),
    ],
    "hard steps": [(0, HARD), (5 * MINUTE, HARD), (15 * MINUTE, GOOD), (25 * MINUTE, GOOD), (2 * DAY, HARD), (5 * DAY, GOOD), (5 * DAY + MINUTE, GOOD)],
    "long overdue": [(0, GOOD), (MINUTE, GOOD), (11 * MINUTE, GOOD), (200 * DAY, GOOD), (201 * DAY, AGAIN), (201 * DAY + 10 * MINUTE, GOOD)],
    "review early": [(0, EASY), (DAY, GOOD), (DAY + 2 * 3600, GOOD), (2 * DAY, EASY), (2 * DAY + 600, AGAIN), (3 * DAY, HARD)],
}

STATES = {fsrs.State.Learning: "learning", fsrs.State.Review: "review", fsrs.State.Relearning: "relearning"}


def main() -> None:
    scheduler = fsrs.Scheduler(enable_fuzzing=False)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    out = {"parameters": list(scheduler.parameters), "desired_retention": scheduler.desired_retention, "histories": []}
    for name, reviews in HISTORIES.items():
        card = fsrs.Card(due=start)
        steps = []
        for seconds, rating in reviews:
            at = start + timedelta(seconds=seconds)
            card, _ = scheduler.review_card(card, fsrs.Rating(rating), review_datetime=at)
            steps.append({
                "at_seconds": seconds,
                "rating": rating,
                "stability": card.stability,
                "difficulty": card.difficulty,
                "phase": STATES[card.state],
                "step": card.step,
                "interval_seconds": int((card.due - at).total_seconds()),
            })
        out["histories"].append({"name": name, "reviews": steps})
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
