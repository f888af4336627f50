//! The suite against a real 6-node Redis Cluster: content items are served from the cache
//! once read, an update is visible on the very next read, and without the cluster the service
//! answers from its database and reports Redis down on its health.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use alp::suite::{Databases, Settings};
use alp_proto::content::v1::content_service_client::ContentServiceClient;
use alp_proto::content::v1::*;
use alp_runtime::cache::{Cache, CacheCounts};
use alp_runtime::redis::{Redis, RedisConfig};
use alp_runtime::testing::RedisCluster;
use common::channel;

/// The content service's item-cache counters, from the process's Prometheus recorder.
fn item_counts(handle: &metrics_exporter_prometheus::PrometheusHandle) -> (u64, u64, u64) {
    let text = handle.render();
    let count = |result: &str| {
        text.lines()
            .filter(|l| l.starts_with("alp_cache_requests_total{"))
            .filter(|l| l.contains("cache=\"items\"") && l.contains(&format!("result=\"{result}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    (count("l1_hit"), count("l2_hit"), count("miss"))
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
async fn items_come_from_the_cache_and_an_update_is_never_served_stale() {
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

    // The whole cluster gone: content keeps answering from its database and says so on the
    // health entry of its Redis, while the service itself stays SERVING.
    let content_health = "alp.content.v1.ContentService";
    let redis_health = format!("{content_health}/redis");
    let health = || alp_runtime::clients::check_serving(channel(running.addresses.content), &redis_health);
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
    assert!(alp_runtime::clients::check_serving(channel(running.addresses.content), content_health).await.is_ok());
    let mut fresh = item("written while Redis is down");
    fresh.item_id = "cached-2".into();
    content.upsert_items(UpsertItemsRequest { items: vec![fresh] }).await.unwrap();
    let read = content.get_item(GetItemRequest { item_id: "cached-2".into() }).await.unwrap().into_inner();
    assert_eq!(read.item.unwrap().prompt, "written while Redis is down");
    running.shutdown().await;
}
