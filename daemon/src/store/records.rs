//! Typed handles on the store's record trees: each later stage (users, sessions, audit,
//! feedback) keeps its records as JSON values under its own keys through a [`Records`],
//! and never sees the index database behind it.

use super::{decode, encode, StoreError};
use serde::{de::DeserializeOwned, Serialize};
use std::marker::PhantomData;

/// The record trees the store keeps for the stages built on it. Their names in the index
/// database are this module's alone: a stage names its tree, never a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordTree {
    /// Console and command-line user accounts (`accounts::users`), keyed by user name.
    Users,
    /// Console sessions (`console::sessions`), keyed by the hex SHA-256 of the token.
    Sessions,
    /// The hash-chained audit trail (`audit`), keyed by big-endian sequence number.
    Audit,
    /// How far the audit trail has been forwarded to the audit repository (one key).
    AuditForward,
    /// The last record removed from the start of the audit trail (one key), from which
    /// the trail's chain is verified.
    AuditShed,
    /// Radiologists' feedback on results (`console::feedback`).
    Feedback,
    /// The console's login throttle (`console::login_throttle`): its failure counters and
    /// the clients known to each account, keyed by the hex SHA-256 of what they count.
    LoginThrottle,
}

impl RecordTree {
    /// The tree's name in the index database.
    pub(super) fn name(self) -> &'static str {
        match self {
            RecordTree::Users => "users",
            RecordTree::Sessions => "sessions",
            RecordTree::Audit => "audit",
            RecordTree::AuditForward => "audit_forward",
            RecordTree::AuditShed => "audit_shed",
            RecordTree::Feedback => "feedback",
            RecordTree::LoginThrottle => "login_throttle",
        }
    }
}

/// The records of one tree, each a JSON-encoded `T`. Cheap to clone.
pub struct Records<T> {
    tree: sled::Tree,
    kind: PhantomData<fn() -> T>,
}

impl<T> Clone for Records<T> {
    fn clone(&self) -> Self {
        Records {
            tree: self.tree.clone(),
            kind: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Records<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("tree", &String::from_utf8_lossy(&self.tree.name()))
            .field("len", &self.tree.len())
            .finish()
    }
}

/// One record as read: its key and the decoded value.
pub type Entry<T> = (Vec<u8>, T);

impl<T: Serialize + DeserializeOwned> Records<T> {
    pub(super) fn new(tree: sled::Tree) -> Records<T> {
        Records {
            tree,
            kind: PhantomData,
        }
    }

    /// The record under `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<T>, StoreError> {
        let key = key.as_ref();
        self.tree.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    /// Writes `value` under `key`; returns whether a record was replaced. Not durable
    /// until the store's next flush.
    pub fn insert(&self, key: impl AsRef<[u8]>, value: &T) -> Result<bool, StoreError> {
        Ok(self.tree.insert(key.as_ref(), encode(value))?.is_some())
    }

    /// Removes the record under `key`; returns whether there was one.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        Ok(self.tree.remove(key.as_ref())?.is_some())
    }

    /// Whether the tree holds no record.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// The record with the greatest key.
    pub fn last(&self) -> Result<Option<Entry<T>>, StoreError> {
        match self.tree.last()? {
            Some((k, v)) => Ok(Some((k.to_vec(), decode(&k, &v)?))),
            None => Ok(None),
        }
    }

    /// Every record in key order. A record that does not decode is an
    /// [`StoreError::Corrupt`] item; the walk goes on after it.
    pub fn iter(&self) -> impl Iterator<Item = Result<Entry<T>, StoreError>> {
        self.tree.iter().map(decoded)
    }

    /// The records whose key starts with `prefix`, in key order.
    pub fn scan_prefix(
        &self,
        prefix: impl AsRef<[u8]>,
    ) -> impl Iterator<Item = Result<Entry<T>, StoreError>> {
        self.tree.scan_prefix(prefix.as_ref()).map(decoded)
    }

    /// The records from key `start` on, in key order.
    pub fn from_key(
        &self,
        start: impl AsRef<[u8]>,
    ) -> impl Iterator<Item = Result<Entry<T>, StoreError>> {
        self.tree.range(start.as_ref().to_vec()..).map(decoded)
    }

    /// Decodes the record under `key`, changes it with `f` and writes it back, atomically
    /// (see `update_json`). `None` when there is no such record.
    pub fn update(
        &self,
        key: impl AsRef<[u8]>,
        f: impl FnMut(&mut T),
    ) -> Result<Option<T>, StoreError> {
        update_json(&self.tree, key.as_ref(), f)
    }
}

fn decoded<T: DeserializeOwned>(
    kv: sled::Result<(sled::IVec, sled::IVec)>,
) -> Result<Entry<T>, StoreError> {
    let (k, v) = kv?;
    Ok((k.to_vec(), decode(&k, &v)?))
}

/// The store's one decode-mutate-encode loop: applies `f` to the JSON record under `key`
/// atomically (retried by the database on a concurrent write) and returns the new value;
/// `None` when there is no record. A record that does not decode is left as it is and
/// reported as [`StoreError::Corrupt`].
pub(super) fn update_json<T: Serialize + DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
    mut f: impl FnMut(&mut T),
) -> Result<Option<T>, StoreError> {
    let mut failed = None;
    let mut updated = None;
    tree.update_and_fetch(key, |old| {
        let old = old?;
        match serde_json::from_slice::<T>(old) {
            Ok(mut rec) => {
                failed = None;
                f(&mut rec);
                let bytes = encode(&rec);
                updated = Some(rec);
                Some(bytes)
            }
            Err(e) => {
                failed = Some(e.to_string());
                Some(old.to_vec())
            }
        }
    })?;
    if let Some(reason) = failed {
        return Err(StoreError::Corrupt {
            key: String::from_utf8_lossy(key).to_string(),
            reason,
        });
    }
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    /// Records round-trip typed, updates are read back, and a record that does not decode
    /// is reported as corrupt without being overwritten.
    #[test]
    fn records_round_trip_and_corrupt_ones_are_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r: Records<Vec<u32>> = store.records(RecordTree::Feedback).unwrap();
        assert!(r.is_empty());
        assert!(!r.insert("a", &vec![1]).unwrap());
        assert!(r.insert("a", &vec![1, 2]).unwrap());
        r.insert("b", &vec![3]).unwrap();
        assert_eq!(r.get("a").unwrap(), Some(vec![1, 2]));
        assert_eq!(r.update("b", |v| v.push(4)).unwrap(), Some(vec![3, 4]));
        assert_eq!(r.update("zz", |v| v.push(4)).unwrap(), None);
        let keys: Vec<Vec<u8>> = r.iter().map(|e| e.unwrap().0).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(r.last().unwrap().unwrap().1, vec![3, 4]);

        store
            .tree(RecordTree::Feedback.name())
            .unwrap()
            .insert("c", &b"{"[..])
            .unwrap();
        assert!(matches!(
            r.update("c", |v| v.clear()),
            Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(
            store
                .tree(RecordTree::Feedback.name())
                .unwrap()
                .get("c")
                .unwrap()
                .as_deref(),
            Some(&b"{"[..])
        );
        assert!(r.remove("a").unwrap());
        assert!(!r.remove("a").unwrap());
    }
}
