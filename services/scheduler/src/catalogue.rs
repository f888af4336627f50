//! Per-course data the scheduler reuses between calls: a course's items in service and its skill
//! graph. Listing a course takes content tens of milliseconds, so a caller never waits for one
//! while a copy of at most `MAX_AGE` exists: once a copy is `REFRESH_AFTER` old, the next caller
//! starts a refresh in the background and is answered from the copy. A failed refresh keeps the
//! copy until `MAX_AGE`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use alp_runtime::client::CallError;
use tokio::time::Instant;

/// When a copy is refreshed, and how old one may be answered from: new, changed and retired
/// items reach NextItems within about `REFRESH_AFTER`, and never later than `MAX_AGE`.
pub const REFRESH_AFTER: Duration = Duration::from_secs(5);
pub const MAX_AGE: Duration = Duration::from_secs(15);
/// Courses kept.
const COURSES: u64 = 1_000;

struct Fetched<V> {
    at: Instant,
    value: Arc<V>,
}

/// Copies of `V` by course id; cheap to clone.
pub struct Catalogue<V> {
    name: &'static str,
    copies: moka::future::Cache<String, Arc<Fetched<V>>>,
    refreshing: Arc<Mutex<HashSet<String>>>,
}

impl<V> Clone for Catalogue<V> {
    fn clone(&self) -> Self {
        Self { name: self.name, copies: self.copies.clone(), refreshing: self.refreshing.clone() }
    }
}

impl<V> std::fmt::Debug for Catalogue<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalogue").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<V: Send + Sync + 'static> Catalogue<V> {
    pub fn new(name: &'static str) -> Self {
        // Courses nobody asks for leave memory; freshness is checked against `at` below.
        let copies = moka::future::Cache::builder().max_capacity(COURSES).time_to_idle(MAX_AGE * 4).build();
        Self { name, copies, refreshing: Arc::default() }
    }

    /// The course's copy. `fetch` makes the listing from content; it is called only on a miss
    /// (shared by the callers of the moment) or for the background refresh.
    pub async fn get<M, F>(&self, course_id: &str, fetch: M) -> Result<Arc<V>, Arc<CallError>>
    where
        M: FnOnce() -> F,
        F: Future<Output = Result<V, CallError>> + Send + 'static,
    {
        if let Some(copy) = self.copies.get(course_id).await {
            let age = copy.at.elapsed();
            if age < MAX_AGE {
                if age >= REFRESH_AFTER {
                    self.refresh(course_id, fetch());
                }
                return Ok(copy.value.clone());
            }
            self.copies.invalidate(course_id).await;
        }
        let copy = self
            .copies
            .try_get_with_by_ref(course_id, async move {
                let value = fetch().await?;
                Ok::<_, CallError>(Arc::new(Fetched { at: Instant::now(), value: Arc::new(value) }))
            })
            .await?;
        Ok(copy.value.clone())
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
        tokio::spawn(async move {
            match fetch.await {
                Ok(value) => {
                    let copy = Arc::new(Fetched { at: Instant::now(), value: Arc::new(value) });
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
        let catalogue = Catalogue::<u32>::new("test");
        let fetches = Arc::new(AtomicU32::new(0));
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 1, "fresh: no fetch");
        assert_eq!(fetches.load(Ordering::SeqCst), 1);

        tokio::time::sleep(REFRESH_AFTER).await;
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
        let catalogue = Catalogue::<u32>::new("test");
        let fetches = Arc::new(AtomicU32::new(0));
        catalogue.get("c", || counting(&fetches, false)).await.unwrap();
        tokio::time::sleep(REFRESH_AFTER).await;
        assert_eq!(*catalogue.get("c", || counting(&fetches, true)).await.unwrap(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*catalogue.get("c", || counting(&fetches, true)).await.unwrap(), 1, "stale if error");

        tokio::time::sleep(MAX_AGE).await;
        assert!(catalogue.get("c", || counting(&fetches, true)).await.is_err(), "too old to answer from");
        assert_eq!(*catalogue.get("c", || counting(&fetches, false)).await.unwrap(), 2);
    }
}
