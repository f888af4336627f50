//! Mock tests as computerized adaptive tests: each next item is the most informative one at the
//! current ability estimate, no item is asked twice, and the test stops once the estimate is
//! precise enough (or the item budget or the bank runs out).

use std::collections::HashSet;

use alp_proto::common::v1::Reason;

use super::ability::{AbilityEstimate, TestResponse, estimate_ability, information, success_probability};
use super::ranking::{CandidateState, Ranked};

#[derive(Debug, Clone, PartialEq)]
pub struct MockTestPolicy {
    /// Stop once the standard error is at or below this...
    pub target_standard_error: f64,
    /// ...but never before this many answers...
    pub min_items: u32,
    /// ...and always after this many.
    pub max_items: u32,
    /// Spread of the prior around the learner's practice ability.
    pub prior_sd: f64,
}

impl Default for MockTestPolicy {
    fn default() -> Self {
        Self { target_standard_error: 0.40, min_items: 5, max_items: 30, prior_sd: 1.0 }
    }
}

impl MockTestPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.05..=1.0).contains(&self.target_standard_error) {
            return Err(format!(
                "mock test standard error must be between 0.05 and 1, got {}",
                self.target_standard_error
            ));
        }
        if self.max_items == 0 || self.min_items > self.max_items {
            return Err(format!(
                "mock test items must satisfy 1 <= max and min <= max, got min {} and max {}",
                self.min_items, self.max_items
            ));
        }
        if !(0.1..=5.0).contains(&self.prior_sd) {
            return Err(format!("mock test prior spread must be between 0.1 and 5, got {}", self.prior_sd));
        }
        Ok(())
    }
}

/// Where a mock test stands.
#[derive(Debug, Clone, PartialEq)]
pub struct TestState {
    pub estimate: AbilityEstimate,
    pub answered: u32,
    pub finished: bool,
    pub status: String,
}

/// One answer as the test sees it: which item, and how it went.
#[derive(Debug, Clone)]
pub struct Answer {
    pub item_id: String,
    pub response: TestResponse,
}

/// Picks the next items of a mock test, or none once it is finished. `prior_mean` is the
/// learner's practice ability (the start of the estimate).
pub fn next_items(
    policy: &MockTestPolicy,
    answers: &[Answer],
    candidates: &[CandidateState],
    count: usize,
    prior_mean: f64,
) -> (TestState, Vec<Ranked>) {
    // An item answered twice (a client retrying with a new attempt id) counts once.
    let mut asked = HashSet::new();
    let responses: Vec<TestResponse> =
        answers.iter().filter(|a| asked.insert(a.item_id.as_str())).map(|a| a.response).collect();
    let estimate = estimate_ability(&responses, prior_mean, policy.prior_sd);
    let answered = u32::try_from(responses.len()).unwrap_or(u32::MAX);
    let fresh: Vec<&CandidateState> = candidates.iter().filter(|c| !asked.contains(c.item_id.as_str())).collect();

    let precise = answered >= policy.min_items && estimate.standard_error <= policy.target_standard_error;
    let end = if precise {
        Some(format!(
            "finished: standard error {:.2} at or below {:.2}",
            estimate.standard_error, policy.target_standard_error
        ))
    } else if answered >= policy.max_items {
        Some(format!("finished: {answered} items, the most a test asks"))
    } else if fresh.is_empty() {
        Some(format!("finished: no unasked items left after {answered}"))
    } else {
        None
    };
    let finished = end.is_some();
    let status = end.unwrap_or_else(|| {
        format!(
            "in progress: standard error {:.2}, stopping at {:.2} (at least {} and at most {} items)",
            estimate.standard_error, policy.target_standard_error, policy.min_items, policy.max_items
        )
    });
    let state = TestState { estimate, answered, finished, status };
    if finished {
        return (state, Vec::new());
    }

    let remaining = (policy.max_items - answered) as usize;
    let mut ranked: Vec<Ranked> = fresh
        .into_iter()
        .map(|c| {
            let p = success_probability(estimate.ability, c.difficulty, c.guess);
            let info = information(p, c.guess);
            Ranked {
                item_id: c.item_id.clone(),
                reason: Reason::MockTest,
                score: info,
                predicted_recall: 0.0,
                predicted_success: p,
                explanation: format!(
                    "mock test: information {info:.3} at ability {:.2} ± {:.2}",
                    estimate.ability, estimate.standard_error
                ),
            }
        })
        .collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.item_id.cmp(&b.item_id)));
    ranked.truncate(count.min(remaining));
    (state, ranked)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn bank(size: usize, rng: &mut StdRng) -> Vec<CandidateState> {
        (0..size)
            .map(|i| CandidateState {
                item_id: format!("item-{i}"),
                skill_ids: vec!["s".to_owned()],
                seen: None,
                ability: 0.0,
                difficulty: rng.random_range(-3.0..3.0),
                guess: 0.0,
                blocked_by: Vec::new(),
            })
            .collect()
    }

    /// Runs a whole test for a learner of `true_ability` answering by the Rasch model.
    fn sit(true_ability: f64, items: &[CandidateState], rng: &mut StdRng) -> (TestState, Vec<Answer>) {
        let policy = MockTestPolicy::default();
        let mut answers = Vec::new();
        loop {
            let (state, next) = next_items(&policy, &answers, items, 1, 0.0);
            let Some(item) = next.first() else { return (state, answers) };
            assert!(answers.iter().all(|a: &Answer| a.item_id != item.item_id), "{} asked twice", item.item_id);
            let difficulty = items.iter().find(|c| c.item_id == item.item_id).map_or(0.0, |c| c.difficulty);
            let correct = rng.random_bool(success_probability(true_ability, difficulty, 0.0));
            answers.push(Answer {
                item_id: item.item_id.clone(),
                response: TestResponse { difficulty, guess: 0.0, correct },
            });
        }
    }

    #[test]
    fn the_estimate_converges_on_a_learner_of_known_ability() {
        let mut rng = StdRng::seed_from_u64(7);
        let items = bank(300, &mut rng);
        let mut errors = Vec::new();
        for &truth in &[-2.0, -1.0, 0.0, 1.0, 1.5, 2.0] {
            for _ in 0..10 {
                let (state, answers) = sit(truth, &items, &mut rng);
                assert!(state.finished);
                assert!(state.estimate.standard_error <= 0.40 + 1e-9, "{state:?}");
                assert!(answers.len() <= 30);
                errors.push((state.estimate.ability - truth, state.estimate.standard_error));
            }
        }
        // The errors look like the reported standard errors say they should.
        let n = errors.len() as f64;
        let rmse = (errors.iter().map(|(e, _)| e * e).sum::<f64>() / n).sqrt();
        let mean_se = errors.iter().map(|(_, se)| se).sum::<f64>() / n;
        assert!(rmse < 0.5, "rmse {rmse}");
        assert!((rmse - mean_se).abs() < 0.15, "rmse {rmse} vs reported {mean_se}");
        let inside = errors.iter().filter(|(e, se)| e.abs() <= 2.0 * se).count() as f64 / n;
        assert!(inside >= 0.85, "{inside} within two standard errors");
    }

    #[test]
    fn each_next_item_is_the_most_informative_and_the_test_stops_when_the_bank_runs_out() {
        let mut rng = StdRng::seed_from_u64(3);
        let items = bank(8, &mut rng);
        let policy = MockTestPolicy { target_standard_error: 0.05, ..MockTestPolicy::default() };
        let (state, first) = next_items(&policy, &[], &items, 3, 0.0);
        assert!(!state.finished);
        assert_eq!(state.answered, 0);
        assert_eq!(first.len(), 3);
        let closest =
            items.iter().min_by(|a, b| a.difficulty.abs().total_cmp(&b.difficulty.abs())).map(|c| c.item_id.clone());
        assert_eq!(Some(first[0].item_id.clone()), closest);
        assert!(first.windows(2).all(|w| w[0].score >= w[1].score));
        assert!(first[0].explanation.starts_with("mock test: information 0.2"), "{}", first[0].explanation);
        let all: Vec<Answer> = items
            .iter()
            .map(|c| Answer {
                item_id: c.item_id.clone(),
                response: TestResponse { difficulty: c.difficulty, guess: 0.0, correct: true },
            })
            .collect();
        let (state, next) = next_items(&policy, &all, &items, 3, 0.0);
        assert!(state.finished && next.is_empty());
        assert_eq!(state.answered, 8);
        assert!(state.status.contains("no unasked items"), "{}", state.status);
    }

    #[test]
    fn an_item_answered_twice_counts_once() {
        let answer =
            Answer { item_id: "x".to_owned(), response: TestResponse { difficulty: 0.0, guess: 0.0, correct: true } };
        let (state, _) = next_items(&MockTestPolicy::default(), &[answer.clone(), answer], &[], 1, 0.0);
        assert_eq!(state.answered, 1);
    }
}
