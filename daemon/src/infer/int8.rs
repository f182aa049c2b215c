//! The INT8 network of a model: a post-training quantized copy of the manifest's IR that
//! `make models` builds (`scripts/setup-int8.sh`, NNCF pinned from PyPI) into
//! `.cache/models/<name>/int8/`. It is never committed: the source weights carry no
//! licence. Its build record `int8.json` names the IR it was quantized from (the SHA-256
//! of its `.xml` and of its weights: the `.xml` describes structure only, so retrained
//! weights keep its checksum) and the checksums of its own files; the IR is loaded only
//! when all match.

use super::manifest::{sha256_file, Manifest, ModelFile};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name of the build record inside an INT8 folder.
pub const RECORD: &str = "int8.json";

/// Why the INT8 network cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Int8Error {
    /// No INT8 folder with a build record was found.
    #[error("no INT8 build of model {model} (looked in:\n{tried}); run `make models` (scripts/setup-int8.sh)")]
    Missing {
        /// Model name.
        model: String,
        /// The folders looked at.
        tried: String,
    },
    /// The build record is unreadable or malformed.
    #[error("INT8 build record {path}: {reason}")]
    Record {
        /// The record.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The INT8 network was quantized from another IR (another `.xml` or other weights).
    #[error("INT8 build in {dir} is for another network: it was quantized from {built_from}, but the manifest's is {expected}; run `make models` (scripts/setup-int8.sh) again")]
    Stale {
        /// The INT8 folder.
        dir: PathBuf,
        /// Source checksums in the record.
        built_from: SourceId,
        /// Source checksums in the manifest.
        expected: SourceId,
    },
    /// A file does not match its checksum in the record.
    #[error("INT8 file {path} has SHA-256 {actual}, but its build record says {expected}: refusing to load it")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Checksum in the record.
        expected: String,
        /// Checksum on disk.
        actual: String,
    },
}

/// What `scripts/quantize-int8.py` records about an INT8 build.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BuildRecord {
    /// How it was built (`scripts/quantize-int8.py`'s `RECIPE`).
    #[serde(default)]
    pub recipe: String,
    /// SHA-256 of the f32/FP16 IR it was quantized from (the manifest's `file.sha256`).
    pub source_sha256: String,
    /// SHA-256 of that IR's weights (the manifest's `file.weights_sha256`); a build
    /// without it is not used for a network with weights.
    #[serde(default)]
    pub source_weights_sha256: Option<String>,
    /// The INT8 IR's `.xml`, relative to its folder.
    pub xml: PathBuf,
    /// SHA-256 of `xml`.
    pub xml_sha256: String,
    /// The INT8 IR's `.bin`, relative to its folder.
    pub bin: PathBuf,
    /// SHA-256 of `bin`.
    pub bin_sha256: String,
    /// NNCF version used.
    #[serde(default)]
    pub nncf: String,
    /// Calibration images (folder and count).
    #[serde(default)]
    pub calibration: serde_json::Value,
}

/// The network an INT8 build was quantized from: the SHA-256 of its `.xml` and of its
/// weights (lowercase; `None` for a network without a weights file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceId {
    /// SHA-256 of the `.xml`.
    pub sha256: String,
    /// SHA-256 of the weights.
    pub weights_sha256: Option<String>,
}

impl SourceId {
    /// The network `manifest` names.
    pub fn of_manifest(manifest: &Manifest) -> SourceId {
        SourceId {
            sha256: manifest.file.sha256.to_ascii_lowercase(),
            weights_sha256: manifest
                .file
                .weights_sha256
                .as_ref()
                .map(|w| w.to_ascii_lowercase()),
        }
    }

    /// The network `record` says it was quantized from.
    pub fn of_record(record: &BuildRecord) -> SourceId {
        SourceId {
            sha256: record.source_sha256.to_ascii_lowercase(),
            weights_sha256: record
                .source_weights_sha256
                .as_ref()
                .map(|w| w.to_ascii_lowercase()),
        }
    }
}

impl std::fmt::Display for SourceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "network {}, weights {}",
            self.sha256,
            self.weights_sha256.as_deref().unwrap_or("none")
        )
    }
}

/// A verified INT8 network.
#[derive(Debug, Clone)]
pub struct Int8Model {
    /// Its folder (gate records of INT8 live here).
    pub dir: PathBuf,
    /// The manifest with `file` pointing at the INT8 IR.
    pub manifest: Manifest,
    /// SHA-256 of the INT8 `.xml`.
    pub sha256: String,
}

/// The folders an INT8 build of `manifest` is looked for in, in order: `int8/` beside the
/// manifest (an installed system image), then, for a manifest in a checkout's `models/`
/// (the working directory's or the repository the binary was built from), that
/// checkout's `.cache/models/<name>/int8`. An INT8 network is only ever read from the
/// tree its manifest is in: a manifest elsewhere (the image's, read-only) never picks up
/// a network planted in whatever folder the process runs in.
pub fn candidates(manifest: &Manifest) -> Vec<PathBuf> {
    let rel = Path::new(".cache/models").join(&manifest.name).join("int8");
    let mut v = vec![manifest.dir.join("int8")];
    let absolute = |p: &Path| std::fs::canonicalize(p).ok();
    let Some(dir) = absolute(&manifest.dir) else {
        return v;
    };
    let roots = [std::env::current_dir().ok(), crate::locate::source_root()];
    for root in roots.into_iter().flatten().filter_map(|r| absolute(&r)) {
        if dir.starts_with(root.join("models")) {
            let candidate = root.join(&rel);
            if !v.contains(&candidate) {
                v.push(candidate);
            }
        }
    }
    v
}

/// Finds, checks and describes the INT8 build of `manifest`.
pub fn load(manifest: &Manifest) -> Result<Int8Model, Int8Error> {
    let tried = candidates(manifest);
    let Some(dir) = tried.iter().find(|d| d.join(RECORD).is_file()).cloned() else {
        return Err(Int8Error::Missing {
            model: manifest.name.clone(),
            tried: tried
                .iter()
                .map(|d| format!("  {}", d.display()))
                .collect::<Vec<_>>()
                .join("\n"),
        });
    };
    load_from(manifest, &dir)
}

/// As [`load`] from a given folder.
pub fn load_from(manifest: &Manifest, dir: &Path) -> Result<Int8Model, Int8Error> {
    let path = dir.join(RECORD);
    let bad = |reason: String| Int8Error::Record {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let record: BuildRecord = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let (built_from, expected) = (
        SourceId::of_record(&record),
        SourceId::of_manifest(manifest),
    );
    if built_from != expected {
        return Err(Int8Error::Stale {
            dir: dir.to_path_buf(),
            built_from,
            expected,
        });
    }
    for (name, expected) in [
        (&record.xml, &record.xml_sha256),
        (&record.bin, &record.bin_sha256),
    ] {
        if name.is_absolute() || name.components().count() != 1 {
            return Err(bad(format!("{} is not a file name", name.display())));
        }
        let file = dir.join(name);
        let actual = sha256_file(&file).map_err(|e| bad(format!("{}: {e}", file.display())))?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(Int8Error::Checksum {
                path: file,
                expected: expected.clone(),
                actual,
            });
        }
    }
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut m = manifest.clone();
    m.file = ModelFile {
        path: dir.join(&record.xml),
        sha256: record.xml_sha256.to_ascii_lowercase(),
        weights: Some(dir.join(&record.bin)),
        weights_sha256: Some(record.bin_sha256.to_ascii_lowercase()),
    };
    Ok(Int8Model {
        dir,
        manifest: m,
        sha256: record.xml_sha256.to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path, sha: &str) -> Manifest {
        crate::infer::manifest::tiny_manifest(dir, "t", sha)
    }

    #[test]
    fn an_int8_build_is_looked_for_only_in_its_manifest_s_tree() {
        // A manifest outside any checkout (an image's): only beside it, never the working
        // directory's or the source tree's cache.
        let tmp = tempfile::tempdir().unwrap();
        let m = manifest(tmp.path(), &"a".repeat(64));
        assert_eq!(candidates(&m), vec![m.dir.join("int8")]);
        // The repository's own manifest: beside it, then the repository's cache.
        let Some(root) = crate::locate::source_root() else {
            return;
        };
        let shipped = root.join("models/pneumonia-xception/model.toml");
        let Ok(m) = Manifest::load(&shipped) else {
            return;
        };
        let root = std::fs::canonicalize(&root).unwrap();
        let found = candidates(&m);
        assert_eq!(found[0], m.dir.join("int8"));
        assert!(
            found.contains(&root.join(".cache/models").join(&m.name).join("int8")),
            "{found:?}"
        );
    }

    #[test]
    fn a_build_is_used_only_for_its_source_and_with_its_checksums() {
        let tmp = tempfile::tempdir().unwrap();
        let src = "a".repeat(64);
        let m = manifest(tmp.path(), &src);
        let dir = tmp.path().join("int8");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("q.xml"), b"<net/>").unwrap();
        std::fs::write(dir.join("q.bin"), b"weights").unwrap();
        let record = |source: &str, bin_sha: &str| {
            serde_json::json!({
                "source_sha256": source,
                "xml": "q.xml",
                "xml_sha256": sha256_file(&dir.join("q.xml")).unwrap(),
                "bin": "q.bin",
                "bin_sha256": bin_sha,
            })
            .to_string()
        };
        let bin_sha = sha256_file(&dir.join("q.bin")).unwrap();
        std::fs::write(dir.join(RECORD), record(&src, &bin_sha)).unwrap();
        let q = load(&m).unwrap();
        assert!(q.manifest.model_path().ends_with("q.xml"));
        assert_eq!(q.manifest.verify_files().unwrap(), q.sha256);

        std::fs::write(dir.join(RECORD), record(&"b".repeat(64), &bin_sha)).unwrap();
        assert!(matches!(load(&m), Err(Int8Error::Stale { .. })));
        std::fs::write(dir.join(RECORD), record(&src, &"0".repeat(64))).unwrap();
        assert!(matches!(load(&m), Err(Int8Error::Checksum { .. })));
        std::fs::remove_file(dir.join(RECORD)).unwrap();
        let other = manifest(&tmp.path().join("int8"), &src);
        let err = load(&other).unwrap_err();
        assert!(matches!(err, Int8Error::Missing { .. }));
        assert!(err.to_string().contains("make models"));
    }

    /// A build quantized from other weights under the same `.xml` (retrained, or
    /// replaced) is for another network: refused at load, and int8 falls back to f32.
    #[test]
    fn a_build_of_other_weights_is_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let src = "a".repeat(64);
        let with_weights = |w: &str| {
            let mut m = manifest(tmp.path(), &src);
            m.file.weights = Some("net.bin".into());
            m.file.weights_sha256 = Some(w.into());
            m
        };
        let old = with_weights(&"b".repeat(64));
        let dir = tmp.path().join("int8");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("q.xml"), b"<net/>").unwrap();
        std::fs::write(dir.join("q.bin"), b"old weights, quantized").unwrap();
        let mut record = serde_json::json!({
            "source_sha256": src,
            "source_weights_sha256": "b".repeat(64),
            "xml": "q.xml",
            "xml_sha256": sha256_file(&dir.join("q.xml")).unwrap(),
            "bin": "q.bin",
            "bin_sha256": sha256_file(&dir.join("q.bin")).unwrap(),
        });
        std::fs::write(dir.join(RECORD), record.to_string()).unwrap();
        assert!(load(&old).is_ok());

        let new = with_weights(&"c".repeat(64));
        let err = load(&new).unwrap_err();
        assert!(matches!(err, Int8Error::Stale { .. }), "{err}");
        assert!(err.to_string().contains("another network"), "{err}");
        assert!(err.to_string().contains("make models"), "{err}");
        let flags = crate::infer::precision::CpuFlags::parse("flags : avx512f avx512_vnni\n");
        let r = crate::infer::gate::resolve(
            &new,
            crate::infer::precision::PrecisionSetting::Fixed(
                crate::infer::precision::Precision::Int8,
            ),
            &flags,
        );
        assert_eq!(
            r.network.precision,
            crate::infer::precision::Precision::F32,
            "{}",
            r.reason
        );
        assert!(r.reason.contains("another network"), "{}", r.reason);

        // A record that names no source weights is no build of a network with weights.
        if let Some(o) = record.as_object_mut() {
            o.remove("source_weights_sha256");
        }
        std::fs::write(dir.join(RECORD), record.to_string()).unwrap();
        assert!(matches!(load(&old), Err(Int8Error::Stale { .. })));
    }
}
