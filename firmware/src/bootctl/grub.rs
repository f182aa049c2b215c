//! GRUB: the variables live in a `grubenv` block file, read and written with
//! `grub-editenv` (package `grub-common`). `grub-editenv FILE set a=1 b=2 ...` rewrites
//! the whole 1 KiB block in one write, so all variables change together.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{parse_env_lines, run_tool, store_checked, BootControl, BootError, BootState};

/// Boot variables in a GRUB environment block.
#[derive(Debug, Clone)]
pub struct GrubEnv {
    tool: PathBuf,
    file: PathBuf,
}

impl GrubEnv {
    /// Uses the environment block `file` (normally `/boot/grub/grubenv` on the boot
    /// partition) through `grub-editenv` from `PATH`.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self::with_tool("grub-editenv", file)
    }

    /// Uses a specific `grub-editenv` binary.
    pub fn with_tool(tool: impl Into<PathBuf>, file: impl Into<PathBuf>) -> Self {
        GrubEnv {
            tool: tool.into(),
            file: file.into(),
        }
    }

    /// The environment block.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Creates an empty environment block (image build and tests).
    pub fn create(&self) -> Result<(), BootError> {
        run_tool(Command::new(&self.tool).arg(&self.file).arg("create"), None).map(drop)
    }
}

impl BootControl for GrubEnv {
    fn backend(&self) -> &'static str {
        "grub"
    }

    fn load(&self) -> Result<BootState, BootError> {
        // `grub-editenv FILE list` creates a missing FILE: refuse instead, a missing
        // environment block means a wrong path, not a fresh box.
        if !self.file.exists() {
            return Err(BootError::Io {
                path: self.file.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let out = run_tool(Command::new(&self.tool).arg(&self.file).arg("list"), None)?;
        BootState::from_vars(&parse_env_lines(&out))
    }

    fn store(&mut self, state: &BootState) -> Result<(), BootError> {
        if !self.file.exists() {
            return Err(BootError::Io {
                path: self.file.clone(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let mut cmd = Command::new(&self.tool);
        cmd.arg(&self.file).arg("set");
        for (k, v) in state.to_vars() {
            cmd.arg(format!("{k}={v}"));
        }
        store_checked(self, state, || run_tool(&mut cmd, None).map(drop))
    }
}
