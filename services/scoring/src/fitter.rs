//! Fits learners' own FSRS-6 parameters: in the background once a learner has enough reviews
//! and again each time they have 1.5 times as many as at the last fit, or at once on request.
//! A fit keeps a core busy for a while, so one process runs one at a time; two replicas fitting
//! the same learner at once both write a valid fit, and the later one stays.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use alp_runtime::time::now_millis;
use tokio::sync::Semaphore;

use crate::cache::ScoringCaches;
use crate::error::ScoringError;
use crate::model::fitting::{self, FitError};
use crate::store::{ScoringStore, StoredFit};

/// Reviews grow by this factor between background fits.
const REFIT_GROWTH: f64 = 1.5;

/// When learners' parameters are fitted.
#[derive(Debug, Clone, PartialEq)]
pub struct FitPolicy {
    /// Fit in the background; `FitLearnerParameters` works either way.
    pub enabled: bool,
    /// Reviews (answers after an item's first) before the first background fit.
    pub first_after_reviews: i64,
}

impl Default for FitPolicy {
    fn default() -> Self {
        Self { enabled: true, first_after_reviews: fitting::MIN_REVIEWS as i64 }
    }
}

impl FitPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.first_after_reviews < fitting::MIN_REVIEWS as i64 {
            return Err(format!(
                "fit after reviews must be at least {}, got {}",
                fitting::MIN_REVIEWS,
                self.first_after_reviews
            ));
        }
        Ok(())
    }

    /// Whether a learner with `reviews` reviews, last fitted at `last_fit_reviews`, is due a
    /// background fit.
    pub fn due(&self, reviews: i64, last_fit_reviews: Option<i64>) -> bool {
        self.enabled
            && reviews >= self.first_after_reviews
            && last_fit_reviews.is_none_or(|last| reviews as f64 >= last as f64 * REFIT_GROWTH)
    }
}

#[derive(Debug, Clone)]
pub struct Fitter {
    store: ScoringStore,
    caches: ScoringCaches,
    policy: FitPolicy,
    /// Learners with a background fit under way.
    running: Arc<Mutex<HashSet<String>>>,
    /// Learners whose background fit found fewer reviews than their count said (attempts applied
    /// before ratings were kept), with that count: not tried again until it grows by half.
    short: Arc<Mutex<HashMap<String, i64>>>,
    cpu: Arc<Semaphore>,
}

impl Fitter {
    pub fn new(store: ScoringStore, policy: FitPolicy, caches: ScoringCaches) -> Self {
        Self { store, caches, policy, running: Arc::default(), short: Arc::default(), cpu: Arc::new(Semaphore::new(1)) }
    }

    /// After a batch counted a learner's reviews: starts a background fit if one is due, reading
    /// the last fit only for learners past the first threshold.
    pub fn reviews_counted(&self, learner_id: String, reviews: i64) {
        if !self.policy.due(reviews, None) {
            return;
        }
        let fitter = self.clone();
        tokio::spawn(async move {
            match fitter.store.parameter_fit(&learner_id).await {
                Ok(last) => fitter.fit_if_due(&learner_id, reviews, last.map(|f| f.reviews)),
                Err(error) => tracing::warn!(learner_id, %error, "could not read the last fit"),
            }
        });
    }

    /// Starts a background fit for a learner with `reviews` reviews, last fitted at
    /// `last_fit_reviews`, if one is due and none is under way.
    pub fn fit_if_due(&self, learner_id: &str, reviews: i64, last_fit_reviews: Option<i64>) {
        let short = self.short.lock().unwrap_or_else(PoisonError::into_inner).get(learner_id).copied();
        if !self.policy.due(reviews, last_fit_reviews.max(short)) {
            return;
        }
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if !running.insert(learner_id.to_owned()) {
            return;
        }
        drop(running);
        let fitter = self.clone();
        let learner_id = learner_id.to_owned();
        tokio::spawn(async move {
            match fitter.fit(&learner_id).await {
                Ok(fit) => tracing::info!(
                    learner_id,
                    kept = fit.kept,
                    reviews = fit.reviews,
                    default_log_loss = fit.default_log_loss,
                    fitted_log_loss = fit.fitted_log_loss,
                    "FSRS parameters fitted"
                ),
                Err(err @ ScoringError::NotEnoughReviews { .. }) => {
                    tracing::info!(learner_id, error = %err, "FSRS parameters not fitted");
                    fitter.short.lock().unwrap_or_else(PoisonError::into_inner).insert(learner_id.clone(), reviews);
                }
                Err(err) => tracing::warn!(learner_id, error = %err, "FSRS parameters not fitted"),
            }
            fitter.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&learner_id);
        });
    }

    /// Fits the learner's parameters now and records the result.
    pub async fn fit(&self, learner_id: &str) -> Result<StoredFit, ScoringError> {
        let _cpu = self.cpu.acquire().await.map_err(|_| ScoringError::Model("the fitter has stopped".to_owned()))?;
        let histories = self.store.review_histories(learner_id).await?;
        let attempt_count = histories.iter().map(Vec::len).sum::<usize>() as i64;
        let fit = tokio::task::spawn_blocking(move || fitting::fit(&histories))
            .await
            .map_err(|e| ScoringError::Model(format!("fitting stopped: {e}")))?
            .map_err(|e| match e {
                FitError::NotEnoughReviews(reviews) => ScoringError::NotEnoughReviews {
                    learner_id: learner_id.to_owned(),
                    reviews,
                    needed: fitting::MIN_REVIEWS,
                },
                other => ScoringError::Model(other.to_string()),
            })?;
        let stored = StoredFit {
            kept: fit.kept(),
            parameters: fit.parameters,
            reviews: fit.reviews as i64,
            holdout_reviews: fit.holdout_reviews as i64,
            default_log_loss: fit.default_log_loss,
            fitted_log_loss: fit.fitted_log_loss,
            attempt_count,
            fit_time_ms: now_millis(),
        };
        self.store.save_fit(learner_id, &stored).await?;
        self.caches.learner_changed(learner_id).await;
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_come_at_the_threshold_and_then_as_reviews_grow_by_half() {
        let policy = FitPolicy::default();
        assert!(!policy.due(399, None));
        assert!(policy.due(400, None));
        assert!(!policy.due(599, Some(400)));
        assert!(policy.due(600, Some(400)));
        let off = FitPolicy { enabled: false, ..policy };
        assert!(!off.due(10_000, None));
        assert!(FitPolicy { first_after_reviews: 10, ..FitPolicy::default() }.validate().is_err());
    }
}
