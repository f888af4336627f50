//! The unified ranking of practice and review: due reviews by urgency, new items by closeness of
//! predicted success to the learner's target, early reviews last; recency, same-skill and
//! prerequisite penalties on top. Every ranked item carries the reason and the numbers behind it.
//!
//! Score bands with the default weights (higher first):
//! - due reviews: `review_weight` + urgency in [0, 1] (items in learning steps count as most
//!   urgent; otherwise the lower the recall, the more urgent);
//! - new items: `new_weight` · (1 − |predicted success − target|);
//! - new items with an unmastered prerequisite: the same, minus a gate penalty of 10, so they
//!   come after the other new items;
//! - early reviews: `early_review_weight` · (1 − recall) − 20, after every new item: the gate
//!   orders the course but never stops it, or a learner who cannot master a prerequisite would
//!   be kept on early reviews for good;
//! - minus `recency_penalty` for items answered within `recency_window_ms` and
//!   `same_skill_penalty` for sharing a skill with the item just before.

use std::collections::HashMap;
use std::fmt::Write as _;

use alp_proto::common::v1::{Mode, Rating, Reason};
use fsrs::MemoryState;

use super::ability::{Estimate, success_probability};
use super::memory::{MemoryModel, Phase};

/// Gated new items go below the other new items and due reviews...
const GATE_PENALTY: f64 = 10.0;
/// ...and early reviews below every new item.
const EARLY_REVIEW_OFFSET: f64 = 2.0 * GATE_PENALTY;
/// Answers further apart than this are not "back to back".
const SESSION_GAP_MS: i64 = 30 * 60 * 1000;

/// The weights and thresholds of the ranking; see the module docs for how they combine.
#[derive(Debug, Clone, PartialEq)]
pub struct RankingPolicy {
    /// Success rate new items are chosen for, before the per-learner correction.
    pub target_success: f64,
    /// How far the per-learner correction may move the target, either way.
    pub target_correction_limit: f64,
    /// Correction per first attempt: gain · (target − outcome).
    pub target_gain: f64,
    pub review_weight: f64,
    pub new_weight: f64,
    pub early_review_weight: f64,
    pub recency_window_ms: i64,
    pub recency_penalty: f64,
    pub same_skill_penalty: f64,
    /// A prerequisite skill is mastered after this many first attempts...
    pub mastery_attempts: i64,
    /// ...with at least this predicted success on an item of average difficulty.
    pub mastery_success: f64,
}

impl Default for RankingPolicy {
    fn default() -> Self {
        Self {
            target_success: 0.80,
            target_correction_limit: 0.15,
            target_gain: 0.01,
            review_weight: 2.0,
            new_weight: 1.0,
            early_review_weight: 0.5,
            recency_window_ms: 120_000,
            recency_penalty: 2.5,
            same_skill_penalty: 0.3,
            mastery_attempts: 3,
            mastery_success: 0.60,
        }
    }
}

impl RankingPolicy {
    /// Checks a configured policy; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        let within = |name: &str, value: f64, low: f64, high: f64| {
            if value.is_finite() && (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(format!("{name} must be between {low} and {high}, got {value}"))
            }
        };
        within("target success", self.target_success, 0.5, 0.97)?;
        within("target correction limit", self.target_correction_limit, 0.0, 0.3)?;
        within("target gain", self.target_gain, 0.0, 0.2)?;
        within("review weight", self.review_weight, 0.0, 100.0)?;
        within("new weight", self.new_weight, 0.0, 100.0)?;
        within("early review weight", self.early_review_weight, 0.0, 100.0)?;
        within("recency penalty", self.recency_penalty, 0.0, 100.0)?;
        within("same skill penalty", self.same_skill_penalty, 0.0, 100.0)?;
        within("mastery success", self.mastery_success, 0.0, 1.0)?;
        if self.recency_window_ms < 0 {
            return Err("recency window must not be negative".to_owned());
        }
        if self.mastery_attempts < 0 {
            return Err("mastery attempts must not be negative".to_owned());
        }
        Ok(())
    }

    /// The target after the learner's correction (the integral of target − outcome so far).
    pub fn effective_target(&self, correction: f64) -> f64 {
        let limit = self.target_correction_limit;
        (self.target_success + correction.clamp(-limit, limit)).clamp(0.5, 0.97)
    }

    /// The change of a learner's correction after a first attempt at a new practice item.
    pub fn correction_step(&self, correct: bool) -> f64 {
        self.target_gain * (self.target_success - f64::from(u8::from(correct)))
    }

    fn mastered(&self, estimate: Option<&Estimate>) -> bool {
        estimate.is_some_and(|e| {
            e.attempts >= self.mastery_attempts && success_probability(e.value, 0.0, 0.0) >= self.mastery_success
        })
    }

    /// For each skill with an unmastered prerequisite, those prerequisites; `graph` is each
    /// skill with its prerequisites, borrowed from the request.
    pub fn unmet_prerequisites<'a>(
        &self,
        graph: impl IntoIterator<Item = (&'a str, &'a [String])>,
        abilities: &HashMap<String, Estimate>,
    ) -> HashMap<&'a str, Vec<&'a str>> {
        graph
            .into_iter()
            .filter_map(|(skill, prerequisites)| {
                let unmet: Vec<&str> =
                    prerequisites.iter().map(String::as_str).filter(|p| !self.mastered(abilities.get(*p))).collect();
                (!unmet.is_empty()).then_some((skill, unmet))
            })
            .collect()
    }
}

/// What the ranking knows of a learner's history with one item.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub memory: MemoryState,
    pub phase: Phase,
    pub last_review_ms: i64,
    pub due_ms: Option<i64>,
    pub last_rating: Rating,
    /// Current knowledge (logit); unset for state written before it was tracked.
    pub knowledge: Option<f64>,
}

/// One candidate item for one learner.
#[derive(Debug, Clone)]
pub struct CandidateState {
    pub item_id: String,
    pub skill_ids: Vec<String>,
    /// Unset for items the learner has not attempted.
    pub seen: Option<Seen>,
    /// Learner ability on the item's skills (logit).
    pub ability: f64,
    /// Item difficulty (logit).
    pub difficulty: f64,
    pub guess: f64,
    /// Prerequisites of the item's skills the learner has not mastered.
    pub blocked_by: Vec<String>,
}

impl CandidateState {
    /// (probability of recall, probability of a correct answer) at `now_ms`.
    pub fn predict(&self, model: &MemoryModel, now_ms: i64) -> (f64, f64) {
        let Some(seen) = &self.seen else {
            return (0.0, success_probability(self.ability, self.difficulty, self.guess));
        };
        let recall = model.retrievability(seen.memory, now_ms - seen.last_review_ms);
        let success = if seen.phase == Phase::Review {
            // Forgotten multiple-choice items can still be guessed.
            recall + (1.0 - recall) * self.guess
        } else {
            // Minutes after an answer the forgetting curve says little; current knowledge says more.
            let knowledge = seen.knowledge.unwrap_or(self.ability - self.difficulty);
            success_probability(knowledge, 0.0, self.guess)
        };
        (recall, success)
    }
}

/// A ranked item.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub item_id: String,
    pub reason: Reason,
    pub score: f64,
    pub predicted_recall: f64,
    pub predicted_success: f64,
    pub explanation: String,
}

/// What the learner needs now.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    pub now_ms: i64,
    pub desired_retention: f64,
    /// The corrected target success for new items.
    pub target_success: f64,
}

struct Placed<'a> {
    candidate: &'a CandidateState,
    reason: Reason,
    base: f64,
    recall: f64,
    success: f64,
    /// Seconds since the last answer, when the recency penalty applied.
    recent_seconds: Option<i64>,
}

/// Ranks candidates for practice or review (mock tests rank elsewhere) and returns the best
/// `count`, picked one after another so that siblings of one skill do not follow each other
/// when something else is close.
pub fn rank(
    policy: &RankingPolicy,
    model: &MemoryModel,
    candidates: &[CandidateState],
    mode: Mode,
    count: usize,
    situation: Situation,
) -> Vec<Ranked> {
    let now = situation.now_ms;
    let mut placed: Vec<Placed<'_>> =
        candidates.iter().filter_map(|c| place(policy, model, c, mode, situation)).collect();

    // The last item answered, if the learner is in a session.
    let mut previous: Option<&[String]> = candidates
        .iter()
        .filter_map(|c| c.seen.map(|s| (s.last_review_ms, c)))
        .filter(|(at, _)| now - at <= SESSION_GAP_MS)
        .max_by_key(|(at, c)| (*at, std::cmp::Reverse(c.item_id.as_str())))
        .map(|(_, c)| c.skill_ids.as_slice());

    let mut ranked = Vec::with_capacity(count.min(placed.len()));
    while ranked.len() < count && !placed.is_empty() {
        let score = |p: &Placed<'_>| {
            let sibling = previous.is_some_and(|skills| shares_skill(skills, &p.candidate.skill_ids));
            p.base - if sibling { policy.same_skill_penalty } else { 0.0 }
        };
        let best = placed
            .iter()
            .enumerate()
            .max_by(|(_, a), (_, b)| {
                score(a).total_cmp(&score(b)).then_with(|| b.candidate.item_id.cmp(&a.candidate.item_id))
            })
            .map(|(i, _)| i);
        let Some(best) = best else { break };
        let pick = placed.swap_remove(best);
        let total = score(&pick);
        let sibling = total < pick.base;
        ranked.push(Ranked {
            item_id: pick.candidate.item_id.clone(),
            reason: pick.reason,
            score: total,
            predicted_recall: pick.recall,
            predicted_success: pick.success,
            explanation: explain(&pick, situation, sibling),
        });
        previous = Some(pick.candidate.skill_ids.as_slice());
    }
    ranked
}

fn place<'a>(
    policy: &RankingPolicy,
    model: &MemoryModel,
    c: &'a CandidateState,
    mode: Mode,
    situation: Situation,
) -> Option<Placed<'a>> {
    let now = situation.now_ms;
    let (recall, success) = c.predict(model, now);
    let (reason, mut base) = match &c.seen {
        None if mode == Mode::Review => return None,
        None => {
            let closeness = 1.0 - (success - situation.target_success).abs();
            let gate = if c.blocked_by.is_empty() { 0.0 } else { GATE_PENALTY };
            (Reason::New, policy.new_weight * closeness - gate)
        }
        Some(seen) => {
            let stepping = seen.phase != Phase::Review;
            let due = seen.due_ms.is_some_and(|d| d <= now) || (!stepping && recall <= situation.desired_retention);
            if due {
                let urgency = if stepping {
                    1.0
                } else {
                    ((situation.desired_retention - recall) / situation.desired_retention).clamp(0.0, 1.0)
                };
                let reason =
                    if stepping || seen.last_rating == Rating::Again { Reason::Relearn } else { Reason::DueReview };
                (reason, policy.review_weight + urgency)
            } else if mode == Mode::Review {
                return None;
            } else {
                (Reason::EarlyReview, policy.early_review_weight * (1.0 - recall) - EARLY_REVIEW_OFFSET)
            }
        }
    };
    let recent_seconds =
        c.seen.map(|s| now - s.last_review_ms).filter(|ago| *ago < policy.recency_window_ms).map(|ago| ago / 1000);
    if recent_seconds.is_some() {
        base -= policy.recency_penalty;
    }
    Some(Placed { candidate: c, reason, base, recall, success, recent_seconds })
}

fn shares_skill(a: &[String], b: &[String]) -> bool {
    a.iter().any(|s| b.contains(s))
}

fn explain(p: &Placed<'_>, situation: Situation, sibling: bool) -> String {
    let mut text = match p.reason {
        Reason::New if !p.candidate.blocked_by.is_empty() => format!(
            "new item held back: prerequisite {} not mastered yet; predicted success {:.2}",
            p.candidate.blocked_by.join(", "),
            p.success
        ),
        Reason::New => {
            format!("new item: predicted success {:.2}, target {:.2}", p.success, situation.target_success)
        }
        Reason::Relearn => match p.candidate.seen.map(|s| s.phase) {
            Some(Phase::Learning) => format!("learning step due: predicted success {:.2}", p.success),
            _ => format!("relearning after a lapse: predicted success {:.2}", p.success),
        },
        Reason::DueReview => format!(
            "due review: recall {:.2} at or below desired retention {:.2}",
            p.recall, situation.desired_retention
        ),
        _ => format!("early review: recall {:.2}, nothing due", p.recall),
    };
    if let Some(seconds) = p.recent_seconds {
        let _ = write!(text, "; answered {seconds} s ago");
    }
    if sibling {
        text.push_str("; same skill as the item before");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::super::memory::{DAY_MS, MINUTE_MS};
    use super::*;

    fn new_item(id: &str, skill: &str) -> CandidateState {
        CandidateState {
            item_id: id.to_owned(),
            skill_ids: vec![skill.to_owned()],
            seen: None,
            ability: 0.0,
            difficulty: 0.0,
            guess: 0.0,
            blocked_by: Vec::new(),
        }
    }

    fn reviewed(id: &str, skill: &str, last_review_ms: i64, due_ms: i64) -> CandidateState {
        CandidateState {
            seen: Some(Seen {
                memory: MemoryState { stability: 5.0, difficulty: 5.0 },
                phase: Phase::Review,
                last_review_ms,
                due_ms: Some(due_ms),
                last_rating: Rating::Good,
                knowledge: Some(2.0),
            }),
            ..new_item(id, skill)
        }
    }

    fn situation(now_ms: i64) -> Situation {
        Situation { now_ms, desired_retention: 0.9, target_success: 0.8 }
    }

    fn order(ranked: &[Ranked]) -> Vec<(&str, Reason)> {
        ranked.iter().map(|r| (r.item_id.as_str(), r.reason)).collect()
    }

    fn run(candidates: &[CandidateState], mode: Mode, count: usize, now: i64) -> Vec<Ranked> {
        rank(&RankingPolicy::default(), &MemoryModel::default(), candidates, mode, count, situation(now))
    }

    #[test]
    fn practice_puts_due_reviews_first_lowest_recall_first_then_new_then_early() {
        let now = 100 * DAY_MS;
        let candidates = [
            reviewed("not-due", "a", now - DAY_MS, now + 4 * DAY_MS),
            new_item("new", "b"),
            reviewed("due", "c", now - 6 * DAY_MS, now - DAY_MS),
            reviewed("overdue", "d", now - 30 * DAY_MS, now - 25 * DAY_MS),
        ];
        let ranked = run(&candidates, Mode::Practice, 10, now);
        assert_eq!(
            order(&ranked),
            vec![
                ("overdue", Reason::DueReview),
                ("due", Reason::DueReview),
                ("new", Reason::New),
                ("not-due", Reason::EarlyReview)
            ]
        );
        assert!(ranked[0].predicted_recall < ranked[1].predicted_recall);
        assert!(ranked.iter().all(|r| !r.explanation.is_empty()));
        assert!(ranked[0].explanation.starts_with("due review: recall 0."), "{}", ranked[0].explanation);
        let reviews = run(&candidates, Mode::Review, 10, now);
        assert_eq!(order(&reviews), vec![("overdue", Reason::DueReview), ("due", Reason::DueReview)]);
    }

    #[test]
    fn a_lower_desired_retention_makes_fewer_items_due() {
        let now = 100 * DAY_MS;
        // Stability 5 d: recall after 6 days is about 0.89, between 0.85 and 0.90.
        let candidate = reviewed("x", "a", now - 6 * DAY_MS, now + DAY_MS);
        let strict = rank(
            &RankingPolicy::default(),
            &MemoryModel::default(),
            std::slice::from_ref(&candidate),
            Mode::Review,
            5,
            situation(now),
        );
        assert_eq!(strict.len(), 1);
        let relaxed = rank(
            &RankingPolicy::default(),
            &MemoryModel::default(),
            &[candidate],
            Mode::Review,
            5,
            Situation { desired_retention: 0.85, ..situation(now) },
        );
        assert!(relaxed.is_empty());
    }

    #[test]
    fn due_learning_steps_come_before_due_reviews_and_are_relearns() {
        let now = 100 * DAY_MS;
        let mut step = reviewed("step", "a", now - 11 * MINUTE_MS, now - MINUTE_MS);
        if let Some(seen) = step.seen.as_mut() {
            seen.phase = Phase::Learning;
        }
        let review = reviewed("review", "b", now - 30 * DAY_MS, now - 25 * DAY_MS);
        let ranked = run(&[review, step], Mode::Practice, 2, now);
        assert_eq!(order(&ranked), vec![("step", Reason::Relearn), ("review", Reason::DueReview)]);
        assert!(ranked[0].explanation.starts_with("learning step due"), "{}", ranked[0].explanation);
    }

    #[test]
    fn new_items_closest_to_the_target_rank_first() {
        let mut easy = new_item("easy", "a");
        easy.difficulty = -4.0;
        let mut right = new_item("right", "b");
        right.difficulty = -(0.8f64 / 0.2).ln();
        let mut hard = new_item("hard", "c");
        hard.difficulty = 3.0;
        let ranked = run(&[easy, hard, right], Mode::Practice, 2, 0);
        assert_eq!(ranked[0].item_id, "right");
        assert!((ranked[0].predicted_success - 0.8).abs() < 1e-9);
        assert_eq!(ranked.len(), 2);
        assert_eq!(ranked[0].explanation, "new item: predicted success 0.80, target 0.80");
    }

    #[test]
    fn the_target_follows_the_correction_within_its_limit() {
        let policy = RankingPolicy::default();
        assert_eq!(policy.effective_target(0.0), 0.8);
        assert!((policy.effective_target(0.05) - 0.85).abs() < 1e-12);
        assert!((policy.effective_target(1.0) - 0.95).abs() < 1e-12);
        assert!((policy.effective_target(-1.0) - 0.65).abs() < 1e-12);
        // A wrong answer raises the target (easier items next); a right one lowers it slightly.
        assert!(policy.correction_step(false) > 0.0);
        assert!(policy.correction_step(true) < 0.0);
        // At the target rate the corrections cancel out.
        let drift = 0.8 * policy.correction_step(true) + 0.2 * policy.correction_step(false);
        assert!(drift.abs() < 1e-12);
        // With a higher target, an easy item beats one that suited the plain target.
        let mut easier = new_item("easier", "a");
        easier.difficulty = -(0.9f64 / 0.1).ln();
        let mut plain = new_item("plain", "b");
        plain.difficulty = -(0.8f64 / 0.2).ln();
        let candidates = [plain, easier];
        let model = MemoryModel::default();
        let at = |target| {
            let s = Situation { target_success: target, ..situation(0) };
            rank(&policy, &model, &candidates, Mode::Practice, 1, s)[0].item_id.clone()
        };
        assert_eq!(at(0.8), "plain");
        assert_eq!(at(0.9), "easier");
    }

    #[test]
    fn items_answered_moments_ago_wait_while_something_else_is_available() {
        let now = 100 * DAY_MS;
        let mut just_failed = reviewed("just-failed", "a", now - 70_000, now - 10_000);
        if let Some(seen) = just_failed.seen.as_mut() {
            seen.phase = Phase::Relearning;
            seen.last_rating = Rating::Again;
        }
        let ranked = run(&[just_failed.clone(), new_item("new", "b")], Mode::Practice, 2, now);
        assert_eq!(order(&ranked), vec![("new", Reason::New), ("just-failed", Reason::Relearn)]);
        assert!(ranked[1].explanation.contains("answered 70 s ago"), "{}", ranked[1].explanation);
        // Once the window has passed it is first again.
        let later = run(&[just_failed, new_item("new", "b")], Mode::Practice, 2, now + 60_000);
        assert_eq!(later[0].item_id, "just-failed");
    }

    #[test]
    fn siblings_of_one_skill_do_not_follow_each_other_when_another_skill_is_close() {
        let now = 100 * DAY_MS;
        // The learner just answered an item of skill a.
        let last = reviewed("last", "a", now - 3 * 60_000, now + 3 * DAY_MS);
        let candidates = [last, new_item("a1", "a"), new_item("a2", "a"), new_item("b1", "b"), new_item("b2", "b")];
        let ranked = run(&candidates, Mode::Practice, 4, now);
        let skills: Vec<&str> = ranked.iter().map(|r| &r.item_id[..1]).collect();
        assert_eq!(skills, vec!["b", "a", "b", "a"]);
        // With one skill left, siblings follow each other and say so.
        let only_a = run(&[new_item("a1", "a"), new_item("a2", "a")], Mode::Practice, 2, now);
        assert!(only_a[1].explanation.ends_with("same skill as the item before"), "{}", only_a[1].explanation);
    }

    #[test]
    fn new_items_behind_an_unmastered_prerequisite_come_after_open_ones_but_before_early_reviews() {
        let policy = RankingPolicy::default();
        let graph = [("fractions", vec!["division".to_owned()]), ("division", Vec::new())];
        let graph = || graph.iter().map(|(skill, prerequisites)| (*skill, prerequisites.as_slice()));
        let novice = HashMap::new();
        let unmet = policy.unmet_prerequisites(graph(), &novice);
        assert_eq!(unmet.get("fractions"), Some(&vec!["division"]));
        assert!(!unmet.contains_key("division"));
        let expert: HashMap<String, Estimate> =
            [("division".to_owned(), Estimate { value: 1.5, attempts: 10 })].into_iter().collect();
        assert!(policy.unmet_prerequisites(graph(), &expert).is_empty());
        let lucky: HashMap<String, Estimate> =
            [("division".to_owned(), Estimate { value: 1.5, attempts: 1 })].into_iter().collect();
        assert!(!policy.unmet_prerequisites(graph(), &lucky).is_empty(), "one answer is not mastery");

        // The gated item suits the target perfectly, yet a poor fit without a gate beats it.
        let mut gated = new_item("frac", "fractions");
        gated.difficulty = -(0.8f64 / 0.2).ln();
        gated.blocked_by = vec!["division".to_owned()];
        let mut open = new_item("div", "division");
        open.difficulty = 2.0;
        let now = 100 * DAY_MS;
        let early = reviewed("early", "division", now - DAY_MS, now + 4 * DAY_MS);
        let ranked = run(&[early, gated, open], Mode::Practice, 3, now);
        assert_eq!(
            order(&ranked),
            vec![("div", Reason::New), ("frac", Reason::New), ("early", Reason::EarlyReview)],
            "a learner stuck on a prerequisite still moves on rather than only reviewing early"
        );
        assert!(ranked[1].explanation.contains("prerequisite division not mastered"), "{}", ranked[1].explanation);
    }

    #[test]
    fn seen_items_predict_from_memory_in_review_and_knowledge_in_steps() {
        let model = MemoryModel::default();
        let now = 100 * DAY_MS;
        let mut c = reviewed("x", "a", now - 5 * DAY_MS, now);
        c.guess = 0.25;
        let (recall, success) = c.predict(&model, now);
        assert!((recall - 0.9).abs() < 0.01);
        assert!((success - (recall + (1.0 - recall) * 0.25)).abs() < 1e-12);
        if let Some(seen) = c.seen.as_mut() {
            seen.phase = Phase::Learning;
        }
        let (_, stepping) = c.predict(&model, now);
        assert!((stepping - success_probability(2.0, 0.0, 0.25)).abs() < 1e-12);
    }

    #[test]
    fn policies_out_of_range_are_named() {
        let bad = RankingPolicy { target_success: 0.2, ..RankingPolicy::default() };
        assert!(bad.validate().is_err_and(|e| e.contains("target success")));
        assert!(RankingPolicy::default().validate().is_ok());
    }
}
