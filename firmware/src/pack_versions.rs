//! The model-pack floor: the highest version of each model's pack root has installed, kept
//! in a record only root writes (`firmware.model_pack_versions`, by default in a root-owned
//! folder under `/etc/duli`), so an older, still correctly signed pack cannot be installed
//! again by whoever runs as the service user, who owns the folder the packs themselves
//! live in. The record only ever rises.
//!
//! Each install name also keeps which model its packs are: the `name` of the model
//! manifest inside the first pack installed under it with this record (signed with the
//! pack, as every byte of its payload is). A pack of another model under that name is
//! refused unless a technician replaces the model on purpose, which starts that name's
//! floor again from the new model's pack.
//!
//! Two files, so that a release from before models were recorded, after a rollback, still
//! reads the versions: `{"format": 1, "packs": {"<install name>": "<version>", ...}}` at
//! the record's path, and `{"format": 1, "models": {"<install name>": "<model>", ...}}`
//! beside it ([`models_path`]; missing means no model recorded yet).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dir_write::Dir;
use crate::version::Version;

/// Largest record read (a few bytes per model).
const MAX_RECORD: u64 = 64 * 1024;

/// The format of both files.
const FORMAT: u32 = 1;

/// Why the record cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PackVersionsError {
    /// Reading or writing failed.
    #[error("model-pack version record {path}: {source}")]
    Io {
        /// The record.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The record is not one this build reads.
    #[error("model-pack version record {path} is not valid ({reason}); as root, check it or remove it (the next install then starts from the installed pack's own manifest)")]
    Invalid {
        /// The record.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    format: u32,
    packs: BTreeMap<String, Version>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelRecord {
    format: u32,
    models: BTreeMap<String, String>,
}

/// The floor of one install name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Floor {
    /// The highest version installed.
    pub version: Version,
    /// The model its packs are (the `name` in the pack's model manifest); `None` when
    /// recorded before models were.
    pub model: Option<String>,
}

/// The highest installed version of each install name's pack, with its model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackVersions {
    packs: BTreeMap<String, Floor>,
}

/// The file beside the record at `path` that keeps each install name's model:
/// `model-packs.json` → `model-packs.models.json`.
pub fn models_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{stem}.models.json"))
}

/// Reads a small JSON record at `path` without following a link; `None` when missing.
fn read_record<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, PackVersionsError> {
    let invalid = |reason: String| PackVersionsError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let text = match crate::dir_read::read_small(path, MAX_RECORD) {
        Ok(Some(text)) => text,
        Ok(None) => return Ok(None),
        Err(crate::dir_read::ReadError::Io(source)) => {
            return Err(PackVersionsError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(e) => return Err(invalid(e.to_string())),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

impl PackVersions {
    /// Reads the record at `path` and the models beside it ([`models_path`]), without
    /// following a link; a missing record is empty.
    pub fn load(path: &Path) -> Result<PackVersions, PackVersionsError> {
        let format = |p: &Path, format: u32| {
            if format == FORMAT {
                Ok(())
            } else {
                Err(PackVersionsError::Invalid {
                    path: p.to_path_buf(),
                    reason: format!("format {format} (this build reads {FORMAT})"),
                })
            }
        };
        let Some(record) = read_record::<Record>(path)? else {
            return Ok(PackVersions::default());
        };
        format(path, record.format)?;
        let models_at = models_path(path);
        let models = match read_record::<ModelRecord>(&models_at)? {
            Some(m) => {
                format(&models_at, m.format)?;
                m.models
            }
            None => BTreeMap::new(),
        };
        let packs = record
            .packs
            .into_iter()
            .map(|(name, version)| {
                let model = models.get(&name).cloned();
                (name, Floor { version, model })
            })
            .collect();
        Ok(PackVersions { packs })
    }

    /// The highest version of install name `name`'s pack installed, if any was recorded.
    pub fn get(&self, name: &str) -> Option<Version> {
        self.packs.get(name).map(|f| f.version)
    }

    /// The model recorded for install name `name`, if any.
    pub fn model(&self, name: &str) -> Option<&str> {
        self.packs.get(name).and_then(|f| f.model.as_deref())
    }

    /// Every install name's floor.
    pub fn all(&self) -> &BTreeMap<String, Floor> {
        &self.packs
    }

    /// Records that `version` of model `model`'s pack was installed under `name`; a lower
    /// version never replaces a higher one of the same model, and a record without a model
    /// learns it. Returns whether the record changed. A pack of another model than the one
    /// recorded is refused before it is installed ([`Self::other_model`]); recording one
    /// (a replacement a technician chose) starts the floor again from its version.
    pub fn raise(&mut self, name: &str, version: Version, model: &str) -> bool {
        let new = Floor {
            version,
            model: Some(model.to_string()),
        };
        match self.packs.get_mut(name) {
            Some(f) if f.model.as_deref().is_none_or(|m| m == model) => {
                let before = f.clone();
                f.version = f.version.max(version);
                f.model = Some(model.to_string());
                *f != before
            }
            _ => {
                self.packs.insert(name.to_string(), new);
                true
            }
        }
    }

    /// Records that a technician replaced the model under `name` by `version` of `model`:
    /// the floor starts again from it, whatever was recorded before.
    pub fn replace(&mut self, name: &str, version: Version, model: &str) {
        self.packs.insert(
            name.to_string(),
            Floor {
                version,
                model: Some(model.to_string()),
            },
        );
    }

    /// The model recorded under `name` when it is not `model` (a pack of `model` would
    /// replace it).
    pub fn other_model(&self, name: &str, model: &str) -> Option<&str> {
        self.model(name).filter(|m| *m != model)
    }

    /// Writes the record to `path` atomically, creating its folder (owner-writable only)
    /// when missing; the write goes through the folder's descriptor, never through a link.
    pub fn store(&self, path: &Path) -> Result<(), PackVersionsError> {
        use std::os::unix::fs::DirBuilderExt;
        let io = |source| PackVersionsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let folder = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d,
            None => Path::new("."),
        };
        let existed = folder.is_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(folder)
            .map_err(io)?;
        if !existed {
            // 0755 whatever the caller's umask: the service user reads the record.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        }
        let name = path
            .file_name()
            .ok_or_else(|| PackVersionsError::Invalid {
                path: path.to_path_buf(),
                reason: "names no file".into(),
            })?
            .to_string_lossy()
            .into_owned();
        let record = Record {
            format: FORMAT,
            packs: self
                .packs
                .iter()
                .map(|(name, floor)| (name.clone(), floor.version))
                .collect(),
        };
        let models = ModelRecord {
            format: FORMAT,
            models: self
                .packs
                .iter()
                .filter_map(|(name, floor)| Some((name.clone(), floor.model.clone()?)))
                .collect(),
        };
        let dir = Dir::open(folder).map_err(io)?;
        // The models first: a record whose versions are written is never ahead of them.
        let models_name = models_path(Path::new(&name)).to_string_lossy().into_owned();
        dir.replace(&models_name, &pretty(&models).map_err(io)?)
            .map_err(io)?;
        dir.replace(&name, &pretty(&record).map_err(io)?)
            .map_err(io)
    }
}

/// A record as pretty JSON with a final newline.
fn pretty<T: Serialize>(record: &T) -> std::io::Result<Vec<u8>> {
    let mut text = serde_json::to_vec_pretty(record)?;
    text.push(b'\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn the_record_only_rises_and_survives_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/model-packs.json");
        let mut r = PackVersions::load(&path).unwrap();
        assert_eq!(r.get("chest"), None, "a missing record is empty");
        assert!(r.raise("chest", v("1.2.0"), "xception"));
        assert!(!r.raise("chest", v("1.1.9"), "xception"), "never lowered");
        assert!(!r.raise("chest", v("1.2.0"), "xception"));
        assert!(r.raise("other", v("0.1.0"), "densenet"));
        r.store(&path).unwrap();
        let back = PackVersions::load(&path).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.get("chest"), Some(v("1.2.0")));
        assert_eq!(back.all().len(), 2);
        assert_eq!(back.model("chest"), Some("xception"));
        assert!(r.raise("chest", v("2.0.0"), "xception"));
        r.store(&path).unwrap();
        assert_eq!(
            PackVersions::load(&path).unwrap().get("chest"),
            Some(v("2.0.0"))
        );
    }

    #[test]
    fn damaged_foreign_or_linked_records_are_errors_not_an_empty_floor() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model-packs.json");
        for bad in [
            &b"{"[..],
            br#"{"format": 2, "packs": {}}"#,
            br#"{"format": 1, "packs": {"chest": "1.x"}}"#,
            br#"{"format": 1, "packs": {"chest": {"version": "1.0.0"}}}"#,
            br#"{"format": 1, "packs": {}, "extra": 1}"#,
        ] {
            std::fs::write(&path, bad).unwrap();
            let e = PackVersions::load(&path).unwrap_err();
            assert!(matches!(e, PackVersionsError::Invalid { .. }), "{e}");
            assert!(e.to_string().contains("remove it"), "{e}");
        }
        std::fs::write(&path, vec![b' '; MAX_RECORD as usize + 1]).unwrap();
        assert!(PackVersions::load(&path)
            .unwrap_err()
            .to_string()
            .contains("larger than"));
        std::fs::remove_file(&path).unwrap();
        let target = dir.path().join("elsewhere.json");
        std::fs::write(&target, br#"{"format": 1, "packs": {}}"#).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(PackVersions::load(&path).is_err(), "a link is not followed");
        // Storing replaces the link itself; its target is untouched.
        let mut r = PackVersions::default();
        r.raise("chest", v("1.0.0"), "xception");
        r.store(&path).unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(
            std::fs::read(&target).unwrap(),
            br#"{"format": 1, "packs": {}}"#
        );
        std::fs::create_dir(dir.path().join("folder.json")).unwrap();
        assert!(PackVersions::load(&dir.path().join("folder.json")).is_err());
        // A damaged models file is an error too, not a record without models.
        let models = models_path(&path);
        for bad in [
            &b"{"[..],
            br#"{"format": 2, "models": {}}"#,
            br#"{"format": 1, "models": {"chest": 7}}"#,
        ] {
            std::fs::write(&models, bad).unwrap();
            let e = PackVersions::load(&path).unwrap_err();
            assert!(e.to_string().contains("models.json"), "{e}");
        }
    }

    /// A record without models (as releases before them wrote it) is read, learns its
    /// model from the next pack installed, and keeps the versions file as those releases
    /// read it (a rollback still finds its floor); a pack of another model is named as
    /// such, and recording it (a replacement a technician chose) starts the floor again.
    #[test]
    fn each_install_name_keeps_its_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model-packs.json");
        std::fs::write(&path, br#"{"format": 1, "packs": {"chest": "1.2.0"}}"#).unwrap();
        let mut r = PackVersions::load(&path).unwrap();
        assert_eq!((r.get("chest"), r.model("chest")), (Some(v("1.2.0")), None));
        assert_eq!(
            r.other_model("chest", "xception"),
            None,
            "no model recorded yet"
        );
        assert!(r.raise("chest", v("1.0.0"), "xception"), "learns its model");
        assert_eq!(r.get("chest"), Some(v("1.2.0")), "and keeps its floor");
        r.store(&path).unwrap();
        let versions: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            versions,
            serde_json::json!({"format": 1, "packs": {"chest": "1.2.0"}}),
            "the versions file as releases without models read it"
        );
        assert_eq!(
            models_path(&path),
            dir.path().join("model-packs.models.json")
        );
        let models: serde_json::Value =
            serde_json::from_slice(&std::fs::read(models_path(&path)).unwrap()).unwrap();
        assert_eq!(
            models,
            serde_json::json!({"format": 1, "models": {"chest": "xception"}})
        );
        let back = PackVersions::load(&path).unwrap();
        assert_eq!(back.model("chest"), Some("xception"));
        assert_eq!(back.other_model("chest", "xception"), None);
        assert_eq!(back.other_model("chest", "densenet"), Some("xception"));
        let mut replaced = back.clone();
        assert!(replaced.raise("chest", v("0.3.0"), "densenet"));
        assert_eq!(
            (replaced.get("chest"), replaced.model("chest")),
            (Some(v("0.3.0")), Some("densenet"))
        );
        // A replacement chosen where no model was recorded starts the floor again too.
        let mut unknown = PackVersions::default();
        unknown.packs.insert(
            "chest".into(),
            Floor {
                version: v("5.0.0"),
                model: None,
            },
        );
        unknown.replace("chest", v("0.2.0"), "densenet");
        assert_eq!(
            (unknown.get("chest"), unknown.model("chest")),
            (Some(v("0.2.0")), Some("densenet"))
        );
    }
}
