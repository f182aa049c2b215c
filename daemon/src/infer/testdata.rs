//! Locations of the shared sample data for tests (`../shared` from the repository root, or
//! `DULI_SHARED`). Tests print a SKIP line and return when it is absent.

use std::path::PathBuf;

/// The shared folder, when present: `DULI_SHARED`, else the nearest `shared/` beside the
/// repository root or one of its parents (`../shared` for a checkout, `../../shared` for a
/// worktree kept in a subfolder).
pub fn shared_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DULI_SHARED") {
        let dir = PathBuf::from(dir);
        return dir.is_dir().then_some(dir);
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    repo.canonicalize()
        .ok()?
        .ancestors()
        .skip(1)
        .map(|a| a.join("shared"))
        .find(|d| d.join("data").is_dir() || d.join("models").is_dir())
}

/// `../shared/data/cxr-samples`, or `None` after printing a SKIP line.
pub fn samples_dir() -> Option<PathBuf> {
    match shared_dir().map(|d| d.join("data/cxr-samples")) {
        Some(d) if d.join("reference.csv").is_file() => Some(d),
        _ => {
            eprintln!("SKIP: ../shared/data/cxr-samples is absent (set DULI_SHARED)");
            None
        }
    }
}
