//! Where the models live: abilities per learner and skill, item calibration, applied attempts.

use std::collections::HashMap;

use alp_proto::common::v1::Rating;
use alp_proto::scoring::v1::ApplyAttemptResponse;
use alp_runtime::StoreError;
use alp_runtime::db::{AnyQuery, Database, Dialect, placeholders};
use alp_runtime::time::now_millis;
use prost::Message;
use sqlx::{AssertSqlSafe, Row};

pub use crate::model::ability::Estimate;
use crate::model::fitting::Review;

/// An attempt applied before: who and what it was about, and the answer given then.
#[derive(Debug, Clone)]
pub struct AppliedAttempt {
    pub learner_id: String,
    pub item_id: String,
    pub response: ApplyAttemptResponse,
}

/// Everything one ApplyAttempt writes, in one transaction.
#[derive(Debug, Clone)]
pub struct AttemptEffects {
    pub attempt_id: String,
    pub learner_id: String,
    pub item_id: String,
    /// The answer as a review: what per-learner FSRS fitting learns from.
    pub rating: Rating,
    pub answer_ms: i64,
    /// Not the learner's first answer to the item.
    pub review: bool,
    pub response: ApplyAttemptResponse,
    /// (skill, ability to start from when unattempted, change) per skill (first attempts only);
    /// the change is added to the stored value so concurrent attempts of one learner cannot
    /// overwrite each other.
    pub ability_deltas: Vec<(String, f64, f64)>,
    /// (difficulty to start from when uncalibrated, change) for the item (first attempts only).
    pub difficulty_delta: Option<(f64, f64)>,
    /// First attempts at new items in practice move the learner's target correction.
    pub practice: Option<PracticeOutcome>,
}

/// A first attempt at a new practice item, as the target correction sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PracticeOutcome {
    pub correct: bool,
    /// Added to the correction, which stays within ±`limit`.
    pub step: f64,
    pub limit: f64,
    /// The rolling success a learner starts from.
    pub start: f64,
}

/// How a learner's first attempts at new practice items have gone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PracticeTarget {
    pub correction: f64,
    pub rolling_success: f64,
    pub first_attempts: i64,
}

/// The latest fit of a learner's FSRS-6 parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFit {
    pub parameters: Vec<f32>,
    /// In use instead of the defaults.
    pub kept: bool,
    pub reviews: i64,
    pub holdout_reviews: i64,
    pub default_log_loss: f64,
    pub fitted_log_loss: f64,
    /// The learner's attempts when fitted.
    pub attempt_count: i64,
    pub fit_time_ms: i64,
}

/// Weight of the newest outcome in the rolling success: about the last 20 count.
const ROLLING_WEIGHT: f64 = 0.05;

/// The practice target's upsert: one statement, so concurrent attempts of one learner cannot lose
/// an update. `head` and `tail` supply the learner and the time around the five values that
/// [`bind_practice`] binds from `$first` on.
fn practice_upsert(head: &str, first: usize, tail: &str) -> String {
    let [start, rolling, step, limit, outcome] = std::array::from_fn(|i| format!("${}", first + i));
    format!(
        "INSERT INTO practice_targets AS t (learner_id, correction, rolling_success, first_attempts, update_time)
         {head}{start}, {rolling}, 1, {tail}
         ON CONFLICT (learner_id) DO UPDATE SET
            correction = CASE WHEN t.correction + {step} > {limit} THEN {limit}
                              WHEN t.correction + {step} < -{limit} THEN -{limit}
                              ELSE t.correction + {step} END,
            rolling_success = t.rolling_success * (1 - {weight}) + {weight} * {outcome},
            first_attempts = t.first_attempts + 1, update_time = excluded.update_time",
        weight = ROLLING_WEIGHT,
    )
}

fn bind_practice(query: AnyQuery<'_>, practice: PracticeOutcome) -> AnyQuery<'_> {
    let outcome = f64::from(u8::from(practice.correct));
    query
        .bind(practice.step.clamp(-practice.limit, practice.limit))
        .bind(practice.start * (1.0 - ROLLING_WEIGHT) + ROLLING_WEIGHT * outcome)
        .bind(practice.step)
        .bind(practice.limit)
        .bind(outcome)
}

/// Binds the applied attempt's row as `$1..$7`.
fn bind_applied<'q>(query: AnyQuery<'q>, effects: &AttemptEffects, now: i64) -> AnyQuery<'q> {
    query
        .bind(effects.attempt_id.clone())
        .bind(effects.learner_id.clone())
        .bind(effects.item_id.clone())
        .bind(effects.response.encode_to_vec())
        .bind(now)
        .bind(i64::from(effects.rating as i32))
        .bind(effects.answer_ms)
}

#[derive(Debug, Clone)]
pub struct ScoringStore {
    db: Database,
}

impl ScoringStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The learner's abilities on every skill they have attempted.
    pub async fn abilities(&self, learner_id: &str) -> Result<HashMap<String, Estimate>, StoreError> {
        let rows = sqlx::query("SELECT skill_id, ability, attempt_count FROM learner_skills WHERE learner_id = $1")
            .bind(learner_id)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, Estimate { value: r.try_get(1)?, attempts: r.try_get(2)? }))).collect()
    }

    /// Calibrated difficulties of the items that have any.
    pub async fn calibration(&self, item_ids: &[String]) -> Result<HashMap<String, Estimate>, StoreError> {
        let mut found = HashMap::new();
        for chunk in item_ids.chunks(500) {
            let sql = format!(
                "SELECT item_id, difficulty, attempt_count FROM item_calibration WHERE item_id IN ({})",
                placeholders(1, chunk.len())
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(id.clone());
            }
            for r in query.fetch_all(self.db.pool()).await? {
                found.insert(r.try_get(0)?, Estimate { value: r.try_get(1)?, attempts: r.try_get(2)? });
            }
        }
        Ok(found)
    }

    pub async fn applied(&self, attempt_id: &str) -> Result<Option<AppliedAttempt>, StoreError> {
        let row = sqlx::query("SELECT learner_id, item_id, response FROM applied_attempts WHERE attempt_id = $1")
            .bind(attempt_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| {
            let bytes: Vec<u8> = r.try_get(2)?;
            Ok(AppliedAttempt {
                learner_id: r.try_get(0)?,
                item_id: r.try_get(1)?,
                response: ApplyAttemptResponse::decode(bytes.as_slice())
                    .map_err(|e| StoreError::Corrupt(format!("applied attempt: {e}")))?,
            })
        })
        .transpose()
    }

    /// Writes an attempt's effects and returns the learner's review count after it; None when
    /// the attempt id was applied concurrently (nothing written then).
    pub async fn apply(&self, effects: &AttemptEffects) -> Result<Option<i64>, StoreError> {
        match self.db.dialect() {
            Dialect::Postgres => self.apply_in_one_statement(effects).await,
            Dialect::Sqlite => self.apply_in_transaction(effects).await,
        }
    }

    /// PostgreSQL: every write in one statement (one round trip, its own transaction), each
    /// conditional on the applied-attempt insert having returned a row.
    async fn apply_in_one_statement(&self, effects: &AttemptEffects) -> Result<Option<i64>, StoreError> {
        let now = now_millis();
        // $1..$8 are the applied attempt's; each optional write numbers its own after them.
        let mut sql = String::from(
            "WITH applied AS (
                INSERT INTO applied_attempts (attempt_id, learner_id, item_id, response, record_time, rating, answer_time)
                VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (attempt_id) DO NOTHING RETURNING learner_id
             )",
        );
        let mut next = 9;
        let mut take = |n: usize| {
            let first = next;
            next += n;
            first
        };
        for _ in &effects.ability_deltas {
            let p = take(3);
            let (skill, start, delta) = (p, p + 1, p + 2);
            sql.push_str(&format!(
                ", skill{p} AS (
                    INSERT INTO learner_skills AS s (learner_id, skill_id, ability, attempt_count, update_time)
                    SELECT learner_id, ${skill}, ${start}, 1, $5 FROM applied
                    ON CONFLICT (learner_id, skill_id) DO UPDATE SET
                       ability = s.ability + ${delta}, attempt_count = s.attempt_count + 1,
                       update_time = excluded.update_time
                 )"
            ));
        }
        if effects.difficulty_delta.is_some() {
            let p = take(2);
            let (start, delta) = (p, p + 1);
            sql.push_str(&format!(
                ", calibration AS (
                    INSERT INTO item_calibration AS c (item_id, difficulty, attempt_count, update_time)
                    SELECT $3, ${start}, 1, $5 FROM applied
                    ON CONFLICT (item_id) DO UPDATE SET
                       difficulty = c.difficulty + ${delta}, attempt_count = c.attempt_count + 1,
                       update_time = excluded.update_time
                 )"
            ));
        }
        if effects.practice.is_some() {
            let p = take(5);
            sql.push_str(&format!(", practice AS ({})", practice_upsert("SELECT learner_id, ", p, "$5 FROM applied")));
        }
        sql.push_str(
            " INSERT INTO learner_reviews AS r (learner_id, reviews) SELECT learner_id, $8 FROM applied
              ON CONFLICT (learner_id) DO UPDATE SET reviews = r.reviews + excluded.reviews
              RETURNING reviews",
        );
        let mut query = bind_applied(sqlx::query(AssertSqlSafe(sql)), effects, now).bind(i64::from(effects.review));
        for (skill_id, start, delta) in &effects.ability_deltas {
            query = query.bind(skill_id).bind(start + delta).bind(*delta);
        }
        if let Some((initial, delta)) = effects.difficulty_delta {
            query = query.bind(initial + delta).bind(delta);
        }
        if let Some(practice) = effects.practice {
            query = bind_practice(query, practice);
        }
        let row = query.fetch_optional(self.db.pool()).await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// SQLite: no data-modifying CTEs, and a round trip costs nothing in process.
    async fn apply_in_transaction(&self, effects: &AttemptEffects) -> Result<Option<i64>, StoreError> {
        let now = now_millis();
        let mut tx = self.db.begin_write().await?;
        let inserted = bind_applied(
            sqlx::query(
                "INSERT INTO applied_attempts (attempt_id, learner_id, item_id, response, record_time, rating, answer_time)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (attempt_id) DO NOTHING",
            ),
            effects,
            now,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let reviews: i64 = sqlx::query_scalar(
            "INSERT INTO learner_reviews AS r (learner_id, reviews) VALUES ($1, $2)
             ON CONFLICT (learner_id) DO UPDATE SET reviews = r.reviews + excluded.reviews
             RETURNING reviews",
        )
        .bind(&effects.learner_id)
        .bind(i64::from(effects.review))
        .fetch_one(&mut *tx)
        .await?;
        for (skill_id, start, delta) in &effects.ability_deltas {
            sqlx::query(
                "INSERT INTO learner_skills AS s (learner_id, skill_id, ability, attempt_count, update_time)
                 VALUES ($1, $2, $3, 1, $5)
                 ON CONFLICT (learner_id, skill_id) DO UPDATE SET
                    ability = s.ability + $4, attempt_count = s.attempt_count + 1,
                    update_time = excluded.update_time",
            )
            .bind(&effects.learner_id)
            .bind(skill_id)
            .bind(start + delta)
            .bind(*delta)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some((initial, delta)) = effects.difficulty_delta {
            sqlx::query(
                "INSERT INTO item_calibration AS c (item_id, difficulty, attempt_count, update_time) VALUES ($1, $2, 1, $4)
                 ON CONFLICT (item_id) DO UPDATE SET
                    difficulty = c.difficulty + $3, attempt_count = c.attempt_count + 1, update_time = excluded.update_time",
            )
            .bind(&effects.item_id)
            .bind(initial + delta)
            .bind(delta)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(practice) = effects.practice {
            let sql = practice_upsert("VALUES ($1, ", 3, "$2)");
            let query = sqlx::query(AssertSqlSafe(sql)).bind(&effects.learner_id).bind(now);
            bind_practice(query, practice).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(Some(reviews))
    }

    /// The learner's practice target correction; None before their first practice attempt.
    pub async fn practice_target(&self, learner_id: &str) -> Result<Option<PracticeTarget>, StoreError> {
        let row = sqlx::query(
            "SELECT correction, rolling_success, first_attempts FROM practice_targets WHERE learner_id = $1",
        )
        .bind(learner_id)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| {
            Ok(PracticeTarget {
                correction: r.try_get(0)?,
                rolling_success: r.try_get(1)?,
                first_attempts: r.try_get(2)?,
            })
        })
        .transpose()
    }

    /// The learner's answers per item, oldest first (attempts applied before ratings were kept
    /// are left out).
    pub async fn review_histories(&self, learner_id: &str) -> Result<Vec<Vec<Review>>, StoreError> {
        let rows = sqlx::query(
            "SELECT item_id, answer_time, rating FROM applied_attempts
             WHERE learner_id = $1 AND rating IS NOT NULL AND answer_time IS NOT NULL
             ORDER BY item_id, answer_time, attempt_id",
        )
        .bind(learner_id)
        .fetch_all(self.db.pool())
        .await?;
        let mut histories: Vec<Vec<Review>> = Vec::new();
        let mut current: Option<String> = None;
        for r in rows {
            let item: String = r.try_get(0)?;
            let rating: i64 = r.try_get(2)?;
            let rating = i32::try_from(rating)
                .ok()
                .and_then(|v| Rating::try_from(v).ok())
                .ok_or_else(|| StoreError::Corrupt(format!("applied attempt rating {rating}")))?;
            let review = Review { at_ms: r.try_get(1)?, rating };
            match histories.last_mut() {
                Some(history) if current.as_deref() == Some(item.as_str()) => history.push(review),
                _ => {
                    histories.push(vec![review]);
                    current = Some(item);
                }
            }
        }
        Ok(histories)
    }

    pub async fn parameter_fit(&self, learner_id: &str) -> Result<Option<StoredFit>, StoreError> {
        let row = sqlx::query(
            "SELECT parameters, kept, reviews, holdout_reviews, default_log_loss, fitted_log_loss, attempt_count,
                    fit_time
             FROM learner_parameters WHERE learner_id = $1",
        )
        .bind(learner_id)
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| {
            let text: String = r.try_get(0)?;
            let parameters = text
                .split(',')
                .map(str::parse::<f32>)
                .collect::<Result<Vec<f32>, _>>()
                .map_err(|e| StoreError::Corrupt(format!("learner parameters: {e}")))?;
            Ok(StoredFit {
                parameters,
                kept: r.try_get::<i64, _>(1)? != 0,
                reviews: r.try_get(2)?,
                holdout_reviews: r.try_get(3)?,
                default_log_loss: r.try_get(4)?,
                fitted_log_loss: r.try_get(5)?,
                attempt_count: r.try_get(6)?,
                fit_time_ms: r.try_get(7)?,
            })
        })
        .transpose()
    }

    /// Records a fit, replacing the one before.
    pub async fn save_fit(&self, learner_id: &str, fit: &StoredFit) -> Result<(), StoreError> {
        let parameters: Vec<String> = fit.parameters.iter().map(f32::to_string).collect();
        sqlx::query(
            "INSERT INTO learner_parameters (learner_id, parameters, kept, reviews, holdout_reviews, default_log_loss,
                                             fitted_log_loss, attempt_count, fit_time)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (learner_id) DO UPDATE SET
                parameters = excluded.parameters, kept = excluded.kept, reviews = excluded.reviews,
                holdout_reviews = excluded.holdout_reviews, default_log_loss = excluded.default_log_loss,
                fitted_log_loss = excluded.fitted_log_loss, attempt_count = excluded.attempt_count,
                fit_time = excluded.fit_time",
        )
        .bind(learner_id)
        .bind(parameters.join(","))
        .bind(i64::from(fit.kept))
        .bind(fit.reviews)
        .bind(fit.holdout_reviews)
        .bind(fit.default_log_loss)
        .bind(fit.fitted_log_loss)
        .bind(fit.attempt_count)
        .bind(fit.fit_time_ms)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    pub async fn attempt_count(&self, learner_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM applied_attempts WHERE learner_id = $1")
            .bind(learner_id)
            .fetch_one(self.db.pool())
            .await?)
    }
}
