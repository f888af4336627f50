//! The gRPC surface of the scheduler: the two hot paths (NextItems, SubmitAttempt), due items
//! and the attempt export.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use alp_proto::common::v1::{Mode, Rating, Reason};
use alp_proto::content::v1::Item;
use alp_proto::scheduler::v1::scheduler_service_server::SchedulerService;
use alp_proto::scheduler::v1::submit_attempt_request::Outcome;
use alp_proto::scheduler::v1::*;
use alp_proto::scoring::v1::{ApplyAttemptRequest, Candidate, ScoreCandidatesRequest, ScoredItem, TestAnswer};
use alp_proto::user::v1::ProgressEvent;
use alp_runtime::FieldViolation;
use alp_runtime::page;
use alp_runtime::time::{duration, millis, now_millis, timestamp, timestamp_millis};
use alp_runtime::validate::{id, optional_id, page_size};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::cache::{CachedMemory, CachedMemoryStates, SchedulerCaches, memory_key};
use crate::downstream::{Downstreams, LearnerProfile};
use crate::error::SchedulerError;
use crate::outbox::OutboxRelay;
use crate::store::{AttemptRow, ExportFilter, MemoryRow, SchedulerStore};

const DEFAULT_RETENTION: f64 = 0.90;
const MAX_NEXT_ITEMS: u32 = 50;
const MAX_REVIEW_CANDIDATES: usize = 500;
/// The most recently answered items are always candidates: the ranking keeps their skills apart.
const RECENT_CANDIDATES: usize = 3;
/// A mock test draws on seen and unseen items alike; this many unseen ones at most.
const MOCK_TEST_NEW_CANDIDATES: usize = 500;
/// How far ahead of the server clock a client's answer time may be.
const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;
const MAX_RESPONSE_MS: i64 = 60 * 60 * 1000;

#[derive(Debug, Clone)]
pub struct SchedulerApi {
    store: SchedulerStore,
    downstream: Downstreams,
    outbox: OutboxRelay,
    caches: SchedulerCaches,
}

impl SchedulerApi {
    pub fn new(store: SchedulerStore, downstream: Downstreams, outbox: OutboxRelay, caches: SchedulerCaches) -> Self {
        Self { store, downstream, outbox, caches }
    }

    /// The learner's memory states in the course, soonest due first; from Redis when it has them.
    async fn memory_states(&self, learner_id: &str, course_id: &str) -> Result<Vec<MemoryRow>, SchedulerError> {
        let key = memory_key(learner_id, course_id);
        if let Some(cached) = self.caches.memory.get(&key).await {
            return Ok(cached.rows.into_iter().map(MemoryRow::from).collect());
        }
        let rows = self.store.memory_states(learner_id, course_id).await?;
        self.caches.memory.put(&key, CachedMemoryStates { rows: rows.iter().map(CachedMemory::from).collect() }).await;
        Ok(rows)
    }

    /// An attempt recorded before: from the cache, else the attempt log.
    async fn recorded(&self, attempt_id: &str) -> Result<Option<Attempt>, SchedulerError> {
        if let Some(attempt) = self.caches.attempts.get(attempt_id).await {
            return Ok(Some(attempt));
        }
        let Some(row) = self.store.attempt(attempt_id).await? else { return Ok(None) };
        let attempt = row.to_proto();
        self.caches.attempts.put(attempt_id, attempt.clone()).await;
        Ok(Some(attempt))
    }

    /// Desired retention of a learner enrolled in `course_id`; defaults when the user service
    /// cannot say.
    async fn enrolled_retention(&self, learner_id: &str, course_id: &str) -> Result<f64, SchedulerError> {
        retention_if_enrolled(self.downstream.learner(learner_id).await?, learner_id, course_id)
    }
}

/// The learner's desired retention once they are known to be enrolled in `course_id`.
fn retention_if_enrolled(profile: LearnerProfile, learner_id: &str, course_id: &str) -> Result<f64, SchedulerError> {
    match profile {
        LearnerProfile::Known(learner) => {
            if !learner.enrolments.iter().any(|e| e.course_id == course_id) {
                return Err(SchedulerError::FailedPrecondition(format!(
                    "learner {learner_id:?} is not enrolled in course {course_id:?}; call EnrolLearner first"
                )));
            }
            Ok(if learner.desired_retention > 0.0 { learner.desired_retention } else { DEFAULT_RETENTION })
        }
        LearnerProfile::Unknown => Ok(DEFAULT_RETENTION),
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

fn mode(value: i32) -> Result<Mode, FieldViolation> {
    match Mode::try_from(value) {
        Ok(Mode::Unspecified) => Ok(Mode::Practice),
        Ok(mode) => Ok(mode),
        Err(_) => Err(FieldViolation::new("mode", "must be PRACTICE, REVIEW or MOCK_TEST")),
    }
}

fn choice_count(item: &Item) -> u32 {
    u32::try_from(item.choices.len()).unwrap_or(0)
}

fn candidate(item: &Item, memory: Option<&MemoryRow>) -> Candidate {
    Candidate {
        item_id: item.item_id.clone(),
        skill_ids: item.skill_ids.clone(),
        initial_difficulty: item.difficulty,
        choice_count: choice_count(item),
        memory: memory.map(MemoryRow::memory),
        last_review_time: memory.map(|m| timestamp(m.last_review_ms)),
        due_time: memory.map(|m| timestamp(m.due_ms)),
        last_rating: memory.map_or(0, |m| m.last_rating),
    }
}

/// When scoring is unavailable: due reviews soonest first, then new items in course order, then
/// (practice only) reviews not yet due, soonest first, so practice never runs dry.
fn fallback_ranking(candidates: &[Candidate], mode: Mode, count: usize, now: i64) -> Vec<ScoredItem> {
    let due_ms = |c: &Candidate| c.due_time.as_ref().map(timestamp_millis);
    let mut reviews: Vec<&Candidate> = candidates.iter().filter(|c| due_ms(c).is_some()).collect();
    reviews.sort_by_key(|c| due_ms(c));
    let (due, early): (Vec<&Candidate>, Vec<&Candidate>) =
        reviews.into_iter().partition(|c| due_ms(c).is_some_and(|d| d <= now));
    let fresh = candidates.iter().filter(|c| c.memory.is_none());
    let picked: Vec<(&Candidate, Reason)> = match mode {
        Mode::Review => due.into_iter().map(|c| (c, Reason::DueReview)).collect(),
        Mode::MockTest => fresh.map(|c| (c, Reason::MockTest)).collect(),
        _ => due
            .into_iter()
            .map(|c| (c, Reason::DueReview))
            .chain(fresh.map(|c| (c, Reason::New)))
            .chain(early.into_iter().map(|c| (c, Reason::EarlyReview)))
            .collect(),
    };
    picked
        .into_iter()
        .take(count)
        .enumerate()
        .map(|(rank, (c, reason))| ScoredItem {
            item_id: c.item_id.clone(),
            reason: reason as i32,
            score: -(rank as f64),
            predicted_recall: 0.0,
            predicted_success: 0.0,
            explanation: "fallback ordering while scoring is unavailable".to_owned(),
        })
        .collect()
}

#[tonic::async_trait]
impl SchedulerService for SchedulerApi {
    async fn next_items(&self, request: Request<NextItemsRequest>) -> RpcResult<NextItemsResponse> {
        let request = request.into_inner();
        id("learner_id", &request.learner_id).map_err(SchedulerError::from)?;
        id("course_id", &request.course_id).map_err(SchedulerError::from)?;
        let count = match request.count {
            0 => 10,
            n if n > MAX_NEXT_ITEMS => {
                return Err(SchedulerError::from(FieldViolation::new(
                    "count",
                    format!("must be at most {MAX_NEXT_ITEMS}"),
                ))
                .into());
            }
            n => n,
        };
        let mode = mode(request.mode).map_err(SchedulerError::from)?;
        if mode == Mode::MockTest {
            id("mock_test_id", &request.mock_test_id).map_err(|v| {
                SchedulerError::from(FieldViolation::new("mock_test_id", format!("{} in MOCK_TEST mode", v.reason)))
            })?;
        } else if !request.mock_test_id.is_empty() {
            return Err(
                SchedulerError::from(FieldViolation::new("mock_test_id", "is only allowed in MOCK_TEST mode")).into()
            );
        }
        // Independent reads, at once: the enrolment check still decides first.
        let (retention, states, answers) = tokio::join!(
            self.enrolled_retention(&request.learner_id, &request.course_id),
            self.memory_states(&request.learner_id, &request.course_id),
            async {
                if mode == Mode::MockTest {
                    self.store.mock_test_answers(&request.learner_id, &request.mock_test_id).await
                } else {
                    Ok(Vec::new())
                }
            }
        );
        let retention = retention?;
        let states = states?;
        let answers = answers.map_err(SchedulerError::from)?;
        let now = now_millis();

        let answered: HashSet<&str> = answers.iter().map(|(item, _)| item.as_str()).collect();
        let seen: HashSet<String> = states.iter().map(|s| s.item_id.clone()).collect();
        let want_new = match mode {
            Mode::Review => 0,
            Mode::MockTest => MOCK_TEST_NEW_CANDIDATES,
            _ => (count as usize * 5).max(50),
        };
        let skill_graph = async {
            // The prerequisite gate holds back new items in practice only.
            if mode == Mode::Practice { self.downstream.skill_graph(&request.course_id).await } else { Ok(Vec::new()) }
        };
        let (course, skill_graph) = tokio::try_join!(self.downstream.course_items(&request.course_id), skill_graph)?;
        let unseen = course.unseen(&seen, want_new);

        // Soonest due first, plus the last few answered, whose skills the ranking keeps apart.
        let mut review_ids: Vec<String> =
            states.iter().take(MAX_REVIEW_CANDIDATES).map(|s| s.item_id.clone()).collect();
        let mut latest: Vec<&MemoryRow> = states.iter().skip(MAX_REVIEW_CANDIDATES).collect();
        latest.sort_by_key(|s| std::cmp::Reverse(s.last_review_ms));
        review_ids.extend(latest.into_iter().take(RECENT_CANDIDATES).map(|s| s.item_id.clone()));
        let answered_ids: Vec<String> =
            answered.iter().filter(|id| !seen.contains(**id)).map(|id| (*id).to_owned()).collect();
        review_ids.extend(answered_ids);
        let fetched = self.downstream.items_of(&course, &review_ids).await?;
        let memory: HashMap<&str, &MemoryRow> = states.iter().map(|s| (s.item_id.as_str(), s)).collect();

        let mut items: HashMap<String, Arc<Item>> = HashMap::new();
        let mut candidates = Vec::with_capacity(fetched.len() + unseen.len());
        for item in fetched.into_iter().chain(unseen) {
            if !item.retired && !answered.contains(item.item_id.as_str()) {
                candidates.push(candidate(&item, memory.get(item.item_id.as_str()).copied()));
            }
            items.insert(item.item_id.clone(), item);
        }
        let mock_test_answers: Vec<TestAnswer> = answers
            .iter()
            .filter_map(|(item_id, correct)| {
                let item = items.get(item_id)?;
                Some(TestAnswer {
                    item_id: item_id.clone(),
                    skill_ids: item.skill_ids.clone(),
                    initial_difficulty: item.difficulty,
                    choice_count: choice_count(item),
                    correct: *correct,
                })
            })
            .collect();
        if candidates.is_empty() && mode != Mode::MockTest {
            return Ok(Response::new(NextItemsResponse::default()));
        }

        let scored = self
            .downstream
            .score_candidates
            .call(ScoreCandidatesRequest {
                learner_id: request.learner_id.clone(),
                candidates: candidates.clone(),
                mode: mode as i32,
                count,
                desired_retention: retention,
                now: Some(timestamp(now)),
                skill_graph,
                mock_test_answers,
            })
            .await;
        let (ranked, mock_test, degraded_reason) = match scored {
            Ok(response) => (response.items, response.mock_test, String::new()),
            Err(error) if error.is_outage() => {
                tracing::warn!(%error, "scoring unavailable; local fallback ranking");
                metrics::counter!("alp_scheduler_degraded_total").increment(1);
                (fallback_ranking(&candidates, mode, count as usize, now), None, format!("fallback ordering; {error}"))
            }
            // Scoring refused the request: a bug here, not an outage to hide.
            Err(error) => return Err(SchedulerError::Downstream(error).into()),
        };
        let next = ranked
            .into_iter()
            .filter_map(|scored| {
                let item = items.get(&scored.item_id)?;
                Some(NextItem {
                    item_id: scored.item_id.clone(),
                    reason: scored.reason,
                    score: scored.score,
                    predicted_recall: scored.predicted_recall,
                    predicted_success: scored.predicted_success,
                    due_time: memory.get(scored.item_id.as_str()).map(|m| timestamp(m.due_ms)),
                    kind: item.kind,
                    prompt: item.prompt.clone(),
                    choices: item.choices.clone(),
                    skill_ids: item.skill_ids.clone(),
                    explanation: scored.explanation,
                })
            })
            .collect();
        Ok(Response::new(NextItemsResponse {
            items: next,
            degraded: !degraded_reason.is_empty(),
            degraded_reason,
            mock_test,
        }))
    }

    async fn submit_attempt(&self, request: Request<SubmitAttemptRequest>) -> RpcResult<SubmitAttemptResponse> {
        let request = request.into_inner();
        id("attempt_id", &request.attempt_id).map_err(SchedulerError::from)?;
        id("learner_id", &request.learner_id).map_err(SchedulerError::from)?;
        id("item_id", &request.item_id).map_err(SchedulerError::from)?;
        optional_id("mock_test_id", &request.mock_test_id).map_err(SchedulerError::from)?;
        let (rating, correct) = match request.outcome {
            Some(Outcome::Rating(value)) => match Rating::try_from(value) {
                Ok(Rating::Unspecified) | Err(_) => {
                    return Err(SchedulerError::from(FieldViolation::new(
                        "rating",
                        "must be AGAIN, HARD, GOOD or EASY",
                    ))
                    .into());
                }
                Ok(rating) => (rating, rating != Rating::Again),
            },
            Some(Outcome::Correct(true)) => (Rating::Good, true),
            Some(Outcome::Correct(false)) => (Rating::Again, false),
            None => {
                return Err(SchedulerError::from(FieldViolation::new(
                    "outcome",
                    "set exactly one of rating or correct",
                ))
                .into());
            }
        };
        let response_ms = match &request.response_time {
            Some(d) => alp_runtime::time::duration_millis("response_time", d).map_err(SchedulerError::from)?,
            None => 0,
        };
        if response_ms > MAX_RESPONSE_MS {
            return Err(SchedulerError::from(FieldViolation::new("response_time", "must be at most 1h")).into());
        }
        let now = now_millis();
        let answer_ms = match &request.answer_time {
            Some(t) => millis("answer_time", t).map_err(SchedulerError::from)?,
            None => now,
        };
        if answer_ms > now + MAX_CLOCK_SKEW_MS {
            return Err(SchedulerError::from(FieldViolation::new(
                "answer_time",
                "must not be more than 5 minutes in the future",
            ))
            .into());
        }

        // Fast path for a retry (Redis first, then the log): the first answer, marked duplicate.
        let answer = Answer {
            learner_id: &request.learner_id,
            item_id: &request.item_id,
            rating,
            correct,
            response_ms,
            answer_ms: request.answer_time.as_ref().map(|_| answer_ms),
            mock_test_id: &request.mock_test_id,
        };
        // The reads a new attempt needs go out together with the duplicate check: one round trip
        // of latency instead of four, wasted only on retries.
        let (recorded, item, learner, prior) = tokio::join!(
            self.recorded(&request.attempt_id),
            self.downstream.item(&request.item_id),
            self.downstream.learner(&request.learner_id),
            self.store.memory_state(&request.learner_id, &request.item_id),
        );
        if let Some(existing) = recorded? {
            return duplicate(existing, &request.attempt_id, &answer);
        }
        let item = item?;
        let retention = retention_if_enrolled(learner?, &request.learner_id, &item.course_id)?;
        let prior = prior.map_err(SchedulerError::from)?;
        let applied = self
            .downstream
            .apply_attempt
            .call(ApplyAttemptRequest {
                attempt_id: request.attempt_id.clone(),
                learner_id: request.learner_id.clone(),
                item_id: request.item_id.clone(),
                skill_ids: item.skill_ids.clone(),
                initial_difficulty: item.difficulty,
                choice_count: choice_count(&item),
                rating: rating as i32,
                correct,
                prior_memory: prior.as_ref().map(MemoryRow::memory),
                last_review_time: prior.as_ref().map(|p| timestamp(p.last_review_ms)),
                prior_due_time: prior.as_ref().map(|p| timestamp(p.due_ms)),
                answer_time: Some(timestamp(answer_ms)),
                response_time: Some(duration(response_ms)),
                desired_retention: retention,
                mock_test: !request.mock_test_id.is_empty(),
            })
            .await
            .map_err(SchedulerError::Downstream)?;
        let memory = applied.memory.unwrap_or_default();
        let due_ms = applied.due_time.as_ref().map_or(answer_ms, timestamp_millis);

        let attempt = AttemptRow {
            attempt_id: request.attempt_id.clone(),
            learner_id: request.learner_id.clone(),
            course_id: item.course_id.clone(),
            item_id: request.item_id.clone(),
            rating: rating as i32,
            correct,
            response_ms,
            answer_ms,
            record_ms: now,
            stability: memory.stability,
            difficulty: memory.difficulty,
            due_ms,
            predicted_recall: applied.predicted_recall,
            predicted_success: applied.predicted_success,
            mock_test_id: request.mock_test_id.clone(),
        };
        let state = MemoryRow {
            item_id: request.item_id.clone(),
            course_id: item.course_id.clone(),
            stability: memory.stability,
            difficulty: memory.difficulty,
            last_review_ms: answer_ms,
            due_ms,
            last_rating: rating as i32,
            review_count: 1,
            lapse_count: i64::from(rating == Rating::Again && prior.is_some()),
            phase: memory.phase,
            step: memory.step,
            knowledge: memory.knowledge,
        };
        let event = ProgressEvent {
            attempt_id: request.attempt_id.clone(),
            learner_id: request.learner_id.clone(),
            course_id: item.course_id.clone(),
            item_id: request.item_id.clone(),
            skill_ids: item.skill_ids.clone(),
            correct,
            first_attempt: prior.is_none(),
            answer_time: Some(timestamp(answer_ms)),
        };
        // In a task of its own: once the attempt commits, the cache invalidation and the progress
        // event must follow even if the caller's deadline cuts this handler short.
        let (store, caches, outbox) = (self.store.clone(), self.caches.clone(), self.outbox.clone());
        let key = memory_key(&request.learner_id, &item.course_id);
        let recording = tokio::spawn(async move {
            let Some(seq) = store.record(&attempt, &state, &event).await? else { return Ok(None) };
            // Before answering, so the learner's next NextItems cannot see the state before this.
            caches.memory.invalidate(&[key]).await;
            let recorded = attempt.to_proto();
            caches.attempts.put(&attempt.attempt_id, recorded.clone()).await;
            outbox.send(seq, event);
            Ok::<_, alp_runtime::StoreError>(Some(recorded))
        });
        let recorded = recording
            .await
            .map_err(|e| SchedulerError::Unavailable(format!("recording the attempt failed: {e}")))?
            .map_err(SchedulerError::from)?;
        let Some(recorded) = recorded else {
            // A concurrent call with the same attempt id committed first.
            let existing = self
                .recorded(&request.attempt_id)
                .await?
                .ok_or_else(|| SchedulerError::FailedPrecondition("attempt vanished; retry".to_owned()))?;
            return duplicate(existing, &request.attempt_id, &answer);
        };
        Ok(Response::new(SubmitAttemptResponse { attempt: Some(recorded), duplicate: false }))
    }

    async fn list_due_items(&self, request: Request<ListDueItemsRequest>) -> RpcResult<ListDueItemsResponse> {
        let request = request.into_inner();
        id("learner_id", &request.learner_id).map_err(SchedulerError::from)?;
        optional_id("course_id", &request.course_id).map_err(SchedulerError::from)?;
        let limit = page_size("page_size", request.page_size, 100, 1000).map_err(SchedulerError::from)?;
        let due_before = match &request.due_before {
            Some(t) => millis("due_before", t).map_err(SchedulerError::from)?,
            None => now_millis(),
        };
        let after = match page::decode("page_token", &request.page_token).map_err(SchedulerError::from)? {
            None => None,
            Some(position) => {
                let invalid =
                    || SchedulerError::from(FieldViolation::new("page_token", "is not a token returned by this API"));
                let (due, item) = position.split_once('|').ok_or_else(invalid)?;
                Some((due.parse::<i64>().map_err(|_| invalid())?, item.to_owned()))
            }
        };
        let first_page = after.is_none();
        let rows = self
            .store
            .due_items(&request.learner_id, &request.course_id, due_before, after, limit)
            .await
            .map_err(SchedulerError::from)?;
        if rows.is_empty() && first_page {
            // Nothing due and no such learner look alike; only the user service can tell them apart.
            self.downstream.learner(&request.learner_id).await?;
        }
        let next_page_token = page::next_token(&rows, limit, |m| format!("{}|{}", m.due_ms, m.item_id));
        let items = rows
            .into_iter()
            .map(|m| DueItem {
                memory: Some(m.memory()),
                due_time: Some(timestamp(m.due_ms)),
                last_review_time: Some(timestamp(m.last_review_ms)),
                last_rating: m.last_rating,
                review_count: m.review_count,
                item_id: m.item_id,
                course_id: m.course_id,
            })
            .collect();
        Ok(Response::new(ListDueItemsResponse { items, next_page_token }))
    }

    type ExportAttemptsStream = Pin<Box<dyn Stream<Item = Result<ExportAttemptsResponse, Status>> + Send>>;

    async fn export_attempts(&self, request: Request<ExportAttemptsRequest>) -> RpcResult<Self::ExportAttemptsStream> {
        let request = request.into_inner();
        optional_id("learner_id", &request.learner_id).map_err(SchedulerError::from)?;
        optional_id("course_id", &request.course_id).map_err(SchedulerError::from)?;
        let batch = page_size("batch_size", request.batch_size, 500, 1000).map_err(SchedulerError::from)?;
        let start_ms = match &request.start_time {
            Some(t) => millis("start_time", t).map_err(SchedulerError::from)?,
            None => i64::MIN,
        };
        let end_ms = match &request.end_time {
            Some(t) => millis("end_time", t).map_err(SchedulerError::from)?,
            None => i64::MAX,
        };
        if start_ms > end_ms {
            return Err(SchedulerError::from(FieldViolation::new("start_time", "must not be after end_time")).into());
        }
        let filter = ExportFilter { learner_id: request.learner_id, course_id: request.course_id, start_ms, end_ms };
        let store = self.store.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                let page = match store.export(&filter, after, batch).await {
                    Ok(page) => page,
                    Err(err) => {
                        let _ = sender.send(Err(Status::from(SchedulerError::from(err)))).await;
                        return;
                    }
                };
                let Some((last, _)) = page.last() else { return };
                after = *last;
                let full = page.len() == batch as usize;
                let attempts = page.into_iter().map(|(_, a)| a.to_proto()).collect();
                // A closed receiver means the caller went away: stop reading.
                if sender.send(Ok(ExportAttemptsResponse { attempts })).await.is_err() || !full {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }
}

/// What a SubmitAttempt says, to compare a retry with the attempt first recorded under its id.
struct Answer<'a> {
    learner_id: &'a str,
    item_id: &'a str,
    rating: Rating,
    correct: bool,
    response_ms: i64,
    /// Only when the caller set it; otherwise each retry would bring its own clock reading.
    answer_ms: Option<i64>,
    mock_test_id: &'a str,
}

/// The recorded answer for a retried attempt id, or a conflict when the id is reused for a
/// different answer: a retry never overwrites, and never silently drops a different answer.
fn duplicate(existing: Attempt, attempt_id: &str, answer: &Answer<'_>) -> RpcResult<SubmitAttemptResponse> {
    let recorded_ms = |t: &Option<prost_types::Timestamp>| t.as_ref().map(timestamp_millis);
    let recorded_response_ms =
        existing.response_time.as_ref().map_or(0, |d| d.seconds * 1000 + i64::from(d.nanos / 1_000_000));
    let mut differences = Vec::new();
    if existing.learner_id != answer.learner_id {
        differences.push("learner_id");
    }
    if existing.item_id != answer.item_id {
        differences.push("item_id");
    }
    if existing.rating != answer.rating as i32 || existing.correct != answer.correct {
        differences.push("outcome");
    }
    if recorded_response_ms != answer.response_ms {
        differences.push("response_time");
    }
    if answer.answer_ms.is_some_and(|ms| recorded_ms(&existing.answer_time) != Some(ms)) {
        differences.push("answer_time");
    }
    if existing.mock_test_id != answer.mock_test_id {
        differences.push("mock_test_id");
    }
    if !differences.is_empty() {
        return Err(SchedulerError::AttemptConflict {
            attempt_id: attempt_id.to_owned(),
            fields: differences.join(", "),
        }
        .into());
    }
    Ok(Response::new(SubmitAttemptResponse { attempt: Some(existing), duplicate: true }))
}
