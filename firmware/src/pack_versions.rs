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
//! Format: `{"format": 2, "packs": {"<install name>": {"version": "<version>", "model":
//! "<model name>"}, ...}}`; format 1 (`{"<install name>": "<version>"}`, no model) is read.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dir_write::Dir;
use crate::version::Version;

/// Largest record read (a few bytes per model).
const MAX_RECORD: u64 = 64 * 1024;

/// The format written.
const FORMAT: u32 = 2;

/// The format before models were recorded: read, never written.
const FORMAT_VERSIONS_ONLY: u32 = 1;

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
    packs: BTreeMap<String, Entry>,
}

/// One install name's record: its floor and, when known, its model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
enum Entry {
    /// Format 1: the version alone.
    Version(Version),
    /// Format 2.
    Pack(Floor),
}

/// The floor of one install name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Floor {
    /// The highest version installed.
    pub version: Version,
    /// The model its packs are (the `name` in the pack's model manifest); `None` when
    /// recorded before models were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// The highest installed version of each install name's pack, with its model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackVersions {
    packs: BTreeMap<String, Floor>,
}

impl PackVersions {
    /// Reads the record at `path` (without following a link); a missing record is empty.
    pub fn load(path: &Path) -> Result<PackVersions, PackVersionsError> {
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| PackVersionsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |reason: String| PackVersionsError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(PackVersions::default())
            }
            Err(e) => return Err(io(e)),
        };
        if !file.metadata().map_err(io)?.is_file() {
            return Err(invalid("not a regular file".into()));
        }
        let mut text = Vec::new();
        file.take(MAX_RECORD + 1)
            .read_to_end(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_RECORD {
            return Err(invalid(format!("larger than {MAX_RECORD} bytes")));
        }
        let record: Record = serde_json::from_slice(&text).map_err(|e| invalid(e.to_string()))?;
        if ![FORMAT_VERSIONS_ONLY, FORMAT].contains(&record.format) {
            return Err(invalid(format!(
                "format {} (this build reads {FORMAT_VERSIONS_ONLY} and {FORMAT})",
                record.format
            )));
        }
        let mut packs = BTreeMap::new();
        for (name, entry) in record.packs {
            let floor = match (record.format, entry) {
                (FORMAT_VERSIONS_ONLY, Entry::Version(version)) => Floor {
                    version,
                    model: None,
                },
                (FORMAT, Entry::Pack(floor)) => floor,
                (format, _) => {
                    return Err(invalid(format!(
                        "the entry of {name:?} is not one of format {format}"
                    )))
                }
            };
            packs.insert(name, floor);
        }
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
                .map(|(name, floor)| (name.clone(), Entry::Pack(floor.clone())))
                .collect(),
        };
        let mut text = serde_json::to_vec_pretty(&record).map_err(|e| io(e.into()))?;
        text.push(b'\n');
        Dir::open(folder)
            .and_then(|d| d.replace(&name, &text))
            .map_err(io)
    }
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
            br#"{"format": 3, "packs": {}}"#,
            br#"{"format": 1, "packs": {"chest": "1.x"}}"#,
            br#"{"format": 1, "packs": {"chest": {"version": "1.0.0"}}}"#,
            br#"{"format": 2, "packs": {"chest": "1.0.0"}}"#,
            br#"{"format": 2, "packs": {"chest": {"version": "1.0.0", "extra": 1}}}"#,
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
    }

    /// A record of format 1 (versions only) is read, learns its model from the next pack
    /// installed, and is written as format 2; a pack of another model is named as such,
    /// and recording it (a replacement chosen by a technician) starts the floor again.
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
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""format": 2"#), "{text}");
        let back = PackVersions::load(&path).unwrap();
        assert_eq!(back.model("chest"), Some("xception"));
        assert_eq!(back.other_model("chest", "xception"), None);
        assert_eq!(back.other_model("chest", "densenet"), Some("xception"));
        let mut replaced = back;
        assert!(replaced.raise("chest", v("0.3.0"), "densenet"));
        assert_eq!(
            (replaced.get("chest"), replaced.model("chest")),
            (Some(v("0.3.0")), Some("densenet"))
        );
    }
}
