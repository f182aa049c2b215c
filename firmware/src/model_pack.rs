//! Model packs: signed like root filesystems, but installed as one file on the data
//! partition (outside the A/B slots), so a model can change without an OS update and
//! survives slot switches. No root privileges are needed: the data partition belongs to
//! the service user. When root installs one all the same (`duli-update.service`), the
//! service user could have planted links in that folder: every write goes through
//! [`crate::dir_write`], so none is followed.

use std::io::{BufReader, BufWriter, Write};
use std::path::Path;

use crate::bundle::{BundleError, RawHeader};
use crate::dir_write::Dir;
use crate::keys::TrustAnchors;
use crate::manifest::{Manifest, PayloadKind};
use crate::policy::DevicePolicy;
use crate::slot::SlotError;
use crate::stream::{copy_hashing, CHUNK};
use crate::updater::UpdateError;
use crate::verify::{verify, verify_stream, PayloadStream, VerifiedManifest};
use crate::version::Version;

/// Verifies a model-pack bundle and, if the device accepts it, writes it to `dest`
/// atomically (a temporary file it creates itself, fsync, rename, fsync of the directory),
/// never following a link at either name or at `dest`'s folder. The installed pack is the
/// signed bundle itself (header, manifest, payload), so whoever puts it in service verifies
/// it again ([`open_installed`]). `installed` is the version of the pack currently at
/// `dest`, if any. With `payload_sha256`, the bundle must carry that payload (the one the
/// caller looked into before), or nothing is written.
pub fn install_model_pack(
    bundle: &Path,
    anchors: &TrustAnchors,
    policy: &DevicePolicy,
    installed: Option<Version>,
    dest: &Path,
    payload_sha256: Option<&str>,
) -> Result<VerifiedManifest, UpdateError> {
    let verified = verify(bundle, anchors)?;
    let manifest = verified.manifest();
    if payload_sha256.is_some_and(|sha| sha != manifest.payload.sha256) {
        return Err(SlotError::SourceChanged(bundle.to_path_buf()).into());
    }
    policy.check(manifest, PayloadKind::ModelPack, installed)?;
    let expected = manifest.payload_sha256().map_err(BundleError::from)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpdateError::Slot(SlotError::Io { path, source })
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model-pack".into());
    let tmp_name = format!(".{name}.partial");
    let tmp = dest.with_file_name(&tmp_name);
    let folder = match dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(d) => d.to_path_buf(),
        None => Path::new(".").to_path_buf(),
    };
    // The header as verified: read again, and the same manifest, or the bundle changed.
    let header = {
        let file = std::fs::File::open(bundle).map_err(io(bundle))?;
        RawHeader::decode(&mut std::io::BufReader::new(file), bundle)?
    };
    if Manifest::from_json(&header.manifest).map_err(BundleError::from)? != *manifest {
        return Err(SlotError::SourceChanged(bundle.to_path_buf()).into());
    }
    let dir = Dir::open(&folder).map_err(io(&folder))?;
    let result = (|| -> Result<(), UpdateError> {
        let mut payload = verified.open_payload()?;
        let file = dir.create_new(&tmp_name).map_err(io(&tmp))?;
        let mut writer = BufWriter::with_capacity(CHUNK, file);
        writer.write_all(&header.encode()).map_err(io(&tmp))?;
        let (size, digest) =
            copy_hashing(&mut payload, &mut writer, |_| Ok(())).map_err(io(&tmp))?;
        let file = writer.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        file.sync_all().map_err(io(&tmp))?;
        if size != manifest.payload.size || digest != expected {
            return Err(SlotError::SourceChanged(tmp.clone()).into());
        }
        dir.rename(&tmp_name, &name).map_err(io(dest))?;
        dir.sync().map_err(io(&folder))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = dir.remove(&tmp_name);
    }
    result?;
    log::info!(
        "installed model pack {} at {}",
        manifest.version,
        dest.display()
    );
    Ok(verified)
}

/// Opens the pack installed at `path` (without following a link) and verifies its header
/// again against `anchors`: the signature, the signer's scope, and that it is a model pack.
/// The payload streams out hashed; the caller keeps what it made of it only when
/// [`PayloadStream::finish`] succeeds.
pub fn open_installed(
    path: &Path,
    anchors: &TrustAnchors,
) -> Result<PayloadStream<BufReader<std::fs::File>>, BundleError> {
    let file = open_no_follow(path)?;
    open_pack_file(file, path, anchors)
}

/// Opens the file at `path` for reading without following a link at its name or blocking
/// on a FIFO: a pack in a folder the service user writes.
pub fn open_no_follow(path: &Path) -> Result<std::fs::File, BundleError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| BundleError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// [`open_installed`] for a pack already opened as `file` (named `path` in errors), read
/// from its first byte: a bundle a root command opened once (the private copy of a staged
/// bundle, a technician's file) is checked through that descriptor, not by its name again.
pub fn open_pack_file(
    file: std::fs::File,
    path: &Path,
    anchors: &TrustAnchors,
) -> Result<PayloadStream<BufReader<std::fs::File>>, BundleError> {
    use std::io::{Seek, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(0))
        .map_err(|source| BundleError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let stream = verify_stream(BufReader::with_capacity(CHUNK, file), path, anchors)?;
    if stream.manifest().payload.kind != PayloadKind::ModelPack {
        return Err(BundleError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!(
                "holds a {} bundle, not a model pack",
                stream.manifest().payload.kind
            )),
        });
    }
    Ok(stream)
}
