//! A two-level cache of protobuf messages: in-process (L1: bounded, short TTL) in front of the
//! shared Redis Cluster (L2: longer TTL) in front of the database, which stays the only source
//! of truth. Without Redis (`alp dev`, or the cluster down) it is an L1 cache alone.
//!
//! Invalidation on write: the writer drops the keys from its own L1 and from Redis, then
//! announces them under the cache's name (`announce.rs`), and every replica drops them from its
//! L1 on receipt. A replica that may have missed announcements clears its L1, and the L1 TTL
//! bounds what is left (a message lost without a disconnection). Each invalidation runs a second
//! time 1–1.25 s later, batched with the others of its 250 ms window.
//!
//! Another service may keep a [`Cache::mirror`] of the values: its L1 alone, following the
//! owner's channel like one of the owner's replicas.
//!
//! Redis errors never fail a read or a write: a failed read is a miss, and both are counted. A
//! key whose deletion from Redis failed (its slot's primary down, say) is read around the cache
//! and deleted again every 250 ms until that succeeds, so a promoted replica cannot bring back a
//! value that was invalidated while its primary was dying.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::ops::ControlFlow;

use fred::prelude::{Expiration, KeysInterface};
use prost::Message;

use crate::announce::{self, Changed};
use crate::redis::Redis;

/// When a write's invalidation runs the second time, and how often due ones are sent together.
const REINVALIDATE_AFTER: Duration = Duration::from_secs(1);
const SECOND_PASS_EVERY: Duration = Duration::from_millis(250);
/// How often failed deletions are tried again, and how many are kept.
const RETRY_DELETES_EVERY: Duration = Duration::from_millis(250);
const MAX_PENDING: usize = 100_000;

/// What a cache holds and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// Names the cache in keys, channels and metrics, e.g. `items`.
    pub name: &'static str,
    /// 0 leaves L1 out: for values that change often and must not be stale on another replica.
    pub l1_capacity: u64,
    pub l1_ttl: Duration,
    pub l2_ttl: Duration,
}

/// Reads so far, by where they were answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    pub l1_hits: u64,
    pub l2_hits: u64,
    pub misses: u64,
    /// Redis commands that failed or timed out (the read then counts as a miss).
    pub errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

struct Inner<V> {
    settings: CacheSettings,
    l1: moka::sync::Cache<String, V>,
    redis: Option<Redis>,
    counters: Counters,
    /// Keys still to delete from Redis, and whether a task is retrying them.
    pending: Mutex<HashSet<String>>,
    pending_count: AtomicUsize,
    retrying: AtomicBool,
    /// Keys invalidated or replaced once, with when and which, waiting for their second pass;
    /// and whether a task is sending those.
    second_pass: Mutex<VecDeque<(tokio::time::Instant, String, Change)>>,
    second_pass_running: AtomicBool,
}

/// What a write did to a key, so its second pass repeats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Dropped everywhere: Redis and every replica's L1.
    Invalidated,
    /// Written through to Redis: other replicas' L1 copies are dropped, Redis keeps the value.
    Replaced,
}

/// A cache of `V` by string key; cheap to clone.
pub struct Cache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<V> std::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("settings", &self.inner.settings).finish_non_exhaustive()
    }
}

impl<V> Cache<V>
where
    V: Message + Default + Clone + Send + Sync + 'static,
{
    /// A cache; with Redis it also listens for other replicas' invalidations.
    pub fn new(settings: CacheSettings, redis: Option<Redis>) -> Self {
        let l1 = moka::sync::Cache::builder().max_capacity(settings.l1_capacity).time_to_live(settings.l1_ttl).build();
        let cache = Self {
            inner: Arc::new(Inner {
                settings,
                l1,
                redis,
                counters: Counters::default(),
                pending: Mutex::new(HashSet::new()),
                pending_count: AtomicUsize::new(0),
                retrying: AtomicBool::new(false),
                second_pass: Mutex::new(VecDeque::new()),
                second_pass_running: AtomicBool::new(false),
            }),
        };
        if let (Some(redis), true) = (&cache.inner.redis, cache.inner.settings.l1_capacity > 0) {
            cache.listen(redis.clone(), redis.prefix(), cache.inner.settings.name);
        }
        cache
    }

    /// A cache of values any replica may change: the L1 only where Redis carries the
    /// announcements that keep the replicas' copies coherent. Without Redis another replica's
    /// write could not reach this one's L1, so there is none, and every read goes to the
    /// database.
    pub fn coherent(settings: CacheSettings, redis: Option<Redis>) -> Self {
        let settings = if redis.is_some() { settings } else { CacheSettings { l1_capacity: 0, ..settings } };
        Self::new(settings, redis)
    }

    /// An in-process copy of values another service owns and caches as `owner_cache`: L1
    /// alone, never Redis, dropped as the owner publishes its invalidations (each twice, the
    /// second a second later, which also drops a copy read just before a change). It is as
    /// fresh as the owner's other replicas. Without Redis nothing would tell it of a change, so
    /// there is none.
    pub fn mirror(
        settings: CacheSettings,
        redis: Option<&Redis>,
        owner_prefix: &str,
        owner_cache: &str,
    ) -> Option<Self> {
        let redis = redis?;
        let cache = Self::new(settings, None);
        cache.listen(redis.clone(), owner_prefix, owner_cache);
        Some(cache)
    }

    fn l2_key(redis: &Redis, name: &str, key: &str) -> String {
        redis.key(&format!("{name}:{key}"))
    }

    /// Drops keys from L1 as the owner's replicas announce them; holds only a weak reference so
    /// the task ends with the cache.
    fn listen(&self, redis: Redis, owner_prefix: &str, owner_cache: &str) {
        let weak = Arc::downgrade(&self.inner);
        announce::follow(redis, owner_prefix, owner_cache, move |changed| {
            let Some(inner) = weak.upgrade() else { return ControlFlow::Break(()) };
            match changed {
                Changed::Keys(keys) => keys.for_each(|key| inner.l1.invalidate(key)),
                Changed::Unknown => inner.l1.invalidate_all(),
            }
            ControlFlow::Continue(())
        });
    }

    fn count(&self, counter: &AtomicU64, result: &'static str, n: u64) {
        if n > 0 {
            counter.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("alp_cache_requests_total", "cache" => self.inner.settings.name, "result" => result)
                .increment(n);
        }
    }

    fn error(&self, action: &str, err: &fred::error::Error) {
        self.inner.counters.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("alp_cache_errors_total", "cache" => self.inner.settings.name).increment(1);
        tracing::debug!(cache = self.inner.settings.name, action, error = %err, "redis command failed");
    }

    /// Which of `keys` are waiting for their deletion from Redis.
    fn pending_mask(&self, keys: &[String]) -> Vec<bool> {
        if self.inner.pending_count.load(Ordering::Relaxed) == 0 {
            return vec![false; keys.len()];
        }
        let pending = self.inner.pending.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter().map(|k| pending.contains(k)).collect()
    }

    /// The cached values of `keys`, in order; None where neither level has one.
    pub async fn get_many(&self, keys: &[String]) -> Vec<Option<V>> {
        let l1 = self.inner.settings.l1_capacity > 0;
        let pending = self.pending_mask(keys);
        let mut found: Vec<Option<V>> =
            keys.iter().zip(&pending).map(|(k, p)| if l1 && !p { self.inner.l1.get(k) } else { None }).collect();
        let l1_hits = found.iter().filter(|v| v.is_some()).count() as u64;
        self.count(&self.inner.counters.l1_hits, "l1_hit", l1_hits);
        let bypassed = pending.iter().filter(|p| **p).count() as u64;
        let missing: Vec<usize> = (0..keys.len()).filter(|i| found[*i].is_none() && !pending[*i]).collect();
        let mut l2_hits = 0;
        if let (Some(redis), false) = (&self.inner.redis, missing.is_empty()) {
            let name = self.inner.settings.name;
            // One GET per key: keys of one batch live in different slots (fred pipelines them).
            let reads = missing.iter().map(|i| {
                let key = Self::l2_key(redis, name, &keys[*i]);
                async move { redis.admit()?.get::<Option<Vec<u8>>, _>(key).await }
            });
            for (i, read) in missing.iter().zip(futures::future::join_all(reads).await) {
                match read {
                    Ok(Some(bytes)) => match V::decode(bytes.as_slice()) {
                        Ok(value) => {
                            if l1 {
                                self.inner.l1.insert(keys[*i].clone(), value.clone());
                            }
                            found[*i] = Some(value);
                            l2_hits += 1;
                        }
                        Err(err) => tracing::warn!(cache = name, error = %err, "undecodable cache entry ignored"),
                    },
                    Ok(None) => {}
                    Err(err) => self.error("get", &err),
                }
            }
        }
        self.count(&self.inner.counters.l2_hits, "l2_hit", l2_hits);
        self.count(&self.inner.counters.misses, "miss", missing.len() as u64 - l2_hits + bypassed);
        found
    }

    pub async fn get(&self, key: &str) -> Option<V> {
        self.get_many(&[key.to_owned()]).await.pop().flatten()
    }

    /// Stores values read from the database in both levels.
    pub async fn put_many(&self, entries: &[(String, V)]) {
        self.store(entries).await;
    }

    /// Writes values through after the database changed them: both levels here, and every other
    /// replica drops its L1 copy (now, and again a second later, like [`Cache::invalidate`], so a
    /// copy read from Redis just before the write and kept just after goes too). Redis keeps the
    /// value, so their next read finds it there.
    pub async fn replace_many(&self, entries: &[(String, V)]) {
        let keys = self.store(entries).await;
        // Without Redis there is no other replica to tell.
        if self.inner.settings.l1_capacity > 0 && self.inner.redis.is_some() {
            self.announce(&keys).await;
            self.schedule_second_pass(&keys, Change::Replaced);
        }
    }

    /// Both levels, but for keys whose deletion from Redis is still pending; the keys stored.
    async fn store(&self, entries: &[(String, V)]) -> Vec<String> {
        let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        let pending = self.pending_mask(&keys);
        let entries: Vec<&(String, V)> = entries.iter().zip(&pending).filter(|(_, p)| !**p).map(|(e, _)| e).collect();
        if self.inner.settings.l1_capacity > 0 {
            for (key, value) in &entries {
                self.inner.l1.insert(key.clone(), value.clone());
            }
        }
        let stored = entries.iter().map(|(key, _)| key.clone()).collect();
        let Some(redis) = &self.inner.redis else { return stored };
        let name = self.inner.settings.name;
        let ttl = i64::try_from(self.inner.settings.l2_ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let writes = entries.iter().map(|(key, value)| {
            let key = Self::l2_key(redis, name, key);
            let bytes = value.encode_to_vec();
            async move { redis.admit()?.set::<(), _, _>(key, bytes, Some(Expiration::PX(ttl)), None, false).await }
        });
        for result in futures::future::join_all(writes).await {
            if let Err(err) = result {
                self.error("set", &err);
            }
        }
        stored
    }

    pub async fn put(&self, key: &str, value: V) {
        self.put_many(&[(key.to_owned(), value)]).await;
    }

    /// Drops keys everywhere: this replica's L1 at once, Redis, and other replicas' L1 through
    /// the invalidation channel. Call it after the database write has committed. It runs again
    /// a second later, so a read that fetched the old row just before the write and cached it
    /// just after is dropped too.
    pub async fn invalidate(&self, keys: &[String]) {
        self.invalidate_now(keys).await;
        self.schedule_second_pass(keys, Change::Invalidated);
    }

    fn schedule_second_pass(&self, keys: &[String], change: Change) {
        if keys.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        self.inner
            .second_pass
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(keys.iter().map(|k| (now, k.clone(), change)));
        if self.inner.second_pass_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SECOND_PASS_EVERY).await;
                let (invalidated, replaced) = {
                    let now = tokio::time::Instant::now();
                    let mut queue = cache.inner.second_pass.lock().unwrap_or_else(PoisonError::into_inner);
                    let (mut invalidated, mut replaced) = (HashSet::new(), HashSet::new());
                    while queue.front().is_some_and(|(at, _, _)| *at + REINVALIDATE_AFTER <= now) {
                        match queue.pop_front() {
                            Some((_, key, Change::Invalidated)) => invalidated.insert(key),
                            Some((_, key, Change::Replaced)) => replaced.insert(key),
                            None => false,
                        };
                    }
                    // A key both invalidated and replaced in the window is invalidated: deleting
                    // it from Redis as well covers both.
                    replaced.retain(|key| !invalidated.contains(key));
                    (invalidated.into_iter().collect::<Vec<_>>(), replaced.into_iter().collect::<Vec<_>>())
                };
                if !invalidated.is_empty() {
                    cache.invalidate_now(&invalidated).await;
                }
                if !replaced.is_empty() {
                    cache.announce(&replaced).await;
                }
                let queue = cache.inner.second_pass.lock().unwrap_or_else(PoisonError::into_inner);
                if queue.is_empty() {
                    cache.inner.second_pass_running.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    async fn invalidate_now(&self, keys: &[String]) {
        for key in keys {
            self.inner.l1.invalidate(key);
        }
        if self.inner.redis.is_none() || keys.is_empty() {
            return;
        }
        let failed = self.delete_from_redis(keys).await;
        if !failed.is_empty() {
            self.defer(failed);
        }
    }

    /// Deletes keys from Redis and tells the other replicas; returns the keys not deleted.
    async fn delete_from_redis(&self, keys: &[String]) -> Vec<String> {
        let Some(redis) = &self.inner.redis else { return Vec::new() };
        let name = self.inner.settings.name;
        let deletes = keys.iter().map(|key| {
            let key = Self::l2_key(redis, name, key);
            async move { redis.admit()?.del::<i64, _>(key).await }
        });
        let mut failed = Vec::new();
        for (key, result) in keys.iter().zip(futures::future::join_all(deletes).await) {
            if let Err(err) = result {
                self.error("del", &err);
                failed.push(key.clone());
            }
        }
        // Without an L1 no replica holds a copy to drop.
        if self.inner.settings.l1_capacity > 0 {
            self.announce(keys).await;
        }
        failed
    }

    /// Tells every replica (this one too) to drop its L1 copies of `keys`.
    async fn announce(&self, keys: &[String]) {
        let Some(redis) = &self.inner.redis else { return };
        if let Err(err) = announce::announce(redis, self.inner.settings.name, keys).await {
            self.error("publish", &err);
        }
    }

    /// Keeps failed deletions for a retry task, reading around them meanwhile.
    fn defer(&self, failed: Vec<String>) {
        {
            let mut pending = self.inner.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.len() + failed.len() > MAX_PENDING {
                tracing::warn!(
                    cache = self.inner.settings.name,
                    "too many undeleted keys; some may be served stale until their TTL"
                );
            } else {
                pending.extend(failed);
            }
            self.inner.pending_count.store(pending.len(), Ordering::Relaxed);
        }
        if self.inner.retrying.swap(true, Ordering::AcqRel) {
            return;
        }
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_DELETES_EVERY).await;
                let keys: Vec<String> =
                    cache.inner.pending.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect();
                let failed = cache.delete_from_redis(&keys).await;
                let mut pending = cache.inner.pending.lock().unwrap_or_else(PoisonError::into_inner);
                for key in keys.iter().filter(|k| !failed.contains(k)) {
                    pending.remove(key);
                }
                cache.inner.pending_count.store(pending.len(), Ordering::Relaxed);
                if pending.is_empty() {
                    cache.inner.retrying.store(false, Ordering::Release);
                    return;
                }
            }
        });
    }

    pub fn counts(&self) -> CacheCounts {
        let c = &self.inner.counters;
        CacheCounts {
            l1_hits: c.l1_hits.load(Ordering::Relaxed),
            l2_hits: c.l2_hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }
}
