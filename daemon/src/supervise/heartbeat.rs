//! Stage heartbeats: a registry of the daemon's long-lived stages, each with the time of
//! its last beat and whether it is running. A stage beats from its own loop ([`Beat::tick`])
//! and while it waits ([`Beat::during`]), so a stage that is dead, blocks its thread or
//! stops looping goes stale; the sd_notify watchdog and `/healthz` read [`Registry::check`].

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a waiting stage beats (see [`Beat::during`]).
pub const TICK: Duration = Duration::from_secs(1);
/// A running stage with no beat for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// The live state of one stage.
#[derive(Debug)]
struct Cell {
    name: String,
    /// Milliseconds since the registry's epoch at the last beat.
    last_beat_ms: AtomicU64,
    running: AtomicBool,
    restarts: AtomicU32,
    last_failure: Mutex<Option<String>>,
}

/// A stage's handle on its heartbeat: cheap to clone, lock-free to [`Beat::tick`].
#[derive(Debug, Clone)]
pub struct Beat {
    cell: Arc<Cell>,
    epoch: Instant,
}

impl Beat {
    /// A heartbeat that belongs to no registry (for a stage run on its own, e.g. in a
    /// test or a one-shot command).
    pub fn detached(name: &str) -> Beat {
        Beat {
            cell: Arc::new(Cell::new(name)),
            epoch: Instant::now(),
        }
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.cell.name
    }

    /// Records that the stage's loop went round.
    pub fn tick(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.cell.last_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// Awaits `fut`, beating every [`TICK`] while the task keeps being polled: for the
    /// legitimate waits of a stage (an idle queue, a peer's answer, a model loading). A
    /// task that blocks its thread or is never polled again stops beating.
    pub async fn during<F: Future>(&self, fut: F) -> F::Output {
        tokio::pin!(fut);
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                out = &mut fut => return out,
                _ = ticker.tick() => self.tick(),
            }
        }
    }

    /// [`Beat::during`] taking the heartbeat along: for a stage whose loop lives in code
    /// that does not beat itself (an accept loop, a periodic job), run as a whole.
    pub async fn pulse<F: Future>(self, fut: F) -> F::Output {
        self.during(fut).await
    }

    /// Marks the stage running (a new incarnation started) and beats.
    pub(crate) fn started(&self) {
        self.cell.running.store(true, Ordering::Relaxed);
        self.tick();
    }

    /// Marks the stage ended, with why when it was not asked to.
    pub(crate) fn ended(&self, failure: Option<String>) {
        self.cell.running.store(false, Ordering::Relaxed);
        if let Some(why) = failure {
            self.cell.restarts.fetch_add(1, Ordering::Relaxed);
            *lock(&self.cell.last_failure) = Some(why);
        }
    }
}

impl Cell {
    fn new(name: &str) -> Cell {
        Cell {
            name: name.to_string(),
            last_beat_ms: AtomicU64::new(0),
            running: AtomicBool::new(false),
            restarts: AtomicU32::new(0),
            last_failure: Mutex::new(None),
        }
    }
}

/// A mutex guard even if a panicking holder poisoned it (the data are plain values).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What is wrong with one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The stage is not running (ended, waiting to be restarted).
    Stopped {
        /// The stage.
        stage: String,
        /// Why it last ended, when known.
        reason: Option<String>,
    },
    /// The stage runs but has not beaten for `silent`.
    Stale {
        /// The stage.
        stage: String,
        /// Time since its last beat.
        silent: Duration,
    },
}

impl Problem {
    /// What is wrong without why the stage last ended (a panic's or an error's text,
    /// which may name files on the box): `not running`, or `not reported for N s`.
    pub fn summary(&self) -> String {
        match self {
            Problem::Stopped { .. } => "not running".into(),
            Problem::Stale { silent, .. } => {
                format!("not reported for {:.1} s", silent.as_secs_f64())
            }
        }
    }

    /// The stage concerned.
    pub fn stage(&self) -> &str {
        match self {
            Problem::Stopped { stage, .. } | Problem::Stale { stage, .. } => stage,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Stopped {
                stage,
                reason: Some(r),
            } => write!(f, "stage {stage} is not running (last end: {r})"),
            Problem::Stopped {
                stage,
                reason: None,
            } => {
                write!(f, "stage {stage} is not running")
            }
            Problem::Stale { stage, silent } => write!(
                f,
                "stage {stage} has not reported for {:.1} s",
                silent.as_secs_f64()
            ),
        }
    }
}

/// One stage as [`Registry::stages`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageStatus {
    /// The stage.
    pub name: String,
    /// Whether an incarnation is running.
    pub running: bool,
    /// Time since the last beat.
    pub silent: Duration,
    /// Unexpected ends so far.
    pub restarts: u32,
    /// Why it last ended unexpectedly.
    pub last_failure: Option<String>,
}

/// The registry of the daemon's stages.
#[derive(Debug)]
pub struct Registry {
    epoch: Instant,
    cells: Mutex<Vec<Arc<Cell>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry {
            epoch: Instant::now(),
            cells: Mutex::new(Vec::new()),
        })
    }

    /// Adds a stage (not yet running) and returns its heartbeat. A name registered
    /// twice gets the same cell.
    pub fn register(&self, name: &str) -> Beat {
        let mut cells = lock(&self.cells);
        let cell = match cells.iter().find(|c| c.name == name) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(Cell::new(name));
                cells.push(c.clone());
                c
            }
        };
        Beat {
            cell,
            epoch: self.epoch,
        }
    }

    /// Every stage, in registration order.
    pub fn stages(&self) -> Vec<StageStatus> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        lock(&self.cells)
            .iter()
            .map(|c| StageStatus {
                name: c.name.clone(),
                running: c.running.load(Ordering::Relaxed),
                silent: Duration::from_millis(
                    now.saturating_sub(c.last_beat_ms.load(Ordering::Relaxed)),
                ),
                restarts: c.restarts.load(Ordering::Relaxed),
                last_failure: lock(&c.last_failure).clone(),
            })
            .collect()
    }

    /// `Ok` when every stage runs and beat within `stale_after`; else every problem.
    pub fn check(&self, stale_after: Duration) -> Result<(), Vec<Problem>> {
        let problems: Vec<Problem> = self
            .stages()
            .into_iter()
            .filter_map(|s| {
                if !s.running {
                    Some(Problem::Stopped {
                        stage: s.name,
                        reason: s.last_failure,
                    })
                } else if s.silent > stale_after {
                    Some(Problem::Stale {
                        stage: s.name,
                        silent: s.silent,
                    })
                } else {
                    None
                }
            })
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_healthy_only_while_running_and_beating() {
        let reg = Registry::new();
        let a = reg.register("assemble");
        let b = reg.register("infer");
        // registered but not started yet
        let problems = reg.check(Duration::from_millis(50)).unwrap_err();
        assert_eq!(problems.len(), 2);
        a.started();
        b.started();
        assert_eq!(reg.check(Duration::from_millis(50)), Ok(()));
        // `b` stops beating, `a` keeps going
        std::thread::sleep(Duration::from_millis(80));
        a.tick();
        let problems = reg.check(Duration::from_millis(50)).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            matches!(&problems[0], Problem::Stale { stage, silent } if stage == "infer" && *silent >= Duration::from_millis(80)),
            "{problems:?}"
        );
        assert!(problems[0]
            .to_string()
            .contains("stage infer has not reported"));
        b.tick();
        assert_eq!(reg.check(Duration::from_millis(50)), Ok(()));
        // `a` dies: stopped with its reason until it is started again
        a.ended(Some("panicked: boom".into()));
        let problems = reg.check(Duration::from_secs(10)).unwrap_err();
        assert_eq!(
            problems,
            vec![Problem::Stopped {
                stage: "assemble".into(),
                reason: Some("panicked: boom".into())
            }]
        );
        a.started();
        assert_eq!(reg.check(Duration::from_secs(10)), Ok(()));
        let stages = reg.stages();
        assert_eq!(stages[0].name, "assemble");
        assert_eq!(stages[0].restarts, 1);
        assert_eq!(stages[1].restarts, 0);
        // registering a name again gives the same stage
        reg.register("assemble").ended(None);
        assert_eq!(reg.stages().len(), 2);
        assert!(!reg.stages()[0].running);
    }

    #[tokio::test]
    async fn a_stage_beats_while_it_waits_but_not_while_it_blocks() {
        let reg = Registry::new();
        let beat = reg.register("worker");
        beat.started();
        let waited = beat
            .during(async {
                tokio::time::sleep(TICK * 2 + Duration::from_millis(500)).await;
                7
            })
            .await;
        assert_eq!(waited, 7);
        // it beat at 0, 1 and 2 s of a 2.5 s wait
        let silent = reg.stages()[0].silent;
        assert!(silent < Duration::from_millis(800), "{silent:?}");
        // a thread that blocks never gets back to beat
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(reg.check(Duration::from_millis(50)).unwrap_err().len(), 1);
    }
}
