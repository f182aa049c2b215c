//! Checking bundles: signature over the manifest, then the payload streamed through SHA-256.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::bundle::{signed_message, BundleError, RawHeader};
use crate::keys::{KeyId, TrustAnchors};
use crate::manifest::Manifest;
use crate::scope::Authority;
use crate::stream::CHUNK;

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

/// The checks of a bundle's header: the signing key is in `anchors`, the signature covers
/// the manifest, the manifest is well formed and the key may sign its payload kind.
fn check_header(
    header: &RawHeader,
    anchors: &TrustAnchors,
) -> Result<(Manifest, Authority), BundleError> {
    if anchors.is_revoked(header.key_id) {
        return Err(BundleError::RevokedKey(header.key_id));
    }
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
    Ok((manifest, authority))
}

/// Verifies a bundle: the signing key must be in `anchors`, the signature must cover the
/// manifest, the manifest must be well formed, the key must be allowed to sign its payload
/// kind (a root key, or an endorsed key whose scopes hold it), and the payload must have
/// exactly the stated size and SHA-256. The payload is streamed, never held in memory.
pub fn verify(bundle_path: &Path, anchors: &TrustAnchors) -> Result<VerifiedManifest, BundleError> {
    let file = File::open(bundle_path).map_err(|source| BundleError::Io {
        path: bundle_path.to_path_buf(),
        source,
    })?;
    let stream = verify_stream(BufReader::with_capacity(CHUNK, file), bundle_path, anchors)?;
    let payload_offset = stream.payload_offset;
    let checked = stream.finish()?;
    Ok(VerifiedManifest {
        payload_offset,
        signer: checked.signer,
        authority: checked.authority,
        manifest: checked.manifest,
        bundle: bundle_path.to_path_buf(),
    })
}

/// A bundle's payload read once, as it streams in, after its header was verified
/// ([`verify_stream`]): whatever reads it must call [`PayloadStream::finish`] and keep
/// nothing it made from the bytes unless that succeeds (the size and SHA-256 the signed
/// manifest states are only known to hold then).
pub struct PayloadStream<R> {
    inner: io::Take<R>,
    ctx: ring::digest::Context,
    read: u64,
    manifest: Manifest,
    signer: KeyId,
    authority: Authority,
    path: PathBuf,
    /// Where the payload starts in the bundle.
    payload_offset: u64,
}

impl<R> std::fmt::Debug for PayloadStream<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadStream")
            .field("manifest", &self.manifest)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Read for PayloadStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

impl<R: Read> PayloadStream<R> {
    /// The signed manifest (its signature and the signer's scope were checked).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The key that signed it.
    pub fn signer(&self) -> KeyId {
        self.signer
    }

    /// Reads what is left of the payload, then checks that the stream held exactly the
    /// stated size (nothing after it) and the stated SHA-256.
    pub fn finish(mut self) -> Result<VerifiedHeader, BundleError> {
        let path = self.path.clone();
        let io = |source| BundleError::Io {
            path: path.clone(),
            source,
        };
        io::copy(&mut self, &mut io::sink()).map_err(io)?;
        if self.read != self.manifest.payload.size {
            return Err(BundleError::PayloadSize {
                expected: self.manifest.payload.size,
                actual: self.read,
            });
        }
        // One byte tells that something follows; however much does is never read.
        let mut rest = self.inner.into_inner().take(1);
        if io::copy(&mut rest, &mut io::sink()).map_err(io)? != 0 {
            return Err(BundleError::TrailingData {
                expected: self.manifest.payload.size,
            });
        }
        let expected = self.manifest.payload_sha256()?;
        let digest = self.ctx.finish();
        if digest.as_ref() != expected.as_slice() {
            return Err(BundleError::PayloadHashMismatch {
                expected: self.manifest.payload.sha256.clone(),
                actual: hex::encode(digest.as_ref()),
            });
        }
        Ok(VerifiedHeader {
            manifest: self.manifest,
            signer: self.signer,
            authority: self.authority,
        })
    }
}

/// What [`PayloadStream::finish`] vouches for: a manifest, its signer and the signer's
/// authority, with the payload read in full and matching it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedHeader {
    /// The signed manifest.
    pub manifest: Manifest,
    /// The key that signed it.
    pub signer: KeyId,
    /// What that key may sign.
    pub authority: Authority,
}

/// Verifies the header of the bundle `reader` streams (signing key in `anchors`, signature
/// over the manifest, the key's scope holding the payload kind) and returns its payload as
/// a stream hashed while it is read; `path` names the bundle in errors. For readers that
/// cannot be read twice, e.g. a header kept beside its payload and chained to it.
pub fn verify_stream<R: Read>(
    mut reader: R,
    path: &Path,
    anchors: &TrustAnchors,
) -> Result<PayloadStream<R>, BundleError> {
    let header = RawHeader::decode(&mut reader, path)?;
    let (manifest, authority) = check_header(&header, anchors)?;
    Ok(PayloadStream {
        inner: reader.take(manifest.payload.size),
        ctx: ring::digest::Context::new(&ring::digest::SHA256),
        read: 0,
        manifest,
        signer: header.key_id,
        authority,
        path: path.to_path_buf(),
        payload_offset: header.payload_offset(),
    })
}
