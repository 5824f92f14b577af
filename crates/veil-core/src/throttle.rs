//! Login throttling by progressive delays, and denial records that cannot flood the audit log.
//!
//! A hard lock on an account after a few failures lets anyone lock anyone out (the owner
//! included, for ever, by renewing the lock), and a lock per address locks out everyone behind
//! one NAT. Instead, each failed login counts against three keys, and a key past its free
//! failures makes the next attempt through it wait: 1 s, then 2 s, 4 s, … up to `max_delay`.
//! - the account from that address (few free failures: a guesser at one address slows fast);
//! - the address, whatever the account (many free failures: a NAT's users typing, or one
//!   client spraying passwords over many accounts);
//! - the account from addresses it has not logged in from (a guesser spread over many
//!   addresses). Addresses where the account logged in successfully are exempt from this key,
//!   so a flood against the owner from elsewhere slows the flood, not the owner.
//!
//! A throttled attempt is refused before the password is checked (so a throttled account
//! cannot be probed), and is not recorded one by one: `DenialLog` writes the first of a run of
//! identical denials and counts the rest into the next entry it writes.
//!
//! State is in memory: it resets when the node restarts, and nodes sharing a PostgreSQL
//! database each count separately. Both are acceptable for slowing online guessing, which is
//! what this is for; Argon2id is what protects against offline guessing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use veil_store::Timestamp;

use crate::micros;

#[derive(Debug, Clone)]
pub struct LoginThrottleSettings {
    /// Failures for one account from one address before delays start.
    pub free_per_account_and_address: u32,
    /// Failures from one address (any account) before delays start.
    pub free_per_address: u32,
    /// Failures for one account from addresses it has not logged in from, before delays start.
    pub free_per_account: u32,
    /// The first delay; each further failure doubles it.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// A key with no failure for this long starts over.
    pub forget_after: Duration,
    /// How long a successful login makes its address known to the account.
    pub known_address_for: Duration,
}

impl Default for LoginThrottleSettings {
    fn default() -> Self {
        Self {
            free_per_account_and_address: 5,
            free_per_address: 50,
            free_per_account: 20,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            forget_after: Duration::from_secs(3600),
            known_address_for: Duration::from_secs(30 * 86_400),
        }
    }
}

/// What counts as one client address: an IPv4 address, or an IPv6 /64 (which one client
/// typically holds whole, so counting single IPv6 addresses would give it 2^64 fresh keys).
/// IPv4-mapped IPv6 addresses count as the IPv4 address. The accept loop's per-address cap
/// uses the same rule.
pub fn client_address_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// `client_address_key` of an address given as text; text that is not an address stays as
/// it is.
fn address_text_key(ip: &str) -> String {
    ip.parse::<std::net::IpAddr>()
        .map_or_else(|_| ip.to_string(), |a| client_address_key(a).to_string())
}

/// An attempt that must wait: which key binds it, and for how many seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Throttled {
    pub key: String,
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    /// The last failure, or the last attempt let through while delays applied.
    last: Timestamp,
}

/// Above this many keys, forgotten ones are swept; if that is not enough, keys that do not
/// delay anything yet go too.
const MAX_KEYS: usize = 100_000;
/// Addresses remembered per account.
const KNOWN_PER_ACCOUNT: usize = 8;

#[derive(Debug)]
pub(crate) struct LoginThrottle {
    settings: LoginThrottleSettings,
    keys: Mutex<HashMap<String, Backoff>>,
    known: Mutex<HashMap<String, Vec<(String, Timestamp)>>>,
}

impl LoginThrottle {
    pub(crate) fn new(settings: LoginThrottleSettings) -> Self {
        Self {
            settings,
            keys: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The keys an attempt for `email` from `ip` counts against, with their free failures.
    fn keys(&self, email: &str, ip: &str, now: Timestamp) -> Vec<(String, u32)> {
        let ip = &address_text_key(ip);
        let s = &self.settings;
        let mut keys = vec![
            (
                format!("account+address:{email} {ip}"),
                s.free_per_account_and_address,
            ),
            (format!("address:{ip}"), s.free_per_address),
        ];
        if !self.is_known(email, ip, now) {
            keys.push((format!("account:{email}"), s.free_per_account));
        }
        keys
    }

    fn is_known(&self, email: &str, ip: &str, now: Timestamp) -> bool {
        let ip = address_text_key(ip);
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let horizon = micros(self.settings.known_address_for);
        known.get(email).is_some_and(|list| {
            list.iter()
                .any(|(a, at)| *a == ip && at.saturating_add(horizon) > now)
        })
    }

    fn delay(&self, failures: u32, free: u32) -> i64 {
        if failures < free {
            return 0;
        }
        let doublings = (failures - free).min(30);
        let delay = self
            .settings
            .first_delay
            .saturating_mul(1u32 << doublings)
            .min(self.settings.max_delay);
        micros(delay)
    }

    /// Lets an attempt through, counting it against every key at once (as a failure until
    /// `succeeded` says otherwise, so parallel attempts cannot all pass on the same count), or
    /// says how long it must wait. A refused attempt counts for nothing.
    pub(crate) fn check(&self, email: &str, ip: &str, now: Timestamp) -> Result<(), Throttled> {
        let keys = self.keys(email, ip, now);
        let forget = micros(self.settings.forget_after);
        let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let mut binding: Option<Throttled> = None;
        for (key, free) in &keys {
            let Some(b) = map.get(key) else { continue };
            if b.last.saturating_add(forget) <= now {
                continue;
            }
            let wait = b.last.saturating_add(self.delay(b.failures, *free)) - now;
            if wait > 0 {
                let secs = u64::try_from(wait).unwrap_or(1).div_ceil(1_000_000).max(1);
                if binding.as_ref().is_none_or(|t| secs > t.retry_after_secs) {
                    binding = Some(Throttled {
                        key: key.clone(),
                        retry_after_secs: secs,
                    });
                }
            }
        }
        if let Some(t) = binding {
            return Err(t);
        }
        if map.len() > MAX_KEYS {
            map.retain(|_, b| b.last.saturating_add(forget) > now);
            if map.len() > MAX_KEYS {
                // Keys still within their free failures delay nothing yet; dropping them
                // also keeps the next sweeps from running on every attempt.
                let free = self.settings.free_per_account_and_address;
                map.retain(|_, b| b.failures >= free);
            }
            if map.len() > MAX_KEYS / 2 {
                tracing::warn!(keys = map.len(), "login throttle holds many keys");
            }
        }
        for (key, _) in keys {
            let b = map.entry(key).or_insert(Backoff {
                failures: 0,
                last: now,
            });
            if b.last.saturating_add(forget) <= now {
                b.failures = 0;
            }
            b.failures = b.failures.saturating_add(1);
            b.last = now;
        }
        Ok(())
    }

    /// A wrong password (or an unknown or disabled account): the attempt, counted by `check`,
    /// stays counted; its delays run from now.
    pub(crate) fn failed(&self, email: &str, ip: &str, now: Timestamp) {
        let keys = self.keys(email, ip, now);
        let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        for (key, _) in keys {
            if let Some(b) = map.get_mut(&key) {
                b.last = b.last.max(now);
            }
        }
    }

    /// A correct password: the account's count from this address starts over, the attempt
    /// is taken off the other keys, and the address becomes known to the account.
    pub(crate) fn succeeded(&self, email: &str, ip: &str, now: Timestamp) {
        let keys = self.keys(email, ip, now);
        {
            let mut map = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            for (i, (key, _)) in keys.into_iter().enumerate() {
                if i == 0 {
                    map.remove(&key);
                } else if let Some(b) = map.get_mut(&key) {
                    b.failures = b.failures.saturating_sub(1);
                }
            }
        }
        let ip = address_text_key(ip);
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        let list = known.entry(email.to_string()).or_default();
        list.retain(|(a, _)| *a != ip);
        list.push((ip, now));
        if list.len() > KNOWN_PER_ACCOUNT {
            list.remove(0);
        }
    }
}

/// Records each kind of denial once per window: the first of a run is written (with how many
/// like it went unwritten since the last one), the rest only counted. An unauthenticated
/// client or a guest's token can then no longer turn requests into permanent, synced audit
/// rows at will.
#[derive(Debug)]
pub(crate) struct DenialLog {
    window: Duration,
    runs: Mutex<HashMap<String, Run>>,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    written_at: Timestamp,
    unwritten: u64,
}

impl DenialLog {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            runs: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(n)` if a denial of kind `key` is to be written now, `n` being how many of its
    /// kind went unwritten before it; `None` if it is only counted.
    pub(crate) fn admit(&self, key: &str, now: Timestamp) -> Option<u64> {
        let span = micros(self.window);
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        if runs.len() > MAX_KEYS {
            // Dropping a run loses its count, never a first entry.
            runs.retain(|_, r| r.written_at.saturating_add(span) > now);
        }
        match runs.get_mut(key) {
            Some(r) if r.written_at.saturating_add(span) > now => {
                r.unwritten = r.unwritten.saturating_add(1);
                None
            }
            Some(r) => {
                let before = r.unwritten;
                *r = Run {
                    written_at: now,
                    unwritten: 0,
                };
                Some(before)
            }
            None => {
                runs.insert(
                    key.to_string(),
                    Run {
                        written_at: now,
                        unwritten: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = 1_000_000_000_000;
    const S: i64 = 1_000_000;

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(LoginThrottleSettings::default())
    }

    #[test]
    fn delays_grow_after_the_free_failures_and_never_become_a_lock() {
        let t = throttle();
        for i in 0..5 {
            assert_eq!(t.check("a@x", "1.1.1.1", T0 + i), Ok(()));
            t.failed("a@x", "1.1.1.1", T0 + i);
        }
        let wait = t.check("a@x", "1.1.1.1", T0 + 5).expect_err("waits");
        assert_eq!(wait.retry_after_secs, 1);
        assert!(wait.key.starts_with("account+address:"), "{wait:?}");
        // Another address is not slowed by this one's failures.
        assert_eq!(t.check("a@x", "2.2.2.2", T0 + 5), Ok(()));
        // After the delay the next attempt goes through; failing again doubles the delay.
        assert_eq!(t.check("a@x", "1.1.1.1", T0 + S + 5), Ok(()));
        t.failed("a@x", "1.1.1.1", T0 + S + 5);
        let wait = t.check("a@x", "1.1.1.1", T0 + S + 6).expect_err("waits");
        assert_eq!(wait.retry_after_secs, 2);
        // However long the flood, one attempt per `max_delay` still gets through.
        let mut now = T0 + 10 * S;
        for _ in 0..40 {
            now += 301 * S;
            assert_eq!(t.check("a@x", "1.1.1.1", now), Ok(()));
            t.failed("a@x", "1.1.1.1", now);
        }
        let wait = t.check("a@x", "1.1.1.1", now + 1).expect_err("waits");
        assert_eq!(wait.retry_after_secs, 300);
    }

    #[test]
    fn a_flood_from_elsewhere_slows_the_flood_not_the_owner_at_a_known_address() {
        let t = throttle();
        t.succeeded("owner@x", "10.0.0.7", T0);
        let mut now = T0;
        for i in 0..200u32 {
            // The attacker spreads over 200 addresses: each stays under its own counts.
            let ip = format!("203.0.113.{}", i % 250);
            now += 1;
            if t.check("owner@x", &ip, now).is_ok() {
                t.failed("owner@x", &ip, now);
            }
        }
        let stranger = t.check("owner@x", "198.51.100.1", now + 1);
        assert!(
            matches!(&stranger, Err(w) if w.key.starts_with("account:")),
            "{stranger:?}"
        );
        assert_eq!(
            t.check("owner@x", "10.0.0.7", now + 1),
            Ok(()),
            "the owner's usual address is not held up"
        );
    }

    #[test]
    fn one_users_typos_do_not_slow_the_others_behind_the_same_address() {
        let t = throttle();
        for i in 0..8 {
            if t.check("typo@x", "192.0.2.1", T0 + i * S * 10).is_ok() {
                t.failed("typo@x", "192.0.2.1", T0 + i * S * 10);
            }
        }
        assert_eq!(t.check("colleague@x", "192.0.2.1", T0 + 80 * S), Ok(()));
    }

    #[test]
    fn an_ipv6_client_counts_as_its_slash_64() {
        let t = throttle();
        for i in 0..5 {
            let ip = format!("2001:db8:1:2::{i:x}");
            assert_eq!(t.check("a@x", &ip, T0 + i), Ok(()));
            t.failed("a@x", &ip, T0 + i);
        }
        assert!(
            t.check("a@x", "2001:db8:1:2:ffff::1", T0 + 10).is_err(),
            "a fresh address in the same /64 is the same client"
        );
        let mapped: std::net::IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(client_address_key(mapped).to_string(), "10.0.0.1");
    }

    #[test]
    fn an_attempt_let_through_during_delays_takes_the_slot() {
        let t = throttle();
        for i in 0..5 {
            assert_eq!(t.check("a@x", "1.1.1.1", T0 + i), Ok(()));
        }
        assert!(
            t.check("a@x", "1.1.1.1", T0 + 5).is_err(),
            "attempts in flight count before their outcome is known"
        );
        assert_eq!(t.check("a@x", "1.1.1.1", T0 + 2 * S), Ok(()));
        assert!(
            t.check("a@x", "1.1.1.1", T0 + 2 * S + 1).is_err(),
            "a parallel attempt waits"
        );
    }

    #[test]
    fn repeated_denials_are_written_once_per_window_with_the_count_of_the_rest() {
        let d = DenialLog::new(Duration::from_secs(60));
        assert_eq!(d.admit("k", T0), Some(0));
        for i in 1..=99 {
            assert_eq!(d.admit("k", T0 + i * S / 10), None);
        }
        assert_eq!(d.admit("other", T0 + 1), Some(0), "kinds are counted apart");
        assert_eq!(d.admit("k", T0 + 61 * S), Some(99));
        assert_eq!(d.admit("k", T0 + 62 * S), None);
    }
}
