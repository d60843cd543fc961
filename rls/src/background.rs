//! Background work with one lifecycle: every task tollgate runs beside the
//! listeners (store prober, sweeper, file watchers, the freed-capacity
//! listener) is started here with a shared cancellation token and tracked,
//! so shutdown reads: build → spawn → serve → signal → cancel → drain.

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The background tasks of one running tollgate.
#[derive(Clone, Default)]
pub struct Background {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Background {
    pub fn new() -> Background {
        Background::default()
    }

    /// Starts `task`, which must return soon after its token is cancelled.
    pub fn spawn<F>(&self, name: &'static str, task: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let future = task(self.cancel.clone());
        self.tracker.spawn(async move {
            future.await;
            tracing::debug!(task = name, "background task stopped");
        });
    }

    /// Fires when the background work is to stop.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Cancels every task and waits up to `grace` for them to end; `false`
    /// if some were still running then.
    pub async fn stop(&self, grace: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Tasks still running (for tests and shutdown logs).
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_cancels_and_drains() {
        let bg = Background::new();
        for name in ["a", "b"] {
            bg.spawn(name, |cancel| async move { cancel.cancelled().await });
        }
        assert_eq!(bg.running(), 2);
        assert!(bg.stop(Duration::from_secs(1)).await);
        assert_eq!(bg.running(), 0);
        let stuck = Background::new();
        stuck.spawn("stuck", |_| std::future::pending());
        assert!(!stuck.stop(Duration::from_millis(20)).await);
    }
}
