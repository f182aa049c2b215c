//! Writing a payload to a slot (a block device, or a plain file in tests) and reading it
//! back to check what reached the medium.
//!
//! A slot must exist and be what the configuration says slots are: a block device on an
//! appliance, so that a mistyped path or a missing `/dev/disk/by-partlabel` link fails the
//! install instead of writing a new regular file (which the bootloader would never boot,
//! while the trial armed for it would boot the partition's old content). Only
//! [`SlotMedium::File`] (development boxes and tests) writes plain files, created if missing.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::bootctl::Slot;
use crate::progress::{Interrupted, Step};
use crate::stream::{copy_hashing, hash_reader, CHUNK};

/// What the slots are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlotMedium {
    /// Existing block devices (the appliance).
    #[default]
    BlockDevice,
    /// Plain files, created when missing (development boxes and tests).
    File,
}

/// Where the two root filesystem slots are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDevices {
    /// Slot A: a block device such as `/dev/disk/by-partlabel/rootfs-a`, or a file.
    pub a: PathBuf,
    /// Slot B.
    pub b: PathBuf,
    /// Whether the paths are block devices or plain files.
    pub medium: SlotMedium,
}

impl SlotDevices {
    /// Two block devices.
    pub fn block_devices(a: impl Into<PathBuf>, b: impl Into<PathBuf>) -> Self {
        SlotDevices {
            a: a.into(),
            b: b.into(),
            medium: SlotMedium::BlockDevice,
        }
    }

    /// Two plain files (development boxes and tests).
    pub fn files(a: impl Into<PathBuf>, b: impl Into<PathBuf>) -> Self {
        SlotDevices {
            a: a.into(),
            b: b.into(),
            medium: SlotMedium::File,
        }
    }

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
    /// The slot is missing, or is not the kind of file the configuration names.
    #[error("slot {path} {what}; check firmware.slot_a / firmware.slot_b (firmware.slot_files is for development boxes only)")]
    NotASlot {
        /// The configured path.
        path: PathBuf,
        /// What was found there.
        what: &'static str,
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

/// Checks that `path` is a slot of the kind `medium` names: an existing block device, or
/// for [`SlotMedium::File`] a regular file or nothing yet. Returns whether it is a file.
fn check_slot(path: &Path, medium: SlotMedium) -> Result<bool, SlotError> {
    use std::os::unix::fs::FileTypeExt;
    let not_a_slot = |what| SlotError::NotASlot {
        path: path.to_path_buf(),
        what,
    };
    let kind = match std::fs::metadata(path) {
        Ok(meta) => meta.file_type(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return match medium {
                SlotMedium::File => Ok(true),
                SlotMedium::BlockDevice => Err(not_a_slot("does not exist")),
            }
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    match medium {
        SlotMedium::BlockDevice if kind.is_block_device() => Ok(false),
        SlotMedium::BlockDevice if kind.is_file() => {
            Err(not_a_slot("is a regular file, not a block device"))
        }
        SlotMedium::BlockDevice => Err(not_a_slot("is not a block device")),
        SlotMedium::File if kind.is_file() => Ok(true),
        SlotMedium::File => Err(not_a_slot("is not a regular file")),
    }
}

/// Checks that `path` is a slot of the kind `medium` names (see [`SlotMedium`]) and that a
/// payload of `size` bytes fits it. A block device has a fixed size; a plain file grows.
pub fn check_fits(path: &Path, medium: SlotMedium, size: u64) -> Result<(), SlotError> {
    if check_slot(path, medium)? {
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

/// Streams `size` bytes from `source` into the slot at `path` (of the kind `medium` names,
/// checked again here), checking on the way that they hash to `expected`, then flushes them
/// to the medium. `progress` sees the running byte count after each chunk and may stop the
/// write.
pub fn write_slot<R: Read>(
    path: &Path,
    medium: SlotMedium,
    source: &mut R,
    size: u64,
    expected: &[u8; 32],
    mut progress: impl FnMut(Step) -> Result<(), Interrupted>,
) -> Result<(), SlotError> {
    let is_file = check_slot(path, medium)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_slot_is_refused_unless_slots_are_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("rootfs-b");
        let payload = b"new image".to_vec();
        let digest = ring::digest::digest(&ring::digest::SHA256, &payload);
        let mut expected = [0u8; 32];
        expected.copy_from_slice(digest.as_ref());
        let write = |medium| {
            write_slot(
                &missing,
                medium,
                &mut payload.as_slice(),
                payload.len() as u64,
                &expected,
                |_| Ok(()),
            )
        };

        for result in [
            check_fits(&missing, SlotMedium::BlockDevice, 9),
            write(SlotMedium::BlockDevice),
        ] {
            assert!(
                matches!(
                    result,
                    Err(SlotError::NotASlot {
                        what: "does not exist",
                        ..
                    })
                ),
                "{result:?}"
            );
        }
        assert!(!missing.exists(), "a regular file was created");

        // A regular file where a block device is expected (left by a mistake): refused.
        std::fs::write(&missing, b"old").unwrap();
        assert!(matches!(
            check_fits(&missing, SlotMedium::BlockDevice, 9),
            Err(SlotError::NotASlot { .. })
        ));
        assert!(matches!(
            write(SlotMedium::BlockDevice),
            Err(SlotError::NotASlot { .. })
        ));
        assert_eq!(std::fs::read(&missing).unwrap(), b"old");

        // Slots configured as files: created and written.
        std::fs::remove_file(&missing).unwrap();
        check_fits(&missing, SlotMedium::File, 9).unwrap();
        write(SlotMedium::File).unwrap();
        assert_eq!(std::fs::read(&missing).unwrap(), payload);
        assert!(matches!(
            check_fits(dir.path(), SlotMedium::File, 9),
            Err(SlotError::NotASlot { .. })
        ));
    }
}
