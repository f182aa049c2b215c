//! One shutdown for a group of tasks: the stop signal every stage watches, and the tasks
//! that wind down when it turns (each awaited by [`Shutdown::stop`]).

use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The stop signal of a group of tasks, and the tasks to wait for when it turns.
#[derive(Debug)]
pub struct Shutdown {
    signal: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Default for Shutdown {
    fn default() -> Shutdown {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A shutdown not yet begun, with no task.
    pub fn new() -> Shutdown {
        Shutdown {
            signal: watch::channel(false).0,
            tasks: Vec::new(),
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
}
