//! Elo/Rasch: learner ability per skill, item difficulty, current knowledge of a seen item, and
//! the ability estimate of an adaptive test. All on one logit scale.

use std::collections::HashMap;

/// Steps of the current-knowledge estimate: big after a correct answer, small after a wrong one
/// (an attempt teaches something even when it fails).
pub const KNOWLEDGE_STEP_CORRECT: f64 = 3.4;
pub const KNOWLEDGE_STEP_WRONG: f64 = 0.3;

/// A logit estimate and how many first attempts it rests on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub attempts: i64,
}

pub fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

pub fn logit(p: f64) -> f64 {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    (p / (1.0 - p)).ln()
}

/// Guessing floor: 1 / number of choices, 0 for open answers.
pub fn guess(choice_count: u32) -> f64 {
    if choice_count >= 2 { 1.0 / f64::from(choice_count) } else { 0.0 }
}

/// Rasch with a guessing floor: P = g + (1 − g)·σ(θ − b).
pub fn success_probability(ability: f64, difficulty: f64, guess: f64) -> f64 {
    guess + (1.0 - guess) * sigmoid(ability - difficulty)
}

/// Where a learner starts on a skill they have not attempted: the mean of their other skills,
/// weighted by attempts (0 before any). Abilities on the skills of one learner go together, so
/// this starts a new skill near the truth instead of at the population mean.
pub fn starting_ability(abilities: &HashMap<String, Estimate>) -> f64 {
    let (sum, weight) = abilities
        .values()
        .fold((0.0, 0.0), |(sum, weight), e| (sum + e.value * e.attempts as f64, weight + e.attempts as f64));
    if weight > 0.0 { sum / weight } else { 0.0 }
}

/// A learner's estimate on one skill, starting where `starting_ability` says when unattempted.
pub fn skill_ability(abilities: &HashMap<String, Estimate>, skill: &str) -> Estimate {
    abilities.get(skill).copied().unwrap_or(Estimate { value: starting_ability(abilities), attempts: 0 })
}

/// A learner's ability on an item: the mean over the item's skills (the starting ability for
/// an item without skills).
pub fn item_ability(abilities: &HashMap<String, Estimate>, skills: &[String]) -> f64 {
    if skills.is_empty() {
        return starting_ability(abilities);
    }
    skills.iter().map(|s| skill_ability(abilities, s).value).sum::<f64>() / skills.len() as f64
}

/// Uncertainty-damped step of a first attempt after n earlier ones: K(n) = 0.8 / (1 + 0.05·n).
pub fn elo_step(attempts: i64) -> f64 {
    0.8 / (1.0 + 0.05 * attempts.max(0) as f64)
}

/// Elo steps of a first attempt answered with `predicted` success: (learner ability change,
/// after `learner_attempts` earlier first attempts on the skill; item difficulty change, after
/// `item_attempts` earlier first attempts at the item).
pub fn first_attempt_steps(predicted: f64, correct: bool, learner_attempts: i64, item_attempts: i64) -> (f64, f64) {
    let surprise = f64::from(u8::from(correct)) - predicted;
    (elo_step(learner_attempts) * surprise, -elo_step(item_attempts) * surprise)
}

/// The current-knowledge estimate after an answer, from the estimate before it.
pub fn knowledge_after(knowledge: f64, guess: f64, correct: bool) -> f64 {
    let p = success_probability(knowledge, 0.0, guess);
    if correct { knowledge + KNOWLEDGE_STEP_CORRECT * (1.0 - p) } else { knowledge - KNOWLEDGE_STEP_WRONG * p }
}

/// Fisher information of one answer at success probability p with guessing floor g.
pub fn information(p: f64, g: f64) -> f64 {
    if p <= g || p >= 1.0 {
        return 0.0;
    }
    ((p - g) / (1.0 - g)).powi(2) * (1.0 - p) / p
}

/// One answered item of an adaptive test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestResponse {
    pub difficulty: f64,
    pub guess: f64,
    pub correct: bool,
}

/// An ability estimate and its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AbilityEstimate {
    pub ability: f64,
    pub standard_error: f64,
}

const GRID_MIN: f64 = -7.0;
const GRID_MAX: f64 = 7.0;
const GRID_POINTS: usize = 281;

/// Expected a posteriori ability under a normal prior: finite even when every answer is right
/// (where maximum likelihood runs off to infinity), and the posterior spread is the standard error.
pub fn estimate_ability(responses: &[TestResponse], prior_mean: f64, prior_sd: f64) -> AbilityEstimate {
    let step = (GRID_MAX - GRID_MIN) / (GRID_POINTS - 1) as f64;
    let log_posterior: Vec<(f64, f64)> = (0..GRID_POINTS)
        .map(|i| {
            let theta = GRID_MIN + step * i as f64;
            let z = (theta - prior_mean) / prior_sd;
            let log_likelihood: f64 = responses
                .iter()
                .map(|r| {
                    let p = success_probability(theta, r.difficulty, r.guess).clamp(1e-12, 1.0 - 1e-12);
                    if r.correct { p.ln() } else { (1.0 - p).ln() }
                })
                .sum();
            (theta, log_likelihood - 0.5 * z * z)
        })
        .collect();
    let peak = log_posterior.iter().map(|(_, l)| *l).fold(f64::NEG_INFINITY, f64::max);
    let (mut mass, mut first, mut second) = (0.0, 0.0, 0.0);
    for (theta, l) in log_posterior {
        let w = (l - peak).exp();
        mass += w;
        first += w * theta;
        second += w * theta * theta;
    }
    let mean = first / mass;
    let variance = (second / mass - mean * mean).max(0.0);
    AbilityEstimate { ability: mean, standard_error: variance.sqrt() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_skill_starts_at_the_learners_other_skills() {
        let none = HashMap::new();
        assert_eq!(starting_ability(&none), 0.0);
        assert_eq!(item_ability(&none, &["a".to_owned()]), 0.0);
        let abilities: HashMap<String, Estimate> = [
            ("a".to_owned(), Estimate { value: 1.0, attempts: 30 }),
            ("b".to_owned(), Estimate { value: 2.0, attempts: 10 }),
        ]
        .into_iter()
        .collect();
        assert!((starting_ability(&abilities) - 1.25).abs() < 1e-12, "weighted by attempts");
        assert_eq!(skill_ability(&abilities, "b"), Estimate { value: 2.0, attempts: 10 });
        assert_eq!(skill_ability(&abilities, "c"), Estimate { value: 1.25, attempts: 0 });
        let both = item_ability(&abilities, &["b".to_owned(), "c".to_owned()]);
        assert!((both - 1.625).abs() < 1e-12);
    }

    #[test]
    fn success_probability_respects_the_guessing_floor() {
        assert!((success_probability(0.0, 0.0, 0.0) - 0.5).abs() < 1e-12);
        assert!((success_probability(-50.0, 0.0, 0.25) - 0.25).abs() < 1e-9);
        assert!((success_probability(50.0, 0.0, 0.25) - 1.0).abs() < 1e-9);
        assert!(success_probability(1.0, 0.0, 0.0) > success_probability(0.0, 0.0, 0.0));
        assert_eq!(guess(0), 0.0);
        assert_eq!(guess(1), 0.0);
        assert_eq!(guess(4), 0.25);
    }

    #[test]
    fn elo_steps_shrink_with_evidence() {
        assert_eq!(elo_step(0), 0.8);
        assert!((elo_step(20) - 0.4).abs() < 1e-12);
        assert!(elo_step(100) < elo_step(20));
        assert_eq!(elo_step(-5), 0.8);
    }

    #[test]
    fn current_knowledge_rises_fast_on_success_and_falls_slowly_on_failure() {
        // At p = 0.5: +3.4·0.5 after a correct answer, −0.3·0.5 after a wrong one.
        assert!((knowledge_after(0.0, 0.0, true) - 1.7).abs() < 1e-12);
        assert!((knowledge_after(0.0, 0.0, false) + 0.15).abs() < 1e-12);
        // A guess explains part of a correct answer: less is learned from it.
        assert!(knowledge_after(0.0, 0.25, true) < knowledge_after(0.0, 0.0, true));
        // A well-known item barely moves on success.
        assert!(knowledge_after(5.0, 0.0, true) - 5.0 < 0.03);
    }

    #[test]
    fn information_peaks_at_the_learners_ability() {
        let at = information(success_probability(1.0, 1.0, 0.0), 0.0);
        assert!((at - 0.25).abs() < 1e-12);
        assert!(information(success_probability(1.0, -2.0, 0.0), 0.0) < at);
        assert!(information(success_probability(1.0, 4.0, 0.0), 0.0) < at);
        // Guessing makes an item less informative, and an item below the floor says nothing.
        assert!(information(success_probability(1.0, 1.0, 0.25), 0.25) < at);
        assert_eq!(information(0.2, 0.25), 0.0);
    }

    #[test]
    fn the_estimate_follows_the_answers_and_tightens() {
        let prior = estimate_ability(&[], 0.0, 1.0);
        assert!(prior.ability.abs() < 1e-9);
        assert!((prior.standard_error - 1.0).abs() < 0.01);
        let right = |d| TestResponse { difficulty: d, guess: 0.0, correct: true };
        let wrong = |d| TestResponse { difficulty: d, guess: 0.0, correct: false };
        let all_right = estimate_ability(&[right(0.0), right(1.0), right(2.0)], 0.0, 1.0);
        assert!(all_right.ability > 0.5 && all_right.ability.is_finite());
        assert!(all_right.standard_error < prior.standard_error);
        let all_wrong = estimate_ability(&[wrong(0.0), wrong(-1.0), wrong(-2.0)], 0.0, 1.0);
        assert!(all_wrong.ability < -0.5);
        // Lucky guesses on four-choice items count for less than correct open answers.
        let guessed = estimate_ability(&[TestResponse { guess: 0.25, ..right(0.0) }], 0.0, 1.0);
        assert!(guessed.ability < estimate_ability(&[right(0.0)], 0.0, 1.0).ability);
    }
}
