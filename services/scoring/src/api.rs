//! The gRPC surface of the scoring service.

use std::sync::Arc;

use alp_proto::common::v1::{MemoryPhase, MemoryState as MemoryProto, MockTestEstimate, Mode, Rating};
use alp_proto::scoring::v1::scoring_service_server::ScoringService;
use alp_proto::scoring::v1::*;
use alp_runtime::redis::Redis;
use alp_runtime::time::{duration, millis, now_millis, timestamp};
use alp_runtime::validate::{count, id};
use fsrs::MemoryState;
use tonic::{Request, Response, Status};

use crate::cache::ScoringCaches;
use crate::calibration::Calibrations;
use crate::error::ScoringError;
use crate::fitter::Fitter;
use crate::model::ability::{self, TestResponse};
use crate::model::attempt;
use crate::model::memory::{Card, MemoryModel, Phase};
use crate::model::mock_test::{self, Answer, MockTestPolicy};
use crate::model::ranking::{self, CandidateState, Ranked, RankingPolicy, Seen, Situation};
use crate::store::{ScoringStore, StoredFit};
use crate::validate;

#[derive(Clone)]
pub struct ScoringApi {
    store: ScoringStore,
    caches: ScoringCaches,
    calibrations: Calibrations,
    /// FSRS-6 with the default parameters, for learners without a kept fit of their own.
    default_memory: Arc<MemoryModel>,
    fitter: Fitter,
    ranking: Arc<RankingPolicy>,
    mock_test: Arc<MockTestPolicy>,
}

impl std::fmt::Debug for ScoringApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScoringApi").finish_non_exhaustive()
    }
}

impl ScoringApi {
    pub fn new(
        store: ScoringStore,
        calibrations: Calibrations,
        policies: crate::Policies,
        redis: Option<Redis>,
    ) -> Self {
        let caches = ScoringCaches::new(redis);
        Self {
            fitter: Fitter::new(store.clone(), policies.fitting, caches.clone()),
            caches,
            calibrations,
            store,
            default_memory: Arc::new(MemoryModel::default()),
            ranking: Arc::new(policies.ranking),
            mock_test: Arc::new(policies.mock_test),
        }
    }

    /// The learner's memory model: their own fitted parameters when kept, else the defaults.
    fn learner_memory(&self, learner_id: &str, fit: Option<&StoredFit>) -> Arc<MemoryModel> {
        match fit {
            Some(f) if f.kept => match MemoryModel::with_parameters(&f.parameters) {
                Ok(model) => Arc::new(model),
                Err(err) => {
                    tracing::warn!(learner_id, error = %err, "stored FSRS parameters unusable; using the defaults");
                    self.default_memory.clone()
                }
            },
            _ => self.default_memory.clone(),
        }
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

fn to_fsrs(memory: &MemoryProto) -> MemoryState {
    MemoryState { stability: memory.stability as f32, difficulty: memory.difficulty as f32 }
}

fn to_proto(card: &Card, knowledge: f64) -> MemoryProto {
    let phase = match card.phase {
        Phase::Learning => MemoryPhase::Learning,
        Phase::Review => MemoryPhase::Review,
        Phase::Relearning => MemoryPhase::Relearning,
    };
    MemoryProto {
        stability: f64::from(card.memory.stability),
        difficulty: f64::from(card.memory.difficulty),
        phase: phase as i32,
        step: u32::try_from(card.step).unwrap_or(u32::MAX),
        knowledge: Some(knowledge),
    }
}

/// Unset (memory written before phases existed) and unknown values count as review.
fn phase(memory: &MemoryProto) -> Phase {
    match MemoryPhase::try_from(memory.phase) {
        Ok(MemoryPhase::Learning) => Phase::Learning,
        Ok(MemoryPhase::Relearning) => Phase::Relearning,
        _ => Phase::Review,
    }
}

fn scored(r: Ranked) -> ScoredItem {
    ScoredItem {
        item_id: r.item_id,
        reason: r.reason as i32,
        score: r.score,
        predicted_recall: r.predicted_recall,
        predicted_success: r.predicted_success,
        explanation: r.explanation,
    }
}

#[tonic::async_trait]
impl ScoringService for ScoringApi {
    async fn score_candidates(&self, request: Request<ScoreCandidatesRequest>) -> RpcResult<ScoreCandidatesResponse> {
        let mut request = request.into_inner();
        validate::score_request(&request).map_err(ScoringError::from)?;
        let mode = validate::mode(request.mode).map_err(ScoringError::from)?;
        let retention =
            validate::retention("desired_retention", request.desired_retention).map_err(ScoringError::from)?;
        let now = match &request.now {
            Some(t) => millis("now", t).map_err(ScoringError::from)?,
            None => now_millis(),
        };
        let learner = self.caches.learner(&self.store, &request.learner_id).await?;
        let abilities = &learner.abilities;
        let difficulties = self
            .calibrations
            .difficulties(request.candidates.iter().map(|c| (c.item_id.as_str(), c.initial_difficulty)));
        let graph = request.skill_graph.iter().map(|s| (s.skill_id.as_str(), s.prerequisite_skill_ids.as_slice()));
        let unmet = self.ranking.unmet_prerequisites(graph, abilities);

        let mut states = Vec::with_capacity(request.candidates.len());
        for (i, (c, difficulty)) in std::mem::take(&mut request.candidates).into_iter().zip(difficulties).enumerate() {
            let seen = match (&c.memory, &c.last_review_time) {
                (Some(memory), Some(last)) => Some(Seen {
                    memory: to_fsrs(memory),
                    phase: phase(memory),
                    last_review_ms: millis("last_review_time", last)
                        .map_err(|v| ScoringError::from(v.within(format!("candidates[{i}]"))))?,
                    due_ms: match &c.due_time {
                        Some(t) => Some(
                            millis("due_time", t)
                                .map_err(|v| ScoringError::from(v.within(format!("candidates[{i}]"))))?,
                        ),
                        None => None,
                    },
                    last_rating: Rating::try_from(c.last_rating).unwrap_or(Rating::Unspecified),
                    knowledge: memory.knowledge,
                }),
                _ => None,
            };
            let mut blocked_by: Vec<String> =
                c.skill_ids.iter().filter_map(|s| unmet.get(s.as_str())).flatten().map(|p| (*p).to_owned()).collect();
            blocked_by.sort();
            blocked_by.dedup();
            states.push(CandidateState {
                ability: ability::item_ability(abilities, &c.skill_ids),
                guess: ability::guess(c.choice_count),
                item_id: c.item_id,
                skill_ids: c.skill_ids,
                seen,
                difficulty,
                blocked_by,
            });
        }

        if mode == Mode::MockTest {
            let answered = request.mock_test_answers.iter().map(|a| (a.item_id.as_str(), a.initial_difficulty));
            let answers: Vec<Answer> = request
                .mock_test_answers
                .iter()
                .zip(self.calibrations.difficulties(answered))
                .map(|(a, difficulty)| Answer {
                    item_id: a.item_id.clone(),
                    response: TestResponse { difficulty, guess: ability::guess(a.choice_count), correct: a.correct },
                })
                .collect();
            // The test starts from the learner's practice ability on the skills it covers.
            let mut skills: Vec<String> = states
                .iter()
                .flat_map(|c| c.skill_ids.iter())
                .chain(request.mock_test_answers.iter().flat_map(|a| a.skill_ids.iter()))
                .cloned()
                .collect();
            skills.sort();
            skills.dedup();
            let prior = ability::item_ability(abilities, &skills);
            let (state, ranked) =
                mock_test::next_items(&self.mock_test, &answers, &states, request.count as usize, prior);
            return Ok(Response::new(ScoreCandidatesResponse {
                items: ranked.into_iter().map(scored).collect(),
                mock_test: Some(MockTestEstimate {
                    ability: state.estimate.ability,
                    standard_error: state.estimate.standard_error,
                    answered: state.answered,
                    finished: state.finished,
                    status: state.status,
                }),
            }));
        }

        // Only practice offers new items, the one thing the target decides.
        let target_success = if mode == Mode::Practice {
            self.ranking.effective_target(learner.practice.map_or(0.0, |t| t.correction))
        } else {
            self.ranking.target_success
        };
        let situation = Situation { now_ms: now, desired_retention: retention, target_success };
        let memory = self.learner_memory(&request.learner_id, learner.fit.as_ref());
        let items = ranking::rank(&self.ranking, &memory, &states, mode, request.count as usize, situation)
            .into_iter()
            .map(scored)
            .collect();
        Ok(Response::new(ScoreCandidatesResponse { items, mock_test: None }))
    }

    async fn evaluate_attempt(&self, request: Request<EvaluateAttemptRequest>) -> RpcResult<EvaluateAttemptResponse> {
        let request = request.into_inner();
        let rating = validate::evaluate_request(&request).map_err(ScoringError::from)?;
        let desired_retention =
            validate::retention("desired_retention", request.desired_retention).map_err(ScoringError::from)?;
        let answer_ms = millis("answer_time", request.answer_time.as_ref().unwrap_or(&Default::default()))
            .map_err(ScoringError::from)?;
        let prior = prior(&request).map_err(ScoringError::from)?;
        // Cached models are enough: this writes nothing, and what counts is what the scheduler
        // records of the answer.
        let learner = self.caches.learner(&self.store, &request.learner_id).await?;
        let difficulty = self.calibrations.difficulties([(request.item_id.as_str(), request.initial_difficulty)])[0];
        let memory = self.learner_memory(&request.learner_id, learner.fit.as_ref());
        let answer = attempt::Answer {
            attempt_id: &request.attempt_id,
            skill_ids: &request.skill_ids,
            difficulty,
            guess: ability::guess(request.choice_count),
            rating,
            answer_ms,
            desired_retention,
        };
        let evaluation = attempt::evaluate(&memory, &learner.abilities, prior.as_ref(), &answer)
            .map_err(|e| ScoringError::Model(e.to_string()))?;
        Ok(Response::new(EvaluateAttemptResponse {
            memory: Some(to_proto(&evaluation.update.card, evaluation.knowledge)),
            due_time: Some(timestamp(evaluation.update.due_ms)),
            interval: Some(duration(evaluation.update.card.interval_ms)),
            predicted_recall: evaluation.predicted_recall,
            predicted_success: evaluation.predicted_success,
        }))
    }

    async fn apply_attempts(&self, request: Request<ApplyAttemptsRequest>) -> RpcResult<ApplyAttemptsResponse> {
        let request = request.into_inner();
        let attempts = validate::recorded_attempts(&request).map_err(ScoringError::from)?;
        let practice = attempt::PracticePolicy {
            step_correct: self.ranking.correction_step(true),
            step_wrong: self.ranking.correction_step(false),
            limit: self.ranking.target_correction_limit,
            start: self.ranking.target_success,
        };
        let outcome = self.store.apply_batch(&attempts, &practice).await.map_err(ScoringError::from)?;
        self.calibrations.applied(outcome.calibrations);
        self.caches.learners_applied(&outcome.learners).await;
        for (learner_id, reviews) in outcome.reviews {
            self.fitter.reviews_counted(learner_id, reviews);
        }
        Ok(Response::new(ApplyAttemptsResponse {
            applied_count: u32::try_from(outcome.applied.len()).unwrap_or(u32::MAX),
            duplicate_count: u32::try_from(outcome.duplicates).unwrap_or(u32::MAX),
        }))
    }

    async fn predict_recall(&self, request: Request<PredictRecallRequest>) -> RpcResult<PredictRecallResponse> {
        let request = request.into_inner();
        id("learner_id", &request.learner_id).map_err(ScoringError::from)?;
        count("queries", &request.queries, validate::MAX_CANDIDATES).map_err(ScoringError::from)?;
        let at = match &request.at {
            Some(t) => millis("at", t).map_err(ScoringError::from)?,
            None => now_millis(),
        };
        let learner = self.caches.learner(&self.store, &request.learner_id).await?;
        let memory = self.learner_memory(&request.learner_id, learner.fit.as_ref());
        let mut predictions = Vec::with_capacity(request.queries.len());
        for (i, query) in request.queries.iter().enumerate() {
            validate::recall_query(i, query).map_err(ScoringError::from)?;
            let (Some(state), Some(last)) = (&query.memory, &query.last_review_time) else { continue };
            let last = millis(&format!("queries[{i}].last_review_time"), last).map_err(ScoringError::from)?;
            predictions.push(RecallPrediction {
                item_id: query.item_id.clone(),
                recall: memory.retrievability(to_fsrs(state), at - last),
            });
        }
        Ok(Response::new(PredictRecallResponse { predictions }))
    }

    async fn get_learner_model(&self, request: Request<GetLearnerModelRequest>) -> RpcResult<GetLearnerModelResponse> {
        let request = request.into_inner();
        id("learner_id", &request.learner_id).map_err(ScoringError::from)?;
        let learner = self.caches.learner(&self.store, &request.learner_id).await?;
        let mut skills: Vec<SkillAbility> = learner
            .abilities
            .into_iter()
            .map(|(skill_id, e)| SkillAbility { skill_id, ability: e.value, attempt_count: e.attempts })
            .collect();
        skills.sort_by(|a, b| a.skill_id.cmp(&b.skill_id));
        let attempt_count = self.store.attempt_count(&request.learner_id).await.map_err(ScoringError::from)?;
        let practice = learner.practice;
        let fit = learner.fit;
        let memory = self.learner_memory(&request.learner_id, fit.as_ref());
        Ok(Response::new(GetLearnerModelResponse {
            model: Some(LearnerModel {
                learner_id: request.learner_id,
                skills,
                fsrs_parameters: memory.parameters().iter().map(|w| f64::from(*w)).collect(),
                parameters_fitted: fit.as_ref().is_some_and(|f| f.kept),
                last_fit: fit.as_ref().map(fit_proto),
                attempt_count,
                practice_first_attempts: practice.map_or(0, |p| p.first_attempts),
                rolling_success: practice.map_or(0.0, |p| p.rolling_success),
                target_success: self.ranking.effective_target(practice.map_or(0.0, |p| p.correction)),
            }),
        }))
    }

    async fn fit_learner_parameters(
        &self,
        request: Request<FitLearnerParametersRequest>,
    ) -> RpcResult<FitLearnerParametersResponse> {
        let request = request.into_inner();
        id("learner_id", &request.learner_id).map_err(ScoringError::from)?;
        let fit = self.fitter.fit(&request.learner_id).await?;
        Ok(Response::new(FitLearnerParametersResponse { fit: Some(fit_proto(&fit)) }))
    }
}

fn fit_proto(fit: &StoredFit) -> ParameterFit {
    ParameterFit {
        kept: fit.kept,
        parameters: fit.parameters.iter().map(|w| f64::from(*w)).collect(),
        reviews: fit.reviews,
        holdout_reviews: fit.holdout_reviews,
        default_log_loss: fit.default_log_loss,
        fitted_log_loss: fit.fitted_log_loss,
        attempt_count: fit.attempt_count,
        fit_time: Some(timestamp(fit.fit_time_ms)),
    }
}

/// The memory state the caller holds for the item, as the memory model takes it.
fn prior(request: &EvaluateAttemptRequest) -> Result<Option<attempt::Prior>, alp_runtime::FieldViolation> {
    let (Some(memory), Some(last)) = (&request.prior_memory, &request.last_review_time) else { return Ok(None) };
    let last_review_ms = millis("last_review_time", last)?;
    let due_ms = match &request.prior_due_time {
        Some(due) => millis("prior_due_time", due)?,
        None => last_review_ms,
    };
    Ok(Some(attempt::Prior {
        card: Card {
            memory: to_fsrs(memory),
            phase: phase(memory),
            step: memory.step as usize,
            last_review_ms,
            interval_ms: due_ms.saturating_sub(last_review_ms).max(0),
        },
        knowledge: memory.knowledge,
        due_ms,
    }))
}
