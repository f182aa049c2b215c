//! Live updates for the worklist: a broadcast [`Bus`] of study events (a study arrived,
//! its state changed, its result was recorded), streamed to browsers as server-sent
//! events.
//!
//! The bus is fed by [`watch_store`], which follows the store's `studies` and `results`
//! trees, so every stage that records a state or a result is seen without being wired
//! to the console; stages may also [`Bus::publish`] directly.

use crate::model::{StudyRecord, StudyState};
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// Events kept for slow subscribers before they miss some (they then reload).
pub const CAPACITY: usize = 256;

/// What happened to a study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The first instance of a new study was stored.
    Arrived,
    /// The study's state changed.
    State,
    /// A result was recorded for the study.
    Result,
}

/// One study event, as sent to browsers (`event: study`, JSON data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyEvent {
    /// What happened.
    pub kind: EventKind,
    /// Study Instance UID.
    pub study_uid: String,
    /// The study's state after the event, when known.
    pub state: Option<StudyState>,
}

/// The broadcast channel of study events. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    tx: broadcast::Sender<StudyEvent>,
}

impl Default for Bus {
    fn default() -> Self {
        Bus::new()
    }
}

impl Bus {
    /// A bus with no subscribers yet.
    pub fn new() -> Bus {
        Bus {
            tx: broadcast::channel(CAPACITY).0,
        }
    }

    /// Sends an event to every subscriber (none is fine).
    pub fn publish(&self, event: StudyEvent) {
        let _ = self.tx.send(event);
    }

    /// A new subscription.
    pub fn subscribe(&self) -> broadcast::Receiver<StudyEvent> {
        self.tx.subscribe()
    }
}

/// Follows the `studies` and `results` trees and publishes what changes, on a thread of
/// its own, until `stop` is set.
pub fn watch_store(
    store: &Store,
    bus: Bus,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, crate::store::StoreError> {
    let studies = store.tree("studies")?;
    let results = store.tree("results")?;
    let mut study_sub = studies.watch_prefix(vec![]);
    let mut result_sub = results.watch_prefix(vec![]);
    let mut known: HashMap<Vec<u8>, StudyState> = HashMap::new();
    for (k, v) in studies.iter().flatten() {
        if let Ok(s) = serde_json::from_slice::<StudyRecord>(&v) {
            known.insert(k.to_vec(), s.state);
        }
    }
    std::thread::Builder::new()
        .name("console-events".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                while let Ok(ev) = study_sub.next_timeout(Duration::from_millis(50)) {
                    idle = false;
                    if let sled::Event::Insert { key, value } = ev {
                        let Ok(s) = serde_json::from_slice::<StudyRecord>(&value) else {
                            continue;
                        };
                        let kind = match known.insert(key.to_vec(), s.state) {
                            None => EventKind::Arrived,
                            Some(old) if old != s.state => EventKind::State,
                            Some(_) => continue,
                        };
                        bus.publish(StudyEvent {
                            kind,
                            study_uid: s.study_instance_uid,
                            state: Some(s.state),
                        });
                    }
                }
                while let Ok(ev) = result_sub.next_timeout(Duration::from_millis(1)) {
                    idle = false;
                    if let sled::Event::Insert { key, .. } = ev {
                        bus.publish(StudyEvent {
                            kind: EventKind::Result,
                            study_uid: String::from_utf8_lossy(&key).to_string(),
                            state: None,
                        });
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        })
        .map_err(|e| crate::store::StoreError::Io {
            what: "start the console event thread".into(),
            source: e,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceRecord;

    async fn next(rx: &mut broadcast::Receiver<StudyEvent>) -> StudyEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn store_changes_become_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bus = Bus::new();
        let mut rx = bus.subscribe();
        let stop = Arc::new(AtomicBool::new(false));
        let t = watch_store(&store, bus, stop.clone()).unwrap();
        let inst = InstanceRecord {
            sop_instance_uid: "1.2.3.1".into(),
            study_instance_uid: "1.2.3".into(),
            ..Default::default()
        };
        store
            .commit_instance(&inst, &StudyRecord::default())
            .unwrap();
        let e = next(&mut rx).await;
        assert_eq!(
            (e.kind, e.study_uid.as_str()),
            (EventKind::Arrived, "1.2.3")
        );
        // A second instance of the same study in the same state is not an event.
        let inst2 = InstanceRecord {
            sop_instance_uid: "1.2.3.2".into(),
            ..inst.clone()
        };
        store
            .commit_instance(&inst2, &StudyRecord::default())
            .unwrap();
        store
            .set_study_state("1.2.3", StudyState::Complete, None)
            .unwrap();
        let e = next(&mut rx).await;
        assert_eq!(
            (e.kind, e.state),
            (EventKind::State, Some(StudyState::Complete))
        );
        store
            .tree("results")
            .unwrap()
            .insert("1.2.3", &b"{}"[..])
            .unwrap();
        let e = next(&mut rx).await;
        assert_eq!(e.kind, EventKind::Result);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
