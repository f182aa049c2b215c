//! The embedded store: Part 10 files under `files/` ([`files`]) and an index in sled
//! (instances, studies with their state, and the trees later stages keep: results, outbox,
//! users, sessions, audit, feedback).
//!
//! sled is beta, so it stays behind this module: no other module names it. Later stages
//! reach their records through typed handles ([`records::Records`], [`outbox::Outbox`],
//! [`results`]), study states change only through the checked [`Store::transition`], and
//! the query keys of C-FIND ([`qr_index`]) are written in the same transaction as the
//! study records. The index carries a schema version, can be rebuilt from the files
//! ([`Store::reindex`], also automatic when the index is missing or unreadable), and every
//! acknowledgement waits for [`Store::flush`].
//!
//! - [`files`]: the Part 10 file area; [`header`]: what the index keeps of a file's header.
//! - [`records`]: typed JSON record trees and the one decode-mutate-encode loop.
//! - [`qr_index`]: the secondary query keys of the study records.
//! - [`results`]: study results and the heatmap marks, committed with the study state.
//! - [`outbox`]: the durable delivery queue, written in the same transaction as a result.

pub mod files;
pub mod header;
pub mod outbox;
pub mod qr_index;
pub mod records;
pub mod results;

use crate::model::{InstanceRecord, StudyRecord, StudyState};
use files::FileArea;
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Version of the index layout; bumped when the record formats change incompatibly.
pub const SCHEMA_VERSION: u32 = 1;

const META: &str = "meta";
const INSTANCES: &str = "instances";
const STUDIES: &str = "studies";
const STUDY_INSTANCES: &str = "study_instances";
/// Meta key set once the query indexes ([`qr_index`]) are maintained.
const QR_INDEX_MARK: &str = "qr_index_version";

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The index database failed.
    #[error("index: {0}")]
    Index(#[from] sled::Error),
    /// The store is held by another process (normally the running daemon).
    #[error("the store at {0} is in use by another process (is the daemon running?)")]
    Locked(PathBuf),
    /// A record in the index cannot be decoded.
    #[error("index record {key} is corrupt: {reason}")]
    Corrupt {
        /// The key of the record.
        key: String,
        /// The decoding error.
        reason: String,
    },
    /// The study is not in the index.
    #[error("study {0} is not in the index")]
    UnknownStudy(String),
    /// A study state change that does not start from an expected state.
    #[error("study {uid} is {found}, not {expected}: it does not become {to}")]
    Transition {
        /// Study Instance UID.
        uid: String,
        /// The state the study is in.
        found: &'static str,
        /// The states the change may start from.
        expected: String,
        /// The state asked for.
        to: &'static str,
    },
    /// The index was written by a newer version of the software.
    #[error("index schema version {found} is newer than this software's {SCHEMA_VERSION}")]
    SchemaTooNew {
        /// The version found on disk.
        found: u32,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// What committing an instance changed.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceCommit {
    /// The instance was not in the index before (a resend replaces without counting).
    pub new_instance: bool,
    /// The study record after the commit.
    pub study: StudyRecord,
}

/// What a reindex found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ReindexReport {
    /// Files indexed.
    pub indexed: u64,
    /// Studies in the rebuilt index.
    pub studies: u64,
    /// Files that could not be parsed (left in place, listed in the log).
    pub unreadable: u64,
}

/// A change committed to the store, broadcast to listeners (the console's live events).
/// Broadcasting never blocks a commit: a listener that falls behind loses the oldest
/// changes and is told so.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A study record was written (new instance, state change).
    Study(Box<StudyRecord>),
    /// A study result was recorded.
    Result {
        /// Study Instance UID.
        study_uid: String,
    },
}

/// One more write to commit in the same transaction as an index change (the outbox
/// entries of a result or of a generated object, the marks of heatmaps still to make).
/// Made only inside the store, from typed values ([`outbox::Batch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExtraWrite {
    /// Tree name.
    tree: String,
    /// Key.
    key: Vec<u8>,
    /// Value.
    value: Vec<u8>,
}

/// The store of one data directory. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    changes: tokio::sync::broadcast::Sender<Change>,
    db: sled::Db,
    meta: sled::Tree,
    instances: sled::Tree,
    studies: sled::Tree,
    study_instances: sled::Tree,
    qr_keys: sled::Tree,
    files: FileArea,
    count: AtomicU64,
}

impl Store {
    /// Opens the store in `data_dir`, creating it when new. An index that is missing (with
    /// files present) or unreadable is rebuilt from the files; a broken one is kept aside
    /// as `index.broken-<time>` for inspection.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(io_err(format!(
            "create data directory {}",
            data_dir.display()
        )))?;
        let files = FileArea::open(data_dir)
            .map_err(io_err(format!("open file area in {}", data_dir.display())))?;
        let index_dir = data_dir.join("index");
        let existed = index_dir.exists();
        let (db, rebuild) = match open_db(&index_dir) {
            Ok(db) => (db, !existed),
            Err(StoreError::Locked(p)) => return Err(StoreError::Locked(p)),
            Err(e) => {
                let aside = data_dir.join(format!("index.broken-{}", crate::clock::now_secs()));
                log::error!(
                    "index at {} is unreadable ({e}); keeping it as {} and rebuilding from the files",
                    index_dir.display(),
                    aside.display()
                );
                std::fs::rename(&index_dir, &aside)
                    .map_err(io_err("move the broken index aside"))?;
                (open_db(&index_dir)?, true)
            }
        };
        let store = Store {
            changes: tokio::sync::broadcast::channel(1024).0,
            meta: db.open_tree(META)?,
            instances: db.open_tree(INSTANCES)?,
            studies: db.open_tree(STUDIES)?,
            study_instances: db.open_tree(STUDY_INSTANCES)?,
            qr_keys: db.open_tree(qr_index::TREE)?,
            db,
            files,
            count: AtomicU64::new(0),
        };
        // sled opens some damaged files as an empty database without an error: an index
        // without its schema version is treated as lost and rebuilt from the files.
        let rebuild = match store.schema_version()? {
            None => {
                if existed && !rebuild {
                    log::error!(
                        "index at {} has no schema version (lost or damaged); rebuilding it from the files",
                        index_dir.display()
                    );
                }
                store
                    .meta
                    .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                true
            }
            Some(v) if v > SCHEMA_VERSION => return Err(StoreError::SchemaTooNew { found: v }),
            Some(_) => rebuild,
        };
        let has_files = store
            .files
            .walk()
            .map(|f| !f.is_empty())
            .map_err(io_err("list stored files"))?;
        if !rebuild && store.meta.get(QR_INDEX_MARK)?.is_none() {
            // A store written before the query indexes existed: derive them from the studies.
            let studies = store.studies()?;
            qr_index::rebuild(&store.qr_keys, studies.iter())?;
            log::info!("query indexes built for {} studies", studies.len());
        }
        store.meta.insert(QR_INDEX_MARK, &[1u8])?;
        if rebuild && has_files {
            let report = store.reindex()?;
            log::warn!(
                "index rebuilt from files: {} instances in {} studies, {} unreadable",
                report.indexed,
                report.studies,
                report.unreadable
            );
        }
        store
            .count
            .store(store.instances.len() as u64, Ordering::Relaxed);
        store.db.flush()?;
        Ok(store)
    }

    fn schema_version(&self) -> Result<Option<u32>, StoreError> {
        Ok(self.meta.get("schema_version")?.and_then(|v| {
            let b: [u8; 4] = v.as_ref().try_into().ok()?;
            Some(u32::from_be_bytes(b))
        }))
    }

    /// Listens to committed changes.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Announces a committed change (stages that write their own trees call this after
    /// their transaction, e.g. the result commit).
    pub fn notify(&self, change: Change) {
        let _ = self.changes.send(change);
    }

    /// The file area.
    pub fn files(&self) -> &FileArea {
        &self.files
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        self.files.root()
    }

    /// A named tree (for this module's typed handles only).
    fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// The typed records of the tree `name` (users, sessions, audit, feedback).
    pub fn records<T: Serialize + DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<records::Records<T>, StoreError> {
        Ok(records::Records::new(self.tree(name)?))
    }

    /// Opens the outbox (its trees live in this store) and counts what it holds.
    pub fn outbox(
        &self,
        limits: outbox::OutboxLimits,
    ) -> Result<outbox::Outbox, outbox::OutboxError> {
        outbox::Outbox::open(&self.db, limits)
    }

    /// Number of instances in the index.
    pub fn instance_count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Makes everything committed so far durable. Concurrent callers share the work of
    /// one flush where they overlap.
    pub async fn flush(&self) -> Result<(), StoreError> {
        // sled's flush_async runs on sled's own small thread pool; under load, with several
        // associations flushing at once, it was seen to stall every caller. A blocking
        // flush on tokio's blocking pool does the same work without that pool.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Io {
                what: "index flush task".into(),
                source: std::io::Error::other(e.to_string()),
            })??;
        Ok(())
    }

    /// Blocking flush, for commands and shutdown.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Records an instance and updates its study, in one transaction. Not durable until
    /// [`Store::flush`].
    pub fn commit_instance(
        &self,
        instance: &InstanceRecord,
        study_attrs: &StudyRecord,
    ) -> Result<InstanceCommit, StoreError> {
        self.commit_instance_with(instance, study_attrs, &[])
    }

    /// [`Store::commit_instance`] with `extra` writes in the same transaction.
    fn commit_instance_with(
        &self,
        instance: &InstanceRecord,
        study_attrs: &StudyRecord,
        extra: &[ExtraWrite],
    ) -> Result<InstanceCommit, StoreError> {
        let inst_key = instance.sop_instance_uid.as_bytes();
        let study_key = instance.study_instance_uid.as_bytes();
        let link_key = link_key(&instance.study_instance_uid, &instance.sop_instance_uid);
        let inst_val = encode(instance);
        let (names, extra_trees) = self.extra_trees(extra)?;
        let mut trees = vec![
            &self.instances,
            &self.studies,
            &self.study_instances,
            &self.qr_keys,
        ];
        trees.extend(extra_trees.iter());
        let result = trees.as_slice().transaction(|views| {
            let (instances, studies, links, qr_keys) = (&views[0], &views[1], &views[2], &views[3]);
            let previous = instances.insert(inst_key, inst_val.as_slice())?;
            let new_instance = previous.is_none();
            // A resend may move an instance to another study: unlink the old one.
            if let Some(prev) = &previous {
                if let Ok(prev) = serde_json::from_slice::<InstanceRecord>(prev) {
                    if prev.study_instance_uid != instance.study_instance_uid {
                        links.remove(link_key_bytes(
                            &prev.study_instance_uid,
                            &prev.sop_instance_uid,
                        ))?;
                    }
                }
            }
            let old = match studies.get(study_key)? {
                Some(v) => Some(serde_json::from_slice::<StudyRecord>(&v).map_err(|e| {
                    ConflictableTransactionError::Abort(StoreError::Corrupt {
                        key: instance.study_instance_uid.clone(),
                        reason: e.to_string(),
                    })
                })?),
                None => None,
            };
            let mut study = match &old {
                Some(s) => s.clone(),
                None => StudyRecord {
                    study_instance_uid: instance.study_instance_uid.clone(),
                    first_received: instance.received_at,
                    ..Default::default()
                },
            };
            header::merge_study(&mut study, study_attrs);
            if links.insert(link_key.as_slice(), &[])?.is_none() {
                study.instances += 1;
            }
            study.last_received = study.last_received.max(instance.received_at);
            // New data reopens a study that was already analysed (result version n+1);
            // the result objects this box adds to it do not.
            if !instance.generated {
                study.state = StudyState::Receiving;
                study.error = None;
            }
            studies.insert(study_key, encode(&study))?;
            qr_index::update(qr_keys, old.as_ref(), &study)?;
            write_extra(&views[4..], &names, extra)?;
            Ok(InstanceCommit {
                new_instance,
                study,
            })
        });
        let commit = unwrap_tx(result)?;
        if commit.new_instance {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        self.notify(Change::Study(Box::new(commit.study.clone())));
        Ok(commit)
    }

    /// Places a complete, fsync'd file whose header was read, and indexes it in one
    /// transaction (not durable until [`Store::flush`]). Received instances and the
    /// objects this box generates both come in this way; `batches` commit in the same
    /// transaction (a generated object's push entries).
    pub fn place_and_commit(
        &self,
        staged: files::StagedFile,
        header: &header::Header,
        source_ae: &str,
        generated: bool,
        batches: &[outbox::Batch],
    ) -> Result<InstanceRecord, StoreError> {
        let extra = batch_writes(batches)?;
        let size = staged.size();
        let rel = self
            .files
            .place(
                staged,
                &header.instance.study_instance_uid,
                &header.instance.sop_instance_uid,
            )
            .map_err(io_err("place the file"))?;
        let mut rec = header.instance.clone();
        rec.path = rel.to_string_lossy().to_string();
        rec.size = size;
        rec.received_at = crate::clock::now_secs();
        rec.source_ae = source_ae.to_string();
        rec.generated = generated || header.instance.generated;
        self.commit_instance_with(&rec, &header.study, &extra)?;
        Ok(rec)
    }

    /// The distinct trees `extra` writes to, by name, opened (for a transaction over them).
    fn extra_trees(
        &self,
        extra: &[ExtraWrite],
    ) -> Result<(Vec<String>, Vec<sled::Tree>), StoreError> {
        let mut names: Vec<String> = Vec::new();
        for e in extra {
            if !names.contains(&e.tree) {
                names.push(e.tree.clone());
            }
        }
        let trees = names
            .iter()
            .map(|n| self.tree(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((names, trees))
    }

    /// One instance by SOP Instance UID.
    pub fn instance(&self, sop_uid: &str) -> Result<Option<InstanceRecord>, StoreError> {
        get_json(&self.instances, sop_uid)
    }

    /// One study by Study Instance UID.
    pub fn study(&self, study_uid: &str) -> Result<Option<StudyRecord>, StoreError> {
        get_json(&self.studies, study_uid)
    }

    /// Every study (unordered).
    pub fn studies(&self) -> Result<Vec<StudyRecord>, StoreError> {
        self.studies
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    /// The instances of a study, in (series number, instance number) order.
    pub fn instances_of(&self, study_uid: &str) -> Result<Vec<InstanceRecord>, StoreError> {
        let mut prefix = study_uid.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.study_instances.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let sop = String::from_utf8_lossy(&k[prefix.len()..]).to_string();
            if let Some(rec) = self.instance(&sop)? {
                out.push(rec);
            }
        }
        out.sort_by_key(|r| {
            (
                r.series_number.unwrap_or(i64::MAX),
                r.instance_number.unwrap_or(i64::MAX),
            )
        });
        Ok(out)
    }

    /// Study UIDs whose `kind` query key equals `value` exactly ([`qr_index`]).
    pub fn query_exact(
        &self,
        kind: qr_index::Kind,
        value: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(qr_index::exact(&self.qr_keys, kind, value)?)
    }

    /// Study UIDs whose `kind` query key starts with `prefix`.
    pub fn query_prefixed(
        &self,
        kind: qr_index::Kind,
        prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(qr_index::prefixed(&self.qr_keys, kind, prefix)?)
    }

    /// Study UIDs whose `kind` query key lies in `lo..=hi` (either bound open when empty).
    pub fn query_range(
        &self,
        kind: qr_index::Kind,
        lo: &str,
        hi: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(qr_index::range(&self.qr_keys, kind, lo, hi)?)
    }

    /// Moves a study to state `to`, clearing its error reason, if it is in one of `from`;
    /// otherwise nothing changes and [`StoreError::Transition`] says what it is in. The
    /// new record is broadcast. Not durable until [`Store::flush`].
    pub fn transition(
        &self,
        study_uid: &str,
        from: &[StudyState],
        to: StudyState,
    ) -> Result<StudyRecord, StoreError> {
        self.checked_state_change(study_uid, from, to, None)
    }

    /// [`Store::transition`] to `error`, recording `reason`.
    pub fn transition_to_error(
        &self,
        study_uid: &str,
        from: &[StudyState],
        reason: &str,
    ) -> Result<StudyRecord, StoreError> {
        self.checked_state_change(study_uid, from, StudyState::Error, Some(reason.to_string()))
    }

    fn checked_state_change(
        &self,
        study_uid: &str,
        from: &[StudyState],
        to: StudyState,
        error: Option<String>,
    ) -> Result<StudyRecord, StoreError> {
        let mut found = None;
        let rec = records::update_json(
            &self.studies,
            study_uid.as_bytes(),
            |s: &mut StudyRecord| {
                if from.contains(&s.state) {
                    found = None;
                    s.state = to;
                    s.error = error.clone();
                } else {
                    found = Some(s.state);
                }
            },
        )?;
        let Some(rec) = rec else {
            return Err(StoreError::UnknownStudy(study_uid.to_string()));
        };
        match found {
            None => {
                self.notify(Change::Study(Box::new(rec.clone())));
                Ok(rec)
            }
            Some(found) => Err(StoreError::Transition {
                uid: study_uid.to_string(),
                found: found.as_str(),
                expected: from
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join("|"),
                to: to.as_str(),
            }),
        }
    }

    /// Sets a study's state without the check of [`Store::transition`] (tests that need a
    /// study in a given state).
    #[cfg(test)]
    pub(crate) fn force_state(&self, study_uid: &str, state: StudyState) {
        self.update_study(study_uid, |s| s.state = state)
            .expect("study state")
            .expect("known study");
    }

    /// Changes a study record atomically with `f`, and broadcasts the result.
    fn update_study(
        &self,
        study_uid: &str,
        f: impl FnMut(&mut StudyRecord),
    ) -> Result<Option<StudyRecord>, StoreError> {
        let rec = records::update_json(&self.studies, study_uid.as_bytes(), f)?;
        if let Some(r) = &rec {
            self.notify(Change::Study(Box::new(r.clone())));
        }
        Ok(rec)
    }

    /// Marks an instance's pixel data as pruned by retention (its file is gone). Not
    /// durable until [`Store::flush`].
    pub fn mark_pruned(&self, sop_uid: &str) -> Result<(), StoreError> {
        records::update_json(
            &self.instances,
            sop_uid.as_bytes(),
            |rec: &mut InstanceRecord| rec.pruned = true,
        )?;
        Ok(())
    }

    /// Counts studies per state.
    pub fn study_state_counts(&self) -> Result<Vec<(StudyState, u64)>, StoreError> {
        let mut counts = std::collections::BTreeMap::new();
        for s in StudyState::ALL {
            counts.insert(s, 0u64);
        }
        for s in self.studies()? {
            *counts.entry(s.state).or_default() += 1;
        }
        Ok(counts.into_iter().collect())
    }

    /// Rebuilds the instance and study index from the files. Study states of studies that
    /// were known are kept; new ones start as `complete` (their associations are long gone).
    pub fn reindex(&self) -> Result<ReindexReport, StoreError> {
        let old_states: std::collections::HashMap<String, StudyRecord> = self
            .studies()
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.study_instance_uid.clone(), s))
            .collect();
        self.instances.clear()?;
        self.studies.clear()?;
        self.study_instances.clear()?;
        self.qr_keys.clear()?;
        self.count.store(0, Ordering::Relaxed);
        let mut report = ReindexReport::default();
        let root = self.root().to_path_buf();
        for path in self.files.walk().map_err(io_err("list stored files"))? {
            match header::read_header(&path) {
                Ok(h) => {
                    let meta = std::fs::metadata(&path).map_err(io_err("stat stored file"))?;
                    let mut inst = h.instance;
                    inst.path = path
                        .strip_prefix(&root)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .to_string();
                    inst.size = meta.len();
                    inst.received_at = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0);
                    self.commit_instance(&inst, &h.study)?;
                    report.indexed += 1;
                }
                Err(e) => {
                    log::warn!("reindex: {} skipped: {e}", path.display());
                    report.unreadable += 1;
                }
            }
        }
        for study in self.studies()? {
            let uid = study.study_instance_uid.clone();
            let (state, error, version) = match old_states.get(&uid) {
                Some(old) => (old.state, old.error.clone(), old.result_version),
                None => (StudyState::Complete, None, 0),
            };
            self.update_study(&uid, |s| {
                s.state = state;
                s.error = error.clone();
                s.result_version = version;
            })?;
            report.studies += 1;
        }
        self.db.flush()?;
        Ok(report)
    }
}

/// Opens the sled index. A lock held by a store that is just closing (sled releases it
/// from a background thread) is waited for up to a second before `Locked` is reported.
pub(crate) fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let mut tries = 0;
    loop {
        match sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(sled::Error::Io(e)) if is_lock_error(&e) => {
                tries += 1;
                if tries >= 20 {
                    return Err(StoreError::Locked(dir.to_path_buf()));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => return Err(StoreError::Index(e)),
        }
    }
}

fn is_lock_error(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
        || e.to_string().contains("lock")
        || e.raw_os_error() == Some(nix::libc::EWOULDBLOCK)
}

fn link_key(study: &str, sop: &str) -> Vec<u8> {
    link_key_bytes(study, sop)
}

fn link_key_bytes(study: &str, sop: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(study.len() + sop.len() + 1);
    k.extend_from_slice(study.as_bytes());
    k.push(0);
    k.extend_from_slice(sop.as_bytes());
    k
}

/// Serializes a record as JSON bytes.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain records cannot fail (no maps with non-string keys).
    serde_json::to_vec(value).unwrap_or_default()
}

/// Deserializes a record, naming its key on failure.
pub fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).to_string(),
        reason: e.to_string(),
    })
}

/// Reads one JSON record from a tree.
fn get_json<T: DeserializeOwned>(tree: &sled::Tree, key: &str) -> Result<Option<T>, StoreError> {
    tree.get(key.as_bytes())?
        .map(|v| decode(key.as_bytes(), &v))
        .transpose()
}

/// Applies `extra` inside a transaction whose views of the trees `names` are `views`
/// (as opened by [`Store::extra_trees`]; extra writes never target the trees the
/// transaction itself writes).
fn write_extra(
    views: &[sled::transaction::TransactionalTree],
    names: &[String],
    extra: &[ExtraWrite],
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    for e in extra {
        if let Some(view) = names
            .iter()
            .position(|n| *n == e.tree)
            .and_then(|i| views.get(i))
        {
            view.insert(e.key.as_slice(), e.value.as_slice())?;
        }
    }
    Ok(())
}

/// The writes of outbox batches, for a transaction of the store.
fn batch_writes(batches: &[outbox::Batch]) -> Result<Vec<ExtraWrite>, StoreError> {
    let mut out = Vec::new();
    for b in batches {
        out.extend(b.writes().map_err(|e| match e {
            outbox::OutboxError::Db(e) => StoreError::Index(e),
            other => StoreError::Corrupt {
                key: outbox::TREE.to_string(),
                reason: other.to_string(),
            },
        })?);
    }
    Ok(out)
}

fn unwrap_tx<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(StoreError::Index(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(study: &str, sop: &str) -> InstanceRecord {
        InstanceRecord {
            sop_instance_uid: sop.into(),
            study_instance_uid: study.into(),
            series_instance_uid: format!("{study}.1"),
            received_at: 100,
            ..Default::default()
        }
    }

    /// Extra writes land with the instance, or not at all when the commit aborts.
    #[test]
    fn extra_writes_commit_with_the_instance_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let extra = |k: &str| ExtraWrite {
            tree: "outbox".into(),
            key: k.as_bytes().to_vec(),
            value: b"entry".to_vec(),
        };
        store
            .commit_instance_with(
                &inst("1.2", "1.2.1"),
                &StudyRecord::default(),
                &[extra("a")],
            )
            .unwrap();
        let outbox = store.tree("outbox").unwrap();
        assert_eq!(outbox.get("a").unwrap().as_deref(), Some(&b"entry"[..]));
        assert!(store.instance("1.2.1").unwrap().is_some());

        // A corrupt study record aborts the transaction: no instance, no extra write.
        store.studies.insert("1.3", &b"not json"[..]).unwrap();
        let err = store
            .commit_instance_with(
                &inst("1.3", "1.3.1"),
                &StudyRecord::default(),
                &[extra("b")],
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(outbox.get("b").unwrap().is_none());
        assert!(store.instance("1.3.1").unwrap().is_none());
    }

    /// After a rollback to an older binary, a store written by a newer one is refused with
    /// a message naming both versions, and its records are left as they were.
    #[test]
    fn newer_schema_is_refused_and_left_intact() {
        let dir = tempfile::tempdir().unwrap();
        let newer = (SCHEMA_VERSION + 1).to_be_bytes();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .commit_instance(&inst("1.2", "1.2.1"), &StudyRecord::default())
                .unwrap();
            store.meta.insert("schema_version", &newer).unwrap();
            store.flush_blocking().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::SchemaTooNew { found } if found == SCHEMA_VERSION + 1),
            "{err}"
        );
        assert!(
            err.to_string().contains("newer than this software"),
            "{err}"
        );
        // Nothing was rebuilt or reset: the newer version and the records are still there.
        let db = sled::open(dir.path().join("index")).unwrap();
        let meta = db.open_tree(META).unwrap();
        assert_eq!(
            meta.get("schema_version").unwrap().as_deref(),
            Some(&newer[..])
        );
        assert_eq!(db.open_tree(INSTANCES).unwrap().len(), 1);
        assert!(!dir.path().read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("index.broken")));
    }

    #[test]
    fn commit_counts_new_instances_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let attrs = StudyRecord {
                patient_name: "João Conceição".into(),
                ..Default::default()
            };
            let c = store
                .commit_instance(&inst("1.2", "1.2.1"), &attrs)
                .unwrap();
            assert!(c.new_instance);
            let c = store
                .commit_instance(&inst("1.2", "1.2.1"), &attrs)
                .unwrap();
            assert!(!c.new_instance);
            assert_eq!(c.study.instances, 1);
            store
                .commit_instance(&inst("1.2", "1.2.2"), &attrs)
                .unwrap();
            assert_eq!(store.instance_count(), 2);
            store.flush_blocking().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.instance_count(), 2);
        let s = store.study("1.2").unwrap().unwrap();
        assert_eq!(s.patient_name, "João Conceição");
        assert_eq!(s.instances, 2);
        assert_eq!(store.instances_of("1.2").unwrap().len(), 2);
    }

    /// A state change happens only from the states it names: otherwise the study is left
    /// as it is, nothing is broadcast, and the error says what it is in.
    #[test]
    fn transitions_are_checked_against_the_current_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .commit_instance(&inst("1.2", "1.2.1"), &StudyRecord::default())
            .unwrap();
        let mut changes = store.changes();
        let err = store
            .transition("1.2", &[StudyState::Queued], StudyState::Inferring)
            .unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Transition {
                    found: "receiving",
                    to: "inferring",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            changes.try_recv().is_err(),
            "a refused change is not broadcast"
        );
        assert_eq!(
            store.study("1.2").unwrap().unwrap().state,
            StudyState::Receiving
        );

        let s = store
            .transition("1.2", &[StudyState::Receiving], StudyState::Complete)
            .unwrap();
        assert_eq!(s.state, StudyState::Complete);
        assert!(
            matches!(changes.try_recv(), Ok(Change::Study(s)) if s.state == StudyState::Complete)
        );
        let s = store
            .transition_to_error("1.2", &[StudyState::Complete], "no pixels")
            .unwrap();
        assert_eq!(
            (s.state, s.error.as_deref()),
            (StudyState::Error, Some("no pixels"))
        );
        assert!(matches!(
            store.transition("9.9", &[StudyState::Receiving], StudyState::Complete),
            Err(StoreError::UnknownStudy(_))
        ));
    }

    #[test]
    fn second_process_sees_the_store_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _store = Store::open(dir.path()).unwrap();
        // sled locks the database file per process; a second open in the same process
        // is also refused, which is what a second `duli` process sees.
        match Store::open(dir.path()) {
            Err(StoreError::Locked(_)) => {}
            other => panic!("expected Locked, got {other:?}"),
        }
    }
}
