//! The two-level cache against a real 6-node Redis Cluster: values shared between replicas
//! through Redis, invalidation reaching every replica's L1, and reads that keep answering while
//! a primary fails over or the whole cluster is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use alp_runtime::cache::{Cache, CacheCounts, CacheSettings};
use alp_runtime::redis::{Redis, RedisConfig};
use alp_runtime::testing::{RedisCluster, eventually};
use prost_types::Timestamp;

fn settings() -> CacheSettings {
    CacheSettings {
        name: "things",
        l1_capacity: 1000,
        l1_ttl: Duration::from_secs(60),
        l2_ttl: Duration::from_secs(600),
    }
}

fn value(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

async fn connected(cluster: &RedisCluster, prefix: &str) -> Redis {
    let redis = Redis::connect(&RedisConfig::for_nodes(&cluster.seeds()).unwrap(), prefix).unwrap();
    let started = Instant::now();
    while !redis.is_connected() {
        assert!(started.elapsed() < Duration::from_secs(10), "not connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redis
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_values_and_every_replica_drops_an_invalidated_key() {
    let Some(cluster) = RedisCluster::start().await else { return };
    let a: Cache<Timestamp> = Cache::new(settings(), Some(connected(&cluster, "alp:test").await));
    let b: Cache<Timestamp> = Cache::new(settings(), Some(connected(&cluster, "alp:test").await));

    let keys: Vec<String> = (0..20).map(|n| format!("k{n}")).collect();
    let entries: Vec<(String, Timestamp)> = keys.iter().cloned().zip((0..20).map(value)).collect();
    a.put_many(&entries).await;

    // b has never seen them: Redis answers, then b's own L1.
    let read = b.get_many(&keys).await;
    assert_eq!(read, (0..20).map(|n| Some(value(n))).collect::<Vec<_>>());
    assert_eq!(b.counts(), CacheCounts { l1_hits: 0, l2_hits: 20, misses: 0, errors: 0 });
    b.get_many(&keys).await;
    assert_eq!(b.counts().l1_hits, 20);
    assert_eq!(a.get("k3").await, Some(value(3)));
    assert_eq!(a.counts().l1_hits, 1, "the writer's own L1");

    // a updates k3 in the database and invalidates it: b must stop serving the old value.
    a.invalidate(&["k3".to_owned()]).await;
    assert_eq!(a.get("k3").await, None);
    eventually("b's L1 dropping k3", || async { b.get("k3").await.is_none() }).await;
    assert_eq!(b.get("k4").await, Some(value(4)), "only k3 is dropped");
    assert_eq!(b.counts().errors, 0);

    // Without Redis a cache is an L1 alone.
    let local: Cache<Timestamp> = Cache::new(settings(), None);
    assert_eq!(local.get("k4").await, None);
    local.put("k4", value(4)).await;
    assert_eq!(local.get("k4").await, Some(value(4)));
    assert_eq!(local.counts(), CacheCounts { l1_hits: 1, l2_hits: 0, misses: 1, errors: 0 });
}

/// A value written through reaches the other replicas: they drop their L1 copies and read the
/// new one from Redis, which keeps it. Without Redis a coherent cache keeps nothing in process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_value_reaches_every_replica_through_redis() {
    let Some(cluster) = RedisCluster::start().await else { return };
    let a: Cache<Timestamp> = Cache::coherent(settings(), Some(connected(&cluster, "alp:test").await));
    let b: Cache<Timestamp> = Cache::coherent(settings(), Some(connected(&cluster, "alp:test").await));
    a.put("k1", value(1)).await;
    a.put("k2", value(2)).await;
    assert_eq!(b.get("k1").await, Some(value(1)));
    assert_eq!(b.get("k2").await, Some(value(2)));
    assert_eq!(b.get("k1").await, Some(value(1)));
    assert_eq!(b.counts().l1_hits, 1, "b holds its own copies");

    a.replace_many(&[("k1".to_owned(), value(10))]).await;
    assert_eq!(a.get("k1").await, Some(value(10)));
    eventually("b reading the replaced value", || async { b.get("k1").await == Some(value(10)) }).await;
    assert_eq!(b.get("k2").await, Some(value(2)), "only k1 changed");
    let fresh: Cache<Timestamp> = Cache::coherent(settings(), Some(connected(&cluster, "alp:test").await));
    assert_eq!(fresh.get("k1").await, Some(value(10)), "Redis holds the new value");
    assert_eq!(fresh.counts().l2_hits, 1);

    let alone: Cache<Timestamp> = Cache::coherent(settings(), None);
    alone.put("k1", value(1)).await;
    assert_eq!(alone.get("k1").await, None, "nothing cached without the announcements");
    alone.replace_many(&[("k1".to_owned(), value(2))]).await;
    assert_eq!(alone.get("k1").await, None);
}

/// Another service's mirror follows the owner's announcements, and a replica whose subscriber
/// was cut off (so it may have missed some) forgets its L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_follows_its_owner_and_a_reconnected_replica_forgets_its_l1() {
    let Some(cluster) = RedisCluster::start().await else { return };
    let owner: Cache<Timestamp> = Cache::new(settings(), Some(connected(&cluster, "alp:owner").await));
    let other = connected(&cluster, "alp:other").await;
    let mirror: Cache<Timestamp> = Cache::mirror(settings(), Some(&other), "alp:owner", settings().name).unwrap();
    assert!(Cache::<Timestamp>::mirror(settings(), None, "alp:owner", settings().name).is_none(), "nothing to follow");
    // An announcement that arrives shows the subscriber connected and listening.
    eventually("the mirror's subscription", || async {
        mirror.put("probe", value(0)).await;
        owner.invalidate(&["probe".to_owned()]).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        mirror.get("probe").await.is_none()
    })
    .await;
    mirror.put("k1", value(1)).await;
    mirror.put("k2", value(2)).await;
    assert_eq!(mirror.get("k1").await, Some(value(1)));
    assert_eq!(owner.get("k1").await, None, "a mirror never writes to Redis");

    owner.invalidate(&["k1".to_owned()]).await;
    eventually("the mirror dropping k1", || async { mirror.get("k1").await.is_none() }).await;
    assert_eq!(mirror.get("k2").await, Some(value(2)), "only k1 is dropped");

    // Cut every subscriber off: whatever was published meanwhile is lost, so L1 must go.
    for node in cluster.seeds() {
        let port = node.rsplit(':').next().unwrap();
        let killed = std::process::Command::new("redis-cli")
            .args(["-p", port, "client", "kill", "type", "pubsub"])
            .output()
            .expect("redis-cli runs");
        assert!(killed.status.success(), "{killed:?}");
    }
    eventually("the mirror forgetting k2 on reconnection", || async { mirror.get("k2").await.is_none() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_keep_answering_through_a_failover_and_without_the_cluster() {
    let Some(mut cluster) = RedisCluster::start().await else { return };
    let redis = connected(&cluster, "alp:test").await;
    let writer: Cache<Timestamp> = Cache::new(settings(), Some(redis.clone()));
    let keys: Vec<String> = (0..50).map(|n| format!("k{n}")).collect();
    writer.put_many(&keys.iter().cloned().zip((0..50).map(value)).collect::<Vec<_>>()).await;

    // A reader with an empty L1 goes to Redis for everything.
    let reader = || {
        Cache::<Timestamp>::new(CacheSettings { l1_ttl: Duration::from_millis(1), ..settings() }, Some(redis.clone()))
    };
    let primary = cluster.primaries()[0];
    cluster.kill(primary);
    let during = reader();
    let started = Instant::now();
    let read = during.get_many(&keys).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a dead primary costs at most a timeout: {:?}",
        started.elapsed()
    );
    // Whatever Redis still answers is right; the rest are misses the database would serve.
    for (n, v) in read.iter().enumerate() {
        assert!(v.is_none() || *v == Some(value(n as i64)), "k{n}: {v:?}");
    }
    assert_eq!(during.counts().l2_hits + during.counts().misses, 50);

    // Half the keys are invalidated while their primary is dying: deletions on its slots fail.
    writer.invalidate(&keys[..25]).await;
    assert_eq!(writer.get_many(&keys[..25]).await, vec![None; 25], "read around until deleted");

    // Its replica takes over: the other keys are readable again (their copies were replicated),
    // and the invalidated ones never come back, as the writer retries their deletion.
    eventually("the replica's promotion", || async {
        let read = reader().get_many(&keys).await;
        read[..25].iter().all(Option::is_none) && read[25..].iter().all(Option::is_some)
    })
    .await;
    cluster.wait_until_healthy().await.unwrap();

    // The whole cluster gone: reads are misses, quickly, and nothing fails.
    cluster.kill_all();
    let gone = reader();
    let started = Instant::now();
    let read = gone.get_many(&keys).await;
    assert!(read.iter().all(Option::is_none));
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    assert!(gone.counts().errors > 0 && gone.counts().misses == 50, "{:?}", gone.counts());
    gone.put("k1", value(1)).await;
    gone.invalidate(&["k1".to_owned()]).await;
    eventually("the pool noticing", || async { !redis.is_connected() }).await;
}

/// A reader that fetched the old row just before a write and cached it just after is undone by
/// the invalidation's second pass, about a second later; a value cached after that stays.
#[tokio::test(start_paused = true)]
async fn an_invalidation_runs_again_about_a_second_later() {
    let cache = Cache::<Timestamp>::new(settings(), None);
    let key = ["k".to_owned()];
    cache.put("k", value(1)).await;
    cache.invalidate(&key).await;
    assert_eq!(cache.get("k").await, None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    cache.put("k", value(1)).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get("k").await, Some(value(1)), "the second pass waits a second");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get("k").await, None, "the second pass dropped the stale value");
    cache.put("k", value(2)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(cache.get("k").await, Some(value(2)), "one pass per invalidation");
}

/// A burst far beyond what the pool may have in flight is shed at once (misses the database
/// would serve), and the pool answers normally right after it. fred's bounded command queue used
/// to leak its own count on every command it refused, after which it flushed a connection only
/// every 200 commands: at low rates every read timed out, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_answers_again_after_an_overload() {
    let Some(cluster) = RedisCluster::start().await else { return };
    let config = RedisConfig { max_in_flight: 16, ..RedisConfig::for_nodes(&cluster.seeds()).unwrap() };
    let redis = Redis::connect(&config, "alp:test").unwrap();
    let started = Instant::now();
    while !redis.is_connected() {
        assert!(started.elapsed() < Duration::from_secs(10), "not connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let no_l1 = CacheSettings { l1_capacity: 0, ..settings() };
    let cache: Cache<Timestamp> = Cache::new(no_l1.clone(), Some(redis.clone()));
    cache.put("k", value(7)).await;

    let burst: Vec<String> = (0..5_000).map(|_| "k".to_owned()).collect();
    let read = cache.get_many(&burst).await;
    let served = read.iter().filter(|v| v.is_some()).count();
    assert!(cache.counts().errors > 0, "the burst was not shed: {:?}", cache.counts());
    assert!(served > 0, "nothing of the burst was served: {:?}", cache.counts());

    // One read at a time, as a quiet service reads: each answered, none waiting for company.
    let after: Cache<Timestamp> = Cache::new(no_l1, Some(redis));
    for n in 0..50 {
        let started = Instant::now();
        assert_eq!(after.get("k").await, Some(value(7)), "read {n} after the burst: {:?}", after.counts());
        assert!(started.elapsed() < Duration::from_millis(50), "read {n} took {:?}", started.elapsed());
    }
    assert_eq!(after.counts().errors, 0);
}
