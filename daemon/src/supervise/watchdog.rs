//! The sd_notify watchdog, fed by real work rather than a bare timer: before each ping a
//! liveness probe handed in by the daemon (the store answers a read and completes an index
//! flush in time) must pass, run as a fresh task on the daemon's runtime and timed from
//! outside it (so a runtime too busy or blocked to run a task in time fails it too), and
//! every stage of the [`Registry`] must be running and beating ([`Registry::check`]).
//! Otherwise the ping is withheld and systemd restarts the daemon. Each new reason is
//! logged once (`watchdog withheld: ...`), and so is the return to health (`watchdog fed
//! again: every stage is alive`). [`super::Shutdown::start_watchdog`] runs it on a thread
//! of its own, so that a stage blocking a worker of the daemon's runtime cannot hold the
//! watchdog's own timer or task with it.

use super::heartbeat::{Problem, Registry, STALE_AFTER};
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Why the watchdog is not fed; `E` is the probe's own error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Withheld<E> {
    /// The liveness probe failed or did not finish within its budget.
    #[error("{0}")]
    Probe(E),
    /// The daemon's runtime did not run the probe's task to its end within this time.
    #[error("the daemon's runtime did not run the liveness probe within {0:?}")]
    Unresponsive(Duration),
    /// The probe's task ended without an answer (it panicked, or its runtime is gone).
    #[error("the liveness probe ended without an answer: {0}")]
    ProbeLost(String),
    /// Stages are not running, or have not beaten within [`STALE_AFTER`].
    #[error("{}", problem_list(.0))]
    Stages(Vec<Problem>),
}

/// The problems of the stages, one after the other.
fn problem_list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A check of the daemon's own machinery made before each ping, given the time it may
/// take. Implemented by every `Fn(Duration) -> impl Future<Output = Result<(), E>>`.
pub trait Probe: Send + Sync + 'static {
    /// Why the probe failed.
    type Error: Display + Send + 'static;

    /// Passes when the machinery answered within `budget`.
    fn probe(&self, budget: Duration) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

impl<F, Fut, E> Probe for F
where
    F: Fn(Duration) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: Display + Send + 'static,
{
    type Error = E;

    fn probe(&self, budget: Duration) -> impl Future<Output = Result<(), E>> + Send {
        self(budget)
    }
}

/// The liveness behind each watchdog ping: a probe and the stages' heartbeats.
pub struct Watchdog<P> {
    stages: Arc<Registry>,
    probe: Arc<P>,
    /// The runtime each probe runs on, as a task of its own.
    runtime: tokio::runtime::Handle,
    /// The reason last logged while the ping is withheld.
    withheld: Option<String>,
}

impl<P: Probe> Watchdog<P> {
    /// A watchdog over `stages` and `probe`, fed so far; each probe runs as a task on
    /// `runtime` (the daemon's).
    pub fn new(stages: Arc<Registry>, probe: P, runtime: tokio::runtime::Handle) -> Watchdog<P> {
        Watchdog {
            stages,
            probe: Arc::new(probe),
            runtime,
            withheld: None,
        }
    }

    /// `Ok` when the probe, spawned on the daemon's runtime, passes within `budget` and
    /// every stage runs and beat within [`STALE_AFTER`]. The budget is timed on the
    /// caller's runtime, so it holds even when the daemon's runtime cannot run a timer.
    pub async fn check(&self, budget: Duration) -> Result<(), Withheld<P::Error>> {
        let probe = self.probe.clone();
        let task = self.runtime.spawn(async move { probe.probe(budget).await });
        let abort = task.abort_handle();
        match tokio::time::timeout(budget, task).await {
            Ok(Ok(answer)) => answer.map_err(Withheld::Probe)?,
            Ok(Err(lost)) => return Err(Withheld::ProbeLost(lost.to_string())),
            Err(_) => {
                abort.abort();
                return Err(Withheld::Unresponsive(budget));
            }
        }
        self.stages.check(STALE_AFTER).map_err(Withheld::Stages)
    }

    /// One round: checks (the probe within `budget`), calls `feed` when all is alive, and
    /// logs a new reason to withhold the ping or the end of one. Returns whether it fed.
    pub async fn round(&mut self, budget: Duration, feed: &mut impl FnMut()) -> bool {
        match self.check(budget).await {
            Ok(()) => {
                feed();
                if self.withheld.take().is_some() {
                    log::info!("watchdog fed again: every stage is alive");
                }
                true
            }
            Err(why) => {
                let why = why.to_string();
                if self.withheld.as_deref() != Some(why.as_str()) {
                    log::error!("watchdog withheld: {why}");
                }
                self.withheld = Some(why);
                false
            }
        }
    }

    /// A round every `interval` (each probe within `interval` too), for ever.
    pub async fn run(mut self, interval: Duration, mut feed: impl FnMut()) {
        loop {
            self.round(interval, &mut feed).await;
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn fed_only_while_the_probe_passes_and_every_stage_is_alive() {
        let stages = Registry::new();
        let beat = stages.register("assemble");
        beat.started();
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        let mut dog = Watchdog::new(
            stages.clone(),
            move |budget: Duration| {
                let ok = h.load(Ordering::SeqCst);
                async move {
                    if ok {
                        Ok(())
                    } else {
                        Err(format!("store read took longer than {budget:?}"))
                    }
                }
            },
            tokio::runtime::Handle::current(),
        );
        let mut fed = 0;
        let mut feed = || fed += 1;
        let budget = Duration::from_millis(100);
        assert!(dog.round(budget, &mut feed).await);
        healthy.store(false, Ordering::SeqCst);
        assert!(!dog.round(budget, &mut feed).await);
        assert_eq!(
            dog.check(budget).await.unwrap_err().to_string(),
            "store read took longer than 100ms"
        );
        healthy.store(true, Ordering::SeqCst);
        beat.ended(Some("panicked: boom".into()));
        assert!(!dog.round(budget, &mut feed).await);
        assert_eq!(
            dog.check(budget).await,
            Err(Withheld::Stages(vec![Problem::Stopped {
                stage: "assemble".into(),
                reason: Some("panicked: boom".into())
            }]))
        );
        stages.register("infer").ended(None);
        assert_eq!(
            dog.check(budget).await.unwrap_err().to_string(),
            "stage assemble is not running (last end: panicked: boom); \
             stage infer is not running"
        );
        stages.register("infer").started();
        beat.started();
        assert!(dog.round(budget, &mut feed).await);
        assert_eq!(fed, 2);
        assert_eq!(dog.withheld, None);
    }

    #[test]
    fn a_runtime_with_its_workers_blocked_fails_the_probe_in_time() {
        // the daemon's runtime: one worker, blocked by a task for 3 s
        let daemon = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (blocked_tx, blocked_rx) = std::sync::mpsc::channel();
        daemon.spawn(async move {
            blocked_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(3));
        });
        blocked_rx.recv().unwrap();
        let stages = Registry::new();
        stages.register("assemble").started();
        let dog = Watchdog::new(
            stages,
            |_budget: Duration| async { Ok::<(), String>(()) },
            daemon.handle().clone(),
        );
        // the watchdog's own runtime answers although the daemon's cannot
        let own = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let answer = own.block_on(dog.check(Duration::from_millis(200)));
        assert_eq!(
            answer,
            Err(Withheld::Unresponsive(Duration::from_millis(200)))
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // once the worker is free again the probe passes
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(own.block_on(dog.check(Duration::from_secs(2))), Ok(()));
        daemon.shutdown_background();
    }
}
