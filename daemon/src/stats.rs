//! Rank statistics shared by the evaluation (DeLong's AUC variance) and the heatmap
//! fidelity check (Spearman's ρ between two maps).

/// Midranks (1-based, ties averaged) of `v`, in the order of `v`.
pub fn midranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        // Positions i..=j (0-based) share the mean of ranks i+1..=j+1.
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rank correlation of two series (the common length; ties get midranks);
/// 0 when either is constant or shorter than two.
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let ranks = |v: &[f32]| midranks(&v[..n].iter().map(|x| f64::from(*x)).collect::<Vec<_>>());
    let (ra, rb) = (ranks(a), ranks(b));
    let mean = (n as f64 + 1.0) / 2.0;
    let (mut cov, mut va, mut vb) = (0f64, 0f64, 0f64);
    for (x, y) in ra.iter().zip(&rb) {
        cov += (x - mean) * (y - mean);
        va += (x - mean).powi(2);
        vb += (y - mean).powi(2);
    }
    if va == 0.0 || vb == 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spearman_of_monotone_tied_and_constant_series() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), 0.0);
        // ties get midranks: [1, 2.5, 2.5] vs [1, 2, 3] → ρ = √0.75
        assert!((spearman(&[0.0, 5.0, 5.0], &[1.0, 2.0, 3.0]) - 0.75f64.sqrt()).abs() < 1e-9);
        assert_eq!(midranks(&[3.0, 1.0, 3.0]), vec![2.5, 1.0, 2.5]);
    }
}
