//! FSRS-6 memory of one learner for one item, with the card life cycle around it: learning steps
//! for a new item, relearning steps after a lapse, whole-day intervals in review, and interval fuzz
//! that spreads reviews out without ever shortening an interval after a correct answer.
//!
//! The stability and difficulty updates are the `fsrs` crate's; this module decides which update
//! applies (same-day reviews use FSRS's short-term formula) and what the next interval is.

use alp_proto::common::v1::Rating;
use fsrs::{FSRS, MemoryState};

pub const MINUTE_MS: i64 = 60_000;
pub const DAY_MS: i64 = 86_400_000;

/// Where a card is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// New, going through the learning steps.
    Learning,
    /// Scheduled in whole days by stability and desired retention.
    Review,
    /// Failed in review, going through the relearning steps.
    Relearning,
}

/// A learner's memory of one item after at least one review.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Card {
    pub memory: MemoryState,
    pub phase: Phase,
    /// Index of the current (re)learning step; 0 in review.
    pub step: usize,
    pub last_review_ms: i64,
    /// The interval the last review scheduled.
    pub interval_ms: i64,
}

/// The result of one review.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reviewed {
    pub card: Card,
    pub due_ms: i64,
    /// Probability of recall just before the review; 0 for a new card.
    pub recall_before: f64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MemoryError {
    #[error("FSRS parameters rejected: {0}")]
    Parameters(String),
    #[error("FSRS could not update the memory state: {0}")]
    Update(String),
    #[error("a rating is required")]
    Unrated,
}

/// The memory model with its parameters and step settings.
#[derive(Debug, Clone)]
pub struct MemoryModel {
    fsrs: FSRS,
    parameters: Vec<f32>,
    learning_steps_ms: Vec<i64>,
    relearning_steps_ms: Vec<i64>,
    max_interval_days: i64,
}

impl Default for MemoryModel {
    fn default() -> Self {
        Self {
            fsrs: FSRS::default(),
            parameters: fsrs::DEFAULT_PARAMETERS.to_vec(),
            learning_steps_ms: vec![MINUTE_MS, 10 * MINUTE_MS],
            relearning_steps_ms: vec![10 * MINUTE_MS],
            max_interval_days: 36_500,
        }
    }
}

impl MemoryModel {
    /// A model with other FSRS-6 parameters (21 values), e.g. fitted to one learner.
    pub fn with_parameters(parameters: &[f32]) -> Result<Self, MemoryError> {
        if parameters.len() != fsrs::DEFAULT_PARAMETERS.len() || parameters.iter().any(|w| !w.is_finite()) {
            return Err(MemoryError::Parameters(format!("need 21 finite values, got {}", parameters.len())));
        }
        let fsrs = FSRS::new(parameters).map_err(|e| MemoryError::Parameters(e.to_string()))?;
        Ok(Self { fsrs, parameters: parameters.to_vec(), ..Self::default() })
    }

    pub fn parameters(&self) -> &[f32] {
        &self.parameters
    }

    fn decay(&self) -> f64 {
        f64::from(self.parameters[20])
    }

    /// Chosen so that recall is exactly 90 % after `stability` days.
    fn factor(&self) -> f64 {
        0.9f64.powf(-1.0 / self.decay()) - 1.0
    }

    /// Probability of recall `elapsed_ms` after the last review (fractional days).
    pub fn retrievability(&self, memory: MemoryState, elapsed_ms: i64) -> f64 {
        let days = elapsed_ms.max(0) as f64 / DAY_MS as f64;
        (1.0 + self.factor() * days / f64::from(memory.stability).max(1e-3)).powf(-self.decay())
    }

    /// Whole days until recall falls to `retention`, at least 1 and at most the maximum.
    pub fn interval_days(&self, stability: f32, retention: f64) -> i64 {
        let days = f64::from(stability) / self.factor() * (retention.powf(-1.0 / self.decay()) - 1.0);
        (days.round() as i64).clamp(1, self.max_interval_days)
    }

    /// Applies one review. `prior` is None for the first review of an item. `fuzz` is a uniform
    /// draw in [0, 1) that places a review interval inside its fuzz range; None schedules exactly.
    pub fn review(
        &self,
        prior: Option<&Card>,
        rating: Rating,
        at_ms: i64,
        retention: f64,
        fuzz: Option<f64>,
    ) -> Result<Reviewed, MemoryError> {
        let grade = match rating {
            Rating::Again => 1,
            Rating::Hard => 2,
            Rating::Good => 3,
            Rating::Easy => 4,
            Rating::Unspecified => return Err(MemoryError::Unrated),
        };
        let elapsed_ms = prior.map_or(0, |p| (at_ms - p.last_review_ms).max(0));
        // FSRS counts whole days; 0 selects its short-term (same-day) stability update.
        let days = u32::try_from(elapsed_ms / DAY_MS).unwrap_or(u32::MAX);
        let next = self
            .fsrs
            .next_states(prior.map(|p| p.memory), retention as f32, days)
            .map_err(|e| MemoryError::Update(e.to_string()))?;
        let memory = [next.again, next.hard, next.good, next.easy][grade - 1].memory;
        let recall_before = prior.map_or(0.0, |p| self.retrievability(p.memory, elapsed_ms));

        let (phase, step) = prior.map_or((Phase::Learning, 0), |p| (p.phase, p.step));
        let (phase, step, interval) = match phase {
            Phase::Learning => next_step(Phase::Learning, &self.learning_steps_ms, step, rating),
            Phase::Relearning => next_step(Phase::Relearning, &self.relearning_steps_ms, step, rating),
            Phase::Review if rating == Rating::Again && !self.relearning_steps_ms.is_empty() => {
                (Phase::Relearning, 0, Interval::Steps(self.relearning_steps_ms[0]))
            }
            Phase::Review => (Phase::Review, 0, Interval::Days),
        };
        let interval_ms = match interval {
            Interval::Steps(ms) => ms,
            Interval::Days => {
                let days = self.interval_days(memory.stability, retention);
                // After a correct review, never sooner than the interval just completed.
                let floor = match prior {
                    Some(p) if p.phase == Phase::Review && rating != Rating::Again => {
                        (p.interval_ms / DAY_MS).min(self.max_interval_days)
                    }
                    _ => 0,
                };
                let days = match fuzz {
                    Some(unit) => fuzzed_days(days, unit, floor, self.max_interval_days),
                    None => days.max(floor),
                };
                days * DAY_MS
            }
        };
        let card = Card { memory, phase, step, last_review_ms: at_ms, interval_ms };
        Ok(Reviewed { card, due_ms: at_ms.saturating_add(interval_ms), recall_before })
    }
}

enum Interval {
    Steps(i64),
    Days,
}

/// The next (re)learning step of `phase`, or graduation to review.
fn next_step(phase: Phase, steps: &[i64], step: usize, rating: Rating) -> (Phase, usize, Interval) {
    let graduate = (Phase::Review, 0, Interval::Days);
    if steps.is_empty() || (step >= steps.len() && rating != Rating::Again) {
        return graduate;
    }
    match rating {
        Rating::Again => (phase, 0, Interval::Steps(steps[0])),
        Rating::Hard => {
            let ms = match (step, steps.len()) {
                (0, 1) => steps[0] * 3 / 2,
                (0, _) => (steps[0] + steps[1]) / 2,
                (s, _) => steps[s.min(steps.len() - 1)],
            };
            (phase, step, Interval::Steps(ms))
        }
        Rating::Good if step + 1 >= steps.len() => graduate,
        Rating::Good => (phase, step + 1, Interval::Steps(steps[step + 1])),
        Rating::Easy | Rating::Unspecified => graduate,
    }
}

/// Anki-style fuzz: intervals under 2.5 days stay as they are; longer ones move within a range
/// that widens by 15 % of the part between 2.5 and 7 days, 10 % of 7-20 and 5 % beyond. The range
/// starts no lower than `floor_days`.
pub fn fuzzed_days(days: i64, unit: f64, floor_days: i64, max_days: i64) -> i64 {
    let interval = days as f64;
    if interval < 2.5 {
        return days.max(floor_days).min(max_days);
    }
    let spread: f64 = [(2.5, 7.0, 0.15), (7.0, 20.0, 0.10), (20.0, f64::INFINITY, 0.05)]
        .iter()
        .map(|&(start, end, factor)| factor * (interval.min(end) - start).max(0.0))
        .sum::<f64>()
        + 1.0;
    let high = ((interval + spread).round() as i64).min(max_days);
    let low = ((interval - spread).round() as i64).max(2).max(floor_days).min(high);
    let offset = (unit.clamp(0.0, 1.0 - f64::EPSILON) * (high - low + 1) as f64).floor() as i64;
    low + offset
}

/// A stable draw in [0, 1) from an attempt id, so a retried attempt gets the same fuzz.
pub fn fuzz_unit(key: &str) -> f64 {
    // FNV-1a, then the top 53 bits as a fraction.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    (hash >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_is_ninety_percent_after_stability_days() {
        let model = MemoryModel::default();
        let memory = MemoryState { stability: 10.0, difficulty: 5.0 };
        assert!((model.retrievability(memory, 10 * DAY_MS) - 0.9).abs() < 1e-9);
        assert!((model.retrievability(memory, 0) - 1.0).abs() < 1e-12);
        assert!(model.retrievability(memory, 20 * DAY_MS) < 0.9);
    }

    #[test]
    fn higher_retention_means_shorter_intervals() {
        let model = MemoryModel::default();
        assert!(model.interval_days(20.0, 0.97) < model.interval_days(20.0, 0.90));
        assert!(model.interval_days(20.0, 0.90) < model.interval_days(20.0, 0.70));
        assert_eq!(model.interval_days(20.0, 0.90), 20);
        assert_eq!(model.interval_days(0.01, 0.90), 1, "at least a day");
    }

    #[test]
    fn fuzz_stays_in_range_and_never_below_the_floor() {
        for days in [1, 2, 3, 5, 10, 30, 100, 1000] {
            let mut seen = std::collections::BTreeSet::new();
            for i in 0..200 {
                let unit = f64::from(i) / 200.0;
                let fuzzed = fuzzed_days(days, unit, 0, 36_500);
                assert!((fuzzed - days).abs() <= 1 + days / 10, "{days} -> {fuzzed}");
                seen.insert(fuzzed);
                assert!(fuzzed_days(days, unit, days + 1, 36_500) > days);
            }
            if days >= 3 {
                assert!(seen.len() > 1, "{days} days is fuzzed");
            } else {
                assert_eq!(seen.len(), 1, "{days} days is not fuzzed");
            }
        }
        assert!(fuzzed_days(36_500, 0.999, 0, 36_500) <= 36_500, "never past the maximum");
    }

    #[test]
    fn a_correct_review_never_shortens_the_interval_even_with_fuzz() {
        let model = MemoryModel::default();
        let mut card = model.review(None, Rating::Easy, 0, 0.9, None).unwrap().card;
        for n in 0..40 {
            let at = card.last_review_ms + card.interval_ms;
            for rating in [Rating::Hard, Rating::Good, Rating::Easy] {
                for unit in [0.0, 0.5, 0.999] {
                    let next = model.review(Some(&card), rating, at, 0.9, Some(unit)).unwrap();
                    assert!(next.card.interval_ms >= card.interval_ms, "review {n} {rating:?} {unit}");
                }
            }
            card = model.review(Some(&card), Rating::Hard, at, 0.9, Some(fuzz_unit(&n.to_string()))).unwrap().card;
        }
    }

    #[test]
    fn new_cards_walk_the_learning_steps_and_lapses_relearn() {
        let model = MemoryModel::default();
        let first = model.review(None, Rating::Good, 0, 0.9, None).unwrap();
        assert_eq!((first.card.phase, first.card.step, first.card.interval_ms), (Phase::Learning, 1, 10 * MINUTE_MS));
        let graduated = model.review(Some(&first.card), Rating::Good, first.due_ms, 0.9, None).unwrap();
        assert_eq!(graduated.card.phase, Phase::Review);
        assert!(graduated.card.interval_ms >= DAY_MS);
        let lapse = model.review(Some(&graduated.card), Rating::Again, graduated.due_ms, 0.9, None).unwrap();
        assert_eq!((lapse.card.phase, lapse.card.interval_ms), (Phase::Relearning, 10 * MINUTE_MS));
        assert!(lapse.card.memory.stability < graduated.card.memory.stability);
        assert!(lapse.recall_before > 0.8 && lapse.recall_before < 0.95, "{}", lapse.recall_before);
        assert_eq!(model.review(None, Rating::Unspecified, 0, 0.9, None), Err(MemoryError::Unrated));
    }

    #[test]
    fn fuzz_units_are_stable_and_spread() {
        assert_eq!(fuzz_unit("attempt-1"), fuzz_unit("attempt-1"));
        let draws: Vec<f64> = (0..1000).map(|i| fuzz_unit(&format!("attempt-{i}"))).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((mean - 0.5).abs() < 0.05, "{mean}");
    }
}
