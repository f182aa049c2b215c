//! Fills a data directory with synthetic studies for the worklist benchmark
//! (`bench/worklist.py`): each study has one instance record (no pixel file), and most have
//! a recorded result (one in ten urgent), written through the store as the pipeline
//! writes them.
//!
//! usage: seed_worklist DATA_DIR COUNT

use duli::model::{InstanceRecord, StudyRecord, StudyState};
use duli::result::{Finding, ImageResult, ImageStatus, ModelInfo, StudyResult, Timings};
use duli::store::Store;

fn finding(label: &str, probability: f32) -> Finding {
    Finding {
        label: label.to_string(),
        code: label.to_uppercase(),
        probability,
        threshold: 0.5,
        positive: probability >= 0.5,
        standard: None,
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(count)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: seed_worklist DATA_DIR COUNT");
    };
    let count: u32 = count.parse()?;
    let store = Store::open(std::path::Path::new(&dir))?;
    let start = duli::clock::now_secs() - i64::from(count) * 60;
    for i in 0..count {
        let study_uid = format!("1.2.826.0.1.3680043.10.1499.{i}");
        let sop_uid = format!("{study_uid}.1.1");
        let received = start + i64::from(i) * 60;
        let instance = InstanceRecord {
            sop_instance_uid: sop_uid.clone(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.1.1".into(),
            study_instance_uid: study_uid.clone(),
            series_instance_uid: format!("{study_uid}.1"),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            path: format!("files/bench/{i}.dcm"),
            size: 10 << 20,
            received_at: received,
            source_ae: "BENCH".into(),
            modality: "DX".into(),
            series_number: Some(1),
            instance_number: Some(1),
            body_part: "CHEST".into(),
            view_position: "PA".into(),
            rows: Some(2048),
            columns: Some(2048),
            ..Default::default()
        };
        let study = StudyRecord {
            study_instance_uid: study_uid.clone(),
            patient_id: format!("PID{i:06}"),
            patient_name: format!("Bench^Patient{i}"),
            accession_number: format!("ACC{i:06}"),
            study_date: "20260101".into(),
            study_description: "CHEST PA".into(),
            modalities: vec!["DX".into()],
            ..Default::default()
        };
        store.commit_instance(&instance, &study)?;
        // Nine in ten studies are analysed; the rest wait in `complete`.
        if i % 10 == 9 {
            store.transition(&study_uid, &[StudyState::Receiving], StudyState::Complete)?;
            continue;
        }
        store.transition(&study_uid, &[StudyState::Receiving], StudyState::Inferring)?;
        let p = if i % 10 == 0 { 0.91 } else { 0.12 };
        let findings = vec![finding("Pneumonia", p), finding("Effusion", 0.05)];
        let result = StudyResult {
            report_id: duli::result::report_id(&study_uid, 1),
            study_instance_uid: study_uid.clone(),
            version: 1,
            images: vec![ImageResult {
                sop_instance_uid: sop_uid,
                series_instance_uid: format!("{study_uid}.1"),
                status: ImageStatus::Analysed,
                reason: None,
                caveat: None,
                findings: findings.clone(),
                timings: Timings::default(),
                heatmap: Default::default(),
            }],
            triage: p >= 0.5,
            findings,
            model: ModelInfo {
                name: "bench".into(),
                version: "1".into(),
                sha256: "0".repeat(64),
                weights_sha256: String::new(),
                precision: "f32".into(),
                coding_scheme: duli::result::local_scheme(),
            },
            timings: Timings::default(),
            created_at: received * 1000,
        };
        duli::store::results::commit_result(
            &store,
            &result,
            &[],
            &[],
            duli::store::results::ReportedFor::Keep,
        )?;
    }
    store.flush_blocking()?;
    println!("{count} studies in {dir}");
    Ok(())
}
