//! Limits on work in progress per key: per user (one user's burst of expensive requests holds
//! at most a few of the node's workers, so the others' requests keep being served; whether a
//! slot is free depends only on the caller's own requests), and per client address (the
//! accept loop's connection cap).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use veil_types::UserId;

/// How many of something each key holds, at most `limit` (0: no limit).
#[derive(Debug)]
pub struct Counted<K: Hash + Eq + Copy> {
    limit: usize,
    held: Arc<Mutex<HashMap<K, usize>>>,
}

impl<K: Hash + Eq + Copy> Counted<K> {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: Arc::default(),
        }
    }

    /// One more for `key`, held until dropped, or `None` if `key` already holds the limit.
    pub fn take(&self, key: K) -> Option<Held<K>> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(key).or_insert(0);
        if self.limit > 0 && *n >= self.limit {
            if *n == 0 {
                held.remove(&key);
            }
            return None;
        }
        *n += 1;
        Some(Held {
            held: self.held.clone(),
            key,
        })
    }

    /// Keys holding anything now.
    pub fn keys_holding(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One unit held by a key; given back when dropped.
#[derive(Debug)]
pub struct Held<K: Hash + Eq + Copy> {
    held: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq + Copy> Drop for Held<K> {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

/// Operations of one kind in progress per user, refused past the limit with the error the
/// caller sees.
#[derive(Debug)]
pub(crate) struct PerUserSlots {
    what: &'static str,
    counted: Counted<UserId>,
}

pub(crate) type Slot = Held<UserId>;

impl PerUserSlots {
    pub(crate) fn new(what: &'static str, limit: usize) -> Self {
        Self {
            what,
            counted: Counted::new(limit.max(1)),
        }
    }

    pub(crate) fn take(&self, user: UserId) -> crate::Result<Slot> {
        self.counted
            .take(user)
            .ok_or(crate::CoreError::TooManyInProgress {
                what: self.what,
                limit: self.counted.limit,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_holds_at_most_the_limit_and_gives_back_on_drop() {
        let slots = PerUserSlots::new("queries", 2);
        let a = slots.take(1).expect("first");
        let _b = slots.take(1).expect("second");
        assert!(matches!(
            slots.take(1),
            Err(crate::CoreError::TooManyInProgress { limit: 2, .. })
        ));
        let _other = slots.take(2).expect("another user is unaffected");
        drop(a);
        slots.take(1).expect("a slot came back");

        let open = Counted::new(0);
        let held: Vec<_> = (0..100)
            .map(|_| open.take('x').expect("no limit"))
            .collect();
        assert_eq!(open.keys_holding(), 1);
        drop(held);
        assert_eq!(open.keys_holding(), 0, "nothing leaks");
    }
}
