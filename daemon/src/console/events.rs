//! Live updates for the worklist: a broadcast [`Bus`] of study events (a study arrived,
//! its state changed, its result was recorded), streamed to browsers as server-sent
//! events.
//!
//! The bus is fed by [`watch_store`], which follows the store's `studies` and `results`
//! trees, so every stage that records a state or a result is seen without being wired
//! to the console; stages may also [`Bus::publish`] directly.

use crate::model::StudyState;
use crate::store::{Change, Store};
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

/// Turns the store's committed changes into study events (arrived, state changed,
/// result ready) on a thread of its own, until `stop` is set. It listens to
/// [`Store::changes`], which never holds back a commit.
pub fn watch_store(
    store: &Store,
    bus: Bus,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, crate::store::StoreError> {
    let mut changes = store.changes();
    let mut known: HashMap<String, StudyState> = store
        .studies()?
        .into_iter()
        .map(|s| (s.study_instance_uid, s.state))
        .collect();
    std::thread::Builder::new()
        .name("console-events".into())
        .spawn(move || {
            use tokio::sync::broadcast::error::TryRecvError;
            while !stop.load(Ordering::Relaxed) {
                match changes.try_recv() {
                    Ok(Change::Study(s)) => {
                        let s = *s;
                        let kind = match known.insert(s.study_instance_uid.clone(), s.state) {
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
                    Ok(Change::Result { study_uid }) => bus.publish(StudyEvent {
                        kind: EventKind::Result,
                        study_uid,
                        state: None,
                    }),
                    Err(TryRecvError::Lagged(n)) => {
                        log::warn!("console events: {n} store changes skipped (listener behind)")
                    }
                    Err(TryRecvError::Empty) => std::thread::sleep(Duration::from_millis(20)),
                    Err(TryRecvError::Closed) => return,
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
    use crate::model::StudyRecord;

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
            .transition("1.2.3", &[StudyState::Receiving], StudyState::Complete)
            .unwrap();
        let e = next(&mut rx).await;
        assert_eq!(
            (e.kind, e.state),
            (EventKind::State, Some(StudyState::Complete))
        );
        store
            .records::<serde_json::Value>("results")
            .unwrap()
            .insert("1.2.3", &serde_json::json!({}))
            .unwrap();
        store.notify(Change::Result {
            study_uid: "1.2.3".into(),
        });
        let e = next(&mut rx).await;
        assert_eq!(e.kind, EventKind::Result);
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
    }
}
