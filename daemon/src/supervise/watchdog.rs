//! The sd_notify watchdog, fed by real work rather than a bare timer: before each ping a
//! liveness probe handed in by the daemon (the store answers a read and completes an index
//! flush in time) must pass, on a runtime responsive enough to run the task, and every
//! stage of the [`Registry`] must be running and beating ([`Registry::check`]). Otherwise
//! the ping is withheld and systemd restarts the daemon. Each new reason is logged once
//! (`watchdog withheld: ...`), and so is the return to health (`watchdog fed again: every
//! stage is alive`). [`super::Shutdown::start_watchdog`] runs it beside the stages.

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
    probe: P,
    /// The reason last logged while the ping is withheld.
    withheld: Option<String>,
}

impl<P: Probe> Watchdog<P> {
    /// A watchdog over `stages` and `probe`, fed so far.
    pub fn new(stages: Arc<Registry>, probe: P) -> Watchdog<P> {
        Watchdog {
            stages,
            probe,
            withheld: None,
        }
    }

    /// `Ok` when the probe passes within `budget` and every stage runs and beat within
    /// [`STALE_AFTER`].
    pub async fn check(&self, budget: Duration) -> Result<(), Withheld<P::Error>> {
        self.probe.probe(budget).await.map_err(Withheld::Probe)?;
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
        let mut dog = Watchdog::new(stages.clone(), move |budget: Duration| {
            let ok = h.load(Ordering::SeqCst);
            async move {
                if ok {
                    Ok(())
                } else {
                    Err(format!("store read took longer than {budget:?}"))
                }
            }
        });
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
}
