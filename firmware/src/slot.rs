//! Writing a payload to a slot (a block device, or a plain file in tests) and reading it
//! back to check what reached the medium.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::bootctl::Slot;
use crate::progress::{Interrupted, Step};
use crate::stream::{copy_hashing, hash_reader, CHUNK};

/// Where the two root filesystem slots are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDevices {
    /// Slot A: a block device such as `/dev/disk/by-partlabel/rootfs-a`, or a file.
    pub a: PathBuf,
    /// Slot B.
    pub b: PathBuf,
}

impl SlotDevices {
    /// The device of `slot`.
    pub fn path(&self, slot: Slot) -> &Path {
        match slot {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }
}

/// A failure writing or checking a slot.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// I/O on the slot or the bundle failed.
    #[error("slot {path}: {source}")]
    Io {
        /// The device or file.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// The payload does not fit the slot.
    #[error("payload of {needed} bytes does not fit slot {path} ({capacity} bytes)")]
    TooSmall {
        /// The device.
        path: PathBuf,
        /// Its size.
        capacity: u64,
        /// The payload size.
        needed: u64,
    },
    /// The bundle's payload read while writing differs from the verified one.
    #[error(
        "bundle payload changed after verification; slot {0} left unbootable and not selected"
    )]
    SourceChanged(PathBuf),
    /// The slot read back does not hash to the manifest's digest.
    #[error("slot {path} reads back SHA-256 {actual}, expected {expected}")]
    ReadBackMismatch {
        /// The device.
        path: PathBuf,
        /// Digest from the manifest.
        expected: String,
        /// Digest read back.
        actual: String,
    },
    /// The observer stopped the write.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SlotError + '_ {
    move |source| SlotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that a payload of `size` bytes fits the slot at `path`. A block device has a
/// fixed size; a plain file (tests, development) grows.
pub fn check_fits(path: &Path, size: u64) -> Result<(), SlotError> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    };
    if meta.is_file() {
        return Ok(());
    }
    let mut dev = File::open(path).map_err(io_err(path))?;
    let capacity = dev.seek(SeekFrom::End(0)).map_err(io_err(path))?;
    if capacity < size {
        return Err(SlotError::TooSmall {
            path: path.to_path_buf(),
            capacity,
            needed: size,
        });
    }
    Ok(())
}

/// Streams `size` bytes from `source` into the slot at `path`, checking on the way that
/// they hash to `expected`, then flushes them to the medium. `progress` sees the running
/// byte count after each chunk and may stop the write.
pub fn write_slot<R: Read>(
    path: &Path,
    source: &mut R,
    size: u64,
    expected: &[u8; 32],
    mut progress: impl FnMut(Step) -> Result<(), Interrupted>,
) -> Result<(), SlotError> {
    let is_file = std::fs::metadata(path).map(|m| m.is_file()).unwrap_or(true);
    let file = OpenOptions::new()
        .write(true)
        .create(is_file)
        .truncate(false)
        .open(path)
        .map_err(io_err(path))?;
    let mut writer = BufWriter::with_capacity(CHUNK, file);
    let mut stopped = None;
    let copied = copy_hashing(source, &mut writer, |n| {
        progress(Step::Writing(n)).map_err(|i| {
            stopped = Some(i);
            io::Error::other("interrupted")
        })
    });
    if let Some(i) = stopped {
        return Err(i.into());
    }
    let (written, digest) = copied.map_err(io_err(path))?;
    let file = writer
        .into_inner()
        .map_err(|e| io_err(path)(e.into_error()))?;
    if is_file {
        file.set_len(written).map_err(io_err(path))?;
    }
    file.sync_all().map_err(io_err(path))?;
    if written != size || &digest != expected {
        return Err(SlotError::SourceChanged(path.to_path_buf()));
    }
    Ok(())
}

/// Reads the first `size` bytes of the slot back and returns their SHA-256. The page cache
/// for the slot is dropped first so the bytes come from the medium where the kernel allows.
pub fn rehash_slot(path: &Path, size: u64) -> Result<[u8; 32], SlotError> {
    let file = File::open(path).map_err(io_err(path))?;
    // Advisory only: a failure just means the read may be served from the cache.
    let _ = nix::fcntl::posix_fadvise(
        file.as_raw_fd(),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let mut limited = io::BufReader::with_capacity(CHUNK, file).take(size);
    let (n, digest) = hash_reader(&mut limited).map_err(io_err(path))?;
    if n != size {
        return Err(io_err(path)(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("slot holds {n} bytes, expected {size}"),
        )));
    }
    Ok(digest)
}
