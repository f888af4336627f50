//! The scoring store's contract, the same on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alp_proto::common::v1::Rating;
use alp_runtime::testing::{eventually, on_every_backend};
use std::collections::HashMap;

use alp_scoring::{Calibrations, Estimate, MIGRATIONS, PracticePolicy, Recorded, ScoringStore, StoredFit};

const PRACTICE: PracticePolicy = PracticePolicy { step_correct: -0.002, step_wrong: 0.008, limit: 0.15, start: 0.8 };

/// A learner's first answer to an item of skill s1, open-ended (no guessing).
fn first(attempt: &str, learner: &str, item: &str, correct: bool) -> Recorded {
    Recorded {
        attempt_id: attempt.into(),
        learner_id: learner.into(),
        item_id: item.into(),
        skill_ids: vec!["s1".into()],
        initial_difficulty: 0.0,
        guess: 0.0,
        rating: if correct { Rating::Good } else { Rating::Again },
        correct,
        first: true,
        mock_test: false,
        answer_ms: 0,
    }
}

/// Every calibration, read in pages of `page` rows, each row once.
async fn calibrations(store: &ScoringStore, page: usize) -> HashMap<String, Estimate> {
    let mut found = HashMap::new();
    let mut after: Option<(i64, String)> = None;
    loop {
        let rows = store.calibrations_after(after.as_ref().map(|(v, id)| (*v, id.as_str())), page).await.unwrap();
        let Some(last) = rows.last() else { return found };
        after = Some((last.version, last.item_id.clone()));
        for row in rows {
            assert!(found.insert(row.item_id.clone(), row.estimate).is_none(), "{} read twice", row.item_id);
        }
    }
}

#[tokio::test]
async fn an_attempt_is_applied_once_however_often_it_arrives() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        let a1 = first("a1", "l1", "i1", true);
        let applied = store.apply_batch(&[a1.clone(), a1.clone()], &PRACTICE).await.unwrap();
        assert_eq!((applied.applied, applied.duplicates), (vec!["a1".to_owned()], 1), "a repeat within a batch");
        assert_eq!(applied.learners.len(), 1, "the learner's state after the batch, for the cache");
        assert_eq!(applied.learners[0].learner_id, "l1");
        assert_eq!(applied.learners[0].abilities["s1"], Estimate { value: 0.4, attempts: 1 });
        assert_eq!(applied.learners[0].practice.unwrap().first_attempts, 1);
        let again = store.apply_batch(&[a1], &PRACTICE).await.unwrap();
        assert_eq!((again.applied.len(), again.duplicates), (0, 1), "a batch delivered again changes nothing");

        // Even odds: the step is K(0)·(1 − 0.5) = 0.4 each way.
        assert_eq!(store.learner_models("l1").await.unwrap().abilities["s1"], Estimate { value: 0.4, attempts: 1 });
        let calibration = calibrations(&store, 100).await;
        assert_eq!(calibration.len(), 1, "items answered, no others");
        assert_eq!(calibration["i1"], Estimate { value: -0.4, attempts: 1 });
        assert_eq!(store.attempt_count("l1").await.unwrap(), 1);
        let target = store.learner_models("l1").await.unwrap().practice.unwrap();
        assert_eq!(target.first_attempts, 1);
    })
    .await;
}

#[tokio::test]
async fn a_batch_gives_the_models_that_its_attempts_one_by_one_give() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        // The same 30 answers twice, under two prefixes: in two batches, and one at a time.
        let attempts = |p: &str| -> Vec<Recorded> {
            (0..30)
                .map(|n| first(&format!("{p}a{n}"), &format!("{p}l{}", n % 4), &format!("{p}i{}", n % 3), n % 5 != 0))
                .collect()
        };
        let batched = attempts("b-");
        store.apply_batch(&batched[..10], &PRACTICE).await.unwrap();
        store.apply_batch(&batched[10..], &PRACTICE).await.unwrap();
        for attempt in attempts("s-") {
            store.apply_batch(&[attempt], &PRACTICE).await.unwrap();
        }
        for l in 0..4 {
            let b = store.learner_models(&format!("b-l{l}")).await.unwrap().abilities["s1"];
            let s = store.learner_models(&format!("s-l{l}")).await.unwrap().abilities["s1"];
            assert_eq!(b.attempts, s.attempts);
            assert!((b.value - s.value).abs() < 1e-9, "l{l}: {b:?} vs {s:?}");
            let (bt, st) = (
                store.learner_models(&format!("b-l{l}")).await.unwrap().practice.unwrap(),
                store.learner_models(&format!("s-l{l}")).await.unwrap().practice.unwrap(),
            );
            assert!((bt.correction - st.correction).abs() < 1e-9 && bt.first_attempts == st.first_attempts);
        }
        let found = calibrations(&store, 100).await;
        for i in 0..3 {
            let ids = [format!("b-i{i}"), format!("s-i{i}")];
            assert_eq!(found[&ids[0]].attempts, 10);
            assert!((found[&ids[0]].value - found[&ids[1]].value).abs() < 1e-9, "i{i}");
        }
    })
    .await;
}

#[tokio::test]
async fn concurrent_batches_lose_no_update() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        let tasks: Vec<_> = (0..8)
            .map(|b| {
                let store = store.clone();
                tokio::spawn(async move {
                    let batch: Vec<Recorded> =
                        (0..5).map(|n| first(&format!("b{b}-{n}"), "l1", &format!("i{b}-{n}"), true)).collect();
                    store.apply_batch(&batch, &PRACTICE).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().applied.len(), 5);
        }
        assert_eq!(store.learner_models("l1").await.unwrap().abilities["s1"].attempts, 40);
        assert_eq!(store.learner_models("l1").await.unwrap().practice.unwrap().first_attempts, 40);
        assert_eq!(store.attempt_count("l1").await.unwrap(), 40);
    })
    .await;
}

#[tokio::test]
async fn large_batches_and_id_lists_go_in_chunks() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        let batch: Vec<Recorded> = (0..1500)
            .map(|n| Recorded {
                skill_ids: (0..3).map(|s| format!("s{s}")).collect(),
                ..first(&format!("a{n}"), &format!("l{}", n % 700), &format!("i{n}"), n % 2 == 0)
            })
            .collect();
        let applied = store.apply_batch(&batch, &PRACTICE).await.unwrap();
        assert_eq!(applied.applied.len(), 1500);
        assert_eq!(calibrations(&store, 100).await.len(), 1500, "read in pages");
        assert_eq!(store.learner_models("l0").await.unwrap().abilities["s2"].attempts, 3);
    })
    .await;
}

#[tokio::test]
async fn each_replica_ranks_with_every_batchs_calibrations() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        store.apply_batch(&[first("a0", "l0", "i0", true)], &PRACTICE).await.unwrap();
        let (here, there) = (Calibrations::load(&store).await.unwrap(), Calibrations::load(&store).await.unwrap());
        let difficulties = |c: &Calibrations| c.difficulties([("i0", 9.0), ("i1", 9.0), ("i2", 9.0)]);
        assert_eq!(difficulties(&here), [-0.4, 9.0, 9.0], "loaded at start; the initial difficulty where none");

        // Batches from eight replicas at once, each moving i1 and an item of its own.
        let tasks: Vec<_> = (0..8)
            .map(|b| {
                let store = store.clone();
                tokio::spawn(async move {
                    let batch = [first(&format!("b{b}"), "l1", "i1", true), first(&format!("c{b}"), "l1", "i2", b < 4)];
                    store.apply_batch(&batch, &PRACTICE).await.unwrap()
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        let mut versions: Vec<i64> = outcomes.iter().map(|o| o.calibrations[0].version).collect();
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), 8, "each batch has a version of its own");

        // `here` applied the batches (in the order they finished, not their versions');
        // `there` reads them from the database.
        for outcome in outcomes.into_iter().rev() {
            here.applied(outcome.calibrations);
        }
        assert_eq!(difficulties(&there)[1], 9.0, "not read yet");
        there.catch_up(&store).await.unwrap();
        let latest = calibrations(&store, 100).await;
        let expected = [latest["i0"].value, latest["i1"].value, latest["i2"].value];
        assert_eq!(latest["i1"].attempts, 8);
        assert_eq!(difficulties(&here), expected, "the newest version wins whatever the order");
        assert_eq!(difficulties(&there), expected);

        store.apply_batch(&[first("a9", "l9", "i0", false)], &PRACTICE).await.unwrap();
        there.catch_up(&store).await.unwrap();
        assert!(difficulties(&there)[0] > expected[0], "a later batch is read past the last one");
    })
    .await;
}

/// The refresh is a background task on a real database, so this waits for it.
#[tokio::test]
async fn a_replica_reads_other_replicas_batches_in_the_background() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        let calibrations = Calibrations::load(&store).await.unwrap();
        calibrations.follow(store.clone());
        store.apply_batch(&[first("a0", "l0", "i0", true)], &PRACTICE).await.unwrap();
        assert_eq!(calibrations.difficulties([("i0", 9.0)]), [9.0]);
        let read = || async { calibrations.difficulties([("i0", 9.0)]) == [-0.4] };
        eventually("the refresh reads the batch", read).await;
    })
    .await;
}

#[tokio::test]
async fn practice_corrections_add_up_within_their_limit_and_the_success_rate_rolls() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        assert!(store.learner_models("l1").await.unwrap().practice.is_none());
        let wrong = |n: usize| first(&format!("p{n}"), "l1", &format!("i{n}"), false);
        store.apply_batch(&(0..10).map(wrong).collect::<Vec<_>>(), &PRACTICE).await.unwrap();
        let target = store.learner_models("l1").await.unwrap().practice.unwrap();
        assert_eq!(target.first_attempts, 10);
        assert!((target.correction - 0.08).abs() < 1e-9, "{target:?}");
        // Ten failures pull the rolling rate from 0.8 by 5 % each.
        assert!((target.rolling_success - 0.8 * 0.95f64.powi(10)).abs() < 1e-9, "{target:?}");

        store.apply_batch(&(10..40).map(wrong).collect::<Vec<_>>(), &PRACTICE).await.unwrap();
        let target = store.learner_models("l1").await.unwrap().practice.unwrap();
        assert!((target.correction - 0.15).abs() < 1e-9, "held at the limit: {target:?}");
        store.apply_batch(&[first("p40", "l1", "i40", true)], &PRACTICE).await.unwrap();
        let target = store.learner_models("l1").await.unwrap().practice.unwrap();
        assert!((target.correction - 0.148).abs() < 1e-9, "comes back from the limit at once: {target:?}");
        // A mock test measures: it leaves the practice target alone.
        store.apply_batch(&[Recorded { mock_test: true, ..first("m1", "l1", "i41", true) }], &PRACTICE).await.unwrap();
        assert_eq!(store.learner_models("l1").await.unwrap().practice.unwrap().first_attempts, 41);
        assert!(store.learner_models("l2").await.unwrap().practice.is_none());
    })
    .await;
}

#[tokio::test]
async fn reviews_are_counted_and_kept_as_histories_next_to_the_latest_fit() {
    on_every_backend("scoring", MIGRATIONS, |db| async move {
        let store = ScoringStore::new(db);
        let answers = [
            ("r1", "i1", 10, Rating::Good, false, None),
            ("r2", "i1", 20, Rating::Again, true, Some(1)),
            ("r3", "i2", 15, Rating::Easy, false, None),
            ("r4", "i1", 30, Rating::Hard, true, Some(2)),
            ("r4", "i1", 30, Rating::Hard, true, None),
        ];
        for (attempt, item, at, rating, review, count) in answers {
            let recorded = Recorded { rating, answer_ms: at, first: !review, ..first(attempt, "l1", item, true) };
            let applied = store.apply_batch(&[recorded], &PRACTICE).await.unwrap();
            assert_eq!(applied.reviews.get("l1").copied(), count, "{attempt}");
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
        assert_eq!(store.parameter_fit("l1").await.unwrap(), Some(later.clone()));

        // The whole model in one read: every skill, each with the target and the fit beside it.
        let skills = Recorded { skill_ids: vec!["s1".into(), "s2".into()], ..first("r5", "l1", "i3", true) };
        store.apply_batch(&[skills], &PRACTICE).await.unwrap();
        let models = store.learner_models("l1").await.unwrap();
        assert_eq!((models.abilities.len(), models.abilities["s2"].attempts), (2, 1));
        assert_eq!(models.practice.unwrap().first_attempts, 3);
        assert_eq!(models.fit, Some(later.clone()));
        store.save_fit("l3", &later).await.unwrap();
        let fitted_only = store.learner_models("l3").await.unwrap();
        assert!(fitted_only.abilities.is_empty() && fitted_only.practice.is_none());
        assert_eq!(fitted_only.fit, Some(later));
        assert_eq!(
            store.learner_models("nobody").await.unwrap(),
            alp_scoring::LearnerModels { learner_id: "nobody".into(), ..Default::default() }
        );
    })
    .await;
}
