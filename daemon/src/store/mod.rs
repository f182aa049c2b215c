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
//! - [`instances`]: an instance indexed with its study, in one transaction (received or
//!   generated), superseded copies removed.
//! - [`kept`]: the copy a received-again instance replaces, kept until the replacement is
//!   durable and put back at start-up when its commit was lost.
//! - [`moves`]: an instance sent again under another study: a durable note until the copy
//!   the index no longer names is removed, also after a stop.
//! - [`states`]: the checked study state transitions and the count per state.
//! - [`reindex`]: the index rebuilt from the files.
//! - [`records`]: typed JSON record trees and the one decode-mutate-encode loop.
//! - [`qr_index`]: the secondary query keys of the study records.
//! - [`results`]: study results and the heatmap marks, committed with the study state.
//! - [`outbox`]: the durable delivery queue, written in the same transaction as a result.
//! - [`pruning`]: received pixel data pruned for retention: claimed in a checked
//!   transaction, then removed under the instance's placement lock.
//! - [`worklist`]: what the console's worklist shows of each study's result.
//! - [`liveness`]: whether the store answers a read and an index flush in time (the
//!   watchdog's probe).

pub mod files;
pub mod header;
pub mod instances;
pub mod kept;
pub mod liveness;
pub mod moves;
pub mod outbox;
pub mod pruning;
pub mod qr_index;
pub mod records;
pub mod reindex;
pub mod results;
pub mod states;
pub mod worklist;

use crate::model::{InstanceRecord, StudyRecord, StudyState};
use files::FileArea;
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::TransactionError;
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
/// Meta key set while the index is rebuilt from the files at open: still there at the
/// next open, the rebuild was cut off and is run again.
const REBUILD_MARK: &str = "rebuild_in_progress";
/// The ledger of the objects this box generated, one SOP Instance UID per line, in the data
/// directory (see `Store::reindex`).
const GENERATED_LEDGER: &str = "generated-objects";
/// The ledger of the generated objects a rejection note withdrew, one SOP Instance UID per
/// line, in the data directory: a rebuilt index keeps them out of their studies.
const REJECTED_LEDGER: &str = "rejected-objects";

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
    /// An instance from outside would replace a result object this box generated.
    #[error("SOP Instance {0} is a result object generated by this device and cannot be replaced")]
    Protected(String),
}

/// Whether an encoded instance record is one this box generated.
fn is_generated(encoded: &[u8]) -> bool {
    serde_json::from_slice::<InstanceRecord>(encoded).is_ok_and(|r| r.generated)
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
    /// The instance named another patient than the study had: the study now carries the
    /// instance's patient identity (see [`header::merge_study`]).
    pub patient_replaced: bool,
    /// The instance's record before, when it was in another study's file: that file goes
    /// once this commit is durable ([`Store::remove_superseded`]).
    pub moved_from: Option<InstanceRecord>,
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
    /// Instance records removed: their file was gone (not pruned by retention) or the
    /// record did not decode.
    #[serde(default)]
    pub removed: u64,
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
    /// The worklist index, once built ([`Store::worklist_page`]).
    worklist: std::sync::RwLock<Option<worklist::Index>>,
    /// Held from placing an instance's file to committing its record, and while a pruned
    /// file is removed ([`pruning`]).
    instance_locks: pruning::InstanceLocks,
    /// Where this open set an unreadable index aside (`index.broken-<time>`), if it did.
    set_aside: Option<PathBuf>,
    /// Copies replaced by a commit the next flush makes durable ([`kept`]).
    kept: kept::Pending,
}

impl Store {
    /// Opens the store in `data_dir`, creating it when new. An index that is missing (with
    /// files present) or unreadable is rebuilt from the files; a broken one is kept aside
    /// as `index.broken-<time>` for inspection.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Self::open_observed(data_dir, &AtomicU64::new(0))
    }

    /// [`Store::open`], counting in `progress` the files a rebuild of the index has walked
    /// (the daemon asks systemd for more start-up time while the count rises).
    pub fn open_observed(data_dir: &Path, progress: &AtomicU64) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(io_err(format!(
            "create data directory {}",
            data_dir.display()
        )))?;
        let index_dir = data_dir.join("index");
        let existed = index_dir.exists();
        let mut set_aside = None;
        let (db, rebuild) = match open_db(&index_dir) {
            Ok(db) => (db, !existed),
            Err(StoreError::Locked(p)) => return Err(StoreError::Locked(p)),
            // The disk full, a permission, the open-file limit: the index may be whole,
            // and setting it aside would drop what only it holds (reports owed to the
            // RIS, results, accounts, the audit chain). Fail, and be started again.
            Err(StoreError::Index(sled::Error::Io(e))) if is_environmental(&e) => {
                return Err(StoreError::Io {
                    what: format!(
                        "open the index at {} (kept as it is; fix the cause and start again)",
                        index_dir.display()
                    ),
                    source: e,
                })
            }
            Err(e) => {
                let aside = data_dir.join(format!("index.broken-{}", crate::clock::now_secs()));
                log::error!(
                    "index at {} is unreadable ({e}); keeping it as {} and rebuilding from the files",
                    index_dir.display(),
                    aside.display()
                );
                std::fs::rename(&index_dir, &aside)
                    .map_err(io_err("move the broken index aside"))?;
                set_aside = Some(aside);
                (open_db(&index_dir)?, true)
            }
        };
        // Only once the index's lock is held: opening the file area clears its folder of
        // incoming files, which a running daemon (holding the lock) is writing into.
        let files = FileArea::open(data_dir)
            .map_err(io_err(format!("open file area in {}", data_dir.display())))?;
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
            worklist: std::sync::RwLock::new(None),
            instance_locks: pruning::InstanceLocks::new(),
            set_aside,
            kept: kept::Pending::default(),
        };
        // A rebuild cut off (a power cut, the unit's start timeout) left part of the files
        // indexed under a valid schema version: the mark it set says to rebuild again.
        let unfinished = store.meta.get(REBUILD_MARK)?.is_some();
        if unfinished {
            log::error!(
                "an earlier rebuild of the index at {} did not finish; rebuilding it again from the files",
                index_dir.display()
            );
        }
        // sled opens some damaged files as an empty database without an error: an index
        // without its schema version is treated as lost and rebuilt from the files.
        let lost = match store.schema_version()? {
            None => {
                if existed && !rebuild {
                    log::error!(
                        "index at {} has no schema version (lost or damaged); rebuilding it from the files",
                        index_dir.display()
                    );
                }
                stamp_new_index(&store.meta)?;
                true
            }
            Some(v) if v > SCHEMA_VERSION => return Err(StoreError::SchemaTooNew { found: v }),
            Some(_) => rebuild,
        };
        let rebuild = unfinished || lost;
        let has_files = store
            .files
            .walk()
            .map(|f| !f.is_empty())
            .map_err(io_err("list stored files"))?;
        let current = [qr_index::VERSION];
        if !rebuild && store.meta.get(QR_INDEX_MARK)?.as_deref() != Some(&current[..]) {
            // A store written before the query indexes existed, or with another layout of
            // their keys: derive them from the studies.
            let studies = store.studies()?;
            qr_index::rebuild(&store.qr_keys, studies.iter())?;
            log::info!("query indexes built for {} studies", studies.len());
        }
        store.meta.insert(QR_INDEX_MARK, &current)?;
        let recovered = store.recover_kept(rebuild)?;
        if recovered.restored > 0 {
            log::warn!(
                "store: {} instance file(s) put back to the copy the index names",
                recovered.restored
            );
        }
        if rebuild && has_files {
            // Durable before the walk starts; removed (durably) once it has ended.
            store.meta.insert(REBUILD_MARK, &[1u8])?;
            store.db.flush()?;
            let report = store.reindex_observed(|n| progress.store(n, Ordering::Relaxed))?;
            log::warn!(
                "index rebuilt from files: {} instances in {} studies, {} unreadable",
                report.indexed,
                report.studies,
                report.unreadable
            );
        }
        if rebuild {
            store.meta.remove(REBUILD_MARK)?;
        }
        let moved = store.recover_moves()?;
        if moved > 0 {
            log::warn!("store: {moved} copy(ies) of instances moved between studies removed");
        }
        store
            .count
            .store(store.instances.len() as u64, Ordering::Relaxed);
        store.db.flush()?;
        Ok(store)
    }

    /// Where this open set an unreadable index aside (`<data>/index.broken-<time>`), if
    /// it did: the index, and what only it held (the audit trail), was rebuilt or started
    /// anew.
    pub fn index_set_aside(&self) -> Option<&Path> {
        self.set_aside.as_deref()
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
    /// their transaction, e.g. the result commit). A changed study record also updates
    /// the worklist index.
    pub fn notify(&self, change: Change) {
        if let Change::Study(study) = &change {
            if let Some(index) = self.worklist_index().as_mut() {
                if index.contains(&study.study_instance_uid) {
                    index.put_study(study);
                } else {
                    // A study new to the index may have a result already (one kept
                    // through a reindex, or written before the study was indexed).
                    index.put(worklist::Row {
                        study: (**study).clone(),
                        result: self.result_summary(&study.study_instance_uid),
                    });
                }
            }
        }
        let _ = self.changes.send(change);
    }

    fn worklist_index(&self) -> std::sync::RwLockWriteGuard<'_, Option<worklist::Index>> {
        self.worklist.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A page of the worklist: the studies `keep` accepts, urgent first, then the newest
    /// ([`worklist::Index::page`]). The index is built on first use (one pass over the
    /// studies and their latest results) and kept up to date by every commit after that.
    pub fn worklist_page(
        &self,
        keep: impl Fn(&worklist::Row) -> bool,
        limit: usize,
    ) -> Result<worklist::Page, StoreError> {
        if let Some(index) = self
            .worklist
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(index.page(keep, limit));
        }
        // Built under the write lock: a commit meanwhile waits, then applies its change
        // to the built index (whether or not the pass saw it, the outcome is the same).
        let mut guard = self.worklist_index();
        if guard.is_none() {
            *guard = Some(self.build_worklist()?);
        }
        Ok(guard
            .as_ref()
            .map(|index| index.page(keep, limit))
            .unwrap_or_default())
    }

    /// Counts studies per state from the worklist index (built first if need be), without
    /// reading a study record: what a scrape of `/metrics`, which needs no login, costs.
    pub fn indexed_state_counts(&self) -> Result<Vec<(StudyState, u64)>, StoreError> {
        if let Some(index) = self
            .worklist
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok(index.state_counts());
        }
        self.prepare_worklist()?;
        Ok(self
            .worklist
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|index| index.state_counts())
            .unwrap_or_default())
    }

    /// Builds the worklist index now, unless it is built (so the first worklist request
    /// does not wait for it).
    pub fn prepare_worklist(&self) -> Result<(), StoreError> {
        self.worklist_page(|_| false, 0).map(|_| ())
    }

    /// The worklist index from the study records and their latest results.
    fn build_worklist(&self) -> Result<worklist::Index, StoreError> {
        let mut index = worklist::Index::default();
        for study in self.studies()? {
            let result = self.result_summary(&study.study_instance_uid);
            index.put(worklist::Row { study, result });
        }
        Ok(index)
    }

    /// The worklist summary of a study's latest result (none when unreadable).
    fn result_summary(&self, study_uid: &str) -> Option<worklist::ResultSummary> {
        match results::latest_result(self, study_uid) {
            Ok(r) => r.map(|r| worklist::ResultSummary::of(&r)),
            Err(e) => {
                log::warn!("worklist: the result of study {study_uid} is unreadable: {e}");
                None
            }
        }
    }

    /// A result was committed: the worklist index shows it.
    fn index_result(&self, result: &crate::result::StudyResult) {
        if let Some(index) = self.worklist_index().as_mut() {
            index.put_result(
                &result.study_instance_uid,
                worklist::ResultSummary::of(result),
            );
        }
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

    /// The typed records of one of the record trees (users, sessions, audit, feedback).
    pub fn records<T: Serialize + DeserializeOwned>(
        &self,
        tree: records::RecordTree,
    ) -> Result<records::Records<T>, StoreError> {
        Ok(records::Records::new(self.tree(tree.name())?))
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
        // Given back if this future is dropped before the flush ends.
        let due = self.kept.take_due();
        // sled's flush_async runs on sled's own small thread pool; under load, with several
        // associations flushing at once, it was seen to stall every caller. A blocking
        // flush on tokio's blocking pool does the same work without that pool.
        let db = self.db.clone();
        let flushed = tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Io {
                what: "index flush task".into(),
                source: std::io::Error::other(e.to_string()),
            })
            .and_then(|r| r.map_err(StoreError::from));
        self.after_flush(flushed.is_ok(), due.finish());
        flushed.map(|_| ())
    }

    /// Blocking flush, for commands and shutdown.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let due = self.kept.take();
        let flushed = self.db.flush();
        self.after_flush(flushed.is_ok(), due);
        flushed?;
        Ok(())
    }

    /// Drops the copies kept for replacements a flush made durable, or gives them back
    /// when it failed.
    fn after_flush(&self, ok: bool, due: Vec<PathBuf>) {
        if ok {
            self.drop_durably_replaced(due);
        } else {
            self.kept.put_back(due);
        }
    }

    /// One instance by SOP Instance UID.
    pub fn instance(&self, sop_uid: &str) -> Result<Option<InstanceRecord>, StoreError> {
        get_json(&self.instances, sop_uid)
    }

    /// One study by Study Instance UID.
    pub fn study(&self, study_uid: &str) -> Result<Option<StudyRecord>, StoreError> {
        get_json(&self.studies, study_uid)
    }

    /// A handle that names the patient of a study, for the audit trail
    /// ([`StudyPatients`]).
    pub fn study_patients(&self) -> StudyPatients {
        StudyPatients {
            studies: self.studies.clone(),
        }
    }

    /// Every study (unordered). A record that does not decode (written by a newer
    /// release before a rollback, or damaged) is logged and passed over: one bad record
    /// must not stop the listings, retention and the health check that read them all.
    pub fn studies(&self) -> Result<Vec<StudyRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.studies.iter() {
            let (k, v) = kv?;
            match decode(&k, &v) {
                Ok(study) => out.push(study),
                Err(e) => log::error!("index: passing over a study record: {e}"),
            }
        }
        Ok(out)
    }

    /// Reads every study record without decoding it (the health check: the index
    /// answers), returning how many there are.
    pub fn study_records_read(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for kv in self.studies.iter() {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    /// The instances of a study, in (series number, instance number) order.
    pub fn instances_of(&self, study_uid: &str) -> Result<Vec<InstanceRecord>, StoreError> {
        let mut prefix = study_uid.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for kv in self.study_instances.scan_prefix(&prefix) {
            let (k, _) = kv?;
            let sop = String::from_utf8_lossy(&k[prefix.len()..]).to_string();
            match self.instance(&sop) {
                Ok(Some(rec)) => out.push(rec),
                Ok(None) => {}
                // As in `studies`: one bad record does not hide the study's others.
                Err(e @ StoreError::Corrupt { .. }) => {
                    log::error!("index: passing over an instance record: {e}")
                }
                Err(e) => return Err(e),
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

    /// Every study in C-FIND's response order (Patient ID, Study Date, Study Time, Study
    /// Instance UID), read one at a time from the order keys of [`qr_index`]: a caller that
    /// stops early has read only what it used. Not a snapshot: a study whose order
    /// changes while the walk runs comes where its record now belongs, once at most (or
    /// not at all, when that place was already passed).
    pub fn studies_in_query_order(
        &self,
    ) -> impl Iterator<Item = Result<StudyRecord, StoreError>> + '_ {
        qr_index::in_order(&self.qr_keys).filter_map(move |kv| {
            let (key, uid) = match kv {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            match self.study(&uid) {
                Ok(Some(s)) if qr_index::order_key(&s) == key.as_ref() => Some(Ok(s)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        })
    }

    /// Study UIDs whose `kind` query key equals `value` exactly ([`qr_index`]), at most
    /// `max` (as for the two below).
    pub fn query_exact(
        &self,
        kind: qr_index::Kind,
        value: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        Ok(qr_index::exact(&self.qr_keys, kind, value, max)?)
    }

    /// Study UIDs whose `kind` query key starts with `prefix`.
    pub fn query_prefixed(
        &self,
        kind: qr_index::Kind,
        prefix: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        Ok(qr_index::prefixed(&self.qr_keys, kind, prefix, max)?)
    }

    /// Study UIDs whose `kind` query key lies in `lo..=hi` (either bound open when empty).
    pub fn query_range(
        &self,
        kind: qr_index::Kind,
        lo: &str,
        hi: &str,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        Ok(qr_index::range(&self.qr_keys, kind, lo, hi, max)?)
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

/// Whether an error opening the index comes from its surroundings (the disk full or
/// read-only, a permission, the process's or system's open-file limit, memory) rather
/// than from what the index holds.
fn is_environmental(e: &std::io::Error) -> bool {
    use nix::libc;
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull
            | std::io::ErrorKind::PermissionDenied
            | std::io::ErrorKind::ReadOnlyFilesystem
            | std::io::ErrorKind::OutOfMemory
    ) || matches!(
        e.raw_os_error(),
        Some(
            libc::ENOSPC
                | libc::EACCES
                | libc::EPERM
                | libc::EMFILE
                | libc::ENFILE
                | libc::EROFS
                | libc::ENOMEM
                | libc::EDQUOT
        )
    )
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

/// Gives a new (or lost) index its schema version together with the rebuild mark, in one
/// batch: sled's background flush may persist the version before the rebuild from the
/// files ends, and a version without the mark would pass an empty index for a valid one
/// at the next open.
fn stamp_new_index(meta: &sled::Tree) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    batch.insert(REBUILD_MARK, &[1u8]);
    batch.insert("schema_version", &SCHEMA_VERSION.to_be_bytes());
    meta.apply_batch(batch)?;
    Ok(())
}

/// Deserializes a record, naming its key on failure.
pub fn decode<T: DeserializeOwned>(key: &[u8], value: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).to_string(),
        reason: e.to_string(),
    })
}

/// Reads one JSON record from a tree.
/// Names the patient of a study as the store holds it now, for the audit trail's records
/// (cheap to clone; reads one study record per call).
#[derive(Debug, Clone)]
pub struct StudyPatients {
    studies: sled::Tree,
}

impl StudyPatients {
    /// The Patient ID of study `study_uid`, as `ID^^^ISSUER` (HL7 CX) when it has an Issuer
    /// of Patient ID; `None` for a study not held or without a Patient ID.
    pub fn patient_of(&self, study_uid: &str) -> Option<String> {
        let study: StudyRecord = get_json(&self.studies, study_uid).ok()??;
        crate::model::patient_cx(&study.patient_id, &study.issuer_of_patient_id)
    }
}

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

/// Tells the outboxes of `batches` that a transaction wrote their entries.
fn batches_written(batches: &[outbox::Batch]) {
    for b in batches {
        b.outbox.changed();
    }
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
    use crate::model::StudyState;

    fn inst(study: &str, sop: &str) -> InstanceRecord {
        InstanceRecord {
            sop_instance_uid: sop.into(),
            study_instance_uid: study.into(),
            series_instance_uid: format!("{study}.1"),
            received_at: 100,
            ..Default::default()
        }
    }

    /// A second open of a store in use (the CLI while the daemon runs or stops) is
    /// refused before it touches anything: the running one's incoming files stay.
    #[test]
    fn an_open_of_a_store_in_use_leaves_its_incoming_files() {
        let dir = tempfile::tempdir().unwrap();
        let _running = Store::open(dir.path()).unwrap();
        let part = dir.path().join("tmp").join("1234-1.part");
        std::fs::write(&part, b"a C-STORE arriving").unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Locked(_))
        ));
        assert!(
            part.is_file(),
            "the running store's incoming file was removed"
        );
    }

    /// The studies come one at a time in response order, each at the place its record
    /// now gives it: a study whose patient changed comes once, in its new place; a key
    /// left from an old place, or of a study that is gone, is passed over; a walk stopped
    /// early has read only the studies it gave.
    #[test]
    fn studies_come_in_query_order_each_once_at_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (study, pid) in [("1.1", "C"), ("1.2", "A"), ("1.3", "B")] {
            let attrs = StudyRecord {
                patient_id: pid.into(),
                ..Default::default()
            };
            store
                .commit_instance(&inst(study, &format!("{study}.1")), &attrs)
                .unwrap();
        }
        let order = |store: &Store| -> Vec<String> {
            store
                .studies_in_query_order()
                .map(|s| s.unwrap().study_instance_uid)
                .collect()
        };
        assert_eq!(order(&store), ["1.2", "1.3", "1.1"]);
        // A resend corrects the patient of 1.2: it moves behind the others.
        let moved = StudyRecord {
            patient_id: "D".into(),
            ..Default::default()
        };
        store
            .commit_instance(&inst("1.2", "1.2.2"), &moved)
            .unwrap();
        assert_eq!(order(&store), ["1.3", "1.1", "1.2"]);
        // Stray keys: the old place of 1.2 and a study that is not there.
        let old = StudyRecord {
            study_instance_uid: "1.2".into(),
            patient_id: "A".into(),
            ..Default::default()
        };
        let gone = StudyRecord {
            study_instance_uid: "1.9".into(),
            ..Default::default()
        };
        for k in [qr_index::order_key(&old), qr_index::order_key(&gone)] {
            store.qr_keys.insert(k, &[]).unwrap();
        }
        assert_eq!(order(&store), ["1.3", "1.1", "1.2"]);
        let first: Vec<String> = store
            .studies_in_query_order()
            .take(1)
            .map(|s| s.unwrap().study_instance_uid)
            .collect();
        assert_eq!(first, ["1.3"]);
    }

    /// Values a sender controls cannot confuse the order keys or the look-up keys: a
    /// Patient ID with a NUL inside and one that is a prefix of another still give each
    /// study once, in order, and an exact look-up finds only its own study.
    #[test]
    fn hostile_values_keep_one_place_per_study() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (study, pid) in [("1.1", "A\0B"), ("1.2", "A"), ("1.3", "A\0"), ("1.4", "AB")] {
            let attrs = StudyRecord {
                patient_id: pid.into(),
                study_date: "20260101".into(),
                ..Default::default()
            };
            store
                .commit_instance(&inst(study, &format!("{study}.1")), &attrs)
                .unwrap();
        }
        let order: Vec<String> = store
            .studies_in_query_order()
            .map(|s| s.unwrap().study_instance_uid)
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, ["1.1", "1.2", "1.3", "1.4"], "{order:?}");
        assert_eq!(order.last().map(String::as_str), Some("1.4"), "{order:?}");
        assert_eq!(
            store
                .query_exact(qr_index::Kind::PatientId, "A\0B", usize::MAX)
                .unwrap(),
            ["1.1"]
        );
        assert_eq!(
            store
                .query_exact(qr_index::Kind::PatientId, "A", usize::MAX)
                .unwrap(),
            ["1.2"]
        );
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
                &[],
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
                &[],
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

    /// One study or instance record that does not decode (a newer release's, before a
    /// rollback) is passed over: the others are listed, the health check (which reads
    /// every record) passes, and a retention pass runs, instead of every one of them
    /// failing on it (the daemon restarted by its watchdog again and again).
    #[tokio::test]
    async fn a_record_that_does_not_decode_stops_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(dir.path()).unwrap());
        for (study, sop) in [("1.2", "1.2.1"), ("1.2", "1.2.2"), ("1.3", "1.3.1")] {
            store
                .commit_instance(&inst(study, sop), &StudyRecord::default())
                .unwrap();
        }
        store
            .studies
            .insert("1.3", &b"{\"from\": \"a newer release\"}"[..])
            .unwrap();
        store.instances.insert("1.2.2", &b"not json"[..]).unwrap();
        let studies = store.studies().unwrap();
        assert_eq!(studies.len(), 1, "{studies:?}");
        assert_eq!(store.instances_of("1.2").unwrap().len(), 1);
        assert_eq!(store.study_records_read().unwrap(), 2);
        store
            .clone()
            .answers_within(std::time::Duration::from_secs(10))
            .await
            .unwrap();
        let audit = crate::audit::Audit::open(&store).unwrap();
        // A pass by age reads every study (none is old enough here to lose its pixels).
        crate::retention::prune(&store, &audit, 1, 0, 200).unwrap();
    }

    /// An index that cannot be opened for its surroundings (disk full, a permission, the
    /// open-file limit) is kept, not set aside and rebuilt: only it holds the reports owed
    /// to the RIS, the accounts and the audit chain. What it holds being unreadable is
    /// another matter (`audit::tests::a_set_aside_index_is_named_in_the_break`).
    #[test]
    fn only_an_index_broken_in_itself_is_set_aside() {
        use nix::libc;
        for errno in [
            libc::ENOSPC,
            libc::EACCES,
            libc::EMFILE,
            libc::ENFILE,
            libc::EROFS,
        ] {
            let e = std::io::Error::from_raw_os_error(errno);
            assert!(is_environmental(&e), "{e}");
        }
        for kind in [
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::InvalidData,
            std::io::ErrorKind::NotADirectory,
            std::io::ErrorKind::AlreadyExists,
        ] {
            assert!(!is_environmental(&std::io::Error::from(kind)), "{kind:?}");
        }
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

    /// An instance sent again under another study leaves the old one: its count drops, its
    /// query keys follow, and its old file is removed once asked (after the flush), never
    /// the file the index names.
    #[test]
    fn an_instance_sent_again_under_another_study_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let at = |study: &str| InstanceRecord {
            path: format!("files/{study}/9.1.dcm"),
            ..inst(study, "9.1")
        };
        for study in ["1.5", "1.6"] {
            let f = dir.path().join(format!("files/{study}/9.1.dcm"));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(&f, b"x").unwrap();
        }
        let named = |name: &str| StudyRecord {
            patient_name: name.into(),
            ..Default::default()
        };
        store.commit_instance(&at("1.5"), &named("MOVEA")).unwrap();
        store
            .commit_instance(&inst("1.5", "9.2"), &named("MOVEA"))
            .unwrap();
        let before = store.instance("9.1").unwrap().unwrap();
        let keys_before = store.qr_keys.len();
        store.commit_instance(&at("1.6"), &named("MOVEB")).unwrap();
        assert_eq!(store.study("1.5").unwrap().unwrap().instances, 1);
        assert_eq!(store.study("1.6").unwrap().unwrap().instances, 1);
        let left: Vec<String> = store
            .instances_of("1.5")
            .unwrap()
            .into_iter()
            .map(|i| i.sop_instance_uid)
            .collect();
        assert_eq!(left, ["9.2"]);
        assert!(
            store.qr_keys.len() > keys_before,
            "the new study is queryable"
        );
        // The current file is never removed; the superseded one is.
        store
            .remove_superseded(&store.instance("9.1").unwrap().unwrap())
            .unwrap();
        assert!(dir.path().join("files/1.6/9.1.dcm").exists());
        store.remove_superseded(&before).unwrap();
        assert!(!dir.path().join("files/1.5/9.1.dcm").exists());
        assert!(dir.path().join("files/1.6/9.1.dcm").exists());
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
