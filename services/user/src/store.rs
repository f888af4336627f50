//! Where learners, enrolments and progress aggregates are stored.

use std::collections::{HashMap, HashSet};

use alp_proto::user::v1::{CourseProgress, Enrolment, Learner, ProgressEvent, SkillProgress};
use alp_runtime::StoreError;
use alp_runtime::db::{Database, Dialect, placeholders};
use alp_runtime::time::{now_millis, timestamp};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::error::UserError;

/// The profile fields UpdateLearner may change; `None` leaves a field as it is.
#[derive(Debug, Default, Clone)]
pub struct LearnerChanges {
    pub display_name: Option<String>,
    pub email: Option<String>,
    pub locale: Option<String>,
    pub desired_retention: Option<f64>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecordOutcome {
    pub applied: i32,
    pub duplicates: i32,
    pub unknown_learners: i32,
}

#[derive(Debug, Clone)]
pub struct UserStore {
    db: Database,
}

/// `$1`: the events as a JSON array of objects named like the columns of `event`; `$2`: the
/// record time. Each skill counts once per attempt, as in SQLite's per-event statements. Unknown
/// learners are left out, and the known ones are held against a concurrent DeleteLearner until
/// the batch commits.
const RECORD_PROGRESS_POSTGRES: &str = "
    WITH event AS (
        SELECT * FROM jsonb_to_recordset($1::jsonb) AS e(
            attempt_id TEXT, learner_id TEXT, course_id TEXT, correct BIGINT, first_attempt BIGINT,
            answered BIGINT, skill_ids JSONB)
    ),
    known AS (SELECT e.* FROM event e JOIN learners l ON l.learner_id = e.learner_id FOR KEY SHARE OF l),
    fresh AS (
        INSERT INTO progress_events (attempt_id, learner_id, record_time)
        SELECT attempt_id, learner_id, $2 FROM known ON CONFLICT (attempt_id) DO NOTHING
        RETURNING attempt_id
    ),
    course AS (
        INSERT INTO course_progress AS p (learner_id, course_id, attempt_count, correct_count, items_seen, last_attempt_time)
        SELECT k.learner_id, k.course_id, count(*), sum(k.correct), sum(k.first_attempt), max(k.answered)
        FROM known k JOIN fresh USING (attempt_id) GROUP BY k.learner_id, k.course_id
        ON CONFLICT (learner_id, course_id) DO UPDATE SET
           attempt_count = p.attempt_count + excluded.attempt_count,
           correct_count = p.correct_count + excluded.correct_count,
           items_seen = p.items_seen + excluded.items_seen,
           last_attempt_time = GREATEST(p.last_attempt_time, excluded.last_attempt_time)
    ),
    skill AS (
        INSERT INTO skill_progress AS p (learner_id, course_id, skill_id, attempt_count, correct_count, last_attempt_time)
        SELECT k.learner_id, k.course_id, s.skill_id, count(*), sum(k.correct), max(k.answered)
        FROM known k JOIN fresh USING (attempt_id)
             CROSS JOIN LATERAL (SELECT DISTINCT value FROM jsonb_array_elements_text(k.skill_ids)) AS s (skill_id)
        GROUP BY k.learner_id, k.course_id, s.skill_id
        ON CONFLICT (learner_id, course_id, skill_id) DO UPDATE SET
           attempt_count = p.attempt_count + excluded.attempt_count,
           correct_count = p.correct_count + excluded.correct_count,
           last_attempt_time = GREATEST(p.last_attempt_time, excluded.last_attempt_time)
    )
    SELECT (SELECT count(*) FROM known), (SELECT count(*) FROM fresh)";

const LEARNER_COLUMNS: &str = "learner_id, display_name, email, locale, desired_retention, create_time, update_time";

impl UserStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn create_learner(&self, learner: &Learner) -> Result<Learner, UserError> {
        let now = now_millis();
        let inserted = sqlx::query(
            "INSERT INTO learners (learner_id, display_name, email, locale, desired_retention, create_time, update_time)
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (learner_id) DO NOTHING",
        )
        .bind(&learner.learner_id)
        .bind(&learner.display_name)
        .bind(&learner.email)
        .bind(&learner.locale)
        .bind(learner.desired_retention)
        .bind(now)
        .execute(self.db.pool())
        .await
        .map_err(StoreError::from)?
        .rows_affected();
        if inserted == 0 {
            return Err(UserError::AlreadyExists { entity: "learner", id: learner.learner_id.clone() });
        }
        Ok(Learner {
            enrolments: Vec::new(),
            create_time: Some(timestamp(now)),
            update_time: Some(timestamp(now)),
            ..learner.clone()
        })
    }

    /// Learners by id with their enrolments; ids not found are absent.
    pub async fn get_learners(&self, ids: &[String]) -> Result<Vec<Learner>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for the learners and their enrolments: this read is on every NextItems
        // and SubmitAttempt that misses the cache.
        let list = placeholders(1, ids.len());
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "SELECT {LEARNER_COLUMNS}, course_id, enrol_time FROM learners LEFT JOIN enrolments USING (learner_id)
             WHERE learner_id IN ({list}) ORDER BY learner_id, course_id"
        )));
        for id in ids {
            query = query.bind(id.clone());
        }
        let mut learners: Vec<Learner> = Vec::with_capacity(ids.len());
        for row in query.fetch_all(self.db.pool()).await? {
            let learner_id: String = row.try_get(0)?;
            if learners.last().is_none_or(|l| l.learner_id != learner_id) {
                learners.push(learner_from_row(&row)?);
            }
            let course_id: Option<String> = row.try_get(7)?;
            if let (Some(course_id), Some(learner)) = (course_id, learners.last_mut()) {
                learner.enrolments.push(Enrolment { course_id, enrol_time: Some(timestamp(row.try_get(8)?)) });
            }
        }
        Ok(learners)
    }

    pub async fn get_learner(&self, id: &str) -> Result<Option<Learner>, StoreError> {
        Ok(self.get_learners(&[id.to_owned()]).await?.pop())
    }

    async fn attach_enrolments(&self, learners: &mut [Learner]) -> Result<(), StoreError> {
        if learners.is_empty() {
            return Ok(());
        }
        let list = placeholders(1, learners.len());
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "SELECT learner_id, course_id, enrol_time FROM enrolments WHERE learner_id IN ({list}) ORDER BY learner_id, course_id"
        )));
        for learner in learners.iter() {
            query = query.bind(learner.learner_id.clone());
        }
        let mut by_learner: HashMap<String, Vec<Enrolment>> = HashMap::new();
        for row in query.fetch_all(self.db.pool()).await? {
            by_learner
                .entry(row.try_get(0)?)
                .or_default()
                .push(Enrolment { course_id: row.try_get(1)?, enrol_time: Some(timestamp(row.try_get(2)?)) });
        }
        for learner in learners.iter_mut() {
            learner.enrolments = by_learner.remove(&learner.learner_id).unwrap_or_default();
        }
        Ok(())
    }

    pub async fn update_learner(&self, id: &str, changes: &LearnerChanges) -> Result<Option<Learner>, StoreError> {
        let updated = sqlx::query(
            "UPDATE learners SET
                display_name = COALESCE($2, display_name),
                email = COALESCE($3, email),
                locale = COALESCE($4, locale),
                desired_retention = COALESCE($5, desired_retention),
                update_time = $6
             WHERE learner_id = $1",
        )
        .bind(id)
        .bind(changes.display_name.clone())
        .bind(changes.email.clone())
        .bind(changes.locale.clone())
        .bind(changes.desired_retention)
        .bind(now_millis())
        .execute(self.db.pool())
        .await?
        .rows_affected();
        if updated == 0 {
            return Ok(None);
        }
        self.get_learner(id).await
    }

    /// Deletes a learner with their enrolments and progress; false when there was none.
    pub async fn delete_learner(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await?;
        // The learner first: on PostgreSQL its row lock waits for a progress batch holding the
        // learner, and makes later batches leave them out, so the deletes below miss nothing.
        // The rest explicitly: PostgreSQL's progress tables have no foreign keys, and SQLite
        // cascades only with PRAGMA foreign_keys on.
        let deleted = sqlx::query("DELETE FROM learners WHERE learner_id = $1").bind(id).execute(&mut *tx).await?;
        for table in ["progress_events", "skill_progress", "course_progress", "enrolments"] {
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE learner_id = $1")))
                .bind(id.to_owned())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    pub async fn list_learners(&self, after: &str, limit: u32) -> Result<Vec<Learner>, StoreError> {
        let mut learners: Vec<Learner> = sqlx::query(AssertSqlSafe(format!(
            "SELECT {LEARNER_COLUMNS} FROM learners WHERE learner_id > $1 ORDER BY learner_id LIMIT $2"
        )))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(learner_from_row)
        .collect::<Result<_, _>>()?;
        self.attach_enrolments(&mut learners).await?;
        Ok(learners)
    }

    /// Enrols a learner; the boolean is true when they were enrolled already.
    pub async fn enrol(&self, learner_id: &str, course_id: &str) -> Result<(Enrolment, bool), UserError> {
        let mut tx = self.db.begin_write().await?;
        let known = sqlx::query("SELECT 1 FROM learners WHERE learner_id = $1")
            .bind(learner_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        if known.is_none() {
            return Err(UserError::not_found("learner", learner_id));
        }
        let now = now_millis();
        let inserted = sqlx::query(
            "INSERT INTO enrolments (learner_id, course_id, enrol_time) VALUES ($1, $2, $3)
             ON CONFLICT (learner_id, course_id) DO NOTHING",
        )
        .bind(learner_id)
        .bind(course_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?
        .rows_affected();
        let enrol_time: i64 =
            sqlx::query_scalar("SELECT enrol_time FROM enrolments WHERE learner_id = $1 AND course_id = $2")
                .bind(learner_id)
                .bind(course_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok((Enrolment { course_id: course_id.to_owned(), enrol_time: Some(timestamp(enrol_time)) }, inserted == 0))
    }

    /// Progress of the learner's enrolled courses (or one course), zeros before any attempt.
    pub async fn progress(&self, learner_id: &str, course_id: &str) -> Result<Vec<CourseProgress>, StoreError> {
        // The two reads go out together: one round trip of latency.
        let courses = sqlx::query(
            "SELECT e.course_id, COALESCE(p.attempt_count, 0), COALESCE(p.correct_count, 0),
                    COALESCE(p.items_seen, 0), COALESCE(p.last_attempt_time, 0)
             FROM enrolments e
             LEFT JOIN course_progress p ON p.learner_id = e.learner_id AND p.course_id = e.course_id
             WHERE e.learner_id = $1 AND ($2 = '' OR e.course_id = $2)
             ORDER BY e.course_id",
        )
        .bind(learner_id)
        .bind(course_id)
        .fetch_all(self.db.pool());
        let skills = sqlx::query(
            "SELECT course_id, skill_id, attempt_count, correct_count, last_attempt_time FROM skill_progress
             WHERE learner_id = $1 AND ($2 = '' OR course_id = $2) ORDER BY course_id, skill_id",
        )
        .bind(learner_id)
        .bind(course_id)
        .fetch_all(self.db.pool());
        let (rows, skill_rows) = tokio::try_join!(courses, skills)?;
        let mut courses = Vec::with_capacity(rows.len());
        for row in &rows {
            let attempts: i64 = row.try_get(1)?;
            let correct: i64 = row.try_get(2)?;
            let last: i64 = row.try_get(4)?;
            courses.push(CourseProgress {
                course_id: row.try_get(0)?,
                attempt_count: attempts,
                correct_count: correct,
                items_seen: row.try_get(3)?,
                accuracy: if attempts > 0 { correct as f64 / attempts as f64 } else { 0.0 },
                last_attempt_time: (attempts > 0).then(|| timestamp(last)),
                skills: Vec::new(),
            });
        }
        for row in &skill_rows {
            let course: String = row.try_get(0)?;
            if let Some(progress) = courses.iter_mut().find(|c| c.course_id == course) {
                progress.skills.push(SkillProgress {
                    skill_id: row.try_get(1)?,
                    attempt_count: row.try_get(2)?,
                    correct_count: row.try_get(3)?,
                    last_attempt_time: Some(timestamp(row.try_get(4)?)),
                });
            }
        }
        Ok(courses)
    }

    /// Applies events; an attempt id already recorded (before or earlier in the batch) is
    /// skipped, so a redelivered batch changes nothing.
    pub async fn record_progress(&self, events: &[ProgressEvent]) -> Result<RecordOutcome, StoreError> {
        match self.db.dialect() {
            Dialect::Postgres => {
                let mut seen = HashSet::new();
                let unique: Vec<&ProgressEvent> = events.iter().filter(|e| seen.insert(&e.attempt_id)).collect();
                let duplicates = i32::try_from(events.len() - unique.len()).unwrap_or(i32::MAX);
                let counted = self.record_progress_in_one_statement(&unique).await?;
                Ok(RecordOutcome { duplicates: counted.duplicates + duplicates, ..counted })
            }
            Dialect::Sqlite => self.record_progress_in_transaction(events).await,
        }
    }

    /// PostgreSQL: a batch of distinct attempts in one statement (one round trip, its own
    /// transaction). The events travel as one JSON parameter, so every batch runs the same
    /// prepared statement, whatever its size. Counts are added up per learner, course and skill
    /// first, because one statement may not update a row twice.
    async fn record_progress_in_one_statement(&self, events: &[&ProgressEvent]) -> Result<RecordOutcome, StoreError> {
        let now = now_millis();
        let rows: Vec<serde_json::Value> = events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "attempt_id": e.attempt_id,
                    "learner_id": e.learner_id,
                    "course_id": e.course_id,
                    "correct": i64::from(e.correct),
                    "first_attempt": i64::from(e.first_attempt),
                    "answered": e.answer_time.as_ref().map_or(now, alp_runtime::time::timestamp_millis),
                    "skill_ids": e.skill_ids,
                })
            })
            .collect();
        let events_json = serde_json::Value::Array(rows).to_string();
        let row = sqlx::query(RECORD_PROGRESS_POSTGRES).bind(events_json).bind(now).fetch_one(self.db.pool()).await?;
        let (known, fresh): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        let count = |n: i64| i32::try_from(n).unwrap_or(i32::MAX);
        Ok(RecordOutcome {
            applied: count(fresh),
            duplicates: count(known - fresh),
            unknown_learners: count(events.len() as i64 - known),
        })
    }

    /// SQLite: no data-modifying CTEs, and a round trip costs nothing in process.
    async fn record_progress_in_transaction(&self, events: &[ProgressEvent]) -> Result<RecordOutcome, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let learner_ids: Vec<String> =
            events.iter().map(|e| e.learner_id.clone()).collect::<HashSet<_>>().into_iter().collect();
        let mut known = HashSet::new();
        for chunk in learner_ids.chunks(500) {
            let mut query = sqlx::query(AssertSqlSafe(format!(
                "SELECT learner_id FROM learners WHERE learner_id IN ({})",
                placeholders(1, chunk.len())
            )));
            for id in chunk {
                query = query.bind(id.clone());
            }
            for row in query.fetch_all(&mut *tx).await? {
                known.insert(row.try_get::<String, _>(0)?);
            }
        }
        let now = now_millis();
        let mut outcome = RecordOutcome::default();
        for event in events {
            if !known.contains(&event.learner_id) {
                outcome.unknown_learners += 1;
                continue;
            }
            let fresh = sqlx::query(
                "INSERT INTO progress_events (attempt_id, learner_id, record_time) VALUES ($1, $2, $3)
                 ON CONFLICT (attempt_id) DO NOTHING",
            )
            .bind(&event.attempt_id)
            .bind(&event.learner_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if fresh == 0 {
                outcome.duplicates += 1;
                continue;
            }
            let answered = event.answer_time.as_ref().map_or(now, alp_runtime::time::timestamp_millis);
            let correct = i64::from(event.correct);
            sqlx::query(
                "INSERT INTO course_progress AS p (learner_id, course_id, attempt_count, correct_count, items_seen, last_attempt_time)
                 VALUES ($1, $2, 1, $3, $4, $5)
                 ON CONFLICT (learner_id, course_id) DO UPDATE SET
                    attempt_count = p.attempt_count + 1,
                    correct_count = p.correct_count + excluded.correct_count,
                    items_seen = p.items_seen + excluded.items_seen,
                    last_attempt_time = CASE WHEN excluded.last_attempt_time > p.last_attempt_time
                                             THEN excluded.last_attempt_time ELSE p.last_attempt_time END",
            )
            .bind(&event.learner_id)
            .bind(&event.course_id)
            .bind(correct)
            .bind(i64::from(event.first_attempt))
            .bind(answered)
            .execute(&mut *tx)
            .await?;
            for skill_id in event.skill_ids.iter().collect::<HashSet<_>>() {
                sqlx::query(
                    "INSERT INTO skill_progress AS p (learner_id, course_id, skill_id, attempt_count, correct_count, last_attempt_time)
                     VALUES ($1, $2, $3, 1, $4, $5)
                     ON CONFLICT (learner_id, course_id, skill_id) DO UPDATE SET
                        attempt_count = p.attempt_count + 1,
                        correct_count = p.correct_count + excluded.correct_count,
                        last_attempt_time = CASE WHEN excluded.last_attempt_time > p.last_attempt_time
                                                 THEN excluded.last_attempt_time ELSE p.last_attempt_time END",
                )
                .bind(&event.learner_id)
                .bind(&event.course_id)
                .bind(skill_id)
                .bind(correct)
                .bind(answered)
                .execute(&mut *tx)
                .await?;
            }
            outcome.applied += 1;
        }
        tx.commit().await?;
        Ok(outcome)
    }
}

fn learner_from_row(row: &AnyRow) -> Result<Learner, StoreError> {
    Ok(Learner {
        learner_id: row.try_get(0)?,
        display_name: row.try_get(1)?,
        email: row.try_get(2)?,
        locale: row.try_get(3)?,
        desired_retention: row.try_get(4)?,
        enrolments: Vec::new(),
        create_time: Some(timestamp(row.try_get(5)?)),
        update_time: Some(timestamp(row.try_get(6)?)),
    })
}
