//! The chain arithmetic shared by every backend, so they seal entries identically.
//!
//! A backend appends an entry inside its transaction by: locking and reading the head,
//! calling [`seal_next`], inserting the returned entry and replacing the head.

use veil_crypto::{AuditKey, ChainInput, Digest, GENESIS_HASH};

use crate::{AuditEntry, AuditHead, NewAuditEntry, StoreError, Timestamp};

/// Seals `new` as the entry after `head` (or as the first entry if there is no head).
pub fn seal_next(
    key: &AuditKey,
    head: Option<&AuditHead>,
    new: &NewAuditEntry,
    at: Timestamp,
) -> Result<(AuditEntry, AuditHead), StoreError> {
    let (prev_seq, prev_hash) = match head {
        None => (0, GENESIS_HASH),
        Some(h) => (h.seq, digest(&h.hash)?),
    };
    let seq = prev_seq + 1;
    let details = serde_json::to_string(&new.details)
        .map_err(|e| StoreError::Corrupt(format!("audit details: {e}")))?;
    let input = ChainInput {
        seq,
        at_micros: at,
        actor: &new.actor,
        action: &new.action,
        target: &new.target,
        outcome: new.outcome.as_str(),
        details: &details,
    };
    let hash = input.hash(&prev_hash);
    let entry = AuditEntry {
        seq,
        at,
        actor: new.actor.clone(),
        action: new.action.clone(),
        target: new.target.clone(),
        outcome: new.outcome.as_str().to_string(),
        details,
        prev_hash: prev_hash.to_vec(),
        hash: hash.to_vec(),
        seal: key.seal_entry(&hash).to_vec(),
    };
    let head = AuditHead {
        seq,
        hash: hash.to_vec(),
        seal: key.seal_head(seq, &hash).to_vec(),
    };
    Ok((entry, head))
}

/// The chain hash recomputed from an entry's stored fields and the given previous hash.
pub fn recompute(entry: &AuditEntry, prev: &Digest) -> Digest {
    ChainInput {
        seq: entry.seq,
        at_micros: entry.at,
        actor: &entry.actor,
        action: &entry.action,
        target: &entry.target,
        outcome: &entry.outcome,
        details: &entry.details,
    }
    .hash(prev)
}

pub fn digest(bytes: &[u8]) -> Result<Digest, StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("audit hash is not 32 bytes".into()))
}

/// Why verification stopped at an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainBreak {
    /// An entry is missing: the sequence jumps from `expected` to `found`.
    Gap { expected: u64, found: u64 },
    /// The entry's stored `prev_hash` is not the previous entry's hash.
    BrokenLink { seq: u64 },
    /// The entry's fields no longer hash to its stored hash: it was edited.
    HashMismatch { seq: u64 },
    /// The hash is consistent but its seal is not: the chain was recomputed by someone
    /// without the node's key.
    BadSeal { seq: u64 },
    /// The sealed head points past the last entry: entries were cut off the end.
    Truncated { head_seq: u64, last_seq: u64 },
    /// The head does not match the last entry or its seal is invalid.
    BadHead { seq: u64 },
}

impl ChainBreak {
    /// The sequence number of the first bad entry.
    pub fn seq(&self) -> u64 {
        match *self {
            ChainBreak::Gap { expected, .. } => expected,
            ChainBreak::BrokenLink { seq }
            | ChainBreak::HashMismatch { seq }
            | ChainBreak::BadSeal { seq }
            | ChainBreak::BadHead { seq } => seq,
            ChainBreak::Truncated { last_seq, .. } => last_seq + 1,
        }
    }

    pub fn describe(&self) -> String {
        match *self {
            ChainBreak::Gap { expected, found } => {
                format!("entry {expected} is missing (next stored entry is {found})")
            }
            ChainBreak::BrokenLink { seq } => {
                format!("entry {seq} does not link to the entry before it")
            }
            ChainBreak::HashMismatch { seq } => {
                format!("entry {seq} was modified (its contents do not match its hash)")
            }
            ChainBreak::BadSeal { seq } => {
                format!("entry {seq} has an invalid seal (the chain was rewritten)")
            }
            ChainBreak::Truncated { head_seq, last_seq } => format!(
                "entries {} to {head_seq} were removed from the end",
                last_seq + 1
            ),
            ChainBreak::BadHead { seq } => format!("the chain head at entry {seq} is invalid"),
        }
    }
}

/// Walks the chain entry by entry, in order, without holding it all in memory.
#[derive(Debug)]
pub struct ChainVerifier<'k> {
    key: &'k AuditKey,
    prev: Digest,
    next_seq: u64,
}

impl<'k> ChainVerifier<'k> {
    pub fn new(key: &'k AuditKey) -> Self {
        Self {
            key,
            prev: GENESIS_HASH,
            next_seq: 1,
        }
    }

    /// Entries checked so far.
    pub fn checked(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn push(&mut self, entry: &AuditEntry) -> Result<(), ChainBreak> {
        if entry.seq != self.next_seq {
            return Err(ChainBreak::Gap {
                expected: self.next_seq,
                found: entry.seq,
            });
        }
        if entry.prev_hash.as_slice() != self.prev.as_slice() {
            return Err(ChainBreak::BrokenLink { seq: entry.seq });
        }
        let hash = recompute(entry, &self.prev);
        if entry.hash.as_slice() != hash.as_slice() {
            return Err(ChainBreak::HashMismatch { seq: entry.seq });
        }
        if !self.key.verify_entry(&hash, &entry.seal) {
            return Err(ChainBreak::BadSeal { seq: entry.seq });
        }
        self.prev = hash;
        self.next_seq += 1;
        Ok(())
    }

    /// Checks the sealed head against the last entry seen.
    pub fn finish(self, head: Option<&AuditHead>) -> Result<u64, ChainBreak> {
        let last = self.next_seq - 1;
        match head {
            None if last == 0 => Ok(0),
            None => Err(ChainBreak::BadHead { seq: last }),
            Some(h) if h.seq > last => Err(ChainBreak::Truncated {
                head_seq: h.seq,
                last_seq: last,
            }),
            Some(h) => {
                let ok = h.seq == last
                    && h.hash.as_slice() == self.prev.as_slice()
                    && self.key.verify_head(h.seq, &self.prev, &h.seal);
                if ok {
                    Ok(last)
                } else {
                    Err(ChainBreak::BadHead { seq: h.seq })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_crypto::MasterKey;

    fn chain(key: &AuditKey, n: usize) -> (Vec<AuditEntry>, AuditHead) {
        let mut head: Option<AuditHead> = None;
        let mut entries = Vec::new();
        for i in 0..n {
            let new = NewAuditEntry::new("a@b.c", "test.event", format!("t{i}"));
            let (e, h) = seal_next(key, head.as_ref(), &new, 1_000 + i as i64).expect("seal");
            entries.push(e);
            head = Some(h);
        }
        (entries, head.expect("n > 0"))
    }

    fn verify(key: &AuditKey, entries: &[AuditEntry], head: &AuditHead) -> Result<u64, ChainBreak> {
        let mut v = ChainVerifier::new(key);
        for e in entries {
            v.push(e)?;
        }
        v.finish(Some(head))
    }

    #[test]
    fn intact_chain_verifies() {
        let key = AuditKey::derive(&MasterKey::generate());
        let (entries, head) = chain(&key, 5);
        assert_eq!(verify(&key, &entries, &head), Ok(5));
    }

    #[test]
    fn each_kind_of_tampering_is_named() {
        let key = AuditKey::derive(&MasterKey::generate());
        let (entries, head) = chain(&key, 5);

        let mut edited = entries.clone();
        edited[2].target = "t-edited".into();
        assert_eq!(
            verify(&key, &edited, &head),
            Err(ChainBreak::HashMismatch { seq: 3 })
        );

        let mut removed = entries.clone();
        removed.remove(1);
        assert_eq!(
            verify(&key, &removed, &head),
            Err(ChainBreak::Gap {
                expected: 2,
                found: 3
            })
        );

        let truncated = &entries[..3];
        assert_eq!(
            verify(&key, truncated, &head),
            Err(ChainBreak::Truncated {
                head_seq: 5,
                last_seq: 3
            })
        );

        // Someone with database access edits entry 2 and recomputes every hash after it,
        // but cannot produce seals without the node's key.
        let mut rewritten = entries.clone();
        rewritten[1].target = "forged".into();
        let mut prev = digest(&rewritten[0].hash).expect("32 bytes");
        for e in rewritten.iter_mut().skip(1) {
            e.prev_hash = prev.to_vec();
            let h = recompute(e, &prev);
            e.hash = h.to_vec();
            prev = h;
        }
        assert_eq!(
            verify(&key, &rewritten, &head),
            Err(ChainBreak::BadSeal { seq: 2 })
        );
    }
}
