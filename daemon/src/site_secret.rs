//! The site secret: 32 random bytes that key the HMAC-SHA256 pseudonyms of patient and
//! study identifiers sent to the cloud. Generated on first start (written atomically,
//! mode 0600) and read on every later one; without it the cloud could not link a
//! patient's studies, and with it anyone could, so it never leaves the box.

use ring::hmac;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Length of a generated secret in bytes.
pub const SECRET_LEN: usize = 32;

/// Fewest bytes of an existing secret the daemon uses.
const MIN_LEN: usize = 16;

/// Errors loading or creating the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Reading, writing or renaming the file failed.
    #[error("site secret {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists but is too short to be a secret.
    #[error("site secret {path} holds {len} bytes; at least 16 are required")]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// Random generation failed.
    #[error("cannot generate a site secret: no system randomness")]
    Random,
}

/// The loaded secret, ready to pseudonymise.
pub struct SiteSecret {
    key: hmac::Key,
}

impl std::fmt::Debug for SiteSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiteSecret(..)")
    }
}

/// Domain of the pseudonyms that replace DICOM UIDs in the support bundle
/// ([`SiteSecret::support_uid`]).
pub const SUPPORT_DOMAIN: &str = "support";

impl SiteSecret {
    /// A secret from raw bytes (tests, provisioning).
    pub fn from_bytes(bytes: &[u8]) -> SiteSecret {
        SiteSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// A fresh random key, for pseudonyms that need only be consistent within one use
    /// (when the site secret cannot be read).
    pub fn random() -> Result<SiteSecret, SecretError> {
        Ok(SiteSecret::from_bytes(&random_bytes()?))
    }

    /// Loads the secret at `path` as it is, without creating it or changing its mode;
    /// `None` when the file does not exist.
    pub fn load_existing(path: &Path) -> Result<Option<SiteSecret>, SecretError> {
        match std::fs::read(path) {
            Ok(bytes) => Self::from_file_bytes(path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SecretError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The secret the file at `path` holds, read as `bytes` (by [`SiteSecret::load_existing`],
    /// or by root without following a link): refused when shorter than a secret may be.
    pub fn from_file_bytes(path: &Path, bytes: &[u8]) -> Result<SiteSecret, SecretError> {
        if bytes.len() < MIN_LEN {
            return Err(SecretError::TooShort {
                path: path.to_path_buf(),
                len: bytes.len(),
            });
        }
        Ok(SiteSecret::from_bytes(bytes))
    }

    /// The pseudonym that stands for the DICOM UID `uid` in the support bundle:
    /// `uid:` and the first 16 hex digits of its pseudonym in [`SUPPORT_DOMAIN`]. The same
    /// UID always gets the same one (a study can be followed through the logs), and it is
    /// unrelated to the pseudonyms sent to the cloud.
    pub fn support_uid(&self, uid: &str) -> String {
        let mut p = self.pseudonym(SUPPORT_DOMAIN, uid);
        p.truncate(16);
        format!("uid:{p}")
    }

    /// Loads the secret at `path`, generating it when the file does not exist. A file
    /// with looser permissions than 0600 is tightened (and logged).
    pub fn load_or_generate(path: &Path) -> Result<SiteSecret, SecretError> {
        let io = |source| SecretError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(secret) = Self::load_existing(path)? {
            let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
            if mode & 0o077 != 0 {
                log::warn!(
                    "site secret {} was readable by others (mode {:o}); setting 0600",
                    path.display(),
                    mode & 0o777
                );
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(io)?;
            }
            return Ok(secret);
        }
        let bytes = random_bytes()?;
        // A new temporary file (O_EXCL: never a planted link or a stale file with looser
        // permissions), 0600 from its creation, renamed into place.
        crate::fsutil::write_atomic(path, &bytes, crate::fsutil::PRIVATE, None).map_err(|e| {
            SecretError::Io {
                path: e.path,
                source: e.source,
            }
        })?;
        log::info!("generated a new site secret at {}", path.display());
        Ok(SiteSecret::from_bytes(&bytes))
    }

    /// The pseudonym of `value` in `domain` (e.g. `patient`, `study`): lowercase hex of
    /// HMAC-SHA256(secret, domain ‖ 0x00 ‖ value). Domains keep a patient id and a study
    /// UID that happen to be equal from sharing a pseudonym.
    pub fn pseudonym(&self, domain: &str, value: &str) -> String {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(domain.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        hex::encode(ctx.sign().as_ref())
    }
}

/// A new secret's bytes from the system's random source.
fn random_bytes() -> Result<[u8; SECRET_LEN], SecretError> {
    let mut bytes = [0u8; SECRET_LEN];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| SecretError::Random)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/site_secret");
        let a = SiteSecret::load_or_generate(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), SECRET_LEN as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let b = SiteSecret::load_or_generate(&path).unwrap();
        assert_eq!(a.pseudonym("patient", "P1"), b.pseudonym("patient", "P1"));
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1);
    }

    /// Whatever stands beforehand at a temporary name of the secret's folder (the writer's
    /// own and an older one: a stale world-readable file, a link to another file) neither
    /// loosens the secret's mode nor redirects the write.
    #[test]
    fn planted_temporary_files_are_never_written_through() {
        use std::os::unix::fs::symlink;
        let pid = std::process::id();
        let tmp_names = [
            format!(".site_secret.{pid}.tmp"),
            format!(".site_secret.tmp-{pid}"),
        ];
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site_secret");
        for t in &tmp_names {
            let stale = dir.path().join(t);
            std::fs::write(&stale, b"stale").unwrap();
            std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        SiteSecret::load_or_generate(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), SECRET_LEN);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("site_secret");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"someone else's file").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        for t in &tmp_names {
            symlink(&victim, dir.path().join(t)).unwrap();
        }
        SiteSecret::load_or_generate(&path).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"someone else's file");
        assert_eq!(mode(&victim), 0o644);
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_file());
        assert_eq!(mode(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), SECRET_LEN);
    }

    #[test]
    fn pseudonym_is_hmac_sha256_with_domain_separation() {
        let s = SiteSecret::from_bytes(b"0123456789abcdef0123456789abcdef");
        let p = s.pseudonym("patient", "P1");
        assert_eq!(p.len(), 64);
        let expected = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef"),
            b"patient\0P1",
        );
        assert_eq!(p, hex::encode(expected.as_ref()));
        assert_ne!(p, s.pseudonym("study", "P1"));
        assert_ne!(
            p,
            SiteSecret::from_bytes(b"another secret, 32 bytes long...").pseudonym("patient", "P1")
        );
    }

    #[test]
    fn loose_permissions_are_tightened_and_short_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, [7u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        SiteSecret::load_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            SiteSecret::load_or_generate(&path),
            Err(SecretError::TooShort { len: 5, .. })
        ));
    }
}
