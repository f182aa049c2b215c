//! Console accounts in the store (tree `users`).

use super::{PasswordHash, Role, UserError};
use crate::store::records::Records;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};

/// Tree holding the accounts, keyed by user name.
pub const TREE: &str = "users";

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
    fn names_are_checked() {
        assert!(check_name("ana.silva@h1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("a/b").is_err());
    }
}
