//! Instances in the index: commit one with its study (received or generated), place a
//! staged file and index it, remove a superseded copy; a rejection note with the objects
//! it withdraws; and the ledgers of the objects this box generated and rejected. (Pixel data is marked pruned by [`super::pruning`].)

use super::files;
use super::header;
use super::outbox;
use super::qr_index;
use super::{
    batch_writes, decode, encode, io_err, is_generated, link_key, link_key_bytes, unwrap_tx,
    write_extra, Change, ExtraWrite, InstanceCommit, Store, StoreError, GENERATED_LEDGER,
    REJECTED_LEDGER,
};
use crate::model::{InstanceRecord, StudyRecord, StudyState};
use sled::transaction::{
    ConflictableTransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;
use std::sync::atomic::Ordering;

/// Within a commit: when `prev` (the stored record the new one replaces) is linked to
/// another study than `instance`, unlinks it from that study, whose count and query keys
/// follow; returns that study as it is now. A record that cannot be read is left alone.
fn leave_previous_study(
    prev: &[u8],
    instance: &InstanceRecord,
    studies: &TransactionalTree,
    links: &TransactionalTree,
    qr_keys: &TransactionalTree,
) -> Result<Option<StudyRecord>, UnabortableTransactionError> {
    let Ok(prev) = serde_json::from_slice::<InstanceRecord>(prev) else {
        return Ok(None);
    };
    if prev.study_instance_uid == instance.study_instance_uid {
        return Ok(None);
    }
    let unlinked = links.remove(link_key_bytes(
        &prev.study_instance_uid,
        &prev.sop_instance_uid,
    ))?;
    let old_key = prev.study_instance_uid.as_bytes();
    let before = studies
        .get(old_key)?
        .and_then(|v| serde_json::from_slice::<StudyRecord>(&v).ok());
    let (Some(_), Some(before)) = (unlinked, before) else {
        return Ok(None);
    };
    let mut after = before.clone();
    after.instances = after.instances.saturating_sub(1);
    studies.insert(old_key, encode(&after))?;
    qr_index::update(qr_keys, Some(&before), &after)?;
    Ok(Some(after))
}

/// Within a commit: marks the generated object `sop` of study `study_uid` rejected and
/// unlinks it from the study; returns whether it was linked (the study's count drops by
/// one). Anything else (unknown, received, another study's, already rejected, a record
/// that cannot be read) is left alone.
fn reject(
    instances: &TransactionalTree,
    links: &TransactionalTree,
    study_uid: &str,
    sop: &str,
) -> Result<bool, UnabortableTransactionError> {
    let Some(v) = instances.get(sop.as_bytes())? else {
        return Ok(false);
    };
    let Ok(mut rec) = serde_json::from_slice::<InstanceRecord>(&v) else {
        return Ok(false);
    };
    if !rec.generated || rec.rejected || rec.study_instance_uid != study_uid {
        return Ok(false);
    }
    rec.rejected = true;
    instances.insert(sop.as_bytes(), encode(&rec))?;
    Ok(links.remove(link_key_bytes(study_uid, sop))?.is_some())
}

/// In tests, makes the next index commit of [`Store::place_and_commit`] for this SOP
/// Instance UID fail as a full disk would; never set outside tests.
#[cfg(test)]
pub(crate) static FAIL_COMMIT_OF: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The failure a test asked for ([`FAIL_COMMIT_OF`]); always `None` outside tests.
fn injected_commit_failure(_sop: &str) -> Option<StoreError> {
    #[cfg(test)]
    {
        let mut asked = FAIL_COMMIT_OF.lock().unwrap_or_else(|p| p.into_inner());
        if asked.as_deref() == Some(_sop) {
            *asked = None;
            return Some(StoreError::Io {
                what: "commit (injected by a test)".into(),
                source: std::io::Error::other("no space left on device"),
            });
        }
    }
    None
}

impl Store {
    /// Records an instance and updates its study, in one transaction. Not durable until
    /// [`Store::flush`].
    pub fn commit_instance(
        &self,
        instance: &InstanceRecord,
        study_attrs: &StudyRecord,
    ) -> Result<InstanceCommit, StoreError> {
        self.commit_instance_with(instance, study_attrs, &[], &[])
    }

    /// [`Store::commit_instance`] with `extra` writes in the same transaction, and the
    /// generated objects of the same study named by `rejects` (SOP Instance UIDs) taken
    /// out of it: the instance is the rejection note that withdraws them.
    pub(super) fn commit_instance_with(
        &self,
        instance: &InstanceRecord,
        study_attrs: &StudyRecord,
        extra: &[ExtraWrite],
        rejects: &[String],
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
            // Only this box replaces what it generated (a resend of its own object).
            if let Some(prev) = &previous {
                if !instance.generated && is_generated(prev) {
                    return Err(ConflictableTransactionError::Abort(StoreError::Protected(
                        instance.sop_instance_uid.clone(),
                    )));
                }
            }
            // A resend may move an instance to another study: unlink it from the old one,
            // whose count and query keys follow (its file goes once this is durable, see
            // `Store::remove_superseded`).
            let left = match &previous {
                Some(prev) => leave_previous_study(prev, instance, studies, links, qr_keys)?,
                None => None,
            };
            let old: Option<StudyRecord> = studies
                .get(study_key)?
                .map(|v| decode(study_key, &v))
                .transpose()
                .map_err(ConflictableTransactionError::Abort)?;
            let mut study = match &old {
                Some(s) => s.clone(),
                None => StudyRecord {
                    study_instance_uid: instance.study_instance_uid.clone(),
                    first_received: instance.received_at,
                    ..Default::default()
                },
            };
            // An object this box made never changes whose study it is: a rejection note
            // carries the former patient of the objects it withdraws.
            let patient_replaced = if instance.generated {
                header::fill_study_gaps(&mut study, study_attrs);
                false
            } else {
                header::merge_study(&mut study, study_attrs)
            };
            if links.insert(link_key.as_slice(), &[])?.is_none() {
                study.instances += 1;
            }
            for sop in rejects {
                if reject(instances, links, &instance.study_instance_uid, sop)? {
                    study.instances = study.instances.saturating_sub(1);
                }
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
            Ok((
                InstanceCommit {
                    new_instance,
                    study,
                    patient_replaced,
                    moved_from: None,
                },
                left.clone(),
            ))
        });
        let (commit, left) = unwrap_tx(result)?;
        if commit.new_instance {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(left) = left {
            self.notify(Change::Study(Box::new(left)));
        }
        self.notify(Change::Study(Box::new(commit.study.clone())));
        Ok(commit)
    }

    /// Places a complete, fsync'd file whose header was read, and indexes it in one
    /// transaction (not durable until [`Store::flush`]); returns its record and what the
    /// commit did to its study. Received instances and the
    /// objects this box generates both come in this way; `batches` commit in the same
    /// transaction (a generated object's push entries).
    pub fn place_and_commit(
        &self,
        staged: files::StagedFile,
        header: &header::Header,
        source_ae: &str,
        generated: bool,
        batches: &[outbox::Batch],
    ) -> Result<(InstanceRecord, InstanceCommit), StoreError> {
        self.place(staged, header, source_ae, generated, batches, &[])
    }

    /// [`Store::place_and_commit`] of a rejection note this box made, which withdraws the
    /// generated objects `rejects` (SOP Instance UIDs) of its study in the same
    /// transaction: each is marked rejected and leaves the study (no longer listed,
    /// counted, queried or retrieved; its record and file stay as what was sent). Objects
    /// of another study, not generated, or already rejected are left as they are.
    /// The rejections are in their ledger before the note is indexed: a rebuilt index
    /// keeps the objects out of their study.
    pub fn place_rejection_note(
        &self,
        staged: files::StagedFile,
        header: &header::Header,
        source_ae: &str,
        rejects: &[String],
    ) -> Result<InstanceRecord, StoreError> {
        let sops: Vec<&str> = rejects.iter().map(String::as_str).collect();
        self.append_ledger(REJECTED_LEDGER, &sops, "rejected objects")?;
        Ok(self.place(staged, header, source_ae, true, &[], rejects)?.0)
    }

    fn place(
        &self,
        staged: files::StagedFile,
        header: &header::Header,
        source_ae: &str,
        generated: bool,
        batches: &[outbox::Batch],
        rejects: &[String],
    ) -> Result<(InstanceRecord, InstanceCommit), StoreError> {
        let sop = &header.instance.sop_instance_uid;
        // Held until the record is committed: retention never removes a file placed here
        // while the index still names the copy it replaces (see `pruning`).
        let _placing = self.instance_locks.hold(sop);
        let previous = self.instance(sop)?;
        // Checked before the file is placed too: the placement would overwrite ours.
        if !generated && previous.as_ref().is_some_and(|i| i.generated) {
            return Err(StoreError::Protected(sop.clone()));
        }
        let extra = batch_writes(batches)?;
        let (size, file_id) = (staged.size(), staged.id());
        let (study_uid, sop_uid) = (
            &header.instance.study_instance_uid,
            &header.instance.sop_instance_uid,
        );
        // An earlier copy at the same place is kept until the commit is durable: a commit
        // that fails (a full disk) puts it back, and so does the next start when a crash
        // lost the commit (`kept`), so the file always holds what the index says.
        // Sent before under another study: a durable note names both files until the
        // earlier one is removed (`moves`), so a stop at any point leaves one copy.
        let target = files::FileArea::relative_path(study_uid, sop_uid)
            .to_string_lossy()
            .into_owned();
        // An object of this box's is in the ledger before its file is placed: a reindex
        // that finds the file then knows it as ours, whatever stopped the commit.
        if generated {
            self.note_generated(sop)?;
        }
        let moving = previous.as_ref().filter(|p| p.path != target);
        if let Some(p) = moving {
            self.note_move(sop, &p.path, &target)?;
        }
        let kept = self
            .files
            .keep_previous(study_uid, sop_uid)
            .map_err(io_err("keep the earlier copy"))?;
        let rel = match self.files.place(staged, study_uid, sop_uid) {
            Ok(rel) => rel,
            Err(e) => {
                // Renamed into place, then its folder's sync failed: the earlier copy
                // goes back (or the new file goes), so the files hold what the index says.
                let undone = match e.placed {
                    true => self.files.undo_place(
                        &super::files::FileArea::relative_path(study_uid, sop_uid),
                        kept,
                    ),
                    false => self.files.drop_kept(kept),
                };
                if let Err(undo) = undone {
                    log::error!("store: placing {sop} failed and could not be undone: {undo}");
                }
                let e = e.source;
                if let Some(p) = moving {
                    self.clear_move(sop, &p.path)?;
                }
                return Err(io_err("place the file")(e));
            }
        };
        let mut rec = header.instance.clone();
        rec.file_id = file_id;
        rec.path = rel.to_string_lossy().to_string();
        rec.size = size;
        rec.received_at = crate::clock::now_secs();
        rec.source_ae = source_ae.to_string();
        // The caller says whether this box made it; a header claiming to come from this
        // box proves nothing.
        rec.generated = generated;
        let committed = match injected_commit_failure(sop) {
            Some(e) => Err(e),
            None => self.commit_instance_with(&rec, &header.study, &extra, rejects),
        };
        match committed {
            Ok(mut commit) => {
                super::batches_written(batches);
                commit.moved_from = moving.cloned();
                // Dropped by the flush that makes this commit durable.
                if let Some(kept) = kept {
                    self.kept.add(kept);
                }
                Ok((rec, commit))
            }
            Err(e) => {
                match self.files.undo_place(&rel, kept) {
                    Ok(()) if moving.is_some() => {
                        let from = moving.map(|p| p.path.as_str()).unwrap_or_default();
                        if let Err(clear) = self.clear_move(sop, from) {
                            log::error!("store: the move note of {sop} stays ({clear})");
                        }
                    }
                    Ok(()) => {}
                    Err(undo) => log::error!(
                        "store: the index commit of {sop} failed ({e}) and its file could not \
                         be put back ({undo}); `duli reindex` restores the agreement"
                    ),
                }
                Err(e)
            }
        }
    }

    /// The distinct trees `extra` writes to, by name, opened (for a transaction over them).
    pub(super) fn extra_trees(
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

    /// Appends `sop` to the ledger of the objects this box generated (fsync'd before the
    /// object is indexed): a rebuilt index takes "generated" from it, never from a header,
    /// which any peer can write.
    pub(super) fn note_generated(&self, sop: &str) -> Result<(), StoreError> {
        self.append_ledger(GENERATED_LEDGER, &[sop], "generated objects")
    }

    /// The SOP Instance UIDs of the objects this box generated, from its ledger.
    pub(super) fn generated_ledger(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        self.read_ledger(GENERATED_LEDGER, "generated objects")
    }

    /// The SOP Instance UIDs of the generated objects a rejection note withdrew, from
    /// their ledger.
    pub(super) fn rejected_ledger(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        self.read_ledger(REJECTED_LEDGER, "rejected objects")
    }

    /// Appends `sops`, one per line, to the ledger `name` in the data directory, synced
    /// before it returns.
    fn append_ledger(&self, name: &str, sops: &[&str], what: &str) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.root().join(name);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(format!("open the ledger of {what}")))?;
        let lines: String = sops.iter().map(|s| format!("{s}\n")).collect();
        f.write_all(lines.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(io_err(format!("write the ledger of {what}")))
    }

    fn read_ledger(
        &self,
        name: &str,
        what: &str,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        match std::fs::read_to_string(self.root().join(name)) {
            Ok(text) => Ok(text.lines().map(str::to_string).collect()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(io_err(format!("read the ledger of {what}"))(e)),
        }
    }
}
