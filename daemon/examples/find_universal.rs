//! A C-FIND that no indexed key narrows, over a store of many studies (`make bench-find`):
//! the time to its first response and to the match limit (10,000, the default
//! `max_find_matches`) as the query runs now, reading the studies one at a time in
//! response order, beside what such a query had to do before its first response before it
//! streamed: read every study record and sort them.
//!
//! usage: find_universal [DIR] [STUDIES]   (default: the system's temporary folder, 100000)

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use duli::model::{InstanceRecord, StudyRecord};
use duli::qr::query::{self, Model};
use duli::store::Store;
use std::time::{Duration, Instant};

/// The default `[dicom] max_find_matches`.
const LIMIT: usize = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let parent = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let studies: u32 = args
        .next()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(100_000);
    let dir = tempfile::tempdir_in(&parent)?;
    let store = Store::open(dir.path())?;
    let filled = Instant::now();
    for i in 0..studies {
        let uid = format!("1.2.826.0.1.3680043.2.{i}");
        let inst = InstanceRecord {
            sop_instance_uid: format!("{uid}.1.1"),
            study_instance_uid: uid.clone(),
            series_instance_uid: format!("{uid}.1"),
            modality: "DX".into(),
            ..Default::default()
        };
        let attrs = StudyRecord {
            patient_id: format!("P{:06}", (i * 7919) % studies.max(1)),
            patient_name: format!("DOE^PATIENT{}", i % 977),
            study_date: format!("2026{:02}{:02}", 1 + i % 12, 1 + i % 28),
            study_time: format!("{:02}{:02}00", i % 24, i % 60),
            accession_number: format!("A{i}"),
            modalities: vec!["DX".into()],
            ..Default::default()
        };
        store.commit_instance(&inst, &attrs)?;
    }
    store.flush_blocking()?;
    println!(
        "store: {studies} studies (one instance each), filled in {:.1} s",
        filled.elapsed().as_secs_f64()
    );

    let mut obj = InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::QUERY_RETRIEVE_LEVEL,
        VR::CS,
        PrimitiveValue::from("STUDY"),
    ));
    for (tag, vr) in [
        (tags::STUDY_INSTANCE_UID, VR::UI),
        (tags::PATIENT_ID, VR::LO),
        (tags::PATIENT_NAME, VR::PN),
        (tags::STUDY_DATE, VR::DA),
    ] {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from("")));
    }
    let q = query::parse(&obj, Model::StudyRoot)?;
    let cancel = duli::qr::Stop::default();
    let mut first = [Duration::ZERO; 5];
    let mut limit = [Duration::ZERO; 5];
    let mut before = [Duration::ZERO; 5];
    // The streamed runs first, then the full reads: run in turn, a full read just before a
    // streamed run made that run's first response take about 43 ms here (cause not
    // isolated).
    for round in 0..5 {
        let started = Instant::now();
        let mut sent = 0usize;
        query::run(&store, &q, "DULI", &cancel, &mut |_| {
            if sent == 0 {
                first[round] = started.elapsed();
            }
            sent += 1;
            sent < LIMIT
        })?;
        limit[round] = started.elapsed();
    }
    for slot in &mut before {
        // Before: every record read and sorted before the first response.
        let started = Instant::now();
        let mut all = store.studies()?;
        all.sort_by(|a, b| {
            (
                &a.patient_id,
                &a.study_date,
                &a.study_time,
                &a.study_instance_uid,
            )
                .cmp(&(
                    &b.patient_id,
                    &b.study_date,
                    &b.study_time,
                    &b.study_instance_uid,
                ))
        });
        *slot = started.elapsed();
        std::hint::black_box(all);
    }
    let median = |xs: &mut [Duration; 5]| {
        xs.sort();
        xs[2].as_secs_f64() * 1000.0
    };
    println!("universal STUDY-level C-FIND, median of 5 runs, ms:");
    println!(
        "  streamed (now):          first response {:8.2}   {LIMIT} responses (the limit) {:8.2}",
        median(&mut first),
        median(&mut limit)
    );
    println!(
        "  read all, sort (before): first response {:8.2}   (then the responses on top)",
        median(&mut before)
    );
    Ok(())
}
