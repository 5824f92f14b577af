//! Quotas in fixed windows: each user may run a bounded number of encrypted samples per window
//! (`try_take`), which bounds how fast a data user can query a published model (to extract it,
//! say). Logins are slowed by `throttle` instead.
//!
//! State is in memory: it resets when the node restarts, and nodes sharing a PostgreSQL
//! database each count separately.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use veil_store::Timestamp;

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// Events (encrypted samples) allowed per key within `window`.
    pub max_events: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Timestamp,
    events: u32,
}

#[derive(Debug)]
pub(crate) struct RateLimiter {
    settings: RateLimitSettings,
    windows: Mutex<HashMap<String, Window>>,
}

/// Above this many tracked keys, expired windows are swept on the next event.
const SWEEP_THRESHOLD: usize = 10_000;

impl RateLimiter {
    pub(crate) fn new(settings: RateLimitSettings) -> Self {
        Self {
            settings,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn window_micros(&self) -> i64 {
        crate::micros(self.settings.window)
    }

    /// Counts `n` events for `key` at `now` if they fit the window's quota, or refuses with
    /// the seconds until the window ends (check and count are one step).
    pub(crate) fn try_take(&self, key: &str, n: u32, now: Timestamp) -> Result<(), u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let span = self.window_micros();
        if windows.len() > SWEEP_THRESHOLD {
            windows.retain(|_, w| w.started.saturating_add(span) > now);
        }
        let w = windows.entry(key.to_string()).or_insert(Window {
            started: now,
            events: 0,
        });
        if w.started.saturating_add(span) <= now {
            *w = Window {
                started: now,
                events: 0,
            };
        }
        if w.events.saturating_add(n) > self.settings.max_events {
            let wait = w.started.saturating_add(span) - now;
            return Err(u64::try_from(wait).unwrap_or(1).div_ceil(1_000_000).max(1));
        }
        w.events += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_refuses_what_does_not_fit_until_the_window_ends() {
        let l = RateLimiter::new(RateLimitSettings {
            max_events: 10,
            window: Duration::from_secs(60),
        });
        let t0 = 1_000_000_000;
        assert_eq!(l.try_take("a", 6, t0), Ok(()));
        assert_eq!(l.try_take("a", 5, t0 + 1), Err(60), "6 + 5 > 10");
        assert_eq!(l.try_take("a", 4, t0 + 2), Ok(()), "what fits is taken");
        assert_eq!(l.try_take("b", 10, t0 + 3), Ok(()), "other keys unaffected");
        assert_eq!(l.try_take("a", 10, t0 + 60_000_000), Ok(()), "window over");
    }
}
