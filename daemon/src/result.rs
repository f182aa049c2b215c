//! The study result record: what inference found in a study, per image and for the study,
//! with the model that found it and how long each stage took. Stored in the `results` tree
//! (see [`crate::store::results`]); HL7, MQTT, DICOM SR and the console read it.

use serde::{Deserialize, Serialize};

/// A concept of a standard terminology: SNOMED CT (`SCT`), RadLex (`RADLEX`), DICOM
/// (`DCM`) or LOINC (`LN`), as DICOM code items and HL7 CWE components carry it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Concept {
    /// Code value (e.g. `233604007`).
    pub code: String,
    /// Coding scheme designator (e.g. `SCT`).
    pub scheme: String,
    /// Code meaning (e.g. `Pneumonia`).
    pub meaning: String,
}

/// One finding of one image (or of the study: the maximum over its images).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Finding {
    /// Display name (e.g. `Pneumonia`).
    pub label: String,
    /// Code in the model's coding scheme (e.g. `PNEUMONIA`).
    pub code: String,
    /// Probability in [0, 1].
    pub probability: f32,
    /// Decision threshold from the manifest.
    pub threshold: f32,
    /// `probability >= threshold`.
    pub positive: bool,
    /// The finding in a standard terminology, when the manifest maps its label to one
    /// (results made before manifests carried standard codes have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard: Option<Concept>,
}

/// What happened to one image.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImageStatus {
    /// The model ran on it.
    Analysed,
    /// Not an image the model is for (lateral view, CT, report object...): see the reason.
    NotApplicable,
    /// It should have been analysed but could not be (undecodable...): see the reason.
    Error,
}

impl ImageStatus {
    /// The status as the offline tool and the API print it.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Analysed => "analysed",
            ImageStatus::NotApplicable => "not_applicable",
            ImageStatus::Error => "error",
        }
    }
}

/// Milliseconds spent per stage.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    /// Reading and decoding pixel data to the display image.
    pub decode_ms: f64,
    /// Crop, resize and normalisation.
    pub preprocess_ms: f64,
    /// The inference call (queue wait included).
    pub infer_ms: f64,
    /// Heatmap computation (filled in later; 0 until then).
    #[serde(default)]
    pub heatmap_ms: f64,
}

impl Timings {
    /// Stage-wise sum.
    pub fn add(&mut self, o: &Timings) {
        self.decode_ms += o.decode_ms;
        self.preprocess_ms += o.preprocess_ms;
        self.infer_ms += o.infer_ms;
        self.heatmap_ms += o.heatmap_ms;
    }
}

/// State of an image's heatmap (computed after the result is recorded).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum HeatmapState {
    /// No heatmap for this image (not analysed).
    #[default]
    None,
    /// Waiting for the heatmap worker.
    Pending {
        /// Code of the finding it explains.
        code: String,
    },
    /// Stored as a PNG.
    Done {
        /// Code of the finding it explains.
        code: String,
        /// PNG path relative to the data directory.
        path: String,
    },
    /// Not computed, and why (e.g. backlog).
    Skipped {
        /// Why.
        reason: String,
    },
    /// Computation failed.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The result of one image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageResult {
    /// SOP Instance UID (empty for files without one).
    pub sop_instance_uid: String,
    /// Series Instance UID.
    #[serde(default)]
    pub series_instance_uid: String,
    /// Analysed, not applicable or error.
    pub status: ImageStatus,
    /// Why it was not analysed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What a reader must know about an analysed image (e.g. the patient's age is unknown,
    /// so whether it is within the model's intended use could not be checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caveat: Option<String>,
    /// Findings (background classes excluded), in model order.
    pub findings: Vec<Finding>,
    /// Stage timings.
    pub timings: Timings,
    /// The heatmap.
    #[serde(default)]
    pub heatmap: HeatmapState,
}

/// The model that produced a result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelInfo {
    /// Manifest name.
    pub name: String,
    /// Manifest version.
    pub version: String,
    /// SHA-256 of the network file.
    pub sha256: String,
    /// SHA-256 of the weights of the network that ran (empty in results recorded before
    /// it was kept, or for a network without a separate weights file).
    #[serde(default)]
    pub weights_sha256: String,
    /// Arithmetic precision the network ran at (f32, bf16, int8; results recorded before
    /// precisions existed ran at f32).
    #[serde(default = "f32_name")]
    pub precision: String,
    /// Coding scheme designator of the model's own label codes (a `99…` local scheme).
    #[serde(default = "local_scheme")]
    pub coding_scheme: String,
}

/// The precision of results recorded before precisions existed.
pub fn f32_name() -> String {
    "f32".into()
}

/// The local coding scheme of results recorded before the scheme was kept with them.
pub fn local_scheme() -> String {
    crate::infer::manifest::LOCAL_SCHEME.into()
}

/// The result of one study, version `version` (n+1 when instances arrive after a result).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StudyResult {
    /// Deterministic id of (study UID, version): the idempotency key of every message.
    pub report_id: String,
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Result version, from 1.
    pub version: u32,
    /// Per image, in series/instance order.
    pub images: Vec<ImageResult>,
    /// Per finding, the maximum over the analysed images.
    pub findings: Vec<Finding>,
    /// Any study-level finding is positive.
    pub triage: bool,
    /// The model.
    pub model: ModelInfo,
    /// Sum of the image timings.
    pub timings: Timings,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: i64,
}

fn distinct<'a>(items: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut seen: Vec<&str> = Vec::new();
    for i in items {
        if !seen.contains(&i) {
            seen.push(i);
        }
    }
    (!seen.is_empty()).then(|| seen.join("; "))
}

/// Most distinct reasons a [`Unanalysed`] names; further ones are counted, not named.
pub const MAX_UNANALYSED_REASONS: usize = 3;

/// Whether a not-applicable image was left out because the model is not for it: not an
/// image, a secondary capture not marked as an upload, another modality, body part or view,
/// a raw detector image, too small, or outside the intended use the manifest declares (the
/// reasons [`crate::infer::eligibility`] gives). Any other reason (too large to decode,
/// pixel data pruned, a reason not known here) leaves an image the model is for
/// unanalysed, and is said as such.
pub fn outside_scope(reason: &str) -> bool {
    const PREFIXES: [&str; 7] = [
        "not an image",
        "secondary capture not marked",
        "modality ",
        "body part ",
        "lateral view",
        "view ",
        "a FOR PROCESSING image",
    ];
    let r = reason.trim();
    PREFIXES.iter().any(|p| r.starts_with(p))
        || r.contains(" outside the model's ")
        || r.contains("smaller than the model's minimum side")
}

/// The category of the reason an image the model is for was not analysed: words of the
/// product only (never the decoder's text, which may name a file), so that every channel,
/// the cloud included, can carry it.
fn unanalysed_category(status: ImageStatus, reason: &str) -> &'static str {
    let r = reason.trim();
    if r.starts_with("image too large to analyse") {
        "image too large to analyse"
    } else if r.contains("pruned") {
        "pixel data pruned by retention"
    } else if r.starts_with("cannot read DICOM file") {
        "unreadable file"
    } else if r.starts_with("cannot decode")
        || r.starts_with("invalid pixel data")
        || r.starts_with("decoder panicked")
    {
        "decode error"
    } else if status == ImageStatus::Error {
        "analysis error"
    } else {
        "not analysed"
    }
}

/// The images of a partly analysed study that the model is for but that were not analysed
/// (failed, or refused for their size...): the study's findings are those of the other
/// images only, so its result must never read as a plain negative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unanalysed {
    /// Images not analysed.
    pub count: usize,
    /// Images the model is for: those analysed and these.
    pub of: usize,
    /// Distinct reason categories, in image order (see [`MAX_UNANALYSED_REASONS`]).
    pub reasons: Vec<&'static str>,
}

impl Unanalysed {
    /// The caveat: e.g. "1 of 2 images could not be analysed (decode error); the result
    /// covers the analysed images only". Product words only: every channel carries it.
    pub fn describe(&self) -> String {
        let mut why = self
            .reasons
            .iter()
            .take(MAX_UNANALYSED_REASONS)
            .copied()
            .collect::<Vec<_>>()
            .join("; ");
        if self.reasons.len() > MAX_UNANALYSED_REASONS {
            why.push_str("; other reasons");
        }
        format!(
            "{} of {} images could not be analysed ({why}); the result covers the analysed \
             images only",
            self.count, self.of
        )
    }
}

impl StudyResult {
    /// Why the study was not analysed, when no image was analysed and some were not
    /// applicable (e.g. "age 45 y outside the model's 1–5 y"); distinct reasons joined.
    pub fn not_applicable_reason(&self) -> Option<String> {
        if self
            .images
            .iter()
            .any(|i| i.status == ImageStatus::Analysed)
        {
            return None;
        }
        distinct(
            self.images
                .iter()
                .filter(|i| i.status == ImageStatus::NotApplicable)
                .filter_map(|i| i.reason.as_deref()),
        )
    }

    /// The images the model is for that were not analysed, when others were (a study none
    /// of whose images was analysed is not applicable or failed instead): every image in
    /// error, and every one not applicable for a reason other than the model not being for
    /// it ([`outside_scope`]).
    pub fn unanalysed(&self) -> Option<Unanalysed> {
        let analysed = self
            .images
            .iter()
            .filter(|i| i.status == ImageStatus::Analysed)
            .count();
        if analysed == 0 {
            return None;
        }
        let mut count = 0;
        let mut reasons: Vec<&'static str> = Vec::new();
        for i in &self.images {
            let reason = i.reason.as_deref().unwrap_or_default();
            let missed = match i.status {
                ImageStatus::Analysed => false,
                ImageStatus::Error => true,
                ImageStatus::NotApplicable => !outside_scope(reason),
            };
            if missed {
                count += 1;
                let category = unanalysed_category(i.status, reason);
                if !reasons.contains(&category) {
                    reasons.push(category);
                }
            }
        }
        (count > 0).then_some(Unanalysed {
            count,
            of: analysed + count,
            reasons,
        })
    }

    /// What a reader must know about the study's findings, distinct parts joined: first
    /// that images the model is for were not analysed ([`StudyResult::unanalysed`]), then
    /// the caveats of the analysed images (e.g. the patient's age is unknown).
    pub fn caveat(&self) -> Option<String> {
        let unanalysed = self.unanalysed().map(|u| u.describe());
        distinct(
            unanalysed.as_deref().into_iter().chain(
                self.images
                    .iter()
                    .filter(|i| i.status == ImageStatus::Analysed)
                    .filter_map(|i| i.caveat.as_deref()),
            ),
        )
    }
}

/// `report_id` of (study UID, version): the first 32 hex digits of
/// SHA-256(`study_uid` NUL `version`).
pub fn report_id(study_uid: &str, version: u32) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(study_uid.as_bytes());
    ctx.update(&[0]);
    ctx.update(version.to_string().as_bytes());
    hex::encode(&ctx.finish().as_ref()[..16])
}

/// Study-level findings: per code, the maximum probability over the images' findings.
pub fn study_findings(images: &[ImageResult]) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    for f in images
        .iter()
        .filter(|i| i.status == ImageStatus::Analysed)
        .flat_map(|i| &i.findings)
    {
        match out.iter_mut().find(|o| o.code == f.code) {
            Some(o) if f.probability > o.probability => *o = f.clone(),
            Some(_) => {}
            None => out.push(f.clone()),
        }
    }
    out
}

/// `value` as shown with `decimals` digits, rounded toward the side of `threshold` (on the
/// same scale) that the decision `positive` is on: a probability just under its threshold
/// is never printed equal to it beside "absent", nor one at it below it beside "present".
pub fn shown(value: f64, threshold: f64, positive: bool, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    let round = |v: f64| (v * scale).round() / scale;
    let (near, limit) = (round(value), round(threshold));
    if positive && near < limit {
        (value * scale).ceil() / scale
    } else if !positive && near >= limit {
        ((value * scale).floor() / scale).min(limit - 1.0 / scale)
    } else {
        near
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// Finding `code` at probability `p`, threshold 0.5.
    pub fn finding(code: &str, p: f32) -> Finding {
        Finding {
            label: code.into(),
            code: code.into(),
            probability: p,
            threshold: 0.5,
            positive: p >= 0.5,
            standard: None,
        }
    }

    /// Version 1 of the result of `study`, made from `images` by model `m` 1.
    pub fn study_result(study: &str, images: Vec<ImageResult>) -> StudyResult {
        StudyResult {
            report_id: report_id(study, 1),
            study_instance_uid: study.into(),
            version: 1,
            findings: study_findings(&images),
            images,
            triage: false,
            model: ModelInfo {
                name: "m".into(),
                version: "1".into(),
                sha256: "00".into(),
                weights_sha256: String::new(),
                precision: "f32".into(),
                coding_scheme: local_scheme(),
            },
            timings: Timings::default(),
            created_at: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shown probability stays on its decision's side of the shown threshold: just
    /// under it is never printed equal to it beside "absent"; elsewhere plain rounding.
    #[test]
    fn shown_probabilities_keep_their_side_of_the_threshold() {
        let p = f64::from(0.499_999_97f32);
        assert_eq!(format!("{:.6}", shown(p, 0.5, false, 6)), "0.499999");
        assert_eq!(format!("{:.0}", shown(49.6, 50.0, false, 0)), "49");
        assert_eq!(format!("{:.0}", shown(49.6, 50.0, true, 0)), "50");
        assert_eq!(format!("{:.6}", shown(0.5, 0.5, true, 6)), "0.500000");
        assert_eq!(
            format!("{:.6}", shown(0.123_456_7, 0.5, false, 6)),
            "0.123457"
        );
        assert_eq!(format!("{:.0}", shown(90.2, 50.0, true, 0)), "90");
    }

    use fixtures::finding as f;

    fn img(status: ImageStatus, findings: Vec<Finding>) -> ImageResult {
        ImageResult {
            sop_instance_uid: "1".into(),
            series_instance_uid: String::new(),
            status,
            reason: None,
            caveat: None,
            findings,
            timings: Timings::default(),
            heatmap: HeatmapState::None,
        }
    }

    fn study(images: Vec<ImageResult>) -> StudyResult {
        super::fixtures::study_result("1", images)
    }

    #[test]
    fn study_not_applicable_reason_and_caveat() {
        let na = |r: &str| ImageResult {
            reason: Some(r.into()),
            ..img(ImageStatus::NotApplicable, vec![])
        };
        let s = study(vec![
            na("age 45 y"),
            na("lateral view (LL)"),
            na("age 45 y"),
        ]);
        assert_eq!(
            s.not_applicable_reason().as_deref(),
            Some("age 45 y; lateral view (LL)")
        );
        assert_eq!(s.caveat(), None);
        // One analysed image: the study is analysed; its caveat is the study's.
        let analysed = ImageResult {
            caveat: Some("patient age unknown".into()),
            ..img(ImageStatus::Analysed, vec![f("A", 0.2)])
        };
        let s = study(vec![na("lateral view (LL)"), analysed]);
        assert_eq!(s.not_applicable_reason(), None);
        assert_eq!(s.caveat().as_deref(), Some("patient age unknown"));
    }

    #[test]
    fn report_id_is_deterministic_per_study_and_version() {
        let a = report_id("1.2.3", 1);
        assert_eq!(a.len(), 32);
        assert_eq!(a, report_id("1.2.3", 1));
        assert_ne!(a, report_id("1.2.3", 2));
        assert_ne!(a, report_id("1.2.31", 1));
    }

    #[test]
    fn study_level_is_the_maximum_over_analysed_images() {
        let images = vec![
            img(ImageStatus::Analysed, vec![f("A", 0.2), f("B", 0.9)]),
            img(ImageStatus::Analysed, vec![f("A", 0.7), f("B", 0.1)]),
            img(ImageStatus::Error, vec![f("A", 1.0)]),
        ];
        let s = study_findings(&images);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].code.as_str(), s[0].probability, s[0].positive),
            ("A", 0.7, true)
        );
        assert_eq!(s[1].probability, 0.9);
    }
}
