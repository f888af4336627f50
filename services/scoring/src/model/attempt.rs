//! What an answer does to the models, in two parts that happen at different times.
//!
//! [`evaluate`] is the memory side, a pure function of the prior state: the scheduler asks for
//! it before its commit and keeps the result in its log. [`apply`] is the ability side: first
//! answers move the learner's ability per skill, the item's difficulty and the practice target;
//! later ones count as reviews. It runs over recorded attempts in the order recorded, each
//! against the values the ones before it left, so a batch gives the same models as the same
//! attempts applied one by one.

use std::collections::{HashMap, HashSet};

use alp_proto::common::v1::Rating;

use crate::model::ability::{self, Estimate};
use crate::model::memory::{Card, MemoryError, MemoryModel, Reviewed, fuzz_unit};
use crate::model::ranking::{CandidateState, Seen};

/// Weight of the newest outcome in the rolling success: about the last 20 count.
pub const ROLLING_WEIGHT: f64 = 0.05;

/// The learner's memory of the item before the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prior {
    pub card: Card,
    /// The current-knowledge estimate kept with the state; None for states from before it.
    pub knowledge: Option<f64>,
    pub due_ms: i64,
}

/// One answer, as the memory side needs it.
#[derive(Debug, Clone)]
pub struct Answer<'a> {
    /// Seeds the interval fuzz: a retry of the attempt gets the same schedule.
    pub attempt_id: &'a str,
    pub skill_ids: &'a [String],
    /// The item's difficulty as calibrated, or the content's initial one.
    pub difficulty: f64,
    pub guess: f64,
    pub rating: Rating,
    pub answer_ms: i64,
    pub desired_retention: f64,
}

/// The memory after an answer, and what was predicted just before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub update: Reviewed,
    pub knowledge: f64,
    pub predicted_recall: f64,
    pub predicted_success: f64,
}

/// The new memory state of an item after `answer`, given the learner's memory model and
/// abilities. Writes nothing and reads nothing but its arguments.
pub fn evaluate(
    memory: &MemoryModel,
    abilities: &HashMap<String, Estimate>,
    prior: Option<&Prior>,
    answer: &Answer<'_>,
) -> Result<Evaluation, MemoryError> {
    let theta = ability::item_ability(abilities, answer.skill_ids);
    let state = CandidateState {
        item_id: String::new(),
        skill_ids: Vec::new(),
        seen: prior.map(|p| Seen {
            memory: p.card.memory,
            phase: p.card.phase,
            last_review_ms: p.card.last_review_ms,
            due_ms: Some(p.due_ms),
            last_rating: Rating::Unspecified,
            knowledge: p.knowledge,
        }),
        ability: theta,
        difficulty: answer.difficulty,
        guess: answer.guess,
        blocked_by: Vec::new(),
    };
    let (predicted_recall, predicted_success) = state.predict(memory, answer.answer_ms);
    let update = memory.review(
        prior.map(|p| &p.card),
        answer.rating,
        answer.answer_ms,
        answer.desired_retention,
        Some(fuzz_unit(answer.attempt_id)),
    )?;
    let knowledge_before = prior.and_then(|p| p.knowledge).unwrap_or(theta - answer.difficulty);
    let knowledge = ability::knowledge_after(knowledge_before, answer.guess, answer.rating != Rating::Again);
    Ok(Evaluation { update, knowledge, predicted_recall, predicted_success })
}

/// A recorded attempt, as the ability side needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub attempt_id: String,
    pub learner_id: String,
    pub item_id: String,
    pub skill_ids: Vec<String>,
    pub initial_difficulty: f64,
    pub guess: f64,
    pub rating: Rating,
    pub correct: bool,
    /// The learner's first answer to the item.
    pub first: bool,
    /// Chosen by a mock test: measures, so it moves neither the item nor the practice target.
    pub mock_test: bool,
    pub answer_ms: i64,
}

/// How a learner's first attempts at new practice items have gone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PracticeTarget {
    pub correction: f64,
    pub rolling_success: f64,
    pub first_attempts: i64,
}

/// How a first practice answer moves the target: the ranking policy's gain and limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PracticePolicy {
    /// The correction's change after a correct and after a wrong answer.
    pub step_correct: f64,
    pub step_wrong: f64,
    /// The correction stays within ±limit.
    pub limit: f64,
    /// The rolling success a learner starts from.
    pub start: f64,
}

impl PracticeTarget {
    /// The target after one more first practice answer; `None` before the learner's first.
    pub fn after(before: Option<PracticeTarget>, correct: bool, policy: &PracticePolicy) -> PracticeTarget {
        let before =
            before.unwrap_or(PracticeTarget { correction: 0.0, rolling_success: policy.start, first_attempts: 0 });
        let (step, outcome) = if correct { (policy.step_correct, 1.0) } else { (policy.step_wrong, 0.0) };
        PracticeTarget {
            correction: (before.correction + step).clamp(-policy.limit, policy.limit),
            rolling_success: before.rolling_success * (1.0 - ROLLING_WEIGHT) + ROLLING_WEIGHT * outcome,
            first_attempts: before.first_attempts + 1,
        }
    }
}

/// The models a batch of attempts touches, as read at its start; [`apply`] moves them on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Models {
    /// Per learner, per skill.
    pub abilities: HashMap<String, HashMap<String, Estimate>>,
    pub calibration: HashMap<String, Estimate>,
    pub practice: HashMap<String, PracticeTarget>,
}

/// What a batch changed: the keys whose values in [`Models`] are to be written, and the reviews
/// to add per learner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub skills: HashSet<(String, String)>,
    pub items: HashSet<String>,
    pub practice: HashSet<String>,
    pub reviews: HashMap<String, i64>,
}

/// Applies one recorded attempt to `models`, noting what it changed.
pub fn apply(models: &mut Models, changes: &mut Changes, attempt: &Recorded, practice: &PracticePolicy) {
    if !attempt.first {
        *changes.reviews.entry(attempt.learner_id.clone()).or_default() += 1;
        return;
    }
    let abilities = models.abilities.entry(attempt.learner_id.clone()).or_default();
    let item = models.calibration.get(&attempt.item_id).copied();
    let difficulty = item.map_or(attempt.initial_difficulty, |e| e.value);
    let item_attempts = item.map_or(0, |e| e.attempts);
    let theta = ability::item_ability(abilities, &attempt.skill_ids);
    let success = ability::success_probability(theta, difficulty, attempt.guess);
    // Every skill's step from the abilities before this answer: a skill moved first must not
    // change where an unattempted one starts.
    let moved: Vec<(String, Estimate)> = attempt
        .skill_ids
        .iter()
        .map(|skill| {
            let current = ability::skill_ability(abilities, skill);
            let (step, _) = ability::first_attempt_steps(success, attempt.correct, current.attempts, item_attempts);
            (skill.clone(), Estimate { value: current.value + step, attempts: current.attempts + 1 })
        })
        .collect();
    for (skill, estimate) in moved {
        changes.skills.insert((attempt.learner_id.clone(), skill.clone()));
        abilities.insert(skill, estimate);
    }
    if attempt.mock_test {
        return;
    }
    let (_, item_step) = ability::first_attempt_steps(success, attempt.correct, 0, item_attempts);
    models
        .calibration
        .insert(attempt.item_id.clone(), Estimate { value: difficulty + item_step, attempts: item_attempts + 1 });
    changes.items.insert(attempt.item_id.clone());
    let target = PracticeTarget::after(models.practice.get(&attempt.learner_id).copied(), attempt.correct, practice);
    models.practice.insert(attempt.learner_id.clone(), target);
    changes.practice.insert(attempt.learner_id.clone());
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const POLICY: PracticePolicy = PracticePolicy { step_correct: -0.01, step_wrong: 0.04, limit: 0.1, start: 0.8 };

    fn first(id: &str, learner: &str, item: &str, correct: bool) -> Recorded {
        Recorded {
            attempt_id: id.into(),
            learner_id: learner.into(),
            item_id: item.into(),
            skill_ids: vec!["s".into()],
            initial_difficulty: 0.0,
            guess: 0.0,
            rating: if correct { Rating::Good } else { Rating::Again },
            correct,
            first: true,
            mock_test: false,
            answer_ms: 0,
        }
    }

    #[test]
    fn a_correct_first_answer_raises_ability_and_lowers_difficulty() {
        let (mut models, mut changes) = (Models::default(), Changes::default());
        apply(&mut models, &mut changes, &first("a1", "ada", "i1", true), &POLICY);
        // Even odds: the step is K(0)·(1 − 0.5) = 0.4 each way.
        assert_eq!(models.abilities["ada"]["s"], Estimate { value: 0.4, attempts: 1 });
        assert_eq!(models.calibration["i1"], Estimate { value: -0.4, attempts: 1 });
        let target = models.practice["ada"];
        assert_eq!(target.first_attempts, 1);
        assert!((target.correction + 0.01).abs() < 1e-12);
        assert!((target.rolling_success - (0.8 * 0.95 + 0.05)).abs() < 1e-12);
        assert!(changes.skills.contains(&("ada".into(), "s".into())) && changes.items.contains("i1"));
    }

    #[test]
    fn attempts_in_one_batch_chain_as_if_applied_one_by_one() {
        let attempts =
            [first("a1", "ada", "i1", true), first("a2", "bob", "i1", false), first("a3", "ada", "i2", true)];
        let (mut batch, mut changes) = (Models::default(), Changes::default());
        for attempt in &attempts {
            apply(&mut batch, &mut changes, attempt, &POLICY);
        }
        // One by one, each starting from what the one before left.
        let mut single = Models::default();
        for attempt in &attempts {
            let mut fresh = Changes::default();
            apply(&mut single, &mut fresh, attempt, &POLICY);
        }
        assert_eq!(batch, single);
        // bob met i1 after ada made it easier, so his wrong answer was more surprising.
        assert_eq!(batch.calibration["i1"].attempts, 2);
        assert!(batch.abilities["bob"]["s"].value < -0.4);
    }

    #[test]
    fn reviews_and_mock_tests_leave_what_they_must_alone() {
        let (mut models, mut changes) = (Models::default(), Changes::default());
        let review = Recorded { first: false, ..first("r1", "ada", "i1", true) };
        apply(&mut models, &mut changes, &review, &POLICY);
        assert_eq!(changes.reviews["ada"], 1);
        assert!(models.abilities.is_empty() && changes.skills.is_empty());
        let measured = Recorded { mock_test: true, ..first("m1", "ada", "i2", true) };
        apply(&mut models, &mut changes, &measured, &POLICY);
        assert_eq!(models.abilities["ada"]["s"].attempts, 1, "a mock test still measures the learner");
        assert!(models.calibration.is_empty() && models.practice.is_empty(), "but moves neither item nor target");
    }

    #[test]
    fn the_correction_stays_within_its_limit() {
        let mut target = None;
        for _ in 0..10 {
            target = Some(PracticeTarget::after(target, false, &POLICY));
        }
        assert_eq!(target.unwrap().correction, 0.1);
        assert_eq!(target.unwrap().first_attempts, 10);
    }
}
