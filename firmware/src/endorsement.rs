//! Key endorsements: how a device comes to trust a key other than the built-in one.
//!
//! Provisioning may add a signing key (for example a hospital group's own model-pack key)
//! only together with an endorsement made by a root key, normally the built-in release key.
//! An endorsement is a small JSON document:
//!
//! ```json
//! {"format":1,"key":"<64 hex>","label":"site model packs","endorser":"<16 hex key id>","signature":"<128 hex>"}
//! ```
//!
//! The signature is Ed25519 by the endorser over
//! `"DULI-FIRMWARE-KEY-ENDORSEMENT-V1\n" || key (32 bytes) || label (UTF-8)`.
//! Endorsed keys can sign bundles; they cannot endorse further keys.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::{KeyId, PublicKey, SigningKey, TrustAnchors};

/// Domain-separation prefix of the endorsed message.
const ENDORSEMENT_DOMAIN: &[u8] = b"DULI-FIRMWARE-KEY-ENDORSEMENT-V1\n";

/// File name suffix of endorsements in an endorsement directory.
pub const ENDORSEMENT_SUFFIX: &str = ".endorsement.json";

/// A root key's signed statement that another key may sign bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endorsement {
    /// Schema version, 1.
    pub format: u32,
    /// The endorsed public key, hex.
    pub key: String,
    /// Free text naming the key's purpose; covered by the signature.
    pub label: String,
    /// [`KeyId`] of the endorsing root key, hex.
    pub endorser: String,
    /// Ed25519 signature, hex.
    pub signature: String,
}

/// Why an endorsement was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum EndorsementError {
    /// Not valid endorsement JSON.
    #[error("endorsement is not valid: {0}")]
    Malformed(String),
    /// The endorser is not one of the device's root keys.
    #[error("endorsement is made by key {0}, which is not a root key of this device")]
    UnknownEndorser(String),
    /// The signature does not verify.
    #[error("endorsement signature does not verify")]
    BadSignature,
    /// Reading the endorsement file failed.
    #[error("endorsement file {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
}

fn message(key: &PublicKey, label: &str) -> Vec<u8> {
    let mut msg = ENDORSEMENT_DOMAIN.to_vec();
    msg.extend_from_slice(&key.0);
    msg.extend_from_slice(label.as_bytes());
    msg
}

impl Endorsement {
    /// Endorses `key` with a root signing key.
    pub fn create(root: &SigningKey, key: &PublicKey, label: &str) -> Self {
        Endorsement {
            format: 1,
            key: key.to_hex(),
            label: label.to_string(),
            endorser: root.public_key().id().to_string(),
            signature: hex::encode(root.sign(&message(key, label))),
        }
    }

    /// Parses endorsement JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EndorsementError> {
        let e: Endorsement = serde_json::from_slice(bytes)
            .map_err(|err| EndorsementError::Malformed(err.to_string()))?;
        if e.format != 1 {
            return Err(EndorsementError::Malformed(format!(
                "format {} is not supported",
                e.format
            )));
        }
        Ok(e)
    }

    /// Serialises the endorsement.
    pub fn to_json(&self) -> String {
        // Plain strings and integers: serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks the endorsement against `roots` and returns the endorsed key.
    pub fn verify(&self, roots: &[PublicKey]) -> Result<PublicKey, EndorsementError> {
        let key = PublicKey::from_hex(&self.key)
            .map_err(|_| EndorsementError::Malformed("key is not 64 hex characters".into()))?;
        let root = roots
            .iter()
            .find(|root| root.id().to_string() == self.endorser)
            .ok_or_else(|| EndorsementError::UnknownEndorser(self.endorser.clone()))?;
        let signature = hex::decode(&self.signature).map_err(|_| EndorsementError::BadSignature)?;
        if !root.verifies(&message(&key, &self.label), &signature) {
            return Err(EndorsementError::BadSignature);
        }
        Ok(key)
    }
}

impl TrustAnchors {
    /// Accepts the key an endorsement names if one of the root keys signed it.
    pub fn accept_endorsement(&mut self, e: &Endorsement) -> Result<PublicKey, EndorsementError> {
        let key = e.verify(self.roots())?;
        self.add_endorsed(key);
        Ok(key)
    }

    /// Loads every `*.endorsement.json` in `dir` (a missing directory holds none). Invalid
    /// endorsements are logged and skipped so that they never block updates signed with the
    /// built-in key; the keys accepted are returned.
    pub fn load_endorsements(&mut self, dir: &Path) -> Result<Vec<KeyId>, EndorsementError> {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(EndorsementError::Io {
                    path: dir.to_path_buf(),
                    source,
                })
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(ENDORSEMENT_SUFFIX))
            })
            .collect();
        paths.sort();
        let mut accepted = Vec::new();
        for path in paths {
            let result = fs::read(&path)
                .map_err(|source| EndorsementError::Io {
                    path: path.clone(),
                    source,
                })
                .and_then(|bytes| Endorsement::from_json(&bytes))
                .and_then(|e| self.accept_endorsement(&e));
            match result {
                Ok(key) => accepted.push(key.id()),
                Err(e) => log::warn!("ignoring key endorsement {}: {e}", path.display()),
            }
        }
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate_pkcs8;

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&generate_pkcs8().unwrap()).unwrap()
    }

    #[test]
    fn root_endorsed_key_is_trusted() {
        let root = key();
        let site = key();
        let e = Endorsement::create(&root, &site.public_key(), "site packs");
        let parsed = Endorsement::from_json(e.to_json().as_bytes()).unwrap();
        let mut anchors = TrustAnchors::from_roots(vec![root.public_key()]);
        assert_eq!(
            anchors.accept_endorsement(&parsed).unwrap(),
            site.public_key()
        );
        assert!(anchors.find(site.public_key().id()).is_some());
    }

    #[test]
    fn endorsement_by_non_root_or_tampered_is_refused() {
        let root = key();
        let other = key();
        let site = key();
        let mut anchors = TrustAnchors::from_roots(vec![root.public_key()]);

        let by_other = Endorsement::create(&other, &site.public_key(), "x");
        assert!(matches!(
            anchors.accept_endorsement(&by_other),
            Err(EndorsementError::UnknownEndorser(_))
        ));

        let mut relabelled = Endorsement::create(&root, &site.public_key(), "x");
        relabelled.label = "y".into();
        assert!(matches!(
            anchors.accept_endorsement(&relabelled),
            Err(EndorsementError::BadSignature)
        ));

        let mut swapped = Endorsement::create(&root, &site.public_key(), "x");
        swapped.key = other.public_key().to_hex();
        assert!(matches!(
            anchors.accept_endorsement(&swapped),
            Err(EndorsementError::BadSignature)
        ));

        // An endorsed key cannot endorse a further key.
        anchors
            .accept_endorsement(&Endorsement::create(&root, &site.public_key(), "x"))
            .unwrap();
        let chained = Endorsement::create(&site, &other.public_key(), "x");
        assert!(matches!(
            anchors.accept_endorsement(&chained),
            Err(EndorsementError::UnknownEndorser(_))
        ));
        assert!(anchors.find(other.public_key().id()).is_none());
    }

    #[test]
    fn loads_directory_skipping_invalid() {
        let dir = tempfile::tempdir().unwrap();
        let root = key();
        let good = key();
        let bad = key();
        fs::write(
            dir.path().join("good.endorsement.json"),
            Endorsement::create(&root, &good.public_key(), "good").to_json(),
        )
        .unwrap();
        fs::write(
            dir.path().join("bad.endorsement.json"),
            Endorsement::create(&bad, &bad.public_key(), "self").to_json(),
        )
        .unwrap();
        fs::write(dir.path().join("junk.endorsement.json"), "{").unwrap();
        let mut anchors = TrustAnchors::from_roots(vec![root.public_key()]);
        let accepted = anchors.load_endorsements(dir.path()).unwrap();
        assert_eq!(accepted, vec![good.public_key().id()]);
        assert!(anchors
            .load_endorsements(&dir.path().join("absent"))
            .unwrap()
            .is_empty());
    }
}
