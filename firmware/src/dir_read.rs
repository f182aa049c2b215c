//! Root's reads of small files in folders the service user may own: never through a
//! link, only a regular file (no FIFO to hang on, no device that never ends), within a
//! size bound. The reading side of [`crate::dir_write`].

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a small file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading failed (a link in its place refuses to open).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Something other than a regular file stands at the path.
    #[error("not a regular file")]
    NotRegular,
    /// The file holds more than the bound.
    #[error("larger than {0} bytes")]
    TooLarge(u64),
}

/// The bytes of the regular file at `path`, at most `max` of them; `None` when nothing is
/// there.
pub fn read_small(path: &Path, max: u64) -> Result<Option<Vec<u8>>, ReadError> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !file.metadata()?.is_file() {
        return Err(ReadError::NotRegular);
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(ReadError::TooLarge(max));
    }
    Ok(Some(bytes))
}
