//! ROC AUC with its DeLong variance (DeLong, DeLong & Clarke-Pearson 1988), in the
//! O(n log n) midrank form of Sun & Xu (2014): no pairwise loop, so it stays fast on a
//! site's full acceptance set.
//!
//! The interval is computed on the logit scale, logit(AUC) ± z·SE / (AUC·(1 − AUC)), and
//! transformed back ([`logit_interval`]): it stays inside [0, 1] without clipping, and
//! widens towards 1 where the normal approximation on the AUC scale is falsely narrow
//! (5 positives and 5 negatives with one pair swapped, AUC 0.96: 0.849–1.000 on the AUC
//! scale, 0.572–0.998 on the logit scale).
//!
//! An interval is never falsely narrow: none when a class has fewer than two cases (its
//! variance cannot be estimated) or the variance is zero from tied scores; at perfect
//! separation, where DeLong's variance is zero too, the exact conservative bound of
//! [`separation_bound`]; and below perfect separation a lower bound never above that
//! bound for the same counts (an upper bound never below its mirror image), since a less
//! complete separation cannot be surer than a perfect one (the 5 and 5 example gives
//! 0.478–0.998).

use crate::stats::midranks;

/// z for a two-sided 95% interval.
pub const Z_95: f64 = 1.959_963_984_540_054;
/// One minus the confidence level of the intervals (two-sided).
pub const ALPHA: f64 = 0.05;

/// Fewest cases of each class for which an interval is given.
pub const MIN_CASES_FOR_INTERVAL: usize = 2;

/// Why an AUC has no DeLong interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoInterval {
    /// A class has fewer than [`MIN_CASES_FOR_INTERVAL`] cases: its variance cannot be
    /// estimated, and an interval would be falsely narrow.
    #[error(
        "no 95% interval: {pos} positive(s) and {neg} negative(s); an interval needs at least \
         {MIN_CASES_FOR_INTERVAL} of each"
    )]
    TooFewCases {
        /// Positives.
        pos: usize,
        /// Negatives.
        neg: usize,
    },
    /// The DeLong variance is zero without perfect separation (e.g. every score tied): it
    /// says nothing of the uncertainty, and an interval of zero width would be false.
    #[error("no 95% interval: the DeLong variance is zero (tied scores)")]
    ZeroVariance,
}

/// How an interval was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntervalMethod {
    /// DeLong's variance and the normal approximation on the logit scale
    /// ([`logit_interval`]).
    DeLong,
    /// As [`IntervalMethod::DeLong`], with a bound held at [`separation_bound`]: the
    /// logit interval would have been surer than perfect separation of the same counts.
    DeLongHeld,
    /// Perfect separation (AUC 1, or 0 when inverted), where the DeLong variance is zero:
    /// the exact conservative bound [`separation_bound`] instead.
    Separation,
}

/// A 95% confidence interval of an AUC.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AucInterval {
    /// DeLong standard error (`None` for the separation bound, which has none).
    pub se: Option<f64>,
    /// Lower bound, in [0, 1].
    pub lo: f64,
    /// Upper bound, in [0, 1].
    pub hi: f64,
    /// How it was obtained.
    pub method: IntervalMethod,
}

/// An AUC with its 95% confidence interval, when one can be given.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AucEstimate {
    /// Area under the ROC curve (ties count one half).
    pub auc: f64,
    /// The 95% interval, or why there is none. Never of zero width.
    pub interval: Result<AucInterval, NoInterval>,
}

fn sample_variance(v: &[f64], mean: f64) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
}

/// The exact conservative 95% lower bound of the AUC when every one of `pos` positives
/// outranks every one of `neg` negatives: (0.025)^(1/k) with k = min(pos, neg). Pairing k
/// positives with k negatives gives k independent pairs, each ordered right with
/// probability at most the true AUC θ, so the observed perfect separation has probability
/// at most θ^k, and θ below the bound is rejected at 2.5%. With 5 and 5 it is 0.478; with
/// 100 and 100, 0.964.
pub fn separation_bound(pos: usize, neg: usize) -> f64 {
    let k = pos.min(neg).max(1) as f64;
    (ALPHA / 2.0).powf(1.0 / k)
}

/// The 95% interval of `auc` (strictly between 0 and 1) with DeLong standard error `se`,
/// computed on the logit scale and transformed back: logit(AUC) ± z·SE / (AUC·(1 − AUC)),
/// the delta-method standard error of logit(AUC). Both bounds are inside (0, 1).
pub fn logit_interval(auc: f64, se: f64) -> (f64, f64) {
    let logit = (auc / (1.0 - auc)).ln();
    let half = Z_95 * se / (auc * (1.0 - auc));
    let expit = |x: f64| 1.0 / (1.0 + (-x).exp());
    (expit(logit - half), expit(logit + half))
}

/// AUC of scores `pos` (cases with the finding) against `neg` (cases without), with its
/// 95% interval: DeLong's on the logit scale ([`logit_interval`], its lower bound never
/// above [`separation_bound`] of the same counts), or that exact bound at perfect
/// separation; none when a class has fewer than [`MIN_CASES_FOR_INTERVAL`] cases or the
/// variance is zero otherwise. `None` when either set is empty.
pub fn delong(pos: &[f64], neg: &[f64]) -> Option<AucEstimate> {
    let (m, n) = (pos.len(), neg.len());
    if m == 0 || n == 0 {
        return None;
    }
    let tx = midranks(pos);
    let ty = midranks(neg);
    let all: Vec<f64> = pos.iter().chain(neg).copied().collect();
    let tz = midranks(&all);
    let (mf, nf) = (m as f64, n as f64);
    // Structural components: per positive, the share of negatives it outranks; per
    // negative, the share of positives that outrank it.
    let v10: Vec<f64> = (0..m).map(|i| (tz[i] - tx[i]) / nf).collect();
    let v01: Vec<f64> = (0..n).map(|j| 1.0 - (tz[m + j] - ty[j]) / mf).collect();
    let auc = v10.iter().sum::<f64>() / mf;
    let interval = if m < MIN_CASES_FOR_INTERVAL || n < MIN_CASES_FOR_INTERVAL {
        Err(NoInterval::TooFewCases { pos: m, neg: n })
    } else if auc >= 1.0 {
        Ok(AucInterval {
            se: None,
            lo: separation_bound(m, n),
            hi: 1.0,
            method: IntervalMethod::Separation,
        })
    } else if auc <= 0.0 {
        Ok(AucInterval {
            se: None,
            lo: 0.0,
            hi: 1.0 - separation_bound(m, n),
            method: IntervalMethod::Separation,
        })
    } else {
        let var = sample_variance(&v10, auc) / mf + sample_variance(&v01, auc) / nf;
        let se = var.max(0.0).sqrt();
        let (lo, hi) = logit_interval(auc, se);
        // Never surer than perfect separation of the same counts would be.
        let bound = separation_bound(m, n);
        let held = lo > bound || hi < 1.0 - bound;
        let (lo, hi) = (lo.min(bound), hi.max(1.0 - bound));
        if se > 0.0 && hi > lo {
            Ok(AucInterval {
                se: Some(se),
                lo,
                hi,
                method: if held {
                    IntervalMethod::DeLongHeld
                } else {
                    IntervalMethod::DeLong
                },
            })
        } else {
            Err(NoInterval::ZeroVariance)
        }
    };
    Some(AucEstimate { auc, interval })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// A synthetic score set with ties inside and across the classes. The expected values
    /// come from the textbook pairwise definition (placement values ψ(x, y) = 1, ½, 0 over
    /// all 80 pairs, sample variances with n − 1), computed in plain Python:
    /// AUC 0.775, SE 0.11320326920513453, 95% CI on the logit scale
    /// 0.49109220072593324–0.9247814958114505.
    #[test]
    fn known_interval_on_a_synthetic_score_set() {
        let pos = [0.95, 0.9, 0.8, 0.8, 0.6, 0.55, 0.4, 0.3];
        let neg = [0.7, 0.6, 0.5, 0.45, 0.35, 0.3, 0.2, 0.1, 0.05, 0.8];
        let e = delong(&pos, &neg).unwrap();
        assert!(close(e.auc, 0.775), "{e:?}");
        let i = e.interval.unwrap();
        assert_eq!(i.method, IntervalMethod::DeLong);
        assert!(close(i.se.unwrap(), 0.113_203_269_205_134_53), "{e:?}");
        assert!(close(i.lo, 0.491_092_200_725_933_24), "{e:?}");
        assert!(close(i.hi, 0.924_781_495_811_450_5), "{e:?}");
    }

    /// Five positives and five negatives with one pair swapped (AUC 0.96): the interval on
    /// the AUC scale was 0.849–1.000, narrower than the 0.478–1.000 of perfect separation
    /// of the same counts. On the logit scale it is 0.572–0.998, and its lower bound is
    /// held at the separation bound: 0.478–0.998. Inverted, the mirror image.
    #[test]
    fn near_perfect_separation_is_never_surer_than_perfect_separation() {
        let pos = [0.95, 0.9, 0.85, 0.8, 0.25];
        let neg = [0.3, 0.2, 0.15, 0.1, 0.05];
        let e = delong(&pos, &neg).unwrap();
        assert!(close(e.auc, 0.96), "{e:?}");
        let i = e.interval.unwrap();
        assert_eq!(
            i.method,
            IntervalMethod::DeLongHeld,
            "the bound held is said"
        );
        assert!(close(i.se.unwrap(), 0.056_568_542_494_923_79), "{e:?}");
        let (lo, hi) = logit_interval(e.auc, i.se.unwrap());
        assert!(close(lo, 0.572_180_762_635_470_2), "{lo}");
        assert!(close(hi, 0.997_683_441_755_320_8), "{hi}");
        assert!(close(i.lo, separation_bound(5, 5)), "{i:?}");
        assert!(close(i.lo, 0.478_176_249_895_018_5), "{i:?}");
        assert!(close(i.hi, 0.997_683_441_755_320_8), "{i:?}");
        let perfect = delong(&[0.9, 0.8, 0.7, 0.95, 0.85], &neg).unwrap();
        assert!(i.lo <= perfect.interval.unwrap().lo, "{i:?} vs {perfect:?}");
        let e = delong(&neg, &pos).unwrap();
        assert!(close(e.auc, 0.04), "{e:?}");
        let i = e.interval.unwrap();
        assert!(close(i.lo, 0.002_316_558_244_679_27), "{i:?}");
        assert!(close(i.hi, 1.0 - separation_bound(5, 5)), "{i:?}");
        assert_eq!(i.method, IntervalMethod::DeLongHeld);
    }

    /// One case in a class: its variance cannot be estimated, so there is no interval
    /// (it was [1, 1] here, and 0.852–1.000 with 1 positive against 20 negatives).
    #[test]
    fn a_class_of_one_case_has_no_interval() {
        let e = delong(&[0.9], &[0.1]).unwrap();
        assert_eq!(e.auc, 1.0);
        assert_eq!(e.interval, Err(NoInterval::TooFewCases { pos: 1, neg: 1 }));
        let neg: Vec<f64> = (0..20).map(|k| f64::from(k) / 40.0).collect();
        let e = delong(&[0.3], &neg).unwrap();
        assert!(e.auc > 0.5 && e.auc < 1.0, "{e:?}");
        assert!(e.interval.is_err(), "{e:?}");
        assert!(delong(&neg, &[0.3]).unwrap().interval.is_err());
    }

    /// Perfect separation has DeLong variance zero: never a zero-width interval, but the
    /// exact conservative bound; tied scores have none.
    #[test]
    fn perfect_separation_and_ties_have_no_zero_width_interval() {
        let pos = [0.9, 0.8, 0.7, 0.95, 0.85];
        let neg = [0.1, 0.2, 0.3, 0.15, 0.25];
        let e = delong(&pos, &neg).unwrap();
        assert_eq!(e.auc, 1.0);
        let i = e.interval.unwrap();
        assert_eq!(i.method, IntervalMethod::Separation);
        assert_eq!(i.hi, 1.0);
        assert!((i.lo - 0.025_f64.powf(0.2)).abs() < 1e-12, "{i:?}");
        assert!(i.lo < 0.5, "{i:?}");
        let e = delong(&neg, &pos).unwrap();
        assert_eq!(e.auc, 0.0);
        let i = e.interval.unwrap();
        assert_eq!((i.lo, i.method), (0.0, IntervalMethod::Separation));
        assert!(i.hi > 0.5, "{i:?}");
        // The bound tightens with the cases: 100 of each.
        assert!((separation_bound(100, 120) - 0.9638).abs() < 1e-4);
        let e = delong(&[0.5, 0.5], &[0.5, 0.5, 0.5]).unwrap();
        assert_eq!(e.auc, 0.5);
        assert_eq!(e.interval, Err(NoInterval::ZeroVariance));
        assert!(delong(&[], &[0.1]).is_none());
        assert!(delong(&[0.1], &[]).is_none());
    }

    #[test]
    fn midranks_average_ties() {
        assert_eq!(midranks(&[3.0, 1.0, 3.0, 2.0]), vec![3.5, 1.0, 3.5, 2.0]);
    }
}
