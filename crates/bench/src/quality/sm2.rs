//! SM-2 (SuperMemo 2, 1987), the baseline most spaced-repetition tools started from: an ease
//! factor per item and intervals of 1 day, 6 days, then the last interval times the ease.

use alp_proto::common::v1::Rating;

/// One item's SM-2 state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sm2 {
    repetitions: u32,
    ease: f64,
    interval_days: f64,
}

impl Default for Sm2 {
    fn default() -> Self {
        Self { repetitions: 0, ease: 2.5, interval_days: 0.0 }
    }
}

/// SM-2's 0–5 answer quality for our four ratings.
pub fn quality(rating: Rating) -> f64 {
    match rating {
        Rating::Again | Rating::Unspecified => 1.0,
        Rating::Hard => 3.0,
        Rating::Good => 4.0,
        Rating::Easy => 5.0,
    }
}

impl Sm2 {
    /// The interval the last review scheduled, in days (0 before the first).
    pub fn interval_days(&self) -> f64 {
        self.interval_days
    }

    /// Applies a scheduled review (not a same-day repeat) and returns the next interval in days.
    pub fn review(&mut self, rating: Rating) -> f64 {
        let q = quality(rating);
        if q < 3.0 {
            self.repetitions = 0;
            self.interval_days = 1.0;
        } else {
            self.interval_days = match self.repetitions {
                0 => 1.0,
                1 => 6.0,
                _ => (self.interval_days * self.ease).round(),
            };
            self.repetitions += 1;
        }
        self.ease = (self.ease + 0.1 - (5.0 - q) * (0.08 + (5.0 - q) * 0.02)).max(1.3);
        self.interval_days
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_grow_by_the_ease_and_a_lapse_starts_over() {
        let mut card = Sm2::default();
        let intervals: Vec<f64> = (0..4).map(|_| card.review(Rating::Good)).collect();
        assert_eq!(intervals, [1.0, 6.0, 15.0, 38.0], "ease stays 2.5 on quality 4");
        assert_eq!(card.review(Rating::Again), 1.0);
        assert_eq!(card.review(Rating::Good), 1.0);
        assert_eq!(card.review(Rating::Good), 6.0);
        assert!(card.ease < 2.5, "a lapse lowers the ease");
    }
}
