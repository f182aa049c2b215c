//! Where provisioning may write. It runs as root: the configuration folder (`--config`),
//! the system root (`--system-root`) and the data folder must be places only root (or the
//! user running the command) controls, or another account could redirect root's writes
//! with a link or take the files it leaves. A data folder is named by an absolute path.

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// Why a place is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// A relative path, which the daemon and this command would resolve differently.
    #[error("{0} is relative: give an absolute path")]
    Relative(PathBuf),
    /// A path with `..`.
    #[error("{0} contains '..': give the folder's own path")]
    Parent(PathBuf),
    /// A folder on the way is a symbolic link.
    #[error("{0} is a symbolic link: give the real path")]
    Link(PathBuf),
    /// Something other than a folder stands on the way.
    #[error("{0} is not a folder")]
    NotFolder(PathBuf),
    /// A folder another account owns or may write to.
    #[error(
        "{path} belongs to uid {uid} or may be written by others (mode {mode:o}): \
         provisioning writes only where root alone can"
    )]
    Untrusted {
        /// The folder or file.
        path: PathBuf,
        /// Its owner.
        uid: u32,
        /// Its permission bits.
        mode: u32,
    },
    /// The configuration file is not a regular file root controls.
    #[error("{0} is not a regular file that root alone may change")]
    ConfigFile(PathBuf),
    /// Its metadata cannot be read.
    #[error("{path}: {reason}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        reason: String,
    },
}

/// `path` made absolute against the working directory (as the daemon resolves its
/// `--config`).
pub fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    std::env::current_dir()
        .unwrap_or_else(|_| PathBuf::from("/"))
        .join(path)
}

/// Whether the owner `uid` of a folder or file is trusted: root or the user running this.
fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// Checks that `dir` (absolute) and every existing folder above it are real folders (no
/// symbolic link) owned by root or the invoking user and not writable by others, except
/// sticky folders such as `/tmp`, where only the owner of an entry may replace it. `leaf`
/// is another uid `dir` itself may belong to (the service user's data folder). Parts of
/// `dir` that do not exist yet are created by root later.
pub fn check_folder(dir: &Path, leaf: Option<u32>) -> Result<(), PlaceError> {
    if !dir.is_absolute() {
        return Err(PlaceError::Relative(dir.to_path_buf()));
    }
    if dir.components().any(|c| c == Component::ParentDir) {
        return Err(PlaceError::Parent(dir.to_path_buf()));
    }
    let mut at = PathBuf::new();
    let last = dir.components().count();
    for (i, part) in dir.components().enumerate() {
        at.push(part);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(PlaceError::Io {
                    path: at,
                    reason: e.to_string(),
                })
            }
        };
        if meta.file_type().is_symlink() {
            return Err(PlaceError::Link(at));
        }
        if !meta.is_dir() {
            return Err(PlaceError::NotFolder(at));
        }
        let is_leaf = i + 1 == last;
        let owner_ok = trusted_uid(meta.uid()) || (is_leaf && Some(meta.uid()) == leaf);
        let mode = meta.mode() & 0o7777;
        let writable_by_others = mode & 0o022 != 0 && mode & 0o1000 == 0;
        if !owner_ok || writable_by_others {
            return Err(PlaceError::Untrusted {
                path: at,
                uid: meta.uid(),
                mode,
            });
        }
    }
    Ok(())
}

/// Checks the configuration file `config` (absolute): its folder as [`check_folder`], and
/// the file, when it exists, a regular file (not a link) owned by root or the invoking
/// user and not writable by others.
pub fn check_config(config: &Path) -> Result<(), PlaceError> {
    let dir = config.parent().unwrap_or(Path::new("/"));
    check_folder(dir, None)?;
    match std::fs::symlink_metadata(config) {
        Ok(m) if m.is_file() && trusted_uid(m.uid()) && m.mode() & 0o022 == 0 => Ok(()),
        Ok(_) => Err(PlaceError::ConfigFile(config.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PlaceError::Io {
            path: config.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn links_relative_paths_and_open_folders_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        check_folder(&d.join("etc/duli"), None).unwrap();
        std::fs::create_dir_all(d.join("etc")).unwrap();
        check_folder(&d.join("etc"), None).unwrap();
        assert!(matches!(
            check_folder(Path::new("etc"), None),
            Err(PlaceError::Relative(_))
        ));
        assert!(matches!(
            check_folder(&d.join("etc/../x"), None),
            Err(PlaceError::Parent(_))
        ));
        std::os::unix::fs::symlink(d.join("etc"), d.join("link")).unwrap();
        assert!(matches!(
            check_folder(&d.join("link/duli"), None),
            Err(PlaceError::Link(_))
        ));
        std::fs::write(d.join("file"), b"").unwrap();
        assert!(matches!(
            check_folder(&d.join("file/duli"), None),
            Err(PlaceError::NotFolder(_))
        ));
        std::fs::create_dir(d.join("open")).unwrap();
        std::fs::set_permissions(d.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            check_folder(&d.join("open/duli"), None),
            Err(PlaceError::Untrusted { .. })
        ));
        std::fs::set_permissions(d.join("open"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_folder(&d.join("open/duli"), None).unwrap();
        // The configuration file itself: not a link, not writable by others.
        std::fs::write(d.join("etc/duli.toml"), b"").unwrap();
        check_config(&d.join("etc/duli.toml")).unwrap();
        std::fs::set_permissions(
            d.join("etc/duli.toml"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        assert!(check_config(&d.join("etc/duli.toml")).is_err());
        std::os::unix::fs::symlink(d.join("file"), d.join("etc/other.toml")).unwrap();
        assert!(check_config(&d.join("etc/other.toml")).is_err());
    }
}
