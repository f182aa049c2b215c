//! The labelled cases of an acceptance set: either one folder per label under a root
//! (a folder named like a model label holds positives for that label; the negative folder,
//! `NORMAL` by default, holds negatives for every label), or a CSV of
//! `file,finding,0|1` rows for multi-label sets.
//!
//! The same image twice (the same file content, or the same SOP Instance UID) is counted
//! once, with a warning, when its labels agree, and refused when they contradict; so are
//! the DICOM files of one study, which the report counts as one case
//! ([`super::report::cases`]).

use crate::infer::manifest::{label_key, Manifest};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Folders deeper than this under a label folder are not searched.
pub const MAX_DEPTH: usize = 8;
/// Most image files one evaluation reads.
pub const MAX_FILES: usize = 1_000_000;
/// Largest labels CSV read.
pub const MAX_CSV_BYTES: u64 = 64 << 20;
/// Bytes hashed first when two files have the same size (the whole file only when these
/// match too).
const PREFIX_BYTES: u64 = 64 << 10;

/// Files under contradictory labels: the same image twice, or images of one study.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// What the files share ("the same content", "the same SOP Instance UID", "one study").
    pub shared: &'static str,
    /// Each file with its labels as the set gives them (e.g. `PNEUMONIA 1, EFF 0`).
    pub files: Vec<(PathBuf, String)>,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<String> = self
            .files
            .iter()
            .map(|(file, labels)| format!("{} ({labels})", file.display()))
            .collect();
        write!(f, "{}: {}", self.shared, files.join(", "))
    }
}

fn conflicts_text(conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(Conflict::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

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
    /// The same image, or images of one study, under contradictory labels.
    #[error(
        "files that are one case carry contradictory labels (fix or remove them): {}",
        conflicts_text(.0)
    )]
    ConflictingLabels(Vec<Conflict>),
}

/// One image with its reference labels (model label index → has the finding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The image file.
    pub file: PathBuf,
    /// Reference per finding label index; labels not listed are unknown for this case.
    pub truth: BTreeMap<usize, bool>,
}

/// What the walk of an acceptance set found but made no case of: listed in the output,
/// not counted, not fatal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotCounted {
    /// Folders under the root that name no model label and are not the negative folder.
    pub ignored_folders: Vec<PathBuf>,
    /// Entries not read, with why: a file directly in the root (not in a label folder),
    /// a folder deeper than [`MAX_DEPTH`] in its label folder.
    pub not_read: Vec<(PathBuf, String)>,
    /// Entries of label folders that cannot be read as files, with why (a broken
    /// symbolic link, a device or a pipe): unreadable, as files that do not decode are.
    pub unreadable: Vec<(PathBuf, String)>,
}

impl NotCounted {
    /// Entries listed so far.
    fn len(&self) -> usize {
        self.ignored_folders.len() + self.not_read.len() + self.unreadable.len()
    }
}

/// The cases, plus what was found but not counted (reported, not fatal).
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Cases in file-name order.
    pub cases: Vec<Case>,
    /// What was found but made no case.
    pub not_counted: NotCounted,
    /// The findings the set defines (a label folder, or any CSV row): the ones evaluated.
    pub findings: BTreeSet<usize>,
    /// What was read but not counted twice (the same image under two names), also logged.
    pub warnings: Vec<String>,
    /// SHA-256 (hex) of the labels CSV as it was read, when the labels came from one: the
    /// labels are part of the set a gate names.
    pub labels_sha256: Option<String>,
}

/// The index of the non-background label called `name`: its code or its display name,
/// ignoring case and taking `_`, `-` and a space as the same ([`label_key`]), so that a
/// data set's own spelling (`Pleural_Thickening`, `Enlarged Cardiomediastinum`) finds the
/// label.
pub fn label_index(manifest: &Manifest, name: &str) -> Option<usize> {
    let wanted = label_key(name);
    manifest.labels.iter().position(|l| {
        !l.background && (label_key(&l.code) == wanted || label_key(&l.name) == wanted)
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

/// The entries of folder `dir` in name order, hidden ones skipped.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !is_hidden(p))
        .collect();
    entries.sort();
    Ok(entries)
}

/// The error when more than [`MAX_FILES`] entries are found under `dir`.
fn too_many(dir: &Path) -> DatasetError {
    DatasetError::TooLarge(format!(
        "more than {MAX_FILES} files under {}",
        dir.display()
    ))
}

/// Why entry `p` of a label folder, whose metadata (links followed) cannot be read, is
/// unreadable.
fn unreadable_reason(p: &Path, e: &std::io::Error) -> String {
    let is_link = std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        format!("broken symbolic link: {e}")
    } else {
        e.to_string()
    }
}

/// Image files under `dir` (recursively, to [`MAX_DEPTH`]) into `out`, hidden entries
/// skipped; what cannot be read as a file, and folders too deep, into `skipped`.
fn files_under(
    dir: &Path,
    depth: usize,
    out: &mut Vec<PathBuf>,
    skipped: &mut NotCounted,
) -> Result<(), DatasetError> {
    for p in entries(dir)? {
        if out.len() + skipped.len() >= MAX_FILES {
            return Err(too_many(dir));
        }
        match std::fs::metadata(&p) {
            Ok(m) if m.is_dir() => {
                if depth < MAX_DEPTH {
                    files_under(&p, depth + 1, out, skipped)?;
                } else {
                    skipped.not_read.push((
                        p,
                        format!("a folder deeper than {MAX_DEPTH} levels in its label folder: not searched"),
                    ));
                }
            }
            Ok(m) if m.is_file() => out.push(p),
            Ok(_) => skipped
                .unreadable
                .push((p, "not a regular file (a device, pipe or socket)".into())),
            Err(e) => {
                let reason = unreadable_reason(&p, &e);
                skipped.unreadable.push((p, reason));
            }
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
    let all = finding_indices(manifest);
    let mut set = Dataset::default();
    let mut folders = Vec::new();
    for p in entries(root)? {
        if folders.len() + set.not_counted.len() >= MAX_FILES {
            return Err(too_many(root));
        }
        if p.is_dir() {
            folders.push(p);
        } else {
            set.not_counted.not_read.push((
                p,
                format!(
                    "directly in the set's folder, not in a label folder ({negative} or a \
                     finding's name): not read"
                ),
            ));
        }
    }
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
            set.not_counted.ignored_folders.push(folder);
            continue;
        };
        let mut files = Vec::new();
        files_under(&folder, 1, &mut files, &mut set.not_counted)?;
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
    let (cases, warnings) = settle(std::mem::take(&mut set.cases), manifest)?;
    set.cases = cases;
    set.warnings = warnings;
    Ok(set)
}

/// One label row of a CSV: the file and finding as written, the finding's index in the
/// manifest and the value.
struct LabelRow<'a> {
    file: &'a str,
    finding: &'a str,
    index: usize,
    value: bool,
}

/// Why a label row of a CSV is wrong.
#[derive(Debug, thiserror::Error)]
enum RowError {
    /// Not three columns.
    #[error("expected 3 columns file,finding,0|1, found {0}")]
    Columns(usize),
    /// A value other than 0 or 1.
    #[error("label value {0:?} is not 0 or 1")]
    Value(String),
    /// A finding the model does not have.
    #[error("{finding:?} is not a finding of model {model}")]
    Finding {
        /// The finding as written.
        finding: String,
        /// The model's name.
        model: String,
    },
}

/// Reads one non-empty, non-comment CSV `line`; `None` for a header (the first row, with a
/// value column that is not 0 or 1 and a file column naming no file under `root`); else
/// why the row is wrong.
fn label_row<'a>(
    line: &'a str,
    is_first: bool,
    root: &Path,
    manifest: &Manifest,
) -> Result<Option<LabelRow<'a>>, RowError> {
    let cols: Vec<&str> = line
        .split(',')
        .map(|c| c.trim().trim_matches('"'))
        .collect();
    let [file, finding, value] = cols[..] else {
        return Err(RowError::Columns(cols.len()));
    };
    let value = match value {
        "1" => true,
        "0" => false,
        _ if is_first && !root.join(file).is_file() => return Ok(None),
        other => return Err(RowError::Value(other.to_string())),
    };
    let Some(index) = label_index(manifest, finding) else {
        return Err(RowError::Finding {
            finding: finding.to_string(),
            model: manifest.name.clone(),
        });
    };
    Ok(Some(LabelRow {
        file,
        finding,
        index,
        value,
    }))
}

/// Cases from a CSV of `file,finding,0|1` rows (files relative to `root`). A file's findings
/// not listed are unknown for it. The first row is a header when its value column is not
/// 0 or 1 and its file column names no file under `root`; any other row with a bad value
/// is an error naming it, and so is a row contradicting an earlier one.
pub fn from_csv(root: &Path, csv: &Path, manifest: &Manifest) -> Result<Dataset, DatasetError> {
    let (text, labels_sha256) = read_csv(csv)?;
    let bad = |line: usize, reason: String| DatasetError::Csv {
        path: csv.to_path_buf(),
        line,
        reason,
    };
    // Per file, per finding: the value and the line that gave it.
    let mut by_file: BTreeMap<PathBuf, BTreeMap<usize, (bool, usize)>> = BTreeMap::new();
    let mut findings = BTreeSet::new();
    let mut warnings = Vec::new();
    let mut first_row = true;
    // A byte order mark (spreadsheets save one) is not part of the first row.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let is_first = std::mem::replace(&mut first_row, false);
        let Some(row) =
            label_row(line, is_first, root, manifest).map_err(|r| bad(n + 1, r.to_string()))?
        else {
            continue;
        };
        let (i, value) = (row.index, row.value);
        if by_file.len() >= MAX_FILES {
            return Err(DatasetError::TooLarge(format!(
                "more than {MAX_FILES} files in {}",
                csv.display()
            )));
        }
        findings.insert(i);
        let truth = by_file.entry(root.join(row.file)).or_default();
        match truth.get(&i) {
            Some(&(earlier, at)) if earlier != value => {
                return Err(bad(
                    n + 1,
                    format!(
                        "{},{} is {} here but {} on line {at}",
                        row.file,
                        row.finding,
                        u8::from(value),
                        u8::from(earlier)
                    ),
                ));
            }
            Some(&(_, at)) => warnings.push(format!(
                "{} line {}: repeats line {at} ({},{}); counted once",
                csv.display(),
                n + 1,
                row.file,
                row.finding
            )),
            None => {
                truth.insert(i, (value, n + 1));
            }
        }
    }
    if by_file.is_empty() {
        return Err(DatasetError::NoLabels(format!(
            "{} has no label rows",
            csv.display()
        )));
    }
    for w in &warnings {
        log::warn!("{w}");
    }
    let cases = by_file
        .into_iter()
        .map(|(file, truth)| Case {
            file,
            truth: truth.into_iter().map(|(i, (v, _))| (i, v)).collect(),
        })
        .collect();
    let (cases, more) = settle(cases, manifest)?;
    warnings.extend(more);
    Ok(Dataset {
        cases,
        not_counted: NotCounted::default(),
        findings,
        warnings,
        labels_sha256: Some(labels_sha256),
    })
}

/// The text of the labels CSV at `csv`, read to at most [`MAX_CSV_BYTES`] whatever the
/// file claims to be (a pipe or a `/proc` file has no size), and the SHA-256 (hex) of its
/// bytes.
fn read_csv(csv: &Path) -> Result<(String, String), DatasetError> {
    let mut bytes = Vec::new();
    std::fs::File::open(csv)
        .and_then(|f| f.take(MAX_CSV_BYTES + 1).read_to_end(&mut bytes))
        .map_err(io(csv))?;
    if bytes.len() as u64 > MAX_CSV_BYTES {
        return Err(DatasetError::TooLarge(format!(
            "{} is larger than {MAX_CSV_BYTES} bytes",
            csv.display()
        )));
    }
    let sha256 = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
    let text = String::from_utf8(bytes).map_err(|e| DatasetError::Io {
        path: csv.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
    })?;
    Ok((text, sha256))
}

/// The identifiers of a DICOM file that make cases and duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DicomIds {
    study: Option<String>,
    sop: Option<String>,
}

/// The Study and SOP Instance UIDs of the DICOM Part 10 file at `file` (after the bounded
/// pre-scan, up to its pixel data); `None` for a PNG or JPEG file or an unreadable one.
fn dicom_ids(file: &Path) -> Option<DicomIds> {
    use dicom_dictionary_std::tags;
    if !crate::infer::analyse::is_dicom(file) {
        return None;
    }
    crate::dataset_guard::check_file(file).ok()?;
    let obj = crate::store::header::open_header(file).ok()?;
    let uid = |tag| Some(crate::infer::dicom_image::text(&obj, tag)).filter(|v| !v.is_empty());
    Some(DicomIds {
        study: uid(tags::STUDY_INSTANCE_UID),
        sop: uid(tags::SOP_INSTANCE_UID),
    })
}

/// The Study Instance UID of the DICOM file at `file`, by which its case is its study's;
/// `None` for a PNG or JPEG file, or a DICOM file whose header cannot be read (a case of
/// its own).
pub fn study_of(file: &Path) -> Option<String> {
    dicom_ids(file)?.study
}

/// SHA-256 of the first `limit` bytes of `file` (all of it with `u64::MAX`).
fn digest(file: &Path, limit: u64) -> std::io::Result<[u8; 32]> {
    let mut reader = std::fs::File::open(file)?.take(limit);
    Ok(duli_firmware::hash_reader(&mut reader)?.1)
}

/// Groups of indices into `files` whose contents are identical: by size, then the hash of
/// the first [`PREFIX_BYTES`], then the hash of the whole file. Unreadable files are in no
/// group (scoring lists them).
fn same_content(files: &[&Path]) -> Vec<Vec<usize>> {
    let mut by_size: HashMap<u64, Vec<usize>> = HashMap::new();
    for (k, f) in files.iter().enumerate() {
        if let Ok(m) = std::fs::metadata(f) {
            by_size.entry(m.len()).or_default().push(k);
        }
    }
    let mut groups = Vec::new();
    for same_size in by_size.into_values().filter(|g| g.len() > 1) {
        let mut by_prefix: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
        for k in same_size {
            if let Ok(d) = digest(files[k], PREFIX_BYTES) {
                by_prefix.entry(d).or_default().push(k);
            }
        }
        for same_prefix in by_prefix.into_values().filter(|g| g.len() > 1) {
            let mut by_hash: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
            for k in same_prefix {
                if let Ok(d) = digest(files[k], u64::MAX) {
                    by_hash.entry(d).or_default().push(k);
                }
            }
            groups.extend(by_hash.into_values().filter(|g| g.len() > 1));
        }
    }
    groups
}

/// `truth` as the set gives it, e.g. `PNEUMONIA 1, EFF 0`.
fn describe(truth: &BTreeMap<usize, bool>, manifest: &Manifest) -> String {
    truth
        .iter()
        .map(|(&i, &v)| {
            let code = manifest.labels.get(i).map_or("?", |l| l.code.as_str());
            format!("{code} {}", u8::from(v))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The labels of `members` merged, or `None` when two of them contradict each other.
fn merged(cases: &[Case], members: &[usize]) -> Option<BTreeMap<usize, bool>> {
    let mut truth = BTreeMap::new();
    for &k in members {
        for (&i, &v) in &cases[k].truth {
            if *truth.entry(i).or_insert(v) != v {
                return None;
            }
        }
    }
    Some(truth)
}

/// The files that are one image (the same content, or the same SOP Instance UID), as
/// groups of indices keyed by their first member, and for each grouped file what it
/// shares with the others.
fn same_images(
    files: &[&Path],
    ids: &[Option<DicomIds>],
) -> (BTreeMap<usize, Vec<usize>>, HashMap<usize, &'static str>) {
    // A union of the content groups and the SOP Instance UID groups.
    let mut root: Vec<usize> = (0..files.len()).collect();
    fn find(root: &mut [usize], mut k: usize) -> usize {
        while root[k] != k {
            root[k] = root[root[k]];
            k = root[k];
        }
        k
    }
    let mut why: HashMap<usize, &'static str> = HashMap::new();
    let mut join = |root: &mut Vec<usize>, group: &[usize], shared: &'static str| {
        for &k in &group[1..] {
            let (a, b) = (find(root, group[0]), find(root, k));
            if a != b {
                root[b.max(a)] = a.min(b);
            }
            why.entry(k).or_insert(shared);
        }
        why.entry(group[0]).or_insert(shared);
    };
    for group in same_content(files) {
        join(&mut root, &group, "the same content");
    }
    let mut by_sop: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (k, id) in ids.iter().enumerate() {
        if let Some(sop) = id.as_ref().and_then(|i| i.sop.as_deref()) {
            by_sop.entry(sop).or_default().push(k);
        }
    }
    for group in by_sop.values().filter(|g| g.len() > 1) {
        join(&mut root, group, "the same SOP Instance UID");
    }
    let mut images: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for k in 0..files.len() {
        let r = find(&mut root, k);
        images.entry(r).or_default().push(k);
    }
    (images, why)
}

/// Images of one study are one case: the studies among the kept cases (`keep[k]`, the
/// labels case `k` is kept with) whose images' labels disagree.
fn study_conflicts(
    cases: &[Case],
    ids: &[Option<DicomIds>],
    keep: &[Option<BTreeMap<usize, bool>>],
    manifest: &Manifest,
) -> Vec<Conflict> {
    let mut by_study: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (k, id) in ids.iter().enumerate() {
        if keep[k].is_none() {
            continue;
        }
        if let Some(study) = id.as_ref().and_then(|i| i.study.as_deref()) {
            by_study.entry(study).or_default().push(k);
        }
    }
    let mut conflicts = Vec::new();
    for members in by_study.values().filter(|g| g.len() > 1) {
        let with_kept: Vec<Case> = members
            .iter()
            .map(|&k| Case {
                file: cases[k].file.clone(),
                truth: keep[k].clone().unwrap_or_default(),
            })
            .collect();
        let all: Vec<usize> = (0..with_kept.len()).collect();
        if merged(&with_kept, &all).is_none() {
            conflicts.push(Conflict {
                shared: "images of one study",
                files: with_kept
                    .iter()
                    .map(|c| (c.file.clone(), describe(&c.truth, manifest)))
                    .collect(),
            });
        }
    }
    conflicts
}

/// The cases with every image counted once: files with the same content or the same SOP
/// Instance UID are one image, kept once (the first, with their labels merged) with a
/// warning when their labels agree; files that are one image, or images of one study,
/// whose labels contradict are an error listing them all.
fn settle(cases: Vec<Case>, manifest: &Manifest) -> Result<(Vec<Case>, Vec<String>), DatasetError> {
    let files: Vec<&Path> = cases.iter().map(|c| c.file.as_path()).collect();
    let ids: Vec<Option<DicomIds>> = files.iter().map(|f| dicom_ids(f)).collect();
    let (images, why) = same_images(&files, &ids);
    let mut conflicts = Vec::new();
    let mut warnings = Vec::new();
    let mut keep: Vec<Option<BTreeMap<usize, bool>>> = vec![None; cases.len()];
    for members in images.values() {
        let first = members[0];
        if members.len() == 1 {
            keep[first] = Some(cases[first].truth.clone());
            continue;
        }
        let shared = why.get(&members[1]).copied().unwrap_or("the same image");
        let listed = || {
            members
                .iter()
                .map(|&k| (cases[k].file.clone(), describe(&cases[k].truth, manifest)))
                .collect()
        };
        match merged(&cases, members) {
            Some(truth) => {
                let others: Vec<String> = members[1..]
                    .iter()
                    .map(|&k| cases[k].file.display().to_string())
                    .collect();
                warnings.push(format!(
                    "{} and {} are the same image ({shared}): counted once",
                    cases[first].file.display(),
                    others.join(", ")
                ));
                keep[first] = Some(truth);
            }
            None => conflicts.push(Conflict {
                shared,
                files: listed(),
            }),
        }
    }
    conflicts.extend(study_conflicts(&cases, &ids, &keep, manifest));
    if !conflicts.is_empty() {
        return Err(DatasetError::ConflictingLabels(conflicts));
    }
    for w in &warnings {
        log::warn!("{w}");
    }
    let settled = cases
        .into_iter()
        .zip(keep)
        .filter_map(|(case, truth)| {
            truth.map(|truth| Case {
                file: case.file,
                truth,
            })
        })
        .collect();
    Ok((settled, warnings))
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
    fn a_label_is_found_by_its_code_or_name_in_a_data_sets_spelling() {
        let mut m = manifest();
        m.labels.push(Label {
            code: "PLEURAL_THICK".into(),
            name: "Pleural thickening".into(),
            threshold: None,
            background: false,
            standard: None,
        });
        for name in [
            "Pleural_Thickening",
            "pleural thickening",
            "PLEURAL-THICK",
            "pleural_thick",
        ] {
            assert_eq!(label_index(&m, name), Some(3), "{name}");
        }
        assert_eq!(label_index(&m, "eff"), Some(2));
        // A background class is not a finding; an unknown name is none.
        assert_eq!(label_index(&m, "normal"), None);
        assert_eq!(label_index(&m, "Pleural"), None);
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
            // Distinct contents: the same content twice is one image.
            std::fs::write(dir.path().join(folder).join(file), file).unwrap();
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
        assert_eq!(
            set.not_counted.ignored_folders,
            vec![dir.path().join("other")]
        );
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

    /// A row of two or four columns (a comma inside a name, a missing value) is an error
    /// naming its line and the count found, even as the first row.
    #[test]
    fn csv_rows_with_the_wrong_number_of_columns_are_refused_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("labels.csv");
        for (text, line, found) in [
            ("a.png,Pneumonia\n", 1, 2),
            ("a.png,Pneumonia,1\nb,c.png,Pneumonia,1\n", 2, 4),
            ("file,finding\na.png,Pneumonia,1\n", 1, 2),
        ] {
            std::fs::write(&csv, text).unwrap();
            let err = from_csv(dir.path(), &csv, &manifest())
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("line {line}")), "{text:?}: {err}");
            assert!(err.contains(&format!("found {found}")), "{text:?}: {err}");
        }
    }

    /// Two rows giving one file's finding different values: an error naming both rows
    /// (the last one won before); the same row twice is counted once.
    #[test]
    fn csv_rows_that_contradict_each_other_are_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("labels.csv");
        std::fs::write(
            &csv,
            "file,finding,value\na.png,Pneumonia,1\nb.png,EFF,0\na.png,PNEUMONIA,0\n",
        )
        .unwrap();
        let err = from_csv(dir.path(), &csv, &manifest()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("line 4") && text.contains("line 2"), "{text}");
        std::fs::write(&csv, "a.png,Pneumonia,1\nb.png,EFF,0\na.png,Pneumonia,1\n").unwrap();
        let set = from_csv(dir.path(), &csv, &manifest()).unwrap();
        assert_eq!(set.cases.len(), 2);
        assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
    }

    /// The first row is a header only when its value is not 0/1 and it names no file: a
    /// first data row with a bad value is an error naming it, not a header dropped silently.
    #[test]
    fn a_first_row_naming_a_file_with_a_bad_value_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"x").unwrap();
        let csv = dir.path().join("labels.csv");
        std::fs::write(&csv, "a.png,Pneumonia,yes\nb.png,Pneumonia,1\n").unwrap();
        let err = from_csv(dir.path(), &csv, &manifest()).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        // A comment before the header: still the first row.
        std::fs::write(&csv, "# labels\nfile,finding,label\na.png,Pneumonia,1\n").unwrap();
        let set = from_csv(dir.path(), &csv, &manifest()).unwrap();
        assert_eq!(set.cases.len(), 1);
        // A bad value on a later row is an error wherever it is.
        std::fs::write(&csv, "file,finding,label\nfile,finding,label\n").unwrap();
        let err = from_csv(dir.path(), &csv, &manifest()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    /// A labels CSV saved with a byte order mark (as spreadsheets save it): the mark is not
    /// part of the first row (its file was looked for as "\u{feff}a.png" before, and found
    /// unreadable); the CSV's SHA-256 is that of the bytes read.
    #[test]
    fn a_labels_csv_with_a_byte_order_mark_reads_as_without() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("labels.csv");
        let text = "file,finding,value\na.png,Pneumonia,1\nb.png,Pneumonia,0\n";
        std::fs::write(&csv, format!("\u{feff}{text}")).unwrap();
        let set = from_csv(dir.path(), &csv, &manifest()).unwrap();
        assert_eq!(set.cases.len(), 2, "{:?}", set.cases);
        let bytes = std::fs::read(&csv).unwrap();
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
        assert_eq!(set.labels_sha256, Some(sha));
        // A first data row after the mark is read too.
        std::fs::write(&csv, "\u{feff}a.png,Pneumonia,1\n").unwrap();
        let set = from_csv(dir.path(), &csv, &manifest()).unwrap();
        assert_eq!(set.cases[0].file, dir.path().join("a.png"));
        assert_eq!(set.cases[0].truth, BTreeMap::from([(1, true)]));
    }

    /// A labels "file" without a size (a device, a pipe, a `/proc` file) is read to the
    /// cap and refused, not read without end.
    #[test]
    fn a_labels_csv_without_a_size_is_read_to_the_cap() {
        let zero = Path::new("/dev/zero");
        if !zero.exists() {
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let dir = tempfile::tempdir().unwrap();
            let _ = tx.send(from_csv(dir.path(), zero, &manifest()).map(|s| s.cases.len()));
        });
        let result = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("reading /dev/zero as a labels CSV did not stop at the cap");
        assert!(
            matches!(result, Err(DatasetError::TooLarge(_))),
            "{result:?}"
        );
    }

    /// A broken link in a label folder is listed as unreadable with the reason, and a file
    /// directly in the set's folder as not read; neither was mentioned anywhere before.
    #[test]
    fn broken_links_and_files_outside_label_folders_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let at = |p: &str| dir.path().join(p);
        std::fs::create_dir_all(at("PNEUMONIA")).unwrap();
        std::fs::create_dir_all(at("NORMAL")).unwrap();
        std::fs::write(at("PNEUMONIA/b.png"), b"b").unwrap();
        std::os::unix::fs::symlink(at("nowhere.png"), at("NORMAL/gone.png")).unwrap();
        std::fs::write(at("stray.png"), b"s").unwrap();
        let set = from_folders(dir.path(), &manifest(), "NORMAL").unwrap();
        assert_eq!(set.cases.len(), 1, "{:?}", set.cases);
        let unreadable = &set.not_counted.unreadable;
        assert_eq!(unreadable.len(), 1, "{unreadable:?}");
        assert_eq!(unreadable[0].0, at("NORMAL/gone.png"));
        assert!(
            unreadable[0].1.contains("broken symbolic link"),
            "{unreadable:?}"
        );
        let not_read = &set.not_counted.not_read;
        assert_eq!(not_read.len(), 1, "{not_read:?}");
        assert_eq!(not_read[0].0, at("stray.png"));
        assert!(
            not_read[0].1.contains("not in a label folder"),
            "{not_read:?}"
        );
        assert_eq!(set.labels_sha256, None);
    }

    /// The same image twice: counted once with a warning under the same label, a clear
    /// error listing both under contradictory labels (same content, or same SOP Instance
    /// UID); images of one study under contradictory labels too.
    #[test]
    fn duplicates_are_counted_once_or_refused_when_their_labels_contradict() {
        use crate::evaluate::report::tests::dicom;
        let dir = tempfile::tempdir().unwrap();
        let at = |p: &str| dir.path().join(p);
        std::fs::create_dir_all(at("PNEUMONIA/sub")).unwrap();
        std::fs::create_dir_all(at("NORMAL")).unwrap();
        std::fs::write(at("PNEUMONIA/x.png"), b"same").unwrap();
        std::fs::write(at("PNEUMONIA/sub/x-copy.png"), b"same").unwrap();
        std::fs::write(at("NORMAL/y.png"), b"else").unwrap();
        let set = from_folders(dir.path(), &manifest(), "NORMAL").unwrap();
        assert_eq!(set.cases.len(), 2, "{:?}", set.cases);
        assert_eq!(set.warnings.len(), 1, "{:?}", set.warnings);
        assert!(set.warnings[0].contains("x-copy.png"), "{:?}", set.warnings);

        // The same content as a negative: refused, naming both files and their labels.
        std::fs::write(at("NORMAL/x-again.png"), b"same").unwrap();
        let err = from_folders(dir.path(), &manifest(), "NORMAL").unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, DatasetError::ConflictingLabels(_)), "{text}");
        assert!(
            text.contains("x-again.png") && text.contains("x.png") && text.contains("same content"),
            "{text}"
        );
        assert!(
            text.contains("PNEUMONIA 1") && text.contains("PNEUMONIA 0"),
            "{text}"
        );
        std::fs::remove_file(at("NORMAL/x-again.png")).unwrap();

        // One SOP Instance UID under both labels (the files differ: another study UID).
        dicom(&at("PNEUMONIA/s.dcm"), "1.2.3.1", "1.2.3.1.1");
        dicom(&at("NORMAL/s.dcm"), "1.2.3.9", "1.2.3.1.1");
        let err = from_folders(dir.path(), &manifest(), "NORMAL").unwrap_err();
        assert!(err.to_string().contains("same SOP Instance UID"), "{err}");
        std::fs::remove_file(at("NORMAL/s.dcm")).unwrap();

        // Another image of that study, labelled negative: the study is one case.
        dicom(&at("NORMAL/t.dcm"), "1.2.3.1", "1.2.3.1.2");
        let err = from_folders(dir.path(), &manifest(), "NORMAL").unwrap_err();
        assert!(err.to_string().contains("one study"), "{err}");
        std::fs::remove_file(at("NORMAL/t.dcm")).unwrap();

        // Under the same label, both images of the study are kept (one case in the report).
        dicom(&at("PNEUMONIA/t.dcm"), "1.2.3.1", "1.2.3.1.2");
        let set = from_folders(dir.path(), &manifest(), "NORMAL").unwrap();
        assert_eq!(set.cases.len(), 4, "{:?}", set.cases);
        assert_eq!(study_of(&at("PNEUMONIA/t.dcm")).as_deref(), Some("1.2.3.1"));
        assert_eq!(study_of(&at("NORMAL/y.png")), None);
    }
}
