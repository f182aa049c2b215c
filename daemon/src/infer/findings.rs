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

/// Why outputs cannot be read as findings (the image is then an analysis error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutputError {
    /// Not one value per label.
    #[error("the network gave {got} outputs, the manifest lists {expected} labels")]
    Count {
        /// Values received.
        got: usize,
        /// Labels in the manifest.
        expected: usize,
    },
    /// A value (or the probability made from it) is NaN or infinite: no probability, and
    /// never a normal result.
    #[error("the network gave no probability for {code}: output {index} is {value}")]
    NotFinite {
        /// Output index.
        index: usize,
        /// Code of that output's label.
        code: String,
        /// The value.
        value: f32,
    },
}

/// The first value of `values` that is not finite, as the error naming its label.
fn first_non_finite(manifest: &Manifest, values: &[f32]) -> Option<OutputError> {
    let index = values.iter().position(|v| !v.is_finite())?;
    Some(OutputError::NotFinite {
        index,
        code: manifest
            .labels
            .get(index)
            .map(|l| l.code.clone())
            .unwrap_or_default(),
        value: values.get(index).copied().unwrap_or(f32::NAN),
    })
}

/// Findings (non-background labels, in model order) from one image's raw outputs. Raw
/// outputs and probabilities must all be finite numbers.
pub fn findings(manifest: &Manifest, raw: &[f32]) -> Result<Vec<Finding>, OutputError> {
    if raw.len() != manifest.labels.len() {
        return Err(OutputError::Count {
            got: raw.len(),
            expected: manifest.labels.len(),
        });
    }
    if let Some(e) = first_non_finite(manifest, raw) {
        return Err(e);
    }
    let probs = probabilities(raw, manifest.output.activation);
    if let Some(e) = first_non_finite(manifest, &probs) {
        return Err(e);
    }
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
    use std::path::Path;

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

    /// A NaN or infinite output is no probability: never a normal (or any) finding, but
    /// an error for the image, whatever the activation.
    #[test]
    fn a_non_finite_output_is_an_error_not_a_normal_finding() {
        let base =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pneumonia-xception/model.toml");
        let mut m = Manifest::load(&base).unwrap();
        for activation in [Activation::None, Activation::Sigmoid, Activation::Softmax] {
            m.output.activation = activation;
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                for raw in [[0.3, bad], [bad, 0.3]] {
                    let got = findings(&m, &raw);
                    assert!(got.is_err(), "{activation:?} {raw:?}: {got:?}");
                }
            }
            assert!(findings(&m, &[0.1, 0.2]).is_ok());
        }
    }

    /// The image result of a NaN output is an error, with no findings to report.
    #[test]
    fn an_image_with_a_nan_output_is_an_analysis_error() {
        let base =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/pneumonia-xception/model.toml");
        let m = Manifest::load(&base).unwrap();
        let prepared = crate::infer::analyse::Prepared {
            sop_instance_uid: Some("1.2.3".into()),
            tensor: Vec::new(),
            source: (1, 1),
            timings: crate::result::Timings::default(),
            caveat: None,
        };
        let r = crate::infer::analyse::analysed(&m, &prepared, &[0.2, f32::NAN], 1.0);
        assert_eq!(r.status, crate::result::ImageStatus::Error);
        assert!(r.findings.is_empty());
        assert!(r.reason.is_some_and(|why| why.contains("PNEUMONIA")));
    }
}
