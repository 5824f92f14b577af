//! Time, injected so tests can expire tokens and rate-limit windows without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};

use veil_store::Timestamp;

pub use veil_store::Clock;

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one place that reads the wall clock (clippy.toml bans it everywhere else).
    #[allow(clippy::disallowed_methods)]
    fn now_micros(&self) -> Timestamp {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX)
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicI64::new(start))
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(crate::micros(by), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_micros(&self) -> Timestamp {
        self.0.load(Ordering::SeqCst)
    }
}
