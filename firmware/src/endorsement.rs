//! Key endorsements: how a device comes to trust a key other than the built-in one.
//!
//! Provisioning may add a signing key (for example a hospital group's own model-pack key)
//! only together with an endorsement made by a root key, normally the built-in release key.
//! An endorsement is a small JSON document naming what the key may sign:
//!
//! ```json
//! {"format":2,"key":"<64 hex>","label":"site model packs","scopes":["model-pack"],"endorser":"<16 hex key id>","signature":"<128 hex>"}
//! ```
//!
//! Scopes ([`Scope`]): `model-pack`, `rootfs`, and `fleet` (reserved; signs no bundle yet).
//! The format 2 signature is Ed25519 by the endorser over
//! `"DULI-FIRMWARE-KEY-ENDORSEMENT-V2\n" || key (32 bytes) || scopes joined by "," || "\n" ||
//! label (UTF-8)`. Format 1 (no `scopes`, signed over
//! `"DULI-FIRMWARE-KEY-ENDORSEMENT-V1\n" || key || label`) is still read and means
//! `["model-pack"]`: the purpose it was documented for.
//! Format 3 adds an expiry, `"not_after"` (seconds since the Unix epoch), signed over
//! `"DULI-FIRMWARE-KEY-ENDORSEMENT-V3\n" || key || scopes joined by "," || "\n" ||
//! not_after (decimal) || "\n" || label`: from that second on the endorsement is refused
//! (at provisioning, and by every verification on the box, so the key's bundles no longer
//! install). Formats 1 and 2 do not expire.
//! Endorsed keys sign only bundles of their scopes; they cannot endorse further keys.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::{KeyId, PublicKey, SigningKey, TrustAnchors};
use crate::scope::Scope;

/// Domain-separation prefix of the endorsed message, format 1.
const ENDORSEMENT_DOMAIN_V1: &[u8] = b"DULI-FIRMWARE-KEY-ENDORSEMENT-V1\n";
/// Domain-separation prefix of the endorsed message, format 2 (with scopes).
const ENDORSEMENT_DOMAIN_V2: &[u8] = b"DULI-FIRMWARE-KEY-ENDORSEMENT-V2\n";
/// Domain-separation prefix of the endorsed message, format 3 (with scopes and an expiry).
const ENDORSEMENT_DOMAIN_V3: &[u8] = b"DULI-FIRMWARE-KEY-ENDORSEMENT-V3\n";
/// The format of endorsements without an expiry.
pub const FORMAT: u32 = 2;
/// The format of endorsements with an expiry (`not_after`).
pub const FORMAT_EXPIRING: u32 = 3;

/// File name suffix of endorsements in an endorsement directory.
pub const ENDORSEMENT_SUFFIX: &str = ".endorsement.json";

/// A root key's signed statement that another key may sign bundles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endorsement {
    /// Schema version: 2, or 1 (read only; scopes implied).
    pub format: u32,
    /// The endorsed public key, hex.
    pub key: String,
    /// Free text naming the key's purpose; covered by the signature.
    pub label: String,
    /// What the key may sign; covered by the signature. Formats 2 and 3 (never empty there).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<Scope>,
    /// The last second (since the Unix epoch) the endorsement is good for; covered by the
    /// signature. Format 3 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
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
    /// The endorsement's time is over.
    #[error("endorsement expired at {not_after} (seconds since the epoch; now {now})")]
    Expired {
        /// Its last good second.
        not_after: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// The endorsed key is one this release revokes.
    #[error("endorsement is for key {0}, which this firmware revokes")]
    Revoked(KeyId),
    /// Reading the endorsement file failed.
    #[error("endorsement file {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
}

/// The signed message of a format 1 endorsement.
fn message_v1(key: &PublicKey, label: &str) -> Vec<u8> {
    let mut msg = ENDORSEMENT_DOMAIN_V1.to_vec();
    msg.extend_from_slice(&key.0);
    msg.extend_from_slice(label.as_bytes());
    msg
}

/// The signed message of a format 2 endorsement (`not_after` `None`) or a format 3 one:
/// the domain, the key, the scopes (names hold neither `,` nor a newline), for format 3
/// the expiry between newlines, and the label last, so no two endorsements share a
/// message.
fn scoped_message(
    key: &PublicKey,
    scopes: &[Scope],
    not_after: Option<u64>,
    label: &str,
) -> Vec<u8> {
    let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
    let mut msg = match not_after {
        None => ENDORSEMENT_DOMAIN_V2,
        Some(_) => ENDORSEMENT_DOMAIN_V3,
    }
    .to_vec();
    msg.extend_from_slice(&key.0);
    msg.extend_from_slice(names.join(",").as_bytes());
    msg.push(b'\n');
    if let Some(not_after) = not_after {
        msg.extend_from_slice(not_after.to_string().as_bytes());
        msg.push(b'\n');
    }
    msg.extend_from_slice(label.as_bytes());
    msg
}

/// Seconds since the Unix epoch now (0 for a clock before it).
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Endorsement {
    /// Endorses `key` for model packs only, the usual purpose of an endorsed key.
    pub fn create(root: &SigningKey, key: &PublicKey, label: &str) -> Self {
        Self::create_scoped(root, key, label, &[Scope::ModelPack])
    }

    /// Endorses `key` for `scopes` (format 2).
    pub fn create_scoped(
        root: &SigningKey,
        key: &PublicKey,
        label: &str,
        scopes: &[Scope],
    ) -> Self {
        Endorsement {
            format: FORMAT,
            key: key.to_hex(),
            label: label.to_string(),
            scopes: scopes.to_vec(),
            not_after: None,
            endorser: root.public_key().id().to_string(),
            signature: hex::encode(root.sign(&scoped_message(key, scopes, None, label))),
        }
    }

    /// Endorses `key` for `scopes` up to and including the second `not_after` (seconds
    /// since the Unix epoch; format 3).
    pub fn create_expiring(
        root: &SigningKey,
        key: &PublicKey,
        label: &str,
        scopes: &[Scope],
        not_after: u64,
    ) -> Self {
        Endorsement {
            format: FORMAT_EXPIRING,
            key: key.to_hex(),
            label: label.to_string(),
            scopes: scopes.to_vec(),
            not_after: Some(not_after),
            endorser: root.public_key().id().to_string(),
            signature: hex::encode(root.sign(&scoped_message(key, scopes, Some(not_after), label))),
        }
    }

    /// A format 1 endorsement (no scopes: model packs only), as older tooling made them.
    pub fn create_format1(root: &SigningKey, key: &PublicKey, label: &str) -> Self {
        Endorsement {
            format: 1,
            key: key.to_hex(),
            label: label.to_string(),
            scopes: Vec::new(),
            not_after: None,
            endorser: root.public_key().id().to_string(),
            signature: hex::encode(root.sign(&message_v1(key, label))),
        }
    }

    /// Parses endorsement JSON: format 3 with a non-empty `scopes` and a `not_after`,
    /// format 2 with a non-empty `scopes` and no `not_after`, or format 1 with neither.
    pub fn from_json(bytes: &[u8]) -> Result<Self, EndorsementError> {
        let e: Endorsement = serde_json::from_slice(bytes)
            .map_err(|err| EndorsementError::Malformed(err.to_string()))?;
        let malformed = |why: &str| Err(EndorsementError::Malformed(why.into()));
        match (e.format, e.scopes.is_empty(), e.not_after.is_some()) {
            (1, true, false) | (2, false, false) | (3, false, true) => Ok(e),
            (1, false, _) => malformed("format 1 carries no scopes (scopes need format 2)"),
            (1 | 2, _, true) => malformed("an expiry (not_after) needs format 3"),
            (2 | 3, true, _) => malformed("formats 2 and 3 need a non-empty scopes list"),
            (3, false, false) => malformed("format 3 needs an expiry (not_after)"),
            (f, _, _) => Err(EndorsementError::Malformed(format!(
                "format {f} is not supported"
            ))),
        }
    }

    /// What the endorsed key may sign: the signed scopes, or model packs for format 1.
    pub fn effective_scopes(&self) -> Vec<Scope> {
        if self.format == 1 {
            vec![Scope::ModelPack]
        } else {
            self.scopes.clone()
        }
    }

    /// Serialises the endorsement.
    pub fn to_json(&self) -> String {
        // Plain strings and integers: serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks the endorsement against `roots`, and its expiry against the clock; returns
    /// the endorsed key.
    pub fn verify(&self, roots: &[PublicKey]) -> Result<PublicKey, EndorsementError> {
        self.verify_at(roots, now_secs())
    }

    /// [`Endorsement::verify`] at `now` (seconds since the Unix epoch).
    pub fn verify_at(&self, roots: &[PublicKey], now: u64) -> Result<PublicKey, EndorsementError> {
        let key = PublicKey::from_hex(&self.key)
            .map_err(|_| EndorsementError::Malformed("key is not 64 hex characters".into()))?;
        let root = roots
            .iter()
            .find(|root| root.id().to_string() == self.endorser)
            .ok_or_else(|| EndorsementError::UnknownEndorser(self.endorser.clone()))?;
        let signature = hex::decode(&self.signature).map_err(|_| EndorsementError::BadSignature)?;
        let message = match (self.format, self.not_after) {
            (1, None) => message_v1(&key, &self.label),
            (2, None) => scoped_message(&key, &self.scopes, None, &self.label),
            (3, Some(n)) => scoped_message(&key, &self.scopes, Some(n), &self.label),
            _ => {
                return Err(EndorsementError::Malformed(
                    "its format and its expiry disagree".into(),
                ))
            }
        };
        if !root.verifies(&message, &signature) {
            return Err(EndorsementError::BadSignature);
        }
        match self.not_after {
            Some(not_after) if now > not_after => Err(EndorsementError::Expired { not_after, now }),
            _ => Ok(key),
        }
    }
}

impl TrustAnchors {
    /// Accepts the key an endorsement names, for its scopes, if one of the root keys
    /// signed it.
    pub fn accept_endorsement(&mut self, e: &Endorsement) -> Result<PublicKey, EndorsementError> {
        let key = e.verify(self.roots())?;
        if self.is_revoked(key.id()) {
            return Err(EndorsementError::Revoked(key.id()));
        }
        self.add_endorsed(key, &e.effective_scopes());
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
            let result = read_bounded(&path)
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

/// Largest endorsement file read: they are a few hundred bytes.
pub const MAX_ENDORSEMENT_BYTES: u64 = 64 << 10;

/// Reads one endorsement file as provisioning's withdrawal reads it: not through a link,
/// a regular file, at most [`MAX_ENDORSEMENT_BYTES`]. An endorsement either way would be
/// trusted here yet missed by a withdrawal.
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_ENDORSEMENT_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_ENDORSEMENT_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {MAX_ENDORSEMENT_BYTES} bytes"
        )));
    }
    Ok(bytes)
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
    fn scopes_are_signed_and_format_1_means_model_packs() {
        use crate::scope::Authority;
        let root = key();
        let site = key();
        let mut anchors = TrustAnchors::from_roots(vec![root.public_key()]);
        let old = Endorsement::create_format1(&root, &site.public_key(), "packs");
        let parsed = Endorsement::from_json(old.to_json().as_bytes()).unwrap();
        assert!(!old.to_json().contains("scopes"));
        anchors.accept_endorsement(&parsed).unwrap();
        assert_eq!(
            anchors.authority(site.public_key().id()),
            Some(Authority::Endorsed(vec![Scope::ModelPack]))
        );
        // Widening the signed scopes breaks the signature.
        let mut widened = Endorsement::create(&root, &site.public_key(), "packs");
        widened.scopes.push(Scope::Rootfs);
        assert!(matches!(
            anchors.accept_endorsement(&widened),
            Err(EndorsementError::BadSignature)
        ));
        // A format 1 document claiming scopes, a format 2 one without, an unknown scope.
        let mut v1_scoped = old.clone();
        v1_scoped.scopes = vec![Scope::Rootfs];
        assert!(Endorsement::from_json(v1_scoped.to_json().as_bytes()).is_err());
        let mut v2_bare = Endorsement::create(&root, &site.public_key(), "x");
        v2_bare.scopes.clear();
        assert!(Endorsement::from_json(v2_bare.to_json().as_bytes()).is_err());
        let unknown = Endorsement::create(&root, &site.public_key(), "x")
            .to_json()
            .replace("model-pack", "everything");
        assert!(Endorsement::from_json(unknown.as_bytes()).is_err());
        let rootfs = Endorsement::create_scoped(&root, &site.public_key(), "os", &[Scope::Rootfs]);
        let parsed = Endorsement::from_json(rootfs.to_json().as_bytes()).unwrap();
        anchors.accept_endorsement(&parsed).unwrap();
        assert_eq!(
            anchors.authority(site.public_key().id()),
            Some(Authority::Endorsed(vec![Scope::ModelPack, Scope::Rootfs]))
        );
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
        // Valid endorsements that provisioning's withdrawal would not read are not
        // trusted either: one through a link, one over the size bound.
        let linked = key();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("linked.json");
        fs::write(
            &target,
            Endorsement::create(&root, &linked.public_key(), "linked").to_json(),
        )
        .unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("linked.endorsement.json")).unwrap();
        let padded = key();
        let mut big = Endorsement::create(&root, &padded.public_key(), "padded").to_json();
        big.push_str(&" ".repeat(MAX_ENDORSEMENT_BYTES as usize));
        assert!(Endorsement::from_json(big.as_bytes()).is_ok());
        fs::write(dir.path().join("padded.endorsement.json"), big).unwrap();
        let mut anchors = TrustAnchors::from_roots(vec![root.public_key()]);
        let accepted = anchors.load_endorsements(dir.path()).unwrap();
        assert_eq!(accepted, vec![good.public_key().id()]);
        assert!(anchors
            .load_endorsements(&dir.path().join("absent"))
            .unwrap()
            .is_empty());
    }

    /// A format 3 endorsement holds until its `not_after` second and is refused after it;
    /// its expiry is signed (moved later, it no longer verifies); an expiry in another
    /// format, or format 3 without one, is malformed; an expired endorsement in the folder
    /// is skipped like any invalid one.
    #[test]
    fn expiring_endorsements_hold_until_their_time_and_their_time_is_signed() {
        let root = key();
        let site = key();
        let roots = [root.public_key()];
        let e = Endorsement::create_expiring(
            &root,
            &site.public_key(),
            "site packs 2027",
            &[Scope::ModelPack],
            2_000_000_000,
        );
        let parsed = Endorsement::from_json(e.to_json().as_bytes()).unwrap();
        assert_eq!(parsed.format, FORMAT_EXPIRING);
        assert!(
            e.to_json().contains("\"not_after\": 2000000000"),
            "{}",
            e.to_json()
        );
        assert_eq!(
            parsed.verify_at(&roots, 2_000_000_000).unwrap(),
            site.public_key()
        );
        assert!(matches!(
            parsed.verify_at(&roots, 2_000_000_001),
            Err(EndorsementError::Expired {
                not_after: 2_000_000_000,
                now: 2_000_000_001
            })
        ));
        let mut later = parsed.clone();
        later.not_after = Some(4_000_000_000);
        assert!(matches!(
            later.verify_at(&roots, 2_000_000_001),
            Err(EndorsementError::BadSignature)
        ));
        // The expiry is read only in format 3, and format 3 needs it.
        for (format, not_after) in [(2, Some(1)), (1, Some(1)), (3, None)] {
            let mut odd = parsed.clone();
            odd.format = format;
            odd.not_after = not_after;
            if format == 1 {
                odd.scopes.clear();
            }
            assert!(
                matches!(
                    Endorsement::from_json(odd.to_json().as_bytes()),
                    Err(EndorsementError::Malformed(_))
                ),
                "format {format} with {not_after:?}"
            );
        }
        // In the folder: the expired one is skipped, the current one accepted.
        let dir = tempfile::tempdir().unwrap();
        let expired = Endorsement::create_expiring(
            &root,
            &site.public_key(),
            "old",
            &[Scope::ModelPack],
            1_000,
        );
        let other = key();
        let current = Endorsement::create_expiring(
            &root,
            &other.public_key(),
            "current",
            &[Scope::ModelPack],
            u64::MAX,
        );
        fs::write(dir.path().join("a.endorsement.json"), expired.to_json()).unwrap();
        fs::write(dir.path().join("b.endorsement.json"), current.to_json()).unwrap();
        let mut anchors = TrustAnchors::from_roots(vec![root.public_key()]);
        assert_eq!(
            anchors.load_endorsements(dir.path()).unwrap(),
            vec![other.public_key().id()]
        );
        assert!(anchors.find(site.public_key().id()).is_none());
    }
}
