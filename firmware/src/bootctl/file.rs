//! A boot environment in a plain `name=value` file: the backend for tests and for
//! development boxes without a real bootloader. Writes are atomic (temporary file, fsync,
//! rename, fsync of the directory).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{parse_env_lines, BootControl, BootError, BootState};

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

    fn load(&self) -> Result<BootState, BootError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => {
                return Err(BootError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
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
        let tmp = self.path.with_extension("tmp");
        let mut file = fs::File::create(&tmp).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootctl::Slot;

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
}
