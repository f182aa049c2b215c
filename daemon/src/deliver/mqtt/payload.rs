//! The JSON the cloud receives. Nothing here identifies a patient directly: the patient id
//! and the study instance UID become HMAC-SHA256 pseudonyms under the site secret, and
//! names, birth dates, ages, accession numbers, dates and raw UIDs are left out. The report id
//! is keyed the same way: the local one is a hash of the study UID, which anyone holding
//! that UID (PACS, RIS, a patient's CD) could recompute and link. The report's schema is
//! `docs/mqtt-report.schema.json`.

use crate::report::{Finding, Report};
use crate::site_secret::SiteSecret;
use crate::store::outbox::{DestStats, Fill};
use serde::Serialize;
use std::collections::BTreeMap;

/// `schema` value of report payloads.
pub const REPORT_SCHEMA: &str = "duli.report.v1";
/// `schema` value of feedback payloads.
pub const FEEDBACK_SCHEMA: &str = "duli.feedback.v1";
/// `schema` value of health payloads.
pub const HEALTH_SCHEMA: &str = "duli.health.v1";

/// Pseudonym domain of patient ids.
pub const PATIENT_DOMAIN: &str = "patient";
/// Pseudonym domain of study instance UIDs.
pub const STUDY_DOMAIN: &str = "study";
/// Pseudonym domain of report ids.
pub const REPORT_DOMAIN: &str = "report";
/// Pseudonym domain of feedback ids.
pub const FEEDBACK_DOMAIN: &str = "feedback";

/// Modalities (0008,0060) a report or a reason sent to the cloud may name (DICOM defined
/// terms); any other value is sent as `OT`.
const MODALITY_TERMS: &[&str] = &[
    "BMD", "CR", "CT", "DOC", "DX", "ECG", "ES", "IO", "KO", "MG", "MR", "NM", "OP", "OT", "PR",
    "PT", "PX", "RF", "RG", "RTIMAGE", "SEG", "SM", "SR", "US", "XA", "XC",
];
/// View Positions (0018,5101) a reason sent to the cloud may name (DICOM defined terms).
const VIEW_TERMS: &[&str] = &["AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO"];
/// Body Parts Examined (0018,0015) a reason sent to the cloud may name (DICOM defined
/// terms, PS3.16 Annex L).
const BODY_PART_TERMS: &[&str] = &[
    "ABDOMEN",
    "ANKLE",
    "ARM",
    "BREAST",
    "CHEST",
    "CLAVICLE",
    "CSPINE",
    "ELBOW",
    "EXTREMITY",
    "FOOT",
    "HAND",
    "HEAD",
    "HIP",
    "KNEE",
    "LEG",
    "LSPINE",
    "NECK",
    "PELVIS",
    "SHOULDER",
    "SKULL",
    "SPINE",
    "TSPINE",
    "WRIST",
];

/// Reasons a study was not analysed that carry nothing from the study and go to the cloud
/// as they are.
const FIXED_REASONS: &[&str] = &[
    "not an image",
    "secondary capture not marked as an uploaded chest radiograph",
    "a FOR PROCESSING image (raw detector data)",
    "image smaller than the model's minimum size",
    "image too large to analyse",
    "pixel data pruned by retention",
];

/// The reason a study was not analysed as the cloud gets it: the category of each of the
/// distinct reasons (`; `-separated) the result records, without the patient's age (which,
/// with the report's time, dates a newborn's birth; over 89 it identifies) and without
/// DICOM text other than a defined term of a short list: "age outside the model's intended
/// range", "modality CT outside the model's intended use", "view outside the model's
/// intended use", "image smaller than the model's minimum size"… Applied to its own
/// output it changes nothing.
pub fn cloud_reason(reasons: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for r in reasons.split("; ").map(reason_category) {
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out.join("; ")
}

/// The category of one reason (see [`cloud_reason`]).
fn reason_category(reason: &str) -> String {
    let r = reason.trim();
    if r.starts_with("age ") || r.starts_with("patient age") {
        return "age outside the model's intended range".into();
    }
    if let Some(rest) = r.strip_prefix("modality ") {
        return named("modality", term(rest), MODALITY_TERMS);
    }
    if let Some(rest) = r.strip_prefix("body part ") {
        return named("body part", term(rest), BODY_PART_TERMS);
    }
    if let Some(rest) = r.strip_prefix("lateral view (") {
        return named("view", rest.strip_suffix(')').unwrap_or(""), VIEW_TERMS);
    }
    if let Some(rest) = r.strip_prefix("view ") {
        return named("view", term(rest), VIEW_TERMS);
    }
    if r.starts_with("image too large to analyse") {
        return "image too large to analyse".into();
    }
    if r.starts_with("image ") && r.contains("smaller than the model's minimum") {
        return "image smaller than the model's minimum size".into();
    }
    if r.starts_with("not an image") {
        return "not an image".into();
    }
    match FIXED_REASONS.iter().find(|f| **f == r) {
        Some(f) => (*f).to_string(),
        None => "outside the model's intended use".into(),
    }
}

/// The value a reason names before its verdict ("HAND" of "HAND is not the chest" or of
/// "HAND outside the model's CHEST").
fn term(rest: &str) -> &str {
    [" is not ", " outside the model"]
        .iter()
        .filter_map(|end| rest.find(end))
        .min()
        .map_or("", |at| &rest[..at])
}

/// "`what` `value` outside the model's intended use" when `value` is one of `terms`, else
/// the same without the value.
fn named(what: &str, value: &str, terms: &[&str]) -> String {
    if terms.contains(&value) {
        format!("{what} {value} outside the model's intended use")
    } else {
        format!("{what} outside the model's intended use")
    }
}

/// The report id the cloud sees: HMAC-SHA256 under the site secret of the local one.
pub fn cloud_report_id(secret: &SiteSecret, report_id: &str) -> String {
    secret.pseudonym(REPORT_DOMAIN, report_id)
}

/// A finding as the cloud receives it (schema v1): a view of a report's [`Finding`], with
/// the finding's code as `label` and its display name as `display`.
#[derive(Serialize)]
struct FindingView<'a> {
    label: &'a str,
    code: &'a str,
    display: &'a str,
    probability: f64,
    threshold: f64,
    positive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    standard: Option<&'a crate::result::Concept>,
}

fn findings_v1<S: serde::Serializer>(findings: &[Finding], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(findings.iter().map(|f| FindingView {
        label: &f.code,
        code: &f.code,
        display: &f.label,
        probability: f64::from(f.probability),
        threshold: f64::from(f.threshold),
        positive: f.positive,
        standard: f.standard.as_ref(),
    }))
}

/// The model that made a report.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelPayload {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the weights (hex).
    pub sha256: String,
    /// Arithmetic precision it ran at (`f32`, `bf16`, `int8`).
    pub precision: String,
}

/// The report payload on `duli/{site}/{device}/reports`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReportPayload {
    /// Always [`REPORT_SCHEMA`].
    pub schema: &'static str,
    /// Idempotency key: the same report sent twice has the same id. Keyed: HMAC-SHA256
    /// under the site secret of the local report id ([`cloud_report_id`]).
    pub report_id: String,
    /// Result version (n+1 corrects n).
    pub version: u32,
    /// Site id.
    pub site_id: String,
    /// Device id.
    pub device_id: String,
    /// HMAC-SHA256 pseudonym of the patient id (hex), `null` when the study has none.
    pub patient_pseudonym: Option<String>,
    /// HMAC-SHA256 pseudonym of the study instance UID (hex).
    pub study_pseudonym: String,
    /// When the result was made (RFC 3339, UTC).
    pub created_at: String,
    /// Modalities of the study (e.g. `DX`).
    pub modalities: Vec<String>,
    /// Number of images analysed.
    pub image_count: usize,
    /// Findings.
    #[serde(serialize_with = "findings_v1")]
    pub findings: Vec<Finding>,
    /// Triaged urgent.
    pub triage: bool,
    /// The model.
    pub model: ModelPayload,
    /// Stage timings in milliseconds.
    pub timings_ms: BTreeMap<String, f64>,
    /// Always `true`: made by an algorithm.
    pub ai_generated: bool,
    /// Always `true`: not reviewed by a radiologist.
    pub preliminary: bool,
    /// Why the study was not analysed (outside the model's intended use), as a category
    /// without the patient's age or free DICOM text ([`cloud_reason`]); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_applicable: Option<String>,
    /// What a reader must know about the findings (e.g. the patient's age is unknown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caveat: Option<String>,
}

/// Times in the cloud's messages are rounded down to the hour: a time to the second is
/// what HL7 (MSH-7) and the PACS carry too, and would let anyone holding those join a cloud
/// record to a patient by its time stamp.
pub fn to_the_hour(secs: i64) -> i64 {
    secs - secs.rem_euclid(3600)
}

/// Unix seconds as RFC 3339 UTC (`1970-01-01T00:00:00Z` for out-of-range values).
pub fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// Builds the report payload.
pub fn report_payload(
    report: &Report,
    secret: &SiteSecret,
    site_id: &str,
    device_id: &str,
) -> ReportPayload {
    let s = &report.study;
    ReportPayload {
        schema: REPORT_SCHEMA,
        report_id: cloud_report_id(secret, &report.report_id),
        version: report.version,
        site_id: site_id.into(),
        device_id: device_id.into(),
        patient_pseudonym: (!s.patient_id.trim().is_empty())
            .then(|| secret.pseudonym(PATIENT_DOMAIN, s.patient_id.trim())),
        study_pseudonym: secret.pseudonym(STUDY_DOMAIN, &s.study_instance_uid),
        created_at: rfc3339(to_the_hour(report.created_at)),
        // Defined terms only: a Code String may hold anything upper case (a name, an ID);
        // another value is sent as OT ("other").
        modalities: s
            .modalities
            .iter()
            .map(|m| {
                if MODALITY_TERMS.contains(&m.as_str()) {
                    m.clone()
                } else {
                    "OT".to_string()
                }
            })
            .collect(),
        image_count: report.source_sop_instance_uids.len(),
        findings: report.findings.clone(),
        triage: report.triage,
        model: ModelPayload {
            name: report.model_name.clone(),
            version: report.model_version.clone(),
            sha256: report.model_sha256.clone(),
            precision: report.model_precision.clone(),
        },
        timings_ms: report
            .timings_ms
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        ai_generated: true,
        preliminary: true,
        not_applicable: report.not_applicable.as_deref().map(cloud_reason),
        caveat: report.caveat.clone(),
    }
}

/// The feedback payload on `duli/{site}/{device}/feedback`. Free-text comments are not
/// sent (they may name the patient).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FeedbackPayload {
    /// Always [`FEEDBACK_SCHEMA`].
    pub schema: &'static str,
    /// The report judged, keyed as in the report payload.
    pub report_id: String,
    /// This verdict's own id, keyed like the other ids: the same for every copy of one
    /// verdict (a resend after a lost acknowledgement), another for each verdict, so the
    /// cloud can drop duplicates and order a reviewer's changed verdicts.
    pub feedback_id: String,
    /// Site id.
    pub site_id: String,
    /// Device id.
    pub device_id: String,
    /// Pseudonym of the study instance UID.
    pub study_pseudonym: String,
    /// `agree` or `disagree`.
    pub verdict: &'static str,
    /// Finding label, if the verdict is about one.
    pub finding: Option<String>,
    /// Reviewer role.
    pub reviewer_role: String,
    /// RFC 3339 time of the verdict.
    pub created_at: String,
}

/// Builds the feedback payload of `fb`, a verdict on the report `report_id` (its local
/// id, keyed here as in the report payload) given by a user of `reviewer_role`. The
/// comment and the user name stay on the box.
pub fn feedback_payload(
    fb: &crate::report::Feedback,
    report_id: &str,
    reviewer_role: &str,
    secret: &SiteSecret,
    site_id: &str,
    device_id: &str,
) -> FeedbackPayload {
    FeedbackPayload {
        schema: FEEDBACK_SCHEMA,
        report_id: cloud_report_id(secret, report_id),
        feedback_id: feedback_id(secret, fb),
        site_id: site_id.into(),
        device_id: device_id.into(),
        study_pseudonym: secret.pseudonym(STUDY_DOMAIN, &fb.study_uid),
        verdict: if fb.agree { "agree" } else { "disagree" },
        finding: fb.finding.clone(),
        reviewer_role: reviewer_role.into(),
        created_at: rfc3339(to_the_hour(fb.at_ms.div_euclid(1000))),
    }
}

/// The keyed id of verdict `fb`: of its study, result version, reviewer and millisecond,
/// so one verdict always gets the same id and no two verdicts share one; nothing in it can
/// be linked back to the study or the reviewer without the site secret.
pub fn feedback_id(secret: &SiteSecret, fb: &crate::report::Feedback) -> String {
    let key = format!(
        "{}\u{0}{}\u{0}{}\u{0}{}",
        fb.study_uid, fb.result_version, fb.user, fb.at_ms
    );
    secret.pseudonym(FEEDBACK_DOMAIN, &key)
}

/// The device's state as the health payload reports it (filled by the daemon).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Software version.
    pub software_version: String,
    /// Model name and version in use.
    pub model: String,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// Free bytes on the data disk.
    pub disk_free_bytes: u64,
    /// Size of the data disk.
    pub disk_total_bytes: u64,
    /// Studies per state.
    pub studies: BTreeMap<String, u64>,
    /// Outbox per destination.
    pub outbox: Vec<DestStats>,
    /// Outbox fill level.
    pub outbox_fill: Option<Fill>,
    /// Head of the audit trail (sequence number and hash), anchored off the box here.
    pub audit_head: Option<(u64, String)>,
}

/// The health payload on `duli/{site}/{device}/health`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthPayload {
    /// Always [`HEALTH_SCHEMA`].
    pub schema: &'static str,
    /// Site id.
    pub site_id: String,
    /// Device id.
    pub device_id: String,
    /// RFC 3339 time of the sample.
    pub at: String,
    /// Software version.
    pub software_version: String,
    /// Model in use.
    pub model: String,
    /// Uptime in seconds.
    pub uptime_seconds: u64,
    /// Disk space.
    pub disk: DiskPayload,
    /// Studies per state.
    pub studies: BTreeMap<String, u64>,
    /// Outbox per destination.
    pub outbox: Vec<DestStats>,
    /// Outbox fill.
    pub outbox_fill: Option<Fill>,
    /// Head of the audit trail: anyone keeping these can tell if the chain is rewritten.
    pub audit_head: Option<AuditHead>,
}

/// The audit trail's head in the health payload.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditHead {
    /// Sequence number of the last record.
    pub seq: u64,
    /// Its hash (hex).
    pub hash: String,
}

/// Disk space in the health payload.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiskPayload {
    /// Free bytes.
    pub free_bytes: u64,
    /// Total bytes.
    pub total_bytes: u64,
}

/// Builds the health payload at time `now` (Unix seconds).
pub fn health_payload(h: &Health, site_id: &str, device_id: &str, now: i64) -> HealthPayload {
    HealthPayload {
        schema: HEALTH_SCHEMA,
        site_id: site_id.into(),
        device_id: device_id.into(),
        at: rfc3339(now),
        software_version: h.software_version.clone(),
        model: h.model.clone(),
        uptime_seconds: h.uptime_seconds,
        disk: DiskPayload {
            free_bytes: h.disk_free_bytes,
            total_bytes: h.disk_total_bytes,
        },
        studies: h.studies.clone(),
        outbox: h.outbox.clone(),
        outbox_fill: h.outbox_fill,
        audit_head: h.audit_head.as_ref().map(|(seq, hash)| AuditHead {
            seq: *seq,
            hash: hash.clone(),
        }),
    }
}

/// The body to publish for an outbox entry of report `report_id`. Entries queued by an
/// earlier version may carry the local report id in clear, a feedback's `finding` that
/// was never checked against the model's labels, a `created_at` to the second, or a
/// `not_applicable` reason with the patient's age: those are rendered the current way (id
/// keyed, finding dropped, time rounded down to the hour, reason by category). Bodies
/// already rendered so pass unchanged, byte for byte.
pub fn current_body<'a>(
    body: &'a str,
    report_id: &str,
    secret: &SiteSecret,
) -> std::borrow::Cow<'a, str> {
    use serde_json::Value;
    let Ok(Value::Object(mut v)) = serde_json::from_str::<Value>(body) else {
        return body.into();
    };
    let mut changed = false;
    if !report_id.is_empty() && v.get("report_id").and_then(Value::as_str) == Some(report_id) {
        v.insert(
            "report_id".into(),
            Value::String(cloud_report_id(secret, report_id)),
        );
        if v.get("schema").and_then(Value::as_str) == Some(FEEDBACK_SCHEMA) {
            v.insert("finding".into(), Value::Null);
        }
        changed = true;
    }
    let rounded = v
        .get("created_at")
        .and_then(Value::as_str)
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| rfc3339(to_the_hour(t.unix_timestamp())))
        .filter(|r| v.get("created_at").and_then(Value::as_str) != Some(r.as_str()));
    if let Some(rounded) = rounded {
        v.insert("created_at".into(), Value::String(rounded));
        changed = true;
    }
    let coarse = v
        .get("not_applicable")
        .and_then(Value::as_str)
        .map(|r| (cloud_reason(r), r))
        .filter(|(coarse, r)| coarse != r)
        .map(|(coarse, _)| coarse);
    if let Some(coarse) = coarse {
        v.insert("not_applicable".into(), Value::String(coarse));
        changed = true;
    }
    // Modalities as defined terms only (bodies queued before they were held to them could
    // carry any Code String, a name say).
    if let Some(Value::Array(modalities)) = v.get_mut("modalities") {
        for m in modalities.iter_mut() {
            if !m.as_str().is_some_and(|s| MODALITY_TERMS.contains(&s)) {
                *m = Value::String("OT".into());
                changed = true;
            }
        }
    }
    if changed {
        to_json(&v).into()
    } else {
        body.into()
    }
}

/// Serializes a payload as compact JSON (one line).
pub fn to_json<T: Serialize>(payload: &T) -> String {
    // Plain structs with string keys: serialization cannot fail.
    serde_json::to_string(payload).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    /// The findings of schema v1 are a view of the one finding type: the code as `label`
    /// and `code`, the display name as `display`, in this field order.
    #[test]
    fn findings_keep_the_v1_names_and_order() {
        let report = fixtures::report();
        let secret = SiteSecret::from_bytes(&[9u8; 32]);
        let json = to_json(&report_payload(&report, &secret, "s", "d"));
        let at = json.find("\"findings\":[").unwrap();
        assert!(
            json[at..].starts_with(
                "\"findings\":[{\"label\":\"PNEUMONIA\",\"code\":\"PNEUMONIA\",\"display\":\"Pneumonia\",\"probability\":0.87345"
            ),
            "{json}"
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["findings"][1]["display"], "Pleural effusion");
        assert_eq!(
            v["findings"][1]["threshold"]
                .as_f64()
                .map(|t| (t * 10.0).round()),
            Some(4.0)
        );
        assert_eq!(v["findings"][1]["positive"], false);
    }

    /// A modality is a Code String, which may hold a name or an ID written upper case:
    /// only defined terms reach the cloud, any other value as `OT`.
    #[test]
    fn modalities_reach_the_cloud_only_as_defined_terms() {
        let mut report = fixtures::report();
        report.study.modalities = vec!["DX".into(), "DOE JANE 031167".into()];
        let secret = SiteSecret::from_bytes(&[9u8; 32]);
        let v: serde_json::Value =
            serde_json::from_str(&to_json(&report_payload(&report, &secret, "s", "d"))).unwrap();
        assert_eq!(v["modalities"], serde_json::json!(["DX", "OT"]));
    }

    #[test]
    fn report_payload_carries_no_direct_identifiers() {
        let report = fixtures::report();
        let secret = SiteSecret::from_bytes(&[9u8; 32]);
        let p = report_payload(&report, &secret, "hospital-a", "edge-01");
        let json = to_json(&p);
        for leak in [
            "Conceição",
            "João",
            "19800215",
            "PAT|001",
            "ACC&42",
            "1.2.826.0.1.3680043.8.498.1",
            "20240131",
        ] {
            assert!(!json.contains(leak), "{leak} leaked into {json}");
        }
        assert_eq!(
            p.patient_pseudonym.as_deref(),
            Some(secret.pseudonym("patient", "PAT|001^X").as_str())
        );
        assert_eq!(
            p.study_pseudonym,
            secret.pseudonym("study", &report.study.study_instance_uid)
        );
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["ai_generated"], true);
        // The report id is keyed: whoever holds the study UID cannot recompute it.
        assert_ne!(v["report_id"], "r-7f3a9c2e01");
        assert_eq!(
            v["report_id"].as_str().unwrap(),
            secret.pseudonym("report", "r-7f3a9c2e01")
        );
        assert!(!json.contains("r-7f3a9c2e01"));
        assert_eq!(v["findings"][0]["code"], "PNEUMONIA");
        assert_eq!(v["findings"][0]["standard"]["code"], "233604007");
        assert_eq!(v["findings"][0]["standard"]["scheme"], "SCT");
        assert!(v["findings"][1].get("standard").is_none());
        assert_eq!(v["model"]["precision"], "f32");
        assert_eq!(v["model"]["sha256"], "ab".repeat(32));
        // To the hour only: the HL7 message and the PACS have it to the second.
        assert_eq!(v["created_at"], "2024-01-31T09:00:00Z");
        assert_eq!(v["timings_ms"]["infer"], 27.5);
    }

    #[test]
    fn not_applicable_and_caveat_are_carried_only_when_present() {
        let secret = SiteSecret::from_bytes(&[9u8; 32]);
        let plain = to_json(&report_payload(&fixtures::report(), &secret, "h", "d"));
        assert!(!plain.contains("not_applicable") && !plain.contains("caveat"));
        let mut report = fixtures::report();
        report.findings.clear();
        report.not_applicable = Some("age 45 y outside the model's 1\u{2013}5 y".into());
        report.caveat = Some("patient age unknown".into());
        let v: serde_json::Value =
            serde_json::from_str(&to_json(&report_payload(&report, &secret, "h", "d"))).unwrap();
        assert_eq!(
            v["not_applicable"],
            "age outside the model's intended range"
        );
        assert_eq!(v["caveat"], "patient age unknown");
    }

    /// Whether `text` holds an age as the eligibility code writes one ("3 d", "45 y").
    fn has_age(text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        (0..chars.len()).any(|i| {
            let starts = chars[i].is_ascii_digit() && (i == 0 || !chars[i - 1].is_ascii_digit());
            if !starts {
                return false;
            }
            let mut j = i;
            while chars.get(j).is_some_and(char::is_ascii_digit) {
                j += 1;
            }
            let rest: String = chars[j..].iter().take(4).collect();
            ["d", "wk", "mo", "y"].iter().any(|unit| {
                rest.strip_prefix(' ')
                    .and_then(|r| r.strip_prefix(unit))
                    .is_some_and(|after| !after.starts_with(|c: char| c.is_alphanumeric()))
            })
        })
    }

    /// The report of a study whose one image the eligibility check of `header` refused.
    fn refused(header: crate::infer::dicom_image::ImageHeader) -> Report {
        use crate::infer::eligibility::{check_with, Eligibility};
        use crate::result::{HeatmapState, ImageResult, ImageStatus, Timings};
        let iu = crate::infer::manifest::IntendedUse {
            modalities: vec!["CR".into(), "DX".into()],
            views: vec!["AP".into(), "PA".into()],
            body_parts: vec!["CHEST".into()],
            age_min_years: Some(1.0),
            age_max_years: Some(5.0),
            ..Default::default()
        };
        let Eligibility::NotApplicable(reason) = check_with(&header, &iu) else {
            panic!("{header:?} is eligible");
        };
        let image = ImageResult {
            sop_instance_uid: "1.2.3.4".into(),
            series_instance_uid: String::new(),
            status: ImageStatus::NotApplicable,
            reason: Some(reason),
            caveat: None,
            findings: Vec::new(),
            timings: Timings::default(),
            heatmap: HeatmapState::None,
        };
        let result = crate::result::fixtures::study_result("1.2.3", vec![image]);
        let mut report = Report::from_result(&result, &fixtures::report().study);
        report.created_at = 1_706_693_415;
        report
    }

    fn dx() -> crate::infer::dicom_image::ImageHeader {
        crate::infer::eligibility::chest_dx()
    }

    /// A newborn's age with the report's time gives the birth date, and an age over 89 is
    /// an identifier: the cloud learns only that the age is outside the model's range.
    #[test]
    fn the_cloud_gets_no_age_of_a_study_outside_the_age_range() {
        let secret = SiteSecret::from_bytes(&[9u8; 32]);
        for (birth, study) in [
            ("20240128", "20240131"),
            ("20240101", "20240131"),
            ("20231101", "20240131"),
            ("19300101", "20240131"),
        ] {
            let report = refused(crate::infer::dicom_image::ImageHeader {
                patient_birth_date: birth.into(),
                study_date: study.into(),
                ..dx()
            });
            let hospital_side = report.not_applicable.clone().unwrap_or_default();
            assert!(has_age(&hospital_side), "{hospital_side}");
            let json = to_json(&report_payload(&report, &secret, "h", "d"));
            assert!(!has_age(&json), "{json}");
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(
                v["not_applicable"], "age outside the model's intended range",
                "{json}"
            );
        }
    }

    /// Body Part Examined and View Position reach the cloud only as DICOM defined terms;
    /// any other text is left out of the reason.
    /// A report body queued before modalities were held to defined terms is sent with them
    /// held too: a Code String that is not one (a name) goes as OT.
    #[test]
    fn bodies_queued_before_modalities_were_held_to_defined_terms_are_sent_held() {
        let secret = SiteSecret::from_bytes(&[9u8; 32]);
        let old = r#"{"schema":"x","report_id":"other","modalities":["DX","DOE JANE 031167"]}"#;
        let now: serde_json::Value =
            serde_json::from_str(&current_body(old, "rid", &secret)).unwrap();
        assert_eq!(now["modalities"], serde_json::json!(["DX", "OT"]));
        let held = r#"{"schema":"x","report_id":"other","modalities":["CR","DX"]}"#;
        assert_eq!(current_body(held, "rid", &secret), held);
    }

    #[test]
    fn the_cloud_gets_body_parts_and_views_only_as_defined_terms() {
        let secret = SiteSecret::from_bytes(&[9u8; 32]);
        let reason = |h| {
            let json = to_json(&report_payload(&refused(h), &secret, "h", "d"));
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            v["not_applicable"].as_str().unwrap_or_default().to_string()
        };
        let hand = reason(crate::infer::dicom_image::ImageHeader {
            body_part: "HAND".into(),
            ..dx()
        });
        assert_eq!(hand, "body part HAND outside the model's intended use");
        let named = reason(crate::infer::dicom_image::ImageHeader {
            body_part: "JOHN SMITH 3 D".into(),
            ..dx()
        });
        assert_eq!(named, "body part outside the model's intended use");
        let lateral = reason(crate::infer::dicom_image::ImageHeader {
            view_position: "LL".into(),
            ..dx()
        });
        assert_eq!(lateral, "view LL outside the model's intended use");
        let odd = reason(crate::infer::dicom_image::ImageHeader {
            view_position: "BED 4 MR SMITH".into(),
            ..dx()
        });
        assert_eq!(odd, "view outside the model's intended use");
        let ct = reason(crate::infer::dicom_image::ImageHeader {
            modality: "CT".into(),
            ..dx()
        });
        assert_eq!(ct, "modality CT outside the model's intended use");
    }

    /// A report queued before the reasons were coarsened goes out coarse too.
    #[test]
    fn queued_reports_go_out_without_the_age() {
        let secret = SiteSecret::from_bytes(&[4u8; 32]);
        let old = "{\"schema\":\"duli.report.v1\",\"report_id\":\"x\",\
                   \"not_applicable\":\"age 3 d outside the model's 1\u{2013}5 y\"}";
        let body = current_body(old, "", &secret);
        assert!(!has_age(&body), "{body}");
        assert!(
            body.contains("age outside the model's intended range"),
            "{body}"
        );
        let new = to_json(&report_payload(
            &refused(crate::infer::dicom_image::ImageHeader {
                patient_age: "003D".into(),
                ..dx()
            }),
            &secret,
            "s",
            "d",
        ));
        assert_eq!(current_body(&new, "", &secret), new);
    }

    #[test]
    fn same_patient_same_pseudonym_across_studies_but_not_across_sites() {
        let mut a = fixtures::report();
        let mut b = fixtures::report();
        b.study.study_instance_uid = "1.2.3.4".into();
        let s1 = SiteSecret::from_bytes(&[1u8; 32]);
        let s2 = SiteSecret::from_bytes(&[2u8; 32]);
        let pa = report_payload(&a, &s1, "s", "d");
        let pb = report_payload(&b, &s1, "s", "d");
        assert_eq!(pa.patient_pseudonym, pb.patient_pseudonym);
        assert_ne!(pa.study_pseudonym, pb.study_pseudonym);
        assert_ne!(
            pa.patient_pseudonym,
            report_payload(&a, &s2, "s", "d").patient_pseudonym
        );
        a.study.patient_id = " ".into();
        assert_eq!(report_payload(&a, &s1, "s", "d").patient_pseudonym, None);
    }

    #[test]
    fn entries_queued_before_keying_are_rendered_keyed() {
        let secret = SiteSecret::from_bytes(&[4u8; 32]);
        let rid = crate::result::report_id("1.2.826.0.1.3680043.8.498.1", 1);
        let keyed = secret.pseudonym("report", &rid);
        let old =
            format!("{{\"schema\":\"duli.report.v1\",\"report_id\":\"{rid}\",\"version\":1}}");
        let v: serde_json::Value =
            serde_json::from_str(&current_body(&old, &rid, &secret)).unwrap();
        assert_eq!(v["report_id"], keyed.as_str());
        assert_eq!(v["version"], 1);
        let old_fb = format!(
            "{{\"schema\":\"duli.feedback.v1\",\"report_id\":\"{rid}\",\"finding\":\"Mr Smith, bed 4\"}}"
        );
        let fb = current_body(&old_fb, &rid, &secret);
        assert!(!fb.contains("Smith") && !fb.contains(&rid), "{fb}");
        // A time to the second, queued with a local or an already keyed id, goes out
        // rounded down to the hour, as the schema requires.
        for id in [rid.clone(), keyed.clone()] {
            let old = format!(
                "{{\"schema\":\"duli.report.v1\",\"report_id\":\"{id}\",\"created_at\":\"2026-03-04T10:17:43Z\"}}"
            );
            let v: serde_json::Value =
                serde_json::from_str(&current_body(&old, &rid, &secret)).unwrap();
            assert_eq!(v["created_at"], "2026-03-04T10:00:00Z", "{id}");
            assert_eq!(v["report_id"], keyed.as_str());
        }
        // Rendered already, or not a report: unchanged, byte for byte.
        let new = to_json(&report_payload(&fixtures::report(), &secret, "s", "d"));
        assert_eq!(current_body(&new, "r-7f3a9c2e01", &secret), new);
        assert_eq!(current_body("online", &rid, &secret), "online");
    }
}
