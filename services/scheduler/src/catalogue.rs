//! Per-course data the scheduler reuses between calls: a course's items in service and its skill
//! graph. Listing a course takes content tens of milliseconds, so a caller never waits for one
//! while a copy young enough exists: once a copy is due for a refresh, the next caller starts one
//! in the background and is answered from the copy. A failed refresh keeps the copy until it is
//! too old to answer from.
//!
//! With Redis the catalogue follows content's announcements of what changed and refreshes a
//! course's copy on its next call after one; otherwise it relists every course every few
//! seconds. Relisting all of them every 5 s stalled the scheduler every 5 s: twenty courses
//! answered together, a few MB to decode on its worker, and NextItems at 1,000/s waited 50-365
//! ms in those moments.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use alp_runtime::announce::{self, Changed};
use alp_runtime::client::CallError;
use alp_runtime::redis::Redis;
use tokio::time::Instant;

/// When a copy is refreshed (each copy at a random point of the last quarter, so that courses
/// listed together do not come due together), and how old one may be answered from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub refresh_after: Duration,
    pub max_age: Duration,
}

/// Without announcements: new, changed and retired items reach NextItems within about 5 s.
pub const POLLED: Freshness = Freshness { refresh_after: Duration::from_secs(5), max_age: Duration::from_secs(15) };
/// Following announcements, a change reaches NextItems on the first call after it; the refresh
/// bounds what a lost announcement (without a disconnection) leaves stale.
pub const FOLLOWED: Freshness = Freshness { refresh_after: Duration::from_secs(60), max_age: Duration::from_secs(180) };
/// Courses kept.
const COURSES: u64 = 1_000;

struct Fetched<V> {
    at: Instant,
    refresh_at: Instant,
    /// The announcements seen when the listing started: later ones make the copy stale.
    seen: u64,
    value: Arc<V>,
}

/// Announced changes, numbered in the order they arrived.
#[derive(Default)]
struct Announced {
    count: u64,
    /// The number of the latest announcement about each course.
    latest: HashMap<String, u64>,
    /// The number of the latest "anything may have changed".
    everything: u64,
}

impl Announced {
    fn record(&mut self, changed: Changed<'_>) {
        self.count += 1;
        match changed {
            Changed::Keys(courses) => {
                for course in courses {
                    self.latest.insert(course.to_owned(), self.count);
                }
            }
            Changed::Unknown => self.everything = self.count,
        }
    }

    fn stale(&self, course_id: &str, seen: u64) -> bool {
        self.everything > seen || self.latest.get(course_id).is_some_and(|n| *n > seen)
    }
}

/// Copies of `V` by course id; cheap to clone.
pub struct Catalogue<V> {
    name: &'static str,
    freshness: Freshness,
    copies: moka::future::Cache<String, Arc<Fetched<V>>>,
    refreshing: Arc<Mutex<HashSet<String>>>,
    announced: Arc<Mutex<Announced>>,
}

impl<V> Clone for Catalogue<V> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            freshness: self.freshness,
            copies: self.copies.clone(),
            refreshing: self.refreshing.clone(),
            announced: self.announced.clone(),
        }
    }
}

impl<V> std::fmt::Debug for Catalogue<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalogue")
            .field("name", &self.name)
            .field("freshness", &self.freshness)
            .finish_non_exhaustive()
    }
}

impl<V: Send + Sync + 'static> Catalogue<V> {
    pub fn new(name: &'static str, freshness: Freshness) -> Self {
        // Courses nobody asks for leave memory; freshness is checked against `at` below.
        let copies = moka::future::Cache::builder().max_capacity(COURSES).time_to_idle(freshness.max_age * 4).build();
        Self { name, freshness, copies, refreshing: Arc::default(), announced: Arc::default() }
    }

    /// A catalogue that follows what the owner (Redis prefix `owner_prefix`) announces about
    /// `announced_as`, keyed by course id; without Redis one that polls.
    pub fn following(name: &'static str, redis: Option<&Redis>, owner_prefix: &str, announced_as: &str) -> Self {
        let Some(redis) = redis else { return Self::new(name, POLLED) };
        let catalogue = Self::new(name, FOLLOWED);
        let announced = Arc::downgrade(&catalogue.announced);
        announce::follow(redis.clone(), owner_prefix, announced_as, move |changed| {
            let Some(announced) = announced.upgrade() else { return ControlFlow::Break(()) };
            announced.lock().unwrap_or_else(PoisonError::into_inner).record(changed);
            ControlFlow::Continue(())
        });
        catalogue
    }

    /// The course's copy. `fetch` makes the listing from content; it is called only on a miss
    /// (shared by the callers of the moment) or for the background refresh.
    pub async fn get<M, F>(&self, course_id: &str, fetch: M) -> Result<Arc<V>, Arc<CallError>>
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<V, CallError>> + Send + 'static,
    {
        if let Some(copy) = self.copies.get(course_id).await {
            if copy.at.elapsed() < self.freshness.max_age {
                if Instant::now() >= copy.refresh_at || self.announced().stale(course_id, copy.seen) {
                    self.refresh(course_id, fetch());
                }
                return Ok(copy.value.clone());
            }
            self.copies.invalidate(course_id).await;
        }
        let seen = self.announced().count;
        let freshness = self.freshness;
        let copy = self
            .copies
            .try_get_with_by_ref(course_id, async move {
                let value = fetch().await?;
                Ok::<_, CallError>(Arc::new(Fetched::new(value, seen, freshness)))
            })
            .await?;
        Ok(copy.value.clone())
    }

    fn announced(&self) -> std::sync::MutexGuard<'_, Announced> {
        self.announced.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refresh<F>(&self, course_id: &str, fetch: F)
    where
        F: Future<Output = Result<V, CallError>> + Send + 'static,
    {
        if !self.refreshing.lock().unwrap_or_else(PoisonError::into_inner).insert(course_id.to_owned()) {
            return;
        }
        let this = self.clone();
        let course_id = course_id.to_owned();
        let seen = self.announced().count;
        tokio::spawn(async move {
            match fetch.await {
                Ok(value) => {
                    let copy = Arc::new(Fetched::new(value, seen, this.freshness));
                    this.copies.insert(course_id.clone(), copy).await;
                }
                Err(error) => {
                    tracing::warn!(catalogue = this.name, course_id, %error, "refresh failed; the older copy stays in use");
                }
            }
            this.refreshing.lock().unwrap_or_else(PoisonError::into_inner).remove(&course_id);
        });
    }
}

impl<V> Fetched<V> {
    fn new(value: V, seen: u64, freshness: Freshness) -> Self {
        let at = Instant::now();
        let refresh_after = freshness.refresh_after.mul_f64(rand::random_range(0.75..=1.0));
        Self { at, refresh_at: at + refresh_after, seen, value: Arc::new(value) }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A fetch that answers with how many fetches there have been, failing when told to.
    fn counting(fetches: &Arc<AtomicU32>, fail: bool) -> impl Future<Output = Result<u32, CallError>> + Send + 'static {
        let fetches = fetches.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if fail {
                return Err(CallError::DeadlineExceeded { downstream: "content".into(), method: "ListItems" });
            }
            Ok(fetches.fetch_add(1, Ordering::SeqCst) + 1)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn callers_are_answered_from_the_copy_while_it_is_refreshed() {
        let catalogue = Catalogue::<u32>::new("test", POLLED);
        let fetches = Arc::new(AtomicU32::new(0));
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 1, "fresh: no fetch");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        tokio::time::sleep(POLLED.refresh_after).await;
        let before = Instant::now();
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 1, "old copy, at once");
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 1, "one refresh at a time");
        assert_eq!(before.elapsed(), Duration::ZERO, "nobody waited for the listing");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 2, "the refreshed copy");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_copy_until_it_is_too_old() {
        let catalogue = Catalogue::<u32>::new("test", POLLED);
        let fetches = Arc::new(AtomicU32::new(0));
        catalogue.get("c", || counting(&fetches, false)).await.unwrap();
        tokio::time::sleep(POLLED.refresh_after).await;
        assert_eq!(*catalogue.get("c", || counting(&fetches, true)).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*catalogue.get("c", || counting(&fetches, true)).await.unwrap(), 1, "stale if error");

        tokio::time::sleep(POLLED.max_age).await;
        assert!(catalogue.get("c", || counting(&fetches, true)).await.is_err(), "too old to answer from");
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_announced_change_refreshes_the_course_on_its_next_call() {
        let catalogue = Catalogue::<u32>::new("test", FOLLOWED);
        let fetches = Arc::new(AtomicU32::new(0));
        catalogue.get("c", || counting(&fetches, false)).await.unwrap();
        catalogue.get("d", || counting(&fetches, false)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        catalogue.announced().record(Changed::Keys("c\nelsewhere".lines()));
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 1, "the old copy, at once");
        assert_eq!(*catalogue.get("d", || counting(&fetches, false)).await.unwrap(), 2, "d did not change");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 3, "c relisted");
        assert_eq!(fetches.load(Ordering::SeqCst), 3);

        // A change announced while its listing runs: the listing may predate it, so the course
        // is listed again.
        catalogue.announced().record(Changed::Keys("c".lines()));
        catalogue.get("c", || counting(&fetches, false)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
        catalogue.announced().record(Changed::Keys("c".lines()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 4);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 5, "listed again");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 5, "and then left alone");

        // Announcements missed: every course is relisted.
        catalogue.announced().record(Changed::Unknown);
        catalogue.get("d", || counting(&fetches, false)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*catalogue.get("d", || counting(&fetches, false)).await.unwrap(), 6);
        assert_eq!(fetches.load(Ordering::SeqCst), 6);

        // Unannounced, a copy lives until its refresh, somewhere in the last quarter of it.
        tokio::time::sleep(FOLLOWED.refresh_after.mul_f64(0.7)).await;
        assert_eq!(*catalogue.get("d", || counting(&fetches, false)).await.unwrap(), 6);
        tokio::time::sleep(FOLLOWED.refresh_after.mul_f64(0.35)).await;
        catalogue.get("d", || counting(&fetches, false)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*catalogue.get("d", || counting(&fetches, false)).await.unwrap(), 7);
    }
}
