//! Console accounts in the store (tree `users`), with passwords hashed by
//! PBKDF2-HMAC-SHA256 (ring), a 16-byte random salt per user and 600 000 iterations — the
//! OWASP Password Storage Cheat Sheet's figure for PBKDF2-HMAC-SHA256. The iteration count
//! is kept with each hash so it can be raised later without invalidating old ones.

use super::roles::Role;
use crate::store::records::Records;
use crate::store::{Store, StoreError};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::num::NonZeroU32;

/// Tree holding the accounts, keyed by user name.
pub const TREE: &str = "users";
/// PBKDF2 iterations for new hashes (OWASP guidance for PBKDF2-HMAC-SHA256).
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Salt length in bytes.
pub const SALT_LEN: usize = 16;
/// Derived key length in bytes.
pub const HASH_LEN: usize = 32;

/// Errors of account handling.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A user name is empty, too long or has characters outside `[A-Za-z0-9._@-]`.
    #[error("invalid user name {0:?}: 1 to 64 of A-Z a-z 0-9 . _ @ -")]
    BadName(String),
    /// A password is too short or too long.
    #[error("the password must have 12 to 1024 characters")]
    BadPassword,
    /// A stored hash cannot be read.
    #[error("stored password hash of {0} is unreadable")]
    BadHash(String),
    /// The system random source failed.
    #[error("random source failed")]
    Random,
}

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

/// One console account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Login name (the key).
    pub name: String,
    /// Role.
    pub role: Role,
    /// Password hash.
    pub password: PasswordHash,
    /// Creation time, milliseconds since the epoch.
    pub created_ms: i64,
    /// Disabled accounts cannot log in.
    #[serde(default)]
    pub disabled: bool,
}

/// What the API shows of a user (never the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Creation time, milliseconds since the epoch.
    pub created_ms: i64,
    /// Whether the account is disabled.
    pub disabled: bool,
}

impl From<&User> for UserInfo {
    fn from(u: &User) -> UserInfo {
        UserInfo {
            name: u.name.clone(),
            role: u.role,
            created_ms: u.created_ms,
            disabled: u.disabled,
        }
    }
}

/// Checks a user name: 1–64 characters of `[A-Za-z0-9._@-]`.
pub fn check_name(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(UserError::BadName(name.to_string()))
    }
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

/// Hashes a password with a fresh random salt. Refuses passwords shorter than 12 or
/// longer than 1024 characters.
pub fn hash_password(password: &str) -> Result<PasswordHash, UserError> {
    let len = password.chars().count();
    if !(12..=1024).contains(&len) {
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

/// The accounts of a store.
#[derive(Debug, Clone)]
pub struct Users {
    records: Records<User>,
}

impl Users {
    /// Opens the accounts tree.
    pub fn open(store: &Store) -> Result<Users, StoreError> {
        Ok(Users {
            records: store.records(TREE)?,
        })
    }

    /// One user by name.
    pub fn get(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.records.get(name)
    }

    /// Every user, by name.
    pub fn list(&self) -> Result<Vec<User>, StoreError> {
        self.records.iter().map(|kv| kv.map(|(_, u)| u)).collect()
    }

    /// Creates or replaces a user; returns whether it existed. Not durable until the
    /// store's next flush.
    pub fn put(&self, user: &User) -> Result<bool, UserError> {
        check_name(&user.name)?;
        if hex::decode(&user.password.salt).is_err() || hex::decode(&user.password.hash).is_err() {
            return Err(UserError::BadHash(user.name.clone()));
        }
        Ok(self.records.insert(&user.name, user)?)
    }

    /// Removes a user; returns whether it existed.
    pub fn remove(&self, name: &str) -> Result<bool, StoreError> {
        self.records.remove(name)
    }

    /// Whether any account exists.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn names_are_checked() {
        assert!(check_name("ana.silva@h1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("a/b").is_err());
    }
}
