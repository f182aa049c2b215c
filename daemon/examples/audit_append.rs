//! Measures what an audit record costs its caller (`make bench-audit`): appends records
//! like the one every C-FIND writes to a trail in a new store under DIR (default: the
//! system's temporary folder), each naming one of 100 studies held in the store, and prints
//! the mean time per append, the anchor's rewrite (`audit.head`) and the lookup of the
//! study's patient included.
//!
//! usage: audit_append [DIR] [COUNT]

use duli::audit::{Action, Audit, Event};
use duli::model::{InstanceRecord, StudyRecord};
use duli::store::Store;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let parent = args
        .next()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let count: u32 = args.next().map(|n| n.parse()).transpose()?.unwrap_or(2000);
    let dir = tempfile::tempdir_in(&parent)?;
    let store = Store::open(dir.path())?;
    let study = |i: u32| format!("1.2.826.0.1.3680043.2.{}", i % 100);
    for i in 0..100 {
        let instance = InstanceRecord {
            sop_instance_uid: format!("{}.1", study(i)),
            study_instance_uid: study(i),
            ..Default::default()
        };
        let attrs = StudyRecord {
            patient_id: format!("PAT-{i:06}"),
            issuer_of_patient_id: "HOSP".into(),
            ..Default::default()
        };
        store.commit_instance(&instance, &attrs)?;
    }
    let audit = Audit::open(&store)?;
    let started = Instant::now();
    for i in 0..count {
        audit.append(Event::new("ae:PACS", Action::Query, &study(i)).detail(
            "C-FIND PatientID=\"123456\" StudyDate=\"20260101-20260107\": 3 match(es), completed",
        ))?;
    }
    let per = started.elapsed() / count.max(1);
    println!(
        "audit append: {count} records, {:.1} µs per record (store under {})",
        per.as_secs_f64() * 1e6,
        parent.display()
    );
    Ok(())
}
