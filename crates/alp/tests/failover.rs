//! A Redis primary dies under a steady stream of NextItems and SubmitAttempt: the cluster
//! promotes its replica, the suite keeps answering from its databases meanwhile and goes back to
//! the cache by itself, and every acknowledged attempt is recorded exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alp::suite::{Databases, Settings};
use alp_proto::content::v1::content_service_client::ContentServiceClient;
use alp_proto::content::v1::*;
use alp_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use alp_proto::scheduler::v1::submit_attempt_request::Outcome;
use alp_proto::scheduler::v1::{ExportAttemptsRequest, NextItemsRequest, SubmitAttemptRequest};
use alp_proto::user::v1::user_service_client::UserServiceClient;
use alp_proto::user::v1::{CreateLearnerRequest, EnrolLearnerRequest, Learner};
use alp_runtime::cache::Cache;
use alp_runtime::redis::{Redis, RedisConfig};
use alp_runtime::testing::RedisCluster;
use alp_scheduler::cache::{CachedMemoryStates, MEMORY_CACHE, memory_key};
use common::{cache_counts, channel};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

const COURSE: &str = "failover";
const LEARNERS: usize = 4;

/// What the clients saw: calls, failed calls by code (each retried), and the attempts the
/// suite acknowledged.
#[derive(Debug, Default)]
struct Tally {
    calls: usize,
    failures: BTreeMap<String, usize>,
    gave_up: usize,
    acknowledged: Vec<String>,
    slowest: Duration,
}

/// Calls `call` until it succeeds, up to 20 times; every failure is counted.
async fn with_retries<T, F, Fut>(tally: &Mutex<Tally>, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    for attempt in 0..20 {
        let started = Instant::now();
        let result = call().await;
        {
            let mut t = tally.lock().unwrap();
            t.calls += 1;
            t.slowest = t.slowest.max(started.elapsed());
            match result {
                Ok(value) => return Some(value),
                Err(status) => {
                    *t.failures.entry(format!("{:?}", status.code())).or_default() += 1;
                    assert!(
                        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Aborted),
                        "a failure the client cannot retry: {status:?}"
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
    }
    tally.lock().unwrap().gave_up += 1;
    None
}

async fn learn(
    learner: String,
    scheduler: SchedulerServiceClient<Channel>,
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
) {
    let mut n = 0;
    while !stop.is_cancelled() {
        let request =
            NextItemsRequest { learner_id: learner.clone(), course_id: COURSE.into(), count: 1, ..Default::default() };
        let Some(next) = with_retries(&tally, || {
            let mut s = scheduler.clone();
            let r = request.clone();
            async move { s.next_items(r).await.map(tonic::Response::into_inner) }
        })
        .await
        else {
            continue;
        };
        let Some(item) = next.items.first() else { continue };
        n += 1;
        let submit = SubmitAttemptRequest {
            attempt_id: format!("{learner}-{n}"),
            learner_id: learner.clone(),
            item_id: item.item_id.clone(),
            outcome: Some(Outcome::Correct(n % 3 != 0)),
            ..Default::default()
        };
        let acknowledged = with_retries(&tally, || {
            let mut s = scheduler.clone();
            let r = submit.clone();
            async move { s.submit_attempt(r).await.map(tonic::Response::into_inner) }
        })
        .await;
        if let Some(response) = acknowledged {
            tally.lock().unwrap().acknowledged.push(response.attempt.unwrap().attempt_id);
        }
    }
}

async fn set_up(running: &common::Running) {
    let a = running.addresses;
    let mut content = ContentServiceClient::new(channel(a.content));
    let course = Course { course_id: COURSE.into(), title: "Failover".into(), ..Default::default() };
    content.create_course(CreateCourseRequest { course: Some(course) }).await.unwrap();
    let skill = Skill { skill_id: "steady".into(), name: "Steady".into(), ..Default::default() };
    content.upsert_skills(UpsertSkillsRequest { course_id: COURSE.into(), skills: vec![skill] }).await.unwrap();
    let items = (0..40)
        .map(|n| Item {
            item_id: format!("f-{n}"),
            course_id: COURSE.into(),
            kind: ItemKind::Flashcard as i32,
            prompt: format!("card {n}"),
            answer: Some(AnswerKey { key: Some(answer_key::Key::Text("back".into())) }),
            skill_ids: vec!["steady".into()],
            ..Default::default()
        })
        .collect();
    content.upsert_items(UpsertItemsRequest { items }).await.unwrap();
    let mut user = UserServiceClient::new(channel(a.user));
    for l in 0..LEARNERS {
        let learner = Learner { learner_id: format!("steady-{l}"), ..Default::default() };
        user.create_learner(CreateLearnerRequest { learner: Some(learner) }).await.unwrap();
        user.enrol_learner(EnrolLearnerRequest { learner_id: format!("steady-{l}"), course_id: COURSE.into() })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_dies_under_load_and_no_attempt_is_lost_or_doubled() {
    let metrics = alp_runtime::metrics::install().expect("a metrics recorder");
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
    set_up(&running).await;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = CancellationToken::new();
    let scheduler = SchedulerServiceClient::new(channel(running.addresses.scheduler));
    let learners: Vec<_> = (0..LEARNERS)
        .map(|l| tokio::spawn(learn(format!("steady-{l}"), scheduler.clone(), tally.clone(), stop.clone())))
        .collect();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kill = tally.lock().unwrap().calls;
    let primary = cluster.primaries()[0];
    cluster.kill(primary);
    let killed_at = Instant::now();
    // The replica takes over within a few seconds; the load goes on throughout.
    let mut promoted = None;
    while killed_at.elapsed() < Duration::from_secs(20) {
        let primaries = cluster.primaries();
        if primaries.len() == 3 && !primaries.contains(&primary) {
            promoted = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let promoted = promoted.expect("the replica was promoted");
    cluster.wait_until_healthy().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = tally.lock().unwrap().calls - before_kill;
    stop.cancel();
    for learner in learners {
        learner.await.unwrap();
    }

    let tally = Arc::try_unwrap(tally).unwrap().into_inner().unwrap();
    let report = format!(
        "failover: replica promoted after {promoted:?}; {} calls ({during} after the kill), failed and retried: {:?}, \
         given up: {}, slowest call {:?}, {} attempts acknowledged",
        tally.calls,
        tally.failures,
        tally.gave_up,
        tally.slowest,
        tally.acknowledged.len()
    );
    eprintln!("{report}");
    // The test command prints it: a passing test's output is otherwise hidden.
    std::fs::write(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("failover-report.txt"), &report).unwrap();
    assert_eq!(tally.gave_up, 0, "every call succeeded within its retries");

    // Back on the cache by itself. Another replica's invalidation (through Redis) drops the
    // scheduler's copy of steady-0's states; its next NextItems reads the database and writes
    // the states to Redis, where that replica finds them, and the one after is a cache hit.
    let mut client = SchedulerServiceClient::new(channel(running.addresses.scheduler));
    let replica: Cache<CachedMemoryStates> =
        Cache::coherent(MEMORY_CACHE, Some(Redis::connect(&redis, alp_scheduler::REDIS_PREFIX).unwrap()));
    let key = memory_key("steady-0", COURSE);
    let next =
        || NextItemsRequest { learner_id: "steady-0".into(), course_id: COURSE.into(), count: 1, ..Default::default() };
    let mut written = false;
    for _ in 0..100 {
        replica.invalidate(std::slice::from_ref(&key)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.next_items(next()).await.unwrap();
        if replica.get(&key).await.is_some() {
            written = true;
            break;
        }
    }
    assert!(written, "the scheduler never wrote to Redis again after the failover");
    let (l1, l2, _) = cache_counts(&metrics, "memory");
    client.next_items(next()).await.unwrap();
    let (l1_after, l2_after, _) = cache_counts(&metrics, "memory");
    assert!(l1_after + l2_after > l1 + l2, "the cache serves again");
    assert!(during > 20, "the suite kept answering through the failover: {during} calls");

    // Every acknowledged attempt is in the log exactly once, and nothing else is.
    let mut exported: HashMap<String, usize> = HashMap::new();
    for l in 0..LEARNERS {
        let request = ExportAttemptsRequest { learner_id: format!("steady-{l}"), ..Default::default() };
        let mut stream = client.export_attempts(request).await.unwrap().into_inner();
        while let Some(batch) = stream.message().await.unwrap() {
            for attempt in batch.attempts {
                *exported.entry(attempt.attempt_id).or_default() += 1;
            }
        }
    }
    assert!(exported.values().all(|n| *n == 1), "an attempt recorded twice");
    let mut acknowledged = tally.acknowledged.clone();
    acknowledged.sort();
    let mut recorded: Vec<String> = exported.into_keys().collect();
    recorded.sort();
    assert_eq!(recorded, acknowledged, "recorded attempts differ from those acknowledged");
    running.shutdown().await;
}
