//! Console accounts, shared by the console (logins, the Users page, first-time setup) and
//! the command line (`duli user add`, `duli user list`, through the control socket).
//!
//! - [`role`]: the roles.
//! - [`password`]: PBKDF2 password hashes.
//! - [`users`]: the accounts in the store.

pub mod password;
pub mod role;
pub mod users;

pub use password::{burn_verify, hash_password, verify_password, PasswordHash};
pub use role::{Role, UnknownRole};
pub use users::{check_name, Change, Changed, CreateError, User, UserInfo, Users};

use crate::store::StoreError;

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
    #[error("the password must have at least 12 characters and at most 1024 bytes")]
    BadPassword,
    /// A stored hash cannot be read.
    #[error("stored password hash of {0} is unreadable")]
    BadHash(String),
    /// The system random source failed.
    #[error("random source failed")]
    Random,
    /// No account has this name.
    #[error("no user {0:?}")]
    NotFound(String),
    /// A new account needs this (its role or its password).
    #[error("{0} required for a new user")]
    Required(&'static str),
    /// The change would leave no enabled admin.
    #[error("the last admin cannot be {0}")]
    LastAdmin(&'static str),
}
