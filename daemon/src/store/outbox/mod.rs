//! The durable outbox: every message a study result owes to a peer, on sled (tree
//! `outbox`), until that peer acknowledges it. Kept by the store; the deliver stage
//! drains it (re-exported as `store::outbox`).
//!
//! - **Same transaction as the result.** A [`Batch`] handed to the store's result or
//!   object commit ([`super::results::commit_result`], [`super::Store::place_and_commit`])
//!   is written inside that transaction; once it is durable [`Outbox::committed`] updates
//!   the counters and wakes the destinations' workers.
//! - **In order per destination.** Keys are `destination 0x00 id` with `id` from sled's
//!   monotonic `generate_id`, so a prefix scan yields a destination's queue in commit order;
//!   [`Outbox::head`] is the first entry that is not dead (head-of-line: later entries wait).
//! - **Removal only on a positive acknowledgement** ([`Outbox::mark_delivered`]); transient
//!   failures back off with jitter ([`Outbox::mark_retry`]); explicit refusals count towards
//!   `max_rejections`, after which the entry is dead: kept, listed, re-queueable
//!   ([`Outbox::retry`]).
//! - **Bounded.** [`Outbox::is_near_full`] raises the alarm (log + metric);
//!   [`Outbox::is_full`] is what the receive side checks to answer A700 so that no entry is
//!   ever dropped: entries of results already received are always accepted.
//!
//! [`entry`] holds what an entry is and what `duli outbox` shows of it; [`limits`] the fill
//! limits, the back-off and the counters per destination.

pub mod entry;
pub mod limits;

pub use entry::{
    render_table, DeliveredRecord, DeliveryStatus, Destination, Entry, EntryState, Kind, NewEntry,
    Payload, RetrySelector, SelectorError,
};
pub use limits::{Backoff, DestStats, Fill, OutboxLimits};

use crate::clock::now_millis;
use crate::store::{decode, encode};
use entry::EntryHead;
use limits::Counters;
use sled::transaction::{TransactionalTree, UnabortableTransactionError};
use sled::Transactional;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Name of the sled tree holding pending and dead entries.
pub const TREE: &str = "outbox";
/// Name of the sled tree recording what was delivered (per report and destination).
pub const DELIVERED_TREE: &str = "outbox_delivered";

/// Errors of the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database failed.
    #[error("outbox database: {0}")]
    Db(#[from] sled::Error),
    /// An entry cannot be decoded.
    #[error("outbox entry {key} is corrupt: {reason}")]
    Corrupt {
        /// The entry's key, printable.
        key: String,
        /// The decoding error.
        reason: String,
    },
    /// The entry is no longer in the outbox (already delivered).
    #[error("outbox entry {0} not found")]
    NotFound(u64),
}

impl From<crate::store::StoreError> for OutboxError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Index(e) => OutboxError::Db(e),
            crate::store::StoreError::Corrupt { key, reason } => {
                OutboxError::Corrupt { key, reason }
            }
            other => OutboxError::Corrupt {
                key: String::new(),
                reason: other.to_string(),
            },
        }
    }
}

/// A raw (key, value) record of the outbox tree.
pub type Record = (Vec<u8>, Vec<u8>);

/// Entries to write in the same transaction as another commit (a result, a generated
/// object). After the commit is durable, call [`Outbox::committed`] with `entries`.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    /// The outbox the entries join.
    pub outbox: &'a Outbox,
    /// The entries.
    pub entries: &'a [NewEntry],
}

impl Batch<'_> {
    /// The writes of the batch, with ids allocated in order, for the store's transaction.
    pub(super) fn writes(&self) -> Result<Vec<super::ExtraWrite>, OutboxError> {
        Ok(self
            .outbox
            .prepare(self.entries)?
            .into_iter()
            .map(|(key, value)| super::ExtraWrite {
                tree: TREE.to_string(),
                key,
                value,
            })
            .collect())
    }
}

/// The outbox. Share it behind an `Arc`: workers, the result commit and the CLI use it.
#[derive(Debug)]
pub struct Outbox {
    db: sled::Db,
    tree: sled::Tree,
    delivered: sled::Tree,
    limits: OutboxLimits,
    entries: AtomicU64,
    bytes: AtomicU64,
    alarm: AtomicBool,
    notifiers: Mutex<HashMap<Destination, Arc<Notify>>>,
    counters: Mutex<BTreeMap<Destination, Counters>>,
    /// Bumped after every write to the tree: a tally of an older generation is stale.
    generation: AtomicU64,
    /// The last tally of the tree; computed by one caller at a time.
    tally: Mutex<Option<Tally>>,
}

/// What the outbox tree holds per destination, as of one generation of its writes:
/// metrics, the console and the health report read it however often they are asked,
/// and the tree is read again only after it changed.
#[derive(Debug, Clone)]
struct Tally {
    generation: u64,
    per_dest: BTreeMap<Destination, DestTally>,
}

/// One destination's entries by state, and when its oldest live one was committed.
#[derive(Debug, Clone, Copy, Default)]
struct DestTally {
    queued: u64,
    retrying: u64,
    dead: u64,
    oldest_live: Option<i64>,
}

impl Outbox {
    /// Opens the outbox trees in `db` and counts what they hold ([`super::Store::outbox`]).
    pub(super) fn open(db: &sled::Db, limits: OutboxLimits) -> Result<Outbox, OutboxError> {
        let outbox = Outbox {
            tree: db.open_tree(TREE)?,
            delivered: db.open_tree(DELIVERED_TREE)?,
            db: db.clone(),
            limits,
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            alarm: AtomicBool::new(false),
            notifiers: Mutex::new(HashMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            tally: Mutex::new(None),
        };
        let (mut n, mut b) = (0u64, 0u64);
        for kv in outbox.tree.iter() {
            let (k, v) = kv?;
            n += 1;
            b += match decode::<Entry>(&k, &v) {
                Ok(e) => weight(&e.payload, &e.report_id),
                Err(_) => v.len() as u64,
            };
        }
        outbox.entries.store(n, Ordering::Relaxed);
        outbox.bytes.store(b, Ordering::Relaxed);
        outbox.check_alarm();
        Ok(outbox)
    }

    /// Name of the outbox tree (for writes committed by another stage's transaction).
    pub fn tree_name(&self) -> &'static str {
        TREE
    }

    /// Writes `batch` inside a transaction on the outbox tree; returns the new ids. Call
    /// [`Outbox::committed`] with the same batch once the transaction has committed.
    ///
    /// ```ignore
    /// let ids = (&results, &outbox.tree).transaction(|(results, ob)| {
    ///     results.insert(key, value)?;
    ///     Ok(Outbox::enqueue_in(ob, &batch)?)
    /// })?;
    /// outbox.committed(&batch);
    /// ```
    pub(in crate::store) fn enqueue_in(
        tx: &TransactionalTree,
        batch: &[NewEntry],
    ) -> Result<Vec<u64>, UnabortableTransactionError> {
        let now = now_millis();
        let mut ids = Vec::with_capacity(batch.len());
        for new in batch {
            let id = tx.generate_id()?;
            let entry = Entry::new(id, new, now);
            tx.insert(entry.key(), encode(&entry))?;
            ids.push(id);
        }
        Ok(ids)
    }

    /// The (key, value) records of `batch` for a transaction written by someone else (the
    /// result commit writes them beside the result): ids are allocated here, in order.
    /// Call [`Outbox::committed`] with the same batch once the transaction has committed.
    pub fn prepare(&self, batch: &[NewEntry]) -> Result<Vec<Record>, OutboxError> {
        let now = now_millis();
        batch
            .iter()
            .map(|new| {
                let id = self.db.generate_id()?;
                let entry = Entry::new(id, new, now);
                Ok((entry.key(), encode(&entry)))
            })
            .collect()
    }

    /// Tells the outbox that a batch written with `Outbox::enqueue_in` has committed:
    /// updates the fill level (raising the alarm when near full) and wakes the workers.
    pub fn committed(&self, batch: &[NewEntry]) {
        self.changed();
        let bytes: u64 = batch.iter().map(|e| weight(&e.payload, &e.report_id)).sum();
        self.entries
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.check_alarm();
        for new in batch {
            self.notifier(&new.dest).notify_one();
        }
    }

    /// Enqueues a batch in a transaction of its own (feedback, or anything not tied to a
    /// result commit) and wakes the workers.
    pub fn enqueue(&self, batch: &[NewEntry]) -> Result<Vec<u64>, OutboxError> {
        let ids = self
            .tree
            .transaction(|tx| Ok(Outbox::enqueue_in(tx, batch)?))
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => OutboxError::Db(e),
                sled::transaction::TransactionError::Abort(()) => {
                    OutboxError::Db(sled::Error::ReportableBug("outbox enqueue aborted".into()))
                }
            })?;
        self.committed(batch);
        Ok(ids)
    }

    /// The wake-up signal of a destination's worker (registers the destination for
    /// metrics).
    pub fn notifier(&self, dest: &Destination) -> Arc<Notify> {
        let mut map = self
            .notifiers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(dest.clone())
            .or_default();
        map.entry(dest.clone()).or_default().clone()
    }

    /// The first entry of `dest` that is not dead, due or not: the worker sends it when
    /// `next_attempt_at` has come. Undecodable entries are logged and skipped.
    pub fn head(&self, dest: &Destination) -> Result<Option<Entry>, OutboxError> {
        for kv in self.tree.scan_prefix(dest.prefix()) {
            let (k, v) = kv?;
            // Dead entries are passed over on their header, their payloads left unread.
            match decode::<EntryHead>(&k, &v).and_then(|h| match h.state {
                EntryState::Dead => Ok(None),
                _ => decode::<Entry>(&k, &v).map(Some),
            }) {
                Ok(None) => continue,
                Ok(Some(e)) => return Ok(Some(e)),
                Err(e) => log::error!("outbox: skipping undecodable entry: {e}"),
            }
        }
        Ok(None)
    }

    /// The head entry of `dest` if it is due at `now_ms`.
    pub fn next_due(&self, dest: &Destination, now_ms: i64) -> Result<Option<Entry>, OutboxError> {
        Ok(self.head(dest)?.filter(|e| e.next_attempt_at <= now_ms))
    }

    /// Removes an entry after the peer's positive acknowledgement and records the delivery.
    pub fn mark_delivered(&self, entry: &Entry) -> Result<(), OutboxError> {
        let record = DeliveredRecord {
            report_id: entry.report_id.clone(),
            dest: entry.dest.clone(),
            kind: entry.kind,
            id: entry.id,
            attempts: entry.attempts + 1,
            delivered_at: now_millis(),
        };
        let dkey = delivered_key(&entry.report_id, &entry.dest, entry.kind);
        let key = entry.key();
        let removed = (&self.tree, &self.delivered)
            .transaction(|(tree, delivered)| {
                let old = tree.remove(key.as_slice())?;
                delivered.insert(dkey.as_slice(), encode(&record))?;
                Ok(old)
            })
            .map_err(tx_err)?;
        self.changed();
        match removed {
            Some(_) => {
                self.entries.fetch_sub(1, Ordering::Relaxed);
                // The entry's weight as it was added (updates do not change it).
                sub_saturating(&self.bytes, weight(&entry.payload, &entry.report_id));
                self.count(&entry.dest, |c| c.delivered += 1);
                self.check_alarm();
                Ok(())
            }
            None => Err(OutboxError::NotFound(entry.id)),
        }
    }

    /// Records a failed attempt (peer unreachable, timeout, garbage answer) and schedules
    /// the next one after `backoff`. Returns the updated entry.
    pub fn mark_retry(
        &self,
        entry: &Entry,
        reason: &str,
        backoff: &Backoff,
    ) -> Result<Entry, OutboxError> {
        self.count(&entry.dest, |c| c.failed += 1);
        self.update(entry, |e| {
            e.attempts += 1;
            e.state = EntryState::Retrying;
            e.next_attempt_at = now_millis() + backoff.delay(e.attempts).as_millis() as i64;
            e.last_error = Some(reason.to_string());
            e.peer_text = None;
        })
    }

    /// Records an explicit refusal (`reason`, with the peer's own words `peer_text` kept
    /// apart); the entry is dead after `max_rejections` of them and otherwise retried
    /// after `backoff`. Returns the updated entry.
    pub fn mark_rejected(
        &self,
        entry: &Entry,
        reason: &str,
        peer_text: Option<&str>,
        max_rejections: u32,
        backoff: &Backoff,
    ) -> Result<Entry, OutboxError> {
        self.count(&entry.dest, |c| c.rejected += 1);
        let updated = self.update(entry, |e| {
            e.attempts += 1;
            e.rejections += 1;
            e.last_error = Some(reason.to_string());
            e.peer_text = peer_text.map(str::to_string);
            if e.rejections >= max_rejections.max(1) {
                e.state = EntryState::Dead;
            } else {
                e.state = EntryState::Retrying;
                e.next_attempt_at = now_millis() + backoff.delay(e.rejections).as_millis() as i64;
            }
        })?;
        if updated.state == EntryState::Dead {
            log::error!(
                "outbox: {} {} of report {} dead-lettered after {} refusals: {reason}",
                updated.dest,
                updated.kind.as_str(),
                updated.report_id,
                updated.rejections
            );
        }
        Ok(updated)
    }

    /// Dead-letters `entry` at once with `reason` (a message its peer has shown it cannot
    /// take); kept, listed and re-queueable like any dead entry. Counted as a refusal.
    pub fn mark_dead(&self, entry: &Entry, reason: &str) -> Result<Entry, OutboxError> {
        self.count(&entry.dest, |c| c.rejected += 1);
        let updated = self.update(entry, |e| {
            e.attempts += 1;
            e.state = EntryState::Dead;
            e.last_error = Some(reason.to_string());
            e.peer_text = None;
        })?;
        log::error!(
            "outbox: {} {} of report {} dead-lettered: {reason}",
            updated.dest,
            updated.kind.as_str(),
            updated.report_id
        );
        Ok(updated)
    }

    /// The first entry still to send queued behind `head` in its destination's queue that
    /// carries a report of another study (so that the peer taking it says nothing about
    /// the order of `head`'s study's results), read from entry headers until found. Two
    /// reports whose results are no longer stored count as of other studies.
    pub fn next_of_another_study(&self, head: &Entry) -> Result<Option<Entry>, OutboxError> {
        // The results are read only once an entry of another report is queued behind.
        let mut studies: Option<HashMap<String, String>> = None;
        let after = head.dest.key(head.id.saturating_add(1));
        let prefix = head.dest.prefix();
        for kv in self.tree.range(after..) {
            let (k, v) = kv?;
            if !k.starts_with(&prefix) {
                break;
            }
            let Ok(h) = decode::<EntryHead>(&k, &v) else {
                continue;
            };
            if h.state == EntryState::Dead || h.report_id == head.report_id {
                continue;
            }
            if studies.is_none() {
                studies = Some(
                    self.result_heads()?
                        .into_iter()
                        .map(|r| (r.report_id, r.study_instance_uid))
                        .collect(),
                );
            }
            let study_of = |report: &str| studies.as_ref().and_then(|m| m.get(report));
            if study_of(&h.report_id).is_some_and(|s| study_of(&head.report_id) == Some(s)) {
                continue;
            }
            match decode::<Entry>(&k, &v) {
                Ok(e) => return Ok(Some(e)),
                Err(e) => log::error!("outbox: skipping undecodable entry: {e}"),
            }
        }
        Ok(None)
    }

    /// Dead-letters every pending entry of `dest` with `reason`: for a destination no
    /// worker serves any more (removed from the configuration). The entries are kept,
    /// listed and re-queueable like any dead entry. Returns how many changed.
    pub fn dead_letter_all(&self, dest: &Destination, reason: &str) -> Result<u64, OutboxError> {
        let mut changed = 0;
        // Entry headers only: payloads are skipped, never held.
        for kv in self.tree.scan_prefix(dest.prefix()) {
            let Some((key, head)) = head_of(kv)? else {
                continue;
            };
            if head.state == EntryState::Dead {
                continue;
            }
            self.update_key(&key, head.id, |e| {
                e.state = EntryState::Dead;
                e.last_error = Some(reason.to_string());
            })?;
            changed += 1;
        }
        Ok(changed)
    }

    /// The destinations that hold an entry still to send (not dead), found from entry
    /// headers (payloads skipped), reading each destination's queue only up to its first
    /// such entry.
    pub fn pending_destinations(&self) -> Result<Vec<Destination>, OutboxError> {
        let mut out = Vec::new();
        for prefix in self.destination_prefixes()? {
            for kv in self.tree.scan_prefix(&prefix) {
                if let Some((_, h)) = head_of(kv)?.filter(|(_, h)| h.state != EntryState::Dead) {
                    out.push(h.dest);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Re-queues dead entries (and makes retrying ones due now); returns how many changed.
    /// Refusal counts start again from zero. Reads entry headers one at a time (payloads
    /// are skipped, never held), so a full outbox costs no more memory than an empty one.
    pub fn retry(&self, which: &RetrySelector) -> Result<u64, OutboxError> {
        let now = now_millis();
        let mut changed = 0;
        let mut woken = Vec::new();
        // Read once, only when a dead entry is to be re-queued.
        let mut superseded: Option<HashMap<String, u32>> = None;
        let selected: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = match which
        {
            RetrySelector::Id(id) => {
                let found = self.stored(*id)?.ok_or(OutboxError::NotFound(*id))?;
                Box::new(std::iter::once(Ok(found)))
            }
            RetrySelector::Destination(d) => Box::new(self.tree.scan_prefix(d.prefix())),
            RetrySelector::All => Box::new(self.tree.iter()),
        };
        for kv in selected {
            let Some((key, entry)) = head_of(kv)? else {
                continue;
            };
            if entry.state == EntryState::Queued && entry.next_attempt_at <= now {
                continue;
            }
            if entry.state == EntryState::Dead && !entry.kind.withdraws() {
                if superseded.is_none() {
                    superseded = Some(self.superseded_reports()?);
                }
                let later = superseded
                    .as_ref()
                    .and_then(|s| s.get(&entry.report_id).copied());
                if let Some(version) = later {
                    // Re-sending it would put the older result back after the newer one.
                    let note = format!(
                        "not re-sent: superseded by version {version} of the study's result"
                    );
                    if entry.last_error.as_deref() != Some(note.as_str()) {
                        self.update_key(&key, entry.id, |e| e.last_error = Some(note.clone()))?;
                    }
                    log::warn!(
                        "outbox: {} {} of report {} not re-queued: {note}",
                        entry.dest,
                        entry.kind.as_str(),
                        entry.report_id
                    );
                    continue;
                }
            }
            self.update_key(&key, entry.id, |e| {
                e.state = EntryState::Queued;
                e.rejections = 0;
                e.next_attempt_at = now;
            })?;
            changed += 1;
            if !woken.contains(&entry.dest) {
                woken.push(entry.dest);
            }
        }
        for d in woken {
            self.notifier(&d).notify_one();
        }
        Ok(changed)
    }

    /// The key prefix (name and NUL) of each destination that holds an entry, found by
    /// jumping from one destination's keys to the next (entries are never read).
    fn destination_prefixes(&self) -> Result<Vec<Vec<u8>>, OutboxError> {
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        while let Some(kv) = self.tree.range(from.as_slice()..).next() {
            let (k, _) = kv?;
            let name = &k[..k.iter().position(|b| *b == 0).unwrap_or(k.len())];
            let mut prefix = name.to_vec();
            prefix.push(0);
            out.push(prefix);
            // The first key after every key of this destination.
            from = name.to_vec();
            from.push(1);
        }
        Ok(out)
    }

    /// What every stored result says of itself: its report id, study and version (the rest
    /// of it is not read).
    fn result_heads(&self) -> Result<Vec<ResultHead>, OutboxError> {
        let tree = self.db.open_tree(super::results::RESULTS_TREE)?;
        let mut heads = Vec::new();
        for kv in tree.iter() {
            let (_, v) = kv?;
            if let Ok(h) = serde_json::from_slice::<ResultHead>(&v) {
                heads.push(h);
            }
        }
        Ok(heads)
    }

    /// The report ids of results that a later result of the same study superseded, each
    /// with the latest version of its study.
    fn superseded_reports(&self) -> Result<HashMap<String, u32>, OutboxError> {
        let heads = self.result_heads()?;
        let mut latest: HashMap<String, u32> = HashMap::new();
        for h in &heads {
            let at = latest.entry(h.study_instance_uid.clone()).or_default();
            *at = (*at).max(h.version);
        }
        Ok(heads
            .into_iter()
            .filter_map(|h| {
                let newest = latest.get(&h.study_instance_uid).copied()?;
                (newest > h.version).then_some((h.report_id, newest))
            })
            .collect())
    }

    /// Every entry (optionally of one destination), in destination then queue order.
    pub fn list(&self, dest: Option<&Destination>) -> Result<Vec<Entry>, OutboxError> {
        let iter = match dest {
            Some(d) => self.tree.scan_prefix(d.prefix()),
            None => self.tree.iter(),
        };
        let mut out = Vec::new();
        for kv in iter {
            let (k, v) = kv?;
            match decode::<Entry>(&k, &v) {
                Ok(e) => out.push(e),
                Err(e) => log::error!("outbox: undecodable entry: {e}"),
            }
        }
        Ok(out)
    }

    /// The first `max` entries of each destination, in destination then queue order: the
    /// rest of a destination's queue is passed over, never read.
    pub fn first_of_each(&self, max: usize) -> Result<Vec<Entry>, OutboxError> {
        let mut out = Vec::new();
        for prefix in self.destination_prefixes()? {
            for kv in self.tree.scan_prefix(&prefix).take(max) {
                let (k, v) = kv?;
                match decode::<Entry>(&k, &v) {
                    Ok(e) => out.push(e),
                    Err(e) => log::error!("outbox: undecodable entry: {e}"),
                }
            }
        }
        Ok(out)
    }

    /// Delivery status of every message of a report, pending or delivered.
    pub fn status_of(&self, report_id: &str) -> Result<Vec<DeliveryStatus>, OutboxError> {
        let mut out: Vec<DeliveryStatus> = self
            .heads()?
            .into_iter()
            .filter(|e| e.report_id == report_id)
            .map(|e| DeliveryStatus {
                dest: e.dest,
                kind: e.kind,
                state: e.state.as_str().into(),
                attempts: e.attempts,
                last_error: e.last_error,
                peer_text: e.peer_text,
            })
            .collect();
        let mut prefix = report_id.as_bytes().to_vec();
        prefix.push(0);
        for kv in self.delivered.scan_prefix(&prefix) {
            let (k, v) = kv?;
            let r: DeliveredRecord = decode(&k, &v)?;
            if out.iter().any(|s| s.dest == r.dest && s.kind == r.kind) {
                continue; // a newer copy is pending again (re-sent)
            }
            out.push(DeliveryStatus {
                dest: r.dest,
                kind: r.kind,
                state: "delivered".into(),
                attempts: r.attempts,
                last_error: None,
                peer_text: None,
            });
        }
        Ok(out)
    }

    /// Per-destination counts, oldest age and counters (every destination with a worker or
    /// an entry appears).
    pub fn stats(&self) -> Result<Vec<DestStats>, OutboxError> {
        let now = now_millis();
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut map: BTreeMap<Destination, DestStats> = BTreeMap::new();
        for (d, c) in &counters {
            map.insert(
                d.clone(),
                DestStats {
                    dest: d.name(),
                    delivered_total: c.delivered,
                    failed_total: c.failed,
                    rejected_total: c.rejected,
                    ..Default::default()
                },
            );
        }
        for (dest, t) in self.tally()? {
            let s = map.entry(dest.clone()).or_insert_with(|| DestStats {
                dest: dest.name(),
                ..Default::default()
            });
            s.queued = t.queued;
            s.retrying = t.retrying;
            s.dead = t.dead;
            if let Some(created) = t.oldest_live {
                s.oldest_seconds = (now - created).max(0) as f64 / 1000.0;
            }
        }
        Ok(map.into_values().collect())
    }

    /// The entry with id `id`, if it is still in the outbox.
    pub fn entry(&self, id: u64) -> Result<Option<Entry>, OutboxError> {
        match self.stored(id)? {
            Some((key, v)) => Ok(Some(decode::<Entry>(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// The key and stored value of entry `id` (ids are unique across destinations): one
    /// lookup per destination that holds entries.
    fn stored(&self, id: u64) -> Result<Option<(sled::IVec, sled::IVec)>, OutboxError> {
        for mut key in self.destination_prefixes()? {
            key.extend_from_slice(&id.to_be_bytes());
            if let Some(v) = self.tree.get(&key)? {
                return Ok(Some((sled::IVec::from(key), v)));
            }
        }
        Ok(None)
    }

    /// Every entry's header (its payload skipped), in destination then queue order.
    fn heads(&self) -> Result<Vec<EntryHead>, OutboxError> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            out.extend(head_of(kv)?.map(|(_, h)| h));
        }
        Ok(out)
    }

    /// The tree's entries per destination: the last tally while no write came after it,
    /// else counted again from the headers (one caller counts; the others wait for it).
    fn tally(&self) -> Result<BTreeMap<Destination, DestTally>, OutboxError> {
        let mut cached = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        // Read before the tree: a write during the count leaves this tally stale.
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(t) = cached.as_ref().filter(|t| t.generation == generation) {
            return Ok(t.per_dest.clone());
        }
        let mut per_dest: BTreeMap<Destination, DestTally> = BTreeMap::new();
        for h in self.heads()? {
            let t = per_dest.entry(h.dest).or_default();
            match h.state {
                EntryState::Queued => t.queued += 1,
                EntryState::Retrying => t.retrying += 1,
                EntryState::Dead => t.dead += 1,
            }
            if h.state != EntryState::Dead {
                t.oldest_live = Some(t.oldest_live.map_or(h.created_at, |o| o.min(h.created_at)));
            }
        }
        *cached = Some(Tally {
            generation,
            per_dest: per_dest.clone(),
        });
        Ok(per_dest)
    }

    /// Marks the tree as written: the next tally counts it again. Also called by the
    /// store once a transaction of another stage wrote a [`Batch`], before the flush that
    /// [`Outbox::committed`] waits for (and that may fail).
    pub(in crate::store) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Entries and bytes held against the bounds.
    pub fn fill(&self) -> Fill {
        Fill {
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            max_entries: self.limits.max_entries,
            max_bytes: self.limits.max_bytes,
        }
    }

    /// Whether either bound is reached: new studies must then be refused (C-STORE A700).
    pub fn is_full(&self) -> bool {
        let f = self.fill();
        f.entries >= f.max_entries || f.bytes >= f.max_bytes
    }

    /// Whether either bound is within the near-full ratio (the alarm is on).
    pub fn is_near_full(&self) -> bool {
        let f = self.fill();
        let r = self.limits.near_full_ratio;
        f.entries as f64 >= f.max_entries as f64 * r || f.bytes as f64 >= f.max_bytes as f64 * r
    }

    /// Makes the outbox's changes durable (a blocking flush on tokio's blocking pool, not
    /// sled's flush_async: see `Store::flush`).
    pub async fn flush(&self) -> Result<(), OutboxError> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(r) => {
                r?;
                Ok(())
            }
            Err(e) => Err(OutboxError::Db(sled::Error::Io(std::io::Error::other(
                format!("flush task: {e}"),
            )))),
        }
    }

    fn check_alarm(&self) {
        let near = self.is_near_full();
        let was = self.alarm.swap(near, Ordering::Relaxed);
        if near && !was {
            let f = self.fill();
            log::warn!(
                "outbox near full: {} of {} entries, {} of {} bytes; new studies will be refused when full",
                f.entries,
                f.max_entries,
                f.bytes,
                f.max_bytes
            );
        } else if !near && was {
            log::info!("outbox below its near-full mark again");
        }
    }

    fn count(&self, dest: &Destination, f: impl FnOnce(&mut Counters)) {
        let mut map = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(dest.clone()).or_default());
    }

    fn update(&self, entry: &Entry, f: impl Fn(&mut Entry)) -> Result<Entry, OutboxError> {
        self.update_key(&entry.key(), entry.id, f)
    }

    /// Changes the entry under `key` (id `id`) in one transaction.
    fn update_key(
        &self,
        key: &[u8],
        id: u64,
        f: impl Fn(&mut Entry),
    ) -> Result<Entry, OutboxError> {
        let result = self
            .tree
            .transaction(|tx| {
                let Some(old) = tx.get(key)? else {
                    return Ok(None);
                };
                let Ok(mut current) = serde_json::from_slice::<Entry>(&old) else {
                    return Ok(None);
                };
                f(&mut current);
                tx.insert(key, encode(&current).as_slice())?;
                Ok(Some(current))
            })
            .map_err(tx_err)?;
        self.changed();
        result.ok_or(OutboxError::NotFound(id))
    }
}

/// What a stored result says of itself, as the outbox reads it.
#[derive(serde::Deserialize)]
struct ResultHead {
    report_id: String,
    study_instance_uid: String,
    version: u32,
}

/// The key and header of one stored entry (its payload skipped); `None`, logged, for an
/// entry that does not decode.
fn head_of(
    kv: sled::Result<(sled::IVec, sled::IVec)>,
) -> Result<Option<(sled::IVec, EntryHead)>, OutboxError> {
    let (key, v) = kv?;
    match decode::<EntryHead>(&key, &v) {
        Ok(h) => Ok(Some((key, h))),
        Err(e) => {
            log::error!("outbox: undecodable entry: {e}");
            Ok(None)
        }
    }
}

fn delivered_key(report_id: &str, dest: &Destination, kind: Kind) -> Vec<u8> {
    format!("{report_id}\0{}\0{}", dest.name(), kind.as_str()).into_bytes()
}

/// What an entry weighs against the outbox's byte bound: about its stored size, and the
/// same when it is added and when it leaves (whatever updates did to its record
/// meanwhile), so the figure never drifts however many entries pass through.
fn weight(payload: &Payload, report_id: &str) -> u64 {
    let payload = match payload {
        Payload::Hl7 { message } => message.len(),
        Payload::Mqtt { topic, body, .. } => topic.len() + body.len() * 2,
        Payload::Dicom { sop_instance_uids } => sop_instance_uids.iter().map(|u| u.len() + 3).sum(),
    };
    (payload + report_id.len() + 220) as u64
}

fn sub_saturating(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

fn tx_err(e: sled::transaction::TransactionError<()>) -> OutboxError {
    match e {
        sled::transaction::TransactionError::Storage(e) => OutboxError::Db(e),
        sled::transaction::TransactionError::Abort(()) => OutboxError::Db(
            sled::Error::ReportableBug("outbox transaction aborted".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn open(dir: &std::path::Path, limits: OutboxLimits) -> (sled::Db, Outbox) {
        // The store's open waits for a lock that a just-dropped database still holds.
        let db = crate::store::open_db(dir).unwrap();
        let ob = Outbox::open(&db, limits).unwrap();
        (db, ob)
    }

    fn hl7(report: &str) -> NewEntry {
        NewEntry {
            dest: Destination::Hl7,
            kind: Kind::Report,
            report_id: report.into(),
            study_instance_uid: "1.2.840.99.1".into(),
            payload: Payload::Hl7 {
                message: format!("MSH|^~\\&|DULI|||||||{report}\r"),
            },
        }
    }

    fn mqtt(report: &str) -> NewEntry {
        NewEntry {
            dest: Destination::Mqtt,
            kind: Kind::Report,
            report_id: report.into(),
            study_instance_uid: "1.2.840.99.1".into(),
            payload: Payload::Mqtt {
                topic: "duli/s/d/reports".into(),
                body: format!("{{\"report_id\":\"{report}\"}}"),
                retain: false,
            },
        }
    }

    const FAST: Backoff = Backoff {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(2),
    };

    #[test]
    fn prepared_entries_written_by_another_transaction_drain_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (db, ob) = open(dir.path(), OutboxLimits::default());
        let batch = vec![hl7("r1"), mqtt("r1"), hl7("r2")];
        let writes = ob.prepare(&batch).unwrap();
        let results = db.open_tree("results").unwrap();
        let committed: sled::transaction::TransactionResult<()> =
            (&results, &ob.tree).transaction(|(r, o)| {
                r.insert("study", "result")?;
                for (k, v) in &writes {
                    o.insert(k.as_slice(), v.as_slice())?;
                }
                Ok(())
            });
        committed.unwrap();
        ob.committed(&batch);
        let first = ob.next_due(&Destination::Hl7, i64::MAX).unwrap().unwrap();
        assert_eq!(first.report_id, "r1");
        ob.mark_delivered(&first).unwrap();
        let second = ob.next_due(&Destination::Hl7, i64::MAX).unwrap().unwrap();
        assert_eq!(second.report_id, "r2");
        assert_eq!(ob.list(Some(&Destination::Mqtt)).unwrap().len(), 1);
        assert_eq!(ob.fill().entries, 2);
    }

    /// The figures counted from the tree itself, payloads and all.
    fn counted(ob: &Outbox) -> Vec<(String, u64, u64, u64)> {
        let mut map: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for e in ob.list(None).unwrap() {
            let t = map.entry(e.dest.name()).or_default();
            match e.state {
                EntryState::Queued => t.0 += 1,
                EntryState::Retrying => t.1 += 1,
                EntryState::Dead => t.2 += 1,
            }
        }
        map.into_iter().map(|(d, (q, r, x))| (d, q, r, x)).collect()
    }

    fn figures(ob: &Outbox) -> Vec<(String, u64, u64, u64)> {
        ob.stats()
            .unwrap()
            .into_iter()
            .filter(|s| s.queued + s.retrying + s.dead > 0)
            .map(|s| (s.dest, s.queued, s.retrying, s.dead))
            .collect()
    }

    /// The figures are counted once per change of the tree, however often they are read
    /// (metrics are public, and asked for while the outbox is at its fullest), and after
    /// every kind of change — a commit from another transaction, an enqueue, a retry, a
    /// dead letter, a re-queue, a delivery — they are what the tree holds.
    #[test]
    fn figures_follow_every_change_and_are_counted_once_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, ob) = open(dir.path(), OutboxLimits::default());
        assert!(figures(&ob).is_empty());
        let batch = vec![hl7("r1"), mqtt("r1")];
        let writes = ob.prepare(&batch).unwrap();
        for (k, v) in &writes {
            ob.tree.insert(k.as_slice(), v.as_slice()).unwrap();
        }
        ob.committed(&batch);
        assert_eq!(figures(&ob), counted(&ob));
        ob.enqueue(&[hl7("r2"), hl7("r3")]).unwrap();
        assert_eq!(figures(&ob), counted(&ob));
        let head = ob.head(&Destination::Hl7).unwrap().unwrap();
        ob.mark_retry(&head, "timeout", &FAST).unwrap();
        assert_eq!(figures(&ob), counted(&ob));
        let head = ob.head(&Destination::Hl7).unwrap().unwrap();
        ob.mark_rejected(&head, "AR", None, 1, &FAST).unwrap();
        assert_eq!(figures(&ob), counted(&ob));
        assert_eq!(
            ob.dead_letter_all(&Destination::Mqtt, "removed").unwrap(),
            1
        );
        assert_eq!(figures(&ob), counted(&ob));
        ob.retry(&RetrySelector::All).unwrap();
        assert_eq!(figures(&ob), counted(&ob));
        let head = ob.head(&Destination::Hl7).unwrap().unwrap();
        ob.mark_delivered(&head).unwrap();
        let now = figures(&ob);
        assert_eq!(now, counted(&ob));
        assert!(ob
            .stats()
            .unwrap()
            .iter()
            .any(|s| s.oldest_seconds >= 0.0 && s.queued > 0));

        // A write that bypasses the outbox (none does outside this test) is not seen until
        // the next change: reading the figures again did not read the tree again.
        ob.tree
            .insert(
                Destination::Hl7.key(u64::MAX),
                encode(&Entry::new(u64::MAX, &hl7("x"), 0)),
            )
            .unwrap();
        assert_eq!(figures(&ob), now, "served from the tally");
        ob.enqueue(&[hl7("r4")]).unwrap();
        assert_eq!(figures(&ob), counted(&ob), "counted again after a change");
    }

    /// The console's listing reads the first entries of each destination and passes over
    /// the rest of each queue.
    #[test]
    fn the_first_entries_of_each_destination_in_queue_order() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, ob) = open(dir.path(), OutboxLimits::default());
        let reports: Vec<String> = (0..5).map(|i| format!("r{i}")).collect();
        for r in &reports {
            ob.enqueue(&[hl7(r), mqtt(r)]).unwrap();
        }
        ob.enqueue(&[NewEntry {
            dest: Destination::Pacs("main".into()),
            ..hl7("p")
        }])
        .unwrap();
        let first = ob.first_of_each(3).unwrap();
        let listed: Vec<(String, &str)> = first
            .iter()
            .map(|e| (e.dest.name(), e.report_id.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("hl7", "r0"),
                ("hl7", "r1"),
                ("hl7", "r2"),
                ("mqtt", "r0"),
                ("mqtt", "r1"),
                ("mqtt", "r2"),
                ("pacs:main", "p"),
            ]
            .map(|(d, r)| (d.to_string(), r))
        );
        assert_eq!(ob.first_of_each(10).unwrap().len(), 11);
        assert!(ob.first_of_each(0).unwrap().is_empty());
    }

    #[test]
    fn destinations_parse_and_print() {
        for s in ["hl7", "mqtt", "pacs:main"] {
            assert_eq!(s.parse::<Destination>().unwrap().name(), s);
        }
        assert!("pacs:".parse::<Destination>().is_err());
        assert!("smtp".parse::<Destination>().is_err());
    }

    #[test]
    fn enqueue_in_a_multi_tree_transaction_is_atomic_with_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let (db, ob) = open(dir.path(), OutboxLimits::default());
        let results = db.open_tree("results").unwrap();
        let batch = vec![hl7("r1"), mqtt("r1")];
        let ids = (&results, &ob.tree)
            .transaction(|(results, tx)| {
                results.insert("r1", "result")?;
                Ok(Outbox::enqueue_in(tx, &batch)?)
            })
            .map_err(|e: sled::transaction::TransactionError<()>| e)
            .unwrap();
        ob.committed(&batch);
        assert_eq!(ids.len(), 2);
        assert!(ids[0] < ids[1]);
        assert_eq!(ob.fill().entries, 2);
        // an aborted transaction leaves neither the result nor the entries
        let r: Result<(), _> = (&results, &ob.tree).transaction(|(results, tx)| {
            results.insert("r2", "result")?;
            Outbox::enqueue_in(tx, &[hl7("r2")])?;
            sled::transaction::abort(())
        });
        assert!(r.is_err());
        assert!(results.get("r2").unwrap().is_none());
        assert_eq!(ob.list(None).unwrap().len(), 2);
    }

    #[test]
    fn head_of_line_order_per_destination_and_removal_only_when_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, ob) = open(dir.path(), OutboxLimits::default());
        for i in 0..5 {
            ob.enqueue(&[hl7(&format!("r{i}")), mqtt(&format!("r{i}"))])
                .unwrap();
        }
        let head = ob.head(&Destination::Hl7).unwrap().unwrap();
        assert_eq!(head.report_id, "r0");
        // a failure keeps the head in place and schedules it later
        let retried = ob.mark_retry(&head, "connection refused", &FAST).unwrap();
        assert_eq!(retried.state, EntryState::Retrying);
        assert_eq!(retried.attempts, 1);
        assert!(ob.next_due(&Destination::Hl7, 0).unwrap().is_none());
        let head = ob.head(&Destination::Hl7).unwrap().unwrap();
        assert_eq!(head.report_id, "r0");
        let mut order = Vec::new();
        while let Some(e) = ob.head(&Destination::Hl7).unwrap() {
            order.push(e.report_id.clone());
            ob.mark_delivered(&e).unwrap();
        }
        assert_eq!(order, ["r0", "r1", "r2", "r3", "r4"]);
        assert_eq!(ob.list(Some(&Destination::Mqtt)).unwrap().len(), 5);
        assert_eq!(ob.fill().entries, 5);
        let status = ob.status_of("r0").unwrap();
        assert!(status
            .iter()
            .any(|s| s.dest == Destination::Hl7 && s.state == "delivered" && s.attempts == 2));
        assert!(status
            .iter()
            .any(|s| s.dest == Destination::Mqtt && s.state == "queued"));
        let stats = ob.stats().unwrap();
        let h = stats.iter().find(|s| s.dest == "hl7").unwrap();
        assert_eq!((h.delivered_total, h.failed_total, h.queued), (5, 1, 0));
        let m = stats.iter().find(|s| s.dest == "mqtt").unwrap();
        assert_eq!(m.queued, 5);
    }

    #[test]
    fn rejections_dead_letter_then_a_technician_requeues() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, ob) = open(dir.path(), OutboxLimits::default());
        ob.enqueue(&[hl7("a"), hl7("b")]).unwrap();
        let mut e = ob.head(&Destination::Hl7).unwrap().unwrap();
        for i in 1..=3 {
            e = ob
                .mark_rejected(&e, "AR", Some("unknown patient"), 3, &FAST)
                .unwrap();
            assert_eq!(e.rejections, i);
        }
        assert_eq!(e.state, EntryState::Dead);
        // the dead entry no longer blocks the queue
        assert_eq!(ob.head(&Destination::Hl7).unwrap().unwrap().report_id, "b");
        let stats = ob.stats().unwrap();
        assert_eq!(stats[0].dead, 1);
        assert_eq!(stats[0].rejected_total, 3);
        assert_eq!(ob.retry(&RetrySelector::Id(e.id)).unwrap(), 1);
        let again = ob.head(&Destination::Hl7).unwrap().unwrap();
        assert_eq!((again.report_id.as_str(), again.rejections), ("a", 0));
        assert_eq!(again.state, EntryState::Queued);
        assert!(matches!(
            ob.retry(&RetrySelector::Id(999_999)),
            Err(OutboxError::NotFound(999_999))
        ));
    }

    /// The byte figure comes back to zero once every entry is delivered, whatever the
    /// entries carried and whatever their failed attempts wrote into them meanwhile.
    #[test]
    fn the_byte_figure_returns_to_zero_when_everything_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, ob) = open(dir.path(), OutboxLimits::default());
        let batch: Vec<NewEntry> = (0..20)
            .flat_map(|i| [hl7(&format!("r{i}")), mqtt(&format!("r{i}"))])
            .collect();
        ob.enqueue(&batch).unwrap();
        assert_eq!(ob.fill().entries, 40);
        assert!(ob.fill().bytes > 0);
        for dest in [Destination::Hl7, Destination::Mqtt] {
            while let Some(e) = ob.head(&dest).unwrap() {
                let e = ob
                    .mark_retry(&e, &"a long reason ".repeat(40), &FAST)
                    .unwrap();
                ob.mark_delivered(&e).unwrap();
            }
        }
        assert_eq!((ob.fill().entries, ob.fill().bytes), (0, 0));
    }

    /// A retry by id finds the entry whichever destination holds it, and a retry of one
    /// destination touches no other.
    #[test]
    fn a_retry_by_id_finds_the_entry_in_any_destination() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, ob) = open(dir.path(), OutboxLimits::default());
        ob.enqueue(&[hl7("a"), mqtt("b"), mqtt("c")]).unwrap();
        for dest in [Destination::Hl7, Destination::Mqtt, Destination::Mqtt] {
            let e = ob.head(&dest).unwrap().unwrap();
            ob.mark_rejected(&e, "refused", None, 1, &FAST).unwrap();
        }
        let dead = |d: &Destination| {
            ob.list(Some(d))
                .unwrap()
                .iter()
                .filter(|e| e.state == EntryState::Dead)
                .count()
        };
        assert_eq!((dead(&Destination::Hl7), dead(&Destination::Mqtt)), (1, 2));
        let c = ob.list(Some(&Destination::Mqtt)).unwrap()[1].clone();
        assert_eq!(c.report_id, "c");
        assert_eq!(ob.retry(&RetrySelector::Id(c.id)).unwrap(), 1);
        assert_eq!(ob.head(&Destination::Mqtt).unwrap().unwrap().report_id, "c");
        assert_eq!((dead(&Destination::Hl7), dead(&Destination::Mqtt)), (1, 1));
        assert_eq!(
            ob.retry(&RetrySelector::Destination(Destination::Mqtt))
                .unwrap(),
            1
        );
        assert_eq!((dead(&Destination::Hl7), dead(&Destination::Mqtt)), (1, 0));
        assert_eq!(ob.retry(&RetrySelector::All).unwrap(), 1);
        assert_eq!(dead(&Destination::Hl7), 0);
    }

    /// The entry a probe may take behind the head is of another study: never a later
    /// version of the head's own study, nor another entry of its report, nor a dead one.
    #[test]
    fn the_entry_behind_the_head_of_another_study_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let (db, ob) = open(dir.path(), OutboxLimits::default());
        let results = db.open_tree(crate::store::results::RESULTS_TREE).unwrap();
        for (key, report, study, version) in [
            ("a-1", "a1", "1.2.1", 1),
            ("a-2", "a2", "1.2.1", 2),
            ("b-1", "b1", "1.2.2", 1),
            ("c-1", "c1", "1.2.3", 1),
        ] {
            let head = serde_json::json!({"report_id": report, "study_instance_uid": study,
                "version": version, "findings": []});
            results
                .insert(key, serde_json::to_vec(&head).unwrap())
                .unwrap();
        }
        ob.enqueue(&[
            hl7("a1"),
            mqtt("b1"),
            hl7("a1"),
            hl7("a2"),
            hl7("b1"),
            hl7("c1"),
        ])
        .unwrap();
        let head = ob.head(&Destination::Hl7).unwrap().unwrap();
        let next = ob.next_of_another_study(&head).unwrap().unwrap();
        assert_eq!(
            (next.report_id.as_str(), &next.dest),
            ("b1", &Destination::Hl7)
        );
        // b1 dead: c1 is next; behind c1 nothing.
        ob.mark_dead(&next, "x").unwrap();
        let next = ob.next_of_another_study(&head).unwrap().unwrap();
        assert_eq!(next.report_id, "c1");
        assert!(ob.next_of_another_study(&next).unwrap().is_none());
    }

    /// A dead entry of a result that a later result of its study superseded is not
    /// re-sent by a retry (it would put the older result back at the RIS after the newer
    /// one): it stays dead and says why; the latest version's dead entry is re-queued, and
    /// so is the withdrawal of the superseded result.
    #[test]
    fn a_retry_never_resends_a_superseded_result() {
        let dir = tempfile::tempdir().unwrap();
        let (db, ob) = open(dir.path(), OutboxLimits::default());
        let results = db.open_tree(crate::store::results::RESULTS_TREE).unwrap();
        for (key, report, version) in [("s-1", "v1", 1), ("s-2", "v2", 2)] {
            let head = serde_json::json!({"report_id": report, "study_instance_uid": "1.2.3",
                "version": version, "findings": []});
            results
                .insert(key, serde_json::to_vec(&head).unwrap())
                .unwrap();
        }
        // The withdrawal of v1 (its study was given to another patient) comes between.
        let withdrawal = NewEntry {
            kind: Kind::Withdrawal,
            ..hl7("v1")
        };
        ob.enqueue(&[hl7("v1"), withdrawal, hl7("v2")]).unwrap();
        for _ in 0..3 {
            let e = ob.head(&Destination::Hl7).unwrap().unwrap();
            ob.mark_rejected(&e, "AR", None, 1, &FAST).unwrap();
        }
        assert_eq!(ob.retry(&RetrySelector::All).unwrap(), 2);
        let list = ob.list(Some(&Destination::Hl7)).unwrap();
        let of = |r: &str, kind: Kind| {
            list.iter()
                .find(|e| e.report_id == r && e.kind == kind)
                .unwrap()
                .clone()
        };
        assert_eq!(of("v1", Kind::Report).state, EntryState::Dead);
        assert!(of("v1", Kind::Report)
            .last_error
            .is_some_and(|m| m.contains("superseded by version 2")));
        // A withdrawal is what the later result makes room for: re-sent.
        assert_eq!(of("v1", Kind::Withdrawal).state, EntryState::Queued);
        assert_eq!(of("v2", Kind::Report).state, EntryState::Queued);
    }

    #[test]
    fn entries_survive_reopen_in_order_with_their_state() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, ob) = open(dir.path(), OutboxLimits::default());
            for i in 0..3 {
                ob.enqueue(&[hl7(&format!("r{i}"))]).unwrap();
            }
            let head = ob.head(&Destination::Hl7).unwrap().unwrap();
            ob.mark_retry(&head, "timeout", &FAST).unwrap();
            db.flush().unwrap();
        }
        let (_db, ob) = open(dir.path(), OutboxLimits::default());
        assert_eq!(ob.fill().entries, 3);
        let list = ob.list(None).unwrap();
        let ids: Vec<&str> = list.iter().map(|e| e.report_id.as_str()).collect();
        assert_eq!(ids, ["r0", "r1", "r2"]);
        assert_eq!(list[0].state, EntryState::Retrying);
        assert_eq!(list[0].last_error.as_deref(), Some("timeout"));
        // new ids after reopen still sort after the old ones
        ob.enqueue(&[hl7("r3")]).unwrap();
        let last = ob.list(None).unwrap().pop().unwrap();
        assert_eq!(last.report_id, "r3");
    }

    #[test]
    fn bounds_raise_near_full_then_full() {
        let dir = tempfile::tempdir().unwrap();
        let limits = OutboxLimits {
            max_entries: 10,
            max_bytes: u64::MAX,
            near_full_ratio: 0.8,
        };
        let (_db, ob) = open(dir.path(), limits);
        for i in 0..7 {
            ob.enqueue(&[hl7(&format!("r{i}"))]).unwrap();
        }
        assert!(!ob.is_near_full());
        ob.enqueue(&[hl7("r7")]).unwrap();
        assert!(ob.is_near_full() && !ob.is_full());
        ob.enqueue(&[hl7("r8"), hl7("r9")]).unwrap();
        assert!(ob.is_full());
        // never dropped: a full outbox still takes entries of results already received
        ob.enqueue(&[hl7("r10")]).unwrap();
        assert_eq!(ob.list(None).unwrap().len(), 11);
        let head = ob.head(&Destination::Hl7).unwrap().unwrap();
        ob.mark_delivered(&head).unwrap();
        ob.mark_delivered(&ob.head(&Destination::Hl7).unwrap().unwrap())
            .unwrap();
        assert!(!ob.is_full());
        let limits = OutboxLimits {
            max_entries: u64::MAX,
            max_bytes: 1000,
            near_full_ratio: 0.8,
        };
        let dir2 = tempfile::tempdir().unwrap();
        let (_db2, ob2) = open(dir2.path(), limits);
        while !ob2.is_full() {
            ob2.enqueue(&[hl7("x")]).unwrap();
        }
        assert!(ob2.fill().bytes >= 1000);
    }

    #[test]
    fn retry_selector_and_listing_for_technicians() {
        assert_eq!("all".parse::<RetrySelector>(), Ok(RetrySelector::All));
        assert_eq!("42".parse::<RetrySelector>(), Ok(RetrySelector::Id(42)));
        assert_eq!(
            "pacs:main".parse::<RetrySelector>(),
            Ok(RetrySelector::Destination(Destination::Pacs("main".into())))
        );
        assert!("smtp".parse::<RetrySelector>().is_err());
        let dir = tempfile::tempdir().unwrap();
        let (_db, ob) = open(dir.path(), OutboxLimits::default());
        ob.enqueue(&[hl7("r1")]).unwrap();
        let e = ob.head(&Destination::Hl7).unwrap().unwrap();
        ob.mark_rejected(&e, "AR", Some("unknown patient"), 1, &FAST)
            .unwrap();
        let list = ob.list(None).unwrap();
        let table = render_table(&list, list[0].created_at + 5_000);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("        ID  DEST"));
        for part in ["hl7", "report", "dead", "5s", "r1", "AR: unknown patient"] {
            assert!(lines[1].contains(part), "{part} in {:?}", lines[1]);
        }
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        for _ in 0..50 {
            let d1 = b.delay(1).as_millis();
            assert!((50..=100).contains(&d1), "{d1}");
            let d3 = b.delay(3).as_millis();
            assert!((200..=400).contains(&d3), "{d3}");
            let d20 = b.delay(20).as_millis();
            assert!((500..=1000).contains(&d20), "{d20}");
        }
        let spread: std::collections::HashSet<u128> =
            (0..50).map(|_| b.delay(5).as_millis()).collect();
        assert!(spread.len() > 5);
    }
}
