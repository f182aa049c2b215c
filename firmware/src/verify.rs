//! Checking bundles: signature over the manifest, then the payload streamed through SHA-256.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::bundle::{signed_message, BundleError, RawHeader};
use crate::keys::{KeyId, TrustAnchors};
use crate::manifest::Manifest;
use crate::scope::Authority;
use crate::stream::{hash_reader, CHUNK};

/// A manifest whose signature and payload were checked. Only [`verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest {
    manifest: Manifest,
    signer: KeyId,
    authority: Authority,
    payload_offset: u64,
    bundle: PathBuf,
}

impl VerifiedManifest {
    /// The signed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The key that signed it.
    pub fn signer(&self) -> KeyId {
        self.signer
    }

    /// What the signing key may sign on this device (root, or its endorsed scopes).
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The verified bundle file.
    pub fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// Opens the bundle positioned at its payload, limited to the payload's size. The
    /// caller must hash what it reads again: the file may have changed since it was
    /// verified.
    pub fn open_payload(&self) -> Result<io::Take<BufReader<File>>, BundleError> {
        let io = |source| BundleError::Io {
            path: self.bundle.clone(),
            source,
        };
        let mut file = File::open(&self.bundle).map_err(io)?;
        file.seek(SeekFrom::Start(self.payload_offset))
            .map_err(io)?;
        Ok(BufReader::with_capacity(CHUNK, file).take(self.manifest.payload.size))
    }
}

/// Verifies a bundle: the signing key must be in `anchors`, the signature must cover the
/// manifest, the manifest must be well formed, the key must be allowed to sign its payload
/// kind (a root key, or an endorsed key whose scopes hold it), and the payload must have
/// exactly the stated size and SHA-256. The payload is streamed, never held in memory.
pub fn verify(bundle_path: &Path, anchors: &TrustAnchors) -> Result<VerifiedManifest, BundleError> {
    let io = |source| BundleError::Io {
        path: bundle_path.to_path_buf(),
        source,
    };
    let file = File::open(bundle_path).map_err(io)?;
    let mut reader = BufReader::with_capacity(CHUNK, file);
    let header = RawHeader::decode(&mut reader, bundle_path)?;
    let key = anchors
        .find(header.key_id)
        .ok_or(BundleError::UntrustedKey(header.key_id))?;
    if !key.verifies(&signed_message(&header.manifest), &header.signature) {
        return Err(BundleError::BadSignature);
    }
    let manifest = Manifest::from_json(&header.manifest)?;
    let authority = anchors
        .authority(header.key_id)
        .ok_or(BundleError::UntrustedKey(header.key_id))?;
    if !authority.may_sign(manifest.payload.kind) {
        return Err(BundleError::OutOfScope {
            key: header.key_id,
            kind: manifest.payload.kind,
            authority,
        });
    }
    let expected = manifest.payload_sha256()?;
    let (size, digest) = hash_reader(&mut (&mut reader).take(manifest.payload.size)).map_err(io)?;
    let mut extra = [0u8; 1];
    let trailing = reader.read(&mut extra).map_err(io)?;
    if size != manifest.payload.size || trailing != 0 {
        let rest = if trailing != 0 {
            1 + io::copy(&mut reader, &mut io::sink()).map_err(io)?
        } else {
            0
        };
        return Err(BundleError::PayloadSize {
            expected: manifest.payload.size,
            actual: size + rest,
        });
    }
    if digest != expected {
        return Err(BundleError::PayloadHashMismatch {
            expected: manifest.payload.sha256.clone(),
            actual: hex::encode(digest),
        });
    }
    Ok(VerifiedManifest {
        payload_offset: header.payload_offset(),
        signer: header.key_id,
        authority,
        manifest,
        bundle: bundle_path.to_path_buf(),
    })
}
