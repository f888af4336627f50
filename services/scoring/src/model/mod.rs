//! The learner and item models as pure functions: FSRS-6 memory (through the `fsrs` crate),
//! Elo/Rasch ability and difficulty, and the ranking of candidates. No I/O here.

pub mod memory;

use alp_proto::common::v1::{Mode, Rating, Reason};
use fsrs::MemoryState;

use self::memory::{MemoryModel, Phase};

pub const DEFAULT_RETENTION: f64 = 0.90;
/// Target probability of success for new items.
pub const TARGET_SUCCESS: f64 = 0.80;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Guessing floor: 1 / number of choices, 0 for open answers.
pub fn guess(choice_count: u32) -> f64 {
    if choice_count >= 2 { 1.0 / f64::from(choice_count) } else { 0.0 }
}

/// Rasch with a guessing floor: P = g + (1 − g)·σ(θ − b).
pub fn success_probability(ability: f64, difficulty: f64, guess: f64) -> f64 {
    guess + (1.0 - guess) * sigmoid(ability - difficulty)
}

/// Uncertainty-damped Elo step after n earlier attempts: K(n) = 0.8 / (1 + 0.05·n).
pub fn elo_step(attempts: i64) -> f64 {
    0.8 / (1.0 + 0.05 * attempts.max(0) as f64)
}

/// What the ranking needs to know of one candidate.
#[derive(Debug, Clone)]
pub struct CandidateState {
    pub item_id: String,
    pub memory: Option<MemoryState>,
    pub phase: Phase,
    pub last_review_ms: i64,
    pub due_ms: Option<i64>,
    pub last_rating: Rating,
    /// Learner ability on the item's skills (logit).
    pub ability: f64,
    /// Item difficulty (logit).
    pub difficulty: f64,
    pub guess: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub item_id: String,
    pub reason: Reason,
    pub score: f64,
    pub predicted_recall: f64,
    pub predicted_success: f64,
}

/// Ranks candidates. Practice: due reviews first (lowest recall first), then new items closest
/// to the target success rate, then not-yet-due reviews. Review: due reviews only. Mock test:
/// the most informative items at the learner's ability.
pub fn rank(
    model: &MemoryModel,
    candidates: &[CandidateState],
    mode: Mode,
    count: usize,
    desired_retention: f64,
    now_ms: i64,
) -> Vec<Ranked> {
    let mut ranked: Vec<Ranked> = candidates
        .iter()
        .filter_map(|c| {
            let elo = success_probability(c.ability, c.difficulty, c.guess);
            let (recall, success) = match c.memory {
                Some(memory) => {
                    let r = model.retrievability(memory, now_ms - c.last_review_ms);
                    (r, r)
                }
                None => (0.0, elo),
            };
            let due = c.memory.is_some() && (c.due_ms.is_some_and(|d| d <= now_ms) || recall <= desired_retention);
            let (reason, score) = match mode {
                Mode::MockTest => (Reason::MockTest, information(success, c.guess)),
                Mode::Review if !due => return None,
                _ if due => {
                    let stepping = c.phase != Phase::Review || c.last_rating == Rating::Again;
                    let reason = if stepping { Reason::Relearn } else { Reason::DueReview };
                    (reason, 2.0 + (1.0 - recall))
                }
                Mode::Review => return None,
                _ if c.memory.is_none() => (Reason::New, 1.0 + (1.0 - (success - TARGET_SUCCESS).abs())),
                _ => (Reason::EarlyReview, 1.0 - recall),
            };
            Some(Ranked {
                item_id: c.item_id.clone(),
                reason,
                score,
                predicted_recall: recall,
                predicted_success: success,
            })
        })
        .collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.item_id.cmp(&b.item_id)));
    ranked.truncate(count);
    ranked
}

/// Fisher information of a response with guessing floor g at success probability p.
fn information(p: f64, g: f64) -> f64 {
    if p <= g || p >= 1.0 {
        return 0.0;
    }
    ((p - g) / (1.0 - g)).powi(2) * (1.0 - p) / p
}

#[cfg(test)]
mod tests {
    use super::memory::DAY_MS;
    use super::*;

    fn candidate(id: &str) -> CandidateState {
        CandidateState {
            item_id: id.to_owned(),
            memory: None,
            phase: Phase::Review,
            last_review_ms: 0,
            due_ms: None,
            last_rating: Rating::Unspecified,
            ability: 0.0,
            difficulty: 0.0,
            guess: 0.0,
        }
    }

    #[test]
    fn success_probability_respects_the_guessing_floor() {
        assert!((success_probability(0.0, 0.0, 0.0) - 0.5).abs() < 1e-12);
        assert!((success_probability(-50.0, 0.0, 0.25) - 0.25).abs() < 1e-9);
        assert!(success_probability(1.0, 0.0, 0.0) > success_probability(0.0, 0.0, 0.0));
        assert!(elo_step(0) > elo_step(20));
    }

    #[test]
    fn practice_puts_due_reviews_first_lowest_recall_first_then_new() {
        let now = 100 * DAY_MS;
        let memory = MemoryState { stability: 5.0, difficulty: 5.0 };
        let mut overdue = candidate("overdue");
        overdue.memory = Some(memory);
        overdue.last_review_ms = now - 30 * DAY_MS;
        let mut due = candidate("due");
        due.memory = Some(memory);
        due.last_review_ms = now - 6 * DAY_MS;
        let mut fresh = candidate("not-due");
        fresh.memory = Some(memory);
        fresh.last_review_ms = now - DAY_MS;
        let new = candidate("new");
        let ranked = rank(
            &MemoryModel::default(),
            &[fresh.clone(), new.clone(), due.clone(), overdue.clone()],
            Mode::Practice,
            10,
            0.9,
            now,
        );
        let order: Vec<_> = ranked.iter().map(|r| (r.item_id.as_str(), r.reason)).collect();
        assert_eq!(
            order,
            vec![
                ("overdue", Reason::DueReview),
                ("due", Reason::DueReview),
                ("new", Reason::New),
                ("not-due", Reason::EarlyReview)
            ]
        );
        let reviews = rank(&MemoryModel::default(), &[fresh, new, due, overdue], Mode::Review, 10, 0.9, now);
        assert_eq!(reviews.iter().map(|r| r.item_id.as_str()).collect::<Vec<_>>(), vec!["overdue", "due"]);
    }

    #[test]
    fn new_items_closest_to_the_target_rank_first() {
        let mut easy = candidate("easy");
        easy.difficulty = -4.0;
        let mut right = candidate("right");
        right.difficulty = -(TARGET_SUCCESS / (1.0 - TARGET_SUCCESS)).ln();
        let mut hard = candidate("hard");
        hard.difficulty = 3.0;
        let ranked = rank(&MemoryModel::default(), &[easy, hard, right], Mode::Practice, 2, 0.9, 0);
        assert_eq!(ranked[0].item_id, "right");
        assert!((ranked[0].predicted_success - TARGET_SUCCESS).abs() < 1e-9);
        assert_eq!(ranked.len(), 2);
    }

    #[test]
    fn mock_tests_prefer_items_at_the_learners_ability() {
        let mut at = candidate("at-ability");
        at.ability = 1.0;
        at.difficulty = 1.0;
        let mut far = candidate("far");
        far.ability = 1.0;
        far.difficulty = -3.0;
        let ranked = rank(&MemoryModel::default(), &[far, at], Mode::MockTest, 1, 0.9, 0);
        assert_eq!(ranked[0].item_id, "at-ability");
        assert_eq!(ranked[0].reason, Reason::MockTest);
    }
}
