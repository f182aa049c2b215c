//! Raw network outputs → probabilities (as the manifest's activation says) → findings with
//! thresholds; background classes are dropped.

use super::manifest::{Activation, Manifest};
use crate::result::Finding;

/// Probabilities from raw outputs.
pub fn probabilities(raw: &[f32], activation: Activation) -> Vec<f32> {
    match activation {
        Activation::None => raw.iter().map(|p| p.clamp(0.0, 1.0)).collect(),
        Activation::Sigmoid => raw.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect(),
        Activation::Softmax => {
            let max = raw.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exp: Vec<f32> = raw.iter().map(|x| (x - max).exp()).collect();
            let sum: f32 = exp.iter().sum();
            exp.iter().map(|e| e / sum).collect()
        }
    }
}

/// Why outputs cannot be read as findings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the network gave {got} outputs, the manifest lists {expected} labels")]
pub struct OutputMismatch {
    /// Values received.
    pub got: usize,
    /// Labels in the manifest.
    pub expected: usize,
}

/// Findings (non-background labels, in model order) from one image's raw outputs.
pub fn findings(manifest: &Manifest, raw: &[f32]) -> Result<Vec<Finding>, OutputMismatch> {
    if raw.len() != manifest.labels.len() {
        return Err(OutputMismatch {
            got: raw.len(),
            expected: manifest.labels.len(),
        });
    }
    let probs = probabilities(raw, manifest.output.activation);
    Ok(manifest
        .labels
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.background)
        .map(|(i, l)| {
            let threshold = manifest.threshold(i);
            Finding {
                label: l.name.clone(),
                code: l.code.clone(),
                probability: probs[i],
                threshold,
                positive: probs[i] >= threshold,
                standard: l.standard.clone(),
            }
        })
        .collect())
}

/// Index (in model output order) of the finding a heatmap should explain: the most
/// probable positive one, else the most probable one.
pub fn heatmap_target(manifest: &Manifest, found: &[Finding]) -> Option<usize> {
    let best = found
        .iter()
        .filter(|f| f.positive)
        .max_by(|a, b| a.probability.total_cmp(&b.probability))
        .or_else(|| {
            found
                .iter()
                .max_by(|a, b| a.probability.total_cmp(&b.probability))
        })?;
    manifest.labels.iter().position(|l| l.code == best.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations() {
        let s = probabilities(&[0.0, 2.0_f32.ln()], Activation::Softmax);
        assert!((s[0] - 1.0 / 3.0).abs() < 1e-6 && (s[1] - 2.0 / 3.0).abs() < 1e-6);
        let g = probabilities(&[0.0, 100.0], Activation::Sigmoid);
        assert_eq!(g[0], 0.5);
        assert!(g[1] > 0.999);
        assert_eq!(probabilities(&[0.25], Activation::None), vec![0.25]);
    }

    #[test]
    fn background_classes_are_not_findings() {
        let m = Manifest::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../models/pneumonia-xception/model.toml"),
        )
        .unwrap();
        let f = findings(&m, &[0.3, 0.7]).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].code.as_str(), f[0].positive), ("PNEUMONIA", true));
        assert_eq!(heatmap_target(&m, &f), Some(1));
        assert!(findings(&m, &[0.3]).is_err());
    }
}
