//! Writing a provisioning plan as close to all-or-nothing as a file system allows: every
//! file is first staged complete beside its target (a new temporary file with its final
//! mode and owner, fsync'd), and only when all are staged are they renamed into place, in
//! the plan's order (the configuration last). A failure while staging replaces nothing; a
//! failure while renaming names exactly the files replaced and those left as they were.
//! Staged files that were not renamed are removed.

use crate::fsutil::{sync_dir, WriteError};
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One file to put in place.
pub struct Entry<'a> {
    /// The target.
    pub path: &'a Path,
    /// Its content.
    pub bytes: &'a [u8],
    /// Its permission bits.
    pub mode: u32,
    /// Its owner (uid, gid), when it is to be handed to the service user.
    pub owner: Option<(u32, u32)>,
}

/// Why the files were not all put in place, and how far it went.
#[derive(Debug, thiserror::Error)]
#[error(
    "{cause}; {}replaced: {}; not replaced: {}",
    if .replaced.is_empty() { "nothing was replaced. " } else { "" },
    list(.replaced),
    list(.not_replaced)
)]
pub struct ApplyError {
    /// What failed.
    pub cause: WriteError,
    /// Files now holding the new content.
    pub replaced: Vec<PathBuf>,
    /// Files left as they were (or still absent).
    pub not_replaced: Vec<PathBuf>,
}

fn list(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "none".into();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A file written complete at a temporary name beside its target.
struct Staged {
    tmp: PathBuf,
    path: PathBuf,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.to_path_buf(),
        source,
    }
}

/// The folder of `path`.
fn folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Creates `dir` and whichever of its parents are missing, each 0755 whatever the umask
/// of the shell provisioning runs from (under 077 the service user could not reach the
/// TLS keys written below `/etc/duli`); folders that exist keep their modes.
fn create_folders(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        missing.push(d.to_path_buf());
        at = d.parent();
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => fs::set_permissions(d, fs::Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `e` complete at a new temporary name beside its target.
fn stage(e: &Entry<'_>) -> Result<Staged, WriteError> {
    let dir = folder(e.path);
    create_folders(&dir).map_err(err(&dir))?;
    let name = e
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.{}.provision.tmp", std::process::id()));
    // O_EXCL: never a planted link or a stale file; a leftover of this same process id
    // (a crash) is removed first.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(e.mode)
            .open(&tmp)
            .map_err(err(&tmp))?;
        file.set_permissions(fs::Permissions::from_mode(e.mode))
            .map_err(err(&tmp))?;
        if let Some((uid, gid)) = e.owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(err(&tmp))?;
        }
        file.write_all(e.bytes).map_err(err(&tmp))?;
        file.sync_all().map_err(err(&tmp))
    })();
    match result {
        Ok(()) => Ok(Staged {
            tmp,
            path: e.path.to_path_buf(),
        }),
        Err(x) => {
            let _ = fs::remove_file(&tmp);
            Err(x)
        }
    }
}

/// Stages every entry, then renames them into place in order. On failure the staged files
/// not renamed are removed and the error says what was and was not replaced.
pub fn put_in_place(entries: &[Entry<'_>]) -> Result<Vec<PathBuf>, ApplyError> {
    let all = || entries.iter().map(|e| e.path.to_path_buf()).collect();
    let mut staged = Vec::with_capacity(entries.len());
    for e in entries {
        match stage(e) {
            Ok(s) => staged.push(s),
            Err(cause) => {
                for s in &staged {
                    let _ = fs::remove_file(&s.tmp);
                }
                return Err(ApplyError {
                    cause,
                    replaced: Vec::new(),
                    not_replaced: all(),
                });
            }
        }
    }
    let mut replaced = Vec::with_capacity(staged.len());
    for (i, s) in staged.iter().enumerate() {
        let done = match fs::rename(&s.tmp, &s.path) {
            Ok(()) => {
                replaced.push(s.path.clone());
                // The rename is made durable by a sync of the folder.
                sync_dir(&folder(&s.path))
            }
            Err(e) => Err(err(&s.path)(e)),
        };
        if let Err(cause) = done {
            for later in &staged[i..] {
                let _ = fs::remove_file(&later.tmp);
            }
            let not_replaced = entries
                .iter()
                .map(|e| e.path.to_path_buf())
                .filter(|p| !replaced.contains(p))
                .collect();
            return Err(ApplyError {
                cause,
                replaced,
                not_replaced,
            });
        }
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Folders provisioning creates are 0755 under the strictest umask (the service user
    /// must reach the TLS material below them); a folder that exists keeps its mode.
    #[test]
    fn created_folders_are_reachable_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let kept = dir.path().join("etc");
        fs::create_dir(&kept).unwrap();
        fs::set_permissions(&kept, fs::Permissions::from_mode(0o750)).unwrap();
        let deep = kept.join("duli").join("tls");
        let before = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let made = create_folders(&deep);
        nix::sys::stat::umask(before);
        made.unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&kept), 0o750);
        assert_eq!(mode(&kept.join("duli")), 0o755);
        assert_eq!(mode(&deep), 0o755);
        create_folders(&deep).unwrap();
    }
}
