//! The records every stage shares: received instances, studies and their states, and the
//! study result that inference produces and delivery sends.

use serde::{Deserialize, Serialize};

/// The life of a study, as INTERFACES.md names it.
#[derive(
    Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "snake_case")]
pub enum StudyState {
    /// Instances are arriving (an association is open or the quiet period runs).
    #[default]
    Receiving,
    /// Associations released and the quiet period passed; waiting for inference.
    Complete,
    /// Handed to the inference queue.
    Queued,
    /// Being analysed.
    Inferring,
    /// A result is recorded.
    Done,
    /// Analysis failed for the whole study; the reason is recorded.
    Error,
}

impl StudyState {
    /// Every state, in pipeline order.
    pub const ALL: [StudyState; 6] = [
        StudyState::Receiving,
        StudyState::Complete,
        StudyState::Queued,
        StudyState::Inferring,
        StudyState::Done,
        StudyState::Error,
    ];

    /// The state's name as used in JSON, metrics and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            StudyState::Receiving => "receiving",
            StudyState::Complete => "complete",
            StudyState::Queued => "queued",
            StudyState::Inferring => "inferring",
            StudyState::Done => "done",
            StudyState::Error => "error",
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One stored DICOM instance, as the index keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct InstanceRecord {
    /// SOP Instance UID (the key).
    pub sop_instance_uid: String,
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// Study Instance UID.
    pub study_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
    /// Transfer syntax the data set is stored in (as received).
    pub transfer_syntax: String,
    /// Path of the Part 10 file, relative to the data directory.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// Identity of the file on its file system (its inode number) when it was placed; 0
    /// when unknown (records written before it was kept). After a crash it tells which of
    /// an instance's copies the record describes (`store::kept`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub file_id: u64,
    /// Receive time, seconds since the Unix epoch.
    pub received_at: i64,
    /// Calling AE title of the sender (empty for files found by reindex).
    pub source_ae: String,
    /// Modality (0008,0060).
    pub modality: String,
    /// Series Number (0020,0011).
    pub series_number: Option<i64>,
    /// Instance Number (0020,0013).
    pub instance_number: Option<i64>,
    /// Series Description (0008,103E).
    pub series_description: String,
    /// Body Part Examined (0018,0015).
    pub body_part: String,
    /// View Position (0018,5101).
    pub view_position: String,
    /// Rows (0028,0010).
    pub rows: Option<u32>,
    /// Columns (0028,0011).
    pub columns: Option<u32>,
    /// Whether the pixel data file was pruned by retention (the record stays).
    #[serde(default)]
    pub pruned: bool,
    /// Made by this box (SR, SC result objects): does not reopen its study.
    #[serde(default)]
    pub generated: bool,
    /// A result object of this box's that its rejection note withdrew (it was made for a
    /// patient the study no longer belongs to): no longer linked to its study, so neither
    /// listed nor served; the record and file stay as what was sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rejected: bool,
}

/// Patient and study attributes of a study (from its instances, first non-empty wins,
/// later instances fill gaps), plus its state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StudyRecord {
    /// Study Instance UID (the key).
    pub study_instance_uid: String,
    /// Patient ID (0010,0020).
    pub patient_id: String,
    /// Patient's Name (0010,0010), UTF-8.
    pub patient_name: String,
    /// Patient's Birth Date (0010,0030), YYYYMMDD.
    pub patient_birth_date: String,
    /// Patient's Sex (0010,0040).
    pub patient_sex: String,
    /// Issuer of Patient ID (0010,0021): the domain the Patient ID is unique in (empty
    /// when not sent).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub issuer_of_patient_id: String,
    /// Accession Number (0008,0050).
    pub accession_number: String,
    /// Study Date (0008,0020), YYYYMMDD.
    pub study_date: String,
    /// Study Time (0008,0030).
    pub study_time: String,
    /// Study Description (0008,1030).
    pub study_description: String,
    /// Study ID (0020,0010).
    pub study_id: String,
    /// Referring Physician's Name (0008,0090).
    pub referring_physician: String,
    /// Modalities seen in the study.
    pub modalities: Vec<String>,
    /// Number of instances in the index.
    pub instances: u64,
    /// First instance received, seconds since the epoch.
    pub first_received: i64,
    /// Last instance received, seconds since the epoch.
    pub last_received: i64,
    /// Pipeline state.
    pub state: StudyState,
    /// Why the study is in `error`, when it is.
    #[serde(default)]
    pub error: Option<String>,
    /// Version of the latest result (0 = none yet).
    #[serde(default)]
    pub result_version: u32,
    /// The patient the latest result was reported for: when the study is given to
    /// another patient afterwards, the next result withdraws it from this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_for: Option<ReportedPatient>,
}

/// A patient as the audit trail names them: the Patient ID, as `ID^^^ISSUER` (HL7 CX) when
/// it has an Issuer of Patient ID; `None` without a Patient ID.
pub fn patient_cx(patient_id: &str, issuer: &str) -> Option<String> {
    match (patient_id.trim(), issuer.trim()) {
        ("", _) => None,
        (id, "") => Some(id.to_string()),
        (id, issuer) => Some(format!("{id}^^^{issuer}")),
    }
}

/// A patient's identity as a result was reported for it (PID-3, -5, -7, -8).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReportedPatient {
    /// Patient ID.
    pub patient_id: String,
    /// Patient's Name.
    pub patient_name: String,
    /// Patient's Birth Date.
    pub patient_birth_date: String,
    /// Patient's Sex.
    pub patient_sex: String,
    /// Issuer of Patient ID.
    #[serde(default)]
    pub issuer_of_patient_id: String,
}

impl ReportedPatient {
    /// The identity `study` names now.
    pub fn of(study: &StudyRecord) -> ReportedPatient {
        ReportedPatient {
            patient_id: study.patient_id.clone(),
            patient_name: study.patient_name.clone(),
            patient_birth_date: study.patient_birth_date.clone(),
            patient_sex: study.patient_sex.clone(),
            issuer_of_patient_id: study.issuer_of_patient_id.clone(),
        }
    }

    /// `study` as it was when reported for this patient.
    pub fn applied_to(&self, study: &StudyRecord) -> StudyRecord {
        StudyRecord {
            patient_id: self.patient_id.clone(),
            patient_name: self.patient_name.clone(),
            patient_birth_date: self.patient_birth_date.clone(),
            patient_sex: self.patient_sex.clone(),
            issuer_of_patient_id: self.issuer_of_patient_id.clone(),
            ..study.clone()
        }
    }
}
