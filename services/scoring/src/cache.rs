//! Scoring's cache of each learner's state (abilities, practice target, fitted parameters; read
//! by every ranking). Item difficulties are held whole in process (`calibration.rs`).
//!
//! A learner's state changes with their answers and may be read on any replica. Each batch of
//! applied attempts writes the states of its learners through as it left them (read and written
//! under the batch lock): into this replica's copies and Redis, and the other replicas drop
//! their copies as it announces them. Each fit drops the state everywhere. Two replicas'
//! batches for one learner a few milliseconds apart can write their states out of order; the
//! learner's next batch puts the right one back. Without Redis nothing would carry the
//! announcements, so nothing is cached.

use std::collections::HashMap;
use std::time::Duration;

use alp_runtime::cache::{Cache, CacheSettings};
use alp_runtime::redis::Redis;

use crate::error::ScoringError;
use crate::store::{Estimate, LearnerModels, PracticeTarget, ScoringStore, StoredFit};

/// The L1 TTL bounds what a lost announcement (without a disconnection, which clears the L1)
/// leaves stale.
pub const LEARNER_CACHE: CacheSettings = CacheSettings {
    name: "learner_models",
    l1_capacity: 100_000,
    l1_ttl: Duration::from_secs(600),
    l2_ttl: Duration::from_secs(600),
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct CachedLearner {
    #[prost(message, repeated, tag = "1")]
    pub skills: Vec<CachedSkill>,
    #[prost(message, optional, tag = "2")]
    pub practice: Option<CachedPractice>,
    #[prost(message, optional, tag = "3")]
    pub fit: Option<CachedFit>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CachedSkill {
    #[prost(string, tag = "1")]
    pub skill_id: String,
    #[prost(double, tag = "2")]
    pub ability: f64,
    #[prost(int64, tag = "3")]
    pub attempts: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CachedPractice {
    #[prost(double, tag = "1")]
    pub correction: f64,
    #[prost(double, tag = "2")]
    pub rolling_success: f64,
    #[prost(int64, tag = "3")]
    pub first_attempts: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CachedFit {
    #[prost(float, repeated, tag = "1")]
    pub parameters: Vec<f32>,
    #[prost(bool, tag = "2")]
    pub kept: bool,
    #[prost(int64, tag = "3")]
    pub reviews: i64,
    #[prost(int64, tag = "4")]
    pub holdout_reviews: i64,
    #[prost(double, tag = "5")]
    pub default_log_loss: f64,
    #[prost(double, tag = "6")]
    pub fitted_log_loss: f64,
    #[prost(int64, tag = "7")]
    pub attempt_count: i64,
    #[prost(int64, tag = "8")]
    pub fit_time_ms: i64,
}

/// What scoring knows of one learner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LearnerState {
    pub abilities: HashMap<String, Estimate>,
    pub practice: Option<PracticeTarget>,
    pub fit: Option<StoredFit>,
}

impl From<&LearnerState> for CachedLearner {
    fn from(s: &LearnerState) -> Self {
        Self {
            skills: s
                .abilities
                .iter()
                .map(|(k, e)| CachedSkill { skill_id: k.clone(), ability: e.value, attempts: e.attempts })
                .collect(),
            practice: s.practice.map(|p| CachedPractice {
                correction: p.correction,
                rolling_success: p.rolling_success,
                first_attempts: p.first_attempts,
            }),
            fit: s.fit.as_ref().map(|f| CachedFit {
                parameters: f.parameters.clone(),
                kept: f.kept,
                reviews: f.reviews,
                holdout_reviews: f.holdout_reviews,
                default_log_loss: f.default_log_loss,
                fitted_log_loss: f.fitted_log_loss,
                attempt_count: f.attempt_count,
                fit_time_ms: f.fit_time_ms,
            }),
        }
    }
}

impl From<CachedLearner> for LearnerState {
    fn from(c: CachedLearner) -> Self {
        Self {
            abilities: c
                .skills
                .into_iter()
                .map(|s| (s.skill_id, Estimate { value: s.ability, attempts: s.attempts }))
                .collect(),
            practice: c.practice.map(|p| PracticeTarget {
                correction: p.correction,
                rolling_success: p.rolling_success,
                first_attempts: p.first_attempts,
            }),
            fit: c.fit.map(|f| StoredFit {
                parameters: f.parameters,
                kept: f.kept,
                reviews: f.reviews,
                holdout_reviews: f.holdout_reviews,
                default_log_loss: f.default_log_loss,
                fitted_log_loss: f.fitted_log_loss,
                attempt_count: f.attempt_count,
                fit_time_ms: f.fit_time_ms,
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ScoringCaches {
    learners: Cache<CachedLearner>,
}

impl ScoringCaches {
    pub fn new(redis: Option<Redis>) -> Self {
        Self { learners: Cache::coherent(LEARNER_CACHE, redis) }
    }

    /// The learner's state as of their last applied attempt.
    pub async fn learner(&self, store: &ScoringStore, learner_id: &str) -> Result<LearnerState, ScoringError> {
        if let Some(cached) = self.learners.get(learner_id).await {
            return Ok(cached.into());
        }
        let models = store.learner_models(learner_id).await?;
        let state = LearnerState { abilities: models.abilities, practice: models.practice, fit: models.fit };
        self.learners.put(learner_id, CachedLearner::from(&state)).await;
        Ok(state)
    }

    /// After the learner's state changed in the database.
    pub async fn learner_changed(&self, learner_id: &str) {
        self.learners.invalidate(&[learner_id.to_owned()]).await;
    }

    /// After a batch: the states it read and moved on, written through, so the learners' next
    /// evaluations and rankings read them from the cache.
    pub async fn learners_applied(&self, learners: &[LearnerModels]) {
        let entries: Vec<(String, CachedLearner)> = learners
            .iter()
            .map(|l| {
                let state = LearnerState { abilities: l.abilities.clone(), practice: l.practice, fit: l.fit.clone() };
                (l.learner_id.clone(), CachedLearner::from(&state))
            })
            .collect();
        self.learners.replace_many(&entries).await;
    }
}
