//! The model-pack floor: the highest version of each model's pack root has installed, kept
//! in a record only root writes (`firmware.model_pack_versions`, by default in a root-owned
//! folder under `/etc/duli`), so an older, still correctly signed pack cannot be installed
//! again by whoever runs as the service user, who owns the folder the packs themselves
//! live in. The record only ever rises.
//!
//! Format: `{"format": 1, "packs": {"<model>": "<version>", ...}}`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dir_write::Dir;
use crate::version::Version;

/// Largest record read (a few bytes per model).
const MAX_RECORD: u64 = 64 * 1024;

/// The format written.
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

/// The highest installed version of each model's pack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackVersions {
    packs: BTreeMap<String, Version>,
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
        if record.format != FORMAT {
            return Err(invalid(format!(
                "format {} (this build reads {FORMAT})",
                record.format
            )));
        }
        Ok(PackVersions {
            packs: record.packs,
        })
    }

    /// The highest version of `model`'s pack installed, if any was recorded.
    pub fn get(&self, model: &str) -> Option<Version> {
        self.packs.get(model).copied()
    }

    /// Every model's recorded version.
    pub fn all(&self) -> &BTreeMap<String, Version> {
        &self.packs
    }

    /// Records that `version` of `model`'s pack was installed; a lower version never
    /// replaces a higher one. Returns whether the record changed.
    pub fn raise(&mut self, model: &str, version: Version) -> bool {
        match self.packs.get(model) {
            Some(v) if *v >= version => false,
            _ => {
                self.packs.insert(model.to_string(), version);
                true
            }
        }
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
            packs: self.packs.clone(),
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
        assert!(r.raise("chest", v("1.2.0")));
        assert!(!r.raise("chest", v("1.1.9")), "never lowered");
        assert!(!r.raise("chest", v("1.2.0")));
        assert!(r.raise("other", v("0.1.0")));
        r.store(&path).unwrap();
        let back = PackVersions::load(&path).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.get("chest"), Some(v("1.2.0")));
        assert_eq!(back.all().len(), 2);
        assert!(r.raise("chest", v("2.0.0")));
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
        r.raise("chest", v("1.0.0"));
        r.store(&path).unwrap();
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
        assert_eq!(
            std::fs::read(&target).unwrap(),
            br#"{"format": 1, "packs": {}}"#
        );
        std::fs::create_dir(dir.path().join("folder.json")).unwrap();
        assert!(PackVersions::load(&dir.path().join("folder.json")).is_err());
    }
}
