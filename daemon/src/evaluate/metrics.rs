//! Figures of one finding over labelled cases: confusion counts and the rates derived from
//! them at a threshold, the threshold that reaches a target sensitivity, the ROC curve and
//! calibration (expected calibration error over equal-width reliability bins).

use serde::Serialize;

/// Number of equal-width reliability bins over [0, 1].
pub const RELIABILITY_BINS: usize = 10;

/// One labelled score: the model's probability and whether the case has the finding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// Probability of the finding.
    pub probability: f64,
    /// The reference label.
    pub positive: bool,
}

/// Counts and rates at one threshold (a case is called positive when its probability is
/// at least the threshold, as the daemon decides).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// The threshold.
    pub threshold: f64,
    /// TP / (TP + FN).
    pub sensitivity: Option<f64>,
    /// TN / (TN + FP).
    pub specificity: Option<f64>,
    /// TP / (TP + FP); `None` when nothing is called positive.
    pub ppv: Option<f64>,
    /// TN / (TN + FN); `None` when nothing is called negative.
    pub npv: Option<f64>,
    /// True positives.
    pub tp: usize,
    /// False positives.
    pub fp: usize,
    /// True negatives.
    pub tn: usize,
    /// False negatives.
    #[serde(rename = "fn")]
    pub fn_: usize,
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (a + b > 0).then(|| a as f64 / (a + b) as f64)
}

/// The operating point of `cases` at `threshold`.
pub fn at_threshold(cases: &[Scored], threshold: f64) -> OperatingPoint {
    let (mut tp, mut fp, mut tn, mut fn_) = (0, 0, 0, 0);
    for c in cases {
        match (c.probability >= threshold, c.positive) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, false) => tn += 1,
            (false, true) => fn_ += 1,
        }
    }
    OperatingPoint {
        threshold,
        sensitivity: ratio(tp, fn_),
        specificity: ratio(tn, fp),
        ppv: ratio(tp, fp),
        npv: ratio(tn, fn_),
        tp,
        fp,
        tn,
        fn_,
    }
}

/// The highest threshold whose sensitivity is at least `target` (the k-th highest score
/// of the positives, k = ⌈target × positives⌉), with its operating point. `None` without
/// positives.
pub fn at_sensitivity(cases: &[Scored], target: f64) -> Option<OperatingPoint> {
    let mut pos: Vec<f64> = cases
        .iter()
        .filter(|c| c.positive)
        .map(|c| c.probability)
        .collect();
    if pos.is_empty() {
        return None;
    }
    pos.sort_by(|a, b| b.total_cmp(a));
    let k = ((target.clamp(0.0, 1.0) * pos.len() as f64).ceil() as usize).clamp(1, pos.len());
    Some(at_threshold(cases, pos[k - 1]))
}

/// One point of the ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RocPoint {
    /// 1 − specificity.
    pub fpr: f64,
    /// Sensitivity.
    pub tpr: f64,
}

/// The empirical ROC curve from (0, 0) to (1, 1), one point per distinct score.
pub fn roc_curve(cases: &[Scored]) -> Vec<RocPoint> {
    let p = cases.iter().filter(|c| c.positive).count();
    let n = cases.len() - p;
    let mut sorted: Vec<Scored> = cases.to_vec();
    sorted.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    let rate = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let mut points = vec![RocPoint { fpr: 0.0, tpr: 0.0 }];
    let (mut tp, mut fp) = (0, 0);
    for (i, c) in sorted.iter().enumerate() {
        if c.positive {
            tp += 1;
        } else {
            fp += 1;
        }
        let last_of_tie = sorted
            .get(i + 1)
            .is_none_or(|next| next.probability != c.probability);
        if last_of_tie {
            points.push(RocPoint {
                fpr: rate(fp, n),
                tpr: rate(tp, p),
            });
        }
    }
    points
}

/// One reliability bin.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReliabilityBin {
    /// Lower edge (inclusive).
    pub lo: f64,
    /// Upper edge (exclusive, except 1.0 for the last bin).
    pub hi: f64,
    /// Cases whose probability falls in the bin.
    pub n: usize,
    /// Their mean predicted probability (`None` when empty).
    pub mean_predicted: Option<f64>,
    /// The share of them that have the finding (`None` when empty).
    pub observed: Option<f64>,
}

/// Calibration of the probabilities.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Expected calibration error: Σ (n_bin / N) × |mean predicted − observed|; `None`
    /// (JSON `null`) without cases, where there is nothing calibrated to measure.
    pub ece: Option<f64>,
    /// The bins, lowest first.
    pub bins: Vec<ReliabilityBin>,
}

/// Calibration over [`RELIABILITY_BINS`] equal-width bins (no ECE without cases).
pub fn calibration(cases: &[Scored]) -> Calibration {
    let k = RELIABILITY_BINS;
    let mut sum_p = vec![0.0; k];
    let mut hits = vec![0usize; k];
    let mut count = vec![0usize; k];
    for c in cases {
        let p = c.probability.clamp(0.0, 1.0);
        let b = ((p * k as f64) as usize).min(k - 1);
        sum_p[b] += p;
        hits[b] += usize::from(c.positive);
        count[b] += 1;
    }
    let total = cases.len().max(1) as f64;
    let mut ece = 0.0;
    let bins = (0..k)
        .map(|b| {
            let n = count[b];
            let (mean_predicted, observed) = if n == 0 {
                (None, None)
            } else {
                let mp = sum_p[b] / n as f64;
                let ob = hits[b] as f64 / n as f64;
                ece += n as f64 / total * (mp - ob).abs();
                (Some(mp), Some(ob))
            };
            ReliabilityBin {
                lo: b as f64 / k as f64,
                hi: (b + 1) as f64 / k as f64,
                n,
                mean_predicted,
                observed,
            }
        })
        .collect();
    Calibration {
        ece: (!cases.is_empty()).then_some(ece),
        bins,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases(pos: &[f64], neg: &[f64]) -> Vec<Scored> {
        pos.iter()
            .map(|&p| Scored {
                probability: p,
                positive: true,
            })
            .chain(neg.iter().map(|&p| Scored {
                probability: p,
                positive: false,
            }))
            .collect()
    }

    #[test]
    fn rates_at_a_threshold() {
        let c = cases(&[0.9, 0.6, 0.4], &[0.7, 0.3, 0.2, 0.1]);
        let op = at_threshold(&c, 0.5);
        assert_eq!((op.tp, op.fp, op.tn, op.fn_), (2, 1, 3, 1));
        assert_eq!(op.sensitivity, Some(2.0 / 3.0));
        assert_eq!(op.specificity, Some(0.75));
        assert_eq!(op.ppv, Some(2.0 / 3.0));
        assert_eq!(op.npv, Some(0.75));
        // Nothing called positive: PPV is undefined, not zero.
        let op = at_threshold(&c, 0.95);
        assert_eq!(op.ppv, None);
        assert_eq!(op.sensitivity, Some(0.0));
    }

    #[test]
    fn threshold_for_a_target_sensitivity() {
        let c = cases(&[0.9, 0.8, 0.6, 0.4], &[0.7, 0.3, 0.2, 0.1]);
        // 95% of 4 positives needs all 4: the threshold is the lowest positive score.
        let op = at_sensitivity(&c, 0.95).unwrap();
        assert_eq!(op.threshold, 0.4);
        assert_eq!(op.sensitivity, Some(1.0));
        assert_eq!(op.specificity, Some(0.75));
        // 50% needs 2 of 4: the second-highest positive score.
        let op = at_sensitivity(&c, 0.5).unwrap();
        assert_eq!(op.threshold, 0.8);
        assert_eq!(op.sensitivity, Some(0.5));
        assert!(at_sensitivity(&cases(&[], &[0.1]), 0.9).is_none());
    }

    #[test]
    fn roc_curve_runs_corner_to_corner_through_ties() {
        let c = cases(&[0.9, 0.5], &[0.5, 0.1]);
        let roc = roc_curve(&c);
        let pts: Vec<(f64, f64)> = roc.iter().map(|p| (p.fpr, p.tpr)).collect();
        assert_eq!(pts, vec![(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]);
    }

    #[test]
    fn calibration_error_and_bins() {
        // Bin 9 holds 0.9 and 0.95 (one positive): mean 0.925, observed 0.5.
        // Bin 1 holds 0.1 and 0.15 (no positive): mean 0.125, observed 0.
        let c = cases(&[0.9], &[0.95, 0.1, 0.15]);
        let cal = calibration(&c);
        assert_eq!(cal.bins.len(), RELIABILITY_BINS);
        assert_eq!(cal.bins[9].n, 2);
        assert_eq!(cal.bins[1].n, 2);
        assert_eq!(cal.bins[5].mean_predicted, None);
        let expected = 0.5 * (0.925f64 - 0.5).abs() + 0.5 * 0.125;
        let ece = cal.ece.unwrap();
        assert!((ece - expected).abs() < 1e-12, "{ece}");
        // A probability of exactly 1.0 lands in the last bin.
        assert_eq!(calibration(&cases(&[1.0], &[])).bins[9].n, 1);
    }

    /// Without cases there is no calibration error: absent (JSON `null`), not 0.0, which
    /// would read as perfect calibration. Perfectly calibrated cases do give 0.0.
    #[test]
    fn no_cases_have_no_calibration_error() {
        let cal = calibration(&[]);
        assert_eq!(cal.ece, None);
        assert!(cal.bins.iter().all(|b| b.n == 0));
        let json = serde_json::to_value(&cal).unwrap();
        assert!(json["ece"].is_null(), "{json}");
        assert_eq!(calibration(&cases(&[1.0], &[0.0])).ece, Some(0.0));
    }
}
