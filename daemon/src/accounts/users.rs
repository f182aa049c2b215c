//! Console accounts in the store (tree `users`).

use super::{PasswordHash, Role, UserError};
use crate::store::records::RecordTree;
use crate::store::records::Records;
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, MutexGuard};

/// Held by every write to the accounts of this process. A change reads the account and
/// counts the enabled admins left before it writes; without one lock around all three, two
/// changes at once could each undo the other (a password change writing back the role or
/// the disabled flag it read before hashing) or each count the other admin as left and
/// both step down.
static CHANGES: Mutex<()> = Mutex::new(());

fn changes() -> MutexGuard<'static, ()> {
    // The guard protects no data: a panic while it was held leaves nothing half written.
    CHANGES.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a change to an account sets: `None` keeps the account's value (a new account needs
/// its role and its password). The password is hashed before the change is made, so the
/// slow hashing never runs while other changes wait.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// The new role.
    pub role: Option<Role>,
    /// The new password hash.
    pub password: Option<PasswordHash>,
    /// Whether the account is disabled from now on.
    pub disabled: Option<bool>,
}

/// An account before and after a [`Users::change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    /// The account as it was; `None` when the change created it.
    pub old: Option<User>,
    /// The account as written.
    pub new: User,
}

fn is_enabled_admin(u: &User) -> bool {
    u.role == Role::Admin && !u.disabled
}

/// Why [`Users::create`] made no account.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// An account of that name exists; it is left as it is.
    #[error("user {0:?} exists")]
    Exists(String),
    /// The account cannot be stored.
    #[error(transparent)]
    User(#[from] UserError),
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

/// Checks a user name: 1–64 characters of `[A-Za-z0-9._@-]`, not dots alone (`.` and
/// `..` in the account's URL, `/api/v1/users/NAME`, are path segments a browser resolves
/// away, even percent-encoded: such an account could not be changed from the console).
pub fn check_name(name: &str) -> Result<(), UserError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
        && !name.chars().all(|c| c == '.');
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
            records: store.records(RecordTree::Users)?,
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
        let _changes = changes();
        self.write(user)
    }

    /// Creates `user`, failing with [`CreateError::Exists`] when an account of that name
    /// exists: the check and the write happen under the lock of every other change, so of
    /// two creations of one name at once exactly one succeeds and nothing is overwritten.
    /// Not durable until the store's next flush.
    pub fn create(&self, user: &User) -> Result<(), CreateError> {
        let _changes = changes();
        if self.get(&user.name).map_err(UserError::from)?.is_some() {
            return Err(CreateError::Exists(user.name.clone()));
        }
        self.write(user)?;
        Ok(())
    }

    fn write(&self, user: &User) -> Result<bool, UserError> {
        check_name(&user.name)?;
        if hex::decode(&user.password.salt).is_err() || hex::decode(&user.password.hash).is_err() {
            return Err(UserError::BadHash(user.name.clone()));
        }
        Ok(self.records.insert(&user.name, user)?)
    }

    /// Enabled admins other than `name`.
    fn other_admins(&self, name: &str) -> Result<usize, StoreError> {
        Ok(self
            .list()?
            .iter()
            .filter(|u| is_enabled_admin(u) && u.name != name)
            .count())
    }

    /// Applies `change` to the account `name` as it is now, or creates it (with
    /// `created_ms`) when there is none: read, last-admin check and write happen under one
    /// lock, so a change made meanwhile is neither undone nor counted on. Refused with
    /// [`UserError::LastAdmin`] when it would demote or disable an admin while no other
    /// enabled admin is left. Not durable until the store's next flush.
    pub fn change(
        &self,
        name: &str,
        change: Change,
        created_ms: i64,
    ) -> Result<Changed, UserError> {
        check_name(name)?;
        let _changes = changes();
        let old = self.get(name)?;
        let new = match &old {
            Some(o) => User {
                name: name.to_string(),
                role: change.role.unwrap_or(o.role),
                password: change.password.unwrap_or_else(|| o.password.clone()),
                created_ms: o.created_ms,
                disabled: change.disabled.unwrap_or(o.disabled),
            },
            None => User {
                name: name.to_string(),
                role: change.role.ok_or(UserError::Required("role"))?,
                password: change.password.ok_or(UserError::Required("password"))?,
                created_ms,
                disabled: change.disabled.unwrap_or(false),
            },
        };
        if old.as_ref().is_some_and(|o| o.role == Role::Admin)
            && !is_enabled_admin(&new)
            && self.other_admins(name)? == 0
        {
            return Err(UserError::LastAdmin("demoted or disabled"));
        }
        self.write(&new)?;
        Ok(Changed { old, new })
    }

    /// Removes a user and returns it, unless it is an admin and no other enabled admin is
    /// left ([`UserError::LastAdmin`]); the check and the removal happen under the lock of
    /// [`Users::change`]. Not durable until the store's next flush.
    pub fn remove(&self, name: &str) -> Result<User, UserError> {
        let _changes = changes();
        let old = self
            .get(name)?
            .ok_or_else(|| UserError::NotFound(name.to_string()))?;
        if old.role == Role::Admin && self.other_admins(name)? == 0 {
            return Err(UserError::LastAdmin("removed"));
        }
        self.records.remove(name)?;
        Ok(old)
    }

    /// Whether any account exists.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// A password hash record made of the byte `n`, for tests.
#[cfg(test)]
pub(crate) fn test_hash(n: u8) -> PasswordHash {
    PasswordHash {
        algorithm: "pbkdf2-sha256".into(),
        iterations: super::password::PBKDF2_ITERATIONS,
        salt: hex::encode([n; 16]),
        hash: hex::encode([n; 32]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> PasswordHash {
        test_hash(n)
    }

    fn admin() -> Change {
        Change {
            role: Some(Role::Admin),
            password: Some(hash(1)),
            disabled: None,
        }
    }

    /// A change keeps what it does not set, a new account needs its role and password, and
    /// the last enabled admin can be neither demoted, disabled nor removed; two admins
    /// demoting or removing each other from two threads at once leave one of them admin.
    #[test]
    fn changes_keep_what_they_do_not_set_and_an_enabled_admin() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let users = Users::open(&store).unwrap();
        assert!(matches!(
            users.change("ana", Change::default(), 1),
            Err(UserError::Required("role"))
        ));
        let ana = users.change("ana", admin(), 1).unwrap();
        assert_eq!((ana.old, ana.new.created_ms), (None, 1));
        let disable = Change {
            disabled: Some(true),
            ..Change::default()
        };
        assert!(matches!(
            users.change("ana", disable.clone(), 2),
            Err(UserError::LastAdmin(_))
        ));
        assert!(matches!(users.remove("ana"), Err(UserError::LastAdmin(_))));
        assert!(matches!(users.remove("bo"), Err(UserError::NotFound(_))));
        let new_password = Change {
            password: Some(hash(2)),
            ..Change::default()
        };
        let changed = users.change("ana", new_password, 2).unwrap();
        assert_eq!(changed.new.role, Role::Admin);
        assert_eq!((changed.new.created_ms, changed.new.password), (1, hash(2)));

        let demote = Change {
            role: Some(Role::Technician),
            ..Change::default()
        };
        for round in 0..200 {
            users.change("bo", admin(), 1).unwrap();
            users.change("ana", admin(), 1).unwrap();
            let start = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                for other in ["bo", "ana"] {
                    let (users, start, demote) = (&users, &start, demote.clone());
                    s.spawn(move || {
                        start.wait();
                        let _ = if round % 2 == 0 {
                            users.change(other, demote, 2).map(|_| ())
                        } else {
                            users.remove(other).map(|_| ())
                        };
                    });
                }
            });
            let admins = users
                .list()
                .unwrap()
                .iter()
                .filter(|u| is_enabled_admin(u))
                .count();
            assert_eq!(admins, 1, "round {round}");
        }
    }

    /// Creation never replaces: of threads creating one name at once exactly one wins.
    #[test]
    fn create_refuses_an_existing_name_even_at_the_same_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let users = Users::open(&store).unwrap();
        let user = |n: u8| User {
            name: "ana".into(),
            role: Role::Technician,
            password: hash(n),
            created_ms: 1,
            disabled: false,
        };
        users.create(&user(1)).unwrap();
        assert!(matches!(
            users.create(&user(2)),
            Err(CreateError::Exists(_))
        ));
        assert_eq!(users.get("ana").unwrap().unwrap().password, hash(1));
        let start = std::sync::Barrier::new(4);
        let won = std::sync::atomic::AtomicUsize::new(0);
        for round in 0..50 {
            users.records.remove("ana").unwrap();
            std::thread::scope(|s| {
                for n in 0..4u8 {
                    let (users, start, won, user) = (&users, &start, &won, user(n));
                    s.spawn(move || {
                        start.wait();
                        if users.create(&user).is_ok() {
                            won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    });
                }
            });
            assert_eq!(
                won.swap(0, std::sync::atomic::Ordering::SeqCst),
                1,
                "round {round}"
            );
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("ana.silva@h1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("a/b").is_err());
        for dots in [".", "..", "..."] {
            assert!(check_name(dots).is_err(), "{dots}");
        }
        assert!(check_name(".a.").is_ok());
    }
}
