//! The scheduler's caches: each learner's memory states in a course (read by every NextItems),
//! and copies of the items SubmitAttempt answers about.
//!
//! Memory states change with every answer and a learner may be served by any replica. Every
//! NextItems reads them, and two Redis reads per NextItems (these and scoring's learner model)
//! cost about as much CPU as the rest of the call. So each replica keeps copies in process too,
//! and SubmitAttempt, before it answers, drops the learner's copy here and in Redis and
//! announces it; the other replicas drop theirs on receipt (see `alp_runtime::cache`). The
//! replica that recorded an answer never ranks without it; another one may, for the moment the
//! announcement takes. Without Redis nothing would carry the announcement, so nothing is cached.
//! A retried attempt is found by the log's unique attempt id, which every new attempt's insert
//! checks anyway, so attempts are not cached.

use std::time::Duration;

use alp_runtime::cache::{Cache, CacheSettings};
use alp_runtime::redis::Redis;

use crate::store::MemoryRow;

/// Items SubmitAttempt answers about, in this process only. With Redis the copies follow
/// content's announcements of changed items, so they can live long; without, a changed or
/// retired item reaches SubmitAttempt within 15 s.
pub const ITEM_COPIES: CacheSettings = CacheSettings {
    name: "item_copies",
    l1_capacity: 50_000,
    l1_ttl: Duration::from_secs(600),
    l2_ttl: Duration::ZERO,
};
pub const UNFOLLOWED_ITEM_COPIES: CacheSettings = CacheSettings { l1_ttl: Duration::from_secs(15), ..ITEM_COPIES };

/// Keyed by learner and course. The L1 TTL bounds what a lost announcement (without a
/// disconnection, which clears the L1) leaves stale, as for the profile copies.
pub const MEMORY_CACHE: CacheSettings = CacheSettings {
    name: "memory",
    l1_capacity: 200_000,
    l1_ttl: Duration::from_secs(600),
    l2_ttl: Duration::from_secs(600),
};

/// The cached form of a learner's memory states in one course.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CachedMemoryStates {
    #[prost(message, repeated, tag = "1")]
    pub rows: Vec<CachedMemory>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CachedMemory {
    #[prost(string, tag = "1")]
    pub item_id: String,
    #[prost(string, tag = "2")]
    pub course_id: String,
    #[prost(double, tag = "3")]
    pub stability: f64,
    #[prost(double, tag = "4")]
    pub difficulty: f64,
    #[prost(int64, tag = "5")]
    pub last_review_ms: i64,
    #[prost(int64, tag = "6")]
    pub due_ms: i64,
    #[prost(int32, tag = "7")]
    pub last_rating: i32,
    #[prost(int64, tag = "8")]
    pub review_count: i64,
    #[prost(int64, tag = "9")]
    pub lapse_count: i64,
    #[prost(int32, tag = "10")]
    pub phase: i32,
    #[prost(uint32, tag = "11")]
    pub step: u32,
    #[prost(double, optional, tag = "12")]
    pub knowledge: Option<f64>,
}

impl From<&MemoryRow> for CachedMemory {
    fn from(r: &MemoryRow) -> Self {
        Self {
            item_id: r.item_id.clone(),
            course_id: r.course_id.clone(),
            stability: r.stability,
            difficulty: r.difficulty,
            last_review_ms: r.last_review_ms,
            due_ms: r.due_ms,
            last_rating: r.last_rating,
            review_count: r.review_count,
            lapse_count: r.lapse_count,
            phase: r.phase,
            step: r.step,
            knowledge: r.knowledge,
        }
    }
}

impl From<CachedMemory> for MemoryRow {
    fn from(c: CachedMemory) -> Self {
        Self {
            item_id: c.item_id,
            course_id: c.course_id,
            stability: c.stability,
            difficulty: c.difficulty,
            last_review_ms: c.last_review_ms,
            due_ms: c.due_ms,
            last_rating: c.last_rating,
            review_count: c.review_count,
            lapse_count: c.lapse_count,
            phase: c.phase,
            step: c.step,
            knowledge: c.knowledge,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SchedulerCaches {
    pub memory: Cache<CachedMemoryStates>,
}

impl SchedulerCaches {
    pub fn new(redis: Option<Redis>) -> Self {
        Self { memory: Cache::coherent(MEMORY_CACHE, redis) }
    }
}

/// One learner's keys share a hash tag, so they live in one slot.
pub fn memory_key(learner_id: &str, course_id: &str) -> String {
    format!("{{learner:{learner_id}}}:{course_id}")
}
