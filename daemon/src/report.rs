//! The domain records made from a study result for the world outside: the [`Report`]
//! every message and result object is built from, and a radiologist's [`Feedback`] on it.
//!
//! Kept apart from the inference result type on purpose: the record stage
//! ([`crate::record`]) converts a result into a [`Report`] together with the [`StudyRecord`]
//! of the study ([`Report::from_result`]), and from then on every message (HL7, MQTT, DICOM
//! push) and result object (SR, SC) is built from this one value.

use crate::model::StudyRecord;
/// One finding of a report: the study-level finding of the result (the maximum over its
/// images). The wire formats are views of it (HL7 OBX, the MQTT `findings` of schema v1).
pub use crate::result::Finding;
use crate::result::{ImageStatus, StudyResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A study report, as delivered to the RIS, the cloud and PACS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Idempotency key of every message made from this report (derived from the study
    /// and the version). It goes to the cloud as is, so it must not be a raw DICOM UID.
    pub report_id: String,
    /// Result version: 1 for the first result of a study, n+1 when later instances arrive.
    pub version: u32,
    /// Patient and study attributes of the study.
    pub study: StudyRecord,
    /// Findings, in the model's label order.
    pub findings: Vec<Finding>,
    /// The study is triaged urgent (a finding reached its threshold).
    pub triage: bool,
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// SHA-256 of the model's network file (hex).
    pub model_sha256: String,
    /// SHA-256 of the weights that ran (hex; empty when not recorded).
    #[serde(default)]
    pub model_weights_sha256: String,
    /// Arithmetic precision the model ran at (`f32`, `bf16`, `int8`).
    #[serde(default = "crate::result::f32_name")]
    pub model_precision: String,
    /// Coding scheme of the findings' local codes (the model manifest's).
    #[serde(default = "crate::result::local_scheme")]
    pub coding_scheme: String,
    /// Stage timings in milliseconds (e.g. `decode`, `infer`, `total`).
    pub timings_ms: BTreeMap<String, f64>,
    /// SOP Instance UIDs of the images the report was made from.
    pub source_sop_instance_uids: Vec<String>,
    /// Why the study was not analysed: outside the model's intended use (e.g. "age 45 y
    /// outside the model's 1–5 y"). The report then has no findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_applicable: Option<String>,
    /// What a reader must know about the findings: that images the model is for were not
    /// analysed ("1 of 2 images could not be analysed (decode error); …", so that a partly
    /// analysed study never reads as a plain negative), the patient's age is unknown...
    /// ([`StudyResult::caveat`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caveat: Option<String>,
    /// When the result was made, seconds since the Unix epoch.
    pub created_at: i64,
}

impl Report {
    /// The report of `result` for `study`: its findings, model, timings and the images it
    /// was made from (those analysed).
    pub fn from_result(result: &StudyResult, study: &StudyRecord) -> Report {
        let mut timings = BTreeMap::new();
        timings.insert("decode".to_string(), result.timings.decode_ms);
        timings.insert("preprocess".to_string(), result.timings.preprocess_ms);
        timings.insert("infer".to_string(), result.timings.infer_ms);
        Report {
            report_id: result.report_id.clone(),
            version: result.version,
            study: study.clone(),
            findings: result.findings.clone(),
            triage: result.triage,
            model_name: result.model.name.clone(),
            model_version: result.model.version.clone(),
            model_sha256: result.model.sha256.clone(),
            model_weights_sha256: result.model.weights_sha256.clone(),
            model_precision: result.model.precision.clone(),
            coding_scheme: result.model.coding_scheme.clone(),
            timings_ms: timings,
            source_sop_instance_uids: result
                .images
                .iter()
                .filter(|i| i.status == ImageStatus::Analysed)
                .map(|i| i.sop_instance_uid.clone())
                .collect(),
            not_applicable: result.not_applicable_reason(),
            caveat: result.caveat(),
            created_at: crate::clock::now_secs(),
        }
    }

    /// What every message says besides the findings: why the study was not analysed, or
    /// the caveat of its findings (HL7 NTE, SR comments).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if let Some(reason) = &self.not_applicable {
            notes.push(format!(
                "Not applicable: outside the model's intended use ({reason}); not analysed."
            ));
        }
        if let Some(caveat) = &self.caveat {
            notes.push(format!("Caveat: {caveat}"));
        }
        notes
    }
}

/// A radiologist's feedback on a study's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// Study Instance UID.
    pub study_uid: String,
    /// Who gave it.
    pub user: String,
    /// Agrees with the AI result.
    pub agree: bool,
    /// Free-text comment (may be empty).
    pub comment: String,
    /// The finding it is about, when it is about one (label), else the whole result.
    #[serde(default)]
    pub finding: Option<String>,
    /// Result version it refers to.
    #[serde(default)]
    pub result_version: u32,
    /// When, milliseconds since the epoch.
    pub at_ms: i64,
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A report with awkward characters in every free-text field.
    pub fn report() -> Report {
        Report {
            report_id: "r-7f3a9c2e01".into(),
            version: 1,
            study: StudyRecord {
                study_instance_uid: "1.2.826.0.1.3680043.8.498.1".into(),
                patient_id: "PAT|001^X".into(),
                patient_name: "Conceição^João^Maria^Dr.^Jr.".into(),
                patient_birth_date: "19800215".into(),
                patient_sex: "M".into(),
                accession_number: "ACC&42".into(),
                study_date: "20240131".into(),
                study_time: "093015.123456".into(),
                study_description: "Tórax PA\\AP ~ test".into(),
                ..Default::default()
            },
            findings: vec![
                Finding {
                    label: "Pneumonia".into(),
                    code: "PNEUMONIA".into(),
                    probability: 0.87346,
                    threshold: 0.5,
                    positive: true,
                    standard: Some(crate::result::Concept {
                        code: "233604007".into(),
                        scheme: "SCT".into(),
                        meaning: "Pneumonia".into(),
                    }),
                },
                Finding {
                    label: "Pleural effusion".into(),
                    code: "EFFUSION".into(),
                    probability: 0.12,
                    threshold: 0.4,
                    positive: false,
                    standard: None,
                },
            ],
            triage: true,
            model_name: "pneumonia-xception".into(),
            model_version: "1.0.0".into(),
            model_sha256: "ab".repeat(32),
            model_weights_sha256: "cd".repeat(32),
            model_precision: "f32".into(),
            coding_scheme: "99DULI".into(),
            timings_ms: [("infer".to_string(), 27.5), ("total".to_string(), 80.25)]
                .into_iter()
                .collect(),
            source_sop_instance_uids: vec!["1.2.826.0.1.3680043.8.498.1.1.1".into()],
            not_applicable: None,
            caveat: None,
            created_at: 1_706_693_415,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::result::{HeatmapState, ImageResult, Timings};

    fn image(status: ImageStatus, reason: Option<&str>, caveat: Option<&str>) -> ImageResult {
        ImageResult {
            sop_instance_uid: format!("1.2.3.{}", status.as_str()),
            series_instance_uid: "1.2.3.0".into(),
            status,
            reason: reason.map(Into::into),
            caveat: caveat.map(Into::into),
            findings: Vec::new(),
            timings: Timings::default(),
            heatmap: HeatmapState::None,
        }
    }

    fn result(images: Vec<ImageResult>) -> StudyResult {
        crate::result::fixtures::study_result("1.2.3", images)
    }

    #[test]
    fn the_intended_use_verdict_of_the_result_is_the_reports() {
        let study = StudyRecord::default();
        let outside = result(vec![image(
            ImageStatus::NotApplicable,
            Some("age 45 y outside the model's 1\u{2013}5 y"),
            None,
        )]);
        let r = Report::from_result(&outside, &study);
        assert_eq!(
            r.not_applicable.as_deref(),
            Some("age 45 y outside the model's 1\u{2013}5 y")
        );
        assert_eq!(r.caveat, None);
        assert!(r.source_sop_instance_uids.is_empty());
        assert!(r.notes()[0].starts_with("Not applicable: outside the model's intended use"));

        let unknown_age = result(vec![image(
            ImageStatus::Analysed,
            None,
            Some("patient age unknown"),
        )]);
        let r = Report::from_result(&unknown_age, &study);
        assert_eq!(r.not_applicable, None);
        assert_eq!(r.caveat.as_deref(), Some("patient age unknown"));
        assert_eq!(r.notes(), vec!["Caveat: patient age unknown".to_string()]);
    }

    fn analysed(p: f32) -> ImageResult {
        ImageResult {
            findings: vec![Finding {
                label: "Pneumonia".into(),
                code: "PNEUMONIA".into(),
                probability: p,
                threshold: 0.5,
                positive: p >= 0.5,
                standard: None,
            }],
            ..image(ImageStatus::Analysed, None, None)
        }
    }

    /// A study with one image analysed (negative) and one that failed to decode is never
    /// delivered as a plain negative: the console, the HL7 NTE, the SR and the MQTT report
    /// all say that an image was not analysed.
    #[test]
    fn a_partly_analysed_study_says_so_in_every_output() {
        let mut failed = image(
            ImageStatus::Error,
            Some("cannot decode pixel data: /data/studies/1.2.3/x.dcm truncated"),
            None,
        );
        failed.sop_instance_uid = "1.2.3.9".into();
        let result = result(vec![analysed(0.1), failed]);
        assert!(!result.triage && result.findings.iter().all(|f| !f.positive));
        let expected = "1 of 2 images could not be analysed (decode error); the result covers \
                        the analysed images only";
        // Console and worklist read the result's caveat.
        assert_eq!(result.caveat().as_deref(), Some(expected));
        assert_eq!(crate::record::failure(&result), None);
        let mut study = crate::report::fixtures::report().study;
        study.study_instance_uid = "1.2.3".into();
        let r = Report::from_result(&result, &study);
        assert_eq!(r.not_applicable, None);
        assert_eq!(r.notes(), vec![format!("Caveat: {expected}")]);

        // HL7: an NTE after the AI statement.
        let profile = crate::deliver::hl7::message::Hl7Profile {
            sending_facility: "hospital-a".into(),
            receiving_application: "RIS".into(),
            receiving_facility: "HOSP".into(),
            study_uid_in: crate::config::StudyUidIn::Obx,
        };
        let secret = crate::site_secret::SiteSecret::from_bytes(&[5u8; 32]);
        let ids = crate::deliver::hl7::message::MessageIds::of(&r, &secret, "edge-01");
        let msg = crate::deliver::hl7::message::oru_r01(&r, &profile, &ids);
        assert!(
            msg.split('\r')
                .any(|s| s == format!("NTE|2|L|Caveat: {expected}")),
            "{msg:?}"
        );
        // MQTT: the same words (product text only: no file name, no UID).
        let payload = crate::deliver::mqtt::payload::report_payload(&r, &secret, "h", "d");
        assert_eq!(payload.caveat.as_deref(), Some(expected));
        let body = crate::deliver::mqtt::payload::to_json(&payload);
        assert!(
            !body.contains("1.2.3") && !body.contains("truncated"),
            "{body}"
        );
        // SR: a comment.
        let uids = crate::results::uids::ResultUids::new(
            "1.2.826.0.1.3680043.8.498",
            &r.report_id,
            &secret,
            "edge-01",
        );
        let sr = crate::results::sr::build(&r, &uids, &[], None).unwrap();
        let mut bytes = Vec::new();
        sr.write_dataset_with_ts(
            &mut bytes,
            &dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased(),
        )
        .unwrap();
        let note = format!("Caveat: {expected}");
        assert!(
            bytes.windows(note.len()).any(|w| w == note.as_bytes()),
            "the SR does not say it"
        );
    }

    /// Which images count: errors and images refused for their size or pruned do; images
    /// the model is not for (a lateral view, a report object, outside the intended use) do
    /// not; a study with nothing analysed has no such caveat (it failed, or is not
    /// applicable).
    #[test]
    fn images_the_model_is_for_count_and_out_of_scope_ones_do_not() {
        let na = |reason: &str| image(ImageStatus::NotApplicable, Some(reason), None);
        let too_large = "image too large to analyse: Rows x Columns x Frames x Samples per \
                         Pixel = 90000000, over inference.max_pixels = 50000000";
        let r = result(vec![
            analysed(0.2),
            na(too_large),
            na("lateral view (LL)"),
            na("not an image (SOP class 1.2.840.10008.5.1.4.1.1.88.33)"),
            image(ImageStatus::Error, Some("decoder panicked: oops"), None),
            na("pixel data pruned by retention"),
            analysed(0.3),
        ]);
        let u = r.unanalysed().unwrap();
        assert_eq!((u.count, u.of), (3, 5));
        assert_eq!(
            u.reasons,
            vec![
                "image too large to analyse",
                "decode error",
                "pixel data pruned by retention"
            ]
        );
        let r = result(vec![
            analysed(0.2),
            na("lateral view (LL)"),
            na("age 45 y outside the model's 1\u{2013}5 y"),
        ]);
        assert_eq!(r.unanalysed(), None);
        assert_eq!(r.caveat(), None);
        let r = result(vec![image(ImageStatus::Error, Some("x"), None)]);
        assert_eq!(r.unanalysed(), None);
        // With an analysed image's own caveat, both are said.
        let r = result(vec![
            image(ImageStatus::Analysed, None, Some("patient age unknown")),
            image(ImageStatus::Error, Some("inference failed: x"), None),
        ]);
        assert_eq!(
            r.caveat().as_deref(),
            Some(
                "1 of 2 images could not be analysed (analysis error); the result covers the \
                 analysed images only; patient age unknown"
            )
        );
    }

    /// Every reason the eligibility check gives for an image the model is not for is
    /// recognised as such (so a lateral view or a report object never reads as a failure).
    #[test]
    fn eligibility_reasons_are_out_of_scope() {
        use crate::infer::dicom_image::ImageHeader;
        use crate::infer::eligibility::{check_with, Eligibility};
        let chest = ImageHeader {
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1.1".into(),
            modality: "DX".into(),
            body_part: "CHEST".into(),
            view_position: "PA".into(),
            has_pixels: true,
            patient_age: "003Y".into(),
            rows: 512,
            columns: 512,
            ..Default::default()
        };
        let iu = crate::infer::manifest::IntendedUse {
            modalities: vec!["DX".into()],
            views: vec!["PA".into()],
            body_parts: vec!["CHEST".into()],
            age_min_years: Some(1.0),
            age_max_years: Some(5.0),
            min_image_size: Some(150),
            ..Default::default()
        };
        let variants: Vec<ImageHeader> = vec![
            ImageHeader {
                has_pixels: false,
                ..chest.clone()
            },
            ImageHeader {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
                ..chest.clone()
            },
            ImageHeader {
                modality: "CT".into(),
                ..chest.clone()
            },
            ImageHeader {
                modality: "CR".into(),
                ..chest.clone()
            },
            ImageHeader {
                presentation_intent: "FOR PROCESSING".into(),
                ..chest.clone()
            },
            ImageHeader {
                body_part: "HAND".into(),
                ..chest.clone()
            },
            ImageHeader {
                body_part: "LUNG".into(),
                ..chest.clone()
            },
            ImageHeader {
                view_position: "LL".into(),
                ..chest.clone()
            },
            ImageHeader {
                view_position: "AP".into(),
                ..chest.clone()
            },
            ImageHeader {
                view_position: "OBL".into(),
                ..chest.clone()
            },
            ImageHeader {
                rows: 100,
                ..chest.clone()
            },
            ImageHeader {
                patient_age: "045Y".into(),
                ..chest.clone()
            },
        ];
        for h in variants {
            let Eligibility::NotApplicable(reason) = check_with(&h, &iu) else {
                panic!("{h:?} is eligible");
            };
            assert!(outside(&reason), "{reason:?} reads as a failure");
        }
        assert!(!outside("image too large to analyse: x"));
        assert!(!outside("pixel data pruned by retention"));
        assert!(!outside("not applicable"));
    }

    fn outside(reason: &str) -> bool {
        crate::result::outside_scope(reason)
    }
}
