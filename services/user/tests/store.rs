//! The user store's contract, the same on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alp_proto::user::v1::{Learner, ProgressEvent};
use alp_runtime::testing::on_every_backend;
use alp_runtime::time::timestamp;
use alp_user::{LearnerChanges, MIGRATIONS, RecordOutcome, UserError, UserStore};

fn learner(id: &str) -> Learner {
    Learner {
        learner_id: id.into(),
        display_name: format!("Learner {id}"),
        email: format!("{id}@example.org"),
        locale: "en".into(),
        desired_retention: 0.9,
        ..Learner::default()
    }
}

fn event(attempt: &str, learner: &str, course: &str, skills: &[&str], correct: bool, first: bool) -> ProgressEvent {
    ProgressEvent {
        attempt_id: attempt.into(),
        learner_id: learner.into(),
        course_id: course.into(),
        item_id: format!("item-{attempt}"),
        skill_ids: skills.iter().map(|s| (*s).to_owned()).collect(),
        correct,
        first_attempt: first,
        answer_time: Some(timestamp(1_700_000_000_000)),
    }
}

#[tokio::test]
async fn learners_are_created_once_updated_in_part_and_listed_in_order() {
    on_every_backend("user", MIGRATIONS, |db| async move {
        let store = UserStore::new(db);
        for id in ["l2", "l1", "l3"] {
            store.create_learner(&learner(id)).await.unwrap();
        }
        let again = store.create_learner(&learner("l1")).await.unwrap_err();
        assert!(matches!(again, UserError::AlreadyExists { entity: "learner", .. }), "{again:?}");

        let changes =
            LearnerChanges { locale: Some("pt-BR".into()), desired_retention: Some(0.85), ..Default::default() };
        let updated = store.update_learner("l2", &changes).await.unwrap().unwrap();
        assert_eq!((updated.locale.as_str(), updated.desired_retention), ("pt-BR", 0.85));
        assert_eq!(updated.display_name, "Learner l2", "fields not in the change keep their value");
        assert!(store.update_learner("nope", &changes).await.unwrap().is_none());

        let mut batch: Vec<String> = store
            .get_learners(&["l3".into(), "nope".into(), "l1".into()])
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.learner_id)
            .collect();
        batch.sort();
        assert_eq!(batch, ["l1", "l3"]);

        let page: Vec<String> = store.list_learners("", 2).await.unwrap().into_iter().map(|l| l.learner_id).collect();
        assert_eq!(page, ["l1", "l2"]);
        let rest: Vec<String> = store.list_learners("l2", 2).await.unwrap().into_iter().map(|l| l.learner_id).collect();
        assert_eq!(rest, ["l3"]);
    })
    .await;
}

#[tokio::test]
async fn enrolment_is_idempotent_and_needs_a_learner() {
    on_every_backend("user", MIGRATIONS, |db| async move {
        let store = UserStore::new(db);
        store.create_learner(&learner("l1")).await.unwrap();
        let (first, existed) = store.enrol("l1", "math").await.unwrap();
        assert!(!existed);
        let (second, existed) = store.enrol("l1", "math").await.unwrap();
        assert!(existed);
        assert_eq!(first.enrol_time, second.enrol_time, "the first enrolment time is kept");
        store.enrol("l1", "lang").await.unwrap();
        let missing = store.enrol("nope", "math").await.unwrap_err();
        assert!(matches!(missing, UserError::NotFound { entity: "learner", .. }), "{missing:?}");

        let courses: Vec<String> =
            store.get_learner("l1").await.unwrap().unwrap().enrolments.into_iter().map(|e| e.course_id).collect();
        assert_eq!(courses, ["lang", "math"]);
        store.create_learner(&learner("l2")).await.unwrap();
        store.create_learner(&learner("l3")).await.unwrap();
        store.enrol("l3", "math").await.unwrap();
        let batch: Vec<(String, Vec<String>)> = store
            .get_learners(&["l3".into(), "l2".into(), "l1".into()])
            .await
            .unwrap()
            .into_iter()
            .map(|l| (l.learner_id, l.enrolments.into_iter().map(|e| e.course_id).collect()))
            .collect();
        let expected = [("l1", vec!["lang", "math"]), ("l2", vec![]), ("l3", vec!["math"])];
        let expected: Vec<(String, Vec<String>)> =
            expected.into_iter().map(|(l, c)| (l.to_owned(), c.into_iter().map(str::to_owned).collect())).collect();
        assert_eq!(batch, expected, "each learner with their own enrolments");
        let zero = store.progress("l1", "math").await.unwrap();
        assert_eq!(zero.len(), 1);
        assert_eq!((zero[0].attempt_count, zero[0].accuracy), (0, 0.0));
        assert!(zero[0].last_attempt_time.is_none());
    })
    .await;
}

#[tokio::test]
async fn progress_counts_each_attempt_once() {
    on_every_backend("user", MIGRATIONS, |db| async move {
        let store = UserStore::new(db);
        store.create_learner(&learner("l1")).await.unwrap();
        store.enrol("l1", "math").await.unwrap();
        let batch = [
            event("a1", "l1", "math", &["add"], true, true),
            event("a2", "l1", "math", &["add", "sub"], false, true),
            event("a3", "l1", "math", &["add"], true, false),
            event("a4", "ghost", "math", &["add"], true, true),
        ];
        let outcome = store.record_progress(&batch).await.unwrap();
        assert_eq!(outcome, RecordOutcome { applied: 3, duplicates: 0, unknown_learners: 1 });
        // redelivery of the same batch (an outbox retry) changes nothing
        let replay = store.record_progress(&batch[..3]).await.unwrap();
        assert_eq!(replay, RecordOutcome { applied: 0, duplicates: 3, unknown_learners: 0 });

        let math = store.progress("l1", "").await.unwrap().pop().unwrap();
        assert_eq!((math.attempt_count, math.correct_count, math.items_seen), (3, 2, 2));
        assert!((math.accuracy - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(math.last_attempt_time, Some(timestamp(1_700_000_000_000)));
        let skills: Vec<(String, i64, i64)> =
            math.skills.into_iter().map(|s| (s.skill_id, s.attempt_count, s.correct_count)).collect();
        assert_eq!(skills, [("add".into(), 3, 2), ("sub".into(), 1, 0)]);
    })
    .await;
}

#[tokio::test]
async fn deleting_a_learner_removes_their_enrolments_and_progress() {
    on_every_backend("user", MIGRATIONS, |db| async move {
        let store = UserStore::new(db);
        store.create_learner(&learner("l1")).await.unwrap();
        store.enrol("l1", "math").await.unwrap();
        store.record_progress(&[event("a1", "l1", "math", &["add"], true, true)]).await.unwrap();

        assert!(store.delete_learner("l1").await.unwrap());
        assert!(!store.delete_learner("l1").await.unwrap());
        assert!(store.get_learner("l1").await.unwrap().is_none());

        // the id can be used again, starting from nothing
        store.create_learner(&learner("l1")).await.unwrap();
        store.enrol("l1", "math").await.unwrap();
        assert_eq!(store.progress("l1", "math").await.unwrap()[0].attempt_count, 0);
        let outcome = store.record_progress(&[event("a1", "l1", "math", &["add"], true, true)]).await.unwrap();
        assert_eq!(outcome.applied, 1, "the deleted learner's attempt ids are forgotten too");
    })
    .await;
}
