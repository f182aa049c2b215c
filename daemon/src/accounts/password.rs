//! Password hashes: PBKDF2-HMAC-SHA256 (ring), a 16-byte random salt per user and
//! 600 000 iterations — the OWASP Password Storage Cheat Sheet's figure for
//! PBKDF2-HMAC-SHA256. The iteration count is kept with each hash so it can be raised
//! later without invalidating old ones.

use super::UserError;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;

/// PBKDF2 iterations for new hashes (OWASP guidance for PBKDF2-HMAC-SHA256).
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Salt length in bytes.
pub const SALT_LEN: usize = 16;
/// Derived key length in bytes.
pub const HASH_LEN: usize = 32;

/// A password hash with its parameters, as stored and as sent over the control socket
/// (the plain password never leaves the process that read it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordHash {
    /// Algorithm name: always `pbkdf2-sha256`.
    pub algorithm: String,
    /// Iteration count.
    pub iterations: u32,
    /// Salt (hex).
    pub salt: String,
    /// Derived key (hex).
    pub hash: String,
}

fn derive(iterations: u32, salt: &[u8], password: &str) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    let n = NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN);
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        n,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

/// Hashes a password with a fresh random salt. Refuses passwords shorter than 12
/// characters or longer than 1024 bytes (UTF-8: the bound a login is read with, so every
/// password that can be set can also be used).
pub fn hash_password(password: &str) -> Result<PasswordHash, UserError> {
    if password.chars().count() < 12 || password.len() > 1024 {
        return Err(UserError::BadPassword);
    }
    let mut salt = [0u8; SALT_LEN];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| UserError::Random)?;
    Ok(PasswordHash {
        algorithm: "pbkdf2-sha256".into(),
        iterations: PBKDF2_ITERATIONS,
        salt: hex::encode(salt),
        hash: hex::encode(derive(PBKDF2_ITERATIONS, &salt, password)),
    })
}

impl PasswordHash {
    /// Whether the hash has the parameters this product makes ([`hash_password`]):
    /// `pbkdf2-sha256`, [`PBKDF2_ITERATIONS`], a [`SALT_LEN`]-byte salt and a
    /// [`HASH_LEN`]-byte key, in lower-case hex. A hash sent over the control socket is held
    /// to it: one with a single iteration would be a weak credential, one with billions a
    /// login that ties up a thread for hours.
    pub fn is_ours(&self) -> bool {
        let hex_of = |s: &str, len: usize| {
            s.len() == 2 * len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        self.algorithm == "pbkdf2-sha256"
            && self.iterations == PBKDF2_ITERATIONS
            && hex_of(&self.salt, SALT_LEN)
            && hex_of(&self.hash, HASH_LEN)
    }
}

/// Checks a password against a stored hash in constant time.
pub fn verify_password(stored: &PasswordHash, password: &str) -> bool {
    let (Ok(salt), Ok(hash)) = (hex::decode(&stored.salt), hex::decode(&stored.hash)) else {
        return false;
    };
    if stored.algorithm != "pbkdf2-sha256" || stored.iterations == 0 {
        return false;
    }
    let Some(n) = NonZeroU32::new(stored.iterations) else {
        return false;
    };
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        n,
        &salt,
        password.as_bytes(),
        &hash,
    )
    .is_ok()
}

/// Spends the same time as checking a real password, for unknown user names (so the
/// answer time does not tell which names exist).
pub fn burn_verify(password: &str) {
    let _ = derive(PBKDF2_ITERATIONS, &[0u8; SALT_LEN], password);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upper bound is in bytes, as a login reads it: a password of 600 two-byte
    /// characters (1200 bytes) could never be used to log in, so it cannot be set.
    #[test]
    fn the_password_bound_is_the_logins() {
        assert!(hash_password(&"é".repeat(600)).is_err());
        assert!(hash_password(&"é".repeat(512)).is_ok());
        assert!(hash_password(&"é".repeat(11)).is_err());
        assert!(hash_password(&"é".repeat(12)).is_ok());
    }

    #[test]
    fn hashes_are_salted_and_verify_only_the_right_password() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert_eq!(a.iterations, 600_000);
        assert_ne!(a.salt, b.salt, "salt is random per hash");
        assert_ne!(a.hash, b.hash);
        assert!(verify_password(&a, "correct horse battery"));
        assert!(!verify_password(&a, "correct horse batterY"));
        assert!(matches!(
            hash_password("short"),
            Err(UserError::BadPassword)
        ));
    }

    /// Only hashes made as [`hash_password`] makes them are taken from outside.
    #[test]
    fn only_hashes_of_our_parameters_are_ours() {
        let made = hash_password("correct horse battery").unwrap();
        assert!(made.is_ours());
        for bad in [
            PasswordHash {
                iterations: 1,
                ..made.clone()
            },
            PasswordHash {
                iterations: u32::MAX,
                ..made.clone()
            },
            PasswordHash {
                salt: "abc".into(),
                ..made.clone()
            },
            PasswordHash {
                hash: made.hash.to_uppercase(),
                ..made.clone()
            },
            PasswordHash {
                algorithm: "md5".into(),
                ..made.clone()
            },
        ] {
            assert!(!bad.is_ours(), "{bad:?}");
        }
    }
}
