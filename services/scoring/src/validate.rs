//! Request checks for the scoring service.

use alp_proto::common::v1::{MemoryPhase, MemoryState, Mode, Rating};
use alp_proto::scoring::v1::{
    ApplyAttemptsRequest, Candidate, EvaluateAttemptRequest, RecallQuery, ScoreCandidatesRequest, SkillPrerequisites,
    TestAnswer,
};
use alp_runtime::FieldViolation;
use alp_runtime::time::millis;
use alp_runtime::validate::{count, id, range};

use crate::model::ability;
use crate::model::attempt::Recorded;

pub const MAX_CANDIDATES: usize = 2000;
pub const MAX_COUNT: u32 = 100;
const MAX_SKILLS: usize = 2000;
const MAX_PREREQUISITES: usize = 100;
const MAX_TEST_ANSWERS: usize = 1000;

pub fn retention(field: &str, value: f64) -> Result<f64, FieldViolation> {
    if value == 0.0 {
        return Ok(crate::model::DEFAULT_RETENTION);
    }
    range(field, value, 0.70, 0.97)?;
    Ok(value)
}

/// More (re)learning steps than any configuration uses.
const MAX_STEP: u32 = 16;

pub fn memory(field: &str, memory: &MemoryState) -> Result<(), FieldViolation> {
    range("stability", memory.stability, 0.001, 36_500.0 * 100.0).map_err(|v| v.within(field))?;
    range("difficulty", memory.difficulty, 1.0, 10.0).map_err(|v| v.within(field))?;
    if MemoryPhase::try_from(memory.phase).is_err() {
        return Err(FieldViolation::new(format!("{field}.phase"), "must be LEARNING, REVIEW or RELEARNING"));
    }
    if memory.step > MAX_STEP {
        return Err(FieldViolation::new(format!("{field}.step"), format!("must be at most {MAX_STEP}")));
    }
    if let Some(knowledge) = memory.knowledge {
        range("knowledge", knowledge, -50.0, 50.0).map_err(|v| v.within(field))?;
    }
    Ok(())
}

pub fn mode(value: i32) -> Result<Mode, FieldViolation> {
    match Mode::try_from(value) {
        Ok(Mode::Unspecified) => Ok(Mode::Practice),
        Ok(mode) => Ok(mode),
        Err(_) => Err(FieldViolation::new("mode", "must be PRACTICE, REVIEW or MOCK_TEST")),
    }
}

pub fn score_request(request: &ScoreCandidatesRequest) -> Result<(), FieldViolation> {
    id("learner_id", &request.learner_id)?;
    // A mock test may have asked every item: it needs no candidates to report its end.
    if request.mode != Mode::MockTest as i32 || !request.candidates.is_empty() {
        count("candidates", &request.candidates, MAX_CANDIDATES)?;
    }
    if request.count == 0 || request.count > MAX_COUNT {
        return Err(FieldViolation::new("count", format!("must be between 1 and {MAX_COUNT}")));
    }
    for (i, candidate) in request.candidates.iter().enumerate() {
        self::candidate(candidate).map_err(|v| v.within(format!("candidates[{i}]")))?;
    }
    if request.skill_graph.len() > MAX_SKILLS {
        return Err(FieldViolation::new("skill_graph", format!("must have at most {MAX_SKILLS} skills")));
    }
    for (i, skill) in request.skill_graph.iter().enumerate() {
        prerequisites(skill).map_err(|v| v.within(format!("skill_graph[{i}]")))?;
    }
    if request.mock_test_answers.len() > MAX_TEST_ANSWERS {
        return Err(FieldViolation::new("mock_test_answers", format!("must have at most {MAX_TEST_ANSWERS} entries")));
    }
    for (i, answer) in request.mock_test_answers.iter().enumerate() {
        test_answer(answer).map_err(|v| v.within(format!("mock_test_answers[{i}]")))?;
    }
    Ok(())
}

fn prerequisites(skill: &SkillPrerequisites) -> Result<(), FieldViolation> {
    id("skill_id", &skill.skill_id)?;
    if skill.prerequisite_skill_ids.len() > MAX_PREREQUISITES {
        return Err(FieldViolation::new(
            "prerequisite_skill_ids",
            format!("must have at most {MAX_PREREQUISITES} entries"),
        ));
    }
    for (j, prerequisite) in skill.prerequisite_skill_ids.iter().enumerate() {
        id("prerequisite_skill_ids", prerequisite).map_err(|v| v.entry(j))?;
    }
    Ok(())
}

fn test_answer(answer: &TestAnswer) -> Result<(), FieldViolation> {
    id("item_id", &answer.item_id)?;
    skill_ids(&answer.skill_ids)?;
    range("initial_difficulty", answer.initial_difficulty, -6.0, 6.0)?;
    choice_count(answer.choice_count)
}

fn skill_ids(skills: &[String]) -> Result<(), FieldViolation> {
    if skills.len() > 20 {
        return Err(FieldViolation::new("skill_ids", "must have at most 20 entries"));
    }
    for (j, skill) in skills.iter().enumerate() {
        id("skill_ids", skill).map_err(|v| v.entry(j))?;
    }
    Ok(())
}

fn choice_count(value: u32) -> Result<(), FieldViolation> {
    if value > 10 {
        return Err(FieldViolation::new("choice_count", "must be at most 10"));
    }
    Ok(())
}

fn candidate(candidate: &Candidate) -> Result<(), FieldViolation> {
    id("item_id", &candidate.item_id)?;
    skill_ids(&candidate.skill_ids)?;
    range("initial_difficulty", candidate.initial_difficulty, -6.0, 6.0)?;
    choice_count(candidate.choice_count)?;
    if let Some(m) = &candidate.memory {
        memory("memory", m)?;
        if candidate.last_review_time.is_none() {
            return Err(FieldViolation::new("last_review_time", "is required with memory"));
        }
    }
    Ok(())
}

pub fn evaluate_request(request: &EvaluateAttemptRequest) -> Result<Rating, FieldViolation> {
    id("attempt_id", &request.attempt_id)?;
    id("learner_id", &request.learner_id)?;
    id("item_id", &request.item_id)?;
    skill_ids(&request.skill_ids)?;
    range("initial_difficulty", request.initial_difficulty, -6.0, 6.0)?;
    choice_count(request.choice_count)?;
    if let Some(m) = &request.prior_memory {
        memory("prior_memory", m)?;
        if request.last_review_time.is_none() {
            return Err(FieldViolation::new("last_review_time", "is required with prior_memory"));
        }
    }
    if request.answer_time.is_none() {
        return Err(FieldViolation::new("answer_time", "is required"));
    }
    rating("rating", request.rating, request.correct)
}

/// An unset rating follows `correct`.
fn rating(field: &str, value: i32, correct: bool) -> Result<Rating, FieldViolation> {
    match Rating::try_from(value) {
        Ok(Rating::Unspecified) => Ok(if correct { Rating::Good } else { Rating::Again }),
        Ok(rating) => Ok(rating),
        Err(_) => Err(FieldViolation::new(field, "must be AGAIN, HARD, GOOD or EASY")),
    }
}

/// The most attempts one ApplyAttempts takes.
pub const MAX_APPLIED_ATTEMPTS: usize = 1000;

/// Every attempt of the batch, checked before any is applied: one bad entry refuses the whole
/// batch, naming it.
pub fn recorded_attempts(request: &ApplyAttemptsRequest) -> Result<Vec<Recorded>, FieldViolation> {
    count("attempts", &request.attempts, MAX_APPLIED_ATTEMPTS)?;
    request
        .attempts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let at = |f: &str| format!("attempts[{i}].{f}");
            let nested = |v: FieldViolation| FieldViolation::new(at(&v.field), v.reason);
            id(&at("attempt_id"), &a.attempt_id)?;
            id(&at("learner_id"), &a.learner_id)?;
            id(&at("item_id"), &a.item_id)?;
            skill_ids(&a.skill_ids).map_err(nested)?;
            range(&at("initial_difficulty"), a.initial_difficulty, -6.0, 6.0)?;
            choice_count(a.choice_count).map_err(nested)?;
            let answer_time =
                a.answer_time.as_ref().ok_or_else(|| FieldViolation::new(at("answer_time"), "is required"))?;
            Ok(Recorded {
                attempt_id: a.attempt_id.clone(),
                learner_id: a.learner_id.clone(),
                item_id: a.item_id.clone(),
                skill_ids: a.skill_ids.clone(),
                initial_difficulty: a.initial_difficulty,
                guess: ability::guess(a.choice_count),
                rating: rating(&at("rating"), a.rating, a.correct)?,
                correct: a.correct,
                first: a.first_attempt,
                mock_test: a.mock_test,
                answer_ms: millis(&at("answer_time"), answer_time)?,
            })
        })
        .collect()
}

pub fn recall_query(i: usize, query: &RecallQuery) -> Result<(), FieldViolation> {
    let at = |f: &str| format!("queries[{i}].{f}");
    id(&at("item_id"), &query.item_id)?;
    let m = query.memory.as_ref().ok_or_else(|| FieldViolation::new(at("memory"), "is required"))?;
    memory(&at("memory"), m)?;
    if query.last_review_time.is_none() {
        return Err(FieldViolation::new(at("last_review_time"), "is required"));
    }
    Ok(())
}
