//! Writes by root into folders another user owns (the data partition belongs to the
//! service user): every name is resolved relative to a directory file descriptor opened
//! without following a symbolic link, and files are created with `O_EXCL | O_NOFOLLOW`,
//! so a link planted in the folder is never followed and no pre-existing file is ever
//! written to. Renames and removals act on the names themselves, never on link targets.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{unlinkat, UnlinkatFlags};

/// A folder opened once; names inside it are plain file names (no `/`).
#[derive(Debug)]
pub struct Dir {
    fd: File,
    path: PathBuf,
}

fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

impl Dir {
    /// Opens `path`, which must be a directory and not a symbolic link.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW).bits())
            .open(path)?;
        Ok(Dir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The folder's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_name(&self, name: &str) -> io::Result<()> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(refused(format!(
                "{}: {name:?} is not a plain file name",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Removes the entry `name` if there is one (a link is removed, not its target);
    /// directories are left alone (an error).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        self.check_name(name)?;
        match unlinkat(Some(self.fd.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates `name` as a new regular file for writing (mode 0644, whatever the umask):
    /// whatever stood at that
    /// name (a stale file, a planted link) is removed first, and the creation fails rather
    /// than open anything that appears meanwhile.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        self.remove(name)?;
        let fd = openat(
            Some(self.fd.as_raw_fd()),
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )?;
        // SAFETY: `openat` returned a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        if !file.metadata()?.file_type().is_file() {
            return Err(refused(format!(
                "{}/{name} is not a regular file",
                self.path.display()
            )));
        }
        // 0644 whatever the caller's umask (a root shell's 077 would leave the service
        // user unable to read a pack or its record).
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        Ok(file)
    }

    /// Renames `from` to `to` inside the folder (replacing the entry `to`, never what a
    /// link at `to` points to).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.check_name(from)?;
        self.check_name(to)?;
        let fd = Some(self.fd.as_raw_fd());
        renameat(fd, from, fd, to)?;
        Ok(())
    }

    /// Replaces `name` with `bytes` atomically (a new temporary file, fsync, rename, fsync
    /// of the folder).
    pub fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let tmp = format!(".{name}.partial");
        let result = self.create_new(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()?;
            self.rename(&tmp, name)?;
            self.sync()
        });
        if result.is_err() {
            let _ = self.remove(&tmp);
        }
        result
    }

    /// Flushes the folder's entries to disk.
    pub fn sync(&self) -> io::Result<()> {
        self.fd.sync_all()
    }
}

/// Creates the folders of `path` that do not exist yet, one `mkdir` each (which never
/// follows a link at the name it creates), and then opens `path` as a [`Dir`]: a link
/// planted where the folder should be is refused, not followed, so root never makes folders
/// where a link in the service user's folder points.
pub fn create_folders(path: &Path) -> io::Result<Dir> {
    let mut missing = Vec::new();
    let mut at = path;
    loop {
        match std::fs::symlink_metadata(at) {
            Ok(meta) if meta.file_type().is_symlink() && !missing.is_empty() => {
                return Err(refused(format!(
                    "{} is a symbolic link: {} is not made through it",
                    at.display(),
                    path.display()
                )))
            }
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(at);
                match at.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => at = parent,
                    _ => break,
                }
            }
            Err(e) => return Err(e),
        }
    }
    for folder in missing.iter().rev() {
        std::fs::create_dir(folder)?;
    }
    Dir::open(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn folders_are_made_but_a_planted_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("a/b/models");
        assert!(create_folders(&made).is_ok());
        assert!(made.is_dir());
        assert!(create_folders(&made).is_ok(), "an existing folder is fine");
        let elsewhere = dir.path().join("elsewhere");
        let planted = dir.path().join("owned");
        std::os::unix::fs::symlink(&elsewhere, &planted).unwrap();
        assert!(create_folders(&planted).is_err());
        assert!(create_folders(&planted.join("models")).is_err());
        std::fs::create_dir(&elsewhere).unwrap();
        assert!(create_folders(&planted).is_err());
        assert!(create_folders(&planted.join("models")).is_err());
        assert!(
            !elsewhere.join("models").exists(),
            "nothing is made where the link points"
        );
    }

    /// A file made for the service user to read is 0644 even under root's umask of 077
    /// (`sudo duli firmware install` from a hardened shell).
    #[test]
    fn files_are_readable_by_the_service_user_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = Dir::open(dir.path()).unwrap();
        let before = nix::sys::stat::umask(Mode::from_bits_truncate(0o077));
        let made = d.create_new("pack");
        nix::sys::stat::umask(before);
        made.unwrap();
        let mode = std::fs::metadata(dir.path().join("pack"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn planted_links_are_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"boot variables").unwrap();
        let folder = dir.path().join("owned");
        std::fs::create_dir(&folder).unwrap();
        std::os::unix::fs::symlink(&victim, folder.join("x.partial")).unwrap();
        std::os::unix::fs::symlink(&victim, folder.join("x")).unwrap();
        let d = Dir::open(&folder).unwrap();
        d.create_new("x.partial")
            .unwrap()
            .write_all(b"new")
            .unwrap();
        d.rename("x.partial", "x").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"boot variables");
        assert!(std::fs::symlink_metadata(folder.join("x"))
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(std::fs::read(folder.join("x")).unwrap(), b"new");
        std::os::unix::fs::symlink(&victim, folder.join("y")).unwrap();
        d.replace("y", b"sidecar").unwrap();
        assert_eq!(std::fs::read(folder.join("y")).unwrap(), b"sidecar");
        // The folder itself as a link, and names with a slash, are refused.
        std::os::unix::fs::symlink(&folder, dir.path().join("link")).unwrap();
        assert!(Dir::open(&dir.path().join("link")).is_err());
        assert!(d.create_new("../victim").is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"boot variables");
    }
}
