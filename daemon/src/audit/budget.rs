//! The trail's budget on the box (`[audit] max_records`; IEC 62443 CR 2.9, audit storage
//! capacity, and CR 2.10, response to audit processing failures).
//!
//! The audit record repository is where records are kept for good (IHE ATNA); the trail
//! on the box is their queue and a local copy. Past the budget, the oldest records the
//! repository acknowledged are removed from the start of the trail, down to nine tenths of
//! it ([`Audit::shed_forwarded`], run by the forwarding stage after each page): the last
//! one removed is kept aside ([`Shed`]), so the chain still verifies from it, and a record
//! of the trail says, before anything goes, what goes: a shed point no record states is a
//! break ([`Audit::verify`]). A record not forwarded is never removed: from nine tenths
//! of the budget on the trail raises its alarm (an error in the log when it crosses that
//! mark, [`Audit::budget`] in the metrics and on the console's audit page), and a box with
//! no repository keeps every record until the disk's own alarm.

use super::{Action, Audit, Event, Record, TRAIL_OBJECT};
use crate::store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// How the detail of the record that says records were removed starts.
pub const SHED: &str = "audit records removed from this box after the repository acknowledged them";
/// Most records one shedding removes (the next page forwarded removes more): the
/// forwarding stage is not held up by a trail far over a budget lowered since.
pub const SHED_CHUNK: u64 = 50_000;
/// The first sequence number of a trail that holds no record yet.
pub(super) const NONE_HELD: u64 = u64::MAX;
/// The key of the shed point.
pub(super) const SHED_KEY: &[u8] = b"through";

/// The last record removed from the start of the trail: its sequence number and hash,
/// which the first record kept links to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shed {
    /// Sequence number of the last record removed.
    pub seq: u64,
    /// Its hash (empty when it did not decode).
    pub hash: String,
}

/// The budget and whether its alarm is raised.
#[derive(Debug, Default)]
pub(super) struct Limit {
    /// Most records kept (0: none set).
    max: AtomicU64,
    /// Whether the trail is at nine tenths of its budget or more.
    alarmed: AtomicBool,
}

/// How full the trail is, for the metrics and the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BudgetState {
    /// Records on the box.
    pub held: u64,
    /// The budget (`[audit] max_records`; 0 when none is set).
    pub max_records: u64,
    /// Whether the alarm is raised (nine tenths of the budget or more).
    pub alarm: bool,
}

impl Audit {
    /// Sets the budget (`[audit] max_records`; 0 sets none), checked from the next append
    /// on (once forwarding, if any, has started).
    pub fn set_budget(&self, max_records: u64) {
        self.limit.max.store(max_records, Ordering::Relaxed);
    }

    /// Records on the box now.
    pub fn held(&self) -> u64 {
        let first = self.first.load(Ordering::Relaxed);
        match self.head() {
            Some((last, _)) if first != NONE_HELD => last.saturating_add(1).saturating_sub(first),
            _ => 0,
        }
    }

    /// How full the trail is.
    pub fn budget(&self) -> BudgetState {
        BudgetState {
            held: self.held(),
            max_records: self.limit.max.load(Ordering::Relaxed),
            alarm: self.limit.alarmed.load(Ordering::Relaxed),
        }
    }

    /// Raises the alarm when the trail reaches nine tenths of its budget (logged once per
    /// crossing), and lowers it below eight tenths.
    pub(super) fn check_budget(&self) {
        let max = self.limit.max.load(Ordering::Relaxed);
        if max == 0 {
            return;
        }
        let held = self.held();
        if held.saturating_mul(10) >= max.saturating_mul(9) {
            if !self.limit.alarmed.swap(true, Ordering::Relaxed) {
                let forwarding = if self.sink().is_some() {
                    "records the audit record repository acknowledged are removed past it; \
                     the rest wait for the repository"
                } else {
                    "no audit record repository is set ([audit] syslog): every record stays \
                     on this box"
                };
                log::error!(
                    "audit trail: {held} records on this box, {}% of its budget of {max} \
                     ([audit] max_records); {forwarding}",
                    held.saturating_mul(100) / max
                );
            }
        } else if held.saturating_mul(10) < max.saturating_mul(8) {
            self.limit.alarmed.store(false, Ordering::Relaxed);
        }
    }

    /// Whether `rec` is the trail's own statement of the removal through shed point `s`.
    pub(super) fn states_shed(rec: &Record, s: &Shed) -> bool {
        rec.actor == "system"
            && rec.object == TRAIL_OBJECT
            && rec.detail.starts_with(SHED)
            && rec.detail.ends_with(&shed_statement(s.seq, &s.hash))
    }

    /// The last record removed from the start of the trail, if any was.
    pub(super) fn shed_point(&self) -> Result<Option<Shed>, StoreError> {
        self.shed.get(SHED_KEY)
    }

    /// Removes from the start of the trail records the repository acknowledged (those
    /// before `forwarded_before`, the forwarding cursor; the last forwarded one stays, so
    /// the cursor still finds it) while the trail holds more than its budget, down to nine
    /// tenths of it and at most [`SHED_CHUNK`] at a time; the shed point is made durable
    /// first, then a record saying what goes is appended and flushed, then the records go.
    /// Returns how many were removed.
    pub fn shed_forwarded(&self, store: &Store, forwarded_before: u64) -> Result<u64, StoreError> {
        let max = self.limit.max.load(Ordering::Relaxed);
        let Some((last, _)) = self.head() else {
            return Ok(0);
        };
        if max == 0 || self.held() <= max {
            return Ok(0);
        }
        let first = self.first.load(Ordering::Relaxed);
        if first == NONE_HELD {
            return Ok(0);
        }
        let keep = max - max / 10;
        let end = forwarded_before
            .saturating_sub(1)
            .min(last.saturating_add(1).saturating_sub(keep))
            .min(first.saturating_add(SHED_CHUNK));
        if end <= first {
            return Ok(0);
        }
        let through = end - 1;
        let hash = match self.records.get(through.to_be_bytes()) {
            Ok(Some(r)) => r.hash,
            Ok(None) | Err(StoreError::Corrupt { .. }) => String::new(),
            Err(e) => return Err(e),
        };
        self.shed.insert(
            SHED_KEY,
            &Shed {
                seq: through,
                hash: hash.clone(),
            },
        )?;
        store.flush_blocking()?;
        // Counted as held, not as the span: records a lost index took are not in it.
        let mut held = 0u64;
        for seq in first..end {
            if !matches!(self.records.get(seq.to_be_bytes()), Ok(None)) {
                held += 1;
            }
        }
        // Said in the chain before anything goes: a verification finds every removal
        // stated (a shed point no record states is a removal by someone else), also one
        // a stop cut off.
        let detail = format!(
            "{SHED}: records {first} to {through} ({held} held), to keep the trail within \
             its budget of {max} records ([audit] max_records); {}",
            shed_statement(through, &hash)
        );
        log::warn!("audit trail: {detail}");
        self.append(Event::new("system", Action::Other, TRAIL_OBJECT).detail(detail))?;
        store.flush_blocking()?;
        let mut removed = 0u64;
        for seq in first..end {
            if self.records.remove(seq.to_be_bytes())? {
                removed += 1;
            }
        }
        self.first.store(end, Ordering::Relaxed);
        store.flush_blocking()?;
        Ok(removed)
    }
}

/// How a shed record names the last record removed and its hash.
fn shed_statement(through: u64, hash: &str) -> String {
    format!("record {through} had hash {hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail_of(n: u64) -> (tempfile::TempDir, Store, Audit) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        for i in 0..n {
            audit
                .append(Event::new("ana", Action::View, &format!("1.2.{i}")))
                .unwrap();
        }
        (dir, store, audit)
    }

    /// Past its budget the trail sheds only records the repository acknowledged (never
    /// the last one forwarded, nor one not forwarded), down to nine tenths of the budget;
    /// says so in a record of its own; and still verifies from the last record removed.
    #[test]
    fn only_forwarded_records_are_shed_and_the_rest_still_verifies() {
        let (_dir, store, audit) = trail_of(200);
        assert_eq!(
            audit.shed_forwarded(&store, 1_000).unwrap(),
            0,
            "no budget set"
        );
        audit.set_budget(100);
        assert_eq!(
            audit.shed_forwarded(&store, 0).unwrap(),
            0,
            "nothing forwarded"
        );
        // Forwarded up to record 49: records 0 to 48 go, 49 stays for the cursor.
        assert_eq!(audit.shed_forwarded(&store, 50).unwrap(), 49);
        assert_eq!(audit.records(0, 1).unwrap()[0].seq, 49);
        let said = audit.records(200, 1).unwrap().remove(0);
        assert!(said.detail.starts_with(SHED), "{said:?}");
        assert!(
            said.detail.contains("records 0 to 48 (49 held)"),
            "{said:?}"
        );
        let v = audit.verify().unwrap();
        assert!(v.broken.is_none(), "{v:?}");
        assert_eq!(v.records, 152);
        // All forwarded: down to nine tenths of the budget.
        assert!(audit.shed_forwarded(&store, 1_000).unwrap() > 0);
        assert_eq!(audit.held(), 91, "90 kept and the record saying so");
        let v = audit.verify().unwrap();
        assert!(v.broken.is_none(), "{v:?}");
        assert_eq!(
            audit.shed_forwarded(&store, 1_000).unwrap(),
            0,
            "within budget"
        );
        // A kept record changed on the disk is still found.
        let mut rec = audit.records(150, 1).unwrap().remove(0);
        rec.event.object = "9.9.9".into();
        audit.records.insert(150u64.to_be_bytes(), &rec).unwrap();
        let v = audit.verify().unwrap();
        assert_eq!(v.broken.map(|b| b.seq), Some(150));
    }

    /// A removal cut off before its end (the shed point stored, some of the records before
    /// it still there) verifies as the finished one does; removing a kept record as well
    /// breaks the chain.
    #[test]
    fn a_removal_cut_off_verifies_and_a_missing_kept_record_is_found() {
        let (_dir, _store, audit) = trail_of(50);
        let through = audit.records(19, 1).unwrap().remove(0);
        let point = Shed {
            seq: 19,
            hash: through.hash.clone(),
        };
        audit.shed.insert(SHED_KEY, &point).unwrap();
        // The statement goes into the chain before the removal begins.
        audit
            .append(
                Event::new("system", Action::Other, TRAIL_OBJECT).detail(format!(
                    "{SHED}: records 0 to 19 (20 held), to keep the trail within its budget; {}",
                    shed_statement(19, &through.hash)
                )),
            )
            .unwrap();
        for seq in 0..10u64 {
            audit.records.remove(seq.to_be_bytes()).unwrap();
        }
        let v = audit.verify().unwrap();
        assert!(v.broken.is_none(), "{v:?}");
        assert_eq!(v.records, 31);
        audit.records.remove(25u64.to_be_bytes()).unwrap();
        let v = audit.verify().unwrap();
        assert_eq!(v.broken.map(|b| b.seq), Some(25));
    }

    /// Whoever can write the store and removes the oldest records, leaving a shed point
    /// for them, is found: no record of the chain states that removal.
    #[test]
    fn a_shed_point_no_record_states_is_a_break() {
        let (_dir, _store, audit) = trail_of(50);
        let through = audit.records(19, 1).unwrap().remove(0);
        audit
            .shed
            .insert(
                SHED_KEY,
                &Shed {
                    seq: 19,
                    hash: through.hash,
                },
            )
            .unwrap();
        for seq in 0..20u64 {
            audit.records.remove(seq.to_be_bytes()).unwrap();
        }
        let v = audit.verify().unwrap();
        let broken = v.broken.expect("a removal nothing states");
        assert!(
            broken.reason.contains("no record of the trail states"),
            "{broken:?}"
        );
    }

    /// A trail counts the records it holds, not its sequence numbers: one that goes on
    /// from its anchor after a lost index (its first record past 0) or whose start was
    /// removed; an empty one holds none.
    #[test]
    fn records_held_are_counted_from_the_first_one_held() {
        let (dir, store, audit) = trail_of(0);
        assert_eq!(audit.held(), 0);
        // Goes on from an anchored head of 900 records its index lost.
        *audit.last.lock().unwrap() = Some((899, "ab".repeat(32)));
        assert_eq!(audit.held(), 0);
        audit
            .append(Event::new("ana", Action::Login, "ana"))
            .unwrap();
        assert_eq!(audit.held(), 1);
        audit.set_budget(100);
        assert_eq!(audit.shed_forwarded(&store, 1_000).unwrap(), 0);
        drop((audit, store));
        // Reopened with its first records removed.
        let store = Store::open(dir.path()).unwrap();
        let audit = Audit::open(&store).unwrap();
        for i in 0..9u64 {
            audit
                .append(Event::new("ana", Action::View, &format!("1.2.{i}")))
                .unwrap();
        }
        for seq in 900..905u64 {
            audit.records.remove(seq.to_be_bytes()).unwrap();
        }
        drop(audit);
        let audit = Audit::open(&store).unwrap();
        assert_eq!(audit.held(), 5);
    }

    /// The alarm is raised at nine tenths of the budget and lowered below eight tenths.
    #[test]
    fn the_alarm_rises_at_nine_tenths_and_falls_below_eight() {
        let (_dir, store, audit) = trail_of(0);
        audit.set_budget(100);
        for i in 0..95u64 {
            audit
                .append(Event::new("ana", Action::View, &format!("1.2.{i}")))
                .unwrap();
            let b = audit.budget();
            assert_eq!((b.held, b.alarm), (i + 1, i + 1 >= 90), "{b:?}");
        }
        audit.set_budget(1_000);
        audit
            .append(Event::new("ana", Action::View, "1.3"))
            .unwrap();
        assert!(!audit.budget().alarm);
        assert_eq!(audit.budget().max_records, 1_000);
        drop(store);
    }
}
