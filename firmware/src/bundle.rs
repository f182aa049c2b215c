//! The on-disk bundle format: encode and decode of the header, nothing else.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "DULIFW\0\x01" (the last byte is the format version)
//!      8     8  key id of the signing key: SHA-256(public key)[..8]
//!     16    64  Ed25519 signature over "DULI-FIRMWARE-MANIFEST-V1\n" || manifest
//!     80     4  manifest length M, big-endian u32, 1..=65536
//!     84     M  manifest, UTF-8 JSON (see [`crate::manifest::Manifest`])
//!   84+M     N  payload, exactly manifest.payload.size bytes, up to the end of the file
//! ```
//!
//! The signature covers the manifest, and the manifest carries the payload's size and
//! SHA-256, so a verifier checks the signature on a few kilobytes and then streams the
//! payload through SHA-256 without ever holding it in memory.

use std::io::{self, Read};
use std::path::PathBuf;

use crate::keys::KeyId;
use crate::manifest::ManifestError;

/// First 8 bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"DULIFW\0\x01";
/// Domain-separation prefix of the signed message.
pub const SIGNATURE_DOMAIN: &[u8] = b"DULI-FIRMWARE-MANIFEST-V1\n";
/// Fixed header length before the manifest.
pub const HEADER_LEN: u64 = 84;
/// Largest manifest accepted.
pub const MAX_MANIFEST_LEN: u32 = 64 * 1024;

/// Why a bundle was rejected. Each kind of tampering gives its own variant.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading the bundle failed.
    #[error("bundle {path}: {source}")]
    Io {
        /// The bundle.
        path: PathBuf,
        /// The underlying failure.
        source: io::Error,
    },
    /// The file does not start with the bundle magic.
    #[error("not a DULI firmware bundle (bad magic)")]
    BadMagic,
    /// The file ends inside the header or manifest.
    #[error("bundle is truncated inside its header or manifest")]
    Truncated,
    /// The manifest length is zero or above [`MAX_MANIFEST_LEN`].
    #[error("bundle manifest length {0} is out of range")]
    ManifestLength(u32),
    /// The bundle is signed by a key this device does not trust.
    #[error("bundle is signed by key {0}, which this device does not trust")]
    UntrustedKey(KeyId),
    /// The bundle is signed by a key this release revokes (`firmware/keys/revoked.txt`).
    #[error("bundle is signed by key {0}, which this firmware revokes")]
    RevokedKey(KeyId),
    /// The signing key is trusted, but not for this kind of payload (an endorsed key
    /// outside its endorsement's scopes).
    #[error(
        "bundle is a {kind} signed by key {key}, which this device trusts only as {authority}"
    )]
    OutOfScope {
        /// The signing key.
        key: KeyId,
        /// The payload kind the manifest states.
        kind: crate::manifest::PayloadKind,
        /// What the key may sign.
        authority: crate::scope::Authority,
    },
    /// The signature does not match the manifest: manifest or signature altered.
    #[error("bundle manifest signature does not verify (manifest or signature altered)")]
    BadSignature,
    /// The signed manifest is not acceptable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The payload is not the size the manifest states.
    #[error("bundle payload is {actual} bytes, the manifest states {expected}")]
    PayloadSize {
        /// Size from the manifest.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// Bytes follow the payload the manifest states (read no further than one of them).
    #[error("bundle holds bytes after its {expected}-byte payload")]
    TrailingData {
        /// Size from the manifest.
        expected: u64,
    },
    /// The payload's SHA-256 differs from the manifest's: payload altered.
    #[error("bundle payload SHA-256 {actual} does not match the manifest's {expected}")]
    PayloadHashMismatch {
        /// Digest from the manifest.
        expected: String,
        /// Digest computed.
        actual: String,
    },
}

/// The fixed header and the manifest bytes it introduces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    /// Identifier of the signing key.
    pub key_id: KeyId,
    /// Ed25519 signature over [`signed_message`] of the manifest.
    pub signature: [u8; 64],
    /// Manifest JSON as stored.
    pub manifest: Vec<u8>,
}

impl RawHeader {
    /// Offset of the payload from the start of the bundle.
    pub fn payload_offset(&self) -> u64 {
        HEADER_LEN + self.manifest.len() as u64
    }

    /// Encodes the header and manifest.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload_offset() as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.key_id.0);
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&(self.manifest.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.manifest);
        out
    }

    /// Decodes the header and manifest from the start of `reader`; `path` names the bundle
    /// in I/O errors.
    pub fn decode<R: Read>(reader: &mut R, path: &std::path::Path) -> Result<Self, BundleError> {
        let mut fixed = [0u8; HEADER_LEN as usize];
        read_exact(reader, &mut fixed, path)?;
        if fixed[..8] != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&fixed[8..16]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&fixed[16..80]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&fixed[80..84]);
        let len = u32::from_be_bytes(len);
        if len == 0 || len > MAX_MANIFEST_LEN {
            return Err(BundleError::ManifestLength(len));
        }
        let mut manifest = vec![0u8; len as usize];
        read_exact(reader, &mut manifest, path)?;
        Ok(RawHeader {
            key_id: KeyId(key_id),
            signature,
            manifest,
        })
    }
}

/// The exact bytes the signature covers.
pub fn signed_message(manifest: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNATURE_DOMAIN.len() + manifest.len());
    msg.extend_from_slice(SIGNATURE_DOMAIN);
    msg.extend_from_slice(manifest);
    msg
}

fn read_exact<R: Read>(
    reader: &mut R,
    buf: &mut [u8],
    path: &std::path::Path,
) -> Result<(), BundleError> {
    reader.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            BundleError::Truncated
        } else {
            BundleError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn header() -> RawHeader {
        RawHeader {
            key_id: KeyId([1, 2, 3, 4, 5, 6, 7, 8]),
            signature: [9; 64],
            manifest: b"{\"a\":1}".to_vec(),
        }
    }

    #[test]
    fn encodes_documented_layout() {
        let bytes = header().encode();
        assert_eq!(&bytes[..8], b"DULIFW\0\x01");
        assert_eq!(&bytes[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&bytes[16..80], &[9; 64]);
        assert_eq!(&bytes[80..84], &[0, 0, 0, 7]);
        assert_eq!(&bytes[84..], b"{\"a\":1}");
        assert_eq!(header().payload_offset(), 91);
        let decoded = RawHeader::decode(&mut bytes.as_slice(), Path::new("x")).unwrap();
        assert_eq!(decoded, header());
    }

    #[test]
    fn rejects_malformed_headers() {
        let p = Path::new("x");
        let mut bytes = header().encode();
        bytes[0] ^= 1;
        assert!(matches!(
            RawHeader::decode(&mut bytes.as_slice(), p),
            Err(BundleError::BadMagic)
        ));
        let bytes = header().encode();
        assert!(matches!(
            RawHeader::decode(&mut &bytes[..50], p),
            Err(BundleError::Truncated)
        ));
        assert!(matches!(
            RawHeader::decode(&mut &bytes[..88], p),
            Err(BundleError::Truncated)
        ));
        let mut bytes = header().encode();
        bytes[80..84].copy_from_slice(&(MAX_MANIFEST_LEN + 1).to_be_bytes());
        assert!(matches!(
            RawHeader::decode(&mut bytes.as_slice(), p),
            Err(BundleError::ManifestLength(_))
        ));
        bytes[80..84].copy_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            RawHeader::decode(&mut bytes.as_slice(), p),
            Err(BundleError::ManifestLength(0))
        ));
    }
}
