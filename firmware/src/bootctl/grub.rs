//! GRUB: the variables live in a `grubenv` block file (normally 1 KiB on the EFI system
//! partition). They are read with `grub-editenv FILE list` (package `grub-common`) and
//! written in place, the way GRUB's own `save_env` writes: the existing block is read,
//! rebuilt with the new values and `#` padding to exactly its old size, written over the old
//! one at offset 0 in one `pwrite` and flushed with `fsync`. The file is never truncated
//! (`grub-editenv set` opens it with `O_TRUNC`, so a power cut before its write lands
//! leaves an empty file: an "invalid environment block" to GRUB and to every later
//! command). In a block as `grub-editenv create` makes it, the variables sit in the first
//! 512-byte sector, so a cut that tears the write between sectors still leaves the old or
//! the new set.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::envblock::{BlockError, EnvBlock};
use super::{parse_env_lines, run_tool, store_checked, BootControl, BootError, BootState};

/// Largest environment block read (GRUB's is 1 KiB).
const MAX_BLOCK: u64 = 64 * 1024;

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

    fn io(&self) -> impl Fn(std::io::Error) -> BootError + '_ {
        |source| BootError::Io {
            path: self.file.clone(),
            source,
        }
    }

    fn damaged(&self, why: BlockError) -> BootError {
        BootError::DamagedGrubEnv {
            path: self.file.clone(),
            why,
        }
    }

    /// Opens the block (never creating it: a missing block means a wrong path, not a fresh
    /// box) and parses it.
    fn open_block(&self, write: bool) -> Result<(File, EnvBlock), BootError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&self.file)
            .map_err(self.io())?;
        let mut bytes = Vec::new();
        (&mut file)
            .take(MAX_BLOCK + 1)
            .read_to_end(&mut bytes)
            .map_err(self.io())?;
        if bytes.len() as u64 > MAX_BLOCK {
            return Err(self.io()(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("larger than {MAX_BLOCK} bytes: not an environment block"),
            )));
        }
        let block = EnvBlock::parse(&bytes).map_err(|why| self.damaged(why))?;
        Ok((file, block))
    }
}

/// Rebuilds `block` with the variables of `state`, the same size as before.
pub(crate) fn updated_block(block: &EnvBlock, state: &BootState) -> Result<Vec<u8>, BlockError> {
    let mut block = block.clone();
    for (name, value) in state.to_vars() {
        block.set(name, Some(&value));
    }
    block.encode()
}

/// Writes `bytes` over the block at offset 0, without truncating, and flushes it.
fn write_in_place(file: &File, bytes: &[u8]) -> std::io::Result<()> {
    file.write_all_at(bytes, 0)?;
    file.sync_all()
}

impl BootControl for GrubEnv {
    fn backend(&self) -> &'static str {
        "grub"
    }

    fn load(&self) -> Result<BootState, BootError> {
        // Checked here first: `grub-editenv FILE list` would create a missing FILE, and
        // says only "invalid environment block" of a damaged one.
        self.open_block(false)?;
        let out = run_tool(Command::new(&self.tool).arg(&self.file).arg("list"), None)?;
        BootState::from_vars(&parse_env_lines(&out))
    }

    fn store(&mut self, state: &BootState) -> Result<(), BootError> {
        let (file, block) = self.open_block(true)?;
        let bytes = updated_block(&block, state).map_err(|why| BootError::GrubEnvFull {
            path: self.file.clone(),
            why,
        })?;
        store_checked(self, state, || {
            write_in_place(&file, &bytes).map_err(self.io())
        })
    }
}
