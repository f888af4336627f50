//! The gRPC surface of the scheduler: the two hot paths (NextItems, SubmitAttempt), due items
//! and the attempt export.

use foldhash::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use alp_proto::common::v1::{Mode, Reason};
use alp_proto::content::v1::Item;
use alp_proto::scheduler::v1::scheduler_service_server::SchedulerService;
use alp_proto::scheduler::v1::*;
use alp_proto::scoring::v1::{ScoredItem, TestAnswer};
use alp_runtime::FieldViolation;
use alp_runtime::page;
use alp_runtime::time::{millis, now_millis, timestamp, timestamp_millis};
use alp_runtime::validate::{id, optional_id, page_size};
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::cache::{CachedMemory, CachedMemoryStates, SchedulerCaches, memory_key};
use crate::downstream::{Downstreams, choice_count};
use crate::error::SchedulerError;
use crate::outbox::Relay;
use crate::phase::PhaseTimer;
use crate::score_request::{CandidateRef, CatalogueItem, ScoreRequest};
use crate::store::{ExportFilter, MemoryRow, SchedulerStore};
use crate::submit_attempt::{AttemptRecorder, Submission, Submitted};

const MAX_NEXT_ITEMS: u32 = 50;
const MAX_REVIEW_CANDIDATES: usize = 500;
/// The most recently answered items are always candidates: the ranking keeps their skills apart.
const RECENT_CANDIDATES: usize = 3;
/// A mock test draws on seen and unseen items alike; this many unseen ones at most.
const MOCK_TEST_NEW_CANDIDATES: usize = 500;

/// How long NextItems waits for scoring to learn of the learner's latest answers.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct SchedulerApi {
    store: SchedulerStore,
    downstream: Downstreams,
    caches: SchedulerCaches,
    attempts: AttemptRecorder,
    /// Scoring's outbox rows: NextItems waits for the learner's to land.
    scoring_outbox: Relay,
}

impl SchedulerApi {
    pub fn new(
        store: SchedulerStore,
        downstream: Downstreams,
        caches: SchedulerCaches,
        attempts: AttemptRecorder,
        scoring_outbox: Relay,
    ) -> Self {
        Self { store, downstream, caches, attempts, scoring_outbox }
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

    /// Desired retention of a learner enrolled in `course_id`; defaults when the user service
    /// cannot say.
    async fn enrolled_retention(&self, learner_id: &str, course_id: &str) -> Result<f64, SchedulerError> {
        let profile = self.downstream.learner(learner_id).await?;
        self.downstream.retention_in(profile, learner_id, course_id).await
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

fn candidate(item: &Arc<CatalogueItem>, memory: Option<&MemoryRow>) -> CandidateRef {
    CandidateRef {
        item: Arc::clone(item),
        memory: memory.map(MemoryRow::memory),
        last_review_time: memory.map(|m| timestamp(m.last_review_ms)),
        due_time: memory.map(|m| timestamp(m.due_ms)),
        last_rating: memory.map_or(0, |m| m.last_rating),
    }
}

/// When scoring is unavailable: due reviews soonest first, then new items in course order, then
/// (practice only) reviews not yet due, soonest first, so practice never runs dry.
fn fallback_ranking(candidates: &[CandidateRef], mode: Mode, count: usize, now: i64) -> Vec<ScoredItem> {
    let due_ms = |c: &CandidateRef| c.due_time.as_ref().map(timestamp_millis);
    let mut reviews: Vec<&CandidateRef> = candidates.iter().filter(|c| due_ms(c).is_some()).collect();
    reviews.sort_by_key(|c| due_ms(c));
    let (due, early): (Vec<&CandidateRef>, Vec<&CandidateRef>) =
        reviews.into_iter().partition(|c| due_ms(c).is_some_and(|d| d <= now));
    let fresh = candidates.iter().filter(|c| c.memory.is_none());
    let picked: Vec<(&CandidateRef, Reason)> = match mode {
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
            item_id: c.item.item_id.clone(),
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
        let mut phases = PhaseTimer::start("NextItems");
        // Independent reads, at once: the enrolment check still decides first. Scoring ranks
        // with the learner's latest answers once their outbox rows have landed.
        let (retention, states, answers, ()) = tokio::join!(
            self.enrolled_retention(&request.learner_id, &request.course_id),
            self.memory_states(&request.learner_id, &request.course_id),
            async {
                if mode == Mode::MockTest {
                    self.store.mock_test_answers(&request.learner_id, &request.mock_test_id).await
                } else {
                    Ok(Vec::new())
                }
            },
            self.scoring_outbox.settled(&request.learner_id, READ_YOUR_WRITES_WAIT),
        );
        let retention = retention?;
        let states = states?;
        let answers = answers.map_err(SchedulerError::from)?;
        phases.done("reads");
        let now = now_millis();

        // Keys are item ids the process itself holds, so a fast hash without DoS resistance
        // serves (SipHash was 4 % of the scheduler's CPU per NextItems).
        let answered: HashSet<&str> = answers.iter().map(|(item, _)| item.as_str()).collect();
        let seen: HashSet<&str> = states.iter().map(|s| s.item_id.as_str()).collect();
        let want_new = match mode {
            Mode::Review => 0,
            Mode::MockTest => MOCK_TEST_NEW_CANDIDATES,
            _ => (count as usize * 5).max(50),
        };
        let skill_graph = async {
            // The prerequisite gate holds back new items in practice only.
            if mode == Mode::Practice {
                self.downstream.skill_graph(&request.course_id).await
            } else {
                Ok(Arc::default())
            }
        };
        let (course, skill_graph) = tokio::try_join!(self.downstream.course_items(&request.course_id), skill_graph)?;
        let unseen = course.unseen(&seen, want_new);

        // Soonest due first, plus the last few answered, whose skills the ranking keeps apart.
        let mut review_ids: Vec<&str> = states.iter().take(MAX_REVIEW_CANDIDATES).map(|s| s.item_id.as_str()).collect();
        let mut latest: Vec<&MemoryRow> = states.iter().skip(MAX_REVIEW_CANDIDATES).collect();
        latest.sort_by_key(|s| std::cmp::Reverse(s.last_review_ms));
        review_ids.extend(latest.into_iter().take(RECENT_CANDIDATES).map(|s| s.item_id.as_str()));
        review_ids.extend(answered.iter().filter(|id| !seen.contains(**id)).copied());
        let fetched = self.downstream.items_of(&course, &review_ids).await?;
        let memory: HashMap<&str, &MemoryRow> = states.iter().map(|s| (s.item_id.as_str(), s)).collect();

        let pool: Vec<Arc<CatalogueItem>> = fetched.into_iter().chain(unseen).collect();
        let items: HashMap<&str, &Item> = pool.iter().map(|item| (item.item_id.as_str(), &***item)).collect();
        let candidates: Arc<Vec<CandidateRef>> = Arc::new(
            pool.iter()
                .filter(|item| !item.retired && !answered.contains(item.item_id.as_str()))
                .map(|item| candidate(item, memory.get(item.item_id.as_str()).copied()))
                .collect(),
        );
        let mock_test_answers: Vec<TestAnswer> = answers
            .iter()
            .filter_map(|(item_id, correct)| {
                let item = items.get(item_id.as_str())?;
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

        phases.done("candidates");
        let scored = self
            .downstream
            .score_candidates
            .call(ScoreRequest {
                learner_id: request.learner_id.clone(),
                candidates: Arc::clone(&candidates),
                mode: mode as i32,
                count,
                desired_retention: retention,
                now: Some(timestamp(now)),
                skill_graph,
                mock_test_answers: Arc::new(mock_test_answers),
            })
            .await;
        phases.done("score");
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
                let item = items.get(scored.item_id.as_str())?;
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
        let submission = Submission::from_request(request.into_inner(), now_millis()).map_err(SchedulerError::from)?;
        let response = match self.attempts.submit(submission).await? {
            Submitted::Recorded(attempt) => SubmitAttemptResponse { attempt: Some(attempt), duplicate: false },
            Submitted::Duplicate(attempt) => SubmitAttemptResponse { attempt: Some(attempt), duplicate: true },
        };
        Ok(Response::new(response))
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
