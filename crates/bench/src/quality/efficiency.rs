//! Scheduling efficiency: the same simulated learners study the same item bank for the same time
//! every day under each scheduler; what counts is how much they remember at the end, per hour
//! of study.
//!
//! - Time: a first sight costs 25 s, a correct answer 10 s, a wrong one 25 s (reading the
//!   feedback). Each learner studies `minutes` a day from 09:00 for `days` days and answers
//!   until the day's time is spent; waiting for a learning step costs nothing.
//! - Remembered: the sum, over the items a learner has met, of the true probability of recalling
//!   each on the morning after the last day (the ground truth of `population`, not any
//!   scheduler's own estimate).
//! - New items come in one order per learner (a shuffle of the bank, the same for every
//!   scheduler). SM-2 and FSRS take them in that order; ALP's ranking chooses among the next
//!   50 of it, as the scheduler service offers them.
//! - SM-2: due items oldest first, then new ones; an answer below Good is drilled again 10 min
//!   later the same day without changing the SM-2 state (SM-2's same-day repetition).
//! - FSRS-6 at 0.90: default parameters, learning steps 1 and 10 min, relearning 10 min, interval
//!   fuzz; due items earliest first, then new ones.
//! - ALP: the scoring service's practice ranking and updates (Elo ability and difficulty, the
//!   corrected target, the prerequisite gate, current knowledge, FSRS-6 at desired retention
//!   0.90 with fuzz), the candidates the scheduler service would send (due items, the three
//!   latest, 50 unseen). Run twice: with the default FSRS parameters, and with each learner's own
//!   parameters fitted when the service would (400 reviews, then each time they grow by half),
//!   kept only when they beat the defaults on the learner's latest reviews.

use std::collections::HashMap;

use alp_proto::common::v1::{Mode, Rating};
use alp_scoring::fitter::FitPolicy;
use alp_scoring::model::ability::{Estimate, first_attempt_steps, item_ability, knowledge_after, skill_ability};
use alp_scoring::model::fitting::{self, Review};
use alp_scoring::model::memory::{Card, DAY_MS, MINUTE_MS, MemoryModel, fuzz_unit};
use alp_scoring::model::ranking::{self, CandidateState, RankingPolicy, Seen, Situation};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::population::{Learner, Population, answer, skill_name};
use super::sm2::{Sm2, quality};

pub const FIRST_SIGHT_SECONDS: i64 = 25;
pub const CORRECT_SECONDS: i64 = 10;
pub const WRONG_SECONDS: i64 = 25;
const SESSION_START_MS: i64 = 9 * 60 * MINUTE_MS;
const RETENTION: f64 = 0.9;
const NEW_CANDIDATES: usize = 50;
const RECENT_CANDIDATES: usize = 3;
const DRILL_MS: i64 = 10 * MINUTE_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    Sm2,
    Fsrs,
    AlpDefault,
    Alp,
}

impl Scheduler {
    pub const ALL: [Self; 4] = [Self::Sm2, Self::Fsrs, Self::AlpDefault, Self::Alp];

    pub fn name(self) -> &'static str {
        match self {
            Self::Sm2 => "SM-2",
            Self::Fsrs => "FSRS-6 at 0.90",
            Self::AlpDefault => "ALP, default FSRS parameters",
            Self::Alp => "ALP",
        }
    }
}

/// One scheduler's result; per-learner figures are means.
#[derive(Debug, Clone)]
pub struct SchedulerOutcome {
    pub scheduler: Scheduler,
    pub remembered: f64,
    pub hours: f64,
    pub items_met: f64,
    pub answers: usize,
    /// Share of correct answers among reviews a day or more after the answer before...
    pub review_success: f64,
    /// ...and among first sights.
    pub first_success: f64,
    /// Learners studying with their own fitted parameters at the end.
    pub learners_fitted: usize,
}

impl SchedulerOutcome {
    pub fn per_hour(&self) -> f64 {
        self.remembered / self.hours.max(f64::EPSILON)
    }
}

#[derive(Debug, Clone)]
pub struct EfficiencyResult {
    pub outcomes: Vec<SchedulerOutcome>,
    pub learners: usize,
    pub items: usize,
    pub days: i64,
    pub minutes: i64,
}

impl EfficiencyResult {
    pub fn outcome(&self, scheduler: Scheduler) -> Option<&SchedulerOutcome> {
        self.outcomes.iter().find(|o| o.scheduler == scheduler)
    }
}

pub fn run(population: &Population, days: i64, minutes: i64, seed: u64) -> anyhow::Result<EfficiencyResult> {
    let outcomes = Scheduler::ALL
        .iter()
        .map(|s| {
            tracing::info!(scheduler = s.name(), "scheduling efficiency");
            simulate(population, *s, days, minutes, seed)
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(EfficiencyResult { outcomes, learners: population.learners.len(), items: population.items.len(), days, minutes })
}

/// How the scheduler keeps one item.
#[derive(Debug, Clone)]
enum Schedule {
    /// `next_ms`: the review SM-2 scheduled, which same-day drills do not move.
    Sm2 {
        card: Sm2,
        next_ms: i64,
    },
    Fsrs(Card),
    Alp {
        card: Card,
        knowledge: f64,
    },
}

/// One learner's record of one item.
#[derive(Debug, Clone)]
struct Study {
    item: usize,
    /// The learner's true memory of it.
    truth: Card,
    due_ms: i64,
    schedule: Schedule,
    history: Vec<Review>,
}

/// One learner under one scheduler.
struct Desk {
    studies: Vec<Study>,
    /// Item → its index in `studies`.
    met: Vec<Option<usize>>,
    /// The order new items are offered in; everything before `cursor` has been met.
    order: Vec<usize>,
    cursor: usize,
    /// Study indices of the latest answers, newest last.
    recent: Vec<usize>,
    abilities: HashMap<String, Estimate>,
    correction: f64,
    model: MemoryModel,
    fitted: bool,
    /// Answers after an item's first, now and at the last fit.
    reviews: i64,
    last_fit_reviews: Option<i64>,
    rng: StdRng,
}

impl Desk {
    fn new(items: usize, seed: u64, learner: usize) -> Self {
        // The same order and answer draws for every scheduler.
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(learner as u64));
        let mut order: Vec<usize> = (0..items).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i));
        }
        Self {
            studies: Vec::new(),
            met: vec![None; items],
            order,
            cursor: 0,
            recent: Vec::new(),
            abilities: HashMap::new(),
            correction: 0.0,
            model: MemoryModel::default(),
            fitted: false,
            reviews: 0,
            last_fit_reviews: None,
            rng,
        }
    }

    /// The next `n` items not met yet, in order.
    fn unseen(&mut self, n: usize) -> Vec<usize> {
        while self.cursor < self.order.len() && self.met[self.order[self.cursor]].is_some() {
            self.cursor += 1;
        }
        self.order[self.cursor..].iter().copied().filter(|i| self.met[*i].is_none()).take(n).collect()
    }

    /// Due soonest, if due by `now`.
    fn most_overdue(&self, now: i64) -> Option<usize> {
        self.studies.iter().filter(|s| s.due_ms <= now).min_by_key(|s| s.due_ms).map(|s| s.item)
    }

    /// Refits the learner's FSRS parameters on everything so far; keeps the defaults unless the
    /// fit predicts the latest reviews better.
    fn refit(&mut self) -> anyhow::Result<()> {
        let histories: Vec<Vec<Review>> = self.studies.iter().map(|s| s.history.clone()).collect();
        self.last_fit_reviews = Some(self.reviews);
        match fitting::fit(&histories) {
            Ok(fit) if fit.kept() => {
                self.model = MemoryModel::with_parameters(&fit.parameters)?;
                self.fitted = true;
            }
            Ok(_) => {
                self.model = MemoryModel::default();
                self.fitted = false;
            }
            Err(fitting::FitError::NotEnoughReviews(_)) => {}
            Err(err) => tracing::debug!(error = %err, "not fitted"),
        }
        Ok(())
    }
}

/// What ALP's ranking needs to know of the bank, built once.
struct Bank {
    policy: RankingPolicy,
    graph: HashMap<String, Vec<String>>,
    skill_ids: Vec<Vec<String>>,
    item_ids: Vec<String>,
}

impl Bank {
    fn new(population: &Population) -> Self {
        let skills: Vec<String> = (0..population.prerequisites.len()).map(skill_name).collect();
        let graph = population
            .prerequisites
            .iter()
            .enumerate()
            .map(|(k, p)| (skills[k].clone(), p.iter().map(|s| skills[*s].clone()).collect()))
            .collect();
        Self {
            policy: RankingPolicy::default(),
            graph,
            skill_ids: population.items.iter().map(|i| vec![skills[i.skill].clone()]).collect(),
            item_ids: (0..population.items.len()).map(|i| i.to_string()).collect(),
        }
    }
}

/// An item to answer now, with ALP's predicted success (for the Elo update).
struct Pick {
    item: usize,
    predicted_success: f64,
}

fn simulate(
    population: &Population,
    scheduler: Scheduler,
    days: i64,
    minutes: i64,
    seed: u64,
) -> anyhow::Result<SchedulerOutcome> {
    let bank = Bank::new(population);
    let fit_policy = FitPolicy::default();
    let mut desks: Vec<Desk> =
        (0..population.learners.len()).map(|l| Desk::new(population.items.len(), seed, l)).collect();
    // ALP's item difficulties, shared by the cohort as in the service.
    let mut difficulties: Vec<Estimate> =
        population.items.iter().map(|i| Estimate { value: i.initial_difficulty, attempts: 0 }).collect();
    let (mut seconds, mut answers, mut reviews, mut recalled) = (0i64, 0usize, 0usize, 0usize);
    let (mut first_sights, mut first_correct) = (0usize, 0usize);

    for day in 0..days {
        for (learner, desk) in population.learners.iter().zip(desks.iter_mut()) {
            // The service checks after every answer; once a day is close enough here.
            if scheduler == Scheduler::Alp && fit_policy.due(desk.reviews, desk.last_fit_reviews) {
                desk.refit()?;
            }
            let mut now = day * DAY_MS + SESSION_START_MS;
            let mut spent = 0;
            while spent < minutes * 60 {
                let pick = match scheduler {
                    Scheduler::Sm2 | Scheduler::Fsrs => desk
                        .most_overdue(now)
                        .or_else(|| desk.unseen(1).first().copied())
                        .map(|item| Pick { item, predicted_success: 0.0 }),
                    Scheduler::AlpDefault | Scheduler::Alp => alp_pick(desk, &bank, &difficulties, population, now),
                };
                let Some(pick) = pick else {
                    // Wait for a step due within the hour, or end the day.
                    match desk.studies.iter().map(|s| s.due_ms).filter(|d| *d < now + 60 * MINUTE_MS).min() {
                        Some(due) => {
                            now = now.max(due);
                            continue;
                        }
                        None => break,
                    }
                };
                let study = desk.met[pick.item];
                let item = &population.items[pick.item];
                let p = match study {
                    Some(s) => learner.review_success(item, &desk.studies[s].truth, now),
                    None => learner.first_success(item),
                };
                let rating = answer(p, &mut desk.rng);
                match study {
                    Some(s) if now - desk.studies[s].truth.last_review_ms >= DAY_MS => {
                        reviews += 1;
                        recalled += usize::from(rating != Rating::Again);
                    }
                    Some(_) => {}
                    None => {
                        first_sights += 1;
                        first_correct += usize::from(rating != Rating::Again);
                    }
                }
                record(scheduler, desk, learner, &bank, &mut difficulties, population, &pick, rating, now)?;
                let cost = match (study, rating) {
                    (None, _) => FIRST_SIGHT_SECONDS,
                    (Some(_), Rating::Again) => WRONG_SECONDS,
                    _ => CORRECT_SECONDS,
                };
                spent += cost;
                now += cost * 1000;
                answers += 1;
            }
            seconds += spent;
        }
        if (day + 1) % 30 == 0 {
            tracing::info!(scheduler = scheduler.name(), day = day + 1, of = days, "scheduling efficiency");
        }
    }

    let end = days * DAY_MS + SESSION_START_MS;
    let learners = population.learners.len().max(1) as f64;
    let remembered: f64 = population
        .learners
        .iter()
        .zip(&desks)
        .flat_map(|(learner, desk)| {
            desk.studies.iter().map(move |s| learner.recall(&population.items[s.item], &s.truth, end))
        })
        .sum();
    Ok(SchedulerOutcome {
        scheduler,
        remembered: remembered / learners,
        hours: seconds as f64 / 3600.0 / learners,
        items_met: desks.iter().map(|d| d.studies.len()).sum::<usize>() as f64 / learners,
        answers,
        review_success: recalled as f64 / reviews.max(1) as f64,
        first_success: first_correct as f64 / first_sights.max(1) as f64,
        learners_fitted: desks.iter().filter(|d| d.fitted).count(),
    })
}

/// The item ALP's practice ranking puts first.
fn alp_pick(
    desk: &mut Desk,
    bank: &Bank,
    difficulties: &[Estimate],
    population: &Population,
    now: i64,
) -> Option<Pick> {
    let unseen = desk.unseen(NEW_CANDIDATES);
    let graph = bank.graph.iter().map(|(skill, prerequisites)| (skill.as_str(), prerequisites.as_slice()));
    let unmet = bank.policy.unmet_prerequisites(graph, &desk.abilities);
    let candidate = |item: usize, seen: Option<Seen>| {
        let skills = &bank.skill_ids[item];
        let blocked_by =
            skills.iter().filter_map(|s| unmet.get(s.as_str())).flatten().map(|p| (*p).to_owned()).collect();
        CandidateState {
            item_id: bank.item_ids[item].clone(),
            skill_ids: skills.clone(),
            seen,
            ability: item_ability(&desk.abilities, skills),
            difficulty: difficulties[item].value,
            guess: population.items[item].guess(),
            blocked_by,
        }
    };
    let seen = |s: &Study| {
        let Schedule::Alp { card, knowledge } = s.schedule else { return None };
        Some(Seen {
            memory: card.memory,
            phase: card.phase,
            last_review_ms: card.last_review_ms,
            due_ms: Some(s.due_ms),
            last_rating: s.history.last().map_or(Rating::Unspecified, |r| r.rating),
            knowledge: Some(knowledge),
        })
    };
    let mut chosen: Vec<usize> =
        (0..desk.studies.len()).filter(|k| desk.studies[*k].due_ms <= now || desk.recent.contains(k)).collect();
    if chosen.is_empty() && unseen.is_empty() {
        // Nothing due and nothing new: the soonest due, for early review.
        chosen = (0..desk.studies.len()).collect();
        chosen.sort_by_key(|k| desk.studies[*k].due_ms);
        chosen.truncate(500);
    }
    let mut candidates: Vec<CandidateState> = Vec::with_capacity(chosen.len() + unseen.len());
    for k in chosen {
        let study = &desk.studies[k];
        candidates.push(candidate(study.item, seen(study)));
    }
    candidates.extend(unseen.into_iter().map(|item| candidate(item, None)));
    let situation = Situation {
        now_ms: now,
        desired_retention: RETENTION,
        target_success: bank.policy.effective_target(desk.correction),
    };
    let best = ranking::rank(&bank.policy, &desk.model, &candidates, Mode::Practice, 1, situation).pop()?;
    Some(Pick { item: best.item_id.parse().ok()?, predicted_success: best.predicted_success })
}

/// Updates the learner's true memory and the scheduler's state after an answer.
#[allow(clippy::too_many_arguments)]
fn record(
    scheduler: Scheduler,
    desk: &mut Desk,
    learner: &Learner,
    bank: &Bank,
    difficulties: &mut [Estimate],
    population: &Population,
    pick: &Pick,
    rating: Rating,
    now: i64,
) -> anyhow::Result<()> {
    let item = &population.items[pick.item];
    let existing = desk.met[pick.item];
    let prior = existing.map(|s| &desk.studies[s]);
    let truth = learner.memory.review(prior.map(|s| &s.truth), rating, now, RETENTION, None)?.card;
    let fuzz = Some(fuzz_unit(&format!("{}-{now}", pick.item)));
    let correct = rating != Rating::Again;
    let (schedule, due_ms) = match (scheduler, prior.map(|s| &s.schedule)) {
        (Scheduler::Sm2, schedule) => {
            let (mut card, next_ms) = match schedule {
                Some(Schedule::Sm2 { card, next_ms }) => (*card, *next_ms),
                _ => (Sm2::default(), now),
            };
            let drill = prior.is_some_and(|s| s.truth.last_review_ms / DAY_MS == now / DAY_MS);
            let next_ms = if drill { next_ms } else { now + (card.review(rating) * DAY_MS as f64) as i64 };
            let due = if quality(rating) < 4.0 { now + DRILL_MS } else { next_ms };
            (Schedule::Sm2 { card, next_ms }, due)
        }
        (Scheduler::Fsrs, schedule) => {
            let card = match schedule {
                Some(Schedule::Fsrs(card)) => Some(card),
                _ => None,
            };
            let reviewed = MemoryModel::default().review(card, rating, now, RETENTION, fuzz)?;
            (Schedule::Fsrs(reviewed.card), reviewed.due_ms)
        }
        (Scheduler::AlpDefault | Scheduler::Alp, schedule) => {
            let (card, knowledge) = match schedule {
                Some(Schedule::Alp { card, knowledge }) => (Some(card), Some(*knowledge)),
                _ => (None, None),
            };
            let skill = &bank.skill_ids[pick.item][0];
            let start = skill_ability(&desk.abilities, skill);
            let ability = desk.abilities.entry(skill.clone()).or_insert(start);
            let knowledge_before = knowledge.unwrap_or(ability.value - difficulties[pick.item].value);
            if card.is_none() {
                let difficulty = &mut difficulties[pick.item];
                let (ability_step, difficulty_step) =
                    first_attempt_steps(pick.predicted_success, correct, ability.attempts, difficulty.attempts);
                ability.value += ability_step;
                ability.attempts += 1;
                difficulty.value += difficulty_step;
                difficulty.attempts += 1;
                let limit = bank.policy.target_correction_limit;
                desk.correction = (desk.correction + bank.policy.correction_step(correct)).clamp(-limit, limit);
            }
            let reviewed = desk.model.review(card, rating, now, RETENTION, fuzz)?;
            let knowledge = knowledge_after(knowledge_before, item.guess(), correct);
            (Schedule::Alp { card: reviewed.card, knowledge }, reviewed.due_ms)
        }
    };
    let index = match existing {
        Some(k) => {
            desk.reviews += 1;
            let study = &mut desk.studies[k];
            study.truth = truth;
            study.due_ms = due_ms;
            study.schedule = schedule;
            study.history.push(Review { at_ms: now, rating });
            k
        }
        None => {
            desk.studies.push(Study {
                item: pick.item,
                truth,
                due_ms,
                schedule,
                history: vec![Review { at_ms: now, rating }],
            });
            desk.met[pick.item] = Some(desk.studies.len() - 1);
            desk.studies.len() - 1
        }
    };
    desk.recent.retain(|k| *k != index);
    desk.recent.push(index);
    if desk.recent.len() > RECENT_CANDIDATES {
        desk.recent.remove(0);
    }
    Ok(())
}
