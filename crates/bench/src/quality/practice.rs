//! Adaptive practice: learners meet new items chosen by the ranking, answer by the ground truth,
//! and the Elo estimates are updated as the scoring service updates them. Measures the realised
//! first-attempt success against the target, and how well item difficulty and learner ability
//! are recovered.

use std::collections::{HashMap, HashSet};

use alp_proto::common::v1::{Mode, Rating};
use alp_scoring::model::ability::{Estimate, first_attempt_steps, skill_ability};
use alp_scoring::model::memory::MemoryModel;
use alp_scoring::model::ranking::{self, CandidateState, RankingPolicy, Situation};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::metrics::spearman;
use super::population::{Population, answer, skill_name};

/// Item estimates used for the difficulty recovery need at least this many first attempts...
pub const ITEM_MIN_ATTEMPTS: i64 = 30;
/// ...and (learner, skill) ability estimates this many.
pub const ABILITY_MIN_ATTEMPTS: i64 = 30;

#[derive(Debug, Clone)]
pub struct PracticeResult {
    /// Items in the bank.
    pub items: usize,
    pub target: f64,
    /// Mean first-attempt success over the second half of the rounds.
    pub realised: f64,
    pub measured_attempts: usize,
    pub difficulty_rho: f64,
    pub calibrated_items: usize,
    pub ability_rho: f64,
    pub estimated_abilities: usize,
    pub total_attempts: usize,
}

/// Every learner takes `picks_per_round` new items per round, for `rounds` rounds.
pub fn run(
    population: &Population,
    policy: &RankingPolicy,
    rounds: usize,
    picks_per_round: usize,
    seed: u64,
) -> PracticeResult {
    let mut rng = StdRng::seed_from_u64(seed);
    let model = MemoryModel::default();
    let skills: Vec<String> = (0..population.prerequisites.len()).map(skill_name).collect();
    let graph: HashMap<String, Vec<String>> = population
        .prerequisites
        .iter()
        .enumerate()
        .map(|(k, p)| (skills[k].clone(), p.iter().map(|s| skills[*s].clone()).collect()))
        .collect();
    let mut items: Vec<Estimate> =
        population.items.iter().map(|i| Estimate { value: i.initial_difficulty, attempts: 0 }).collect();
    let mut abilities: Vec<HashMap<String, Estimate>> = vec![HashMap::new(); population.learners.len()];
    let mut corrections = vec![0.0; population.learners.len()];
    let mut seen: Vec<HashSet<usize>> = vec![HashSet::new(); population.learners.len()];
    let (mut successes, mut measured, mut total) = (0usize, 0usize, 0usize);

    for round in 0..rounds {
        for (l, learner) in population.learners.iter().enumerate() {
            for _ in 0..picks_per_round {
                let unmet = policy.unmet_prerequisites(
                    graph.iter().map(|(skill, prerequisites)| (skill.as_str(), prerequisites.as_slice())),
                    &abilities[l],
                );
                let candidates: Vec<CandidateState> = population
                    .items
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !seen[l].contains(i))
                    .map(|(i, item)| {
                        let skill = &skills[item.skill];
                        CandidateState {
                            item_id: i.to_string(),
                            ability: skill_ability(&abilities[l], skill).value,
                            difficulty: items[i].value,
                            guess: item.guess(),
                            blocked_by: unmet
                                .get(skill.as_str())
                                .map(|p| p.iter().map(|s| (*s).to_owned()).collect())
                                .unwrap_or_default(),
                            skill_ids: vec![skill.clone()],
                            seen: None,
                        }
                    })
                    .collect();
                let situation = Situation {
                    now_ms: 0,
                    desired_retention: 0.9,
                    target_success: policy.effective_target(corrections[l]),
                };
                let Some(pick) = ranking::rank(policy, &model, &candidates, Mode::Practice, 1, situation).pop() else {
                    break;
                };
                let Ok(i) = pick.item_id.parse::<usize>() else { break };
                let item = &population.items[i];
                let correct = answer(learner.first_success(item), &mut rng) != Rating::Again;
                let start = skill_ability(&abilities[l], &skills[item.skill]);
                let ability = abilities[l].entry(skills[item.skill].clone()).or_insert(start);
                let (ability_step, difficulty_step) =
                    first_attempt_steps(pick.predicted_success, correct, ability.attempts, items[i].attempts);
                ability.value += ability_step;
                ability.attempts += 1;
                items[i].value += difficulty_step;
                items[i].attempts += 1;
                let limit = policy.target_correction_limit;
                corrections[l] = (corrections[l] + policy.correction_step(correct)).clamp(-limit, limit);
                seen[l].insert(i);
                total += 1;
                if round >= rounds / 2 {
                    measured += 1;
                    successes += usize::from(correct);
                }
            }
        }
    }

    let calibrated: Vec<(f64, f64)> = population
        .items
        .iter()
        .zip(&items)
        .filter(|(_, e)| e.attempts >= ITEM_MIN_ATTEMPTS)
        .map(|(item, e)| (item.difficulty, e.value))
        .collect();
    let skills = &skills;
    let estimated: Vec<(f64, f64)> = population
        .learners
        .iter()
        .zip(&abilities)
        .flat_map(|(learner, estimates)| {
            (0..learner.ability.len()).filter_map(move |k| {
                estimates
                    .get(&skills[k])
                    .filter(|e| e.attempts >= ABILITY_MIN_ATTEMPTS)
                    .map(|e| (learner.ability[k], e.value))
            })
        })
        .collect();
    let rho = |pairs: &[(f64, f64)]| {
        let (truth, estimate): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
        if pairs.len() < 3 { f64::NAN } else { spearman(&truth, &estimate) }
    };
    PracticeResult {
        items: population.items.len(),
        target: policy.target_success,
        realised: successes as f64 / measured.max(1) as f64,
        measured_attempts: measured,
        difficulty_rho: rho(&calibrated),
        calibrated_items: calibrated.len(),
        ability_rho: rho(&estimated),
        estimated_abilities: estimated.len(),
        total_attempts: total,
    }
}
