//! Study assembly: decides when a study is complete and hands it to the next stage.
//!
//! A study is complete when no association that brought it is still open and no instance
//! has arrived for `quiet_period` (0 = at release). Completion is recorded in the store
//! (state `complete`, flushed) before the study UID is sent on the output channel, so a
//! restart never loses a completion: at start-up, studies still `receiving` are re-armed
//! from their last receive time, and `complete` ones are handed on again (`queued` and
//! `inferring` ones are the inference stage's to resume).
//!
//! Hand-off never holds the tracker up: completed studies wait in a queue of their own
//! until the inference stage has room, so a backlog of analysis (a bulk send of thousands
//! of studies) never stops the tracker from taking the receivers' events, and so never
//! delays a C-STORE's answer.

use crate::model::StudyState;
use crate::store::{Store, StoreError};
use crate::supervise::Beat;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the receive side tells the tracker.
#[derive(Debug, Clone)]
pub enum Event {
    /// An instance of `study` was stored by association `assoc`.
    Stored {
        /// Association id.
        assoc: u64,
        /// Study Instance UID.
        study: String,
    },
    /// Association `assoc` ended (released or aborted).
    AssociationEnded {
        /// Association id.
        assoc: u64,
    },
    /// An instance of `study` was stored without an association (a console upload): the
    /// study completes after the quiet period.
    Added {
        /// Study Instance UID.
        study: String,
    },
}

#[derive(Debug, Default)]
struct Pending {
    open_assocs: std::collections::HashSet<u64>,
    last_instance: Option<Instant>,
}

/// Tracks studies being received; run it with [`StudyTracker::run`].
#[derive(Debug)]
pub struct StudyTracker {
    store: Arc<Store>,
    quiet: Duration,
    studies: HashMap<String, Pending>,
    out: mpsc::Sender<String>,
    /// Completed studies waiting for room on `out`, oldest first (recorded `complete` in
    /// the store, so a restart hands them on again).
    handoff: VecDeque<String>,
    beat: Beat,
}

/// What woke the tracker's loop.
enum Woken {
    Event(Option<Event>),
    Deadline,
    Room(mpsc::OwnedPermit<String>),
}

impl StudyTracker {
    /// A tracker that completes studies after `quiet` and sends their UIDs to `out`.
    pub fn new(store: Arc<Store>, quiet: Duration, out: mpsc::Sender<String>) -> Self {
        StudyTracker {
            store,
            quiet,
            studies: HashMap::new(),
            out,
            handoff: VecDeque::new(),
            beat: Beat::detached("assemble"),
        }
    }

    /// Beats `beat` from the tracker's loop (see [`crate::supervise`]).
    pub fn with_heartbeat(mut self, beat: Beat) -> Self {
        self.beat = beat;
        self
    }

    /// Re-arms studies left `receiving` by a previous run and re-sends `complete` ones.
    async fn recover(&mut self) {
        let studies = match self.store.studies() {
            Ok(s) => s,
            Err(e) => {
                log::error!("assembly: cannot list studies at start-up: {e}");
                return;
            }
        };
        let now_secs = crate::clock::now_secs();
        for s in studies {
            match s.state {
                StudyState::Receiving => {
                    let age =
                        Duration::from_secs(now_secs.saturating_sub(s.last_received).max(0) as u64);
                    let last = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
                    self.studies.insert(
                        s.study_instance_uid.clone(),
                        Pending {
                            open_assocs: Default::default(),
                            last_instance: Some(last),
                        },
                    );
                }
                StudyState::Complete => {
                    // Completed before the restart but not yet taken by inference.
                    self.handoff.push_back(s.study_instance_uid.clone());
                }
                // `queued` and `inferring` ones belong to the inference stage, which resumes
                // them itself when its engine loads: handing them on here as well would
                // analyse them twice (a second result version and report).
                StudyState::Queued
                | StudyState::Inferring
                | StudyState::Done
                | StudyState::Error => {}
            }
        }
    }

    fn deadline(&self, p: &Pending) -> Option<Instant> {
        if !p.open_assocs.is_empty() {
            return None;
        }
        p.last_instance.map(|t| t + self.quiet)
    }

    /// Processes events until `events` closes (shutdown), completing studies as their
    /// quiet periods end.
    pub async fn run(self, mut events: mpsc::Receiver<Event>) {
        self.run_on(&mut events).await
    }

    /// [`StudyTracker::run`] on a borrowed receiver, so that a restarted tracker (see
    /// [`crate::supervise`]) takes over the events of the one that ended; it re-arms
    /// pending studies from the store first.
    pub async fn run_on(mut self, events: &mut mpsc::Receiver<Event>) {
        let beat = self.beat.clone();
        beat.during(self.recover()).await;
        loop {
            self.beat.tick();
            let next = self.studies.values().filter_map(|p| self.deadline(p)).min();
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let waiting = !self.handoff.is_empty();
            let room = self.out.clone().reserve_owned();
            let woken = self
                .beat
                .during(async {
                    tokio::select! {
                        ev = events.recv() => Woken::Event(ev),
                        _ = sleep => Woken::Deadline,
                        permit = room, if waiting => match permit {
                            Ok(p) => Woken::Room(p),
                            // The inference stage is gone (shutdown).
                            Err(_) => Woken::Event(None),
                        },
                    }
                })
                .await;
            let received = match woken {
                Woken::Event(ev) => Some(ev),
                Woken::Deadline => None,
                Woken::Room(permit) => {
                    if let Some(uid) = self.handoff.pop_front() {
                        permit.send(uid);
                    }
                    continue;
                }
            };
            match received {
                Some(Some(Event::Stored { assoc, study })) => {
                    let p = self.studies.entry(study).or_default();
                    p.open_assocs.insert(assoc);
                    p.last_instance = Some(Instant::now());
                }
                Some(Some(Event::Added { study })) => {
                    self.studies.entry(study).or_default().last_instance = Some(Instant::now());
                }
                Some(Some(Event::AssociationEnded { assoc })) => {
                    for p in self.studies.values_mut() {
                        p.open_assocs.remove(&assoc);
                    }
                }
                Some(None) => return,
                None => {}
            }
            self.complete_due().await;
        }
    }

    async fn complete_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .studies
            .iter()
            .filter(|(_, p)| self.deadline(p).is_some_and(|d| d <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for uid in due {
            self.studies.remove(&uid);
            let updated = self.store.transition(
                &uid,
                &[StudyState::Receiving, StudyState::Complete],
                StudyState::Complete,
            );
            match updated {
                Ok(s) => {
                    // Handed on even when the flush fails: the state change stands in the
                    // index (written out later), and a crash before would re-arm it.
                    if let Err(e) = self.store.flush().await {
                        log::error!("assembly: completion of {uid} not yet durable: {e}");
                    }
                    log::info!("study {uid} complete ({} instances)", s.instances);
                    self.handoff.push_back(uid);
                }
                // Already taken further (queued, analysed) or gone: nothing to hand on.
                Err(StoreError::Transition { .. } | StoreError::UnknownStudy(_)) => {}
                Err(e) => log::error!("assembly: cannot update study {uid}: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceRecord, StudyRecord};

    /// A store holding one instance of `study`, received at `received_at`.
    fn store_with(study: &str, sop: &str, received_at: i64) -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let inst = InstanceRecord {
            sop_instance_uid: sop.into(),
            study_instance_uid: study.into(),
            received_at,
            ..Default::default()
        };
        store
            .commit_instance(&inst, &StudyRecord::default())
            .unwrap();
        (dir, store)
    }

    /// A backlog of analysis (the stage after assembly not taking studies) never stops
    /// the tracker from taking the receivers' events: thousands of events go through a
    /// small channel while nothing reads the completed studies, which then come out in
    /// order once the next stage reads again.
    #[tokio::test]
    async fn a_backlog_downstream_never_holds_up_the_receivers() {
        let (_dir, store) = store_with("9.0", "9.0.1", crate::clock::now_secs() + 60);
        let (tx, mut rx) = mpsc::channel(1);
        let (etx, erx) = mpsc::channel(4);
        let tracker = StudyTracker::new(store.clone(), Duration::from_millis(1), tx);
        let task = tokio::spawn(tracker.run(erx));
        // The study of the previous run, re-armed at start-up: the tracker is running.
        assert_eq!(rx.recv().await.as_deref(), Some("9.0"));
        let studies: Vec<String> = (0..300).map(|i| format!("9.{}", i + 1)).collect();
        let sent = tokio::time::timeout(Duration::from_secs(20), async {
            for (i, study) in studies.iter().enumerate() {
                let inst = InstanceRecord {
                    sop_instance_uid: format!("{study}.1"),
                    study_instance_uid: study.clone(),
                    received_at: 1,
                    ..Default::default()
                };
                store
                    .commit_instance(&inst, &StudyRecord::default())
                    .unwrap();
                let assoc = i as u64 + 10;
                etx.send(Event::Stored {
                    assoc,
                    study: study.clone(),
                })
                .await
                .unwrap();
                etx.send(Event::AssociationEnded { assoc }).await.unwrap();
                // Some time for quiet periods to end while nothing reads the output.
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
        .await;
        assert!(sent.is_ok(), "the receivers' events were held up");
        let mut expected = studies.clone();
        let mut out = Vec::new();
        while out.len() < expected.len() {
            match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                Ok(Some(uid)) => out.push(uid),
                _ => break,
            }
        }
        expected.sort();
        out.sort();
        assert_eq!(out, expected);
        drop(etx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn completes_after_release_and_quiet_period_and_records_it() {
        // Received "later than now": the start-up re-arm (whole seconds) cannot find its
        // quiet period already over before the test's own events arrive.
        let (_dir, store) = store_with("1.2.3", "1.2.3.1", crate::clock::now_secs() + 60);
        let (tx, mut rx) = mpsc::channel(4);
        let (etx, erx) = mpsc::channel(4);
        let tracker = StudyTracker::new(store.clone(), Duration::from_millis(200), tx);
        let task = tokio::spawn(tracker.run(erx));
        etx.send(Event::Stored {
            assoc: 1,
            study: "1.2.3".into(),
        })
        .await
        .unwrap();
        // still open: nothing completes
        assert!(tokio::time::timeout(Duration::from_millis(400), rx.recv())
            .await
            .is_err());
        // The quiet period passed while the association was open: complete at release.
        etx.send(Event::AssociationEnded { assoc: 1 })
            .await
            .unwrap();
        let uid = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(uid, "1.2.3");
        assert_eq!(
            store.study("1.2.3").unwrap().unwrap().state,
            StudyState::Complete
        );
        // A new instance reopens it; released at once, it completes only after the quiet period.
        store.force_state("1.2.3", StudyState::Receiving);
        let last = Instant::now();
        etx.send(Event::Stored {
            assoc: 2,
            study: "1.2.3".into(),
        })
        .await
        .unwrap();
        etx.send(Event::AssociationEnded { assoc: 2 })
            .await
            .unwrap();
        let uid = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(uid, "1.2.3");
        assert!(
            last.elapsed() >= Duration::from_millis(190),
            "{:?}",
            last.elapsed()
        );
        drop(etx);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn receiving_study_from_a_previous_run_is_completed() {
        let (_dir, store) = store_with("9", "9.1", crate::clock::now_secs() - 60);
        let (tx, mut rx) = mpsc::channel(4);
        let (_etx, erx) = mpsc::channel(4);
        tokio::spawn(StudyTracker::new(store.clone(), Duration::from_secs(5), tx).run(erx));
        let uid = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(uid, "9");
    }

    #[tokio::test]
    async fn an_instance_added_without_an_association_completes_after_the_quiet_period() {
        // Received "later than now", as in the test above: the start-up re-arm (whole
        // seconds) must not complete the study before the test's own event.
        let (_dir, store) = store_with("7", "7.1", crate::clock::now_secs() + 60);
        let (tx, mut rx) = mpsc::channel(4);
        let (etx, erx) = mpsc::channel(4);
        tokio::spawn(StudyTracker::new(store.clone(), Duration::from_millis(200), tx).run(erx));
        let added = Instant::now();
        etx.send(Event::Added { study: "7".into() }).await.unwrap();
        let uid = tokio::time::timeout(Duration::from_secs(3), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(uid, "7");
        assert!(added.elapsed() >= Duration::from_millis(190));
        assert_eq!(
            store.study("7").unwrap().unwrap().state,
            StudyState::Complete
        );
    }
}
