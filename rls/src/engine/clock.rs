use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds. Windows are epoch-aligned, so every instance
/// must read the same calendar; tests drive a manual clock instead.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<AtomicU64>),
    /// Milliseconds from `start_ms`, moving with tokio's clock: under
    /// `tokio::time::pause()` the store's windows and the waiters' timers
    /// share one virtual time, so a minute-long wait takes no real time.
    Tokio {
        start_ms: u64,
        started: tokio::time::Instant,
    },
}

impl Clock {
    pub fn manual(start_ms: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(start_ms)))
    }

    /// A clock at `start_ms` now, following tokio's (possibly paused) time.
    pub fn tokio(start_ms: u64) -> Clock {
        Clock::Tokio {
            start_ms,
            started: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::System => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            Clock::Manual(t) => t.load(Ordering::Relaxed),
            Clock::Tokio { start_ms, started } => start_ms + started.elapsed().as_millis() as u64,
        }
    }

    /// Moves a manual clock forward; no effect on the system clock.
    pub fn advance_ms(&self, ms: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(ms, Ordering::Relaxed);
        }
    }
}
