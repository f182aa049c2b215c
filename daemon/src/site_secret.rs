//! The site secret: 32 random bytes that key the HMAC-SHA256 pseudonyms of patient and
//! study identifiers sent to the cloud. Generated on first start (written atomically,
//! mode 0600) and read on every later one; without it the cloud could not link a
//! patient's studies, and with it anyone could, so it never leaves the box.

use ring::hmac;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Length of a generated secret in bytes.
pub const SECRET_LEN: usize = 32;

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

impl SiteSecret {
    /// A secret from raw bytes (tests, provisioning).
    pub fn from_bytes(bytes: &[u8]) -> SiteSecret {
        SiteSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// Loads the secret at `path`, generating it when the file does not exist. A file
    /// with looser permissions than 0600 is tightened (and logged).
    pub fn load_or_generate(path: &Path) -> Result<SiteSecret, SecretError> {
        let io = |source| SecretError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => {
                if bytes.len() < 16 {
                    return Err(SecretError::TooShort {
                        path: path.to_path_buf(),
                        len: bytes.len(),
                    });
                }
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
                Ok(SiteSecret::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; SECRET_LEN];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| SecretError::Random)?;
                write_atomically(path, &bytes).map_err(io)?;
                log::info!("generated a new site secret at {}", path.display());
                Ok(SiteSecret::from_bytes(&bytes))
            }
            Err(e) => Err(io(e)),
        }
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

/// Writes `bytes` to `path` through a 0600 temporary file, fsync and rename, so a crash
/// leaves either no secret or a whole one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "site_secret".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(())
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
