//! The file area: received instances as DICOM Part 10 files under the data directory.
//!
//! An instance is streamed into a temp file as its P-DATA arrives ([`IncomingFile`]), with
//! write-behind (the kernel is asked to start writeback every few MiB, so the final fsync
//! is short), then fsync'd and renamed into `files/<study>/<instance>.dcm` with an fsync of
//! the directory ([`FileArea::place`]). A file is either complete under `files/` or absent;
//! leftovers in `tmp/` are removed at start-up. The copy a new one replaces is kept (a hard
//! link under `kept/`) until the replacement's index commit is durable, so that whatever the
//! index says after a crash, its file is there ([`crate::store::kept`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes written between two write-behind requests.
const WRITE_BEHIND_CHUNK: u64 = 4 * 1024 * 1024;

/// The folders of the data directory that hold DICOM files.
#[derive(Debug, Clone)]
pub struct FileArea {
    root: PathBuf,
    files: PathBuf,
    tmp: PathBuf,
    kept: PathBuf,
}

/// An earlier copy of an instance kept under `kept/` ([`FileArea::keep_previous`]), named
/// `<study>_<instance>_<n>.dcm` after the place it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptCopy {
    /// The hard link under `kept/`.
    pub path: PathBuf,
    /// The place it was kept from, relative to the data directory.
    pub rel: PathBuf,
    /// The instance's name component (its SOP Instance UID when that is a plain UID).
    pub sop_component: String,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl FileArea {
    /// Opens (creating) `files/`, `tmp/` and `kept/` under `root`, and removes temp
    /// leftovers of a previous run (they were never acknowledged).
    pub fn open(root: &Path) -> io::Result<FileArea> {
        let files = root.join("files");
        let tmp = root.join("tmp");
        let kept = root.join("kept");
        fs::create_dir_all(&files)?;
        fs::create_dir_all(&tmp)?;
        fs::create_dir_all(&kept)?;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(FileArea {
            root: root.to_path_buf(),
            files,
            tmp,
            kept,
        })
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts a new temp file.
    pub fn incoming(&self) -> io::Result<IncomingFile> {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-{seq}.part", std::process::id()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&path)?;
        Ok(IncomingFile {
            file: Some(file),
            path,
            written: 0,
            behind_from: 0,
        })
    }

    /// Where the file of an instance lives, relative to the data directory.
    pub fn relative_path(study_uid: &str, sop_uid: &str) -> PathBuf {
        PathBuf::from("files")
            .join(safe_component(study_uid))
            .join(format!("{}.dcm", safe_component(sop_uid)))
    }

    /// Moves a finished temp file to its place (replacing an earlier copy of the same
    /// instance) and makes the rename durable. Returns the path relative to the root.
    pub fn place(
        &self,
        mut staged: StagedFile,
        study_uid: &str,
        sop_uid: &str,
    ) -> Result<PathBuf, PlaceError> {
        let not_placed = |source| PlaceError {
            source,
            placed: false,
        };
        let rel = Self::relative_path(study_uid, sop_uid);
        let dest = self.root.join(&rel);
        let dir = dest.parent().unwrap_or(&self.files).to_path_buf();
        // Twice at most: retention removes a study's folder once it empties, and may do
        // so between the check and the rename of another of the study's files.
        for attempt in 0..2 {
            if !dir.exists() {
                fs::create_dir_all(&dir).map_err(not_placed)?;
                sync_dir(&self.files).map_err(not_placed)?;
            }
            match fs::rename(&staged.path, &dest) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt == 0 => continue,
                Err(e) => return Err(not_placed(e)),
            }
        }
        staged.placed = true;
        sync_dir(&dir).map_err(|source| PlaceError {
            source,
            placed: true,
        })?;
        Ok(rel)
    }

    /// Keeps the copy of an instance already at its place: a hard link under `kept/`,
    /// made durable, which no listing of instances takes. A placement whose index commit
    /// then fails is undone with it ([`FileArea::undo_place`]); one whose commit succeeds
    /// drops it once the commit is durable ([`FileArea::drop_kept`]). Several replacements
    /// of one instance before a flush each keep their own. `None` when the place is empty.
    pub fn keep_previous(&self, study_uid: &str, sop_uid: &str) -> io::Result<Option<PathBuf>> {
        let dest = self.root.join(Self::relative_path(study_uid, sop_uid));
        if !dest.exists() {
            return Ok(None);
        }
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let kept = self.kept.join(format!(
            "{}_{}_{}-{seq}.dcm",
            safe_component(study_uid),
            safe_component(sop_uid),
            std::process::id()
        ));
        fs::hard_link(&dest, &kept)?;
        sync_dir(&self.kept)?;
        Ok(Some(kept))
    }

    /// Undoes a placement whose index commit failed: the copy kept before it
    /// ([`FileArea::keep_previous`]) goes back in place, or, when there was none, the
    /// placed file is removed, so the files hold what the index says.
    pub fn undo_place(&self, rel: &Path, kept: Option<PathBuf>) -> io::Result<()> {
        match kept {
            Some(kept) => self.restore_kept(&kept, rel),
            None => {
                let dest = self.root.join(rel);
                match fs::remove_file(&dest) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                match dest.parent() {
                    Some(dir) => sync_dir(dir),
                    None => Ok(()),
                }
            }
        }
    }

    /// Puts a kept copy back at `rel` (relative to the data directory), replacing what is
    /// there, durably.
    pub fn restore_kept(&self, kept: &Path, rel: &Path) -> io::Result<()> {
        let dest = self.root.join(rel);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::rename(kept, &dest)?;
        if let Some(dir) = dest.parent() {
            sync_dir(dir)?;
        }
        sync_dir(&self.kept)
    }

    /// Drops the copy kept by [`FileArea::keep_previous`] once the placement is durable.
    pub fn drop_kept(&self, kept: Option<PathBuf>) -> io::Result<()> {
        match kept {
            Some(kept) => match fs::remove_file(&kept) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            },
            None => Ok(()),
        }
    }

    /// The copies kept under `kept/` (after a crash: those whose replacement may not have
    /// been durable). Names this area did not make are listed with an empty `rel` and
    /// `sop_component`, to be removed.
    pub fn kept_copies(&self) -> io::Result<Vec<KeptCopy>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.kept)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            let parts: Vec<&str> = name
                .strip_suffix(".dcm")
                .unwrap_or("")
                .splitn(3, '_')
                .collect();
            let (rel, sop_component) = match parts[..] {
                [study, sop, _seq] if is_component(study) && is_component(sop) => (
                    PathBuf::from("files")
                        .join(study)
                        .join(format!("{sop}.dcm")),
                    sop.to_string(),
                ),
                _ => (PathBuf::new(), String::new()),
            };
            out.push(KeptCopy {
                path,
                rel,
                sop_component,
            });
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Removes a placed file (retention) and syncs its folder; removes the folder when empty.
    pub fn remove(&self, rel: &Path) -> io::Result<()> {
        let path = self.root.join(rel);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Some(dir) = path.parent() {
            if fs::remove_dir(dir).is_err() {
                sync_dir(dir)?;
            } else {
                sync_dir(&self.files)?;
            }
        }
        Ok(())
    }

    /// Every placed file, for `reindex`.
    pub fn walk(&self) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for study in fs::read_dir(&self.files)? {
            let study = study?;
            if !study.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(study.path())? {
                let f = f?;
                if f.file_type()?.is_file() && f.path().extension().is_some_and(|e| e == "dcm") {
                    out.push(f.path());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Free bytes on the file system of the data directory.
    pub fn free_bytes(&self) -> io::Result<u64> {
        free_bytes(&self.root)
    }
}

/// Free bytes (for an unprivileged user) on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(io::Error::from)?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// A UID is digits and dots; anything else (hostile input) is replaced by a hash so it can
/// never name another path.
fn safe_component(uid: &str) -> String {
    if is_plain_uid(uid) {
        uid.to_string()
    } else {
        let d = ring::digest::digest(&ring::digest::SHA256, uid.as_bytes());
        format!("x{}", hex::encode(&d.as_ref()[..16]))
    }
}

/// A UID that may name a file as it is: 1 to 64 digits and dots, not starting with a dot.
fn is_plain_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid.chars().all(|c| c.is_ascii_digit() || c == '.')
        && !uid.starts_with('.')
}

/// Whether `name` is what [`safe_component`] makes: a plain UID or `x` and 32 hex digits.
fn is_component(name: &str) -> bool {
    let hashed = name.len() == 33
        && name.starts_with('x')
        && name[1..].chars().all(|c| c.is_ascii_hexdigit());
    is_plain_uid(name) || hashed
}

/// fsync of a directory, so that a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Why [`FileArea::place`] failed, and whether the file had been renamed into place
/// (its folder's sync failed after): then the place holds the new file, which the caller
/// must undo ([`FileArea::undo_place`]).
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct PlaceError {
    /// What failed.
    pub source: io::Error,
    /// Whether the file is at its place.
    pub placed: bool,
}

/// A scratch file under the data directory's `tmp/` (an instance re-encoded for a
/// retrieve): removed on drop, and at the next start after a crash.
#[derive(Debug)]
pub struct ScratchFile {
    file: File,
    path: PathBuf,
}

impl ScratchFile {
    /// Creates an empty scratch file (mode 0600) under `<data directory>/tmp/`.
    pub fn create(data_dir: &Path) -> io::Result<ScratchFile> {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = data_dir.join("tmp");
        fs::create_dir_all(&tmp)?;
        let path = tmp.join(format!("{}-{seq}.scratch", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&path)?;
        Ok(ScratchFile { file, path })
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its length now.
    pub fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A temp file being written; removed on drop unless finished.
#[derive(Debug)]
pub struct IncomingFile {
    file: Option<File>,
    path: PathBuf,
    written: u64,
    behind_from: u64,
}

impl IncomingFile {
    /// Appends bytes, and asks the kernel to start writing back each full chunk.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| io::Error::other("file already finished"))?;
        file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        if self.written - self.behind_from >= WRITE_BEHIND_CHUNK {
            start_writeback(file, self.behind_from, self.written - self.behind_from);
            self.behind_from = self.written;
        }
        Ok(())
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.written
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// The temp path (for parsing the header before placing).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes the data to disk (fdatasync). Blocking: call from a blocking context.
    pub fn finish(mut self) -> io::Result<StagedFile> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("file already finished"))?;
        file.sync_data()?;
        let id = std::os::unix::fs::MetadataExt::ino(&file.metadata()?);
        Ok(StagedFile {
            path: std::mem::take(&mut self.path),
            size: self.written,
            id,
            placed: false,
        })
    }
}

impl Drop for IncomingFile {
    fn drop(&mut self) {
        if self.file.is_some() && !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the fd is valid for the
    // lifetime of `file`. It starts writeback without waiting, so the final fsync is short.
    unsafe {
        nix::libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            nix::libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

/// A complete, fsync'd temp file waiting to be placed; removed on drop unless placed.
#[derive(Debug)]
pub struct StagedFile {
    path: PathBuf,
    size: u64,
    id: u64,
    placed: bool,
}

impl StagedFile {
    /// The temp path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Its identity on the file system (the inode, which placing it keeps).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_file_is_placed_and_temp_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let area = FileArea::open(dir.path()).unwrap();
        let mut f = area.incoming().unwrap();
        let chunk = vec![7u8; 1 << 20];
        for _ in 0..9 {
            f.write(&chunk).unwrap();
        }
        assert_eq!(f.len(), 9 << 20);
        let tmp = f.path().to_path_buf();
        let staged = f.finish().unwrap();
        let rel = area.place(staged, "1.2.3", "1.2.3.4").unwrap();
        assert!(!tmp.exists());
        assert_eq!(fs::metadata(dir.path().join(&rel)).unwrap().len(), 9 << 20);
        assert_eq!(area.walk().unwrap(), vec![dir.path().join(rel)]);
    }

    #[test]
    fn dropped_incoming_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let area = FileArea::open(dir.path()).unwrap();
        let mut f = area.incoming().unwrap();
        f.write(b"partial").unwrap();
        let tmp = f.path().to_path_buf();
        drop(f);
        assert!(!tmp.exists());
        assert!(area.walk().unwrap().is_empty());
    }

    #[test]
    fn hostile_uids_cannot_escape_the_area() {
        let rel = FileArea::relative_path("../../etc", "passwd");
        let s = rel.to_string_lossy();
        assert!(!s.contains(".."), "{s}");
        assert!(rel.starts_with("files"));
    }
}
