//! The simulated learners and items, with the ground truth the models try to recover.
//!
//! - Items: `skills` × `items_per_skill`; true difficulty ~ N(−1, 1.5) logits (centred near
//!   where an average learner succeeds 80 % of the time, wide enough that weak and strong
//!   learners have items at their target too); one in three is
//!   multiple choice with four options (guessing floor 0.25). The author's initial difficulty
//!   is the truth plus N(0, 0.8) noise.
//! - Skills form a tree: skill k > 0 needs skill (k − 1) / 2 first.
//! - Learners: general ability ~ N(0, 1); ability on a skill is that plus N(0, 0.4).
//!   A first attempt succeeds with g + (1 − g)·σ(θ − b).
//! - Memory: each learner forgets by FSRS-6 with their own parameters: the defaults with the
//!   initial stabilities (w0–w3) scaled by exp(N(0, 0.5)), the stability growth (w8) by
//!   exp(N(0, 0.15)) and the decay (w20) by exp(N(0, 0.25)). Items that are easy for the learner
//!   are also remembered longer: stability × exp(0.25·(θ − b)), within [0.5, 2]. A review
//!   succeeds with R + (1 − R)·g. Successes are rated Good (80 %), Hard (10 %) or Easy (10 %).

use alp_proto::common::v1::Rating;
use alp_scoring::model::ability::{guess, success_probability};
use alp_scoring::model::memory::{Card, MemoryModel};
use fsrs::MemoryState;
use rand::Rng;
use rand::rngs::StdRng;

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub learners: usize,
    pub skills: usize,
    pub items_per_skill: usize,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub id: String,
    pub skill: usize,
    pub difficulty: f64,
    pub choices: u32,
    pub initial_difficulty: f64,
}

impl Item {
    pub fn guess(&self) -> f64 {
        guess(self.choices)
    }
}

#[derive(Debug, Clone)]
pub struct Learner {
    pub ability: Vec<f64>,
    pub memory: MemoryModel,
}

#[derive(Debug, Clone)]
pub struct Population {
    pub items: Vec<Item>,
    pub learners: Vec<Learner>,
    /// Prerequisite skills of each skill.
    pub prerequisites: Vec<Vec<usize>>,
}

pub fn skill_name(skill: usize) -> String {
    format!("skill-{skill}")
}

/// A standard normal draw (Box–Muller).
pub fn normal(rng: &mut StdRng) -> f64 {
    let u: f64 = rng.random_range(f64::EPSILON..1.0);
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

impl Population {
    pub fn generate(spec: Spec, rng: &mut StdRng) -> anyhow::Result<Self> {
        let mut items = Vec::with_capacity(spec.skills * spec.items_per_skill);
        for skill in 0..spec.skills {
            for n in 0..spec.items_per_skill {
                let difficulty = -1.0 + 1.5 * normal(rng);
                items.push(Item {
                    id: format!("s{skill}-i{n}"),
                    skill,
                    difficulty,
                    choices: if rng.random_bool(1.0 / 3.0) { 4 } else { 0 },
                    initial_difficulty: (difficulty + 0.8 * normal(rng)).clamp(-6.0, 6.0),
                });
            }
        }
        let prerequisites = (0..spec.skills).map(|k| if k == 0 { Vec::new() } else { vec![(k - 1) / 2] }).collect();
        let mut learners = Vec::with_capacity(spec.learners);
        for _ in 0..spec.learners {
            let general = normal(rng);
            let ability = (0..spec.skills).map(|_| general + 0.4 * normal(rng)).collect();
            let mut w = fsrs::DEFAULT_PARAMETERS.to_vec();
            let initial = (0.5 * normal(rng)).exp() as f32;
            for s in &mut w[..4] {
                *s = (*s * initial).clamp(0.01, 100.0);
            }
            w[8] = (w[8] * (0.15 * normal(rng)).exp() as f32).clamp(0.5, 4.0);
            w[20] = (w[20] * (0.25 * normal(rng)).exp() as f32).clamp(0.1, 0.8);
            learners.push(Learner { ability, memory: MemoryModel::with_parameters(&w)? });
        }
        Ok(Self { items, learners, prerequisites })
    }
}

impl Learner {
    pub fn first_success(&self, item: &Item) -> f64 {
        success_probability(self.ability[item.skill], item.difficulty, item.guess())
    }

    /// The true probability of recalling the item `at_ms`, given the true memory of it.
    pub fn recall(&self, item: &Item, truth: &Card, at_ms: i64) -> f64 {
        let factor = (0.25 * (self.ability[item.skill] - item.difficulty)).exp().clamp(0.5, 2.0);
        let memory = MemoryState { stability: truth.memory.stability * factor as f32, ..truth.memory };
        self.memory.retrievability(memory, at_ms - truth.last_review_ms)
    }

    /// The true probability of a correct answer `at_ms`: recalled, or guessed.
    pub fn review_success(&self, item: &Item, truth: &Card, at_ms: i64) -> f64 {
        let recall = self.recall(item, truth, at_ms);
        recall + (1.0 - recall) * item.guess()
    }
}

/// The rating of an answer that succeeds with probability `p`.
pub fn answer(p: f64, rng: &mut StdRng) -> Rating {
    if !rng.random_bool(p.clamp(0.0, 1.0)) {
        return Rating::Again;
    }
    match rng.random_range(0..10) {
        0 => Rating::Hard,
        1 => Rating::Easy,
        _ => Rating::Good,
    }
}
