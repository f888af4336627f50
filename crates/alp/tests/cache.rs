//! The suite against a real 6-node Redis Cluster: content items and learners' memory states
//! are served from the cache once read, an update or attempt is visible on the very next read, and without the cluster the service
//! answers from its database and reports Redis down on its health.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use alp::suite::{Databases, Settings};
use alp_proto::common::v1::Reason;
use alp_proto::content::v1::content_service_client::ContentServiceClient;
use alp_proto::content::v1::*;
use alp_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use alp_proto::scheduler::v1::submit_attempt_request::Outcome;
use alp_proto::scheduler::v1::{NextItemsRequest, SubmitAttemptRequest};
use alp_proto::user::v1::user_service_client::UserServiceClient;
use alp_proto::user::v1::{
    BatchGetLearnersRequest, CreateLearnerRequest, DeleteLearnerRequest, EnrolLearnerRequest, GetLearnerRequest,
    Learner, UpdateLearnerRequest,
};
use alp_runtime::cache::{Cache, CacheCounts};
use alp_runtime::redis::{Redis, RedisConfig};
use alp_runtime::testing::{RedisCluster, eventually};
use alp_scheduler::cache::{CachedMemoryStates, MEMORY_CACHE, memory_key};
use common::{cache_counts, channel};

fn item_counts(handle: &metrics_exporter_prometheus::PrometheusHandle) -> (u64, u64, u64) {
    cache_counts(handle, "items")
}

/// NextItems again and again: the learner's memory states and model come from the replicas'
/// own copies after the first time; an attempt is visible to the very next NextItems; a retried
/// attempt is answered from the cache.
async fn scheduler_reads_memory_from_the_cache(
    running: &common::Running,
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    redis: &RedisConfig,
) {
    let a = running.addresses;
    let mut content = ContentServiceClient::new(channel(a.content));
    let items =
        (2..6).map(|n| Item { item_id: format!("cached-{n}"), prompt: format!("card {n}"), ..item("") }).collect();
    content.upsert_items(UpsertItemsRequest { items }).await.unwrap();
    let mut user = UserServiceClient::new(channel(a.user));
    let learner = Learner { learner_id: "cacher".into(), ..Default::default() };
    user.create_learner(CreateLearnerRequest { learner: Some(learner) }).await.unwrap();
    user.enrol_learner(EnrolLearnerRequest { learner_id: "cacher".into(), course_id: "cache".into() }).await.unwrap();
    let mut scheduler = SchedulerServiceClient::new(channel(a.scheduler));
    let next =
        || NextItemsRequest { learner_id: "cacher".into(), course_id: "cache".into(), count: 10, ..Default::default() };

    let before = cache_counts(handle, "memory");
    scheduler.next_items(next()).await.unwrap();
    let first = cache_counts(handle, "memory");
    assert_eq!(first.2, before.2 + 1, "the first NextItems reads the scheduler's database");
    for _ in 0..3 {
        scheduler.next_items(next()).await.unwrap();
    }
    let repeated = cache_counts(handle, "memory");
    assert_eq!(repeated.0, first.0 + 3, "repeats come from the scheduler's own copy");
    assert_eq!(repeated.2, first.2, "and do not query the database");

    // Around it, the learner's profile comes from the user service's cache.
    let learners = cache_counts(handle, "learners");
    scheduler.next_items(next()).await.unwrap();
    assert!(cache_counts(handle, "learners").0 > learners.0, "the profile from the user service's cache");
    assert_eq!(cache_counts(handle, "learners").2, learners.2);
    let models = cache_counts(handle, "learner_models");
    scheduler.next_items(next()).await.unwrap();
    assert_eq!(cache_counts(handle, "learner_models").0, models.0 + 1, "the learner's model from scoring's copy");
    // BatchGetLearners (how the scheduler asks for profiles it has no copy of) reads the same cache.
    let batch_read = || BatchGetLearnersRequest { learner_ids: vec!["cacher".into(), "nobody".into()] };
    let cached = user.batch_get_learners(batch_read()).await.unwrap().into_inner();
    assert_eq!((cached.learners.len(), cached.missing_learner_ids), (1, vec!["nobody".to_owned()]));
    let renamed = Learner { learner_id: "cacher".into(), display_name: "Renamed".into(), ..Default::default() };
    let mask = prost_types::FieldMask { paths: vec!["display_name".into()] };
    user.update_learner(UpdateLearnerRequest { learner: Some(renamed), update_mask: Some(mask) }).await.unwrap();
    let fetched = user.get_learner(GetLearnerRequest { learner_id: "cacher".into() }).await.unwrap().into_inner();
    assert_eq!(fetched.learner.unwrap().display_name, "Renamed", "an update is never served stale");
    let batch = user.batch_get_learners(batch_read()).await.unwrap().into_inner();
    assert_eq!(batch.learners[0].display_name, "Renamed", "nor by BatchGetLearners");

    let submit = SubmitAttemptRequest {
        attempt_id: "cacher-1".into(),
        learner_id: "cacher".into(),
        item_id: "cached-1".into(),
        outcome: Some(Outcome::Correct(true)),
        ..Default::default()
    };
    // Another scheduler replica's copy of the states, read from Redis, is dropped by the attempt.
    let replica: Cache<CachedMemoryStates> =
        Cache::coherent(MEMORY_CACHE, Some(Redis::connect(redis, alp_scheduler::REDIS_PREFIX).unwrap()));
    let key = memory_key("cacher", "cache");
    eventually("the other replica's copy", || async { replica.get(&key).await.is_some() }).await;
    assert!(replica.get(&key).await.is_some_and(|states| states.rows.is_empty()));
    assert!(replica.counts().l1_hits > 0, "held in its L1");

    assert!(!scheduler.submit_attempt(submit.clone()).await.unwrap().into_inner().duplicate);
    eventually("the other replica dropping its copy", || async {
        replica.get(&key).await.is_none_or(|states| states.rows.iter().any(|r| r.item_id == "cached-1"))
    })
    .await;
    let misses = cache_counts(handle, "memory").2;
    let listed = scheduler.next_items(next()).await.unwrap().into_inner();
    let answered = listed.items.iter().find(|i| i.item_id == "cached-1").expect("the answered item is offered");
    assert_ne!(answered.reason, Reason::New as i32, "the attempt is seen at once: {answered:?}");
    assert_eq!(cache_counts(handle, "memory").2, misses + 1, "the attempt dropped the cached states");

    // A retry is found by the log's attempt id, and the learner's model came back to the cache
    // with the batch that applied the attempt.
    let models = cache_counts(handle, "learner_models");
    let retried = scheduler.submit_attempt(submit).await.unwrap().into_inner();
    assert!(retried.duplicate);
    assert_eq!(retried.attempt.unwrap().attempt_id, "cacher-1");
    // Written through by the batch: from scoring's copy, or from Redis once the batch's own
    // announcement has dropped that.
    let after = cache_counts(handle, "learner_models");
    assert_eq!(after.0 + after.1, models.0 + models.1 + 1, "evaluated from the cached model");
    assert_eq!(after.2, models.2, "without a miss");
}

/// The scheduler keeps a copy of each profile it reads and follows the user service's changes:
/// an enrolment made a moment ago is usable at once, and a deleted learner is refused within
/// the time an announcement takes.
async fn scheduler_follows_profile_changes(running: &common::Running) {
    let a = running.addresses;
    let mut content = ContentServiceClient::new(channel(a.content));
    let course = Course { course_id: "cache-2".into(), title: "Cache 2".into(), ..Default::default() };
    content.create_course(CreateCourseRequest { course: Some(course) }).await.unwrap();
    let mut user = UserServiceClient::new(channel(a.user));
    let learner = Learner { learner_id: "follower".into(), ..Default::default() };
    user.create_learner(CreateLearnerRequest { learner: Some(learner) }).await.unwrap();
    let enrol = |course: &str| EnrolLearnerRequest { learner_id: "follower".into(), course_id: course.into() };
    user.enrol_learner(enrol("cache")).await.unwrap();
    let mut scheduler = SchedulerServiceClient::new(channel(a.scheduler));
    let next = |course: &str| NextItemsRequest {
        learner_id: "follower".into(),
        course_id: course.into(),
        count: 3,
        ..Default::default()
    };
    scheduler.next_items(next("cache")).await.unwrap();
    // The copy made above lacks this enrolment.
    user.enrol_learner(enrol("cache-2")).await.unwrap();
    scheduler.next_items(next("cache-2")).await.expect("an enrolment is usable at once");

    user.delete_learner(DeleteLearnerRequest { learner_id: "follower".into() }).await.unwrap();
    // The copy would live ten minutes: only the announcement drops it within the bound.
    eventually("NextItems refusing the deleted learner", || {
        let mut scheduler = scheduler.clone();
        async move {
            matches!(scheduler.next_items(next("cache")).await, Err(status) if status.code() == tonic::Code::NotFound)
        }
    })
    .await;
}

/// The scheduler's copies of a course's items and skill graph follow content's announcements:
/// a new item, a retired one and a new prerequisite reach NextItems within 2 s, where the
/// copies' own refresh comes after 45-60 s (and 3.75-5 s without Redis); and so does its copy
/// of an item SubmitAttempt answers about.
async fn scheduler_follows_catalogue_changes(running: &common::Running) {
    let a = running.addresses;
    let mut content = ContentServiceClient::new(channel(a.content));
    let course = Course { course_id: "cache-3".into(), title: "Cache 3".into(), ..Default::default() };
    content.create_course(CreateCourseRequest { course: Some(course) }).await.unwrap();
    let skill = |id: &str| Skill { skill_id: id.into(), name: id.into(), ..Default::default() };
    let skills = vec![skill("letters"), skill("words")];
    content.upsert_skills(UpsertSkillsRequest { course_id: "cache-3".into(), skills }).await.unwrap();
    let card = |id: &str, skill: &str| Item {
        item_id: id.into(),
        course_id: "cache-3".into(),
        skill_ids: vec![skill.into()],
        ..item(id)
    };
    let items = vec![card("letter-a", "letters"), card("word-ab", "words")];
    content.upsert_items(UpsertItemsRequest { items }).await.unwrap();
    let mut user = UserServiceClient::new(channel(a.user));
    let learner = Learner { learner_id: "browser".into(), ..Default::default() };
    user.create_learner(CreateLearnerRequest { learner: Some(learner) }).await.unwrap();
    user.enrol_learner(EnrolLearnerRequest { learner_id: "browser".into(), course_id: "cache-3".into() })
        .await
        .unwrap();
    let scheduler = SchedulerServiceClient::new(channel(a.scheduler));
    let offered = || {
        let mut scheduler = scheduler.clone();
        async move {
            let next = NextItemsRequest {
                learner_id: "browser".into(),
                course_id: "cache-3".into(),
                count: 10,
                ..Default::default()
            };
            let items = scheduler.next_items(next).await.unwrap().into_inner().items;
            items.into_iter().map(|i| (i.item_id, i.explanation)).collect::<HashMap<_, _>>()
        }
    };
    let first = offered().await;
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(!first["word-ab"].contains("prerequisite"), "{first:?}");
    let within_2s = |what: &'static str, done: fn(&HashMap<String, String>) -> bool| async move {
        let started = std::time::Instant::now();
        while !done(&offered().await) {
            assert!(started.elapsed() < Duration::from_secs(2), "{what} did not reach NextItems within 2 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    let words = Skill { prerequisite_skill_ids: vec!["letters".into()], ..skill("words") };
    content.upsert_skills(UpsertSkillsRequest { course_id: "cache-3".into(), skills: vec![words] }).await.unwrap();
    within_2s("the new prerequisite", |o| o.get("word-ab").is_some_and(|e| e.contains("prerequisite letters"))).await;
    content.upsert_items(UpsertItemsRequest { items: vec![card("letter-b", "letters")] }).await.unwrap();
    within_2s("the new item", |o| o.contains_key("letter-b")).await;
    content.retire_item(RetireItemRequest { item_id: "letter-a".into() }).await.unwrap();
    within_2s("the retirement", |o| !o.contains_key("letter-a")).await;

    // SubmitAttempt's copy of an item follows too: made a two-choice question, the item's
    // guessing floor lifts the predicted success of an answer on it above 0.5, where wrong
    // answers keep a flashcard's at or below 0.5; an unfollowed copy would live ten minutes.
    let submit = |n: u32| SubmitAttemptRequest {
        attempt_id: format!("browser-{n}"),
        learner_id: "browser".into(),
        item_id: "letter-b".into(),
        outcome: Some(Outcome::Correct(false)),
        ..Default::default()
    };
    let predicted = |n: u32| {
        let mut scheduler = scheduler.clone();
        async move { scheduler.submit_attempt(submit(n)).await.unwrap().into_inner().attempt.unwrap().predicted_success }
    };
    let flashcard = predicted(0).await;
    let question = Item {
        kind: ItemKind::MultipleChoice as i32,
        choices: vec!["a".into(), "b".into()],
        answer: Some(AnswerKey { key: Some(answer_key::Key::ChoiceIndex(0)) }),
        ..card("letter-b", "letters")
    };
    content.upsert_items(UpsertItemsRequest { items: vec![question] }).await.unwrap();
    let started = std::time::Instant::now();
    for n in 1.. {
        if predicted(n).await > 0.5 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(2), "the change did not reach SubmitAttempt within 2 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(flashcard <= 0.5, "a flashcard the learner never saw: {flashcard}");
}

fn item(prompt: &str) -> Item {
    Item {
        item_id: "cached-1".into(),
        course_id: "cache".into(),
        kind: ItemKind::Flashcard as i32,
        prompt: prompt.into(),
        answer: Some(AnswerKey { key: Some(answer_key::Key::Text("back".into())) }),
        skill_ids: vec!["recall".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_reads_through_the_cache_and_never_serves_a_stale_copy() {
    let handle = alp_runtime::metrics::install().expect("a metrics recorder");
    let Some(mut cluster) = RedisCluster::start().await else { return };
    let redis = RedisConfig::for_nodes(&cluster.seeds()).unwrap();
    let settings = Settings { server: common::test_server_config(), redis: Some(redis.clone()), ..Settings::default() };
    let running = match alp_runtime::testing::postgres_admin_url() {
        Some(url) => common::start_with(common::postgres_databases(&url).await, None, settings).await,
        None => {
            let dir = tempfile::tempdir().unwrap();
            common::start_with(Databases::sqlite(dir.path()), Some(dir), settings).await
        }
    };
    let mut content = ContentServiceClient::new(channel(running.addresses.content));
    let course = Course { course_id: "cache".into(), title: "Cache".into(), ..Default::default() };
    content.create_course(CreateCourseRequest { course: Some(course) }).await.unwrap();
    let skill = Skill { skill_id: "recall".into(), name: "Recall".into(), ..Default::default() };
    content.upsert_skills(UpsertSkillsRequest { course_id: "cache".into(), skills: vec![skill] }).await.unwrap();
    content.upsert_items(UpsertItemsRequest { items: vec![item("first version")] }).await.unwrap();

    let get = || GetItemRequest { item_id: "cached-1".into() };
    let before = item_counts(&handle);
    let first = content.get_item(get()).await.unwrap().into_inner().item.unwrap();
    assert_eq!(first.prompt, "first version");
    let after_first = item_counts(&handle);
    assert_eq!(after_first.2, before.2 + 1, "the first read misses and goes to the database");
    for _ in 0..5 {
        assert_eq!(content.get_item(get()).await.unwrap().into_inner().item.unwrap(), first);
    }
    let after_repeats = item_counts(&handle);
    assert_eq!(after_repeats.0, after_first.0 + 5, "repeats are L1 hits");
    assert_eq!(after_repeats.2, after_first.2, "and never reach the database");

    // The copy in Redis serves a replica that has not read it yet.
    let replica: Cache<Item> =
        Cache::new(alp_content::ITEM_CACHE, Some(Redis::connect(&redis, alp_content::REDIS_PREFIX).unwrap()));
    let mut shared = None;
    for _ in 0..100 {
        shared = replica.get("cached-1").await;
        if shared.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(shared.as_ref(), Some(&first));
    assert_eq!(replica.counts().l2_hits, 1);

    // An update is visible on the very next read, here and on the other replica.
    content.upsert_items(UpsertItemsRequest { items: vec![item("second version")] }).await.unwrap();
    let updated = content.get_item(get()).await.unwrap().into_inner().item.unwrap();
    assert_eq!(updated.prompt, "second version");
    let batch = content
        .batch_get_items(BatchGetItemsRequest { item_ids: vec!["cached-1".into(), "nope".into()] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.items[0].prompt, "second version");
    assert_eq!(batch.missing_item_ids, vec!["nope".to_owned()]);
    let mut dropped = false;
    for _ in 0..100 {
        if replica.get("cached-1").await.is_none_or(|i| i.prompt == "second version") {
            dropped = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(dropped, "the other replica still serves the first version");
    let counts: CacheCounts = replica.counts();
    assert_eq!(counts.errors, 0, "{counts:?}");

    scheduler_reads_memory_from_the_cache(&running, &handle, &redis).await;
    scheduler_follows_profile_changes(&running).await;
    scheduler_follows_catalogue_changes(&running).await;

    // The whole cluster gone: content keeps answering from its database and says so on the
    // health entry of its Redis, while the service itself stays SERVING.
    let content_health = "alp.content.v1.ContentService";
    let redis_health = format!("{content_health}/redis");
    let health = || alp_runtime::client::check_serving(channel(running.addresses.content), &redis_health);
    assert!(health().await.is_ok(), "redis entry SERVING while connected");
    cluster.kill_all();
    let mut reported = false;
    for _ in 0..200 {
        if health().await.is_err() {
            reported = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reported, "health never reported Redis down");
    assert!(alp_runtime::client::check_serving(channel(running.addresses.content), content_health).await.is_ok());
    let mut fresh = item("written while Redis is down");
    fresh.item_id = "cached-2".into();
    content.upsert_items(UpsertItemsRequest { items: vec![fresh] }).await.unwrap();
    let read = content.get_item(GetItemRequest { item_id: "cached-2".into() }).await.unwrap().into_inner();
    assert_eq!(read.item.unwrap().prompt, "written while Redis is down");
    // Practice goes on from the databases.
    let mut scheduler = SchedulerServiceClient::new(channel(running.addresses.scheduler));
    let next =
        NextItemsRequest { learner_id: "cacher".into(), course_id: "cache".into(), count: 3, ..Default::default() };
    let offered = scheduler.next_items(next).await.unwrap().into_inner();
    assert!(!offered.items.is_empty() && !offered.degraded, "{offered:?}");
    let submit = SubmitAttemptRequest {
        attempt_id: "cacher-2".into(),
        learner_id: "cacher".into(),
        item_id: offered.items[0].item_id.clone(),
        outcome: Some(Outcome::Correct(true)),
        ..Default::default()
    };
    assert!(!scheduler.submit_attempt(submit).await.unwrap().into_inner().duplicate);
    running.shutdown().await;
}
