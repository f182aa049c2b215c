//! Making bundles: the build pipeline's side.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::bundle::{signed_message, RawHeader, MAX_MANIFEST_LEN};
use crate::keys::{KeyError, SigningKey};
use crate::manifest::{Manifest, ManifestError, Release};
use crate::stream::{copy_hashing, hash_reader, CHUNK};

/// Why a bundle could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The private key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The release description is not acceptable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The manifest would exceed the format's limit (too many hardware ids).
    #[error("manifest is {0} bytes, above the format's limit")]
    ManifestTooLarge(usize),
    /// The payload changed while it was being packed.
    #[error("payload {0} changed while the bundle was being written")]
    PayloadChanged(PathBuf),
    /// Reading the payload or writing the bundle failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SignError + '_ {
    move |source| SignError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Signs `payload_path` as described by `release` with the PKCS#8 private key `key_pkcs8`
/// and writes the bundle to `out_path` (atomically: a temporary file renamed into place).
/// Returns the manifest that was signed.
pub fn sign(
    key_pkcs8: &[u8],
    release: &Release,
    payload_path: &Path,
    out_path: &Path,
) -> Result<Manifest, SignError> {
    let key = SigningKey::from_pkcs8(key_pkcs8)?;

    // Pass 1: size and digest of the payload, streamed.
    let mut payload = File::open(payload_path).map_err(io_err(payload_path))?;
    let (size, digest) = hash_reader(&mut payload).map_err(io_err(payload_path))?;
    let manifest = Manifest::new(release, size, digest);
    manifest.check()?;
    let json = manifest.to_json();
    if json.len() > MAX_MANIFEST_LEN as usize {
        return Err(SignError::ManifestTooLarge(json.len()));
    }
    let header = RawHeader {
        key_id: key.public_key().id(),
        signature: key.sign(&signed_message(&json)),
        manifest: json,
    };

    // Pass 2: header then payload into a temporary file, hashing again to catch a payload
    // that changed in between.
    let file_name = out_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let tmp = out_path.with_file_name(format!(".{file_name}.partial"));
    let result = (|| {
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut writer = BufWriter::with_capacity(CHUNK, file);
        writer.write_all(&header.encode()).map_err(io_err(&tmp))?;
        let mut payload = File::open(payload_path).map_err(io_err(payload_path))?;
        let (copied, again) =
            copy_hashing(&mut (&mut payload).take(size + 1), &mut writer, |_| Ok(()))
                .map_err(io_err(&tmp))?;
        if copied != size || again != digest {
            return Err(SignError::PayloadChanged(payload_path.to_path_buf()));
        }
        let file = writer
            .into_inner()
            .map_err(|e| io_err(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, out_path).map_err(io_err(out_path))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    log::info!(
        "signed {} {} ({} bytes) with key {} into {}",
        manifest.payload.kind,
        manifest.version,
        size,
        key.public_key().id(),
        out_path.display()
    );
    Ok(manifest)
}
