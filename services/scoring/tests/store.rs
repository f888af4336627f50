//! The scoring store's contract, the same on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alp_proto::common::v1::Rating;
use alp_proto::scoring::v1::ApplyAttemptResponse;
use alp_runtime::testing::on_every_backend;
use alp_scoring::{AttemptEffects, Estimate, MIGRATIONS, PracticeOutcome, ScoringStore, StoredFit};

fn effects(attempt: &str, learner: &str, item: &str, ability: f64, difficulty: Option<(f64, f64)>) -> AttemptEffects {
    AttemptEffects {
        attempt_id: attempt.into(),
        learner_id: learner.into(),
        item_id: item.into(),
        rating: Rating::Good,
        answer_ms: 0,
        review: false,
        response: ApplyAttemptResponse { predicted_success: 0.5, ability, ..ApplyAttemptResponse::default() },
        ability_deltas: vec![("s1".into(), 0.0, ability)],
        difficulty_delta: difficulty,
        practice: None,
    }
}

#[tokio::test]
async fn an_attempt_is_applied_once_and_its_answer_kept() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        assert!(store.applied("a1").await.unwrap().is_none());
        assert_eq!(store.apply(&effects("a1", "l1", "i1", 0.4, Some((1.0, -0.4)))).await.unwrap(), Some(0));
        // the same id again writes nothing, whatever it carries
        assert_eq!(store.apply(&effects("a1", "l1", "i1", 9.0, Some((1.0, 9.0)))).await.unwrap(), None);

        let applied = store.applied("a1").await.unwrap().unwrap();
        assert_eq!((applied.learner_id.as_str(), applied.item_id.as_str()), ("l1", "i1"));
        assert_eq!(applied.response.ability, 0.4);
        assert_eq!(store.abilities("l1").await.unwrap()["s1"], Estimate { value: 0.4, attempts: 1 });
        let calibration = store.calibration(&["i1".into(), "i2".into()]).await.unwrap();
        assert_eq!(calibration.len(), 1);
        assert!((calibration["i1"].value - 0.6).abs() < 1e-12, "initial 1.0 plus delta -0.4");
        assert_eq!(store.attempt_count("l1").await.unwrap(), 1);

        // A skill starts where the attempt says; later attempts only add their change.
        for (n, start) in [(1, 1.0), (2, 7.0)] {
            let first = AttemptEffects {
                ability_deltas: vec![("s2".into(), start, 0.25)],
                ..effects(&format!("b{n}"), "l1", "i2", 0.0, None)
            };
            assert!(store.apply(&first).await.unwrap().is_some());
        }
        assert_eq!(store.abilities("l1").await.unwrap()["s2"], Estimate { value: 1.5, attempts: 2 });
    })
    .await;
}

#[tokio::test]
async fn concurrent_attempts_add_up_instead_of_overwriting() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        let tasks: Vec<_> = (0..20)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    store.apply(&effects(&format!("a{n}"), "l1", "i1", 0.125, Some((0.0, 0.25)))).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().is_some());
        }
        let ability = store.abilities("l1").await.unwrap()["s1"];
        assert_eq!(ability, Estimate { value: 2.5, attempts: 20 });
        let difficulty = store.calibration(&["i1".into()]).await.unwrap()["i1"];
        assert_eq!(difficulty, Estimate { value: 5.0, attempts: 20 });
        assert_eq!(store.attempt_count("l1").await.unwrap(), 20);
        assert_eq!(store.attempt_count("l2").await.unwrap(), 0);
    })
    .await;
}

#[tokio::test]
async fn calibration_reads_large_id_lists_in_chunks() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        for n in 0..3 {
            store.apply(&effects(&format!("a{n}"), "l1", &format!("i{n}"), 0.0, Some((n as f64, 0.0)))).await.unwrap();
        }
        let ids: Vec<String> = (0..1200).map(|n| format!("i{n}")).collect();
        let found = store.calibration(&ids).await.unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!(found["i2"].value, 2.0);
    })
    .await;
}

#[tokio::test]
async fn practice_corrections_add_up_within_their_limit_and_the_success_rate_rolls() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        assert!(store.practice_target("l1").await.unwrap().is_none());
        let wrong = PracticeOutcome { correct: false, step: 0.008, limit: 0.15, start: 0.8 };
        let apply = |n: usize, practice: PracticeOutcome| {
            let store = store.clone();
            tokio::spawn(async move {
                let effects =
                    AttemptEffects { practice: Some(practice), ..effects(&format!("p{n}"), "l1", "i1", 0.0, None) };
                assert!(store.apply(&effects).await.unwrap().is_some());
            })
        };
        let tasks: Vec<_> = (0..10).map(|n| apply(n, wrong)).collect();
        for task in tasks {
            task.await.unwrap();
        }
        let target = store.practice_target("l1").await.unwrap().unwrap();
        assert_eq!(target.first_attempts, 10);
        assert!((target.correction - 0.08).abs() < 1e-9, "{target:?}");
        // Ten failures pull the rolling rate from 0.8 by 5 % each.
        assert!((target.rolling_success - 0.8 * 0.95f64.powi(10)).abs() < 1e-9, "{target:?}");

        let tasks: Vec<_> = (10..40).map(|n| apply(n, wrong)).collect();
        for task in tasks {
            task.await.unwrap();
        }
        let target = store.practice_target("l1").await.unwrap().unwrap();
        assert!((target.correction - 0.15).abs() < 1e-9, "held at the limit: {target:?}");
        apply(40, PracticeOutcome { correct: true, step: -0.002, ..wrong }).await.unwrap();
        let target = store.practice_target("l1").await.unwrap().unwrap();
        assert!((target.correction - 0.148).abs() < 1e-9, "comes back from the limit at once: {target:?}");
        assert!(store.practice_target("l2").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn reviews_are_counted_and_kept_as_histories_next_to_the_latest_fit() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        let answers = [
            ("r1", "i1", 10, Rating::Good, false, Some(0)),
            ("r2", "i1", 20, Rating::Again, true, Some(1)),
            ("r3", "i2", 15, Rating::Easy, false, Some(1)),
            ("r4", "i1", 30, Rating::Hard, true, Some(2)),
            ("r4", "i1", 30, Rating::Hard, true, None),
        ];
        for (attempt, item, at, rating, review, count) in answers {
            let e = AttemptEffects { rating, answer_ms: at, review, ..effects(attempt, "l1", item, 0.0, None) };
            assert_eq!(store.apply(&e).await.unwrap(), count, "{attempt}");
        }
        let histories = store.review_histories("l1").await.unwrap();
        let flat: Vec<Vec<(i64, Rating)>> =
            histories.iter().map(|h| h.iter().map(|r| (r.at_ms, r.rating)).collect()).collect();
        assert_eq!(
            flat,
            vec![vec![(10, Rating::Good), (20, Rating::Again), (30, Rating::Hard)], vec![(15, Rating::Easy)]]
        );
        assert!(store.review_histories("l2").await.unwrap().is_empty());

        assert!(store.parameter_fit("l1").await.unwrap().is_none());
        let fit = StoredFit {
            parameters: fsrs::DEFAULT_PARAMETERS.iter().map(|w| w * 1.1).collect(),
            kept: true,
            reviews: 812,
            holdout_reviews: 160,
            default_log_loss: 0.33,
            fitted_log_loss: 0.31,
            attempt_count: 1200,
            fit_time_ms: 1_700_000_000_000,
        };
        store.save_fit("l1", &fit).await.unwrap();
        assert_eq!(store.parameter_fit("l1").await.unwrap(), Some(fit.clone()), "parameters survive exactly");
        let later = StoredFit { kept: false, reviews: 1300, ..fit };
        store.save_fit("l1", &later).await.unwrap();
        assert_eq!(store.parameter_fit("l1").await.unwrap(), Some(later));
    })
    .await;
}
