//! A boot environment in a plain `name=value` file: the backend for tests and for
//! development boxes without a real bootloader. Writes are atomic (temporary file, fsync,
//! rename, fsync of the directory) and go through [`crate::dir_write`]: the file's folder
//! may belong to the service user while root writes, so no link planted there is followed.

use std::path::{Path, PathBuf};

use crate::dir_write::Dir;

use super::{parse_env_lines, BootControl, BootError, BootState};

/// Largest environment file read (a GRUB environment block is 1 KiB; a few variables).
const MAX_ENV_BYTES: u64 = 64 * 1024;

/// Boot variables kept in one file.
#[derive(Debug, Clone)]
pub struct FileBootControl {
    path: PathBuf,
}

impl FileBootControl {
    /// Uses `path`; a missing file reads as [`BootState::FACTORY`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileBootControl { path: path.into() }
    }

    /// The environment file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BootControl for FileBootControl {
    fn backend(&self) -> &'static str {
        "file"
    }

    /// Reads the file as root reads it in a folder the service user may own: never
    /// through a link, only a regular file (no FIFO to hang on, no device to read
    /// without end), at most 64 KiB.
    fn load(&self) -> Result<BootState, BootError> {
        let io = |source| BootError::Io {
            path: self.path.clone(),
            source,
        };
        let invalid = |why: String| io(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
        let bytes = match crate::dir_read::read_small(&self.path, MAX_ENV_BYTES) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return BootState::from_vars(&parse_env_lines("")),
            Err(crate::dir_read::ReadError::Io(e)) => return Err(io(e)),
            Err(e) => return Err(invalid(e.to_string())),
        };
        let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
        BootState::from_vars(&parse_env_lines(&text))
    }

    fn store(&mut self, state: &BootState) -> Result<(), BootError> {
        let io = |source| BootError::Io {
            path: self.path.clone(),
            source,
        };
        let mut text = String::new();
        for (k, v) in state.to_vars() {
            text.push_str(&format!("{k}={v}\n"));
        }
        let name = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "not a file name",
                ))
            })?;
        let dir = match self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => d,
            None => Path::new("."),
        };
        Dir::open(dir)
            .and_then(|d| d.replace(name, text.as_bytes()))
            .map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootctl::Slot;
    use std::fs;

    #[test]
    fn stores_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut ctl = FileBootControl::new(dir.path().join("env"));
        assert_eq!(ctl.load().unwrap(), BootState::FACTORY);
        let s = BootState {
            target: Slot::B,
            attempts: 3,
            ..BootState::FACTORY
        };
        ctl.store(&s).unwrap();
        assert_eq!(ctl.load().unwrap(), s);
        let text = fs::read_to_string(ctl.path()).unwrap();
        assert!(text.contains("duli_target=B\n"), "{text}");
    }

    /// Root writes the file in a folder the service user owns: links planted at the
    /// temporary names or at the file itself are replaced, their targets untouched.
    #[test]
    fn planted_links_are_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"root's file").unwrap();
        let owned = dir.path().join("owned");
        fs::create_dir(&owned).unwrap();
        for name in ["boot_env.tmp", ".boot_env.partial", "boot_env"] {
            std::os::unix::fs::symlink(&victim, owned.join(name)).unwrap();
        }
        let mut ctl = FileBootControl::new(owned.join("boot_env"));
        let s = BootState {
            target: Slot::B,
            ..BootState::FACTORY
        };
        ctl.store(&s).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"root's file");
        let meta = fs::symlink_metadata(ctl.path()).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(ctl.load().unwrap(), s);
        assert!(!owned.join(".boot_env.partial").exists());
    }

    /// What the service user may put at the file's place is refused when root reads it:
    /// a link (to a device that never ends), a FIFO (that never answers), a file too large.
    #[test]
    fn a_link_a_fifo_or_a_huge_file_is_refused_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let huge = dir.path().join("huge");
        fs::write(&huge, vec![b'#'; MAX_ENV_BYTES as usize + 1]).unwrap();
        for path in [link, fifo, huge] {
            let got = FileBootControl::new(&path).load();
            assert!(
                matches!(got, Err(BootError::Io { .. })),
                "{}: {got:?}",
                path.display()
            );
        }
    }
}
