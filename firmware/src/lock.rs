//! One firmware operation at a time: install, mark-good and rollback each hold an exclusive
//! `flock` on a lock file for their whole run, so that a technician's `duli firmware install`
//! and `duli-update.service` never interleave their boot-variable and slot writes. A second
//! operation fails at once instead of waiting.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "another install, mark-good or rollback is running (it holds {0}); try again when it \
         has finished"
    )]
    Busy(PathBuf),
    /// The lock file could not be opened or locked.
    #[error("firmware lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases the lock (so does the process ending, however).
#[derive(Debug)]
pub struct UpdateLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl UpdateLock {
    /// Takes the lock on `path`, creating the file (mode 0600) if missing, never following
    /// a link and never truncating; fails at once with [`LockError::Busy`] when it is held.
    /// A missing folder of the lock is created for root alone (0700).
    pub fn acquire(path: &Path) -> Result<UpdateLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(e)),
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(io)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(UpdateLock {
                _lock: lock,
                path: path.to_path_buf(),
            }),
            Err((_, Errno::EWOULDBLOCK)) => Err(LockError::Busy(path.to_path_buf())),
            Err((_, errno)) => Err(io(errno.into())),
        }
    }

    /// Takes the lock on `path` as [`UpdateLock::acquire`] does, but while another process
    /// holds it, retries until `timeout` has passed (mark-good at boot waits for an install
    /// that `duli-update.service` started at the same time).
    pub fn wait(path: &Path, timeout: Duration) -> Result<UpdateLock, LockError> {
        let deadline = Instant::now() + timeout;
        loop {
            match UpdateLock::acquire(path) {
                Err(LockError::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_fails_at_once_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("duli-firmware.lock");
        let first = UpdateLock::acquire(&path).unwrap();
        let second = UpdateLock::acquire(&path);
        assert!(matches!(second, Err(LockError::Busy(_))), "{second:?}");
        let msg = second.unwrap_err().to_string();
        assert!(msg.contains("another install"), "{msg}");
        let started = Instant::now();
        assert!(matches!(
            UpdateLock::wait(&path, Duration::from_millis(300)),
            Err(LockError::Busy(_))
        ));
        assert!(started.elapsed() >= Duration::from_millis(300));
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || UpdateLock::wait(&path, Duration::from_secs(30)).map(drop))
        };
        std::thread::sleep(Duration::from_millis(300));
        drop(first);
        waiter.join().unwrap().unwrap();
        UpdateLock::acquire(&path).unwrap();

        // A link planted at the lock's name is not followed.
        let target = dir.path().join("target");
        let link = dir.path().join("link.lock");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(matches!(
            UpdateLock::acquire(&link),
            Err(LockError::Io { .. })
        ));
        assert!(!target.exists());
    }
}
