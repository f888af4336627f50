//! SubmitAttempt: one answer into the log of record.
//!
//! Scoring evaluates what the answer does to the learner's memory of the item (a pure function,
//! no write); the attempt, the new memory state and one outbox row per consumer are then one
//! commit, the only durable write before the answer, shared with the answers submitted alongside
//! (`group_commit.rs`). Scoring's ability and difficulty models and the learner's progress follow
//! from the outbox in batches.

use std::sync::Arc;
use std::time::Duration;

use alp_proto::common::v1::Rating;
use alp_proto::scheduler::v1::submit_attempt_request::Outcome;
use alp_proto::scheduler::v1::{Attempt, SubmitAttemptRequest};
use alp_proto::scoring::v1::{EvaluateAttemptRequest, RecordedAttempt};
use alp_proto::user::v1::ProgressEvent;
use alp_runtime::batch::{BatchConfig, BatchError, Batcher};
use alp_runtime::time::{duration, duration_millis, millis, timestamp, timestamp_millis};
use alp_runtime::validate::{id, optional_id};
use alp_runtime::{FieldViolation, StoreError};
use prost::Message;

use crate::cache::SchedulerCaches;
use crate::downstream::{Downstreams, choice_count};
use crate::error::SchedulerError;
use crate::group_commit::{GroupCommit, GroupCommitConfig};
use crate::outbox::{Consumer, Relay};
use crate::phase::PhaseTimer;
use crate::store::{AttemptRecord, AttemptRow, MemoryRow, SchedulerStore};

/// Prior states are read in batches without waiting for company: the reads that queue while one
/// batch is out form the next.
const PRIOR_BATCH: BatchConfig =
    BatchConfig { max_size: 64, max_delay: Duration::ZERO, queue: 10_000, max_in_flight: 1 };

/// How far ahead of the server clock a client's answer time may be.
const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;
const MAX_RESPONSE_MS: i64 = 60 * 60 * 1000;

/// A checked SubmitAttempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    pub attempt_id: String,
    pub learner_id: String,
    pub item_id: String,
    pub rating: Rating,
    pub correct: bool,
    pub response_ms: i64,
    pub answer_ms: i64,
    /// The caller set the answer time; otherwise each retry brings its own clock reading.
    pub answer_time_given: bool,
    /// Empty for practice.
    pub mock_test_id: String,
    pub received_ms: i64,
}

impl Submission {
    pub fn from_request(request: SubmitAttemptRequest, now_ms: i64) -> Result<Self, FieldViolation> {
        id("attempt_id", &request.attempt_id)?;
        id("learner_id", &request.learner_id)?;
        id("item_id", &request.item_id)?;
        optional_id("mock_test_id", &request.mock_test_id)?;
        let (rating, correct) = match request.outcome {
            Some(Outcome::Rating(value)) => match Rating::try_from(value) {
                Ok(Rating::Unspecified) | Err(_) => {
                    return Err(FieldViolation::new("rating", "must be AGAIN, HARD, GOOD or EASY"));
                }
                Ok(rating) => (rating, rating != Rating::Again),
            },
            Some(Outcome::Correct(true)) => (Rating::Good, true),
            Some(Outcome::Correct(false)) => (Rating::Again, false),
            None => return Err(FieldViolation::new("outcome", "set exactly one of rating or correct")),
        };
        let response_ms = match &request.response_time {
            Some(d) => duration_millis("response_time", d)?,
            None => 0,
        };
        if response_ms > MAX_RESPONSE_MS {
            return Err(FieldViolation::new("response_time", "must be at most 1h"));
        }
        let answer_ms = match &request.answer_time {
            Some(t) => millis("answer_time", t)?,
            None => now_ms,
        };
        if answer_ms > now_ms + MAX_CLOCK_SKEW_MS {
            return Err(FieldViolation::new("answer_time", "must not be more than 5 minutes in the future"));
        }
        Ok(Self {
            attempt_id: request.attempt_id,
            learner_id: request.learner_id,
            item_id: request.item_id,
            rating,
            correct,
            response_ms,
            answer_ms,
            answer_time_given: request.answer_time.is_some(),
            mock_test_id: request.mock_test_id,
            received_ms: now_ms,
        })
    }
}

/// What became of a submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    Recorded(Attempt),
    /// The attempt id was recorded before with the same answer: that first record.
    Duplicate(Attempt),
}

/// Records answers: the one write path into the attempt log.
#[derive(Debug, Clone)]
pub struct AttemptRecorder {
    store: SchedulerStore,
    /// The prior memory states of the attempts being submitted, read together.
    priors: Batcher<(String, String), MemoryRow, Arc<StoreError>>,
    records: GroupCommit,
    downstream: Downstreams,
    scoring: Relay,
    user: Relay,
}

impl AttemptRecorder {
    pub fn new(
        store: SchedulerStore,
        downstream: Downstreams,
        caches: SchedulerCaches,
        scoring: Relay,
        user: Relay,
    ) -> Self {
        let reader = store.clone();
        let priors = Batcher::new("memory_states", PRIOR_BATCH, move |pairs: Vec<(String, String)>| {
            let reader = reader.clone();
            async move { reader.memory_states_of(&pairs).await.map_err(Arc::new) }
        });
        let records = GroupCommit::new(store.clone(), caches, GroupCommitConfig::default());
        Self { store, priors, records, downstream, scoring, user }
    }

    pub async fn submit(&self, submission: Submission) -> Result<Submitted, SchedulerError> {
        let mut phases = PhaseTimer::start("SubmitAttempt");
        // A retry costs the same reads as a new answer; the log's unique attempt id decides.
        let (item, learner, prior) = tokio::join!(
            self.downstream.item(&submission.item_id),
            self.downstream.learner(&submission.learner_id),
            self.prior(&submission.learner_id, &submission.item_id),
        );
        let checked = async {
            let item = item?;
            let retention = self.downstream.retention_in(learner?, &submission.learner_id, &item.course_id).await?;
            Ok::<_, SchedulerError>((item, retention))
        }
        .await;
        let (item, retention) = match checked {
            Ok(found) => found,
            // A retry of a recorded answer gets its record even if the item or the enrolment
            // has gone since.
            Err(error) => return self.recorded_before(&submission).await?.ok_or(error),
        };
        let prior = prior?;
        phases.done("reads");
        let evaluated = self
            .downstream
            .evaluate_attempt
            .call(EvaluateAttemptRequest {
                attempt_id: submission.attempt_id.clone(),
                learner_id: submission.learner_id.clone(),
                item_id: submission.item_id.clone(),
                skill_ids: item.skill_ids.clone(),
                initial_difficulty: item.difficulty,
                choice_count: choice_count(&item),
                rating: submission.rating as i32,
                correct: submission.correct,
                prior_memory: prior.as_ref().map(MemoryRow::memory),
                last_review_time: prior.as_ref().map(|p| timestamp(p.last_review_ms)),
                prior_due_time: prior.as_ref().map(|p| timestamp(p.due_ms)),
                answer_time: Some(timestamp(submission.answer_ms)),
                response_time: Some(duration(submission.response_ms)),
                desired_retention: retention,
                mock_test: !submission.mock_test_id.is_empty(),
            })
            .await?;
        phases.done("evaluate");
        let memory = evaluated.memory.unwrap_or_default();
        let due_ms = evaluated.due_time.as_ref().map_or(submission.answer_ms, timestamp_millis);
        let s = &submission;
        let attempt = AttemptRow {
            attempt_id: s.attempt_id.clone(),
            learner_id: s.learner_id.clone(),
            course_id: item.course_id.clone(),
            item_id: s.item_id.clone(),
            rating: s.rating as i32,
            correct: s.correct,
            response_ms: s.response_ms,
            answer_ms: s.answer_ms,
            record_ms: s.received_ms,
            stability: memory.stability,
            difficulty: memory.difficulty,
            due_ms,
            predicted_recall: evaluated.predicted_recall,
            predicted_success: evaluated.predicted_success,
            mock_test_id: s.mock_test_id.clone(),
        };
        let state = MemoryRow {
            item_id: s.item_id.clone(),
            course_id: item.course_id.clone(),
            stability: memory.stability,
            difficulty: memory.difficulty,
            last_review_ms: s.answer_ms,
            due_ms,
            last_rating: s.rating as i32,
            review_count: 1,
            lapse_count: i64::from(s.rating == Rating::Again && prior.is_some()),
            phase: memory.phase,
            step: memory.step,
            knowledge: memory.knowledge,
        };
        let for_scoring = RecordedAttempt {
            attempt_id: s.attempt_id.clone(),
            learner_id: s.learner_id.clone(),
            item_id: s.item_id.clone(),
            skill_ids: item.skill_ids.clone(),
            initial_difficulty: item.difficulty,
            choice_count: choice_count(&item),
            rating: s.rating as i32,
            correct: s.correct,
            first_attempt: prior.is_none(),
            answer_time: Some(timestamp(s.answer_ms)),
            mock_test: !s.mock_test_id.is_empty(),
        };
        let for_user = ProgressEvent {
            attempt_id: s.attempt_id.clone(),
            learner_id: s.learner_id.clone(),
            course_id: item.course_id.clone(),
            item_id: s.item_id.clone(),
            skill_ids: item.skill_ids.clone(),
            correct: s.correct,
            first_attempt: prior.is_none(),
            answer_time: Some(timestamp(s.answer_ms)),
        };
        let first_attempt = prior.is_none();
        let (scoring_row, user_row) = (for_scoring.encode_to_vec(), for_user.encode_to_vec());
        let record = AttemptRecord {
            attempt,
            memory: state,
            outbox: vec![(Consumer::Scoring, scoring_row.clone()), (Consumer::User, user_row.clone())],
        };

        // In a task of its own: once the attempt commits (and its cached memory states are
        // dropped, `group_commit.rs`), the outbox hand-off must follow even if the caller's
        // deadline cuts this handler short.
        let this = self.clone();
        let recording = tokio::spawn(async move {
            let learner_id = record.attempt.learner_id.clone();
            let attempt = record.attempt.to_proto();
            let Some(seqs) = this.records.record(record).await? else { return Ok(None) };
            // Only a first answer moves what a ranking reads (ability, difficulty, the practice
            // target); a review changes the memory state alone, committed here.
            this.scoring.send(seqs[0], &learner_id, scoring_row, first_attempt);
            this.user.send(seqs[1], &learner_id, user_row, false);
            Ok::<_, SchedulerError>(Some(attempt))
        });
        let recorded = recording
            .await
            .map_err(|e| SchedulerError::Unavailable(format!("recording the attempt failed: {e}")))??;
        phases.done("record");
        match recorded {
            Some(attempt) => Ok(Submitted::Recorded(attempt)),
            // A concurrent call with the same attempt id committed first.
            None => self
                .recorded_before(&submission)
                .await?
                .ok_or_else(|| SchedulerError::FailedPrecondition("attempt vanished; retry".to_owned())),
        }
    }

    async fn prior(&self, learner_id: &str, item_id: &str) -> Result<Option<MemoryRow>, SchedulerError> {
        match self.priors.load((learner_id.to_owned(), item_id.to_owned())).await {
            Ok(prior) => Ok(prior),
            Err(BatchError::Failed(error)) => Err(SchedulerError::BatchedRead(error)),
            Err(BatchError::Lost(batcher)) => Err(SchedulerError::Unavailable(format!("{batcher} lost the read"))),
        }
    }

    /// The log's record of the submission's attempt id, if any, compared with the submission.
    async fn recorded_before(&self, submission: &Submission) -> Result<Option<Submitted>, SchedulerError> {
        let Some(row) = self.store.attempt(&submission.attempt_id).await? else { return Ok(None) };
        duplicate(row.to_proto(), submission).map(|a| Some(Submitted::Duplicate(a)))
    }
}

/// The recorded answer for a retried attempt id, or a conflict when the id is reused for a
/// different answer: a retry never overwrites, and never silently drops a different answer.
pub fn duplicate(existing: Attempt, submission: &Submission) -> Result<Attempt, SchedulerError> {
    let recorded_ms = |t: &Option<prost_types::Timestamp>| t.as_ref().map(timestamp_millis);
    let recorded_response_ms =
        existing.response_time.as_ref().map_or(0, |d| d.seconds * 1000 + i64::from(d.nanos / 1_000_000));
    let mut differences = Vec::new();
    if existing.learner_id != submission.learner_id {
        differences.push("learner_id");
    }
    if existing.item_id != submission.item_id {
        differences.push("item_id");
    }
    if existing.rating != submission.rating as i32 || existing.correct != submission.correct {
        differences.push("outcome");
    }
    if recorded_response_ms != submission.response_ms {
        differences.push("response_time");
    }
    if submission.answer_time_given && recorded_ms(&existing.answer_time) != Some(submission.answer_ms) {
        differences.push("answer_time");
    }
    if existing.mock_test_id != submission.mock_test_id {
        differences.push("mock_test_id");
    }
    if !differences.is_empty() {
        return Err(SchedulerError::AttemptConflict {
            attempt_id: submission.attempt_id.clone(),
            fields: differences.join(", "),
        });
    }
    Ok(existing)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn submission() -> Submission {
        let request = SubmitAttemptRequest {
            attempt_id: "a1".into(),
            learner_id: "ada".into(),
            item_id: "add-1".into(),
            outcome: Some(Outcome::Correct(true)),
            ..SubmitAttemptRequest::default()
        };
        Submission::from_request(request, 1_000_000).unwrap()
    }

    fn recorded(s: &Submission) -> Attempt {
        Attempt {
            attempt_id: s.attempt_id.clone(),
            learner_id: s.learner_id.clone(),
            item_id: s.item_id.clone(),
            rating: s.rating as i32,
            correct: s.correct,
            response_time: Some(duration(s.response_ms)),
            answer_time: Some(timestamp(s.answer_ms - 5000)),
            ..Attempt::default()
        }
    }

    #[test]
    fn a_retry_with_the_same_answer_is_the_first_record() {
        let s = submission();
        // The answer time was the server's, so a retry's own clock reading does not differ.
        assert_eq!(duplicate(recorded(&s), &s).unwrap(), recorded(&s));
    }

    #[test]
    fn a_reused_attempt_id_names_what_differs() {
        let s = submission();
        let changed = Submission { correct: false, rating: Rating::Again, item_id: "add-2".into(), ..s.clone() };
        let error = duplicate(recorded(&s), &changed).unwrap_err().to_string();
        assert!(error.contains("item_id, outcome"), "{error}");
        let timed = Submission { answer_time_given: true, ..s.clone() };
        assert!(duplicate(recorded(&s), &timed).unwrap_err().to_string().contains("answer_time"));
    }

    #[test]
    fn bad_submissions_name_the_field() {
        let base = SubmitAttemptRequest {
            attempt_id: "a1".into(),
            learner_id: "ada".into(),
            item_id: "add-1".into(),
            outcome: Some(Outcome::Rating(0)),
            ..SubmitAttemptRequest::default()
        };
        assert_eq!(Submission::from_request(base.clone(), 0).unwrap_err().field, "rating");
        let none = SubmitAttemptRequest { outcome: None, ..base.clone() };
        assert_eq!(Submission::from_request(none, 0).unwrap_err().field, "outcome");
        let future = SubmitAttemptRequest {
            outcome: Some(Outcome::Correct(true)),
            answer_time: Some(timestamp(MAX_CLOCK_SKEW_MS + 1)),
            ..base
        };
        assert_eq!(Submission::from_request(future, 0).unwrap_err().field, "answer_time");
    }
}
