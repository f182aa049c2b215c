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
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

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
/// result ready) until `stop` turns true; the daemon runs it as the supervised stage
/// `console-events`. It listens to [`Store::changes`], which never holds back a commit; an
/// incarnation starts from the states the store holds.
///
/// It subscribes and reads the states when called (a short read of the index), before the
/// returned future first runs, so no change committed after the call is missed.
pub fn watch_store(
    store: Arc<Store>,
    bus: Bus,
    stop: watch::Receiver<bool>,
) -> impl std::future::Future<Output = Result<(), crate::store::StoreError>> + Send {
    let changes = store.changes();
    let known = store.studies();
    follow_changes(known, changes, bus, stop)
}

async fn follow_changes(
    known: Result<Vec<crate::model::StudyRecord>, crate::store::StoreError>,
    mut changes: broadcast::Receiver<Change>,
    bus: Bus,
    mut stop: watch::Receiver<bool>,
) -> Result<(), crate::store::StoreError> {
    use tokio::sync::broadcast::error::RecvError;
    let mut known: HashMap<String, StudyState> = known?
        .into_iter()
        .map(|s| (s.study_instance_uid, s.state))
        .collect();
    loop {
        let change = tokio::select! {
            c = changes.recv() => c,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        match change {
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
            Err(RecvError::Lagged(n)) => {
                log::warn!("console events: {n} store changes skipped (listener behind)")
            }
            // The store is gone: only at shutdown.
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceRecord;
    use crate::model::StudyRecord;
    use std::time::Duration;

    async fn next(rx: &mut broadcast::Receiver<StudyEvent>) -> StudyEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn store_changes_become_events() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let bus = Bus::new();
        let mut rx = bus.subscribe();
        let (stop, stopped) = watch::channel(false);
        let t = tokio::spawn(watch_store(store.clone(), bus, stopped));
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
        store.notify(Change::Result {
            study_uid: "1.2.3".into(),
        });
        let e = next(&mut rx).await;
        assert_eq!(e.kind, EventKind::Result);
        stop.send(true).unwrap();
        t.await.unwrap().unwrap();
    }
}
