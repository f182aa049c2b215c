//! Finding one patient's records in the trail (an accounting of the accesses to their
//! data): a walk back from a record, newest first, bounded by how many records it reads,
//! so one request never reads the whole trail; the answer says where the walk stopped, and
//! the next request goes on from there.

use super::{Audit, Record};
use crate::store::StoreError;
use serde::Serialize;
use std::sync::atomic::Ordering;

/// Most records one search reads.
pub const MAX_SCAN: u64 = 50_000;

/// Records read from the store at a time.
const PAGE: u64 = 1_000;

/// Longest Patient ID a search takes (DICOM's LO is 64 characters; an issuer may follow).
pub const MAX_PATIENT: usize = 128;

/// What a search found, and how far it read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PatientSearch {
    /// The Patient ID searched for.
    pub patient: String,
    /// The records naming the patient, in trail order (oldest first).
    pub records: Vec<Record>,
    /// The oldest record read: the next search goes on before it.
    pub searched_from: u64,
    /// Whether the walk reached the first record the box holds (nothing older is left).
    pub complete: bool,
}

/// Whether `rec` names `patient`: as written (`ID^^^ISSUER`) or by the ID alone.
pub fn names_patient(rec: &Record, patient: &str) -> bool {
    rec.patients
        .iter()
        .any(|p| p == patient || p.split("^^^").next() == Some(patient))
}

impl Audit {
    /// The newest records (at most `limit`) before record `before` that name `patient`,
    /// reading at most `scan` records ([`MAX_SCAN`] at most).
    pub fn records_of_patient(
        &self,
        patient: &str,
        before: u64,
        limit: usize,
        scan: u64,
    ) -> Result<PatientSearch, StoreError> {
        let first = match self.first.load(Ordering::Relaxed) {
            super::budget::NONE_HELD => before,
            first => first,
        };
        let lowest = before.saturating_sub(scan.min(MAX_SCAN)).max(first);
        let mut found: Vec<Record> = Vec::new();
        let mut cursor = before;
        'walk: while cursor > lowest && found.len() < limit {
            let from = cursor.saturating_sub(PAGE).max(lowest);
            let page = self.records(from, usize::try_from(cursor - from).unwrap_or(0))?;
            for rec in page.into_iter().rev() {
                if rec.seq >= cursor {
                    continue;
                }
                cursor = rec.seq;
                if names_patient(&rec, patient) {
                    found.push(rec);
                    if found.len() >= limit {
                        break 'walk;
                    }
                }
            }
            cursor = cursor.min(from);
        }
        found.reverse();
        Ok(PatientSearch {
            patient: patient.to_string(),
            records: found,
            searched_from: cursor,
            complete: cursor <= first,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Action, Event};
    use crate::model::{InstanceRecord, StudyRecord};
    use crate::store::Store;

    /// A trail of 2,500 records, every 100th a view of PAT-1's study (with an issuer) and
    /// every 100th, offset by 50, of PAT-2's: a search finds PAT-1's by ID alone, newest
    /// first within its limit, goes on from where it stopped, stops at its scan bound, and
    /// says when it reached the start of the trail.
    #[test]
    fn a_patients_records_are_found_page_by_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (study, patient) in [("1.2.1", "PAT-1"), ("1.2.2", "PAT-2")] {
            let instance = InstanceRecord {
                sop_instance_uid: format!("{study}.1"),
                study_instance_uid: study.into(),
                ..Default::default()
            };
            let attrs = StudyRecord {
                patient_id: patient.into(),
                issuer_of_patient_id: "HOSP".into(),
                ..Default::default()
            };
            store.commit_instance(&instance, &attrs).unwrap();
        }
        let audit = Audit::open(&store).unwrap();
        for i in 0..2_500u64 {
            let object = match i % 100 {
                0 => "1.2.1",
                50 => "1.2.2",
                _ => "-",
            };
            audit
                .append(Event::new("ana", Action::View, object))
                .unwrap();
        }
        let seqs = |s: &PatientSearch| s.records.iter().map(|r| r.seq).collect::<Vec<_>>();
        let newest = audit
            .records_of_patient("PAT-1", 2_500, 3, MAX_SCAN)
            .unwrap();
        assert_eq!(seqs(&newest), [2_200, 2_300, 2_400]);
        assert_eq!((newest.searched_from, newest.complete), (2_200, false));
        let rest = audit
            .records_of_patient("PAT-1", newest.searched_from, 100, MAX_SCAN)
            .unwrap();
        assert_eq!(rest.records.len(), 22);
        assert_eq!((rest.searched_from, rest.complete), (0, true));
        assert!(rest.records.iter().all(|r| r.patients == ["PAT-1^^^HOSP"]));
        let exact = audit
            .records_of_patient("PAT-2^^^HOSP", 2_500, 100, MAX_SCAN)
            .unwrap();
        assert_eq!(exact.records.len(), 25);
        // A bounded walk: 1,000 records read, from 1,500 back to 500.
        let bounded = audit
            .records_of_patient("PAT-1", 1_500, 100, 1_000)
            .unwrap();
        assert_eq!(seqs(&bounded), (5..15).map(|i| i * 100).collect::<Vec<_>>());
        assert_eq!((bounded.searched_from, bounded.complete), (500, false));
        let nobody = audit
            .records_of_patient("PAT-9", 2_500, 10, MAX_SCAN)
            .unwrap();
        assert!(nobody.records.is_empty() && nobody.complete);
    }
}
