//! Supervision of the daemon's long-lived stages: each runs as a task made afresh by a
//! factory; when it ends unexpectedly (a panic, an error, or a return nobody asked for)
//! the reason is logged and a new incarnation starts after a backoff (1 s doubling to
//! 60 s, back to 1 s once an incarnation has lived a healthy minute). Every stage has a
//! heartbeat in a shared [`Registry`] ([`heartbeat`]) that the sd_notify watchdog
//! ([`watchdog`]) and `/healthz` read.
//!
//! At shutdown the supervisor stops restarting, drops the factory (and with it whatever
//! it held for the next incarnation, such as a duplicate of a listening socket) and waits
//! for the running incarnation to finish its own graceful stop. Dropping or aborting the
//! supervisor's task aborts the incarnation too. [`Shutdown`] owns a group of stages: their
//! stop signal, their registry, their supervision ([`Shutdown::supervise`]), the watchdog
//! over them ([`Shutdown::start_watchdog`], given a liveness probe of the daemon's) and the
//! tasks to wait for when the signal turns; [`drain`] says how long each part may take.

pub mod drain;
pub mod heartbeat;
pub mod shutdown;
pub mod watchdog;

pub use heartbeat::{Beat, Problem, Registry, StageStatus, STALE_AFTER, TICK};
pub use shutdown::Shutdown;
pub use watchdog::{Probe, Watchdog, Withheld};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Restart timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Pause before the first restart.
    pub first: Duration,
    /// Longest pause.
    pub max: Duration,
    /// An incarnation that lived this long was healthy: the next pause is `first` again.
    pub healthy_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
        }
    }
}

/// A listening socket kept across a stage's incarnations: each gets its own duplicate
/// of it, so a restarted accept loop listens on the same (possibly privileged) port.
#[derive(Debug)]
pub struct Listener(std::net::TcpListener);

impl Listener {
    /// Keeps `listener` for the incarnations.
    pub fn keep(listener: tokio::net::TcpListener) -> std::io::Result<Listener> {
        Ok(Listener(listener.into_std()?))
    }

    /// A duplicate for one incarnation (on the current runtime).
    pub fn incarnation(&self) -> std::io::Result<tokio::net::TcpListener> {
        let dup = self.0.try_clone()?;
        dup.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(dup)
    }
}

/// How an incarnation's result says whether it failed.
pub trait Outcome: Send + 'static {
    /// Why the stage failed, or `None` for a plain return.
    fn failure(self) -> Option<String>;
}

impl Outcome for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl<E: std::fmt::Display + Send + 'static> Outcome for Result<(), E> {
    fn failure(self) -> Option<String> {
        self.err().map(|e| format!("error: {e}"))
    }
}

/// Aborts a task when dropped (so aborting the supervisor aborts its stage).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the stage `name` on the current runtime under supervision until `shutdown` turns
/// true: `make` is called with the stage's heartbeat for every incarnation.
pub fn spawn<F, Fut>(
    name: &str,
    registry: &Arc<Registry>,
    shutdown: watch::Receiver<bool>,
    backoff: Backoff,
    make: F,
) -> JoinHandle<()>
where
    F: FnMut(Beat) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Outcome,
{
    let beat = registry.register(name);
    // running from now on: a check made before the task's first poll must not see a gap
    beat.started();
    tokio::spawn(supervise(beat, shutdown, backoff, make))
}

async fn supervise<F, Fut>(
    beat: Beat,
    mut shutdown: watch::Receiver<bool>,
    backoff: Backoff,
    make: F,
) where
    F: FnMut(Beat) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Outcome,
{
    let name = beat.name().to_string();
    let mut make = Some(make);
    let mut pause = backoff.first;
    let mut incarnation: u32 = 0;
    loop {
        let Some(factory) = make.as_mut() else {
            return;
        };
        incarnation = incarnation.saturating_add(1);
        let fut = fault::inject(&name, incarnation, factory(beat.clone()));
        beat.started();
        let born = Instant::now();
        let mut task = AbortOnDrop(tokio::spawn(fut));
        let joined = tokio::select! {
            r = &mut task.0 => r,
            _ = stopped(&mut shutdown) => {
                // no more incarnations; this one stops by itself
                drop(make.take());
                let r = (&mut task.0).await;
                beat.ended(None);
                if let Err(e) = r {
                    if e.is_panic() {
                        log::error!("stage {name} panicked while stopping: {}", panic_text(e));
                    }
                }
                return;
            }
        };
        let failure = match joined {
            Ok(outcome) => outcome
                .failure()
                .unwrap_or_else(|| "returned without being asked to stop".into()),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e)),
            Err(_) => "cancelled".into(),
        };
        if *shutdown.borrow() {
            beat.ended(None);
            return;
        }
        beat.ended(Some(failure.clone()));
        if born.elapsed() >= backoff.healthy_after {
            pause = backoff.first;
        }
        log::error!(
            "stage {name} ended unexpectedly ({failure}) after {:.1} s; restarting in {:.1} s",
            born.elapsed().as_secs_f64(),
            pause.as_secs_f64()
        );
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopped(&mut shutdown) => return,
        }
        pause = (pause * 2).min(backoff.max);
        log::info!("stage {name}: restarting (incarnation {})", incarnation + 1);
    }
}

/// Returns once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// The message of a panic, when it is text.
fn panic_text(e: tokio::task::JoinError) -> String {
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".into()
    }
}

/// Fault injection for tests of supervision and the watchdog, in debug builds only:
/// `DULI_DEBUG_PANIC_STAGE=<stage>[:<n>]` makes each of the stage's first `n` (default 1)
/// incarnations panic [`fault::AFTER`] after it starts; `DULI_DEBUG_STALL_STAGE=<stage>`
/// makes its first incarnation block its thread for [`fault::STALL`] at that time (it goes
/// stale, then carries on). Release builds ignore both.
pub mod fault {
    use std::future::Future;
    use std::time::Duration;

    /// How long an incarnation named in `DULI_DEBUG_PANIC_STAGE` runs before it panics.
    pub const AFTER: Duration = Duration::from_secs(2);
    /// How long an incarnation named in `DULI_DEBUG_STALL_STAGE` blocks its thread.
    pub const STALL: Duration = Duration::from_secs(super::STALE_AFTER.as_secs() + 4);

    /// Whether `DULI_DEBUG_PANIC_STAGE` asks incarnation `n` of `stage` to fail.
    pub fn armed(spec: Option<&str>, stage: &str, n: u32) -> bool {
        let Some(spec) = spec else {
            return false;
        };
        let (name, count) = match spec.rsplit_once(':') {
            Some((name, count)) => (name, count.parse::<u32>().unwrap_or(1)),
            None => (spec, 1),
        };
        name == stage && n <= count
    }

    /// `fut`, or (in a debug build with the variable set for this incarnation) `fut`
    /// raced against a panic after [`AFTER`].
    pub(super) fn inject<F>(
        stage: &str,
        n: u32,
        fut: F,
    ) -> std::pin::Pin<Box<dyn Future<Output = F::Output> + Send>>
    where
        F: Future + Send + 'static,
    {
        if cfg!(debug_assertions) {
            let spec = std::env::var("DULI_DEBUG_PANIC_STAGE").ok();
            if armed(spec.as_deref(), stage, n) {
                log::warn!("stage {stage}: incarnation {n} will panic in {AFTER:?} (DULI_DEBUG_PANIC_STAGE)");
                let stage = stage.to_string();
                return Box::pin(async move {
                    tokio::select! {
                        out = fut => out,
                        _ = tokio::time::sleep(AFTER) => panic!("fault injected into stage {stage}"),
                    }
                });
            }
            let spec = std::env::var("DULI_DEBUG_STALL_STAGE").ok();
            if armed(spec.as_deref(), stage, n) {
                log::warn!("stage {stage}: incarnation {n} will block for {STALL:?} in {AFTER:?} (DULI_DEBUG_STALL_STAGE)");
                return Box::pin(async move {
                    tokio::pin!(fut);
                    tokio::select! {
                        out = &mut fut => return out,
                        _ = tokio::time::sleep(AFTER) => {}
                    }
                    std::thread::sleep(STALL);
                    fut.await
                });
            }
        }
        Box::pin(fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick() -> Backoff {
        Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_millis(800),
            healthy_after: Duration::from_secs(60),
        }
    }

    /// Records when each incarnation starts (ms since creation); `start()` returns its
    /// number (1-based).
    #[derive(Clone)]
    struct Starts(Arc<std::sync::Mutex<Vec<u128>>>, tokio::time::Instant);

    impl Starts {
        fn new() -> Starts {
            Starts(Default::default(), tokio::time::Instant::now())
        }

        fn start(&self) -> usize {
            let mut s = self.0.lock().unwrap();
            s.push(self.1.elapsed().as_millis());
            s.len()
        }

        /// The pauses between consecutive starts.
        fn pauses(&self) -> Vec<u128> {
            self.0
                .lock()
                .unwrap()
                .windows(2)
                .map(|w| w[1] - w[0])
                .collect()
        }
    }

    #[tokio::test]
    async fn a_failing_stage_is_restarted_with_a_doubling_pause() {
        let reg = Registry::new();
        let (stop, rx) = watch::channel(false);
        let starts = Starts::new();
        let s = starts.clone();
        let handle = spawn("flaky", &reg, rx, quick(), move |beat: Beat| {
            let s = s.clone();
            async move {
                let n = s.start();
                beat.tick();
                if n <= 4 {
                    return Err(format!("incarnation {n} fails"));
                }
                // the fifth one lives until shutdown
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        // pauses 200, 400, 800, 800 (capped) ms
        let pauses = starts.pauses();
        assert_eq!(pauses.len(), 4, "{pauses:?}");
        for (got, want) in pauses.iter().zip([200, 400, 800, 800]) {
            assert!((want..want + 150).contains(got), "{pauses:?}");
        }
        let st = &reg.stages()[0];
        assert!(st.running);
        assert_eq!(st.restarts, 4);
        assert_eq!(
            st.last_failure.as_deref(),
            Some("error: incarnation 4 fails")
        );
        // shutdown: no new incarnation; this one never ends by itself, so the caller's
        // abort ends it
        stop.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        handle.abort();
        let _ = handle.await;
        assert_eq!(starts.pauses().len(), 4);
    }

    #[tokio::test]
    async fn a_panic_is_logged_with_its_message_and_the_stage_restarted() {
        let reg = Registry::new();
        let (_stop, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let _h = spawn("assemble", &reg, rx, quick(), move |_beat| {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    panic!("index out of range");
                }
                std::future::pending::<()>().await;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        let st = &reg.stages()[0];
        assert!(st.running);
        assert_eq!(
            st.last_failure.as_deref(),
            Some("panicked: index out of range")
        );
    }

    #[tokio::test]
    async fn errors_and_unasked_returns_restart_but_a_stop_does_not() {
        let reg = Registry::new();
        let (stop, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let stop_rx = rx.clone();
        let handle = spawn("worker", &reg, rx, quick(), move |_beat| {
            let n = r.fetch_add(1, Ordering::SeqCst) + 1;
            let mut stop_rx = stop_rx.clone();
            async move {
                match n {
                    1 => Err("database closed".to_string()),
                    2 => Ok(()),
                    _ => {
                        let _ = stop_rx.wait_for(|s| *s).await;
                        Ok(())
                    }
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(
            reg.stages()[0].last_failure.as_deref(),
            Some("returned without being asked to stop")
        );
        assert_eq!(reg.check(STALE_AFTER), Ok(()));
        stop.send(true).unwrap();
        handle.await.unwrap();
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert!(!reg.stages()[0].running);
    }

    #[tokio::test]
    async fn a_healthy_period_resets_the_pause() {
        let reg = Registry::new();
        let (_stop, rx) = watch::channel(false);
        let starts = Starts::new();
        let s = starts.clone();
        let backoff = Backoff {
            healthy_after: Duration::from_secs(1),
            ..quick()
        };
        let _h = spawn("tracker", &reg, rx, backoff, move |_beat| {
            let s = s.clone();
            async move {
                let n = s.start();
                // short lives, then one long (healthy) life, then short again
                let life = if n == 3 { 1_200 } else { 10 };
                tokio::time::sleep(Duration::from_millis(life)).await;
                Err::<(), _>("gone")
            }
        });
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        // 0 +10 +200 → 210; +10 +400 → 620; lives 1.2 s → 1820, +200 (reset) → 2020
        let pauses = starts.pauses();
        assert_eq!(pauses.len(), 3, "{pauses:?}");
        for (got, want) in pauses.iter().zip([210, 410, 1_400]) {
            assert!((want..want + 150).contains(got), "{pauses:?}");
        }
    }

    #[test]
    fn the_fault_switch_names_a_stage_and_a_count() {
        assert!(fault::armed(Some("assemble"), "assemble", 1));
        assert!(!fault::armed(Some("assemble"), "assemble", 2));
        assert!(fault::armed(Some("deliver hl7:3"), "deliver hl7", 3));
        assert!(!fault::armed(Some("deliver hl7:3"), "deliver hl7", 4));
        assert!(!fault::armed(Some("infer"), "assemble", 1));
        assert!(!fault::armed(None, "assemble", 1));
    }
}
