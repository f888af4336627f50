//! End to end through real gRPC: every RPC of the contract, on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use alp_proto::common::v1::{MemoryPhase, MemoryState, Mode, Rating, Reason};
use alp_proto::content::v1::content_service_client::ContentServiceClient;
use alp_proto::content::v1::*;
use alp_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use alp_proto::scheduler::v1::submit_attempt_request::Outcome;
use alp_proto::scheduler::v1::*;
use alp_proto::scoring::v1::scoring_service_client::ScoringServiceClient;
use alp_proto::scoring::v1::*;
use alp_proto::user::v1::user_service_client::UserServiceClient;
use alp_proto::user::v1::*;
use common::{Running, channel};
use tonic::Code;

struct Clients {
    content_channel: tonic::transport::Channel,
    content: ContentServiceClient<tonic::transport::Channel>,
    user: UserServiceClient<tonic::transport::Channel>,
    scoring: ScoringServiceClient<tonic::transport::Channel>,
    scheduler: SchedulerServiceClient<tonic::transport::Channel>,
}

impl Clients {
    fn new(running: &Running) -> Self {
        let a = running.addresses;
        Self {
            content_channel: channel(a.content),
            content: ContentServiceClient::new(channel(a.content)),
            user: UserServiceClient::new(channel(a.user)),
            scoring: ScoringServiceClient::new(channel(a.scoring)),
            scheduler: SchedulerServiceClient::new(channel(a.scheduler)),
        }
    }
}

fn assert_invalid(status: tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with(field), "message {:?} should name {field}", status.message());
}

fn submit(attempt_id: &str, learner: &str, item: &str, correct: bool) -> SubmitAttemptRequest {
    SubmitAttemptRequest {
        attempt_id: attempt_id.into(),
        learner_id: learner.into(),
        item_id: item.into(),
        outcome: Some(Outcome::Correct(correct)),
        response_time: Some(prost_types::Duration { seconds: 3, nanos: 0 }),
        answer_time: None,
        mock_test_id: String::new(),
    }
}

async fn content_rpcs(c: &mut Clients) {
    assert!(alp::seed::demo_course(c.content_channel.clone()).await.unwrap());
    assert!(!alp::seed::demo_course(c.content_channel.clone()).await.unwrap(), "seeding twice is a no-op");

    let dup = c
        .content
        .create_course(CreateCourseRequest {
            course: Some(Course { course_id: "arithmetic".into(), title: "Again".into(), ..Default::default() }),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let course = c.content.get_course(GetCourseRequest { course_id: "arithmetic".into() }).await.unwrap().into_inner();
    assert_eq!(course.course.unwrap().title, "Arithmetic basics");
    let missing = c.content.get_course(GetCourseRequest { course_id: "nope".into() }).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("course") && missing.message().contains("nope"));
    let courses = c.content.list_courses(ListCoursesRequest::default()).await.unwrap().into_inner();
    assert_eq!(courses.courses.len(), 1);

    // A cycle is refused and changes nothing.
    let cycle = c
        .content
        .upsert_skills(UpsertSkillsRequest {
            course_id: "arithmetic".into(),
            skills: vec![Skill {
                skill_id: "addition".into(),
                name: "Addition".into(),
                prerequisite_skill_ids: vec!["fractions".into()],
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(cycle.code(), Code::FailedPrecondition, "{cycle:?}");
    let skills = c
        .content
        .list_skills(ListSkillsRequest { course_id: "arithmetic".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .skills;
    assert_eq!(skills.len(), 4);
    let addition = skills.iter().find(|s| s.skill_id == "addition").unwrap();
    assert!(addition.prerequisite_skill_ids.is_empty());
    let fractions = skills.iter().find(|s| s.skill_id == "fractions").unwrap();
    assert_eq!(fractions.prerequisite_skill_ids, vec!["multiplication", "subtraction"]);

    // One bad item rejects the whole batch and writes nothing.
    let good = Item {
        item_id: "new-ok".into(),
        course_id: "arithmetic".into(),
        kind: ItemKind::Flashcard as i32,
        prompt: "2 + 2?".into(),
        answer: Some(AnswerKey { key: Some(answer_key::Key::Text("4".into())) }),
        skill_ids: vec!["addition".into()],
        ..Default::default()
    };
    let bad = Item { item_id: "new-bad".into(), choices: vec!["x".into()], ..good.clone() };
    let err = c.content.upsert_items(UpsertItemsRequest { items: vec![good.clone(), bad] }).await.unwrap_err();
    assert_invalid(err, "items[1].choices");
    let err = c.content.get_item(GetItemRequest { item_id: "new-ok".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let upserted = c.content.upsert_items(UpsertItemsRequest { items: vec![good.clone()] }).await.unwrap().into_inner();
    assert_eq!((upserted.created_count, upserted.updated_count), (1, 0));
    let again = c.content.upsert_items(UpsertItemsRequest { items: vec![good] }).await.unwrap().into_inner();
    assert_eq!((again.created_count, again.updated_count), (0, 1));
    assert_eq!(again.items[0].version, 2);

    let batch = c
        .content
        .batch_get_items(BatchGetItemsRequest { item_ids: vec!["add-1".into(), "ghost".into(), "add-1".into()] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.items.len(), 1);
    assert_eq!(batch.missing_item_ids, vec!["ghost"]);

    // Pages of 4 over 15 items: 4 + 4 + 4 + 3, stable order, no repeats.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .content
            .list_items(ListItemsRequest {
                course_id: "arithmetic".into(),
                page_size: 4,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.items.into_iter().map(|i| i.item_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 15);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted);

    let retired = c.content.retire_item(RetireItemRequest { item_id: "new-ok".into() }).await.unwrap().into_inner();
    assert!(retired.item.unwrap().retired);
    // The course's item list was read (and cached) above: the retired item leaves it at once.
    let listed = c
        .content
        .list_items(ListItemsRequest { course_id: "arithmetic".into(), page_size: 100, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.items.len(), 14);
    assert!(listed.items.iter().all(|i| i.item_id != "new-ok"));

    let hits = c
        .content
        .search_items(SearchItemsRequest { query: "fractions half".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert_eq!(hits.first().and_then(|h| h.item.as_ref()).map(|i| i.item_id.as_str()), Some("frac-1"));
    let filtered = c
        .content
        .search_items(SearchItemsRequest {
            query: "which fraction".into(),
            course_id: "arithmetic".into(),
            skill_id: "fractions".into(),
            kind: ItemKind::MultipleChoice as i32,
            tag: "fractions".into(),
            min_difficulty: Some(0.5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .hits;
    let ids: Vec<_> = filtered.iter().map(|h| h.item.as_ref().unwrap().item_id.as_str()).collect();
    assert_eq!(ids, vec!["frac-4"]);
    let page_one = c
        .content
        .search_items(SearchItemsRequest { query: "fraction".into(), page_size: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page_one.hits.len(), 2);
    let page_two = c
        .content
        .search_items(SearchItemsRequest {
            query: "fraction".into(),
            page_size: 2,
            page_token: page_one.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!page_two.hits.is_empty());
    assert!(page_two.hits.iter().all(|h| !page_one.hits.contains(h)), "pages do not overlap");
    let err = c
        .content
        .search_items(SearchItemsRequest {
            query: "decimal".into(),
            page_token: page_one.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(err, "page_token");
    let retired_hit = c
        .content
        .search_items(SearchItemsRequest { query: "2 + 2".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .hits;
    assert!(retired_hit.iter().all(|h| h.item.as_ref().unwrap().item_id != "new-ok"), "retired items are not found");
    for query in ["?!", "what is the"] {
        let err =
            c.content.search_items(SearchItemsRequest { query: query.into(), ..Default::default() }).await.unwrap_err();
        assert_invalid(err, "query");
    }
}

async fn user_rpcs(c: &mut Clients) {
    let ada = c
        .user
        .create_learner(CreateLearnerRequest {
            learner: Some(Learner { learner_id: "ada".into(), display_name: "Ada".into(), ..Default::default() }),
        })
        .await
        .unwrap()
        .into_inner()
        .learner
        .unwrap();
    assert_eq!(ada.desired_retention, 0.9);
    assert_eq!(ada.locale, "en");
    let generated = c.user.create_learner(CreateLearnerRequest { learner: Some(Learner::default()) }).await.unwrap();
    let generated_id = generated.into_inner().learner.unwrap().learner_id;
    assert_eq!(generated_id.len(), 36);

    let err = c
        .user
        .create_learner(CreateLearnerRequest {
            learner: Some(Learner { learner_id: "eve".into(), desired_retention: 0.5, ..Default::default() }),
        })
        .await
        .unwrap_err();
    assert_invalid(err, "learner.desired_retention");
    let err = c.user.get_learner(GetLearnerRequest { learner_id: "eve".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "a rejected create writes nothing");

    let updated = c
        .user
        .update_learner(UpdateLearnerRequest {
            learner: Some(Learner {
                learner_id: "ada".into(),
                desired_retention: 0.85,
                display_name: "ignored".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["desired_retention".into()] }),
        })
        .await
        .unwrap()
        .into_inner()
        .learner
        .unwrap();
    assert_eq!((updated.desired_retention, updated.display_name.as_str()), (0.85, "Ada"));
    let err = c
        .user
        .update_learner(UpdateLearnerRequest {
            learner: Some(Learner { learner_id: "ada".into(), ..Default::default() }),
            update_mask: Some(prost_types::FieldMask { paths: vec!["learner_id".into()] }),
        })
        .await
        .unwrap_err();
    assert_invalid(err, "update_mask.paths[0]");

    let enrolled = c
        .user
        .enrol_learner(EnrolLearnerRequest { learner_id: "ada".into(), course_id: "arithmetic".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!enrolled.already_enrolled);
    let twice = c
        .user
        .enrol_learner(EnrolLearnerRequest { learner_id: "ada".into(), course_id: "arithmetic".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(twice.already_enrolled);
    let err = c
        .user
        .enrol_learner(EnrolLearnerRequest { learner_id: "ada".into(), course_id: "no-such-course".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("course"));

    let batch = c
        .user
        .batch_get_learners(BatchGetLearnersRequest { learner_ids: vec!["ada".into(), "zed".into()] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.learners[0].enrolments[0].course_id, "arithmetic");
    assert_eq!(batch.missing_learner_ids, vec!["zed"]);
    let listed =
        c.user.list_learners(ListLearnersRequest { page_size: 1, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(listed.learners.len(), 1);
    assert!(!listed.next_page_token.is_empty());

    c.user.delete_learner(DeleteLearnerRequest { learner_id: generated_id.clone() }).await.unwrap();
    let err = c.user.delete_learner(DeleteLearnerRequest { learner_id: generated_id }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

async fn scoring_rpcs(c: &mut Clients) {
    let now = alp_runtime::time::timestamp(alp_runtime::time::now_millis());
    let evaluate = EvaluateAttemptRequest {
        attempt_id: "direct-1".into(),
        learner_id: "grace".into(),
        item_id: "mul-1".into(),
        skill_ids: vec!["multiplication".into()],
        initial_difficulty: -1.0,
        rating: Rating::Good as i32,
        correct: true,
        answer_time: Some(now),
        ..Default::default()
    };
    let evaluated = c.scoring.evaluate_attempt(evaluate.clone()).await.unwrap().into_inner();
    assert!(evaluated.memory.is_some() && evaluated.due_time.is_some());
    assert!(evaluated.predicted_success > 0.5, "an easy item for a new learner");
    let again = c.scoring.evaluate_attempt(evaluate.clone()).await.unwrap().into_inner();
    assert_eq!(again, evaluated, "evaluation writes nothing, so it gives the same answer twice");
    let err = c.scoring.evaluate_attempt(EvaluateAttemptRequest { answer_time: None, ..evaluate }).await.unwrap_err();
    assert_invalid(err, "answer_time");

    let recorded = RecordedAttempt {
        attempt_id: "direct-1".into(),
        learner_id: "grace".into(),
        item_id: "mul-1".into(),
        skill_ids: vec!["multiplication".into()],
        initial_difficulty: -1.0,
        rating: Rating::Good as i32,
        correct: true,
        first_attempt: true,
        answer_time: Some(now),
        ..Default::default()
    };
    let batch = |attempts: Vec<RecordedAttempt>| ApplyAttemptsRequest { attempts };
    let applied = c.scoring.apply_attempts(batch(vec![recorded.clone()])).await.unwrap().into_inner();
    assert_eq!((applied.applied_count, applied.duplicate_count), (1, 0));
    let replayed =
        c.scoring.apply_attempts(batch(vec![recorded.clone(), recorded.clone()])).await.unwrap().into_inner();
    assert_eq!((replayed.applied_count, replayed.duplicate_count), (0, 2), "applied once, however often sent");
    let bad = RecordedAttempt { learner_id: String::new(), ..recorded.clone() };
    let err = c.scoring.apply_attempts(batch(vec![recorded, bad])).await.unwrap_err();
    assert_invalid(err, "attempts[1].learner_id");
    let err = c.scoring.apply_attempts(batch(Vec::new())).await.unwrap_err();
    assert_invalid(err, "attempts");

    let model =
        c.scoring.get_learner_model(GetLearnerModelRequest { learner_id: "grace".into() }).await.unwrap().into_inner();
    let model = model.model.unwrap();
    assert_eq!(model.attempt_count, 1);
    assert_eq!(model.fsrs_parameters.len(), 21);
    assert_eq!(model.skills[0].skill_id, "multiplication");
    assert!(model.skills[0].ability > 0.0, "a correct first answer raised the ability");
    assert!(!model.parameters_fitted && model.last_fit.is_none());
    let early =
        c.scoring.fit_learner_parameters(FitLearnerParametersRequest { learner_id: "grace".into() }).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
    assert!(early.message().contains("at least 400"), "{}", early.message());

    let now = alp_runtime::time::now_millis();
    let recall = c
        .scoring
        .predict_recall(PredictRecallRequest {
            learner_id: "grace".into(),
            queries: vec![RecallQuery {
                item_id: "mul-1".into(),
                memory: Some(MemoryState { stability: 10.0, difficulty: 5.0, ..Default::default() }),
                last_review_time: Some(alp_runtime::time::timestamp(now - 10 * 86_400_000)),
            }],
            at: Some(alp_runtime::time::timestamp(now)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!((recall.predictions[0].recall - 0.9).abs() < 1e-3);

    let scored = c
        .scoring
        .score_candidates(ScoreCandidatesRequest {
            learner_id: "grace".into(),
            candidates: vec![
                Candidate { item_id: "a".into(), skill_ids: vec!["x".into()], ..Default::default() },
                Candidate {
                    item_id: "b".into(),
                    memory: Some(MemoryState { stability: 1.0, difficulty: 5.0, ..Default::default() }),
                    last_review_time: Some(alp_runtime::time::timestamp(now - 30 * 86_400_000)),
                    ..Default::default()
                },
            ],
            mode: Mode::Practice as i32,
            count: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let order: Vec<_> = scored.items.iter().map(|i| (i.item_id.as_str(), i.reason)).collect();
    assert_eq!(order, vec![("b", Reason::DueReview as i32), ("a", Reason::New as i32)]);
    let err = c
        .scoring
        .score_candidates(ScoreCandidatesRequest { learner_id: "grace".into(), count: 1, ..Default::default() })
        .await
        .unwrap_err();
    assert_invalid(err, "candidates");

    // Each bad entry is named by its place in the request.
    let fine = |id: &str| Candidate { item_id: id.into(), skill_ids: vec!["x".into()], ..Default::default() };
    let seen = Candidate {
        memory: Some(MemoryState { stability: 1.0, difficulty: 5.0, ..Default::default() }),
        last_review_time: Some(alp_runtime::time::timestamp(now)),
        ..fine("b")
    };
    let bad_requests = [
        (
            vec![fine("a"), Candidate { skill_ids: vec!["x".into(), "no spaces".into()], ..fine("b") }],
            vec![],
            "candidates[1].skill_ids[1]",
        ),
        (
            vec![Candidate {
                memory: Some(MemoryState { stability: -1.0, difficulty: 5.0, ..Default::default() }),
                ..seen.clone()
            }],
            vec![],
            "candidates[0].memory.stability",
        ),
        (
            vec![
                fine("a"),
                Candidate { last_review_time: Some(prost_types::Timestamp { seconds: 0, nanos: -1 }), ..seen },
            ],
            vec![],
            "candidates[1].last_review_time",
        ),
        (
            vec![fine("a")],
            vec![SkillPrerequisites { skill_id: "x".into(), prerequisite_skill_ids: vec!["y".into(), String::new()] }],
            "skill_graph[0].prerequisite_skill_ids[1]",
        ),
    ];
    for (candidates, skill_graph, field) in bad_requests {
        let request = ScoreCandidatesRequest {
            learner_id: "grace".into(),
            candidates,
            skill_graph,
            count: 1,
            ..Default::default()
        };
        assert_invalid(c.scoring.score_candidates(request).await.unwrap_err(), field);
    }
}

async fn scheduler_rpcs(c: &mut Clients) {
    let next = c
        .scheduler
        .next_items(NextItemsRequest {
            learner_id: "ada".into(),
            course_id: "arithmetic".into(),
            count: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!next.degraded);
    assert_eq!(next.items.len(), 3);
    assert!(
        next.items.iter().all(|i| i.reason == Reason::New as i32 && i.predicted_success > 0.0 && !i.prompt.is_empty())
    );
    assert!(next.items.iter().all(|i| i.explanation.starts_with("new item: predicted success")), "{:?}", next.items);
    // Every other skill needs addition first: the prerequisite gate holds them back.
    assert!(next.items.iter().all(|i| i.skill_ids == ["addition"]), "{:?}", next.items);
    let err = c
        .scheduler
        .next_items(NextItemsRequest {
            learner_id: "ada".into(),
            course_id: "arithmetic".into(),
            count: 500,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_invalid(err, "count");
    let err = c
        .scheduler
        .next_items(NextItemsRequest {
            learner_id: "nobody".into(),
            course_id: "arithmetic".into(),
            count: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("learner"));

    let first = c.scheduler.submit_attempt(submit("ada-1", "ada", "add-1", false)).await.unwrap().into_inner();
    assert!(!first.duplicate);
    let attempt = first.attempt.unwrap();
    assert_eq!(attempt.rating, Rating::Again as i32);
    let retry = c.scheduler.submit_attempt(submit("ada-1", "ada", "add-1", false)).await.unwrap().into_inner();
    assert!(retry.duplicate);
    assert_eq!(retry.attempt.unwrap(), attempt, "a retry answers with the first recording");
    let reuse = c.scheduler.submit_attempt(submit("ada-1", "ada", "add-2", true)).await.unwrap_err();
    assert_eq!(reuse.code(), Code::AlreadyExists);
    let err = c
        .scheduler
        .submit_attempt(SubmitAttemptRequest { outcome: None, ..submit("ada-2", "ada", "add-2", true) })
        .await
        .unwrap_err();
    assert_invalid(err, "outcome");
    let err = c.scheduler.submit_attempt(submit("ada-3", "ada", "ghost", true)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    c.scheduler.submit_attempt(submit("ada-4", "ada", "sub-1", true)).await.unwrap();
    // Read your writes: scoring learns of answers from the outbox, and the learner's next
    // NextItems ranks with them, so once it has answered scoring has applied both.
    c.scheduler
        .next_items(NextItemsRequest { learner_id: "ada".into(), course_id: "arithmetic".into(), ..Default::default() })
        .await
        .unwrap();
    let model = c.scoring.get_learner_model(GetLearnerModelRequest { learner_id: "ada".into() }).await.unwrap();
    assert_eq!(model.into_inner().model.unwrap().attempt_count, 2, "ada-1 and ada-4 applied before NextItems ranked");

    // New items go through the learning steps: the failed one is due again in a minute, the
    // correct one in ten; neither is due yet.
    let in_an_hour = alp_runtime::time::timestamp(alp_runtime::time::now_millis() + 3_600_000);
    let due = c
        .scheduler
        .list_due_items(ListDueItemsRequest {
            learner_id: "ada".into(),
            due_before: Some(in_an_hour),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(due.items.iter().map(|d| d.item_id.as_str()).collect::<Vec<_>>(), vec!["add-1", "sub-1"]);
    let phases: Vec<i32> = due.items.iter().map(|d| d.memory.unwrap_or_default().phase).collect();
    assert_eq!(phases, vec![MemoryPhase::Learning as i32; 2]);
    let now_due = c
        .scheduler
        .list_due_items(ListDueItemsRequest { learner_id: "ada".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(now_due.items.is_empty());
    let ghost = c
        .scheduler
        .list_due_items(ListDueItemsRequest { learner_id: "ghost".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!((ghost.code(), ghost.message()), (Code::NotFound, "learner \"ghost\" not found"));

    let mut stream = c
        .scheduler
        .export_attempts(ExportAttemptsRequest { learner_id: "ada".into(), batch_size: 1, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut exported = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        exported.extend(batch.attempts.into_iter().map(|a| a.attempt_id));
    }
    assert_eq!(exported, vec!["ada-1", "ada-4"], "each attempt once, in recording order");

    // Progress arrives through the outbox, once per attempt id.
    let progress = wait_for_progress(c, "ada", 2).await;
    assert_eq!((progress.attempt_count, progress.correct_count, progress.items_seen), (2, 1, 2));
    let replayed = c
        .user
        .record_progress(RecordProgressRequest {
            events: vec![ProgressEvent {
                attempt_id: "ada-1".into(),
                learner_id: "ada".into(),
                course_id: "arithmetic".into(),
                item_id: "add-1".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((replayed.applied_count, replayed.duplicate_count), (0, 1));
    let event = |skill: &str| ProgressEvent {
        attempt_id: "ada-9".into(),
        learner_id: "ada".into(),
        course_id: "arithmetic".into(),
        item_id: "add-1".into(),
        skill_ids: vec!["addition".into(), skill.into()],
        ..Default::default()
    };
    let err = c
        .user
        .record_progress(RecordProgressRequest { events: vec![event("addition"), event("bad skill")] })
        .await
        .unwrap_err();
    assert_invalid(err, "events[1].skill_ids[1]");
}

/// Waits (bounded, 10 s) until the learner's course progress counts `attempts`.
async fn wait_for_progress(c: &mut Clients, learner: &str, attempts: i64) -> CourseProgress {
    for _ in 0..200 {
        let progress = c
            .user
            .get_progress(GetProgressRequest { learner_id: learner.into(), course_id: "arithmetic".into() })
            .await
            .unwrap()
            .into_inner();
        if let Some(course) = progress.courses.into_iter().next().filter(|p| p.attempt_count >= attempts) {
            return course;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("progress of {learner} never reached {attempts} attempts");
}

/// A whole mock test: items chosen one by one, never twice, until the stopping rule ends it
/// with an estimate.
async fn mock_test_rpcs(c: &mut Clients) {
    let request = |mode: Mode, id: &str| NextItemsRequest {
        learner_id: "ada".into(),
        course_id: "arithmetic".into(),
        count: 1,
        mode: mode as i32,
        mock_test_id: id.into(),
    };
    let err = c.scheduler.next_items(request(Mode::MockTest, "")).await.unwrap_err();
    assert_invalid(err, "mock_test_id");
    assert!(err_message(c.scheduler.next_items(request(Mode::MockTest, "")).await).contains("MOCK_TEST"));
    let err = c.scheduler.next_items(request(Mode::Practice, "exam-1")).await.unwrap_err();
    assert_invalid(err, "mock_test_id");

    let mut asked: Vec<String> = Vec::new();
    let estimate = loop {
        let next = c.scheduler.next_items(request(Mode::MockTest, "exam-1")).await.unwrap().into_inner();
        let estimate = next.mock_test.unwrap_or_else(|| panic!("no estimate: {}", next.degraded_reason));
        assert_eq!(estimate.answered as usize, asked.len());
        if estimate.finished {
            assert!(next.items.is_empty());
            break estimate;
        }
        assert!(asked.len() < 30, "the test must stop");
        let item = &next.items[0];
        assert_eq!(item.reason, Reason::MockTest as i32);
        assert!(item.explanation.starts_with("mock test: information"), "{}", item.explanation);
        assert!(!asked.contains(&item.item_id), "{} asked twice", item.item_id);
        // Right and wrong in turn: the estimate has something to find.
        let correct = asked.len().is_multiple_of(2);
        let attempt = SubmitAttemptRequest {
            mock_test_id: "exam-1".into(),
            ..submit(&format!("exam-1-{}", asked.len()), "ada", &item.item_id, correct)
        };
        let recorded = c.scheduler.submit_attempt(attempt).await.unwrap().into_inner();
        assert_eq!(recorded.attempt.unwrap().mock_test_id, "exam-1");
        asked.push(item.item_id.clone());
    };
    assert!(estimate.status.starts_with("finished"), "{}", estimate.status);
    assert!(estimate.standard_error > 0.0 && estimate.standard_error < 1.0, "{estimate:?}");
    assert!(estimate.ability.abs() < 3.0, "{estimate:?}");
    // Another test starts afresh.
    let other = c.scheduler.next_items(request(Mode::MockTest, "exam-2")).await.unwrap().into_inner();
    assert_eq!(other.mock_test.unwrap().answered, 0);
    assert_eq!(other.items.len(), 1);
}

fn err_message<T>(result: Result<T, tonic::Status>) -> String {
    match result {
        Ok(_) => String::new(),
        Err(status) => status.message().to_owned(),
    }
}

async fn every_rpc(running: Running) {
    let mut clients = Clients::new(&running);
    content_rpcs(&mut clients).await;
    user_rpcs(&mut clients).await;
    scoring_rpcs(&mut clients).await;
    scheduler_rpcs(&mut clients).await;
    mock_test_rpcs(&mut clients).await;
    running.shutdown().await;
}

/// The embedded set-up of `alp dev`: SQLite, caches in process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works_over_grpc_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    every_rpc(common::start_with(alp::suite::Databases::sqlite(dir.path()), Some(dir), slow_outbox()).await).await;
}

/// Batches that wait a second for company: NextItems must not wait for them to read its writes.
fn slow_outbox() -> alp::suite::Settings {
    alp::suite::Settings {
        server: common::test_server_config(),
        outbox: alp_scheduler::RelayConfig { max_delay: Duration::from_secs(1), ..Default::default() },
        ..alp::suite::Settings::default()
    }
}

/// The production set-up: PostgreSQL and a 6-node Redis Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_works_over_grpc_on_postgres_and_redis() {
    let Some(admin) = alp_runtime::testing::postgres_admin_url() else { return };
    let Some(cluster) = alp_runtime::testing::RedisCluster::start().await else { return };
    let databases = common::postgres_databases(&admin).await;
    let redis = alp_runtime::redis::RedisConfig::for_nodes(&cluster.seeds()).unwrap();
    let settings = alp::suite::Settings { redis: Some(redis), ..slow_outbox() };
    every_rpc(common::start_with(databases, None, settings).await).await;
    drop(cluster);
}
