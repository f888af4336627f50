//! Recall prediction: review logs are simulated under a plain FSRS schedule (retention 0.90,
//! fuzzed), split by time, and every model predicts the reviews of the later part from the
//! history before each of them.
//!
//! Scored reviews: answers at least a day after the previous answer to the same item (same-day
//! answers are learning steps). Models:
//! - constant: the mean success of the scored reviews of the earlier part;
//! - SM-2: 0.9^(elapsed days / SM-2 interval), the SM-2 state replayed from the same ratings
//!   (Again→quality 1, Hard→3, Good→4, Easy→5);
//! - FSRS-6 default: the default parameters;
//! - ALP: FSRS-6 with the learner's fitted parameters where they beat the defaults on the latest
//!   reviews of the earlier part, and the guessing floor of multiple-choice items.

use alp_proto::common::v1::Rating;
use alp_scoring::model::fitting::{self, Review};
use alp_scoring::model::memory::fuzz_unit;
use alp_scoring::model::memory::{Card, DAY_MS, MINUTE_MS, MemoryModel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::metrics::{self, Bin};
use super::population::{Learner, Population, answer};
use super::sm2::Sm2;

pub const MODELS: [&str; 4] = ["constant average", "SM-2", "FSRS-6 default", "ALP"];

#[derive(Debug, Clone)]
pub struct ModelScore {
    pub name: &'static str,
    pub log_loss: f64,
    pub rmse_bins: f64,
    pub auc: f64,
    pub calibration: Vec<Bin>,
}

#[derive(Debug, Clone)]
pub struct PredictionResult {
    pub scores: Vec<ModelScore>,
    pub train_reviews: usize,
    pub test_reviews: usize,
    pub attempts: usize,
    pub learners_fitted: usize,
    pub learners_kept: usize,
    pub days: i64,
}

/// One learner's simulated log: per item, the answers in order.
struct Log {
    histories: Vec<(usize, Vec<Review>)>,
}

const SESSION_START_MS: i64 = 9 * 60 * MINUTE_MS;
const SECONDS_PER_ANSWER: i64 = 20;

/// Simulates `days` of study: due reviews, then up to `new_per_day` new items, with learning
/// steps repeated within the session.
fn simulate(learner: &Learner, population: &Population, days: i64, new_per_day: usize, rng: &mut StdRng) -> Log {
    let scheduler = MemoryModel::default();
    // (item, scheduler's card, due, true card)
    let mut cards: Vec<(usize, Card, i64, Card)> = Vec::new();
    let mut histories: Vec<(usize, Vec<Review>)> = Vec::new();
    let mut order: Vec<usize> = (0..population.items.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut next_new = 0;
    for day in 0..days {
        let mut now = day * DAY_MS + SESSION_START_MS;
        let day_end = (day + 1) * DAY_MS;
        let mut new_today = 0;
        loop {
            let due = cards.iter().enumerate().filter(|(_, c)| c.2 <= now).min_by_key(|(_, c)| c.2).map(|(k, _)| k);
            let pick = match due {
                Some(k) => Some(k),
                None if new_today < new_per_day && next_new < order.len() => None,
                None => {
                    // Wait for a learning step due later in the session, or end the day.
                    match cards.iter().map(|c| c.2).filter(|d| *d < now + 60 * MINUTE_MS).min() {
                        Some(d) => {
                            now = d;
                            continue;
                        }
                        None => break,
                    }
                }
            };
            if now >= day_end {
                break;
            }
            let (item, p) = match pick {
                Some(k) => {
                    let (item, _, _, truth) = &cards[k];
                    (*item, learner.review_success(&population.items[*item], truth, now))
                }
                None => {
                    let item = order[next_new];
                    (item, learner.first_success(&population.items[item]))
                }
            };
            let rating = answer(p, rng);
            let fuzz = Some(fuzz_unit(&format!("{item}-{now}")));
            match pick {
                Some(k) => {
                    let (_, card, _, truth) = &cards[k];
                    let Ok(scheduled) = scheduler.review(Some(card), rating, now, 0.9, fuzz) else { break };
                    let Ok(true_next) = learner.memory.review(Some(truth), rating, now, 0.9, None) else { break };
                    cards[k] = (item, scheduled.card, scheduled.due_ms, true_next.card);
                    // Cards and histories are pushed together: the same index.
                    histories[k].1.push(Review { at_ms: now, rating });
                }
                None => {
                    let Ok(scheduled) = scheduler.review(None, rating, now, 0.9, fuzz) else { break };
                    let Ok(truth) = learner.memory.review(None, rating, now, 0.9, None) else { break };
                    cards.push((item, scheduled.card, scheduled.due_ms, truth.card));
                    histories.push((item, vec![Review { at_ms: now, rating }]));
                    next_new += 1;
                    new_today += 1;
                }
            }
            now += SECONDS_PER_ANSWER * 1000;
        }
    }
    Log { histories }
}

/// SM-2 replayed over a history: calls `score(prediction, recalled, at_ms)` at scored reviews.
fn sm2_replay(history: &[Review], mut score: impl FnMut(f64, bool, i64)) {
    let mut card = Sm2::default();
    let mut last: Option<i64> = None;
    for review in history {
        if let Some(at) = last
            && review.at_ms - at >= DAY_MS
        {
            let elapsed = (review.at_ms - at) as f64 / DAY_MS as f64;
            score(0.9f64.powf(elapsed / card.interval_days().max(1.0)), review.rating != Rating::Again, review.at_ms);
        }
        card.review(review.rating);
        last = Some(review.at_ms);
    }
}

pub fn run(population: &Population, days: i64, new_per_day: usize, seed: u64) -> anyhow::Result<PredictionResult> {
    let mut rng = StdRng::seed_from_u64(seed);
    let split_ms = (days as f64 * 0.7) as i64 * DAY_MS;
    let default_model = MemoryModel::default();
    let mut predictions: Vec<Vec<f64>> = vec![Vec::new(); MODELS.len()];
    let mut outcomes: Vec<bool> = Vec::new();
    let mut train_outcomes: Vec<bool> = Vec::new();
    let (mut attempts, mut fitted, mut kept) = (0, 0, 0);

    for (n, learner) in population.learners.iter().enumerate() {
        let log = simulate(learner, population, days, new_per_day, &mut rng);
        attempts += log.histories.iter().map(|(_, h)| h.len()).sum::<usize>();
        let train: Vec<Vec<Review>> =
            log.histories.iter().map(|(_, h)| h.iter().copied().filter(|r| r.at_ms < split_ms).collect()).collect();
        let alp_model = match fitting::fit(&train) {
            Ok(fit) => {
                fitted += 1;
                if fit.kept() {
                    kept += 1;
                    MemoryModel::with_parameters(&fit.parameters)?
                } else {
                    default_model.clone()
                }
            }
            Err(err) => {
                tracing::debug!(learner = n, error = %err, "not fitted");
                default_model.clone()
            }
        };
        for (item, history) in &log.histories {
            let guess = population.items[*item].guess();
            fitting::replay(&default_model, history, |p, recalled, at| {
                if at >= split_ms {
                    predictions[2].push(p);
                    outcomes.push(recalled);
                } else {
                    train_outcomes.push(recalled);
                }
            })?;
            fitting::replay(&alp_model, history, |p, _, at| {
                if at >= split_ms {
                    predictions[3].push(p + (1.0 - p) * guess);
                }
            })?;
            sm2_replay(history, |p, _, at| {
                if at >= split_ms {
                    predictions[1].push(p);
                }
            });
        }
        if (n + 1) % 10 == 0 {
            tracing::info!(learners = n + 1, of = population.learners.len(), "recall prediction");
        }
    }
    let mean = train_outcomes.iter().filter(|y| **y).count() as f64 / train_outcomes.len().max(1) as f64;
    predictions[0] = vec![mean; outcomes.len()];
    let scores = MODELS
        .iter()
        .zip(&predictions)
        .map(|(name, p)| ModelScore {
            name,
            log_loss: metrics::log_loss(p, &outcomes),
            rmse_bins: metrics::rmse_bins(p, &outcomes, 20),
            auc: metrics::auc(p, &outcomes),
            calibration: metrics::calibration(p, &outcomes, 20),
        })
        .collect();
    Ok(PredictionResult {
        scores,
        train_reviews: train_outcomes.len(),
        test_reviews: outcomes.len(),
        attempts,
        learners_fitted: fitted,
        learners_kept: kept,
        days,
    })
}
