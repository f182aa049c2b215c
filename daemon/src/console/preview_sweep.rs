//! Removal of cached previews whose pixel data is gone: retention prunes an instance's
//! file in the store ([`crate::store::pruning`]), and the console, which owns the preview
//! cache, removes its copies. A preview asked for after the pruning is removed at once
//! ([`super::preview::get_or_render`]); [`run`] sweeps the whole cache at start and every
//! [`EVERY`], so the space comes back without anyone asking, and what a crash left half
//! written goes too.

use super::preview::{self, DIR};
use crate::store::{Store, StoreError};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Interval between two sweeps of the preview cache.
pub const EVERY: Duration = Duration::from_secs(60);

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Swept {
    fn add(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
    }
}

/// Why a sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The cache folder or one of its files could not be read or removed.
    #[error("preview cache {path}: {source}")]
    Io {
        /// The folder or file.
        path: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The store could not say whether an instance still has its pixel data.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SweepError + '_ {
    move |source| SweepError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Removes every cached preview whose instance is pruned, no longer in the store or was
/// received again since, every sidecar without its image or naming no instance (an
/// earlier version's: made again on demand), every image without its sidecar and every
/// temporary file. Holds the render
/// lock, so no preview is half written meanwhile. Blocking: call it from a blocking task.
pub fn sweep(store: &Store, data_dir: &Path) -> Result<Swept, SweepError> {
    let dir = data_dir.join(DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Swept::default()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let _no_render = preview::hold_renders();
    let mut swept = Swept::default();
    for entry in entries {
        let path = entry.map_err(io_err(&dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let stale = if let Some(stem) = name.strip_suffix(".json") {
            match preview::sidecar_source(&path) {
                Some((sop, received_at)) => {
                    !has_pixels(store, &sop, received_at)?
                        || !dir.join(format!("{stem}.png")).exists()
                }
                None => true,
            }
        } else if let Some(stem) = name.strip_suffix(".png") {
            !dir.join(format!("{stem}.json")).exists()
        } else {
            name.ends_with(".tmp")
        };
        if !stale {
            continue;
        }
        let mut doomed = vec![path.clone()];
        if let Some(stem) = name.strip_suffix(".json") {
            doomed.push(dir.join(format!("{stem}.png")));
        }
        for p in doomed {
            if let Some(bytes) = preview::remove_file(&p).map_err(io_err(&p))? {
                swept.add(bytes);
            }
        }
    }
    Ok(swept)
}

/// Whether the store holds instance `sop`, received at `received_at`, with its pixel data.
fn has_pixels(store: &Store, sop: &str, received_at: i64) -> Result<bool, StoreError> {
    Ok(store
        .instance(sop)?
        .is_some_and(|i| !i.pruned && i.received_at == received_at))
}

/// Sweeps the preview cache of `data_dir` at once and then every [`EVERY`] until `stop`
/// turns true; the daemon runs it as the supervised stage `console-previews`.
pub async fn run(store: Arc<Store>, data_dir: std::path::PathBuf, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (store, dir) = (store.clone(), data_dir.clone());
        match tokio::task::spawn_blocking(move || sweep(&store, &dir)).await {
            Ok(Ok(s)) if s.files > 0 => log::info!(
                "console: removed {} cached preview files of pruned or unknown instances ({} kB)",
                s.files,
                s.bytes / 1000
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::error!("console: sweeping the preview cache: {e}"),
            Err(e) => log::error!("console: the preview cache sweep failed: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceRecord, StudyRecord, StudyState};
    use crate::store::pruning::PruneRule;

    fn cache(
        data_dir: &Path,
        sop: &str,
        sidecar: &str,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let (png, json) = preview::cache_paths(data_dir, sop);
        std::fs::create_dir_all(png.parent().unwrap()).unwrap();
        std::fs::write(&png, b"png").unwrap();
        std::fs::write(&json, sidecar).unwrap();
        (png, json)
    }

    fn sidecar(sop: &str, received_at: i64) -> String {
        serde_json::json!({
            "sop_instance_uid": sop, "received_at": received_at, "width": 1, "height": 1, "source_columns": 1,
            "source_rows": 1, "min": 0.0, "max": 1.0, "window_center": 0.5,
            "window_width": 1.0, "invert": false, "photometric": "MONOCHROME2"
        })
        .to_string()
    }

    /// The previews of a pruned instance, of an instance the store does not know, of an
    /// instance received again, of an earlier version's sidecar, and leftovers go; the
    /// preview of an instance that still has its pixel data stays.
    #[test]
    fn previews_of_pruned_and_unknown_instances_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let study = StudyRecord {
            study_instance_uid: "1.2".into(),
            state: StudyState::Done,
            ..Default::default()
        };
        let kept = InstanceRecord {
            sop_instance_uid: "1.2.1".into(),
            study_instance_uid: "1.2".into(),
            path: "kept.dcm".into(),
            ..Default::default()
        };
        let pruned = InstanceRecord {
            sop_instance_uid: "1.2.2".into(),
            path: "pruned.dcm".into(),
            ..kept.clone()
        };
        let resent = InstanceRecord {
            sop_instance_uid: "1.2.3".into(),
            path: "resent.dcm".into(),
            received_at: 20,
            ..kept.clone()
        };
        for i in [&kept, &pruned, &resent] {
            store.commit_instance(i, &study).unwrap();
        }
        store
            .transition(
                "1.2",
                &[StudyState::Receiving, StudyState::Done],
                StudyState::Done,
            )
            .unwrap();
        let claimed = store
            .claim_for_pruning(
                "1.2",
                std::slice::from_ref(&pruned),
                PruneRule::StudyFinished,
                &Default::default(),
            )
            .unwrap();
        assert_eq!(claimed.len(), 1);

        let keep = cache(dir.path(), "1.2.1", &sidecar("1.2.1", 0));
        let gone = [
            cache(dir.path(), "1.2.2", &sidecar("1.2.2", 0)),
            cache(dir.path(), "1.2.3", &sidecar("1.2.3", 10)),
            cache(dir.path(), "9.9", &sidecar("9.9", 0)),
            cache(dir.path(), "1.2.1.old", r#"{"width": 1}"#),
        ];
        let previews = dir.path().join(DIR);
        let leftovers = [
            previews.join("orphan.png"),
            previews.join("x.png.tmp"),
            previews.join("y.json.tmp"),
        ];
        for l in &leftovers {
            std::fs::write(l, b"x").unwrap();
        }

        let swept = sweep(&store, dir.path()).unwrap();
        assert!(keep.0.exists() && keep.1.exists(), "kept preview removed");
        for (png, json) in &gone {
            assert!(!png.exists() && !json.exists(), "{} left", png.display());
        }
        for l in &leftovers {
            assert!(!l.exists(), "{} left", l.display());
        }
        assert_eq!(swept.files, 11, "{swept:?}");
        assert_eq!(sweep(&store, dir.path()).unwrap(), Swept::default());
    }

    #[test]
    fn no_cache_folder_is_nothing_to_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(sweep(&store, dir.path()).unwrap(), Swept::default());
    }
}
