//! The scheduler store's contract, the same on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use alp_runtime::testing::on_every_backend;
use alp_scheduler::cache::SchedulerCaches;
use alp_scheduler::{
    AttemptRecord, AttemptRow, Consumer, ExportFilter, GroupCommit, GroupCommitConfig, MIGRATIONS, MemoryRow,
    SchedulerStore,
};

fn attempt(id: &str, learner: &str, item: &str, record_ms: i64) -> AttemptRow {
    AttemptRow {
        attempt_id: id.into(),
        learner_id: learner.into(),
        course_id: "math".into(),
        item_id: item.into(),
        rating: 3,
        correct: true,
        response_ms: 2500,
        answer_ms: record_ms - 100,
        record_ms,
        stability: 2.0,
        difficulty: 5.0,
        due_ms: record_ms + 86_400_000,
        predicted_recall: 0.0,
        predicted_success: 0.7,
        mock_test_id: String::new(),
    }
}

fn memory(item: &str, due_ms: i64, lapses: i64) -> MemoryRow {
    MemoryRow {
        item_id: item.into(),
        course_id: "math".into(),
        stability: 2.0,
        difficulty: 5.0,
        last_review_ms: due_ms - 1000,
        due_ms,
        last_rating: 3,
        review_count: 1,
        lapse_count: lapses,
        phase: 2,
        step: 0,
        knowledge: Some(1.25),
    }
}

/// The attempt's outbox rows: its id as scoring's row, the id reversed as the user service's.
fn outbox(attempt: &AttemptRow) -> Vec<(Consumer, Vec<u8>)> {
    let id = attempt.attempt_id.as_bytes();
    vec![(Consumer::Scoring, id.to_vec()), (Consumer::User, id.iter().rev().copied().collect())]
}

async fn record(store: &SchedulerStore, id: &str, learner: &str, item: &str, at: i64, lapses: i64) -> bool {
    let row = attempt(id, learner, item, at);
    let record = AttemptRecord { memory: memory(item, row.due_ms, lapses), outbox: outbox(&row), attempt: row };
    store.record(&record).await.unwrap().is_some()
}

#[tokio::test]
async fn an_attempt_id_is_recorded_once_with_its_memory_state_and_outbox_event() {
    on_every_backend("scheduler", MIGRATIONS, |db| async move {
        let store = SchedulerStore::new(db);
        assert!(record(&store, "a1", "l1", "i1", 1_000_000, 0).await);
        assert!(!record(&store, "a1", "l1", "i1", 2_000_000, 1).await, "a retry writes nothing");

        let stored = store.attempt("a1").await.unwrap().unwrap();
        assert_eq!(stored.record_ms, 1_000_000);
        assert_eq!(store.outbox_depth(Consumer::Scoring).await.unwrap(), 1);
        assert_eq!(store.outbox_depth(Consumer::User).await.unwrap(), 1);
        let state = store.memory_state("l1", "i1").await.unwrap().unwrap();
        assert_eq!((state.review_count, state.lapse_count), (1, 0));
        assert_eq!(state.knowledge, Some(1.25));
        assert_eq!(stored.mock_test_id, "");

        // a second attempt at the item advances the state and counts the lapse
        assert!(record(&store, "a2", "l1", "i1", 3_000_000, 1).await);
        let state = store.memory_state("l1", "i1").await.unwrap().unwrap();
        assert_eq!(
            (state.review_count, state.lapse_count, state.last_review_ms),
            (2, 1, 3_000_000 + 86_400_000 - 1000)
        );
        assert!(store.memory_state("l1", "i9").await.unwrap().is_none());
    })
    .await;
}

fn attempt_record(id: &str, learner: &str, item: &str, at: i64) -> AttemptRecord {
    let row = attempt(id, learner, item, at);
    AttemptRecord { memory: memory(item, row.due_ms, 0), outbox: outbox(&row), attempt: row }
}

#[tokio::test]
async fn a_batch_records_each_attempt_once_in_order_even_when_they_collide() {
    on_every_backend("scheduler", MIGRATIONS, |db| async move {
        let store = SchedulerStore::new(db);
        assert!(store.record(&attempt_record("old", "l9", "i9", 500)).await.unwrap().is_some());
        let batch = [
            attempt_record("a1", "l1", "i1", 1_000),
            attempt_record("a2", "l1", "i2", 2_000),
            attempt_record("a1", "l1", "i3", 3_000),
            attempt_record("a3", "l1", "i1", 4_000),
            attempt_record("old", "l9", "i9", 5_000),
            attempt_record("a4", "l2", "i1", 6_000),
            attempt_record("a5", "l1", "i1", 7_000),
        ];
        let written = store.record_many(&batch).await.unwrap();
        let recorded: Vec<bool> = written.iter().map(Option::is_some).collect();
        assert_eq!(recorded, [true, true, false, true, false, true, true], "a repeated id writes nothing");
        let seqs: Vec<i64> = written.iter().flatten().flatten().copied().collect();
        let distinct: std::collections::HashSet<i64> = seqs.iter().copied().collect();
        assert_eq!((seqs.len(), distinct.len()), (10, 10), "two outbox rows per recorded attempt");
        assert_eq!(store.outbox_depth(Consumer::Scoring).await.unwrap(), 6);
        assert_eq!(store.attempt("a1").await.unwrap().unwrap().item_id, "i1", "the first of a repeated id");
        // Three answers of l1 to i1 in one batch: each counted, the last one's state kept.
        let state = store.memory_state("l1", "i1").await.unwrap().unwrap();
        assert_eq!((state.review_count, state.last_review_ms), (3, 7_000 + 86_400_000 - 1000));
        // Each record's rows in its own order: scoring's row carries the id, the user's it reversed.
        let scoring = store.outbox_batch(Consumer::Scoring, 10, i64::MAX).await.unwrap();
        let a3 = written[3].as_ref().unwrap();
        assert!(scoring.iter().any(|(seq, event)| *seq == a3[0] && event == b"a3"));
    })
    .await;
}

#[tokio::test]
async fn memory_states_are_read_by_learner_and_item_together() {
    on_every_backend("scheduler", MIGRATIONS, |db| async move {
        let store = SchedulerStore::new(db);
        for (id, learner, item, lapses) in [("a1", "l1", "i1", 0), ("a2", "l1", "i2", 1), ("a3", "l2", "i1", 2)] {
            assert!(record(&store, id, learner, item, 1_000, lapses).await);
        }
        let pair = |l: &str, i: &str| (l.to_owned(), i.to_owned());
        let wanted = [pair("l1", "i2"), pair("l2", "i1"), pair("l1", "i9"), pair("l3", "i1")];
        let found = store.memory_states_of(&wanted).await.unwrap();
        let mut lapses: Vec<_> = found.iter().map(|((l, i), m)| (l.as_str(), i.as_str(), m.lapse_count)).collect();
        lapses.sort_unstable();
        assert_eq!(lapses, [("l1", "i2", 1), ("l2", "i1", 2)], "pairs without a state are absent");
        assert!(store.memory_states_of(&[]).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn concurrent_records_share_commits_and_a_bad_one_fails_alone() {
    on_every_backend("scheduler", MIGRATIONS, |db| async move {
        let store = SchedulerStore::new(db);
        let writer = GroupCommit::new(
            store.clone(),
            SchedulerCaches::new(None),
            GroupCommitConfig { max_in_flight: 1, ..Default::default() },
        );
        let records: Vec<AttemptRecord> = (0..20)
            .map(|n| {
                let record = attempt_record(&format!("a{n}"), &format!("l{n}"), "i1", 1_000 + n);
                // An attempt without outbox rows is refused.
                if n == 7 { AttemptRecord { outbox: Vec::new(), ..record } } else { record }
            })
            .collect();
        let written = futures::future::join_all(records.into_iter().map(|r| writer.record(r))).await;
        for (n, result) in written.iter().enumerate() {
            match n {
                7 => assert!(result.is_err(), "the bad record fails"),
                _ => assert!(result.as_ref().unwrap().is_some(), "record {n} is written"),
            }
        }
        let (batches, records) = writer.written();
        assert_eq!(records, 20);
        assert!(batches < 20, "records waiting together share a batch: {batches} batches");
        assert_eq!(store.outbox_depth(Consumer::User).await.unwrap(), 19);
        assert!(store.attempt("a7").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn due_items_come_soonest_first_and_page_by_cursor() {
    on_every_backend("scheduler", MIGRATIONS, |db| async move {
        let store = SchedulerStore::new(db);
        // due times: i1 and i2 tie, i3 later, i4 not yet due; another learner's item is invisible
        for (n, (item, at)) in [("i3", 3_000), ("i2", 1_000), ("i1", 1_000), ("i4", 9_000)].iter().enumerate() {
            assert!(record(&store, &format!("a{n}"), "l1", item, at - 86_400_000, 0).await);
        }
        assert!(record(&store, "b1", "l2", "i1", 0, 0).await);

        let all: Vec<String> =
            store.memory_states("l1", "math").await.unwrap().into_iter().map(|m| m.item_id).collect();
        assert_eq!(all, ["i1", "i2", "i3", "i4"]);
        let first = store.due_items("l1", "", 5_000, None, 2).await.unwrap();
        assert_eq!(first.iter().map(|m| m.item_id.as_str()).collect::<Vec<_>>(), ["i1", "i2"]);
        let cursor = first.last().map(|m| (m.due_ms, m.item_id.clone()));
        let rest = store.due_items("l1", "math", 5_000, cursor, 2).await.unwrap();
        assert_eq!(rest.iter().map(|m| m.item_id.as_str()).collect::<Vec<_>>(), ["i3"]);
        assert!(store.due_items("l1", "lang", 5_000, None, 10).await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn export_pages_in_recording_order_with_filters() {
    on_every_backend("scheduler", MIGRATIONS, |db| async move {
        let store = SchedulerStore::new(db);
        for n in 0..5 {
            let learner = if n % 2 == 0 { "l1" } else { "l2" };
            assert!(record(&store, &format!("a{n}"), learner, &format!("i{n}"), 1_000 * (n + 1), 0).await);
        }
        let everything = ExportFilter { end_ms: i64::MAX, ..ExportFilter::default() };
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let page = store.export(&everything, after, 2).await.unwrap();
            let Some((last, _)) = page.last() else { break };
            after = *last;
            seen.extend(page.into_iter().map(|(_, a)| a.attempt_id));
        }
        assert_eq!(seen, ["a0", "a1", "a2", "a3", "a4"]);

        let l1 = ExportFilter { learner_id: "l1".into(), start_ms: 2_000, end_ms: 5_000, ..ExportFilter::default() };
        let ids: Vec<String> = store.export(&l1, 0, 10).await.unwrap().into_iter().map(|(_, a)| a.attempt_id).collect();
        assert_eq!(ids, ["a2"], "start inclusive, end exclusive");
    })
    .await;
}

#[tokio::test]
async fn each_consumer_gets_its_own_rows_oldest_first_until_deleted() {
    on_every_backend("scheduler", MIGRATIONS, |db| async move {
        let store = SchedulerStore::new(db);
        for n in 0..3 {
            assert!(record(&store, &format!("a{n}"), "l1", &format!("i{n}"), 1_000 + n, 0).await);
        }
        let batch = store.outbox_batch(Consumer::Scoring, 2, i64::MAX).await.unwrap();
        let rows: Vec<&[u8]> = batch.iter().map(|(_, e)| e.as_slice()).collect();
        assert_eq!(rows, [b"a0", b"a1"]);
        store.outbox_delete(Consumer::Scoring, &batch.iter().map(|(seq, _)| *seq).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(store.outbox_depth(Consumer::Scoring).await.unwrap(), 1);
        assert_eq!(store.outbox_depth(Consumer::User).await.unwrap(), 3, "the other consumer's rows stay");
        let rest = store.outbox_batch(Consumer::Scoring, 10, i64::MAX).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].1, b"a2");
        let user = store.outbox_batch(Consumer::User, 10, i64::MAX).await.unwrap();
        assert_eq!(user.iter().map(|(_, e)| e.as_slice()).collect::<Vec<_>>(), [b"0a", b"1a", b"2a"]);
        assert!(store.outbox_batch(Consumer::User, 10, 1_000).await.unwrap().is_empty(), "recorded before 1000: none");
        store.outbox_delete(Consumer::User, &[]).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_mock_tests_answers_come_back_in_order_apart_from_practice_and_other_tests() {
    on_every_backend("scheduler", MIGRATIONS, |db| async move {
        let store = SchedulerStore::new(db);
        let answer = |id: &str, learner: &str, item: &str, at: i64, test: &str, correct: bool| {
            let row = AttemptRow { mock_test_id: test.into(), correct, ..attempt(id, learner, item, at) };
            let record = AttemptRecord { memory: memory(item, row.due_ms, 0), outbox: outbox(&row), attempt: row };
            let store = store.clone();
            async move { assert!(store.record(&record).await.unwrap().is_some()) }
        };
        answer("a1", "l1", "i1", 1_000, "t1", true).await;
        answer("a2", "l1", "i2", 2_000, "", false).await;
        answer("a3", "l1", "i3", 3_000, "t1", false).await;
        answer("a4", "l1", "i4", 4_000, "t2", true).await;
        answer("a5", "l2", "i5", 5_000, "t1", true).await;
        let answers = store.mock_test_answers("l1", "t1").await.unwrap();
        assert_eq!(answers, vec![("i1".to_owned(), true), ("i3".to_owned(), false)]);
        assert!(store.mock_test_answers("l1", "").await.unwrap().is_empty(), "practice is no test");
        assert_eq!(store.attempt("a3").await.unwrap().unwrap().mock_test_id, "t1");
    })
    .await;
}
