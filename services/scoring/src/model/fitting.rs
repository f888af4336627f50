//! Per-learner FSRS-6 parameters: fitted on the earlier part of a learner's reviews and kept
//! only when they predict the later part better than the defaults do.

use alp_proto::common::v1::Rating;
use fsrs::{ComputeParametersInput, FSRSItem, FSRSReview};

use super::DEFAULT_RETENTION;
use super::memory::{Card, DAY_MS, MemoryError, MemoryModel};

/// Fewer reviews than this (after the first of each item) are not worth fitting.
pub const MIN_REVIEWS: usize = 400;
/// The latest share of the reviews held out to judge the fit.
const HOLDOUT_SHARE: f64 = 0.2;

/// One answer in a learner's history of one item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Review {
    pub at_ms: i64,
    pub rating: Rating,
}

/// What fitting found.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub parameters: Vec<f32>,
    /// Log loss on the held-out reviews with the default and with the fitted parameters.
    pub default_log_loss: f64,
    pub fitted_log_loss: f64,
    /// Reviews after each item's first answer, and how many of them were held out.
    pub reviews: usize,
    pub holdout_reviews: usize,
}

impl Fit {
    /// The fitted parameters are used only when they beat the defaults where it was not trained.
    pub fn kept(&self) -> bool {
        self.fitted_log_loss < self.default_log_loss
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FitError {
    #[error("{0} reviews after first sight; at least {MIN_REVIEWS} are needed")]
    NotEnoughReviews(usize),
    #[error("fitting failed: {0}")]
    Training(String),
    #[error(transparent)]
    Model(#[from] MemoryError),
}

/// Fits FSRS-6 to a learner's histories (one per item, oldest answer first): trains on reviews
/// before the holdout time and compares with the defaults on the reviews after it.
pub fn fit(histories: &[Vec<Review>]) -> Result<Fit, FitError> {
    let mut times: Vec<i64> = histories.iter().flat_map(|h| h.iter().skip(1).map(|r| r.at_ms)).collect();
    if times.len() < MIN_REVIEWS {
        return Err(FitError::NotEnoughReviews(times.len()));
    }
    times.sort_unstable();
    let split_ms = times[((times.len() as f64) * (1.0 - HOLDOUT_SHARE)) as usize];
    let train_set: Vec<FSRSItem> = histories
        .iter()
        .flat_map(|h| {
            let before: Vec<Review> = h.iter().copied().filter(|r| r.at_ms < split_ms).collect();
            training_items(&before)
        })
        .collect();
    let parameters = fsrs::compute_parameters(ComputeParametersInput { train_set, ..Default::default() })
        .map_err(|e| FitError::Training(e.to_string()))?;
    let fitted = MemoryModel::with_parameters(&parameters)?;
    let (default_log_loss, holdout_reviews) = holdout_log_loss(&MemoryModel::default(), histories, split_ms)?;
    let (fitted_log_loss, _) = holdout_log_loss(&fitted, histories, split_ms)?;
    Ok(Fit { parameters, default_log_loss, fitted_log_loss, reviews: times.len(), holdout_reviews })
}

fn grade(rating: Rating) -> u32 {
    match rating {
        Rating::Again | Rating::Unspecified => 1,
        Rating::Hard => 2,
        Rating::Good => 3,
        Rating::Easy => 4,
    }
}

/// FSRS's training examples of one item: each answer a day or more after the one before, with
/// the history before it (the same reviews the fit is judged on; fsrs also rejects examples
/// without a whole-day gap).
fn training_items(history: &[Review]) -> Vec<FSRSItem> {
    let reviews: Vec<FSRSReview> = history
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let days = if i == 0 { 0 } else { (r.at_ms - history[i - 1].at_ms).max(0) / DAY_MS };
            FSRSReview { rating: grade(r.rating), delta_t: u32::try_from(days).unwrap_or(u32::MAX) }
        })
        .collect();
    (2..=reviews.len())
        .filter(|n| reviews[n - 1].delta_t > 0)
        .map(|n| FSRSItem { reviews: reviews[..n].to_vec() })
        .collect()
}

/// Replays a history with `model` and calls `score(recall predicted, recalled, at_ms)` for every
/// answer at least a day after the one before (same-day answers are learning steps).
pub fn replay(
    model: &MemoryModel,
    history: &[Review],
    mut score: impl FnMut(f64, bool, i64),
) -> Result<(), MemoryError> {
    let mut card: Option<Card> = None;
    for review in history {
        if let Some(prior) = &card
            && review.at_ms - prior.last_review_ms >= DAY_MS
        {
            let recall = model.retrievability(prior.memory, review.at_ms - prior.last_review_ms);
            score(recall, review.rating != Rating::Again, review.at_ms);
        }
        card = Some(model.review(card.as_ref(), review.rating, review.at_ms, DEFAULT_RETENTION, None)?.card);
    }
    Ok(())
}

fn holdout_log_loss(model: &MemoryModel, histories: &[Vec<Review>], split_ms: i64) -> Result<(f64, usize), FitError> {
    let (mut total, mut count) = (0.0, 0usize);
    for history in histories {
        replay(model, history, |p, recalled, at_ms| {
            if at_ms >= split_ms {
                let p = p.clamp(1e-6, 1.0 - 1e-6);
                total -= if recalled { p.ln() } else { (1.0 - p).ln() };
                count += 1;
            }
        })?;
    }
    Ok((if count == 0 { f64::INFINITY } else { total / count as f64 }, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_examples_are_the_prefixes_with_whole_days_between() {
        let at = |days: i64, minutes: i64| days * DAY_MS + minutes * 60_000;
        let history = [
            Review { at_ms: at(0, 0), rating: Rating::Again },
            Review { at_ms: at(0, 10), rating: Rating::Good },
            Review { at_ms: at(3, 0), rating: Rating::Good },
        ];
        let items = training_items(&history);
        assert_eq!(items.len(), 1, "the same-day step is history, not an example");
        let last: Vec<(u32, u32)> = items[0].reviews.iter().map(|r| (r.rating, r.delta_t)).collect();
        assert_eq!(last, vec![(1, 0), (3, 0), (3, 2)]);
    }

    #[test]
    fn too_little_history_is_not_fitted() {
        let history =
            vec![vec![Review { at_ms: 0, rating: Rating::Good }, Review { at_ms: DAY_MS, rating: Rating::Good }]];
        assert!(matches!(fit(&history), Err(FitError::NotEnoughReviews(1))));
    }
}
