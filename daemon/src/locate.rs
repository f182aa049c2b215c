//! Where the files that do not ship inside the binary are found when the configuration
//! does not name them: the model manifest, the OpenVINO runtime, and the demo's sample
//! studies. Each is looked for in a fixed order, and every place looked at is kept, so
//! that an error can name them all and the command that fixes it.
//!
//! The places, in order:
//! 1. the working directory (a checkout run from its root, the appliance's own layout);
//! 2. the repository this binary was built from (found through the path cargo compiled
//!    it at, and only while that folder still holds the workspace), so `duli demo` works
//!    from any folder of a clone;
//! 3. the system-wide install (`/usr/share/duli/models`, `/usr/lib/duli/openvino`).

use std::path::{Path, PathBuf};

/// The default model's manifest, relative to a `models/` folder's parent.
pub const DEFAULT_MODEL: &str = "models/pneumonia-xception/model.toml";
/// The OpenVINO runtime that `scripts/setup-openvino.sh` unpacks, relative to a checkout.
pub const DEFAULT_OPENVINO: &str = ".cache/openvino/libs";
/// Models installed with the system image.
pub const SYSTEM_MODELS: &str = "/usr/share/duli/models";
/// The OpenVINO runtime installed with the system image.
pub const SYSTEM_OPENVINO: &str = "/usr/lib/duli/openvino";
/// Sample studies that `make models` prepares from the model's PyPI package (JPEGs with
/// their licence), relative to a checkout.
pub const PREPARED_SAMPLES: &str = ".cache/samples/cxr-jpeg";
/// The samples inside a shared data folder (`DULI_SHARED_DIR` or `../shared`).
pub const SHARED_SAMPLES: &str = "data/cxr-samples/dicom/explicit-le";
/// Environment variable naming a shared data folder.
pub const SHARED_ENV: &str = "DULI_SHARED_DIR";
/// This executable, as a child started after a change of user runs it: the kernel
/// resolves it without a path walk, so the new user needs no right to search the folders
/// above the binary (a build under /root or another user's home, while the daemon runs
/// as its service user).
pub const SELF_EXE: &str = "/proc/self/exe";

/// The outcome of a search: the first place that exists, and every place looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The first candidate that exists, if any.
    pub path: Option<PathBuf>,
    /// Every candidate, in the order they were tried, with where each came from.
    pub tried: Vec<(PathBuf, &'static str)>,
}

impl Found {
    fn search(candidates: Vec<(PathBuf, &'static str)>) -> Found {
        let path = candidates
            .iter()
            .find(|(p, _)| p.exists())
            .map(|(p, _)| p.clone());
        Found {
            path,
            tried: candidates,
        }
    }

    /// The path found, else the first candidate (what errors then name).
    pub fn or_first(&self) -> PathBuf {
        self.path
            .clone()
            .or_else(|| self.tried.first().map(|(p, _)| p.clone()))
            .unwrap_or_default()
    }

    /// The candidates as lines `  <path> (<origin>)`, for error messages and `--help`.
    pub fn describe(&self) -> String {
        self.tried
            .iter()
            .map(|(p, origin)| format!("  {} ({origin})", p.display()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The repository this binary was built from, while it still holds the workspace.
pub fn source_root() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_path_buf();
    (root.join("Cargo.toml").is_file() && root.join("daemon/Cargo.toml").is_file()).then_some(root)
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

/// Working directory, then the source repository (when it is another folder).
fn checkouts() -> Vec<(PathBuf, &'static str)> {
    let cwd = cwd();
    let mut out = vec![(cwd.clone(), "working directory")];
    if let Some(src) = source_root() {
        if src != cwd {
            out.push((src, "repository the binary was built from"));
        }
    }
    out
}

/// The default model manifest: `models/…` in the working directory, in the repository the
/// binary was built from, then under [`SYSTEM_MODELS`].
pub fn model_manifest() -> Found {
    let mut c: Vec<_> = checkouts()
        .into_iter()
        .map(|(dir, origin)| (dir.join(DEFAULT_MODEL), origin))
        .collect();
    let rel = Path::new(DEFAULT_MODEL)
        .strip_prefix("models")
        .unwrap_or(Path::new(DEFAULT_MODEL));
    c.push((Path::new(SYSTEM_MODELS).join(rel), "system install"));
    Found::search(c)
}

/// The default OpenVINO runtime folder: `.cache/openvino/libs` in the working directory,
/// in the repository the binary was built from, then [`SYSTEM_OPENVINO`].
pub fn openvino_runtime() -> Found {
    let mut c: Vec<_> = checkouts()
        .into_iter()
        .map(|(dir, origin)| (dir.join(DEFAULT_OPENVINO), origin))
        .collect();
    c.push((PathBuf::from(SYSTEM_OPENVINO), "system install"));
    Found::search(c)
}

/// The demo's sample studies when `--samples` is not given: `$DULI_SHARED_DIR`, a
/// `shared` folder beside the repository the binary was built from, then the JPEGs that
/// `make models` prepares in that repository (wrapped as DICOM by the demo).
pub fn demo_samples(shared_env: Option<PathBuf>) -> Found {
    let mut c = Vec::new();
    if let Some(shared) = shared_env {
        c.push((shared.join(SHARED_SAMPLES), "DULI_SHARED_DIR"));
    }
    let src = source_root();
    if let Some(src) = &src {
        if let Some(parent) = src.parent() {
            c.push((
                parent.join("shared").join(SHARED_SAMPLES),
                "../shared beside the repository",
            ));
        }
        c.push((src.join(PREPARED_SAMPLES), "prepared by `make models`"));
    } else {
        c.push((cwd().join(PREPARED_SAMPLES), "prepared by `make models`"));
    }
    Found::search(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_root_is_this_workspace() {
        let root = source_root().expect("tests run inside the workspace");
        assert!(root.join("daemon/src/locate.rs").is_file());
    }

    #[test]
    fn the_first_existing_candidate_wins_and_all_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&b, "x").unwrap();
        let f = Found::search(vec![(a.clone(), "first"), (b.clone(), "second")]);
        assert_eq!(f.path.as_deref(), Some(b.as_path()));
        assert!(f.describe().contains("(first)") && f.describe().contains("(second)"));
        let none = Found::search(vec![(a.clone(), "first")]);
        assert_eq!(none.path, None);
        assert_eq!(none.or_first(), a);
    }

    #[test]
    fn shared_dir_from_the_environment_comes_first() {
        let f = demo_samples(Some(PathBuf::from("/nowhere/shared")));
        assert_eq!(
            f.tried[0].0,
            PathBuf::from("/nowhere/shared").join(SHARED_SAMPLES)
        );
        assert!(f.tried.last().unwrap().0.ends_with(PREPARED_SAMPLES));
    }

    #[test]
    fn the_model_is_found_from_any_working_directory() {
        // Whatever the working directory, the repository's model folder is a candidate.
        let f = model_manifest();
        let root = source_root().unwrap();
        assert!(f.tried.iter().any(|(p, _)| *p == root.join(DEFAULT_MODEL)));
        assert!(f.tried.last().unwrap().0.starts_with(SYSTEM_MODELS));
    }
}
