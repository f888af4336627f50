//! The scheduler's own data: the attempt log, memory states and the outbox to its consumers.

use std::collections::HashMap;

use alp_proto::common::v1::MemoryState;
use alp_proto::scheduler::v1::Attempt;
use alp_runtime::StoreError;
use alp_runtime::db::{AnyQuery, Database, Dialect, value_rows};
use alp_runtime::time::{duration, timestamp};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

pub use crate::outbox::Consumer;

/// A learner's memory of one item.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryRow {
    pub item_id: String,
    pub course_id: String,
    pub stability: f64,
    pub difficulty: f64,
    pub last_review_ms: i64,
    pub due_ms: i64,
    pub last_rating: i32,
    pub review_count: i64,
    pub lapse_count: i64,
    /// `MemoryPhase` of the proto.
    pub phase: i32,
    pub step: u32,
    /// Scoring's current-knowledge estimate; None for rows written before it existed.
    pub knowledge: Option<f64>,
}

impl MemoryRow {
    pub fn memory(&self) -> MemoryState {
        MemoryState {
            stability: self.stability,
            difficulty: self.difficulty,
            phase: self.phase,
            step: self.step,
            knowledge: self.knowledge,
        }
    }
}

/// An attempt as recorded, with the plain values the row holds.
#[derive(Debug, Clone)]
pub struct AttemptRow {
    pub attempt_id: String,
    pub learner_id: String,
    pub course_id: String,
    pub item_id: String,
    pub rating: i32,
    pub correct: bool,
    pub response_ms: i64,
    pub answer_ms: i64,
    pub record_ms: i64,
    pub stability: f64,
    pub difficulty: f64,
    pub due_ms: i64,
    pub predicted_recall: f64,
    pub predicted_success: f64,
    /// Empty for practice.
    pub mock_test_id: String,
}

impl AttemptRow {
    pub fn to_proto(&self) -> Attempt {
        Attempt {
            attempt_id: self.attempt_id.clone(),
            learner_id: self.learner_id.clone(),
            course_id: self.course_id.clone(),
            item_id: self.item_id.clone(),
            rating: self.rating,
            correct: self.correct,
            response_time: Some(duration(self.response_ms)),
            answer_time: Some(timestamp(self.answer_ms)),
            record_time: Some(timestamp(self.record_ms)),
            memory: Some(MemoryState {
                stability: self.stability,
                difficulty: self.difficulty,
                ..MemoryState::default()
            }),
            due_time: Some(timestamp(self.due_ms)),
            predicted_recall: self.predicted_recall,
            predicted_success: self.predicted_success,
            mock_test_id: self.mock_test_id.clone(),
        }
    }
}

/// One attempt's durable write: the attempt, the learner's new memory state of the item and one
/// outbox row per consumer.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: AttemptRow,
    pub memory: MemoryRow,
    pub outbox: Vec<(Consumer, Vec<u8>)>,
}

/// (consumer, sequence number) of one attempt's outbox rows, as the database returned them.
type OutboxSeqs = Vec<(String, i64)>;

/// Filters of an attempt export.
#[derive(Debug, Clone, Default)]
pub struct ExportFilter {
    pub learner_id: String,
    pub course_id: String,
    pub start_ms: i64,
    pub end_ms: i64,
}

#[derive(Debug, Clone)]
pub struct SchedulerStore {
    db: Database,
}

const ATTEMPT_COLUMNS: &str = "attempt_id, learner_id, course_id, item_id, rating, correct, response_ms, answer_time, \
     record_time, stability, difficulty, due_time, predicted_recall, predicted_success, mock_test_id";
const MEMORY_COLUMNS: &str = "item_id, course_id, stability, difficulty, last_review_time, due_time, last_rating, \
     review_count, lapse_count, phase, step, knowledge";
/// [`MEMORY_COLUMNS`] as named beside the attempt's in a batch's input rows.
const MEMORY_INPUT_COLUMNS: &str = "m_item_id, m_course_id, m_stability, m_difficulty, m_last_review_time, \
     m_due_time, m_last_rating, m_review_count, m_lapse_count, m_phase, m_step, m_knowledge";
/// Parameters per record in a batch: [`bind_attempt`]'s, then [`bind_memory`]'s.
const RECORD_PARAMETERS: usize = 15 + 12;
/// The attempt's columns as bound by [`bind_attempt`].
const ATTEMPT_VALUES: &str = "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";
/// A new answer to an item seen before adds to its counts and replaces the rest.
const MEMORY_UPSERT: &str = "ON CONFLICT (learner_id, item_id) DO UPDATE SET
        stability = excluded.stability, difficulty = excluded.difficulty,
        last_review_time = excluded.last_review_time, due_time = excluded.due_time,
        last_rating = excluded.last_rating, review_count = m.review_count + 1,
        lapse_count = m.lapse_count + excluded.lapse_count, phase = excluded.phase, step = excluded.step,
        knowledge = excluded.knowledge";

impl SchedulerStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub async fn attempt(&self, attempt_id: &str) -> Result<Option<AttemptRow>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE attempt_id = $1")))
            .bind(attempt_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| attempt_from_row(&r)).transpose()
    }

    pub async fn memory_state(&self, learner_id: &str, item_id: &str) -> Result<Option<MemoryRow>, StoreError> {
        let pair = (learner_id.to_owned(), item_id.to_owned());
        Ok(self.memory_states_of(std::slice::from_ref(&pair)).await?.remove(&pair))
    }

    /// The memory states of (learner, item) pairs in one round trip; pairs without one are absent.
    pub async fn memory_states_of(
        &self,
        pairs: &[(String, String)],
    ) -> Result<HashMap<(String, String), MemoryRow>, StoreError> {
        if pairs.is_empty() {
            return Ok(HashMap::new());
        }
        let mut query = sqlx::query(AssertSqlSafe(format!(
            "WITH wanted (learner_id, item_id) AS (VALUES {})
             SELECT {MEMORY_COLUMNS}, learner_id FROM wanted JOIN memory_states USING (learner_id, item_id)",
            value_rows(1, pairs.len(), 2)
        )));
        for (learner_id, item_id) in pairs {
            query = query.bind(learner_id.clone()).bind(item_id.clone());
        }
        let mut found = HashMap::with_capacity(pairs.len());
        for row in query.fetch_all(self.db.pool()).await? {
            let memory = memory_from_row(&row)?;
            found.insert((row.try_get(12)?, memory.item_id.clone()), memory);
        }
        Ok(found)
    }

    /// Every item the learner has attempted in a course, soonest due first.
    pub async fn memory_states(&self, learner_id: &str, course_id: &str) -> Result<Vec<MemoryRow>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MEMORY_COLUMNS} FROM memory_states WHERE learner_id = $1 AND course_id = $2
             ORDER BY due_time, item_id"
        )))
        .bind(learner_id)
        .bind(course_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(memory_from_row).collect()
    }

    /// Items due at or before `due_before`, soonest first, after the (due, item) cursor.
    pub async fn due_items(
        &self,
        learner_id: &str,
        course_id: &str,
        due_before: i64,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<MemoryRow>, StoreError> {
        let (after_due, after_item) = after.unwrap_or((i64::MIN, String::new()));
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {MEMORY_COLUMNS} FROM memory_states
             WHERE learner_id = $1 AND ($2 = '' OR course_id = $2) AND due_time <= $3
               AND (due_time > $4 OR (due_time = $4 AND item_id > $5))
             ORDER BY due_time, item_id LIMIT $6"
        )))
        .bind(learner_id)
        .bind(course_id)
        .bind(due_before)
        .bind(after_due)
        .bind(after_item)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(memory_from_row).collect()
    }

    /// Records one attempt; see [`SchedulerStore::record_many`].
    pub async fn record(&self, record: &AttemptRecord) -> Result<Option<Vec<i64>>, StoreError> {
        Ok(self.record_many(std::slice::from_ref(record)).await?.pop().flatten())
    }

    /// Records attempts, each with its new memory state and its outbox rows, in one commit. Per
    /// record, in order: the sequence numbers of its outbox rows, in the record's order; or None,
    /// having written nothing for it, when its attempt id was recorded before (or earlier in
    /// `records`). Every record needs at least one outbox row.
    pub async fn record_many(&self, records: &[AttemptRecord]) -> Result<Vec<Option<Vec<i64>>>, StoreError> {
        if let Some(empty) = records.iter().find(|r| r.outbox.is_empty()) {
            return Err(StoreError::Corrupt(format!("attempt {} has no outbox rows", empty.attempt.attempt_id)));
        }
        let written = match self.db.dialect() {
            Dialect::Postgres => self.record_in_statements(records).await?,
            Dialect::Sqlite => self.record_in_transaction(records).await?,
        };
        records
            .iter()
            .zip(written)
            .map(|(record, seqs)| {
                let Some(seqs) = seqs else { return Ok(None) };
                // Back in the record's order.
                record
                    .outbox
                    .iter()
                    .map(|(consumer, _)| {
                        seqs.iter().find(|(c, _)| c == consumer.as_str()).map(|(_, seq)| *seq).ok_or_else(|| {
                            StoreError::Corrupt(format!("no outbox row for {} returned", consumer.as_str()))
                        })
                    })
                    .collect::<Result<Vec<i64>, StoreError>>()
                    .map(Some)
            })
            .collect()
    }

    /// PostgreSQL: one statement, one round trip and one commit for the lot. A statement may not
    /// upsert one memory state twice, so a second attempt of a learner at an item (or a repeated
    /// attempt id) goes into a statement after it: all in one transaction.
    async fn record_in_statements(&self, records: &[AttemptRecord]) -> Result<Vec<Option<OutboxSeqs>>, StoreError> {
        let waves = conflict_free_waves(records);
        let mut written = vec![None; records.len()];
        if let [wave] = waves.as_slice() {
            self.record_in_one_statement(records, wave, self.db.pool(), &mut written).await?;
        } else {
            let mut tx = self.db.begin_write().await?;
            for wave in &waves {
                self.record_in_one_statement(records, wave, &mut *tx, &mut written).await?;
            }
            tx.commit().await?;
        }
        Ok(written)
    }

    /// The records at `wave` (indexes into `records`, no two with one attempt id or one learner
    /// and item) in one statement. The memory state and the outbox rows of an attempt are
    /// written only when its insert returned a row, so a duplicate id writes nothing.
    async fn record_in_one_statement<'e, E>(
        &self,
        records: &[AttemptRecord],
        wave: &[usize],
        executor: E,
        written: &mut [Option<OutboxSeqs>],
    ) -> Result<(), StoreError>
    where
        E: sqlx::Executor<'e, Database = sqlx::Any>,
    {
        let outbox_rows: usize = wave.iter().map(|i| records[*i].outbox.len()).sum();
        let sql = format!(
            "WITH input ({ATTEMPT_COLUMNS}, {MEMORY_INPUT_COLUMNS}) AS (VALUES {}),
             attempt AS (
                INSERT INTO attempts ({ATTEMPT_COLUMNS}) SELECT {ATTEMPT_COLUMNS} FROM input
                ON CONFLICT (attempt_id) DO NOTHING RETURNING attempt_id, record_time
             ), memory AS (
                INSERT INTO memory_states AS m (learner_id, {MEMORY_COLUMNS})
                SELECT input.learner_id, {MEMORY_INPUT_COLUMNS} FROM input JOIN attempt USING (attempt_id)
                {MEMORY_UPSERT}
             )
             INSERT INTO outbox (attempt_id, consumer, event, create_time)
             SELECT o.attempt_id, o.consumer, o.event, attempt.record_time
             FROM (VALUES {}) AS o (attempt_id, consumer, event) JOIN attempt USING (attempt_id)
             RETURNING attempt_id, consumer, seq",
            value_rows(1, wave.len(), RECORD_PARAMETERS),
            value_rows(1 + wave.len() * RECORD_PARAMETERS, outbox_rows, 3)
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for record in wave.iter().map(|i| &records[*i]) {
            query = bind_memory(bind_attempt(query, &record.attempt), &record.memory);
        }
        for record in wave.iter().map(|i| &records[*i]) {
            for (consumer, event) in &record.outbox {
                query = query.bind(&record.attempt.attempt_id).bind(consumer.as_str()).bind(event.clone());
            }
        }
        let by_attempt: HashMap<&str, usize> =
            wave.iter().map(|i| (records[*i].attempt.attempt_id.as_str(), *i)).collect();
        for row in query.fetch_all(executor).await? {
            let attempt_id: String = row.try_get(0)?;
            let index = by_attempt
                .get(attempt_id.as_str())
                .ok_or_else(|| StoreError::Corrupt(format!("outbox row for an attempt not written: {attempt_id}")))?;
            written[*index].get_or_insert_with(Vec::new).push((row.try_get(1)?, row.try_get(2)?));
        }
        Ok(())
    }

    /// SQLite: no data-modifying CTEs, and a round trip costs nothing in process.
    async fn record_in_transaction(&self, records: &[AttemptRecord]) -> Result<Vec<Option<OutboxSeqs>>, StoreError> {
        let mut tx = self.db.begin_write().await?;
        let mut written = Vec::with_capacity(records.len());
        for AttemptRecord { attempt, memory, outbox } in records {
            let sql = format!(
                "INSERT INTO attempts ({ATTEMPT_COLUMNS}) {ATTEMPT_VALUES} ON CONFLICT (attempt_id) DO NOTHING"
            );
            let inserted =
                bind_attempt(sqlx::query(AssertSqlSafe(sql)), attempt).execute(&mut *tx).await?.rows_affected();
            if inserted == 0 {
                written.push(None);
                continue;
            }
            let sql = format!(
                "INSERT INTO memory_states AS m (learner_id, {MEMORY_COLUMNS})
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) {MEMORY_UPSERT}"
            );
            bind_memory(sqlx::query(AssertSqlSafe(sql)).bind(&attempt.learner_id), memory).execute(&mut *tx).await?;
            let mut seqs = Vec::with_capacity(outbox.len());
            for (consumer, event) in outbox {
                let seq: i64 = sqlx::query_scalar(
                    "INSERT INTO outbox (attempt_id, consumer, event, create_time) VALUES ($1, $2, $3, $4) RETURNING seq",
                )
                .bind(&attempt.attempt_id)
                .bind(consumer.as_str())
                .bind(event.clone())
                .bind(attempt.record_ms)
                .fetch_one(&mut *tx)
                .await?;
                seqs.push((consumer.as_str().to_owned(), seq));
            }
            written.push(Some(seqs));
        }
        tx.commit().await?;
        Ok(written)
    }

    /// (item id, correct) of a learner's answers in one mock test, in the order recorded.
    pub async fn mock_test_answers(
        &self,
        learner_id: &str,
        mock_test_id: &str,
    ) -> Result<Vec<(String, bool)>, StoreError> {
        let rows = sqlx::query(
            "SELECT item_id, correct FROM attempts
             WHERE learner_id = $1 AND mock_test_id = $2 AND mock_test_id <> '' ORDER BY seq",
        )
        .bind(learner_id)
        .bind(mock_test_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? != 0))).collect()
    }

    /// Attempts in recording order after sequence number `after_seq`.
    pub async fn export(
        &self,
        filter: &ExportFilter,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, AttemptRow)>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ATTEMPT_COLUMNS}, seq FROM attempts
             WHERE seq > $1 AND ($2 = '' OR learner_id = $2) AND ($3 = '' OR course_id = $3)
               AND record_time >= $4 AND record_time < $5
             ORDER BY seq LIMIT $6"
        )))
        .bind(after_seq)
        .bind(&filter.learner_id)
        .bind(&filter.course_id)
        .bind(filter.start_ms)
        .bind(filter.end_ms)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get::<i64, _>(15)?, attempt_from_row(r)?))).collect()
    }

    /// The consumer's oldest undelivered rows recorded before `recorded_before_ms`.
    pub async fn outbox_batch(
        &self,
        consumer: Consumer,
        limit: u32,
        recorded_before_ms: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, event FROM outbox WHERE consumer = $1 AND create_time < $2 ORDER BY seq LIMIT $3")
                .bind(consumer.as_str())
                .bind(recorded_before_ms)
                .bind(i64::from(limit))
                .fetch_all(self.db.pool())
                .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    pub async fn outbox_delete(&self, consumer: Consumer, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        // By the outbox's key, (consumer, seq).
        let sql =
            format!("DELETE FROM outbox WHERE consumer = $1 AND seq IN ({})", self.db.dialect().json_list(2, "BIGINT"));
        let seqs = serde_json::Value::from(seqs).to_string();
        sqlx::query(AssertSqlSafe(sql)).bind(consumer.as_str()).bind(seqs).execute(self.db.pool()).await?;
        Ok(())
    }

    /// Rows waiting for the consumer.
    pub async fn outbox_depth(&self, consumer: Consumer) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE consumer = $1")
            .bind(consumer.as_str())
            .fetch_one(self.db.pool())
            .await?)
    }
}

/// Binds the attempt's columns in [`ATTEMPT_COLUMNS`]' order.
fn bind_attempt<'q>(query: AnyQuery<'q>, attempt: &AttemptRow) -> AnyQuery<'q> {
    query
        .bind(&attempt.attempt_id)
        .bind(&attempt.learner_id)
        .bind(&attempt.course_id)
        .bind(&attempt.item_id)
        .bind(i64::from(attempt.rating))
        .bind(i64::from(attempt.correct))
        .bind(attempt.response_ms)
        .bind(attempt.answer_ms)
        .bind(attempt.record_ms)
        .bind(attempt.stability)
        .bind(attempt.difficulty)
        .bind(attempt.due_ms)
        .bind(attempt.predicted_recall)
        .bind(attempt.predicted_success)
        .bind(&attempt.mock_test_id)
}

/// Binds the memory state's columns in [`MEMORY_COLUMNS`]' order.
fn bind_memory<'q>(query: AnyQuery<'q>, memory: &MemoryRow) -> AnyQuery<'q> {
    query
        .bind(&memory.item_id)
        .bind(&memory.course_id)
        .bind(memory.stability)
        .bind(memory.difficulty)
        .bind(memory.last_review_ms)
        .bind(memory.due_ms)
        .bind(i64::from(memory.last_rating))
        .bind(memory.review_count)
        .bind(memory.lapse_count)
        .bind(i64::from(memory.phase))
        .bind(i64::from(memory.step))
        .bind(memory.knowledge)
}

fn attempt_from_row(r: &AnyRow) -> Result<AttemptRow, StoreError> {
    Ok(AttemptRow {
        attempt_id: r.try_get(0)?,
        learner_id: r.try_get(1)?,
        course_id: r.try_get(2)?,
        item_id: r.try_get(3)?,
        rating: i32::try_from(r.try_get::<i64, _>(4)?).unwrap_or_default(),
        correct: r.try_get::<i64, _>(5)? != 0,
        response_ms: r.try_get(6)?,
        answer_ms: r.try_get(7)?,
        record_ms: r.try_get(8)?,
        stability: r.try_get(9)?,
        difficulty: r.try_get(10)?,
        due_ms: r.try_get(11)?,
        predicted_recall: r.try_get(12)?,
        predicted_success: r.try_get(13)?,
        mock_test_id: r.try_get(14)?,
    })
}

fn memory_from_row(r: &AnyRow) -> Result<MemoryRow, StoreError> {
    Ok(MemoryRow {
        item_id: r.try_get(0)?,
        course_id: r.try_get(1)?,
        stability: r.try_get(2)?,
        difficulty: r.try_get(3)?,
        last_review_ms: r.try_get(4)?,
        due_ms: r.try_get(5)?,
        last_rating: i32::try_from(r.try_get::<i64, _>(6)?).unwrap_or_default(),
        review_count: r.try_get(7)?,
        lapse_count: r.try_get(8)?,
        phase: i32::try_from(r.try_get::<i64, _>(9)?).unwrap_or_default(),
        step: u32::try_from(r.try_get::<i64, _>(10)?).unwrap_or_default(),
        knowledge: r.try_get(11)?,
    })
}

/// `records`' indexes split into statements, in order, none holding two records with one
/// attempt id or one learner and item: each record goes into the first statement after every
/// earlier record it collides with.
fn conflict_free_waves(records: &[AttemptRecord]) -> Vec<Vec<usize>> {
    let mut waves: Vec<Vec<usize>> = Vec::new();
    let mut wave_of_id: HashMap<&str, usize> = HashMap::new();
    let mut wave_of_pair: HashMap<(&str, &str), usize> = HashMap::new();
    for (index, record) in records.iter().enumerate() {
        let id = record.attempt.attempt_id.as_str();
        let pair = (record.attempt.learner_id.as_str(), record.memory.item_id.as_str());
        let wave = wave_of_id.get(id).into_iter().chain(wave_of_pair.get(&pair)).map(|w| w + 1).max().unwrap_or(0);
        match waves.get_mut(wave) {
            Some(statement) => statement.push(index),
            None => waves.push(vec![index]),
        }
        wave_of_id.insert(id, wave);
        wave_of_pair.insert(pair, wave);
    }
    waves
}
