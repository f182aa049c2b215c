//! Retention of received pixel data. Results, study records and index entries are kept;
//! only the Part 10 files of received instances are removed (the record is marked
//! `pruned`), in two cases:
//!
//! - files older than `retention.pixel_days` (0 = keep forever);
//! - while free disk space is below `retention.disk_reserve_mb`: files of studies whose
//!   processing is finished (`done` or `error`) go first, oldest study first. Studies still
//!   in the pipeline are never pruned; until space is freed, C-STORE answers A700.

use crate::model::StudyState;
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// What one pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Files removed because of their age.
    pub expired: u64,
    /// Files removed to get back above the disk reserve.
    pub for_space: u64,
    /// Bytes freed.
    pub bytes: u64,
}

/// One retention pass. Blocking (file system work): call from a blocking context.
pub fn prune(
    store: &Store,
    pixel_days: u32,
    reserve_bytes: u64,
    now: i64,
) -> Result<PruneReport, StoreError> {
    let mut report = PruneReport::default();
    let mut studies = store.studies()?;
    studies.sort_by_key(|s| s.last_received);
    if pixel_days > 0 {
        let cutoff = now - i64::from(pixel_days) * 86_400;
        for s in &studies {
            for inst in store.instances_of(&s.study_instance_uid)? {
                if !inst.pruned && inst.received_at < cutoff {
                    report.bytes += remove(store, &inst)?;
                    report.expired += 1;
                }
            }
        }
    }
    let below = || {
        store
            .files()
            .free_bytes()
            .map(|free| free < reserve_bytes)
            .unwrap_or(false)
    };
    if below() {
        'studies: for s in studies
            .iter()
            .filter(|s| matches!(s.state, StudyState::Done | StudyState::Error))
        {
            for inst in store.instances_of(&s.study_instance_uid)? {
                if !inst.pruned {
                    report.bytes += remove(store, &inst)?;
                    report.for_space += 1;
                }
            }
            if !below() {
                break 'studies;
            }
        }
    }
    if report.expired + report.for_space > 0 {
        store.flush_blocking()?;
    }
    Ok(report)
}

fn remove(store: &Store, inst: &crate::model::InstanceRecord) -> Result<u64, StoreError> {
    store
        .files()
        .remove(std::path::Path::new(&inst.path))
        .map_err(|source| StoreError::Io {
            what: format!("remove {}", inst.path),
            source,
        })?;
    store.mark_pruned(&inst.sop_instance_uid)?;
    Ok(inst.size)
}

/// Runs a full pass at start and every `every`, and an extra one whenever a check (every
/// 30 s) finds free space below the reserve; logs what was removed.
pub async fn run(store: Arc<Store>, pixel_days: u32, reserve_bytes: u64, every: Duration) {
    let check = Duration::from_secs(30);
    let mut since_full = every;
    loop {
        let below = store
            .files()
            .free_bytes()
            .map(|free| free < reserve_bytes)
            .unwrap_or(false);
        if since_full >= every || below {
            since_full = Duration::ZERO;
            let s = store.clone();
            let result = tokio::task::spawn_blocking(move || {
                prune(&s, pixel_days, reserve_bytes, crate::clock::now_secs())
            })
            .await;
            match result {
                Ok(Ok(r)) if r.expired + r.for_space > 0 => log::info!(
                    "retention: removed pixel data of {} expired and {} instances for disk space ({} MB)",
                    r.expired,
                    r.for_space,
                    r.bytes / 1_000_000
                ),
                Ok(Ok(_)) if below => log::warn!(
                    "free disk below the reserve and nothing finished is left to prune; C-STORE answers A700"
                ),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::error!("retention pass failed: {e}"),
                Err(e) => log::error!("retention task failed: {e}"),
            }
        }
        tokio::time::sleep(check).await;
        since_full += check;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceRecord, StudyRecord};

    fn put(store: &Store, study: &str, sop: &str, received_at: i64) {
        let mut f = store.files().incoming().unwrap();
        f.write(&[0u8; 1000]).unwrap();
        let staged = f.finish().unwrap();
        let rel = store.files().place(staged, study, sop).unwrap();
        let inst = InstanceRecord {
            sop_instance_uid: sop.into(),
            study_instance_uid: study.into(),
            path: rel.to_string_lossy().into(),
            size: 1000,
            received_at,
            ..Default::default()
        };
        store
            .commit_instance(&inst, &StudyRecord::default())
            .unwrap();
    }

    #[test]
    fn expired_pixel_data_goes_and_records_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let now = 10_000_000;
        put(&store, "1.1", "1.1.1", now - 40 * 86_400);
        put(&store, "1.2", "1.2.1", now - 86_400);
        let r = prune(&store, 30, 0, now).unwrap();
        assert_eq!(r.expired, 1);
        let old = store.instance("1.1.1").unwrap().unwrap();
        assert!(old.pruned);
        assert!(!dir.path().join(&old.path).exists());
        let young = store.instance("1.2.1").unwrap().unwrap();
        assert!(!young.pruned);
        assert!(dir.path().join(&young.path).exists());
        // study records are kept
        assert!(store.study("1.1").unwrap().is_some());
    }

    #[test]
    fn below_the_reserve_only_finished_studies_are_pruned_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put(&store, "2.1", "2.1.1", 100);
        put(&store, "2.2", "2.2.1", 200);
        put(&store, "2.3", "2.3.1", 300);
        store.force_state("2.1", StudyState::Done);
        store.force_state("2.3", StudyState::Done);
        // An impossible reserve: everything finished goes, the rest stays.
        let r = prune(&store, 0, u64::MAX, 1000).unwrap();
        assert_eq!(r.for_space, 2);
        assert!(store.instance("2.1.1").unwrap().unwrap().pruned);
        assert!(store.instance("2.3.1").unwrap().unwrap().pruned);
        assert!(!store.instance("2.2.1").unwrap().unwrap().pruned);
    }
}
