//! Synthetic DX instances for the tests (`tests/tools/make_dx.py` with the venv's pydicom).

use super::{python_script, repo_root, run};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes `count` synthetic DX instances (over `studies` studies) into `dir` with the
/// venv's pydicom; returns (path, sop uid, study uid) per file.
pub fn make_dx(
    dir: &Path,
    count: usize,
    studies: usize,
    extra: &[&str],
) -> Option<Vec<(PathBuf, String, String)>> {
    let script = std::fs::read_to_string(repo_root().join("tests/tools/make_dx.py")).unwrap();
    let count = count.to_string();
    let studies = studies.to_string();
    let mut args = vec![
        dir.to_str().unwrap(),
        "--count",
        &count,
        "--studies",
        &studies,
    ];
    args.extend_from_slice(extra);
    let mut cmd = python_script(&script, &args)?;
    let out = run(&mut cmd, Duration::from_secs(120));
    out.assert_success("make_dx.py");
    Some(
        out.stdout
            .lines()
            .map(|l| {
                let mut it = l.split_whitespace();
                (
                    PathBuf::from(it.next().unwrap()),
                    it.next().unwrap().to_string(),
                    it.next().unwrap().to_string(),
                )
            })
            .collect(),
    )
}
