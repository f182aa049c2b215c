//! The study report that delivery sends: the input of every channel's codec.
//!
//! Kept apart from the inference result type on purpose: the result commit converts its
//! result into a [`Report`] together with the [`StudyRecord`] of the study, and from then on
//! every message (HL7, MQTT, DICOM push) is built from this one value.

use crate::model::StudyRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One finding of a report, study level (the maximum over its images).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportFinding {
    /// The model's label for the finding (e.g. `PNEUMONIA`).
    pub label: String,
    /// The finding's code (e.g. a SNOMED CT or RadLex code).
    pub code: String,
    /// The code's display name (e.g. `Pneumonia`).
    pub display: String,
    /// Probability in `[0, 1]`.
    pub probability: f64,
    /// Operating threshold of the finding.
    pub threshold: f64,
    /// Whether the probability reached the threshold.
    pub positive: bool,
}

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
    pub findings: Vec<ReportFinding>,
    /// The study is triaged urgent (a finding reached its threshold).
    pub triage: bool,
    /// Model name.
    pub model_name: String,
    /// Model version.
    pub model_version: String,
    /// SHA-256 of the model weights (hex).
    pub model_sha256: String,
    /// Stage timings in milliseconds (e.g. `decode`, `infer`, `total`).
    pub timings_ms: BTreeMap<String, f64>,
    /// SOP Instance UIDs of the images the report was made from.
    pub source_sop_instance_uids: Vec<String>,
    /// Why the study was not analysed: outside the model's intended use (e.g. "age 45 y
    /// outside the model's 1–5 y"). The report then has no findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_applicable: Option<String>,
    /// What a reader must know about the findings (e.g. the patient's age is unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caveat: Option<String>,
    /// When the result was made, seconds since the Unix epoch.
    pub created_at: i64,
}

impl Report {
    /// Whether this report corrects an earlier one (HL7 OBR-25 `C`).
    pub fn is_correction(&self) -> bool {
        self.version > 1
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
                ReportFinding {
                    label: "PNEUMONIA".into(),
                    code: "233604007".into(),
                    display: "Pneumonia".into(),
                    probability: 0.87346,
                    threshold: 0.5,
                    positive: true,
                },
                ReportFinding {
                    label: "EFFUSION".into(),
                    code: "60046008".into(),
                    display: "Pleural effusion".into(),
                    probability: 0.12,
                    threshold: 0.4,
                    positive: false,
                },
            ],
            triage: true,
            model_name: "pneumonia-xception".into(),
            model_version: "1.0.0".into(),
            model_sha256: "ab".repeat(32),
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
