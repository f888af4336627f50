//! Where the models live: abilities per learner and skill, item calibration, applied attempts.

use std::collections::HashMap;

use alp_proto::scoring::v1::ApplyAttemptResponse;
use alp_runtime::StoreError;
use alp_runtime::db::{Database, placeholders};
use alp_runtime::time::now_millis;
use prost::Message;
use sqlx::{AssertSqlSafe, Row};

/// A logit estimate and how many attempts it rests on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub attempts: i64,
}

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
    pub response: ApplyAttemptResponse,
    /// Ability change per skill (first attempts only), added to the stored value so concurrent
    /// attempts of one learner cannot overwrite each other.
    pub ability_deltas: Vec<(String, f64)>,
    /// (difficulty to start from when uncalibrated, change) for the item (first attempts only).
    pub difficulty_delta: Option<(f64, f64)>,
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

    /// Writes an attempt's effects; false when the attempt id was applied concurrently (nothing
    /// written then).
    pub async fn apply(&self, effects: &AttemptEffects) -> Result<bool, StoreError> {
        let now = now_millis();
        let mut tx = self.db.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO applied_attempts (attempt_id, learner_id, item_id, response, record_time)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (attempt_id) DO NOTHING",
        )
        .bind(&effects.attempt_id)
        .bind(&effects.learner_id)
        .bind(&effects.item_id)
        .bind(effects.response.encode_to_vec())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for (skill_id, delta) in &effects.ability_deltas {
            sqlx::query(
                "INSERT INTO learner_skills AS s (learner_id, skill_id, ability, attempt_count, update_time)
                 VALUES ($1, $2, $3, 1, $4)
                 ON CONFLICT (learner_id, skill_id) DO UPDATE SET
                    ability = s.ability + excluded.ability, attempt_count = s.attempt_count + 1,
                    update_time = excluded.update_time",
            )
            .bind(&effects.learner_id)
            .bind(skill_id)
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
        tx.commit().await?;
        Ok(true)
    }

    pub async fn attempt_count(&self, learner_id: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM applied_attempts WHERE learner_id = $1")
            .bind(learner_id)
            .fetch_one(self.db.pool())
            .await?)
    }
}
