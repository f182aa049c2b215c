//! One shutdown for a group of tasks: the stop signal every stage watches, the registry
//! of the stages' heartbeats, the stages it supervises ([`Shutdown::supervise`]), the
//! watchdog that reads their heartbeats ([`Shutdown::start_watchdog`]), and the tasks that
//! wind down when the signal turns (each awaited by [`Shutdown::stop`]).

use super::heartbeat::Registry;
use super::watchdog::{Probe, Watchdog};
use super::{Backoff, Beat, Outcome};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The stop signal of a group of tasks, the heartbeats of its supervised stages, its
/// watchdog, and the tasks to wait for when the signal turns.
#[derive(Debug)]
pub struct Shutdown {
    signal: watch::Sender<bool>,
    stages: Arc<Registry>,
    tasks: Vec<JoinHandle<()>>,
    watchdog: Option<WatchdogThread>,
}

/// The watchdog's own thread and the signal that ends it.
#[derive(Debug)]
struct WatchdogThread {
    stop: watch::Sender<bool>,
}

impl WatchdogThread {
    /// Runs `dog` on a thread of its own with a one-thread runtime of its own, pinging
    /// with `WATCHDOG=1`, until [`WatchdogThread::stop`] (or until it is dropped).
    fn start<P: Probe>(dog: Watchdog<P>, interval: Duration) -> std::io::Result<WatchdogThread> {
        let (stop, mut stopped) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name("duli-watchdog".into())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = dog.run(interval, || crate::notify::notify("WATCHDOG=1")) => {}
                        _ = stopped.wait_for(|s| *s) => {}
                    }
                })
            })?;
        Ok(WatchdogThread { stop })
    }

    /// Ends the pings: the round in progress is dropped and the thread ends.
    fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for WatchdogThread {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A shutdown not yet begun, with no task and a registry of its own.
    pub fn new() -> Shutdown {
        Shutdown::with_stages(Registry::new())
    }

    /// A shutdown not yet begun, with no task, whose stages beat in `stages`.
    fn with_stages(stages: Arc<Registry>) -> Shutdown {
        Shutdown {
            signal: watch::channel(false).0,
            stages,
            tasks: Vec::new(),
            watchdog: None,
        }
    }

    /// A group of its own (its own signal and tasks, stopped on its own) whose stages beat
    /// in this one's registry, so that one watchdog and `/healthz` see them all.
    pub fn sharing_stages(&self) -> Shutdown {
        Shutdown::with_stages(self.stages.clone())
    }

    /// The heartbeats of the supervised stages (what the watchdog and `/healthz` read).
    pub fn stages(&self) -> &Arc<Registry> {
        &self.stages
    }

    /// Runs the stage `name` under supervision until shutdown begins (see
    /// [`super::spawn`]); `make` is called with the stage's heartbeat for every
    /// incarnation. The caller says how stopping waits for the returned task.
    pub fn supervise<F, Fut>(&self, name: &str, backoff: Backoff, make: F) -> JoinHandle<()>
    where
        F: FnMut(Beat) -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Outcome,
    {
        super::spawn(name, &self.stages, self.signal(), backoff, make)
    }

    /// Starts the sd_notify watchdog on a thread of its own: every `interval`,
    /// `WATCHDOG=1` when `probe` passes within `interval` as a task on the current
    /// runtime and every stage is alive (see [`Watchdog`]). It stops pinging as soon as
    /// shutdown begins, when the stages end on purpose. If no thread can be started the
    /// error is logged and no ping is ever sent, so systemd restarts the daemon.
    pub fn start_watchdog(&mut self, interval: Duration, probe: impl Probe) {
        let dog = Watchdog::new(
            self.stages.clone(),
            probe,
            tokio::runtime::Handle::current(),
        );
        // A watchdog started before is stopped when it is dropped here.
        match WatchdogThread::start(dog, interval) {
            Ok(thread) => self.watchdog = Some(thread),
            Err(e) => log::error!("watchdog: cannot start its thread: {e}; no ping will be sent"),
        }
    }

    /// A receiver that turns `true` when shutdown begins (what stages watch).
    pub fn signal(&self) -> watch::Receiver<bool> {
        self.signal.subscribe()
    }

    /// Waits for `task` when stopping (a stage that ends by itself on the signal).
    pub fn track(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Runs `then` once shutdown begins; stopping waits for it.
    pub fn on_stop(&mut self, then: impl Future<Output = ()> + Send + 'static) {
        let mut signal = self.signal();
        self.tasks.push(tokio::spawn(async move {
            let _ = signal.wait_for(|s| *s).await;
            then.await;
        }));
    }

    /// Aborts `task` once shutdown begins (a stage with nothing to finish).
    pub fn abort_on_stop(&mut self, task: JoinHandle<()>) {
        self.on_stop(async move { task.abort() });
    }

    /// Once shutdown begins, gives `task` up to `limit` to end by itself.
    pub fn drain_on_stop(&mut self, task: JoinHandle<()>, limit: Duration) {
        self.on_stop(async move {
            let _ = tokio::time::timeout(limit, task).await;
        });
    }

    /// Begins shutdown and waits for every task, each for at most `limit` when given.
    pub async fn stop(self, limit: Option<Duration>) {
        if let Some(watchdog) = &self.watchdog {
            watchdog.stop();
        }
        self.signal.send_replace(true);
        for task in self.tasks {
            match limit {
                Some(limit) => {
                    let _ = tokio::time::timeout(limit, task).await;
                }
                None => {
                    let _ = task.await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn stop_signals_runs_the_hooks_and_waits_for_the_tasks() {
        let mut shutdown = Shutdown::new();
        let done = Arc::new(AtomicU32::new(0));
        let mut signal = shutdown.signal();
        let d = done.clone();
        shutdown.track(tokio::spawn(async move {
            let _ = signal.wait_for(|s| *s).await;
            d.fetch_add(1, Ordering::SeqCst);
        }));
        let d = done.clone();
        shutdown.on_stop(async move {
            d.fetch_add(10, Ordering::SeqCst);
        });
        let forever = tokio::spawn(std::future::pending::<()>());
        shutdown.abort_on_stop(forever);
        let slow = tokio::spawn(tokio::time::sleep(Duration::from_secs(3600)));
        shutdown.drain_on_stop(slow, Duration::from_millis(10));
        assert_eq!(done.load(Ordering::SeqCst), 0);
        tokio::time::timeout(Duration::from_secs(5), shutdown.stop(None))
            .await
            .expect("stop waits only as long as the tasks take");
        assert_eq!(done.load(Ordering::SeqCst), 11);
    }

    #[tokio::test]
    async fn a_group_sharing_the_stages_supervises_into_the_same_registry() {
        let daemon = Shutdown::new();
        let mut delivery = daemon.sharing_stages();
        let assemble = daemon.supervise("assemble", Backoff::default(), |_beat| {
            std::future::pending::<()>()
        });
        let stop = delivery.signal();
        let worker = delivery.supervise("deliver hl7", Backoff::default(), move |_beat| {
            let mut stop = stop.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        });
        delivery.track(worker);
        let names = |d: &Shutdown| -> Vec<(String, bool)> {
            d.stages()
                .stages()
                .into_iter()
                .map(|s| (s.name, s.running))
                .collect()
        };
        assert_eq!(
            names(&daemon),
            [("assemble".into(), true), ("deliver hl7".into(), true)]
        );
        // stopping delivery stops its stages only
        tokio::time::timeout(Duration::from_secs(5), delivery.stop(None))
            .await
            .expect("the worker ends on its group's signal");
        assert_eq!(
            names(&daemon),
            [("assemble".into(), true), ("deliver hl7".into(), false)]
        );
        assemble.abort();
    }
}
