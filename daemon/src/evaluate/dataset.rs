//! The labelled cases of an acceptance set: either one folder per label under a root
//! (a folder named like a model label holds positives for that label; the negative folder,
//! `NORMAL` by default, holds negatives for every label), or a CSV of
//! `file,finding,0|1` rows for multi-label sets.

use crate::infer::manifest::Manifest;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Folders deeper than this under a label folder are not searched.
pub const MAX_DEPTH: usize = 8;
/// Most image files one evaluation reads.
pub const MAX_FILES: usize = 1_000_000;
/// Largest labels CSV read.
pub const MAX_CSV_BYTES: u64 = 64 << 20;

/// Why an acceptance set cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A folder or file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The labels CSV is malformed.
    #[error("{path} line {line}: {reason}")]
    Csv {
        /// The CSV.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// More files than [`MAX_FILES`] or a CSV larger than [`MAX_CSV_BYTES`].
    #[error("{0}")]
    TooLarge(String),
    /// No folder or row names a finding of the model.
    #[error("{0}")]
    NoLabels(String),
}

/// One image with its reference labels (model label index → has the finding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The image file.
    pub file: PathBuf,
    /// Reference per finding label index; labels not listed are unknown for this case.
    pub truth: BTreeMap<usize, bool>,
}

/// The cases, plus the folders that matched no label (reported, not fatal).
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Cases in file-name order.
    pub cases: Vec<Case>,
    /// Folders under the root that name no model label and are not the negative folder.
    pub ignored_folders: Vec<PathBuf>,
    /// The findings the set defines (a label folder, or any CSV row): the ones evaluated.
    pub findings: BTreeSet<usize>,
}

/// The index of the non-background label called `name` (its code or its display name,
/// case-insensitive).
pub fn label_index(manifest: &Manifest, name: &str) -> Option<usize> {
    manifest.labels.iter().position(|l| {
        !l.background && (l.code.eq_ignore_ascii_case(name) || l.name.eq_ignore_ascii_case(name))
    })
}

fn finding_indices(manifest: &Manifest) -> Vec<usize> {
    (0..manifest.labels.len())
        .filter(|&i| !manifest.labels[i].background)
        .collect()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
    move |source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Image files under `dir` (recursively, to [`MAX_DEPTH`]), hidden entries skipped.
fn files_under(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<(), DatasetError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !is_hidden(p))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if depth < MAX_DEPTH {
                files_under(&p, depth + 1, out)?;
            }
        } else if p.is_file() {
            if out.len() >= MAX_FILES {
                return Err(DatasetError::TooLarge(format!(
                    "more than {MAX_FILES} files under {}",
                    dir.display()
                )));
            }
            out.push(p);
        }
    }
    Ok(())
}

/// Cases from label folders under `root`; `negative` names the folder of negatives.
pub fn from_folders(
    root: &Path,
    manifest: &Manifest,
    negative: &str,
) -> Result<Dataset, DatasetError> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && !is_hidden(p))
        .collect();
    folders.sort();
    let all = finding_indices(manifest);
    let mut set = Dataset::default();
    let mut matched = false;
    for folder in folders {
        let name = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let truth: BTreeMap<usize, bool> = if name.eq_ignore_ascii_case(negative) {
            all.iter().map(|&i| (i, false)).collect()
        } else if let Some(i) = label_index(manifest, &name) {
            matched = true;
            set.findings.insert(i);
            BTreeMap::from([(i, true)])
        } else {
            set.ignored_folders.push(folder);
            continue;
        };
        let mut files = Vec::new();
        files_under(&folder, 1, &mut files)?;
        if set.cases.len() + files.len() > MAX_FILES {
            return Err(DatasetError::TooLarge(format!(
                "more than {MAX_FILES} files under {}",
                root.display()
            )));
        }
        set.cases.extend(files.into_iter().map(|file| Case {
            file,
            truth: truth.clone(),
        }));
    }
    if !matched {
        let names: Vec<&str> = all
            .iter()
            .map(|&i| manifest.labels[i].code.as_str())
            .collect();
        return Err(DatasetError::NoLabels(format!(
            "no folder under {} is named like a finding of model {} ({}): nothing has positives",
            root.display(),
            manifest.name,
            names.join(", ")
        )));
    }
    Ok(set)
}

/// Cases from a CSV of `file,finding,0|1` rows (a header row is allowed; files are relative
/// to `root`). A file's findings not listed are unknown for it.
pub fn from_csv(root: &Path, csv: &Path, manifest: &Manifest) -> Result<Dataset, DatasetError> {
    let len = std::fs::metadata(csv).map_err(io(csv))?.len();
    if len > MAX_CSV_BYTES {
        return Err(DatasetError::TooLarge(format!(
            "{} is larger than {MAX_CSV_BYTES} bytes",
            csv.display()
        )));
    }
    let text = std::fs::read_to_string(csv).map_err(io(csv))?;
    let bad = |line: usize, reason: String| DatasetError::Csv {
        path: csv.to_path_buf(),
        line,
        reason,
    };
    let mut by_file: BTreeMap<PathBuf, BTreeMap<usize, bool>> = BTreeMap::new();
    let mut findings = BTreeSet::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        if cols.len() != 3 {
            return Err(bad(
                n + 1,
                format!("expected 3 columns file,finding,0|1, found {}", cols.len()),
            ));
        }
        let value = match cols[2] {
            "1" => true,
            "0" => false,
            _ if n == 0 => continue, // header
            other => return Err(bad(n + 1, format!("label value {other:?} is not 0 or 1"))),
        };
        let Some(i) = label_index(manifest, cols[1]) else {
            return Err(bad(
                n + 1,
                format!("{:?} is not a finding of model {}", cols[1], manifest.name),
            ));
        };
        if by_file.len() >= MAX_FILES {
            return Err(DatasetError::TooLarge(format!(
                "more than {MAX_FILES} files in {}",
                csv.display()
            )));
        }
        findings.insert(i);
        by_file
            .entry(root.join(cols[0]))
            .or_default()
            .insert(i, value);
    }
    if by_file.is_empty() {
        return Err(DatasetError::NoLabels(format!(
            "{} has no label rows",
            csv.display()
        )));
    }
    Ok(Dataset {
        cases: by_file
            .into_iter()
            .map(|(file, truth)| Case { file, truth })
            .collect(),
        ignored_folders: Vec::new(),
        findings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::manifest::Label;

    fn manifest() -> Manifest {
        let mut m =
            Manifest::load(&crate::infer::testdata::repo_root().join(crate::locate::DEFAULT_MODEL))
                .unwrap();
        m.labels = vec![
            Label {
                code: "NORMAL".into(),
                name: "Normal".into(),
                threshold: None,
                background: true,
                standard: None,
            },
            Label {
                code: "PNEUMONIA".into(),
                name: "Pneumonia".into(),
                threshold: None,
                background: false,
                standard: None,
            },
            Label {
                code: "EFF".into(),
                name: "Effusion".into(),
                threshold: None,
                background: false,
                standard: None,
            },
        ];
        m
    }

    #[test]
    fn folders_name_labels_case_insensitively() {
        let dir = tempfile::tempdir().unwrap();
        for (folder, file) in [
            ("normal", "a.png"),
            ("Pneumonia", "b.png"),
            ("effusion/sub", "c.dcm"),
            ("other", "d.png"),
        ] {
            std::fs::create_dir_all(dir.path().join(folder)).unwrap();
            std::fs::write(dir.path().join(folder).join(file), b"x").unwrap();
        }
        std::fs::write(dir.path().join("normal/.hidden"), b"x").unwrap();
        let set = from_folders(dir.path(), &manifest(), "NORMAL").unwrap();
        let truth: Vec<(String, Vec<(usize, bool)>)> = set
            .cases
            .iter()
            .map(|c| {
                (
                    c.file.file_name().unwrap().to_string_lossy().into_owned(),
                    c.truth.iter().map(|(&k, &v)| (k, v)).collect(),
                )
            })
            .collect();
        assert_eq!(
            truth,
            // Folders in byte order: "Pneumonia" < "effusion" < "normal".
            vec![
                ("b.png".into(), vec![(1, true)]),
                ("c.dcm".into(), vec![(2, true)]),
                ("a.png".into(), vec![(1, false), (2, false)]),
            ]
        );
        assert_eq!(set.ignored_folders, vec![dir.path().join("other")]);
    }

    #[test]
    fn a_root_without_a_label_folder_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("NORMAL")).unwrap();
        let err = from_folders(dir.path(), &manifest(), "NORMAL").unwrap_err();
        assert!(err.to_string().contains("nothing has positives"), "{err}");
    }

    #[test]
    fn csv_rows_with_header_and_errors_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("labels.csv");
        std::fs::write(
            &csv,
            "file,finding,value\na.png,Pneumonia,1\na.png,EFF,0\nb.png,pneumonia,0\n",
        )
        .unwrap();
        let set = from_csv(dir.path(), &csv, &manifest()).unwrap();
        assert_eq!(set.cases.len(), 2);
        assert_eq!(set.cases[0].truth, BTreeMap::from([(1, true), (2, false)]));
        std::fs::write(&csv, "a.png,Pneumonia,1\nb.png,Cardiomegaly,1\n").unwrap();
        let err = from_csv(dir.path(), &csv, &manifest()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        std::fs::write(&csv, "a.png,Pneumonia,1\nb.png,Pneumonia,yes\n").unwrap();
        assert!(from_csv(dir.path(), &csv, &manifest()).is_err());
    }
}
