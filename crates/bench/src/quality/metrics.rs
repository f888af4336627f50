//! Prediction and recovery metrics.

/// Mean negative log likelihood of the outcomes.
pub fn log_loss(predictions: &[f64], outcomes: &[bool]) -> f64 {
    let total: f64 = predictions
        .iter()
        .zip(outcomes)
        .map(|(p, y)| {
            let p = p.clamp(1e-6, 1.0 - 1e-6);
            if *y { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum();
    total / predictions.len().max(1) as f64
}

/// Calibration error: predictions grouped into `bins` equal-width bins; the root of the
/// count-weighted mean squared gap between mean prediction and observed rate per bin.
pub fn rmse_bins(predictions: &[f64], outcomes: &[bool], bins: usize) -> f64 {
    let weighted: f64 = calibration(predictions, outcomes, bins)
        .iter()
        .map(|b| b.count as f64 * (b.predicted - b.observed).powi(2))
        .sum();
    (weighted / predictions.len().max(1) as f64).sqrt()
}

/// One bin of a calibration curve.
#[derive(Debug, Clone, Copy)]
pub struct Bin {
    pub predicted: f64,
    pub observed: f64,
    pub count: usize,
}

pub fn calibration(predictions: &[f64], outcomes: &[bool], bins: usize) -> Vec<Bin> {
    let mut sums = vec![(0.0, 0.0, 0usize); bins];
    for (p, y) in predictions.iter().zip(outcomes) {
        let b = ((p * bins as f64) as usize).min(bins - 1);
        sums[b].0 += p;
        sums[b].1 += f64::from(u8::from(*y));
        sums[b].2 += 1;
    }
    sums.into_iter()
        .filter(|s| s.2 > 0)
        .map(|(p, y, n)| Bin { predicted: p / n as f64, observed: y / n as f64, count: n })
        .collect()
}

/// Area under the ROC curve: the chance a random success is predicted above a random failure.
pub fn auc(predictions: &[f64], outcomes: &[bool]) -> f64 {
    let ranks = ranks(predictions);
    let positives = outcomes.iter().filter(|y| **y).count() as f64;
    let negatives = outcomes.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    let rank_sum: f64 = ranks.iter().zip(outcomes).filter(|(_, y)| **y).map(|(r, _)| r).sum();
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

/// Spearman's rank correlation.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = x.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|b| (b - my).powi(2)).sum();
    cov / (vx * vy).sqrt()
}

/// 1-based ranks, ties sharing their mean rank.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|a, b| values[*a].total_cmp(&values[*b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[order[k]] = rank;
        }
        i = j + 1;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_useless_predictions_score_as_expected() {
        let outcomes = [true, false, true, false];
        assert!((auc(&[0.9, 0.1, 0.8, 0.2], &outcomes) - 1.0).abs() < 1e-12);
        assert!((auc(&[0.5; 4], &outcomes) - 0.5).abs() < 1e-12);
        assert!((log_loss(&[0.5; 4], &outcomes) - 2f64.ln()).abs() < 1e-12);
        assert!(rmse_bins(&[0.5; 4], &outcomes, 20) < 1e-12);
        // Always 0.9 where half succeed: off by 0.4 in the one bin used.
        assert!((rmse_bins(&[0.9; 4], &outcomes, 20) - 0.4).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 35.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    }
}
