//! The gRPC surface of the scoring service.

use std::collections::HashMap;
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
use crate::error::ScoringError;
use crate::fitter::Fitter;
use crate::model::ability::{self, TestResponse};
use crate::model::memory::{Card, MemoryModel, Phase, fuzz_unit};
use crate::model::mock_test::{self, Answer, MockTestPolicy};
use crate::model::ranking::{self, CandidateState, Ranked, RankingPolicy, Seen, Situation};
use crate::store::{AttemptEffects, PracticeOutcome, ScoringStore, StoredFit};
use crate::validate;

#[derive(Clone)]
pub struct ScoringApi {
    store: ScoringStore,
    caches: ScoringCaches,
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
    pub fn new(store: ScoringStore, policies: crate::Policies, redis: Option<Redis>) -> Self {
        let caches = ScoringCaches::new(redis);
        Self {
            fitter: Fitter::new(store.clone(), policies.fitting, caches.clone()),
            caches,
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
        let request = request.into_inner();
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
        let item_ids: Vec<String> = request
            .candidates
            .iter()
            .map(|c| c.item_id.clone())
            .chain(request.mock_test_answers.iter().map(|a| a.item_id.clone()))
            .collect();
        let calibration = self.caches.calibration(&self.store, &item_ids).await?;
        let difficulty = |item_id: &str, initial: f64| calibration.get(item_id).map_or(initial, |e| e.value);
        let graph: HashMap<String, Vec<String>> =
            request.skill_graph.iter().map(|s| (s.skill_id.clone(), s.prerequisite_skill_ids.clone())).collect();
        let unmet = self.ranking.unmet_prerequisites(&graph, abilities);

        let mut states = Vec::with_capacity(request.candidates.len());
        for (i, c) in request.candidates.iter().enumerate() {
            let seen = match (&c.memory, &c.last_review_time) {
                (Some(memory), Some(last)) => Some(Seen {
                    memory: to_fsrs(memory),
                    phase: phase(memory),
                    last_review_ms: millis(&format!("candidates[{i}].last_review_time"), last)
                        .map_err(ScoringError::from)?,
                    due_ms: match &c.due_time {
                        Some(t) => Some(millis(&format!("candidates[{i}].due_time"), t).map_err(ScoringError::from)?),
                        None => None,
                    },
                    last_rating: Rating::try_from(c.last_rating).unwrap_or(Rating::Unspecified),
                    knowledge: memory.knowledge,
                }),
                _ => None,
            };
            let mut blocked_by: Vec<String> =
                c.skill_ids.iter().filter_map(|s| unmet.get(s)).flatten().cloned().collect();
            blocked_by.sort();
            blocked_by.dedup();
            states.push(CandidateState {
                item_id: c.item_id.clone(),
                skill_ids: c.skill_ids.clone(),
                seen,
                ability: ability::item_ability(abilities, &c.skill_ids),
                difficulty: difficulty(&c.item_id, c.initial_difficulty),
                guess: ability::guess(c.choice_count),
                blocked_by,
            });
        }

        if mode == Mode::MockTest {
            let answers: Vec<Answer> = request
                .mock_test_answers
                .iter()
                .map(|a| Answer {
                    item_id: a.item_id.clone(),
                    response: TestResponse {
                        difficulty: difficulty(&a.item_id, a.initial_difficulty),
                        guess: ability::guess(a.choice_count),
                        correct: a.correct,
                    },
                })
                .collect();
            // The test starts from the learner's practice ability on the skills it covers.
            let mut skills: Vec<String> = request
                .candidates
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

    async fn apply_attempt(&self, request: Request<ApplyAttemptRequest>) -> RpcResult<ApplyAttemptResponse> {
        let request = request.into_inner();
        let rating = validate::apply_request(&request).map_err(ScoringError::from)?;
        let retention =
            validate::retention("desired_retention", request.desired_retention).map_err(ScoringError::from)?;
        let answer_ms = millis("answer_time", request.answer_time.as_ref().unwrap_or(&Default::default()))
            .map_err(ScoringError::from)?;
        let prior = match (&request.prior_memory, &request.last_review_time) {
            (Some(memory), Some(last)) => {
                let last_review_ms = millis("last_review_time", last).map_err(ScoringError::from)?;
                let due_ms = match &request.prior_due_time {
                    Some(due) => millis("prior_due_time", due).map_err(ScoringError::from)?,
                    None => last_review_ms,
                };
                Some((
                    Card {
                        memory: to_fsrs(memory),
                        phase: phase(memory),
                        step: memory.step as usize,
                        last_review_ms,
                        interval_ms: due_ms.saturating_sub(last_review_ms).max(0),
                    },
                    memory.knowledge,
                    due_ms,
                ))
            }
            _ => None,
        };

        // The update is computed from the database, not from a cached copy. The reads go out
        // together with the replay check: one round trip of latency, wasted only on retries.
        let (applied, abilities, fit, calibration) = tokio::join!(
            self.store.applied(&request.attempt_id),
            self.store.abilities(&request.learner_id),
            self.store.parameter_fit(&request.learner_id),
            self.store.calibration(std::slice::from_ref(&request.item_id)),
        );
        if let Some(applied) = applied.map_err(ScoringError::from)? {
            return replay(applied, &request);
        }
        let abilities = abilities.map_err(ScoringError::from)?;
        let fit = fit.map_err(ScoringError::from)?;
        let memory = self.learner_memory(&request.learner_id, fit.as_ref());
        let calibration = calibration.map_err(ScoringError::from)?;
        let item = calibration.get(&request.item_id).copied();
        let theta = ability::item_ability(&abilities, &request.skill_ids);
        let difficulty = item.map_or(request.initial_difficulty, |e| e.value);
        let guess = ability::guess(request.choice_count);
        let state = CandidateState {
            item_id: request.item_id.clone(),
            skill_ids: request.skill_ids.clone(),
            seen: prior.as_ref().map(|(card, knowledge, due_ms)| Seen {
                memory: card.memory,
                phase: card.phase,
                last_review_ms: card.last_review_ms,
                due_ms: Some(*due_ms),
                last_rating: Rating::Unspecified,
                knowledge: *knowledge,
            }),
            ability: theta,
            difficulty,
            guess,
            blocked_by: Vec::new(),
        };
        let (recall_before, success_before) = state.predict(&memory, answer_ms);
        let fuzz = Some(fuzz_unit(&request.attempt_id));
        let update = memory
            .review(prior.as_ref().map(|(card, _, _)| card), rating, answer_ms, retention, fuzz)
            .map_err(|e| ScoringError::Model(e.to_string()))?;

        // Ability and difficulty are prior knowledge: only first attempts move them; later
        // attempts are memory, which FSRS and the current-knowledge estimate track.
        let correct = rating != Rating::Again;
        let first = prior.is_none();
        let item_attempts = item.map_or(0, |e| e.attempts);
        let steps =
            |learner_attempts| ability::first_attempt_steps(success_before, correct, learner_attempts, item_attempts);
        let (ability_deltas, difficulty_delta) = if first {
            let deltas = request
                .skill_ids
                .iter()
                .map(|s| {
                    let current = ability::skill_ability(&abilities, s);
                    (s.clone(), current.value, steps(current.attempts).0)
                })
                .collect();
            // A mock test measures against the calibration as it stands: moving an item's
            // difficulty by the answer it is measuring would pull the estimate towards the middle.
            let item_change = (!request.mock_test).then(|| (request.initial_difficulty, steps(0).1));
            (deltas, item_change)
        } else {
            (Vec::new(), None)
        };
        let knowledge_before = prior.as_ref().and_then(|(_, k, _)| *k).unwrap_or(theta - difficulty);
        let knowledge = ability::knowledge_after(knowledge_before, guess, correct);
        let practice = (first && !request.mock_test).then(|| PracticeOutcome {
            correct,
            step: self.ranking.correction_step(correct),
            limit: self.ranking.target_correction_limit,
            start: self.ranking.target_success,
        });
        let first_skill = request.skill_ids.first();
        let response = ApplyAttemptResponse {
            memory: Some(to_proto(&update.card, knowledge)),
            due_time: Some(timestamp(update.due_ms)),
            interval: Some(duration(update.card.interval_ms)),
            predicted_recall: recall_before,
            predicted_success: success_before,
            ability: first_skill.map_or(theta, |s| {
                ability::skill_ability(&abilities, s).value
                    + ability_deltas.iter().find(|(k, _, _)| k == s).map_or(0.0, |(_, _, d)| *d)
            }),
            item_difficulty: difficulty + difficulty_delta.map_or(0.0, |(_, d)| d),
            duplicate: false,
        };
        let effects = AttemptEffects {
            attempt_id: request.attempt_id.clone(),
            learner_id: request.learner_id.clone(),
            item_id: request.item_id.clone(),
            rating,
            answer_ms,
            review: !first,
            response,
            ability_deltas,
            difficulty_delta,
            practice,
        };
        let Some(reviews) = self.store.apply(&effects).await.map_err(ScoringError::from)? else {
            // Another call applied the same attempt id between our check and our write.
            let applied = self
                .store
                .applied(&request.attempt_id)
                .await
                .map_err(ScoringError::from)?
                .ok_or_else(|| ScoringError::Model("applied attempt vanished".to_owned()))?;
            return replay(applied, &request);
        };
        self.caches.learner_changed(&request.learner_id).await;
        self.fitter.fit_if_due(&request.learner_id, reviews, fit.as_ref().map(|f| f.reviews));
        Ok(Response::new(effects.response))
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

/// The first answer to an attempt id, or a conflict if the id is reused for something else.
fn replay(applied: crate::store::AppliedAttempt, request: &ApplyAttemptRequest) -> RpcResult<ApplyAttemptResponse> {
    if applied.learner_id != request.learner_id || applied.item_id != request.item_id {
        return Err(ScoringError::AttemptConflict(request.attempt_id.clone()).into());
    }
    Ok(Response::new(ApplyAttemptResponse { duplicate: true, ..applied.response }))
}
