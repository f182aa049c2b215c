//! Ed25519 keys: the built-in trust anchor, key files, key generation and the set of keys
//! a device trusts.
//!
//! Key files: a private key is the PKCS#8 v2 DER document that `ring` produces (file
//! `NAME.pk8`, mode 0600); a public key is its 32 raw bytes as 64 lower-case hex characters
//! and a newline (file `NAME.pub`). A key is named in bundles by its [`KeyId`], the first
//! 8 bytes of the SHA-256 of the public key.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::scope::{Authority, Scope};

/// The release public key compiled into every binary: the root of trust for updates.
///
/// Its private half lives only in the build pipeline's secret store (see
/// `firmware/README.md`). The file is checked at compile time: a malformed key fails the
/// build.
pub const BUILTIN_PUBLIC_KEY: PublicKey =
    PublicKey(decode_builtin(include_str!("../keys/duli-release-1.pub")));

/// The keys this release revokes (`firmware/keys/revoked.txt`, compiled in): trusted
/// neither as roots nor through any endorsement ([`TrustAnchors`]).
pub const BUILTIN_REVOKED: &str = include_str!("../keys/revoked.txt");

/// Parses a revocation list: one public key in hex per line, optionally followed by
/// white space and a note; blank lines and lines starting with `#` are skipped.
pub fn parse_revoked(text: &str) -> Result<Vec<PublicKey>, KeyError> {
    revoked_lines(text).map(|(_, key)| key).collect()
}

/// Each key line of a revocation list with its line number, parsed on its own: a bad line
/// does not hide the keys on the others.
fn revoked_lines(text: &str) -> impl Iterator<Item = (usize, Result<PublicKey, KeyError>)> + '_ {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(n, line)| {
            let hex = line.split_whitespace().next().unwrap_or_default();
            (n, PublicKey::from_hex(hex))
        })
}

/// The keys of a revocation list, failing closed: every line that holds a key revokes it,
/// whatever the other lines hold; a line that does not is logged.
fn revoked_keys(text: &str) -> Vec<PublicKey> {
    revoked_lines(text)
        .filter_map(|(n, key)| {
            key.map_err(|e| log::error!("firmware/keys/revoked.txt, line {n}: {e}"))
                .ok()
        })
        .collect()
}

/// The 8-byte identifier of a public key: the first 8 bytes of SHA-256(public key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// An Ed25519 public key (32 raw bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

/// A failure reading, writing or using a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The private key is not an Ed25519 PKCS#8 document.
    #[error("private key is not an Ed25519 PKCS#8 v2 document")]
    BadPrivateKey,
    /// The public key text is not 64 hex characters.
    #[error("public key is not 64 hex characters")]
    BadPublicKey,
    /// The system random generator failed.
    #[error("random number generator failed")]
    Random,
    /// Reading or writing a key file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying failure.
        source: std::io::Error,
    },
}

impl PublicKey {
    /// Parses 64 hex characters (surrounding whitespace allowed).
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(text.trim()).map_err(|_| KeyError::BadPublicKey)?;
        bytes
            .try_into()
            .map(PublicKey)
            .map_err(|_| KeyError::BadPublicKey)
    }

    /// Reads a `.pub` file.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_hex(&text)
    }

    /// Lower-case hex of the key, the `.pub` file's content without the newline.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The identifier bundles and endorsements use to name this key.
    pub fn id(&self) -> KeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest.as_ref()[..8]);
        KeyId(id)
    }

    /// Whether `signature` is this key's Ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

/// An Ed25519 private key loaded from PKCS#8, used by the build pipeline to sign.
pub struct SigningKey(Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public_key().id())
    }
}

impl SigningKey {
    /// Loads a PKCS#8 v2 DER document as produced by [`generate_pkcs8`].
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        Ed25519KeyPair::from_pkcs8(pkcs8)
            .map(SigningKey)
            .map_err(|_| KeyError::BadPrivateKey)
    }

    /// Reads a `.pk8` file.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let bytes = fs::read(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_pkcs8(&bytes)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.0.public_key().as_ref());
        PublicKey(raw)
    }

    /// Signs `message`, returning the 64-byte signature.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.0.sign(message).as_ref());
        out
    }
}

/// Generates a new Ed25519 key pair as a PKCS#8 v2 DER document.
pub fn generate_pkcs8() -> Result<Vec<u8>, KeyError> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|_| KeyError::Random)
}

/// The files written by [`write_keypair`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// `DIR/NAME.pk8`, the private key, mode 0600.
    pub private: PathBuf,
    /// `DIR/NAME.pub`, the public key in hex.
    pub public: PathBuf,
    /// The new key's public half.
    pub key: PublicKey,
}

/// Generates a key pair and writes `DIR/NAME.pk8` (0600, never overwritten) and
/// `DIR/NAME.pub`: the `duli firmware keygen` operation.
pub fn write_keypair(dir: &Path, name: &str) -> Result<KeyFiles, KeyError> {
    let pkcs8 = generate_pkcs8()?;
    let key = SigningKey::from_pkcs8(&pkcs8)?.public_key();
    let private = dir.join(format!("{name}.pk8"));
    let public = dir.join(format!("{name}.pub"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KeyError::Io { path, source }
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .map_err(io(&private))?;
    file.write_all(&pkcs8).map_err(io(&private))?;
    file.sync_all().map_err(io(&private))?;
    fs::write(&public, format!("{}\n", key.to_hex())).map_err(io(&public))?;
    Ok(KeyFiles {
        private,
        public,
        key,
    })
}

/// The keys a device accepts bundle signatures from: root keys (normally only
/// [`BUILTIN_PUBLIC_KEY`]) and keys those roots endorsed (see [`crate::endorsement`]), each
/// for the scopes its endorsement names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchors {
    roots: Vec<PublicKey>,
    endorsed: Vec<(PublicKey, Vec<Scope>)>,
    /// Keys trusted in no role ([`BUILTIN_REVOKED`], and any added by
    /// [`TrustAnchors::with_revoked`]).
    revoked: Vec<PublicKey>,
}

impl TrustAnchors {
    /// Trusts only the built-in release key: what a device starts with.
    pub fn builtin() -> Self {
        Self::from_roots(vec![BUILTIN_PUBLIC_KEY])
    }

    /// Trusts the given root keys (tests, and the pipeline's own checks), less the keys
    /// this release revokes ([`BUILTIN_REVOKED`]).
    pub fn from_roots(roots: Vec<PublicKey>) -> Self {
        // The built-in list is checked by a test of this module; were a line of it
        // unreadable, the keys on every other line would still be revoked.
        let revoked = revoked_keys(BUILTIN_REVOKED);
        TrustAnchors {
            roots,
            endorsed: Vec::new(),
            revoked: Vec::new(),
        }
        .with_revoked(revoked)
    }

    /// Also revokes `keys`: dropped as roots, and never accepted through an endorsement
    /// added after this.
    pub fn with_revoked(mut self, keys: Vec<PublicKey>) -> Self {
        for key in keys {
            if !self.revoked.contains(&key) {
                self.revoked.push(key);
            }
        }
        let revoked = &self.revoked;
        self.roots.retain(|k| !revoked.contains(k));
        self.endorsed.retain(|(k, _)| !revoked.contains(k));
        self
    }

    /// Whether the key `id` is revoked: a bundle it signed is refused as such, not as
    /// signed by an unknown key.
    pub fn is_revoked(&self, id: KeyId) -> bool {
        self.revoked.iter().any(|k| k.id() == id)
    }

    /// The root keys, which alone may endorse other keys.
    pub fn roots(&self) -> &[PublicKey] {
        &self.roots
    }

    /// Keys accepted because a root endorsed them.
    pub fn endorsed(&self) -> Vec<PublicKey> {
        self.endorsed.iter().map(|(k, _)| *k).collect()
    }

    /// Adds a key whose endorsement has already been checked against [`Self::roots`], for
    /// `scopes` (added to those of an earlier endorsement of the same key).
    pub(crate) fn add_endorsed(&mut self, key: PublicKey, scopes: &[Scope]) {
        if self.roots.contains(&key) || self.revoked.contains(&key) {
            return;
        }
        let at = match self.endorsed.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.endorsed.push((key, Vec::new()));
                self.endorsed.len() - 1
            }
        };
        let have = &mut self.endorsed[at].1;
        have.extend(scopes.iter().copied());
        have.sort();
        have.dedup();
    }

    /// Finds a trusted key (root or endorsed) by its identifier.
    pub fn find(&self, id: KeyId) -> Option<&PublicKey> {
        self.roots
            .iter()
            .chain(self.endorsed.iter().map(|(k, _)| k))
            .find(|key| key.id() == id)
    }

    /// What the trusted key `id` may sign; `None` for a key this device does not trust.
    pub fn authority(&self, id: KeyId) -> Option<Authority> {
        if self.roots.iter().any(|k| k.id() == id) {
            return Some(Authority::Root);
        }
        self.endorsed
            .iter()
            .find(|(k, _)| k.id() == id)
            .map(|(_, scopes)| Authority::Endorsed(scopes.clone()))
    }
}

const fn hex_nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("built-in public key: not lower-case hex"),
    }
}

/// Decodes the built-in key file at compile time; a malformed file is a build error.
const fn decode_builtin(text: &str) -> [u8; 32] {
    let bytes = text.as_bytes();
    if bytes.len() < 64 {
        panic!("built-in public key: shorter than 64 hex characters");
    }
    let mut i = 64;
    while i < bytes.len() {
        if !bytes[i].is_ascii_whitespace() {
            panic!("built-in public key: trailing characters after 64 hex characters");
        }
        i += 1;
    }
    let mut out = [0u8; 32];
    let mut j = 0;
    while j < 32 {
        out[j] = (hex_nibble(bytes[2 * j]) << 4) | hex_nibble(bytes[2 * j + 1]);
        j += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_builtin_revocation_list_parses_and_spares_the_builtin_key() {
        let revoked = parse_revoked(BUILTIN_REVOKED).unwrap();
        assert!(!revoked.contains(&BUILTIN_PUBLIC_KEY));
        assert!(!TrustAnchors::builtin().is_revoked(BUILTIN_PUBLIC_KEY.id()));
        let a = SigningKey::from_pkcs8(&generate_pkcs8().unwrap())
            .unwrap()
            .public_key();
        let list = format!("# comment\n\n{} leaked 2026-12\n", a.to_hex());
        assert_eq!(parse_revoked(&list).unwrap(), vec![a]);
        assert!(parse_revoked("not-a-key\n").is_err());
        // A note after a tab, and a bad line: the keys on the other lines stay revoked.
        let b = SigningKey::from_pkcs8(&generate_pkcs8().unwrap())
            .unwrap()
            .public_key();
        let list = format!("{}\tleaked\nnot-a-key\n{}\n", a.to_hex(), b.to_hex());
        assert_eq!(revoked_keys(&list), vec![a, b]);
    }

    #[test]
    fn a_revoked_key_is_trusted_in_no_role() {
        let key = || {
            SigningKey::from_pkcs8(&generate_pkcs8().unwrap())
                .unwrap()
                .public_key()
        };
        let (root, other_root, endorsed) = (key(), key(), key());
        let mut anchors = TrustAnchors::from_roots(vec![root, other_root]);
        anchors.add_endorsed(endorsed, &[Scope::ModelPack]);
        assert!(anchors.find(endorsed.id()).is_some());
        // Revoking drops a root and an endorsed key already accepted...
        let mut anchors = anchors.with_revoked(vec![other_root, endorsed]);
        assert_eq!(anchors.roots(), &[root]);
        for k in [other_root, endorsed] {
            assert!(anchors.find(k.id()).is_none());
            assert!(anchors.authority(k.id()).is_none());
            assert!(anchors.is_revoked(k.id()));
        }
        // ...and one endorsed afterwards is not taken.
        anchors.add_endorsed(endorsed, &[Scope::Rootfs]);
        assert!(anchors.endorsed().is_empty());
        assert!(anchors.authority(root.id()).is_some());
    }

    #[test]
    fn builtin_key_matches_its_file() {
        let text = include_str!("../keys/duli-release-1.pub");
        assert_eq!(PublicKey::from_hex(text).unwrap(), BUILTIN_PUBLIC_KEY);
        assert_eq!(TrustAnchors::builtin().roots(), &[BUILTIN_PUBLIC_KEY]);
    }

    #[test]
    fn keypair_files_sign_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_keypair(dir.path(), "test").unwrap();
        let mode = fs::metadata(&files.private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let signing = SigningKey::read(&files.private).unwrap();
        let public = PublicKey::read(&files.public).unwrap();
        assert_eq!(signing.public_key(), public);
        assert_eq!(files.key, public);
        let sig = signing.sign(b"hello");
        assert!(public.verifies(b"hello", &sig));
        assert!(!public.verifies(b"hellO", &sig));
        // Never overwrite an existing private key.
        assert!(matches!(
            write_keypair(dir.path(), "test"),
            Err(KeyError::Io { .. })
        ));
    }

    #[test]
    fn rejects_bad_key_material() {
        assert!(matches!(
            SigningKey::from_pkcs8(b"not a key"),
            Err(KeyError::BadPrivateKey)
        ));
        assert!(matches!(
            PublicKey::from_hex("abcd"),
            Err(KeyError::BadPublicKey)
        ));
        assert!(matches!(
            PublicKey::from_hex(&"zz".repeat(32)),
            Err(KeyError::BadPublicKey)
        ));
    }

    #[test]
    fn trust_anchors_find_by_id() {
        let a = SigningKey::from_pkcs8(&generate_pkcs8().unwrap())
            .unwrap()
            .public_key();
        let b = SigningKey::from_pkcs8(&generate_pkcs8().unwrap())
            .unwrap()
            .public_key();
        let mut anchors = TrustAnchors::from_roots(vec![a]);
        assert_eq!(anchors.find(a.id()), Some(&a));
        assert_eq!(anchors.find(b.id()), None);
        anchors.add_endorsed(b, &[Scope::ModelPack]);
        anchors.add_endorsed(b, &[Scope::Rootfs, Scope::ModelPack]);
        assert_eq!(anchors.endorsed(), vec![b]);
        assert_eq!(anchors.find(b.id()), Some(&b));
        assert_eq!(
            anchors.authority(b.id()),
            Some(Authority::Endorsed(vec![Scope::ModelPack, Scope::Rootfs]))
        );
        assert_eq!(anchors.authority(a.id()), Some(Authority::Root));
    }
}
