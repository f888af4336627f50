//! The memory model against the reference FSRS-6 implementation: review histories replayed through
//! PyPI's `fsrs` 6.3.2 (scripts/fsrs-vectors.py) must come out the same here — stability,
//! difficulty, phase, step and interval after every review, including lapses and same-day reviews.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alp_proto::common::v1::Rating;
use alp_scoring::model::memory::{Card, MemoryModel, Phase};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    parameters: Vec<f32>,
    desired_retention: f64,
    histories: Vec<History>,
}

#[derive(Deserialize)]
struct History {
    name: String,
    reviews: Vec<Review>,
}

#[derive(Deserialize)]
struct Review {
    at_seconds: i64,
    rating: i32,
    stability: f64,
    difficulty: f64,
    phase: String,
    step: Option<usize>,
    interval_seconds: i64,
}

fn close(ours: f64, reference: f64) -> bool {
    // The crate computes in f32, the reference in f64.
    (ours - reference).abs() <= 1e-4 * reference.abs().max(1.0)
}

#[test]
fn every_reference_history_replays_identically() {
    let vectors: Vectors = serde_json::from_str(include_str!("fsrs_vectors.json")).unwrap();
    let model = MemoryModel::with_parameters(&vectors.parameters).unwrap();
    assert_eq!(model.parameters(), fsrs::DEFAULT_PARAMETERS, "the vectors use the published defaults");
    let mut compared = 0;
    for history in &vectors.histories {
        let mut card: Option<Card> = None;
        for (n, review) in history.reviews.iter().enumerate() {
            let at = review.at_seconds * 1000;
            let rating = Rating::try_from(review.rating).unwrap();
            let next = model.review(card.as_ref(), rating, at, vectors.desired_retention, None).unwrap().card;
            let here = format!("{:?} review {n} ({rating:?} at {}s)", history.name, review.at_seconds);
            let stability = f64::from(next.memory.stability);
            let difficulty = f64::from(next.memory.difficulty);
            assert!(close(stability, review.stability), "{here}: stability {stability} vs {}", review.stability);
            assert!(close(difficulty, review.difficulty), "{here}: difficulty {difficulty} vs {}", review.difficulty);
            let phase = match next.phase {
                Phase::Learning => "learning",
                Phase::Review => "review",
                Phase::Relearning => "relearning",
            };
            assert_eq!(phase, review.phase, "{here}: phase");
            assert_eq!(next.step, review.step.unwrap_or(0), "{here}: step");
            assert_eq!(next.interval_ms, review.interval_seconds * 1000, "{here}: interval");
            card = Some(next);
            compared += 1;
        }
    }
    assert!(compared >= 40, "only {compared} reviews compared");
}
