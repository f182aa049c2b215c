//! The signed description of a bundle's payload.
//!
//! The manifest is JSON inside the bundle (see [`crate::bundle`]). It names what the
//! payload is, which hardware may install it, which versions it may be installed over, and
//! the payload's exact size and SHA-256, so that verifying the signature over the manifest
//! and then streaming the payload through SHA-256 authenticates every byte.

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// Version of the manifest's JSON schema understood by this crate.
pub const MANIFEST_FORMAT: u32 = 1;

/// What the payload is and where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadKind {
    /// A complete root filesystem image written to the inactive A/B slot.
    Rootfs,
    /// A model pack (weights plus manifest) installed on the data partition.
    ModelPack,
}

impl std::fmt::Display for PayloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PayloadKind::Rootfs => "rootfs",
            PayloadKind::ModelPack => "model-pack",
        })
    }
}

/// What the release pipeline states about a payload before it is hashed: the input to
/// [`crate::sign::sign`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// Version this bundle installs.
    pub version: Version,
    /// Lowest version a device must be running to install this bundle.
    pub min_version: Version,
    /// Hardware identifiers (e.g. `nuc-x86_64`) that may install this bundle; never empty.
    pub hardware: Vec<String>,
    /// What the payload is.
    pub kind: PayloadKind,
    /// Security version ([`Manifest::security_version`]); 0 when not raised.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub security_version: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Size and digest of the payload that follows the manifest in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadDigest {
    /// What the payload is.
    pub kind: PayloadKind,
    /// Exact payload length in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the payload.
    pub sha256: String,
}

/// The manifest as stored, signed, in a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Schema version, [`MANIFEST_FORMAT`].
    pub format: u32,
    /// Version this bundle installs.
    pub version: Version,
    /// Lowest version a device must be running to install this bundle.
    pub min_version: Version,
    /// Hardware identifiers that may install this bundle.
    pub hardware: Vec<String>,
    /// The payload that follows the manifest.
    pub payload: PayloadDigest,
    /// Security version of a root filesystem: raised by a release that fixes a flaw its
    /// predecessors must not be installed again for. Once a box commits a slot with
    /// security version N, it refuses root filesystems below N and rollbacks to a slot
    /// below N ([`crate::bootctl::BootState::floor`]). Absent means 0 (a box whose release
    /// predates the field refuses a manifest that carries it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub security_version: u32,
}

/// A manifest whose content is not acceptable even though it parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The JSON does not match the schema.
    #[error("manifest is not valid: {0}")]
    Malformed(String),
    /// The schema version is not one this crate reads.
    #[error("manifest format {0} is not supported (expected {MANIFEST_FORMAT})")]
    UnsupportedFormat(u32),
    /// No hardware identifier is listed.
    #[error("manifest lists no compatible hardware")]
    NoHardware,
    /// `min_version` is above `version`.
    #[error("manifest minimum version {min} is above its own version {version}")]
    MinAboveVersion {
        /// The stated minimum.
        min: Version,
        /// The stated version.
        version: Version,
    },
    /// The digest is not 64 lower-case hex characters.
    #[error("manifest payload sha256 {0:?} is not 64 lower-case hex characters")]
    BadDigest(String),
}

impl Manifest {
    /// Combines a release description with the digest of its payload.
    pub fn new(release: &Release, size: u64, sha256: [u8; 32]) -> Self {
        Manifest {
            format: MANIFEST_FORMAT,
            version: release.version,
            min_version: release.min_version,
            hardware: release.hardware.clone(),
            payload: PayloadDigest {
                kind: release.kind,
                size,
                sha256: hex::encode(sha256),
            },
            security_version: release.security_version,
        }
    }

    /// Parses and checks a manifest's JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Serialises the manifest to the JSON that gets signed.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Checks the rules the schema alone does not express.
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat(self.format));
        }
        if self.hardware.is_empty() || self.hardware.iter().any(|h| h.trim().is_empty()) {
            return Err(ManifestError::NoHardware);
        }
        if self.min_version > self.version {
            return Err(ManifestError::MinAboveVersion {
                min: self.min_version,
                version: self.version,
            });
        }
        self.payload_sha256()?;
        Ok(())
    }

    /// The payload digest as bytes.
    pub fn payload_sha256(&self) -> Result<[u8; 32], ManifestError> {
        let bad = || ManifestError::BadDigest(self.payload.sha256.clone());
        if self.payload.sha256.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let bytes = hex::decode(&self.payload.sha256).map_err(|_| bad())?;
        bytes.try_into().map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> Release {
        Release {
            version: Version::new(1, 2, 0),
            min_version: Version::new(1, 0, 0),
            hardware: vec!["nuc-x86_64".into()],
            kind: PayloadKind::Rootfs,
            security_version: 0,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let m = Manifest::new(&release(), 42, [7; 32]);
        let json = m.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"kind\":\"rootfs\""), "{text}");
        assert!(text.contains("\"version\":\"1.2.0\""), "{text}");
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        assert_eq!(m.payload_sha256().unwrap(), [7; 32]);
        // No security version: the field is left out, as releases before it wrote them.
        assert!(!text.contains("security_version"), "{text}");
    }

    /// The security version round-trips; one that is negative, beyond 32 bits, not a
    /// number, or given twice is refused as invalid JSON for the schema.
    #[test]
    fn the_security_version_is_a_plain_u32() {
        let m = Manifest::new(
            &Release {
                security_version: 7,
                ..release()
            },
            42,
            [7; 32],
        );
        let text = String::from_utf8(m.to_json()).unwrap();
        assert!(text.contains("\"security_version\":7"), "{text}");
        assert_eq!(Manifest::from_json(text.as_bytes()).unwrap(), m);
        for bad in [
            "-1",
            "4294967296",
            "\"7\"",
            "7.5",
            "7,\"security_version\":8",
        ] {
            let lying = text.replace(
                "\"security_version\":7",
                &format!("\"security_version\":{bad}"),
            );
            assert!(
                Manifest::from_json(lying.as_bytes()).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn rejects_unknown_fields_and_bad_rules() {
        let mut v: serde_json::Value =
            serde_json::from_slice(&Manifest::new(&release(), 1, [0; 32]).to_json()).unwrap();
        v["extra"] = 1.into();
        assert!(matches!(
            Manifest::from_json(v.to_string().as_bytes()),
            Err(ManifestError::Malformed(_))
        ));

        let mut m = Manifest::new(&release(), 1, [0; 32]);
        m.hardware.clear();
        assert_eq!(m.check(), Err(ManifestError::NoHardware));

        let mut m = Manifest::new(&release(), 1, [0; 32]);
        m.min_version = Version::new(2, 0, 0);
        assert!(matches!(
            m.check(),
            Err(ManifestError::MinAboveVersion { .. })
        ));

        let mut m = Manifest::new(&release(), 1, [0; 32]);
        m.payload.sha256 = "AB".repeat(32);
        assert!(matches!(m.check(), Err(ManifestError::BadDigest(_))));

        let mut m = Manifest::new(&release(), 1, [0; 32]);
        m.format = 2;
        assert_eq!(m.check(), Err(ManifestError::UnsupportedFormat(2)));
    }
}
