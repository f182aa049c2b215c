//! Reading files that root must not be tricked into reading: the certificates, keys, site
//! secret and endorsements a provisioning file names (only inside the provisioning folder),
//! and files an account with fewer rights could replace (the support bundle's secrets).
//! Never through a symbolic link, never a FIFO, device or folder, never more than a size
//! limit; a FIFO does not block the reader.

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

/// Largest certificate or CA bundle file read.
pub const MAX_CERTIFICATES: u64 = 1 << 20;
/// Largest private key file read.
pub const MAX_KEY: u64 = 64 << 10;
/// Largest site secret file read.
pub const MAX_SECRET: u64 = 4 << 10;
/// Largest firmware key endorsement read.
pub const MAX_ENDORSEMENT: u64 = 64 << 10;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The name is absolute or leaves the folder (`..`).
    #[error("must be a path relative to the provisioning file, inside its folder (no '..')")]
    Outside,
    /// The file, or a folder on the way to it, is a symbolic link.
    #[error("is a symbolic link or passes through one: give the file itself")]
    Link,
    /// A FIFO, a device, a socket or a folder.
    #[error("is not a regular file")]
    NotRegular,
    /// Larger than the limit for its kind.
    #[error("is larger than {0} bytes")]
    TooLarge(u64),
    /// It cannot be opened or read.
    #[error("{0}")]
    Io(std::io::Error),
}

impl From<nix::Error> for SourceError {
    fn from(e: nix::Error) -> SourceError {
        match e {
            nix::Error::ELOOP => SourceError::Link,
            nix::Error::ENOTDIR => SourceError::NotRegular,
            other => SourceError::Io(other.into()),
        }
    }
}

impl From<std::io::Error> for SourceError {
    fn from(e: std::io::Error) -> SourceError {
        match e.raw_os_error() {
            Some(code) if code == nix::libc::ELOOP => SourceError::Link,
            _ => SourceError::Io(e),
        }
    }
}

/// Flags of every open here: no link followed, no blocking on a FIFO, no controlling
/// terminal taken, not inherited by children.
fn file_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC
}

/// The provisioning folder, opened once: every file it names is read beneath it.
#[derive(Debug)]
pub struct Folder {
    path: PathBuf,
    dir: File,
}

impl Folder {
    /// Opens the folder `path` (the one of the provisioning file, which the technician
    /// names on the command line).
    pub fn open(path: &Path) -> Result<Folder, SourceError> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_CLOEXEC)
            .open(path)?;
        Ok(Folder {
            path: path.to_path_buf(),
            dir,
        })
    }

    /// Opens the folder `path` itself refusing a link in its place (what it stands in is
    /// followed as usual): for a folder another account owns the entry of, read through
    /// this one descriptor, so it cannot be swapped between two reads.
    pub fn open_not_a_link(path: &Path) -> Result<Folder, SourceError> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(code) if code == nix::libc::ENOTDIR || code == nix::libc::ELOOP => {
                    SourceError::Link
                }
                _ => SourceError::from(e),
            })?;
        Ok(Folder {
            path: path.to_path_buf(),
            dir,
        })
    }

    /// Where `rel` is, for messages.
    pub fn show(&self, rel: &Path) -> PathBuf {
        self.path.join(rel)
    }

    /// Reads `rel`, a relative path inside the folder: each folder on the way and the file
    /// itself opened without following a link, the file regular and at most `cap` bytes.
    pub fn read(&self, rel: &Path, cap: u64) -> Result<Vec<u8>, SourceError> {
        read_opened(self.open_file(rel)?, cap)
    }

    /// Opens `rel`, a relative path inside the folder, as [`Folder::read`] does: each folder
    /// on the way and the file itself without following a link, and only a regular file.
    pub fn open_file(&self, rel: &Path) -> Result<File, SourceError> {
        let mut parts = Vec::new();
        for c in rel.components() {
            match c {
                Component::Normal(p) => parts.push(p),
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(SourceError::Outside)
                }
            }
        }
        let Some((last, folders)) = parts.split_last() else {
            return Err(SourceError::NotRegular);
        };
        let mut held: Option<OwnedFd> = None;
        for name in folders {
            let at = held
                .as_ref()
                .map_or(self.dir.as_raw_fd(), |fd| fd.as_raw_fd());
            let fd = openat(
                Some(at),
                *name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                // A link opened as a folder without following it is "not a folder".
                nix::Error::ENOTDIR if is_link(at, name) => SourceError::Link,
                other => other.into(),
            })?;
            held = Some(owned(fd));
        }
        let at = held
            .as_ref()
            .map_or(self.dir.as_raw_fd(), |fd| fd.as_raw_fd());
        let fd = openat(Some(at), *last, file_flags(), Mode::empty())?;
        let file = File::from(owned(fd));
        if !file.metadata()?.is_file() {
            return Err(SourceError::NotRegular);
        }
        Ok(file)
    }
}

/// Whether `name` in the folder `at` is a symbolic link.
fn is_link(at: std::os::fd::RawFd, name: &std::ffi::OsStr) -> bool {
    nix::sys::stat::fstatat(Some(at), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFLNK)
}

/// Takes ownership of a descriptor `openat` just returned.
fn owned(fd: std::os::fd::RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful openat and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Reads `path` without following a link at its last component and without blocking on a
/// FIFO; only a regular file of at most `cap` bytes is read.
pub fn read_nofollow(path: &Path, cap: u64) -> Result<Vec<u8>, SourceError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(
            nix::libc::O_NOFOLLOW
                | nix::libc::O_NONBLOCK
                | nix::libc::O_NOCTTY
                | nix::libc::O_CLOEXEC,
        )
        .open(path)?;
    read_opened(file, cap)
}

/// The content of an opened file when it is regular and at most `cap` bytes.
fn read_opened(file: File, cap: u64) -> Result<Vec<u8>, SourceError> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(SourceError::NotRegular);
    }
    if meta.len() > cap {
        return Err(SourceError::TooLarge(cap));
    }
    let mut bytes = Vec::new();
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(SourceError::TooLarge(cap));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn only_regular_files_inside_the_folder_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let stick = dir.path().join("usb");
        std::fs::create_dir_all(stick.join("certs")).unwrap();
        std::fs::write(stick.join("certs/a.pem"), b"cert").unwrap();
        std::fs::write(dir.path().join("outside"), b"secret").unwrap();
        symlink(dir.path().join("outside"), stick.join("link")).unwrap();
        symlink(dir.path(), stick.join("up")).unwrap();
        nix::unistd::mkfifo(&stick.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let f = Folder::open(&stick).unwrap();
        assert_eq!(f.read(Path::new("certs/a.pem"), 10).unwrap(), b"cert");
        assert_eq!(f.read(Path::new("./certs/a.pem"), 10).unwrap(), b"cert");
        let err = |p: &str, cap| f.read(Path::new(p), cap).unwrap_err();
        assert!(matches!(err("link", 10), SourceError::Link));
        assert!(matches!(err("up/outside", 10), SourceError::Link));
        assert!(matches!(err("../outside", 10), SourceError::Outside));
        let abs = dir.path().join("outside");
        assert!(matches!(
            f.read(&abs, 10).unwrap_err(),
            SourceError::Outside
        ));
        assert!(matches!(err("fifo", 10), SourceError::NotRegular));
        assert!(matches!(err("certs", 10), SourceError::NotRegular));
        assert!(matches!(err("certs/a.pem", 3), SourceError::TooLarge(3)));
        assert!(matches!(err("missing", 3), SourceError::Io(_)));
        // By absolute path: the last component is not followed, a FIFO does not block.
        assert!(matches!(
            read_nofollow(&stick.join("link"), 10).unwrap_err(),
            SourceError::Link
        ));
        assert!(matches!(
            read_nofollow(&stick.join("fifo"), 10).unwrap_err(),
            SourceError::NotRegular
        ));
        assert_eq!(read_nofollow(&abs, 10).unwrap(), b"secret");
    }
}
