//! Rate limiting in fixed windows. Logins: after too many failures for one email or from one
//! address within a window, further attempts are refused until the window passes, without
//! checking the password (so a locked account cannot be probed). Encrypted predictions: each
//! user may run a bounded number of samples per window (`try_take`), which bounds how fast a
//! data user can query a published model (to extract it, say).
//!
//! State is in memory: it resets when the node restarts, and nodes sharing a PostgreSQL
//! database each count separately. Both are acceptable for slowing online guessing, which is
//! what this is for; Argon2id is what protects against offline guessing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use veil_store::Timestamp;

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    /// Failures (logins) or events (encrypted samples) allowed per key within `window`.
    pub max_failures: u32,
    pub window: Duration,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Timestamp,
    failures: u32,
}

#[derive(Debug)]
pub(crate) struct RateLimiter {
    settings: RateLimitSettings,
    windows: Mutex<HashMap<String, Window>>,
}

/// Above this many tracked keys, expired windows are swept on the next failure.
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

    /// `Err(retry_after_secs)` if any of `keys` is locked out at `now`.
    pub(crate) fn check(&self, keys: &[&str], now: Timestamp) -> Result<(), u64> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = 0i64;
        for key in keys {
            if let Some(w) = windows.get(*key) {
                let ends = w.started.saturating_add(self.window_micros());
                if w.failures >= self.settings.max_failures && ends > now {
                    wait = wait.max(ends - now);
                }
            }
        }
        if wait > 0 {
            Err(u64::try_from(wait).unwrap_or(1).div_ceil(1_000_000).max(1))
        } else {
            Ok(())
        }
    }

    pub(crate) fn record_failure(&self, keys: &[&str], now: Timestamp) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let span = self.window_micros();
        if windows.len() > SWEEP_THRESHOLD {
            windows.retain(|_, w| w.started.saturating_add(span) > now);
        }
        for key in keys {
            let w = windows.entry((*key).to_string()).or_insert(Window {
                started: now,
                failures: 0,
            });
            if w.started.saturating_add(span) <= now {
                *w = Window {
                    started: now,
                    failures: 0,
                };
            }
            w.failures += 1;
        }
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
            failures: 0,
        });
        if w.started.saturating_add(span) <= now {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        if w.failures.saturating_add(n) > self.settings.max_failures {
            let wait = w.started.saturating_add(span) - now;
            return Err(u64::try_from(wait).unwrap_or(1).div_ceil(1_000_000).max(1));
        }
        w.failures += n;
        Ok(())
    }

    pub(crate) fn clear(&self, key: &str) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_max_failures_until_the_window_ends() {
        let l = RateLimiter::new(RateLimitSettings {
            max_failures: 3,
            window: Duration::from_secs(60),
        });
        let t0 = 1_000_000_000;
        for i in 0..3 {
            assert_eq!(l.check(&["a"], t0 + i), Ok(()));
            l.record_failure(&["a"], t0 + i);
        }
        assert_eq!(l.check(&["a"], t0 + 10), Err(60));
        assert_eq!(l.check(&["b"], t0 + 10), Ok(()), "other keys unaffected");
        assert_eq!(
            l.check(&["b", "a"], t0 + 10),
            Err(60),
            "any locked key locks"
        );
        assert_eq!(l.check(&["a"], t0 + 60_000_000), Ok(()), "window over");
        l.clear("a");
        assert_eq!(l.check(&["a"], t0 + 10), Ok(()));
    }
}
