//! Where the models live: abilities per learner and skill, item calibration, applied attempts.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use alp_proto::common::v1::Rating;
use alp_runtime::StoreError;
use alp_runtime::db::{AnyQuery, Database, Dialect, placeholders, value_rows};
use alp_runtime::time::now_millis;
use sqlx::{AssertSqlSafe, Row};

pub use crate::model::ability::Estimate;
pub use crate::model::attempt::PracticeTarget;
use crate::model::attempt::{self, Changes, Models, PracticePolicy, Recorded};
use crate::model::fitting::Review;

/// What one batch of recorded attempts did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchApplied {
    /// Attempt ids applied now, in the batch's order.
    pub applied: Vec<String>,
    pub duplicates: usize,
    /// Every learner of the applied attempts with their state after the batch, as the cache
    /// keeps it.
    pub learners: Vec<LearnerModels>,
    /// Each learner's review count after the batch, for those it gave reviews.
    pub reviews: HashMap<String, i64>,
    /// The calibrations the batch moved, as written.
    pub calibrations: Vec<CalibrationRow>,
}

/// An item's calibration with the version of the batch that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationRow {
    pub item_id: String,
    pub estimate: Estimate,
    pub version: i64,
}

/// What scoring keeps of one learner, as a batch left it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LearnerModels {
    pub learner_id: String,
    pub abilities: HashMap<String, Estimate>,
    pub practice: Option<PracticeTarget>,
    pub fit: Option<StoredFit>,
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

/// Rows per multi-row statement: PostgreSQL takes at most 65,535 binds, SQLite 32,766.
const ROWS_PER_STATEMENT: usize = 1000;

/// The transaction-scoped advisory lock every batch takes on PostgreSQL: batches from any
/// replica apply one after another, so writing the models back whole loses no update.
const APPLY_LOCK: i64 = 0x616c_7073_636f_7265;

const FIT_COLUMNS: &str =
    "parameters, kept, reviews, holdout_reviews, default_log_loss, fitted_log_loss, attempt_count, fit_time";

/// A fit from [`FIT_COLUMNS`], starting at column `first`.
fn fit_from_row(r: &sqlx::any::AnyRow, first: usize) -> Result<StoredFit, StoreError> {
    let text: String = r.try_get(first)?;
    let parameters = text
        .split(',')
        .map(str::parse::<f32>)
        .collect::<Result<Vec<f32>, _>>()
        .map_err(|e| StoreError::Corrupt(format!("learner parameters: {e}")))?;
    Ok(StoredFit {
        parameters,
        kept: r.try_get::<i64, _>(first + 1)? != 0,
        reviews: r.try_get(first + 2)?,
        holdout_reviews: r.try_get(first + 3)?,
        default_log_loss: r.try_get(first + 4)?,
        fitted_log_loss: r.try_get(first + 5)?,
        attempt_count: r.try_get(first + 6)?,
        fit_time_ms: r.try_get(first + 7)?,
    })
}

/// Each value once, in first-seen order.
fn distinct_values<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    values.filter(|v| seen.insert(*v)).map(str::to_owned).collect()
}

fn bind_all<'q>(mut query: AnyQuery<'q>, values: &'q [String]) -> AnyQuery<'q> {
    for value in values {
        query = query.bind(value);
    }
    query
}

#[derive(Debug, Clone)]
pub struct ScoringStore {
    db: Database,
}

impl ScoringStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Everything scoring keeps of one learner, in one statement: a row per skill attempted
    /// (one with no skill before any), each carrying the practice target and the latest fit.
    pub async fn learner_models(&self, learner_id: &str) -> Result<LearnerModels, StoreError> {
        // Written once: every learner seen for the first time runs it.
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT s.skill_id, s.ability, s.attempt_count,
                        p.correction, p.rolling_success, p.first_attempts, {}
                 FROM (SELECT $1 AS learner_id) l
                 LEFT JOIN learner_skills s ON s.learner_id = l.learner_id
                 LEFT JOIN practice_targets p ON p.learner_id = l.learner_id
                 LEFT JOIN learner_parameters f ON f.learner_id = l.learner_id",
                FIT_COLUMNS.split(", ").map(|c| format!("f.{c}")).collect::<Vec<_>>().join(", ")
            )
        });
        let rows = sqlx::query(AssertSqlSafe(SQL.as_str())).bind(learner_id).fetch_all(self.db.pool()).await?;
        let mut models = LearnerModels { learner_id: learner_id.to_owned(), ..LearnerModels::default() };
        for (i, r) in rows.iter().enumerate() {
            if let Some(skill_id) = r.try_get::<Option<String>, _>(0)? {
                models.abilities.insert(skill_id, Estimate { value: r.try_get(1)?, attempts: r.try_get(2)? });
            }
            if i > 0 {
                continue;
            }
            if let Some(correction) = r.try_get::<Option<f64>, _>(3)? {
                models.practice =
                    Some(PracticeTarget { correction, rolling_success: r.try_get(4)?, first_attempts: r.try_get(5)? });
            }
            if r.try_get::<Option<String>, _>(6)?.is_some() {
                models.fit = Some(fit_from_row(r, 6)?);
            }
        }
        Ok(models)
    }

    /// Calibrations in (version, item id) order, from just past `after` (from the first when
    /// None), at most `limit` of them: a copy that read up to some row catches up by reading on
    /// from it, since each batch's version is higher than every committed one.
    pub async fn calibrations_after(
        &self,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Result<Vec<CalibrationRow>, StoreError> {
        let (version, item_id) = after.unwrap_or((i64::MIN, ""));
        let rows = sqlx::query(
            "SELECT item_id, difficulty, attempt_count, version FROM item_calibration
             WHERE version > $1 OR (version = $1 AND item_id > $2)
             ORDER BY version, item_id LIMIT $3",
        )
        .bind(version)
        .bind(item_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CalibrationRow {
                    item_id: r.try_get(0)?,
                    estimate: Estimate { value: r.try_get(1)?, attempts: r.try_get(2)? },
                    version: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Applies recorded attempts in one transaction, in the order given, each once: an attempt
    /// id applied before (or earlier in the batch) changes nothing. The models are read inside
    /// the transaction after the batch lock, moved on in memory by [`attempt::apply`] and
    /// written back whole, so a batch sees every value the one before it wrote.
    pub async fn apply_batch(
        &self,
        attempts: &[Recorded],
        practice: &PracticePolicy,
    ) -> Result<BatchApplied, StoreError> {
        let now = now_millis();
        let mut tx = self.db.begin_write().await?;
        if self.db.dialect() == Dialect::Postgres {
            // SQLite's write transaction is exclusive already.
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(APPLY_LOCK).execute(&mut *tx).await?;
        }
        let mut seen = HashSet::new();
        let distinct: Vec<&Recorded> = attempts.iter().filter(|a| seen.insert(a.attempt_id.as_str())).collect();
        let mut inserted = HashSet::new();
        for chunk in distinct.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO applied_attempts (attempt_id, learner_id, item_id, response, record_time, rating, answer_time)
                 VALUES {} ON CONFLICT (attempt_id) DO NOTHING RETURNING attempt_id",
                value_rows(1, chunk.len(), 7)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for a in chunk {
                // The answer itself stays in the scheduler's log of record.
                query = query
                    .bind(&a.attempt_id)
                    .bind(&a.learner_id)
                    .bind(&a.item_id)
                    .bind(Vec::<u8>::new())
                    .bind(now)
                    .bind(i64::from(a.rating as i32))
                    .bind(a.answer_ms);
            }
            for row in query.fetch_all(&mut *tx).await? {
                inserted.insert(row.try_get::<String, _>(0)?);
            }
        }
        let fresh: Vec<&Recorded> = distinct.into_iter().filter(|a| inserted.contains(&a.attempt_id)).collect();
        let mut outcome = BatchApplied { duplicates: attempts.len() - fresh.len(), ..BatchApplied::default() };
        if fresh.is_empty() {
            tx.commit().await?;
            return Ok(outcome);
        }

        // Every learner's whole state, also of those with reviews only: the batch writes it to
        // the cache afterwards, so evaluations and rankings find it there.
        let learners = distinct_values(fresh.iter().map(|a| a.learner_id.as_str()));
        let items = distinct_values(fresh.iter().filter(|a| a.first).map(|a| a.item_id.as_str()));
        let mut models = Models::default();
        let mut fits = HashMap::new();
        for chunk in learners.chunks(ROWS_PER_STATEMENT) {
            let list = placeholders(1, chunk.len());
            let sql = format!(
                "SELECT learner_id, skill_id, ability, attempt_count FROM learner_skills WHERE learner_id IN ({list})"
            );
            for r in bind_all(sqlx::query(AssertSqlSafe(sql)), chunk).fetch_all(&mut *tx).await? {
                let estimate = Estimate { value: r.try_get(2)?, attempts: r.try_get(3)? };
                models.abilities.entry(r.try_get(0)?).or_default().insert(r.try_get(1)?, estimate);
            }
            let sql = format!(
                "SELECT learner_id, correction, rolling_success, first_attempts FROM practice_targets
                 WHERE learner_id IN ({list})"
            );
            for r in bind_all(sqlx::query(AssertSqlSafe(sql)), chunk).fetch_all(&mut *tx).await? {
                let target = PracticeTarget {
                    correction: r.try_get(1)?,
                    rolling_success: r.try_get(2)?,
                    first_attempts: r.try_get(3)?,
                };
                models.practice.insert(r.try_get(0)?, target);
            }
            let sql = format!("SELECT learner_id, {FIT_COLUMNS} FROM learner_parameters WHERE learner_id IN ({list})");
            for r in bind_all(sqlx::query(AssertSqlSafe(sql)), chunk).fetch_all(&mut *tx).await? {
                fits.insert(r.try_get::<String, _>(0)?, fit_from_row(&r, 1)?);
            }
        }
        for chunk in items.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT item_id, difficulty, attempt_count FROM item_calibration WHERE item_id IN ({})",
                placeholders(1, chunk.len())
            );
            for r in bind_all(sqlx::query(AssertSqlSafe(sql)), chunk).fetch_all(&mut *tx).await? {
                models.calibration.insert(r.try_get(0)?, Estimate { value: r.try_get(1)?, attempts: r.try_get(2)? });
            }
        }

        let mut changes = Changes::default();
        for a in &fresh {
            attempt::apply(&mut models, &mut changes, a, practice);
        }

        let skills: Vec<(&String, &String, Estimate)> =
            changes.skills.iter().filter_map(|(l, s)| Some((l, s, *models.abilities.get(l)?.get(s)?))).collect();
        for chunk in skills.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO learner_skills (learner_id, skill_id, ability, attempt_count, update_time) VALUES {}
                 ON CONFLICT (learner_id, skill_id) DO UPDATE SET
                    ability = excluded.ability, attempt_count = excluded.attempt_count, update_time = excluded.update_time",
                value_rows(1, chunk.len(), 5)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (learner, skill, e) in chunk {
                query = query.bind(*learner).bind(*skill).bind(e.value).bind(e.attempts).bind(now);
            }
            query.execute(&mut *tx).await?;
        }
        let calibrated: Vec<(&String, Estimate)> =
            changes.items.iter().filter_map(|i| Some((i, *models.calibration.get(i)?))).collect();
        if !calibrated.is_empty() {
            // Under the batch lock: versions are handed out in commit order.
            let version: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM item_calibration")
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
            for chunk in calibrated.chunks(ROWS_PER_STATEMENT) {
                let sql = format!(
                    "INSERT INTO item_calibration (item_id, difficulty, attempt_count, update_time, version) VALUES {}
                     ON CONFLICT (item_id) DO UPDATE SET
                        difficulty = excluded.difficulty, attempt_count = excluded.attempt_count,
                        update_time = excluded.update_time, version = excluded.version",
                    value_rows(1, chunk.len(), 5)
                );
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for (item, e) in chunk {
                    query = query.bind(*item).bind(e.value).bind(e.attempts).bind(now).bind(version);
                }
                query.execute(&mut *tx).await?;
            }
            outcome.calibrations = calibrated
                .iter()
                .map(|(item, e)| CalibrationRow { item_id: (*item).clone(), estimate: *e, version })
                .collect();
        }
        let targets: Vec<(&String, PracticeTarget)> =
            changes.practice.iter().filter_map(|l| Some((l, *models.practice.get(l)?))).collect();
        for chunk in targets.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO practice_targets (learner_id, correction, rolling_success, first_attempts, update_time)
                 VALUES {} ON CONFLICT (learner_id) DO UPDATE SET
                    correction = excluded.correction, rolling_success = excluded.rolling_success,
                    first_attempts = excluded.first_attempts, update_time = excluded.update_time",
                value_rows(1, chunk.len(), 5)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (learner, t) in chunk {
                query =
                    query.bind(*learner).bind(t.correction).bind(t.rolling_success).bind(t.first_attempts).bind(now);
            }
            query.execute(&mut *tx).await?;
        }
        let reviews: Vec<(&String, i64)> = changes.reviews.iter().map(|(l, n)| (l, *n)).collect();
        for chunk in reviews.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO learner_reviews AS r (learner_id, reviews) VALUES {}
                 ON CONFLICT (learner_id) DO UPDATE SET reviews = r.reviews + excluded.reviews
                 RETURNING learner_id, reviews",
                value_rows(1, chunk.len(), 2)
            );
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (learner, n) in chunk {
                query = query.bind(*learner).bind(*n);
            }
            for r in query.fetch_all(&mut *tx).await? {
                outcome.reviews.insert(r.try_get(0)?, r.try_get(1)?);
            }
        }
        tx.commit().await?;
        outcome.learners = learners
            .into_iter()
            .map(|learner_id| LearnerModels {
                abilities: models.abilities.remove(&learner_id).unwrap_or_default(),
                practice: models.practice.get(&learner_id).copied(),
                fit: fits.remove(&learner_id),
                learner_id,
            })
            .collect();
        outcome.applied = fresh.into_iter().map(|a| a.attempt_id.clone()).collect();
        Ok(outcome)
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
        let sql = format!("SELECT {FIT_COLUMNS} FROM learner_parameters WHERE learner_id = $1");
        let row = sqlx::query(AssertSqlSafe(sql)).bind(learner_id).fetch_optional(self.db.pool()).await?;
        row.map(|r| fit_from_row(&r, 0)).transpose()
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
